"""Which blocks to request from which peer (pure; time and randomness injected).

Modelled on libtorrent's piece picker: blocks of files already started come first (so files
complete and can be renamed into place early), then the rarest blocks among connected peers
(fewest holders), random tie-break, so that peers fetching the same data from one seed fetch
*different* blocks and can then trade them. In endgame (every block still needed is already
requested) an idle peer takes over a few of the longest-waiting requests as duplicates; the loser is
cancelled on arrival. A peer holding a whole file that others hold parts of (a seed in a swarm)
is asked for what nobody else we can fetch from has, and for the rest only as much as the
caller spares (`pick(spare=)`): its upload is the one source of the blocks not yet sent out.
A peer that sends bad data is banned after MAX_BAD blocks; a peer that lets a request time out is
snubbed (`snub`: at most one request at a time) for SNUB_TIME. Request ids, timeouts and per-peer
pipelines are the puller's (transfer/puller.py); this class keeps the per-block view.

Cost: with only full holders of a file (the common case) pick() walks a pre-shuffled order of
its blocks with a cursor, amortised O(n); with partial holders around it sorts the free blocks
the peer has by availability, O(f log f) for f free blocks of the files visited. Availability
counts are kept incrementally as bitfields, haves and disconnects arrive.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

Peer = Hashable
MAX_BAD = 3
SNUB_TIME = 30.0
ENDGAME_DUPLICATES = 2
ENDGAME_BATCH = 4  # blocks an idle peer takes over at once in endgame


@dataclass(frozen=True, order=True)
class BlockRef:
    file: str
    index: int


@dataclass
class _File:
    count: int
    remaining: set[int]  # not yet received (in flight or not)
    free: set[int]  # remaining and not requested from anyone
    order: list[int]  # a random order of the blocks, walked once by `cursor` (fast path)
    rank: dict[int, int] = field(default_factory=dict)  # block -> its place in `order`: the random tie-break
    cursor: int = 0
    started: bool = False
    full_holders: set[Peer] = field(default_factory=set)
    partial: dict[Peer, set[int]] = field(default_factory=dict)
    partial_count: dict[int, int] = field(default_factory=dict)  # block -> partial holders

    def holds(self, peer: Peer, i: int) -> bool:
        return peer in self.full_holders or i in self.partial.get(peer, ())

    def availability(self, i: int) -> int:
        return len(self.full_holders) + self.partial_count.get(i, 0)

    def drop_partial(self, peer: Peer) -> None:
        for i in self.partial.pop(peer, ()):
            self.partial_count[i] -= 1

    def drop_block(self, peer: Peer, i: int) -> None:
        """The partial holder `peer` turned out not to have block i (or no good copy of it)."""
        if i in self.partial.get(peer, ()):
            self.partial[peer].discard(i)
            self.partial_count[i] -= 1

    def add_partial(self, peer: Peer, i: int) -> None:
        held = self.partial.setdefault(peer, set())
        if i not in held:
            held.add(i)
            self.partial_count[i] = self.partial_count.get(i, 0) + 1


@dataclass(frozen=True)
class PickerStats:
    files: int
    blocks_remaining: int
    in_flight: int
    banned: int


class Picker:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.files: dict[str, _File] = {}
        self.in_flight: dict[BlockRef, dict[Peer, float]] = {}
        self.bad: dict[Peer, int] = {}
        self.snubbed_until: dict[Peer, float] = {}
        self.choking_us: set[Peer] = set()
        self._order: dict[str, None] = {}  # files in the order they were added

    # files --------------------------------------------------------------
    def add_file(self, name: str, block_count: int, have: set[int] | None = None) -> None:
        """`have`: blocks already satisfied locally (resumed temp file, copied blocks)."""
        remaining = set(range(block_count)) - (have or set())
        order = list(remaining)
        self.rng.shuffle(order)
        self.files[name] = _File(block_count, remaining, set(remaining), order, {b: i for i, b in enumerate(order)}, started=bool(have))
        self._order[name] = None

    def remove_file(self, name: str) -> list[tuple[Peer, BlockRef]]:
        """Forget a file (done, or superseded); returns requests in flight to cancel."""
        f = self.files.pop(name, None)
        if f is None:
            return []
        self._order.pop(name, None)
        cancels = []
        for ref in [r for r in self.in_flight if r.file == name]:
            cancels += [(p, ref) for p in self.in_flight.pop(ref)]
        return cancels

    def done(self, name: str) -> bool:
        f = self.files.get(name)
        return f is not None and not f.remaining

    # peers ----------------------------------------------------------------
    def set_full_holder(self, peer: Peer, name: str) -> None:
        f = self.files.get(name)
        if f:
            f.full_holders.add(peer)
            f.drop_partial(peer)

    def set_partial(self, peer: Peer, name: str, blocks: set[int]) -> None:
        f = self.files.get(name)
        if f and peer not in f.full_holders:
            f.drop_partial(peer)
            f.partial[peer] = set()
            for i in blocks:
                if 0 <= i < f.count:
                    f.add_partial(peer, i)

    def block_holders(self, name: str, i: int) -> set[Peer]:
        """The peers known to hold block i of `name` (O(peers))."""
        f = self.files.get(name)
        if f is None:
            return set()
        return f.full_holders | {p for p, held in f.partial.items() if i in held}

    def have_many(self, peer: Peer, name: str, indexes: Iterable[int]) -> None:
        f = self.files.get(name)
        if f and peer not in f.full_holders:
            for i in indexes:
                if 0 <= i < f.count:
                    f.add_partial(peer, i)

    def remove_peer(self, peer: Peer) -> None:
        self.choking_us.discard(peer)
        for f in self.files.values():
            f.full_holders.discard(peer)
            f.drop_partial(peer)
        for ref in list(self.in_flight):
            holders = self.in_flight[ref]
            if holders.pop(peer, None) is not None and not holders:
                self._release(ref)

    def _release(self, ref: BlockRef) -> None:
        """Nobody is fetching `ref` any more: make it pickable again if still needed."""
        self.in_flight.pop(ref, None)
        f = self.files.get(ref.file)
        if f is not None and ref.index in f.remaining:
            f.free.add(ref.index)

    def not_held(self, peer: Peer, ref: BlockRef) -> None:
        """The peer says it does not have this block (or file) after all."""
        f = self.files.get(ref.file)
        if f is None:
            return
        f.full_holders.discard(peer)
        f.drop_block(peer, ref.index)

    def holders(self, name: str) -> set[Peer]:
        f = self.files.get(name)
        return set(f.full_holders) | set(f.partial) if f else set()

    def swarm_at(self, peer: Peer) -> int:
        """How many others hold parts of the files we still fetch that `peer` holds whole
        (the most over those files; 0: it is no seed of a swarm)."""
        return max((len(f.partial) for f in self.files.values() if f.free and f.partial and peer in f.full_holders), default=0)

    def is_banned(self, peer: Peer) -> bool:
        return self.bad.get(peer, 0) >= MAX_BAD

    def requests_of(self, peer: Peer) -> int:
        return sum(1 for h in self.in_flight.values() if peer in h)

    # picking --------------------------------------------------------------
    def pick(
        self,
        peer: Peer,
        n: int,
        now: float,
        stuck: Callable[[dict[Peer, float], float], bool] | None = None,
        spare: int | None = None,
        bytes_left: int | None = None,
        block_bytes: Callable[[str], int] | None = None,
    ) -> list[BlockRef]:
        """Up to n blocks to request from `peer`. `stuck(requests, now)` tells whether the
        requests of a block ({peer: sent at}) have waited long enough to duplicate in endgame
        (default: any). `spare`: how many blocks that a usable partial holder could serve instead
        may be taken from `peer` where it holds the whole file (None: no limit). A full holder
        is the seed, the one source of the blocks nobody else has yet, so its upload goes to
        those first; what the swarm already holds it serves only when asked to spare some.
        `bytes_left` with `block_bytes(file)`: stop once that many bytes are picked (the
        caller's byte budget; without it a pick of n large blocks mostly went back unused,
        each one chosen rarest-first over the file's free blocks)."""
        if n <= 0 or self.is_banned(peer):
            return []
        if self.snubbed_until.get(peer, 0) > now:
            n = min(n, 1 if self.requests_of(peer) == 0 else 0)
            if n == 0:
                return []
        out: list[BlockRef] = []
        left = bytes_left
        started = [name for name in self._order if self.files[name].started]
        rest = [name for name in self._order if not self.files[name].started]
        for name in started + rest:
            f = self.files[name]
            if not f.free or (peer not in f.full_holders and peer not in f.partial):
                continue
            want = n - len(out)
            size = block_bytes(name) if left is not None and block_bytes is not None else 0
            if left is not None and size > 0:
                want = min(want, max(1, -(-left // size)))
            chosen, shared = self._choose(f, peer, want, now, spare)
            if spare is not None:
                spare -= shared  # the budget is for the whole pick, across files
            for i in chosen:
                f.free.discard(i)
                ref = BlockRef(name, i)
                self.in_flight[ref] = {peer: now}
                out.append(ref)
            if out:
                f.started = True
            if left is not None and size > 0:
                left -= len(chosen) * size
                if left <= 0:
                    return out
            if len(out) >= n:
                return out
        if not out and self.requests_of(peer) == 0:
            out = self._endgame(peer, min(n, ENDGAME_BATCH), now, stuck)
        return out

    def _choose(self, f: _File, peer: Peer, need: int, now: float, spare: int | None) -> tuple[list[int], int]:
        """Blocks of `f` to ask `peer` for, and how many of them a usable partial holder has
        too. `spare`, when given: how many of those this full holder may give."""
        if not f.partial:
            # only full holders: every block is equally rare, take the next ones of the file's
            # random order (amortised O(need)); blocks handed back later come from `free`
            got: list[int] = []
            while len(got) < need and f.cursor < len(f.order):
                i = f.order[f.cursor]
                f.cursor += 1
                if i in f.free:
                    got.append(i)
            if len(got) < need and f.cursor >= len(f.order):
                got += [i for i in f.free if i not in got][: need - len(got)]
            return got, 0
        # partial holders around: rarest first among what this peer has, random tie-break
        if peer in f.full_holders:
            cands: Iterable[int] = f.free
        else:
            held = f.partial.get(peer)
            if not held:
                return [], 0
            cands = held & f.free if len(held) < len(f.free) else [i for i in f.free if i in held]
        full, counts, rank = len(f.full_holders), f.partial_count, f.rank
        if spare is None or peer not in f.full_holders:
            keyed = heapq.nsmallest(need, ((full + counts.get(i, 0), rank[i], i) for i in cands))
            return [i for _, _, i in keyed], 0
        # a full holder: the blocks no usable partial holder has come first, and of the others
        # only `spare`; rarest first within each
        usable = [held for p, held in f.partial.items() if self._usable(p, now)]
        all_usable = len(usable) == len(f.partial)

        def elsewhere(i: int) -> bool:
            return counts.get(i, 0) > 0 if all_usable else any(i in held for held in usable)

        picked = heapq.nsmallest(need, ((elsewhere(i), full + counts.get(i, 0), rank[i], i) for i in cands))
        out, taken = [], 0
        for shared, _, _, i in picked:
            if shared:
                if taken >= spare:
                    break
                taken += 1
            out.append(i)
        return out, taken

    def _usable(self, peer: Peer, now: float) -> bool:
        """Would a request to this peer be served soon: not choking us, banned or snubbed."""
        return peer not in self.choking_us and not self.is_banned(peer) and self.snubbed_until.get(peer, 0) <= now

    def set_choking(self, peer: Peer, choking: bool) -> None:
        """The peer chokes us (or stopped): its blocks do not count as available elsewhere."""
        (self.choking_us.add if choking else self.choking_us.discard)(peer)

    def _endgame(self, peer: Peer, n: int, now: float, stuck: Callable[[dict[Peer, float], float], bool] | None) -> list[BlockRef]:
        # only when nothing is left that is not already requested somewhere, and only for a
        # peer with nothing else to do: it takes over the requests waited for longest (most
        # likely stuck at a slow peer); busy peers never duplicate (duplicates cost bandwidth)
        if any(f.free for f in self.files.values()):
            return []
        out = []
        refs = sorted(self.in_flight.items(), key=lambda item: min(item[1].values(), default=now))
        for ref, reqs in refs:
            f = self.files.get(ref.file)
            if f is None or peer in reqs or len(reqs) >= ENDGAME_DUPLICATES or not f.holds(peer, ref.index):
                continue
            if stuck is not None and not stuck(reqs, now):
                continue
            reqs[peer] = now
            out.append(ref)
            if len(out) >= n:
                break
        return out

    # outcomes ---------------------------------------------------------------
    def received(self, peer: Peer, ref: BlockRef) -> list[tuple[Peer, BlockRef]]:
        """A verified block arrived; returns the other requests for it to cancel."""
        reqs = self.in_flight.pop(ref, {})
        f = self.files.get(ref.file)
        if f:
            f.remaining.discard(ref.index)
            f.free.discard(ref.index)
        return [(p, ref) for p in reqs if p != peer]

    def failed(self, peer: Peer, ref: BlockRef, bad_data: bool = False) -> None:
        reqs = self.in_flight.get(ref)
        if reqs is not None:
            reqs.pop(peer, None)
            if not reqs:
                self._release(ref)
        if bad_data:
            self.bad[peer] = self.bad.get(peer, 0) + 1
            f = self.files.get(ref.file)
            if f:
                f.drop_block(peer, ref.index)  # it evidently has no good copy

    def snub(self, peer: Peer, now: float) -> None:
        """The peer let a request time out: at most one request at a time for SNUB_TIME."""
        self.snubbed_until[peer] = now + SNUB_TIME

    def statistics(self) -> PickerStats:
        return PickerStats(
            files=len(self.files),
            blocks_remaining=sum(len(f.remaining) for f in self.files.values()),
            in_flight=len(self.in_flight),
            banned=sum(1 for p in self.bad if self.is_banned(p)),
        )

"""Which blocks to request from which peer (pure; time and randomness injected).

Modelled on libtorrent's piece picker: blocks of files already started come first (so files
complete and can be renamed into place early), then the rarest blocks among connected peers
(fewest holders), random tie-break, so that peers fetching the same data from one seed fetch
*different* blocks and can then trade them. In endgame (every block still needed is already
requested) a block may be requested from a second peer; the loser is cancelled on arrival.
A peer that sends bad data is banned after MAX_BAD blocks; a peer that lets a request time out is
snubbed (gets at most one request at a time) for SNUB_TIME.

Cost: pick() walks the files the peer holds, in priority order, and within a file its remaining
blocks — O(remaining blocks of the files visited), with n (the pipeline refill) amortising it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field

Peer = Hashable
MAX_BAD = 3
SNUB_TIME = 30.0
ENDGAME_DUPLICATES = 2


@dataclass(frozen=True, order=True)
class BlockRef:
    file: str
    index: int


@dataclass
class _File:
    count: int
    remaining: set[int]  # not yet received (in flight or not)
    started: bool = False
    full_holders: set[Peer] = field(default_factory=set)
    partial: dict[Peer, set[int]] = field(default_factory=dict)

    def holds(self, peer: Peer, i: int) -> bool:
        return peer in self.full_holders or i in self.partial.get(peer, ())

    def availability(self, i: int) -> int:
        return len(self.full_holders) + sum(1 for s in self.partial.values() if i in s)


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
        self._order: list[str] = []  # files in the order they were added

    # files --------------------------------------------------------------
    def add_file(self, name: str, block_count: int, have: set[int] | None = None) -> None:
        """`have`: blocks already satisfied locally (resumed temp file, copied blocks)."""
        remaining = set(range(block_count)) - (have or set())
        self.files[name] = _File(block_count, remaining, started=bool(have))
        self._order.append(name)

    def remove_file(self, name: str) -> list[tuple[Peer, BlockRef]]:
        """Forget a file (done, or superseded); returns requests in flight to cancel."""
        f = self.files.pop(name, None)
        if f is None:
            return []
        self._order = [n for n in self._order if n != name]
        cancels = []
        for ref in [r for r in self.in_flight if r.file == name]:
            cancels += [(p, ref) for p in self.in_flight.pop(ref)]
        return cancels

    def have_local(self, ref: BlockRef) -> None:
        f = self.files.get(ref.file)
        if f:
            f.remaining.discard(ref.index)
            f.started = True

    def done(self, name: str) -> bool:
        f = self.files.get(name)
        return f is not None and not f.remaining

    def remaining_blocks(self, name: str) -> set[int]:
        f = self.files.get(name)
        return set(f.remaining) if f else set()

    # peers ----------------------------------------------------------------
    def set_full_holder(self, peer: Peer, name: str) -> None:
        f = self.files.get(name)
        if f:
            f.full_holders.add(peer)
            f.partial.pop(peer, None)

    def set_partial(self, peer: Peer, name: str, blocks: set[int]) -> None:
        f = self.files.get(name)
        if f and peer not in f.full_holders:
            f.partial[peer] = {i for i in blocks if 0 <= i < f.count}

    def have(self, peer: Peer, ref: BlockRef) -> None:
        f = self.files.get(ref.file)
        if f and peer not in f.full_holders and 0 <= ref.index < f.count:
            f.partial.setdefault(peer, set()).add(ref.index)

    def remove_peer(self, peer: Peer) -> None:
        for f in self.files.values():
            f.full_holders.discard(peer)
            f.partial.pop(peer, None)
        for ref in list(self.in_flight):
            holders = self.in_flight[ref]
            holders.pop(peer, None)
            if not holders:
                del self.in_flight[ref]

    def holders(self, name: str) -> set[Peer]:
        f = self.files.get(name)
        return set(f.full_holders) | set(f.partial) if f else set()

    def is_banned(self, peer: Peer) -> bool:
        return self.bad.get(peer, 0) >= MAX_BAD

    def requests_of(self, peer: Peer) -> int:
        return sum(1 for h in self.in_flight.values() if peer in h)

    # picking --------------------------------------------------------------
    def pick(self, peer: Peer, n: int, now: float) -> list[BlockRef]:
        if n <= 0 or self.is_banned(peer):
            return []
        if self.snubbed_until.get(peer, 0) > now:
            n = min(n, 1 if self.requests_of(peer) == 0 else 0)
            if n == 0:
                return []
        out: list[BlockRef] = []
        order = sorted(self._order, key=lambda name: not self.files[name].started)
        for name in order:
            f = self.files[name]
            if peer not in f.full_holders and peer not in f.partial:
                continue
            cands = [i for i in f.remaining if BlockRef(name, i) not in self.in_flight and f.holds(peer, i)]
            if not cands:
                continue
            if len(f.full_holders) + len(f.partial) > 1:
                # rarest first, random tie-break
                keyed = [(f.availability(i), self.rng.random(), i) for i in cands]
                keyed.sort()
                cands = [i for _, _, i in keyed]
            else:
                # one source: random order all the same, so that devices fetching this file from
                # the same seed fetch different blocks and can trade them
                self.rng.shuffle(cands)
            for i in cands[: n - len(out)]:
                ref = BlockRef(name, i)
                self.in_flight[ref] = {peer: now}
                f.started = True
                out.append(ref)
            if len(out) >= n:
                return out
        if not out:
            out = self._endgame(peer, n, now)
        return out

    def _endgame(self, peer: Peer, n: int, now: float) -> list[BlockRef]:
        # only when nothing is left that is not already requested somewhere
        for name, f in self.files.items():
            if any(BlockRef(name, i) not in self.in_flight for i in f.remaining):
                return []
        out = []
        refs = list(self.in_flight.items())
        self.rng.shuffle(refs)
        for ref, reqs in refs:
            f = self.files.get(ref.file)
            if f is None or peer in reqs or len(reqs) >= ENDGAME_DUPLICATES or not f.holds(peer, ref.index):
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
        return [(p, ref) for p in reqs if p != peer]

    def failed(self, peer: Peer, ref: BlockRef, bad_data: bool = False) -> None:
        reqs = self.in_flight.get(ref)
        if reqs is not None:
            reqs.pop(peer, None)
            if not reqs:
                del self.in_flight[ref]
        if bad_data:
            self.bad[peer] = self.bad.get(peer, 0) + 1
            f = self.files.get(ref.file)
            if f:  # it evidently does not hold a good copy
                f.partial.get(peer, set()).discard(ref.index)

    def timeouts(self, now: float, timeout: float) -> list[tuple[Peer, BlockRef]]:
        expired = [(p, ref) for ref, reqs in self.in_flight.items() for p, t in reqs.items() if now - t > timeout]
        for p, ref in expired:
            self.failed(p, ref)
            self.snubbed_until[p] = now + SNUB_TIME
        return expired

    def statistics(self) -> PickerStats:
        return PickerStats(
            files=len(self.files),
            blocks_remaining=sum(len(f.remaining) for f in self.files.values()),
            in_flight=len(self.in_flight),
            banned=sum(1 for p in self.bad if self.is_banned(p)),
        )

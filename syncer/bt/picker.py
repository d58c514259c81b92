"""Which blocks to request from which peer (pure; time and randomness injected), after
libtorrent's piece_picker.

- Pieces are split into BLOCK-sized blocks. Blocks of pieces already started come first (a piece
  is only useful once complete and verified), then new pieces rarest first: fewest holders among
  connected peers, random tie-break, so that downloaders of one seed fetch different pieces and
  can trade them. Seeds (have-all peers) count apart, as they make every piece equally common.
- At most `max_partial` pieces are in progress at a time: each is held in memory until it is
  verified, so this bounds the buffers (see torrent.py).
- Endgame: when every needed block is requested already, a block may be requested from up to
  ENDGAME_DUPLICATES peers; when one copy arrives the others are cancelled.
- A piece that fails its hash check goes back to the queue; its contributors are returned so the
  driver can strike (and drop) them. Banned peers get nothing.
- Only `wanted` pieces are picked (selected files); `have` are the verified ones.

Rarest-first order is a list sorted by (availability, random), rebuilt at most every
`rebuild_interval(n)` when availability changed, walked from a cursor that skips pieces started
since; pieces handed back (failed, or released with no block received) are retried first.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from syncer.bt.bitfield import Bitfield
from syncer.bt.wire import BLOCK, Geometry

Peer = Hashable
ENDGAME_DUPLICATES = 2
Block = tuple[int, int]  # (piece, block index)
Request = tuple[int, int, int]  # (piece, begin, length) as on the wire


def rebuild_interval(num_pieces: int) -> float:
    return max(1.0, num_pieces / 50_000)


@dataclass
class _Partial:
    blocks: int
    free: list[int]  # not requested from anyone, in ascending order (popped from the end)
    requested: dict[int, dict[Peer, float]] = field(default_factory=dict)
    received: set[int] = field(default_factory=set)
    contributors: set[Peer] = field(default_factory=set)


@dataclass(frozen=True)
class PickerStats:
    pieces: int
    have: int
    wanted_left: int
    partial: int
    in_flight: int
    endgame: bool


class PiecePicker:
    def __init__(self, geometry: Geometry, have: Bitfield, wanted: Bitfield, max_partial: int, rng: random.Random | None = None) -> None:
        self.g = geometry
        self.n = geometry.num_pieces
        self.have = have
        self.wanted = wanted
        self.max_partial = max(1, max_partial)
        self.rng = rng or random.Random()
        self._rand = [self.rng.getrandbits(30) for _ in range(self.n)]
        self.avail = [0] * self.n  # holders among non-seed peers
        self.seeds = 0
        self.peers: dict[Peer, Bitfield | None] = {}  # None: a seed
        self.partial: dict[int, _Partial] = {}
        self._by_peer: dict[Peer, set[Block]] = {}
        self._order: list[int] = []
        self._cursor = 0
        self._retry: list[int] = []
        self._dirty = True
        self._built_at = float("-inf")
        self.left = sum(1 for i in range(self.n) if i in wanted and i not in have)  # wanted, not had
        self._need: int | None = None  # wanted & ~have as an int (for interesting()), cached

    # --- geometry ------------------------------------------------------------------------
    def blocks_in(self, piece: int) -> int:
        return -(-self.g.piece_size(piece) // BLOCK)

    def block_request(self, piece: int, block: int) -> Request:
        begin = block * BLOCK
        return piece, begin, min(BLOCK, self.g.piece_size(piece) - begin)

    def _needed(self, i: int) -> bool:
        return i in self.wanted and i not in self.have

    # --- peers ---------------------------------------------------------------------------
    def add_peer(self, peer: Peer, bits: Bitfield | None) -> None:
        """`bits` None: the peer has every piece."""
        self.remove_peer(peer)
        self.peers[peer] = bits
        if bits is None:
            self.seeds += 1
        else:
            for i in bits:
                self.avail[i] += 1
            self._dirty = True

    def peer_has(self, peer: Peer, piece: int) -> None:
        if peer not in self.peers:
            self.peers[peer] = Bitfield(self.n)
        bits = self.peers[peer]
        if bits is None:
            return
        if bits.add(piece):
            self.avail[piece] += 1
            if bits.complete:  # a peer that became a seed counts as one
                for i in range(self.n):
                    self.avail[i] -= 1
                self.peers[peer] = None
                self.seeds += 1
            self._dirty = True

    def remove_peer(self, peer: Peer) -> list[Request]:
        """Forget the peer; returns its requests in flight (the driver need not cancel them)."""
        if peer not in self.peers:
            return []
        bits = self.peers.pop(peer)
        if bits is None:
            self.seeds -= 1
        else:
            for i in bits:
                self.avail[i] -= 1
            self._dirty = True
        return self.release_peer(peer)

    def has(self, peer: Peer, piece: int) -> bool:
        if peer not in self.peers:
            return False
        bits = self.peers[peer]
        return bits is None or piece in bits

    def interesting(self, peer: Peer) -> bool:
        """Does the peer have a piece we still need?"""
        if self.left == 0 or peer not in self.peers:
            return False
        bits = self.peers[peer]
        if bits is None:
            return True
        if self._need is None:
            self._need = int.from_bytes(self.wanted.bits, "big") & ~int.from_bytes(self.have.bits, "big")
        return bool(self._need & int.from_bytes(bits.bits, "big"))

    def requests_of(self, peer: Peer) -> int:
        return len(self._by_peer.get(peer, ()))

    # --- picking -------------------------------------------------------------------------
    def pick(self, peer: Peer, count: int, now: float, only: Iterable[int] | None = None) -> list[Request]:
        """Up to `count` blocks to request from `peer`. `only`: the pieces allowed (BEP 6
        allowed-fast while choked)."""
        if count <= 0 or peer not in self.peers or self.left == 0:
            return []
        allowed = None if only is None else set(only)
        out: list[Request] = []
        for piece, part in self.partial.items():
            if part.free and self.has(peer, piece) and (allowed is None or piece in allowed):
                self._take(peer, piece, part, count - len(out), now, out)
                if len(out) >= count:
                    return out
        while len(out) < count and len(self.partial) < self.max_partial:
            fresh = self._new_piece(peer, now, allowed)
            if fresh is None:
                break
            n = self.blocks_in(fresh)
            part = self.partial[fresh] = _Partial(n, list(range(n - 1, -1, -1)))
            self._take(peer, fresh, part, count - len(out), now, out)
        if not out and self._all_requested():
            self._endgame(peer, count, now, allowed, out)
        return out

    def _take(self, peer: Peer, piece: int, part: _Partial, count: int, now: float, out: list[Request]) -> None:
        mine = self._by_peer.setdefault(peer, set())
        while part.free and count > 0:
            b = part.free.pop()
            part.requested[b] = {peer: now}
            mine.add((piece, b))
            out.append(self.block_request(piece, b))
            count -= 1

    def _new_piece(self, peer: Peer, now: float, allowed: set[int] | None) -> int | None:
        for k, i in enumerate(self._retry):
            if self._needed(i) and i not in self.partial and self.has(peer, i) and (allowed is None or i in allowed):
                del self._retry[k]
                return i
        if self._dirty and now - self._built_at >= rebuild_interval(self.n):
            self._rebuild(now)
        order = self._order
        # skip what was started or finished since the build (for every peer alike)
        while self._cursor < len(order) and not self._unstarted(order[self._cursor]):
            self._cursor += 1
        for k in range(self._cursor, len(order)):
            i = order[k]
            if self._unstarted(i) and self.has(peer, i) and (allowed is None or i in allowed):
                return i
        return None

    def _unstarted(self, i: int) -> bool:
        return i not in self.partial and self._needed(i)

    def _rebuild(self, now: float) -> None:
        avail, rand = self.avail, self._rand
        self._order = sorted((i for i in range(self.n) if self._unstarted(i)), key=lambda i: (avail[i], rand[i]))
        self._retry = [i for i in self._retry if self._unstarted(i)]
        self._cursor = 0
        self._dirty = False
        self._built_at = now

    def _all_requested(self) -> bool:
        if any(part.free for part in self.partial.values()):
            return False
        if self._retry and any(self._unstarted(i) for i in self._retry):
            return False
        return len(self.partial) >= self.left

    def _endgame(self, peer: Peer, count: int, now: float, allowed: set[int] | None, out: list[Request]) -> None:
        mine = self._by_peer.setdefault(peer, set())
        for piece, part in self.partial.items():
            if not self.has(peer, piece) or (allowed is not None and piece not in allowed):
                continue
            for b, holders in part.requested.items():
                if peer in holders or len(holders) >= ENDGAME_DUPLICATES:
                    continue
                holders[peer] = now
                mine.add((piece, b))
                out.append(self.block_request(piece, b))
                if len(out) >= count:
                    return

    @property
    def endgame(self) -> bool:
        return self.left > 0 and self._all_requested()

    # --- outcomes ------------------------------------------------------------------------
    def received(self, peer: Peer, piece: int, begin: int) -> tuple[bool, list[tuple[Peer, Request]]] | None:
        """A block arrived from `peer`. Returns (piece now complete, duplicate requests to
        cancel), or None for a block we did not ask this peer for (or got from another first)."""
        part = self.partial.get(piece)
        b = begin // BLOCK
        if part is None or begin % BLOCK or b >= part.blocks:
            return None
        holders = part.requested.get(b)
        if holders is None or peer not in holders:
            return None
        del part.requested[b]
        part.received.add(b)
        part.contributors.add(peer)
        cancels = []
        for p in holders:
            self._by_peer.get(p, set()).discard((piece, b))
            if p != peer:
                cancels.append((p, self.block_request(piece, b)))
        return len(part.received) == part.blocks, cancels

    def release(self, peer: Peer, piece: int, begin: int) -> None:
        """A request to `peer` will not be answered (rejected, choked, timed out)."""
        part = self.partial.get(piece)
        b = begin // BLOCK
        self._by_peer.get(peer, set()).discard((piece, b))
        if part is None:
            return
        holders = part.requested.get(b)
        if holders is None or peer not in holders:
            return
        del holders[peer]
        if not holders:
            del part.requested[b]
            part.free.append(b)
            part.free.sort(reverse=True)
            if not part.received and not part.requested:
                del self.partial[piece]  # nothing of it arrived: back to the queue
                self._retry.append(piece)

    def release_peer(self, peer: Peer) -> list[Request]:
        blocks = sorted(self._by_peer.pop(peer, set()))
        for piece, b in blocks:
            self.release(peer, piece, b * BLOCK)
        return [self.block_request(p, b) for p, b in blocks]

    def piece_passed(self, piece: int) -> None:
        self.partial.pop(piece, None)
        if self.have.add(piece) and piece in self.wanted:
            self.left -= 1
        self._need = None

    def piece_failed(self, piece: int) -> set[Peer]:
        """The piece's hash check failed: it starts over; returns who sent its blocks."""
        part = self.partial.pop(piece, None)
        if part is None:
            return set()
        for b, holders in part.requested.items():
            for p in holders:
                self._by_peer.get(p, set()).discard((piece, b))
        self._retry.append(piece)
        return part.contributors

    def set_wanted(self, wanted: Bitfield) -> None:
        self.wanted = wanted
        self._need = None
        self.left = sum(1 for i in range(self.n) if i in wanted and i not in self.have)
        self._dirty = True
        self._built_at = float("-inf")

    def statistics(self) -> PickerStats:
        return PickerStats(self.n, self.have.count, self.left, len(self.partial), sum(len(s) for s in self._by_peer.values()), self.endgame)

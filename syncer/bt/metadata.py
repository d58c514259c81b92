"""Fetching the info dictionary from peers (BEP 9), pure: which piece to ask whom, assembling,
and checking the result against the info-hash.

Sizes come from strangers' extension handshakes: each is bounded (MAX_METADATA) and we assemble
for the size most peers offer, asking only peers that offered it. Every piece must have the exact
length its index implies. If the assembled bytes do not hash to the info-hash and one peer sent
them all, that peer is bad (the driver drops it); if several did, the culprit is unknown, so every
later attempt takes all pieces from a single peer until one succeeds, which singles out liars.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from syncer.bt.metainfo import MAX_METADATA
from syncer.bt.wire import METADATA_PIECE

Peer = Hashable
REQUEST_TIMEOUT = 10.0
MAX_OUTSTANDING = 8  # metadata requests per peer at a time


@dataclass(frozen=True)
class MetadataResult:
    raw: bytes | None  # the verified info dictionary, when complete
    bad_peers: frozenset[Peer] = frozenset()


class MetadataFetcher:
    def __init__(self, info_hash: bytes) -> None:
        self.info_hash = info_hash
        self._sizes: dict[Peer, int] = {}
        self._pieces: dict[int, bytes] = {}
        self._from: dict[int, Peer] = {}
        self._asked: dict[int, tuple[Peer, float]] = {}
        self._rejected: dict[Peer, set[int]] = {}
        self.single_source = False  # after a failure of mixed sources
        self._source: Peer | None = None
        self.failures = 0

    @property
    def size(self) -> int:
        if not self._sizes:
            return 0
        return Counter(self._sizes.values()).most_common(1)[0][0]

    @property
    def num_pieces(self) -> int:
        return -(-self.size // METADATA_PIECE)

    def offered(self, peer: Peer, size: int) -> None:
        """A peer's extension handshake offers metadata of `size` bytes."""
        if 0 < size <= MAX_METADATA:
            before = self.size
            self._sizes[peer] = size
            if self.size != before:
                self._restart()

    def _restart(self) -> None:
        self._pieces.clear()
        self._from.clear()
        self._asked.clear()
        self._source = None

    def next_request(self, peer: Peer, now: float) -> int | None:
        """A piece to ask `peer` for, or None."""
        size = self.size
        if not size or self._sizes.get(peer) != size or self.outstanding(peer) >= MAX_OUTSTANDING:
            return None
        if self.single_source:
            if self._source is None or self._source not in self._sizes:
                self._restart()
                self._source = peer
            if peer != self._source:
                return None
        for i in range(self.num_pieces):
            if i in self._pieces or i in self._rejected.get(peer, ()):
                continue
            asked = self._asked.get(i)
            if asked is None or now - asked[1] > REQUEST_TIMEOUT:
                self._asked[i] = (peer, now)
                return i
        return None

    def outstanding(self, peer: Peer) -> int:
        return sum(1 for p, _ in self._asked.values() if p == peer)

    def rejected(self, peer: Peer, piece: int) -> None:
        self._rejected.setdefault(peer, set()).add(piece)
        if self._asked.get(piece, (None,))[0] == peer:
            del self._asked[piece]
        if self._source == peer:
            self._restart()

    def peer_gone(self, peer: Peer) -> None:
        for i in [i for i, (p, _) in self._asked.items() if p == peer]:
            del self._asked[i]
        self._rejected.pop(peer, None)
        before = self.size
        self._sizes.pop(peer, None)
        if self._source == peer or self.size != before:
            self._restart()

    def received(self, peer: Peer, piece: int, total_size: int, data: bytes) -> MetadataResult | None:
        """A data message; returns a result when the metadata is complete or a peer proved bad,
        None while pieces are missing."""
        if self._asked.get(piece, (None,))[0] != peer:
            return None  # not asked of this peer (or timed out and asked elsewhere): ignored
        num = self.num_pieces
        expected = METADATA_PIECE if piece < num - 1 else self.size - piece * METADATA_PIECE
        if total_size != self.size or len(data) != expected:
            return MetadataResult(None, frozenset({peer}))
        del self._asked[piece]
        self._pieces[piece] = data
        self._from[piece] = peer
        if len(self._pieces) < num:
            return None
        raw = b"".join(self._pieces[i] for i in range(num))
        if hashlib.sha1(raw).digest() == self.info_hash:
            return MetadataResult(raw)
        sources = frozenset(self._from.values())
        self.failures += 1
        self._restart()
        if len(sources) == 1:
            return MetadataResult(None, sources)
        self.single_source = True
        return MetadataResult(None)


def serve_piece(raw: bytes, piece: int) -> bytes | None:
    """Our metadata piece `piece` for a peer's request, or None (reject) if out of range."""
    if not 0 <= piece < -(-len(raw) // METADATA_PIECE):
        return None
    return raw[piece * METADATA_PIECE : (piece + 1) * METADATA_PIECE]

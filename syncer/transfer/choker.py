"""Whom we upload to (pure; time and randomness injected): BitTorrent's tit-for-tat.

Every RECHOKE_INTERVAL the interested peers that gave us the most recently (or, when we need
nothing, that take from us fastest) get the regular upload slots; one optimistic slot rotates
every OPTIMISTIC_INTERVAL among the other interested peers (newcomers weighted ×3) so new peers
can prove themselves. Peers marked `unlimited` (our own paired devices, by default) are always
unchoked and take no slot.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

Peer = TypeVar("Peer", bound=Hashable)  # whatever the caller names peers by
SLOTS = 4
RECHOKE_INTERVAL = 10.0
OPTIMISTIC_INTERVAL = 30.0
NEW_PEER_AGE = 60.0


@dataclass(frozen=True)
class ChokeStats:
    """What the choker weighs for one peer (the folder's byte counters are model.folder's
    TransferCounters)."""

    interested: bool
    download_rate: float  # what the peer gives us, B/s
    upload_rate: float  # what we give the peer, B/s
    unlimited: bool = False
    connected_at: float = 0.0


@dataclass(frozen=True)
class ChokeDecision(Generic[Peer]):
    unchoked: frozenset[Peer]
    optimistic: Peer | None


class Choker(Generic[Peer]):
    def __init__(
        self,
        slots: int = SLOTS,
        rechoke_interval: float = RECHOKE_INTERVAL,
        optimistic_interval: float = OPTIMISTIC_INTERVAL,
        rng: random.Random | None = None,
    ) -> None:
        self.slots = slots
        self.rechoke_interval = rechoke_interval
        self.optimistic_interval = optimistic_interval
        self.rng = rng or random.Random()
        self.optimistic: Peer | None = None
        self._optimistic_since = float("-inf")
        self._last = float("-inf")

    def next_deadline(self) -> float:
        return self._last + self.rechoke_interval

    def rank(self, peers: Mapping[Peer, ChokeStats], now: float, seeding: bool = False) -> ChokeDecision[Peer]:
        self._last = now
        unchoked = {p for p, s in peers.items() if s.unlimited}
        candidates = [p for p, s in peers.items() if s.interested and not s.unlimited]
        key = (lambda p: peers[p].upload_rate) if seeding else (lambda p: peers[p].download_rate)
        candidates.sort(key=key, reverse=True)
        regular = candidates[: max(0, self.slots - 1)]
        unchoked.update(regular)
        rest = [p for p in candidates if p not in unchoked]
        if (
            self.optimistic not in rest
            or now - self._optimistic_since >= self.optimistic_interval
        ):
            self.optimistic = self._choose_optimistic(rest, peers, now)
            self._optimistic_since = now
        if self.optimistic is not None:
            unchoked.add(self.optimistic)
        return ChokeDecision(frozenset(unchoked), self.optimistic)

    def _choose_optimistic(self, rest: list[Peer], peers: Mapping[Peer, ChokeStats], now: float) -> Peer | None:
        if not rest:
            return None
        weights = [3.0 if now - peers[p].connected_at < NEW_PEER_AGE else 1.0 for p in rest]
        return self.rng.choices(rest, weights=weights, k=1)[0]

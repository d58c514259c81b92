"""Who announced what (pure; time injected): the tracker's swarms and the DHT's peer storage.

Everything is bounded and fair per source (an IPv4 address, or an IPv6 /64: net/admission.py):
- a swarm (info-hash) holds at most `max_peers` entries and at most `max_per_source` from one
  source; a source over its share replaces only its *own* oldest entry, so one address cannot
  evict anybody else's entries however often it announces;
- a full swarm makes room by dropping the oldest entry of the source holding the most entries
  (many sources can still crowd a swarm: that needs many addresses, and is inherent);
- at most `max_swarms` swarms and `max_entries` entries altogether; beyond that the least
  recently announced swarm loses its oldest entries first;
- an entry expires `ttl` seconds after its last announce (trackers use about 2 x interval).
  Expiry is lazy and cheap: entries are kept in announce order, so each swarm drops stale ones
  from its front when touched, and `expire()` drops whole swarms idle for `ttl` from the front
  of the least-recently-announced order; neither walks live data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from syncer.net.admission import KeyedRateLimit, source_key

Addr = tuple[str, int]


@dataclass(frozen=True)
class PeerEntry:
    ip: str
    port: int
    device_id: str  # "" when unknown (BitTorrent clients, DHT)
    peer_id: bytes
    seen: float
    complete: bool = False


class Swarm:
    """The entries of one info-hash, oldest announce first, with a count per source."""

    def __init__(self) -> None:
        self.entries: OrderedDict[Addr, PeerEntry] = OrderedDict()
        self.per_source: dict[str, int] = {}
        self.last = 0.0  # newest announce

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, e: PeerEntry) -> None:
        self.entries[(e.ip, e.port)] = e
        src = source_key(e.ip)
        self.per_source[src] = self.per_source.get(src, 0) + 1
        self.last = max(self.last, e.seen)

    def pop(self, addr: Addr) -> PeerEntry | None:
        e = self.entries.pop(addr, None)
        if e is not None:
            src = source_key(e.ip)
            n = self.per_source[src] - 1
            if n:
                self.per_source[src] = n
            else:
                del self.per_source[src]
        return e

    def oldest_of(self, src: str) -> Addr | None:
        return next((a for a, e in self.entries.items() if source_key(e.ip) == src), None)

    def victim(self) -> Addr:
        """The entry to drop when full: the oldest of the source holding the most entries."""
        src, n = max(self.per_source.items(), key=lambda kv: kv[1])
        if n > 1:
            addr = self.oldest_of(src)
            if addr is not None:
                return addr
        return next(iter(self.entries))


class PeerStore:
    def __init__(
        self,
        ttl: float,
        max_swarms: int = 100_000,
        max_peers: int = 200,
        max_per_source: int = 8,
        max_entries: int = 200_000,
    ) -> None:
        self.ttl = ttl
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.max_per_source = max_per_source
        self.max_entries = max_entries
        self.swarms: OrderedDict[bytes, Swarm] = OrderedDict()  # least recently announced first
        self._count = 0

    def announce(self, key: bytes, entry: PeerEntry) -> None:
        now = entry.seen
        self.expire(now)
        swarm = self.swarms.get(key)
        if swarm is None:
            while len(self.swarms) >= self.max_swarms:
                self._drop_swarm(next(iter(self.swarms)))
            swarm = self.swarms[key] = Swarm()
        self.swarms.move_to_end(key)
        self._expire_swarm(swarm, now)
        addr = (entry.ip, entry.port)
        src = source_key(entry.ip)
        if swarm.pop(addr) is not None:
            self._count -= 1
        elif swarm.per_source.get(src, 0) >= self.max_per_source:
            self._evict(swarm, swarm.oldest_of(src))  # only its own
        elif len(swarm) >= self.max_peers:
            self._evict(swarm, swarm.victim())
        swarm.add(entry)
        self._count += 1
        while self._count > self.max_entries:
            lru_key = next(iter(self.swarms))
            lru = self.swarms[lru_key]
            self._evict(lru, next(iter(lru.entries)))
            if not lru:
                del self.swarms[lru_key]

    def _evict(self, swarm: Swarm, addr: Addr | None) -> None:
        if addr is not None and swarm.pop(addr) is not None:
            self._count -= 1

    def _expire_swarm(self, swarm: Swarm, now: float) -> int:
        removed = 0
        while swarm.entries:
            addr, e = next(iter(swarm.entries.items()))
            if now - e.seen <= self.ttl:
                break
            swarm.pop(addr)
            removed += 1
        self._count -= removed
        return removed

    def _drop_swarm(self, key: bytes) -> int:
        swarm = self.swarms.pop(key)
        self._count -= len(swarm)
        return len(swarm)

    def remove(self, key: bytes, ip: str, port: int) -> None:
        swarm = self.swarms.get(key)
        if swarm is not None:
            if swarm.pop((ip, port)) is not None:
                self._count -= 1
            if not swarm:
                del self.swarms[key]

    def peers(self, key: bytes, now: float, limit: int = 50, exclude: Addr | None = None) -> list[PeerEntry]:
        swarm = self.swarms.get(key)
        if not swarm:
            return []
        self._expire_swarm(swarm, now)
        out = []
        for addr, e in reversed(swarm.entries.items()):  # freshest first
            if addr != exclude:
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    def expire(self, now: float) -> int:
        """Drop the swarms nobody announced to for `ttl` (cheap: stops at the first live one)."""
        removed = 0
        while self.swarms:
            key, swarm = next(iter(self.swarms.items()))
            if now - swarm.last <= self.ttl:
                break
            removed += self._drop_swarm(key)
        return removed

    def counts(self, key: bytes, now: float) -> tuple[int, int]:
        """(complete, incomplete) live peers of a swarm, for scrape."""
        peers = self.peers(key, now, limit=self.max_peers)
        done = sum(1 for p in peers if p.complete)
        return done, len(peers) - done

    def __len__(self) -> int:
        return self._count


class IpRateLimit(KeyedRateLimit):
    """Per-source token bucket (IPv6 sources per /64), itself bounded."""

    def __init__(self, rate: float, burst: float, max_ips: int = 100_000) -> None:
        super().__init__(rate, burst, max_ips)

    def allow(self, ip: str, now: float, cost: float = 1.0) -> bool:
        return super().allow(source_key(ip), now, cost)

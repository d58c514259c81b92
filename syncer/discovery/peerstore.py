"""Who announced what (pure; time injected): the tracker's swarms and the DHT's peer storage.

Bounded: at most `max_swarms` info-hashes and `max_peers` peers per swarm; the oldest entry is
evicted first. Entries expire `ttl` seconds after their last announce.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerEntry:
    ip: str
    port: int
    device_id: str  # "" when unknown (BitTorrent clients, DHT)
    peer_id: bytes
    seen: float
    complete: bool = False


class PeerStore:
    def __init__(self, ttl: float, max_swarms: int = 100_000, max_peers: int = 200) -> None:
        self.ttl = ttl
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.swarms: OrderedDict[bytes, OrderedDict[tuple[str, int], PeerEntry]] = OrderedDict()

    def announce(self, key: bytes, entry: PeerEntry) -> None:
        swarm = self.swarms.get(key)
        if swarm is None:
            if len(self.swarms) >= self.max_swarms:
                self.swarms.popitem(last=False)
            swarm = self.swarms[key] = OrderedDict()
        self.swarms.move_to_end(key)
        addr = (entry.ip, entry.port)
        swarm.pop(addr, None)
        swarm[addr] = entry
        while len(swarm) > self.max_peers:
            swarm.popitem(last=False)

    def remove(self, key: bytes, ip: str, port: int) -> None:
        swarm = self.swarms.get(key)
        if swarm is not None:
            swarm.pop((ip, port), None)
            if not swarm:
                del self.swarms[key]

    def peers(self, key: bytes, now: float, limit: int = 50, exclude: tuple[str, int] | None = None) -> list[PeerEntry]:
        swarm = self.swarms.get(key)
        if not swarm:
            return []
        out = []
        for addr, e in reversed(swarm.items()):  # freshest first
            if now - e.seen > self.ttl:
                continue
            if addr != exclude:
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    def expire(self, now: float) -> int:
        removed = 0
        for key in list(self.swarms):
            swarm = self.swarms[key]
            for addr in [a for a, e in swarm.items() if now - e.seen > self.ttl]:
                del swarm[addr]
                removed += 1
            if not swarm:
                del self.swarms[key]
        return removed

    def counts(self, key: bytes, now: float) -> tuple[int, int]:
        """(complete, incomplete) live peers of a swarm, for scrape."""
        peers = self.peers(key, now, limit=self.max_peers)
        done = sum(1 for p in peers if p.complete)
        return done, len(peers) - done

    def __len__(self) -> int:
        return sum(len(s) for s in self.swarms.values())


class IpRateLimit:
    """Per-IP token bucket, itself bounded (least recently seen IPs forgotten first)."""

    def __init__(self, rate: float, burst: float, max_ips: int = 100_000) -> None:
        self.rate, self.burst, self.max_ips = rate, burst, max_ips
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, ip: str, now: float) -> bool:
        tokens, stamp = self.buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        ok = tokens >= 1
        self.buckets[ip] = (tokens - 1 if ok else tokens, now)
        if len(self.buckets) > self.max_ips:
            self.buckets.popitem(last=False)
        return ok

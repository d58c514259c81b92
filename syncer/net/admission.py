"""Admission of connections that have not authenticated a paired device yet (pure; time injected).

Anyone can open a TCP connection or send a QUIC Initial; until the TLS handshake has completed
and the pairing gate (daemon `_handle_stream`) accepted the peer's device ID, a connection is
*pre-auth*. Pre-auth connections are kept cheap by the transports (small buffers) and counted
here, so a flood costs a bounded amount of memory and file descriptors:

- at most `max_per_ip` pre-auth connections per source address (an IPv6 source counts for its
  /64: one host owns a whole /64), a new one beyond that is refused;
- at most `max_total` altogether. When that is reached, the oldest connection that has not sent a
  byte yet is evicted for the newcomer (an idle connection is the cheapest to drop and the most
  likely to be a flood: a real client sends its ClientHello at once); if every pre-auth connection
  is busy handshaking, the newcomer is refused. So an idle flood can delay, but not lock out, a
  device that completes its handshake within a round trip.
- `release(ticket)` when the connection is accepted (a paired device) or closed; idempotent.

`KeyedRateLimit` is a token bucket per key (IP, device), itself bounded: the least recently
seen keys are forgotten first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_PREAUTH_TOTAL = 128
MAX_PREAUTH_PER_IP = 8


def source_key(ip: str) -> str:
    """The unit of per-source accounting: an IPv4 address, or an IPv6 /64 (IPv4-mapped IPv6
    addresses count as the IPv4 address)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


@dataclass(eq=False)
class Ticket:
    """One admitted pre-auth connection. `handle` is whatever the driver needs to close it."""

    key: str
    since: float
    handle: Any = None
    busy: bool = False  # has sent something (handshaking): not evicted for a newcomer
    released: bool = False


@dataclass(frozen=True)
class Admission:
    ticket: Ticket | None  # None: refused, close the connection at once
    evicted: Ticket | None = None  # close this one (already released)


@dataclass(frozen=True)
class GateStats:
    pending: int
    admitted: int
    refused: int
    evicted: int


@dataclass
class PreAuthGate:
    max_total: int = MAX_PREAUTH_TOTAL
    max_per_ip: int = MAX_PREAUTH_PER_IP
    evict_idle: bool = True
    _tickets: OrderedDict[int, Ticket] = field(default_factory=OrderedDict)  # oldest first
    _per_key: dict[str, int] = field(default_factory=dict)
    admitted: int = 0
    refused: int = 0
    evicted: int = 0

    def admit(self, ip: str, now: float, handle: Any = None) -> Admission:
        key = source_key(ip)
        if self._per_key.get(key, 0) >= self.max_per_ip:
            self.refused += 1
            return Admission(None)
        victim = None
        if len(self._tickets) >= self.max_total:
            victim = next((t for t in self._tickets.values() if not t.busy), None) if self.evict_idle else None
            if victim is None:
                self.refused += 1
                return Admission(None)
            self.release(victim)
            self.evicted += 1
        ticket = Ticket(key, now, handle)
        self._tickets[id(ticket)] = ticket
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self.admitted += 1
        return Admission(ticket, victim)

    def busy(self, ticket: Ticket) -> None:
        ticket.busy = True

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        self._tickets.pop(id(ticket), None)
        n = self._per_key.get(ticket.key, 0) - 1
        if n > 0:
            self._per_key[ticket.key] = n
        else:
            self._per_key.pop(ticket.key, None)

    def __len__(self) -> int:
        return len(self._tickets)

    def statistics(self) -> GateStats:
        return GateStats(len(self._tickets), self.admitted, self.refused, self.evicted)


class KeyedRateLimit:
    """A token bucket per key: `rate` per second, bursts up to `burst`; at most `max_keys`
    buckets (least recently seen dropped first, which only makes a forgotten key start full)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        tokens, stamp = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        ok = tokens >= cost
        self.buckets[key] = (tokens - cost if ok else tokens, now)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self.buckets)

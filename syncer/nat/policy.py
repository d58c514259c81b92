"""Dialer policy for reaching a device: which routes to try, in what order, and when to upgrade.

Pure (time is an argument). Rules:
- Routes, best first: DIRECT (tcp:// or quic:// dialled as given) < PUNCHED (QUIC over a hole
  punched via a relay's rendezvous or a paired device) < RELAYED (bytes through a relay) < VIA
  (bytes through a paired device: the last resort, it spends someone's own bandwidth).
- `plan()` lists every direct address in the order given, then a punch via each relay, then a
  punch coordinated by each helper device, then a relayed session via each relay, then a channel
  through each helper device. Relays are the device's own relay:// addresses first (it is
  registered there), then ours; duplicates dropped; punching only when NAT traversal is enabled.
- While connected over a route worse than DIRECT, `UpgradePolicy` says when to retry the better
  routes (every `interval`, doubling after each failed round up to `max_interval`). A new
  connection replaces the current one only if its route is strictly better.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class Route(enum.IntEnum):
    DIRECT = 0
    PUNCHED = 1
    RELAYED = 2
    VIA = 3  # relayed by a paired device


# per-attempt time limits (seconds) the dialer should apply
DIRECT_TIMEOUT = 10.0
PUNCH_TIMEOUT = 25.0  # rendezvous (<= 10) + punching (5) + QUIC handshake (10)
RELAY_TIMEOUT = 10.0
ASSIST_PUNCH_TIMEOUT = 20.0  # STUN (3) + answer through the helper (10) + punching (5) + QUIC
ASSIST_RELAY_TIMEOUT = 30.0  # channel (10) + end-to-end TLS (15)


@dataclass(frozen=True)
class Attempt:
    route: Route
    kind: str  # "tcp" | "quic" | "punch" | "relay"
    url: str  # the address to dial; for "punch" and "relay" the relay's relay:// URL
    timeout: float


def _relay_key(url: str) -> str:
    """Relays are the same if host and port are (the ?id= pin is not part of the identity)."""
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port}"


def plan(
    addresses: Iterable[str],
    relays: Iterable[str] = (),
    *,
    nat_enabled: bool = True,
    helpers: Iterable[str] = (),
    relay_via_devices: bool = True,
) -> list[Attempt]:
    """Ordered attempts to reach a device from its known `addresses`, our `relays` and the
    connected `helpers` (device IDs of paired devices that may coordinate or relay)."""
    direct: list[Attempt] = []
    relay_urls: list[str] = []
    seen: set[str] = set()
    for url in addresses:
        scheme = url.partition("://")[0]
        if scheme in ("tcp", "quic"):
            if url not in seen:
                seen.add(url)
                direct.append(Attempt(Route.DIRECT, scheme, url, DIRECT_TIMEOUT))
        elif scheme == "relay":
            relay_urls.append(url)
    relay_urls.extend(relays)
    unique: list[str] = []
    keys: set[str] = set()
    for url in relay_urls:
        if _relay_key(url) not in keys:
            keys.add(_relay_key(url))
            unique.append(url)
    punched = [Attempt(Route.PUNCHED, "punch", u, PUNCH_TIMEOUT) for u in unique] if nat_enabled else []
    helpers = list(helpers)
    if nat_enabled:
        punched += [Attempt(Route.PUNCHED, "assist-punch", f"device://{h}", ASSIST_PUNCH_TIMEOUT) for h in helpers]
    relayed = [Attempt(Route.RELAYED, "relay", u, RELAY_TIMEOUT) for u in unique]
    if relay_via_devices:
        relayed += [Attempt(Route.VIA, "assist-relay", f"device://{h}", ASSIST_RELAY_TIMEOUT) for h in helpers]
    return direct + punched + relayed


def should_replace(current: Route, new: Route) -> bool:
    """Keep one connection per device: replace it only with a strictly better route."""
    return new < current


@dataclass
class UpgradePolicy:
    """When to retry better routes while connected over a PUNCHED or RELAYED one."""

    interval: float = 60.0
    max_interval: float = 900.0
    current: Route | None = None
    next_at: float | None = None
    _delay: float = field(default=0.0, repr=False)

    def connected(self, route: Route, now: float) -> None:
        self.current = route
        self._delay = self.interval
        self.next_at = now + self._delay if route > Route.DIRECT else None

    def disconnected(self) -> None:
        self.current = None
        self.next_at = None

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def next_deadline(self) -> float | None:
        return self.next_at

    def candidates(self, attempts: list[Attempt]) -> list[Attempt]:
        """The attempts worth trying now: strictly better than the current route."""
        if self.current is None:
            return list(attempts)
        return [a for a in attempts if a.route < self.current]

    def retry_now(self, now: float) -> None:
        """New information (addresses, configuration): try the better routes at once."""
        if self.current is not None and self.current > Route.DIRECT:
            self.next_at = now

    def round_failed(self, now: float) -> None:
        """No better route this round: try again later, backing off."""
        if self.current is None or self.current == Route.DIRECT:
            return
        self._delay = min(self.max_interval, self._delay * 2)
        self.next_at = now + self._delay

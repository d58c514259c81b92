"""Authenticated peer connections: the pairing gate, one connection per device, and the wire
protocol session on top of a transport Stream.

Rules:
- a stream whose peer device is not paired is closed at once, before anything is sent, and the
  device is recorded as pending;
- an outbound stream that reached a different device than the one dialed is closed;
- at most one connection per device: when a second one completes its hello, both sides keep the
  same one (`preferred`), so simultaneous dials converge without negotiation.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncer.deviceid import DeviceId

# lower is better: direct beats punched beats relayed; among direct ones TCP beats QUIC
ROUTE_RANK = {"direct": 0, "punched": 1, "relayed": 2}
TRANSPORT_RANK = {"tcp": 0, "quic": 1, "memory": 1, "relay": 2}


@dataclass(frozen=True)
class ConnInfo:
    device: DeviceId
    transport: str
    address: str
    initiator: DeviceId  # who dialed
    established: float  # monotonic, for ordering
    since: float = 0.0  # wall clock, for display
    route: str = "direct"  # direct | punched | relayed

    @property
    def rank(self) -> tuple[int, int]:
        return ROUTE_RANK.get(self.route, 9), TRANSPORT_RANK.get(self.transport, 9)

    @property
    def label(self) -> str:
        """What `syncer status` shows as the transport."""
        return {"punched": f"{self.transport} (punched)", "relayed": "relay"}.get(self.route, self.transport)


def preferred(a: ConnInfo, b: ConnInfo) -> ConnInfo:
    """Which of two connections to the same device both sides keep (pure, symmetric)."""
    ra, rb = a.rank, b.rank
    if ra != rb:
        return a if ra < rb else b
    if a.initiator != b.initiator:
        return a if a.initiator.raw < b.initiator.raw else b
    # same dialer twice: it redialed because it believes the older one dead
    return a if a.established > b.established else b

"""Authenticated peer connections: the pairing gate, one connection per device, and the wire
protocol session on top of a transport Stream.

Rules:
- a stream whose peer device is not paired is closed at once, before anything is sent, and the
  device is recorded as pending;
- an outbound stream that reached a different device than the one dialed is closed;
- at most one connection per device: when a second one completes its hello, both sides keep the
  same one (`preferred`), so simultaneous dials converge without negotiation;
- so that they seldom have to: of two devices that start dialing each other at the same moment
  (both started, or paired, together), the one whose connection `preferred` would drop waits
  DIAL_YIELD first (`dials_first`), and dials only if the other has not connected by then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncer.deviceid import DeviceId

# lower is better: direct beats punched beats relayed; among direct ones TCP beats QUIC
ROUTE_RANK = {"direct": 0, "punched": 1, "relayed": 2}
TRANSPORT_RANK = {"tcp": 0, "quic": 1, "memory": 1, "relay": 2}
# a TLS handshake, Hello and session for nothing on each side otherwise: 8 devices paired at once
# made 56 connections for 28 pairs; the wait costs only the side whose dial would lose a tie,
# and only when the other cannot reach it (no address of ours, NAT): then it dials itself
DIAL_YIELD = 1.0


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


def dials_first(local: DeviceId, remote: DeviceId) -> bool:
    """Whether `local` dials `remote` at once: on a tie `preferred` keeps the connection the
    lower ID dialed (pure, and the two sides agree)."""
    return local.raw < remote.raw


@dataclass
class DialTurns:
    """Which unconnected devices the dialer may dial now (pure; time injected): those we dial
    first, and the others once they have had DIAL_YIELD to dial us."""

    local: DeviceId
    waiting_since: dict[DeviceId, float] = field(default_factory=dict)

    def may_dial(self, device: DeviceId, now: float) -> bool:
        if dials_first(self.local, device):
            return True
        return now - self.waiting_since.setdefault(device, now) >= DIAL_YIELD

    def connected(self, device: DeviceId) -> None:
        """The next wait starts when the connection is gone (both sides redial then)."""
        self.waiting_since.pop(device, None)

    def restart(self, dialing_us: set[DeviceId]) -> None:
        """The config changed (the other side's may have too): everyone's turn first again,
        except devices known to be dialing us already (we refused them as unknown until now:
        they back off, and waiting for them would add their back-off to the pairing)."""
        self.waiting_since = dict.fromkeys(dialing_us, float("-inf"))


def preferred(a: ConnInfo, b: ConnInfo) -> ConnInfo:
    """Which of two connections to the same device both sides keep (pure, symmetric)."""
    ra, rb = a.rank, b.rank
    if ra != rb:
        return a if ra < rb else b
    if a.initiator != b.initiator:
        return a if a.initiator.raw < b.initiator.raw else b
    # same dialer twice: it redialed because it believes the older one dead
    return a if a.established > b.established else b

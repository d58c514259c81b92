"""What kind of NAT we are behind, from what observers saw (pure).

An observation is one observer's answer to "which address do you see this socket at?" (a STUN
server, or a paired device answering STUN on its QUIC socket), with the local address the
packets left from. For one local UDP socket:
- every observer sees the local address itself: **no NAT** (a public address);
- observers at two or more different IPs all see the same address: **endpoint-independent**
  mapping ("cone": a hole punched towards one peer works for all, so punching works);
- they see different ports (or IPs): **endpoint-dependent** mapping ("symmetric": the mapping
  towards a new peer is unknown in advance; punching fails, a relay is needed);
- fewer than two distinct observer IPs: **unknown** (one observer cannot tell the two apart).
"""

from __future__ import annotations

from dataclasses import dataclass

Addr = tuple[str, int]

NO_NAT = "no-nat"
INDEPENDENT = "endpoint-independent"
DEPENDENT = "endpoint-dependent"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Observation:
    observer: str  # "stun:HOST:PORT" or "device:SHORTID"
    observer_addr: Addr
    local: Addr  # where the request left from (the source address towards that observer)
    mapped: Addr  # where the observer saw it come from
    at: float


def classify(observations: list[Observation]) -> str:
    if not observations:
        return UNKNOWN
    if all(o.mapped == o.local for o in observations):
        return NO_NAT
    if len({o.observer_addr[0] for o in observations}) < 2:
        return UNKNOWN
    return INDEPENDENT if len({o.mapped for o in observations}) == 1 else DEPENDENT


def external(observations: list[Observation]) -> list[Addr]:
    """Distinct mapped addresses, most observed first."""
    counts: dict[Addr, int] = {}
    for o in observations:
        counts[o.mapped] = counts.get(o.mapped, 0) + 1
    return sorted(counts, key=lambda a: -counts[a])

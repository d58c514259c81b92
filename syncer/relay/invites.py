"""Which relay invitations a device answers (pure; time injected).

A relay forwards to us whatever device asks for a session (`Invite`) or a punch (`PunchInvite`);
answering one costs a new TLS connection to the relay (or UDP binds for a punch). Rules:
- the `policy` (from the daemon: "is this device paired?") is asked first: an invitation from
  any other device is ignored before anything is opened;
- at most `max_total` invitations are being answered at once, and `max_per_device` from one
  device (a paired device that misbehaves cannot starve the others);
- each device gets `rate` invitations per second on average (bursts of `burst`).
`admit()` says yes or no; every yes is followed by exactly one `done()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from syncer.deviceid import DeviceId
from syncer.net.admission import KeyedRateLimit

MAX_TOTAL = 8
MAX_PER_DEVICE = 2
RATE = 1.0
BURST = 4.0

Policy = Callable[[DeviceId], bool]


@dataclass
class InviteGate:
    policy: Policy | None = None
    max_total: int = MAX_TOTAL
    max_per_device: int = MAX_PER_DEVICE
    rate: float = RATE
    burst: float = BURST
    refused: int = 0  # not allowed by the policy
    limited: int = 0  # allowed, but over a cap or the rate
    accepted: int = 0
    _active: dict[DeviceId, int] = field(default_factory=dict)
    _limit: KeyedRateLimit | None = None

    def __post_init__(self) -> None:
        self._limit = KeyedRateLimit(self.rate, self.burst, max_keys=1024)

    def allowed(self, device: DeviceId) -> bool:
        return self.policy is None or self.policy(device)

    def admit(self, device: DeviceId, now: float) -> bool:
        if not self.allowed(device):
            self.refused += 1
            return False
        assert self._limit is not None
        if (
            sum(self._active.values()) >= self.max_total
            or self._active.get(device, 0) >= self.max_per_device
            or not self._limit.allow(str(device), now)
        ):
            self.limited += 1
            return False
        self._active[device] = self._active.get(device, 0) + 1
        self.accepted += 1
        return True

    def done(self, device: DeviceId) -> None:
        n = self._active.get(device, 0) - 1
        if n > 0:
            self._active[device] = n
        else:
            self._active.pop(device, None)

    @property
    def active(self) -> int:
        return sum(self._active.values())

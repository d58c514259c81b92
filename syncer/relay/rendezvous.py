"""Rendezvous bookkeeping (pure; time is an argument).

Rules:
- A cookie is issued to an authenticated TLS connection (a control connection, or one punch
  request) and names that device in UDP `Bind(cookie)` datagrams; revoked when it closes.
- `bind(cookie, addr)` records the UDP address the relay observed for it.
- A punch between requester R and target T is *ready* once both cookies were bound at or after
  the punch was opened (fresh binds: an old address may belong to an expired NAT mapping).
  Ready punches are returned exactly once, then forgotten.
- At most `max_punches` pending; the server cancels a punch not ready within its punch timeout.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from syncer.deviceid import DeviceId
from syncer.net.udp_messages import TOKEN_LEN

Addr = tuple[str, int]


class PunchLimit(Exception):
    pass


@dataclass
class Binding:
    device: DeviceId
    addr: Addr | None = None
    bound_at: float = float("-inf")


@dataclass(frozen=True)
class PendingPunch:
    punch_id: bytes
    requester_cookie: bytes
    target_cookie: bytes
    opened: float


@dataclass(frozen=True)
class ReadyPunch:
    punch_id: bytes
    requester_cookie: bytes
    requester_addr: Addr
    target_cookie: bytes
    target_addr: Addr


@dataclass
class Rendezvous:
    max_punches: int = 1000
    _bindings: dict[bytes, Binding] = field(default_factory=dict)
    _punches: dict[bytes, PendingPunch] = field(default_factory=dict)

    def issue_cookie(self, device: DeviceId) -> bytes:
        cookie = secrets.token_bytes(TOKEN_LEN)
        self._bindings[cookie] = Binding(device)
        return cookie

    def revoke(self, cookie: bytes) -> None:
        self._bindings.pop(cookie, None)
        for pid in [k for k, v in self._punches.items() if cookie in (v.requester_cookie, v.target_cookie)]:
            del self._punches[pid]

    def binding(self, cookie: bytes) -> Binding | None:
        return self._bindings.get(cookie)

    def open_punch(self, requester_cookie: bytes, target_cookie: bytes, now: float) -> bytes:
        if len(self._punches) >= self.max_punches:
            raise PunchLimit("too many punches in progress")
        punch_id = secrets.token_bytes(TOKEN_LEN)
        self._punches[punch_id] = PendingPunch(punch_id, requester_cookie, target_cookie, now)
        return punch_id

    def cancel(self, punch_id: bytes) -> None:
        self._punches.pop(punch_id, None)

    def bind(self, cookie: bytes, addr: Addr, now: float) -> list[ReadyPunch]:
        """Record `addr` for `cookie`; returns the punches that became ready. Unknown cookies
        are ignored (returns [])."""
        b = self._bindings.get(cookie)
        if b is None:
            return []
        b.addr, b.bound_at = addr, now
        ready = []
        for pid, pp in list(self._punches.items()):
            if cookie not in (pp.requester_cookie, pp.target_cookie):
                continue
            r, t = self._bindings.get(pp.requester_cookie), self._bindings.get(pp.target_cookie)
            if r and t and r.addr and t.addr and r.bound_at >= pp.opened and t.bound_at >= pp.opened:
                del self._punches[pid]
                ready.append(ReadyPunch(pid, pp.requester_cookie, r.addr, pp.target_cookie, t.addr))
        return ready

    @property
    def pending(self) -> int:
        return len(self._punches)

"""Relay session pairing and limits (pure; time is an argument).

Rules:
- `open(requester, target)` creates a pending session with a fresh random token, unless
  `max_sessions` (pending + active) are in use. The token goes to the target only, over its
  authenticated control connection.
- `accept(token, device)` pairs it: the token must exist, still be pending, not be older than
  `pending_timeout`, and `device` must be the invited target (a leaked token is useless to
  anyone else). A token is accepted at most once.
- The server closes a session not accepted within `pending_timeout` (and frees its slot).
- `IdleTimer` says when a pipe saw no bytes for too long (transfer/ratelimit.py's `TokenBucket`
  caps a pipe's byte rate).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from syncer.deviceid import DeviceId
from syncer.relay import protocol as p


class SessionRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Session:
    token: bytes
    requester: DeviceId
    target: DeviceId
    created: float
    paired: bool = False


@dataclass
class SessionTable:
    max_sessions: int
    pending_timeout: float
    _sessions: dict[bytes, Session] = field(default_factory=dict)

    def open(self, requester: DeviceId, target: DeviceId, now: float) -> Session:
        if len(self._sessions) >= self.max_sessions:
            raise SessionRefused(p.LIMIT, "relay session limit reached")
        token = secrets.token_bytes(p.TOKEN_LEN)
        s = Session(token, requester, target, now)
        self._sessions[token] = s
        return s

    def accept(self, token: bytes, device: DeviceId, now: float) -> Session:
        s = self._sessions.get(token)
        if s is None or s.paired or now - s.created > self.pending_timeout:
            raise SessionRefused(p.NOT_FOUND, "unknown or expired session token")
        if device != s.target:
            raise SessionRefused(p.NOT_FOUND, "session token was issued to another device")
        s.paired = True
        return s

    def close(self, token: bytes) -> None:
        self._sessions.pop(token, None)

    @property
    def pending(self) -> int:
        return sum(not s.paired for s in self._sessions.values())

    @property
    def active(self) -> int:
        return sum(s.paired for s in self._sessions.values())


@dataclass
class IdleTimer:
    timeout: float
    last: float

    def touch(self, now: float) -> None:
        self.last = now

    def deadline(self) -> float:
        return self.last + self.timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline()

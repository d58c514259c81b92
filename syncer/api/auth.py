"""Who may use the control API (pure: every method takes `now`).

- Scripts and the CLI: `Authorization: Bearer TOKEN` (the token file in the state dir).
- Browsers: `syncer gui` asks the daemon for a one-time login URL (valid LOGIN_TTL seconds,
  usable once); opening it sets a session cookie (HttpOnly, SameSite=Strict). With
  `api.password` set, the login page also takes the password (failures are rate-limited).
- A cookie alone never changes anything: state-changing requests also need the session's CSRF
  token in the CSRF_HEADER header, which only a page of ours can read (GET /rest/gui/session).
- The Host header must name a loopback host (or one in `api.allowed_hosts`), so a web page whose
  DNS name is rebound to 127.0.0.1 cannot talk to the API.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections import OrderedDict
from dataclasses import dataclass

LOGIN_TTL = 300.0
SESSION_IDLE_TTL = 7 * 24 * 3600.0
MAX_LOGIN_TOKENS = 16
MAX_SESSIONS = 64
CSRF_HEADER = "X-Syncer-CSRF"
PASSWORD_FAILURES = 5  # allowed within FAILURE_WINDOW before logins are refused for a while
FAILURE_WINDOW = 60.0


@dataclass
class Session:
    id: str
    csrf: str
    last_used: float


class Sessions:
    """One-time login tokens and browser sessions, both bounded (oldest dropped first)."""

    def __init__(self) -> None:
        self._logins: OrderedDict[str, float] = OrderedDict()  # token -> expires
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: list[float] = []

    def new_login_token(self, now: float) -> str:
        token = secrets.token_urlsafe(24)
        self._logins[token] = now + LOGIN_TTL
        while len(self._logins) > MAX_LOGIN_TOKENS:
            self._logins.popitem(last=False)
        return token

    def redeem(self, token: str, now: float) -> Session | None:
        """A session for a valid login token; the token is gone afterwards either way."""
        expires = None
        for known in list(self._logins):
            if hmac.compare_digest(known.encode(), token.encode()):
                expires = self._logins.pop(known)
                break
        if expires is None or now > expires:
            return None
        return self._new_session(now)

    def login_password(self, given: str, password: str, now: float) -> Session | None:
        """A session if `given` is the configured password; None (also while locked out)."""
        self._failures = [t for t in self._failures if now - t < FAILURE_WINDOW]
        if not password or len(self._failures) >= PASSWORD_FAILURES:
            return None
        if hmac.compare_digest(given.encode(), password.encode()):
            return self._new_session(now)
        self._failures.append(now)
        return None

    def locked_out(self, now: float) -> bool:
        return len([t for t in self._failures if now - t < FAILURE_WINDOW]) >= PASSWORD_FAILURES

    def _new_session(self, now: float) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), now)
        self._sessions[s.id] = s
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return s

    def get(self, session_id: str, now: float) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None:
            return None
        if now - s.last_used > SESSION_IDLE_TTL:
            del self._sessions[session_id]
            return None
        s.last_used = now
        self._sessions.move_to_end(session_id)
        return s

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def split_host(host_header: str) -> str:
    """The host part of a Host header: `[::1]:8384` -> `::1`, `a.b:80` -> `a.b`."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    if h.count(":") == 1:
        return h.partition(":")[0]
    return h  # a bare IPv6 address, or no port


def is_loopback(host: str) -> bool:
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    if not host_header:
        return False
    if "*" in allowed:
        return True
    host = split_host(host_header)
    return is_loopback(host) or host in {a.lower() for a in allowed}


def csrf_ok(session: Session, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(session.csrf.encode(), header.encode())

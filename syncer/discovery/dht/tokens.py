"""announce_peer tokens (pure; time injected): bound to the querier's IP with a secret that
rotates every ROTATE seconds; a token from the current or the previous secret is accepted."""

from __future__ import annotations

import hashlib
import hmac
import secrets

ROTATE = 300.0


class Tokens:
    def __init__(self, now: float) -> None:
        self.secrets = [secrets.token_bytes(16), secrets.token_bytes(16)]
        self.rotated = now

    def _rotate(self, now: float) -> None:
        while now - self.rotated >= ROTATE:
            self.secrets = [secrets.token_bytes(16), self.secrets[0]]
            self.rotated += ROTATE

    def issue(self, ip: str, now: float) -> bytes:
        self._rotate(now)
        return hashlib.sha1(self.secrets[0] + ip.encode()).digest()[:8]

    def valid(self, token: bytes, ip: str, now: float) -> bool:
        self._rotate(now)
        return any(hmac.compare_digest(token, hashlib.sha1(s + ip.encode()).digest()[:8]) for s in self.secrets)

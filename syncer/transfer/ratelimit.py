"""Token-bucket rate limit (pure; time injected): `limits.max_send_kbps` / `max_recv_kbps`, and the
relay server's per-pipe cap."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # bytes per second; 0 = unlimited
    burst: float = 0.0
    tokens: float = 0.0
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.burst <= 0:
            self.burst = max(self.rate * 0.25, 256 << 10)
        self.tokens = self.burst

    def set_rate(self, rate: float) -> None:
        """A new limit (config reloaded); sessions keep using this same bucket."""
        self.rate = rate
        self.burst = max(rate * 0.25, 256 << 10)
        self.tokens = min(self.tokens, self.burst)

    def take(self, n: int, now: float) -> float:
        """Account for sending n bytes now; returns how long to wait before sending them."""
        if self.rate <= 0:
            return 0.0
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

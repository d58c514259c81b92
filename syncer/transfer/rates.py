"""Transfer rate over a sliding window (pure; time injected)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 5.0
BUCKET = 0.5


@dataclass
class RateMeter:
    window: float = WINDOW
    total: int = 0
    _buckets: deque[list[float]] = field(default_factory=deque)  # [bucket start, bytes]

    def add(self, n: int, now: float) -> None:
        self.total += n
        start = now - (now % BUCKET)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([start, float(n)])
        self._expire(now)

    def rate(self, now: float) -> float:
        """Bytes per second over the last `window` seconds."""
        self._expire(now)
        return sum(b[1] for b in self._buckets) / self.window

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window:
            self._buckets.popleft()

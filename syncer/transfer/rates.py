"""Transfer rate over a sliding window (pure; time injected)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 5.0
BUCKET = 0.5
MIN_SPAN = 1.0  # a young meter divides by at least this, so one early burst is not a huge rate


@dataclass
class RateMeter:
    window: float = WINDOW
    total: int = 0
    first: float | None = None
    _buckets: deque[list[float]] = field(default_factory=deque)  # [bucket start, bytes]

    def add(self, n: int, now: float) -> None:
        if self.first is None:
            self.first = now
        self.total += n
        start = now - (now % BUCKET)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([start, float(n)])
        self._expire(now)

    def rate(self, now: float) -> float:
        """Bytes per second over the last `window` seconds (over the time since the first bytes
        while that is shorter: a new connection's rate is known within a second, not five)."""
        self._expire(now)
        if not self._buckets or self.first is None:
            return 0.0
        span = min(self.window, max(MIN_SPAN, now - self.first))
        return sum(b[1] for b in self._buckets) / span

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window:
            self._buckets.popleft()

"""Reconnect backoff per device (pure; time injected)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

INITIAL = 0.5
MAXIMUM = 60.0


@dataclass
class Backoff:
    rng: random.Random = field(default_factory=random.Random)
    initial: float = INITIAL
    maximum: float = MAXIMUM
    failures: int = 0
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> None:
        delay = min(self.maximum, self.initial * (2**self.failures))
        # +-25 % jitter so devices that failed together do not retry in lock step
        self.next_at = now + delay * self.rng.uniform(0.75, 1.25)
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0
        self.next_at = 0.0

    def reset(self) -> None:
        """New information (an address appeared, config changed): try again now."""
        self.succeeded()

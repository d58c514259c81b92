"""One clock for the orchestrators (folders, sync model, sessions, daemon).

Pure parts take `now` as an argument; the code that drives them reads it from a `Clock` and
sleeps until the deadline they report. Tests hand in a `FakeClock` and move time themselves.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def sleep_until(clock: Clock, deadline: float | None, wake: asyncio.Event | None = None) -> None:
    """Sleep until `deadline` (monotonic; None: no deadline) or until `wake` is set."""
    delay = None if deadline is None else max(0.0, deadline - clock.monotonic())
    if wake is None:
        if delay is not None:
            await clock.sleep(delay)
        return
    if wake.is_set():
        return
    if delay is None:
        await wake.wait()
        return
    waiter = asyncio.ensure_future(wake.wait())
    sleeper = asyncio.ensure_future(clock.sleep(delay))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()


class FakeClock:
    """Time moves only when a test calls `advance`; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self.now = start
        self.wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

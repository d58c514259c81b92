"""Background tasks that never die silently.

Each task is a coroutine factory run under a supervisor: if it raises, the traceback is logged,
the error is kept (a folder shows it in `syncer status`), and the task is started again after a
backoff that doubles from MIN_BACKOFF to MAX_BACKOFF and resets once a run lasted HEALTHY_RUN.
A task that returns is done. `stop()` cancels everything and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from syncer.runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
HEALTHY_RUN = 60.0


@dataclass(frozen=True)
class TaskFailure:
    task: str
    error: str
    at: float  # wall clock
    restarts: int


class Supervisor:
    def __init__(self, owner: str, clock: Clock | None = None, on_failure: Callable[[TaskFailure], None] | None = None) -> None:
        self.owner = owner
        self.clock = clock or SystemClock()
        self.on_failure = on_failure
        self.failures: dict[str, TaskFailure] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name} already running")
        self._tasks[name] = asyncio.ensure_future(self._run(name, factory))

    def running(self, name: str) -> bool:
        t = self._tasks.get(name)
        return t is not None and not t.done()

    async def _run(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = MIN_BACKOFF
        restarts = 0
        while True:
            started = self.clock.monotonic()
            try:
                await factory()
                self.failures.pop(name, None)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point: nothing escapes unlogged
                if self.clock.monotonic() - started >= HEALTHY_RUN:
                    backoff = MIN_BACKOFF
                failure = TaskFailure(name, f"{type(e).__name__}: {e}", self.clock.time(), restarts)
                self.failures[name] = failure
                log.error("%s: background task %s failed (restart %d in %.0f s)", self.owner, name, restarts + 1, backoff, exc_info=True)
                if self.on_failure is not None:
                    self.on_failure(failure)
                await self.clock.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                restarts += 1

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

"""Background tasks never die silently: a crash is logged with its traceback, kept for status,
and the task restarted with a doubling backoff (simulated time)."""

from __future__ import annotations

import asyncio
import logging

from syncer.runtime.clock import FakeClock
from syncer.runtime.supervisor import MIN_BACKOFF, Supervisor


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_crashing_task_is_logged_shown_and_restarted_with_backoff(caplog):
    clock = FakeClock()
    runs: list[float] = []
    failures = []

    async def flaky() -> None:
        runs.append(clock.monotonic())
        if len(runs) <= 3:
            raise RuntimeError("database is locked")

    async def main() -> None:
        sup = Supervisor("folder x", clock, failures.append)
        sup.spawn("rescans", flaky)
        await _settle()
        assert len(runs) == 1 and "rescans" in sup.failures
        assert "database is locked" in sup.failures["rescans"].error
        for _ in range(3):
            clock.advance(100)
            await _settle()
        assert [round(b - a) for a, b in zip(runs, runs[1:], strict=False)] == [100, 100, 100]  # restarted each time
        assert not sup.running("rescans") and "rescans" not in sup.failures  # it finished cleanly
        await sup.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert len(failures) == 3
    assert sum(1 for r in caplog.records if "background task rescans failed" in r.getMessage() and r.exc_info) == 3


def test_backoff_doubles():
    clock = FakeClock()
    runs: list[float] = []

    async def always_fails() -> None:
        runs.append(clock.monotonic())
        raise ValueError("boom")

    async def main() -> None:
        sup = Supervisor("x", clock)
        sup.spawn("t", always_fails)
        await _settle()
        t = MIN_BACKOFF
        for _ in range(4):
            clock.advance(t)
            await _settle()
            t *= 2
        await sup.stop()

    asyncio.run(main())
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps == [MIN_BACKOFF, 2 * MIN_BACKOFF, 4 * MIN_BACKOFF, 8 * MIN_BACKOFF]


def test_a_task_set_keeps_its_tasks_and_reports_each_failure():
    from syncer.runtime.tasks import TaskSet

    async def main() -> None:
        failures: list[BaseException] = []
        tasks = TaskSet(failures.append)
        gate = asyncio.Event()

        async def fails() -> None:
            raise ValueError("boom")

        waiting = tasks.spawn(gate.wait())
        failing = tasks.spawn(fails())
        await asyncio.gather(failing, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert [str(e) for e in failures] == ["boom"]
        assert list(tasks) == [waiting]
        tasks.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert waiting.cancelled() and len(tasks) == 0 and len(failures) == 1  # a cancel is no failure

    asyncio.run(main())

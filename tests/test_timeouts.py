"""runtime.timeouts.wait_for: asyncio.wait_for's contract, without 3.11's lost cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from syncer.runtime.timeouts import wait_for

LOOPS = ["asyncio", "uvloop"]


def run(loop: str, coro_fn):
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(coro_fn())


async def _ticking_loop(ev: asyncio.Event, impl) -> None:
    """The daemon's dialer pattern: wait for a wake-up or a tick, forever."""
    while True:
        ev.clear()
        with contextlib.suppress(TimeoutError):
            await impl(ev.wait(), 5)


async def _cancel_as_woken(impl) -> bool:
    """Cancel the loop in the same turn as its event is set; True if the task stopped."""
    ev = asyncio.Event()
    task = asyncio.ensure_future(_ticking_loop(ev, impl))
    await asyncio.sleep(0.01)
    ev.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    task.cancel()  # a second cancel, so a swallowing implementation does not leak the task
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return bool(done)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancellation_in_the_turn_the_wait_completes_is_not_lost(loop):
    assert run(loop, lambda: _cancel_as_woken(wait_for))


def test_python_3_11_wait_for_loses_it_which_is_why_this_exists():
    import sys

    if sys.version_info >= (3, 12):
        pytest.skip("fixed in CPython 3.12")
    assert not run("asyncio", lambda: _cancel_as_woken(asyncio.wait_for))  # noqa: TID251


@pytest.mark.parametrize("loop", LOOPS)
def test_result_timeout_and_no_limit(loop):
    async def go() -> None:
        async def later(v: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return v

        assert await wait_for(later(1, 0), 1) == 1
        assert await wait_for(later(2, 0.01), None) == 2
        with pytest.raises(TimeoutError):
            await wait_for(later(3, 5), 0.01)
        with pytest.raises(TimeoutError):
            await wait_for(later(4, 5), 0)  # expired already: cancelled, TimeoutError
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(5)
        assert await wait_for(fut, 0) == 5  # expired but done: its result

    run(loop, go)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_awaited_coroutine_is_cancelled_on_timeout(loop):
    async def go() -> None:
        cancelled = asyncio.Event()

        async def slow() -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(TimeoutError):
            await wait_for(slow(), 0.01)
        assert cancelled.is_set()

    run(loop, go)

"""`wait_for` that never loses a cancellation (use it instead of asyncio.wait_for).

Python 3.11's asyncio.wait_for runs the awaitable in a task of its own; when the caller is
cancelled in the same loop turn as that task completes, it returns the result and the
cancellation is gone (CPython gh-86296, fixed in 3.12 by building wait_for on
asyncio.timeout). A loop such as `while True: await wait_for(event.wait(), tick)` then never
stops: a daemon whose dialer was woken in the turn it was cancelled kept dialing and never
exited. This is 3.12's implementation, on the timeout context manager 3.11 already has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await `aw`, raising TimeoutError (and cancelling it) after `timeout` seconds; None waits
    without limit. A cancellation of the caller always propagates."""
    if timeout is not None and timeout <= 0:
        fut = asyncio.ensure_future(aw)
        if not fut.done():
            fut.cancel()
            try:
                await asyncio.wait({fut})  # let it finish cancelling
            except asyncio.CancelledError:
                fut.cancel()
                raise
        try:
            return fut.result()
        except asyncio.CancelledError as e:
            raise TimeoutError from e
    async with asyncio.timeout(timeout):
        return await aw

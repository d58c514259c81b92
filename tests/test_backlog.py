"""The verify backlog: readers pause while more than the limit waits, and resume once it drains."""

from __future__ import annotations

import asyncio

from syncer.runtime.backlog import Backlog


def test_pause_above_the_limit_and_resume_at_it():
    async def run() -> None:
        b = Backlog(32)
        assert b.add(16) is None and b.add(16) is None  # at the limit: go on
        wait = b.add(16)
        assert wait is not None and not wait.is_set() and b.pending == 48
        b.done(8)
        assert not wait.is_set()  # 40 still above
        b.done(8)
        assert wait.is_set() and b.pending == 32 and b.peak == 48
        assert b.add(1) is b.room and not b.room.is_set()
        b.done(1)
        await asyncio.wait_for(b.room.wait(), 1)

    asyncio.run(run())

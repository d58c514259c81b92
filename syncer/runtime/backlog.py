"""A byte budget for work handed from the event loop to worker threads.

Received blocks are verified and written by a thread pool while the sessions read on. The
puller's request budget ends when a piece arrives, not when it is on disk, so when the disk is
slower than the network (writeback throttling, a USB disk) pieces would pile up in the pool's
queue without bound: 16 MiB each for a big file. The model counts those bytes here; while more
than `limit` are waiting, the session that delivered the last piece stops reading (the peer's
TCP window closes) until the pool has caught up.
"""

from __future__ import annotations

import asyncio


class Backlog:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self.peak = 0  # largest `pending` seen (for tests and debugging)
        self.room = asyncio.Event()
        self.room.set()

    def add(self, n: int) -> asyncio.Event | None:
        """`n` bytes were handed over; an event to wait for before taking more, or None."""
        self.pending += n
        self.peak = max(self.peak, self.pending)
        if self.pending > self.limit:
            self.room.clear()
            return self.room
        return None

    def done(self, n: int) -> None:
        self.pending -= n
        if self.pending <= self.limit:
            self.room.set()

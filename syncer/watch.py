"""Noticing changes: watchdog events, debounced and aggregated, plus a jittered full rescan.

The watchdog observer thread hands raw paths to the asyncio loop; the pure `Aggregator` decides
when a batch is due (after `delay` of quiet in the folder, but no later than `max_delay` after
the batch's first event, so a file written continuously is still scanned). Time is an argument.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import unicodedata
from pathlib import Path

from syncer.ignore import always_ignored

DEFAULT_DELAY = 0.1
MAX_DELAY_FACTOR = 10
JITTER = 0.1


class Aggregator:
    """Debounces a folder's events as a whole: a batch of every changed path is due once the
    folder has been quiet for `delay`, or `max_delay` after the batch's first event, so a burst
    (a big copy, a delete of many files) is scanned as one batch and a file written without pause
    still gets scanned."""

    def __init__(self, delay: float = DEFAULT_DELAY, max_delay: float | None = None) -> None:
        self.delay = delay
        self.max_delay = max(delay, max_delay if max_delay is not None else max(1.0, delay * MAX_DELAY_FACTOR))
        self._paths: set[str] = set()
        self._first = 0.0
        self._last = 0.0

    def add(self, path: str, now: float) -> None:
        if not self._paths:
            self._first = now
        self._paths.add(path)
        self._last = now

    def next_deadline(self) -> float | None:
        if not self._paths:
            return None
        return min(self._last + self.delay, self._first + self.max_delay)

    def due(self, now: float) -> set[str]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return set()
        batch, self._paths = self._paths, set()
        return batch

    def __len__(self) -> int:
        return len(self._paths)


class RescanSchedule:
    """Full rescans every `interval` ± JITTER, so many folders/devices do not rescan in step."""

    def __init__(self, interval: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self.rng = rng or random.Random()

    def next(self, now: float) -> float:
        return now + self.interval * self.rng.uniform(1 - JITTER, 1 + JITTER)


class FolderWatcher:
    """Watches a folder tree with watchdog; `await next_batch()` yields sets of changed paths
    (relative, '/'-separated, NFC)."""

    def __init__(self, root: Path, delay: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.root = Path(root)
        self.loop = loop or asyncio.get_event_loop()
        self.agg = Aggregator(delay)
        self._wake = asyncio.Event()
        self._observer = None
        self._lock = threading.Lock()
        self._incoming: list[str] = []  # paths from the watchdog thread, not yet handed over

    def start(self) -> None:
        from watchdog import events as ev
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    # filtered here, in the watchdog thread: a download writes its temp file
                    # block by block, and waking the event loop for each write is measurable
                    rel = watcher._relative(os.fsdecode(p)) if p else None
                    if rel is not None:
                        watcher._hand_over(rel)

        self._observer = Observer()
        # no open/close-without-write events: with inotify they come from every read of a
        # file (our own scanner hashing, serving blocks to peers) and never mean a change
        wanted = [
            ev.FileCreatedEvent, ev.DirCreatedEvent, ev.FileDeletedEvent, ev.DirDeletedEvent,
            ev.FileModifiedEvent, ev.DirModifiedEvent, ev.FileMovedEvent, ev.DirMovedEvent, ev.FileClosedEvent,
        ]
        try:
            self._observer.schedule(Handler(), str(self.root), recursive=True, event_filter=wanted)
        except TypeError:  # watchdog < 4 has no event_filter
            self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    def _relative(self, path: str) -> str | None:
        """Watchdog thread: the folder-relative NFC name of `path`, None for what is never
        synced (outside the folder, .syncer/, temp files, OS junk)."""
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return None
        if rel == "." or rel.startswith(".."):
            return None
        rel = unicodedata.normalize("NFC", rel.replace(os.sep, "/"))
        return None if always_ignored(rel) else rel

    def _hand_over(self, rel: str) -> None:
        """Watchdog thread: queue a name; wake the event loop only for the first of a burst."""
        with self._lock:
            self._incoming.append(rel)
            first = len(self._incoming) == 1
        if first:
            self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        with self._lock:
            names, self._incoming = self._incoming, []
        now = time.monotonic()
        for rel in names:
            self.agg.add(rel, now)
        self._wake.set()

    async def next_batch(self) -> set[str]:
        while True:
            deadline = self.agg.next_deadline()
            if deadline is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            if deadline > now:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - now)
                except TimeoutError:
                    pass
                continue
            batch = self.agg.due(now)
            if batch:
                return batch

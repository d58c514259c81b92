"""Noticing changes: filesystem events, debounced and aggregated, plus a jittered full rescan.

On Linux the events come from `syncer.inotify` (one thread for the whole tree); elsewhere from
watchdog's observer for the platform. Either thread hands changed names to the asyncio loop; the
pure `Aggregator` decides when a batch is due (after `delay` of quiet in the folder, but no later
than `max_delay` after the batch's first event, so a file written continuously is still
scanned). Time is an argument.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from syncer import inotify
from syncer.ignore import always_ignored
from syncer.inotify import InotifyWatch
from syncer.runtime.timeouts import wait_for

if TYPE_CHECKING:  # watchdog is imported when a watcher starts
    from watchdog.observers.api import BaseObserver
    from watchdog.observers.inotify_c import Mask

log = logging.getLogger(__name__)

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


def _wanted_events() -> list[type]:
    """Event types that can mean a change. Never open/close-without-write: with inotify they
    come from every read of a file (our own scans, serving blocks to peers). Never
    DirModifiedEvent: watchdog adds one for the parent of every created, deleted, moved or
    closed file, and the parent's name would make the scan walk that whole directory again."""
    from watchdog import events as ev

    names = ["FileCreatedEvent", "DirCreatedEvent", "FileDeletedEvent", "DirDeletedEvent", "FileModifiedEvent",
             "FileMovedEvent", "DirMovedEvent", "FileClosedEvent",
             "FileAttribEvent", "DirAttribEvent"]  # chmod, touch: attrib events since watchdog 5
    return [getattr(ev, n) for n in names if hasattr(ev, n)]


def _observer(modify_events: bool) -> BaseObserver:
    """A watchdog observer; on Linux one whose inotify mask we choose.

    Content changes are taken from IN_CLOSE_WRITE (the writer closed the file), not from
    IN_MODIFY (every write(2)) unless `modify_events`, as lsyncd does by default. IN_MODIFY
    reports a file at every write while it is still being written: a big copy gets scanned
    half-done, over and over; and our own downloads, which write their temp file block by block,
    cost the watchdog threads an event per block (0.6 s of GIL per GiB received, measured) only
    for the event to be dropped. Files written without ever being closed are found by the
    periodic rescan. (watchdog's own mask cannot have IN_ATTRIB without IN_MODIFY.)"""
    from watchdog.observers import Observer

    try:
        from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
        from watchdog.observers.inotify import InotifyEmitter
        from watchdog.observers.inotify_c import InotifyConstants as C
    except ImportError:  # not Linux: the platform's observer
        return Observer()
    mask = C.IN_CREATE | C.IN_DELETE | C.IN_DELETE_SELF | C.IN_MOVE | C.IN_ATTRIB | C.IN_CLOSE_WRITE
    if modify_events:
        mask |= C.IN_MODIFY

    class Emitter(InotifyEmitter):
        def get_event_mask_from_filter(self) -> Mask:
            return cast("Mask", mask)  # watchdog's NewType for the int it ORs together

    return BaseObserver(Emitter, timeout=DEFAULT_OBSERVER_TIMEOUT)


class FolderWatcher:
    """Watches a folder tree; `await next_batch()` yields sets of changed paths (relative,
    '/'-separated, NFC), or None when events were lost and only a full scan can tell.
    `backend`: "inotify" (Linux), "watchdog", or None for the best available."""

    def __init__(
        self,
        root: Path,
        delay: float,
        loop: asyncio.AbstractEventLoop | None = None,
        modify_events: bool = False,
        own: Callable[[str], bool] | None = None,
        backend: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.modify_events = modify_events
        self.own = own  # True for a path that is exactly what syncer itself just wrote there
        self.loop = loop or asyncio.get_event_loop()
        self.agg = Aggregator(delay)
        self._wake = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._inotify: InotifyWatch | None = None
        self.backend = backend or ("inotify" if inotify.available() else "watchdog")
        self._lock = threading.Lock()
        self._incoming: list[str] = []  # paths from the watch thread, not yet handed over
        self._lost = False  # the watch thread lost events: the next batch is a full scan
        self._full = False
        self._error: BaseException | None = None  # the watch thread failed
        self._stopped = False

    def start(self) -> None:
        """Watch the tree; returns once every directory has its watch (any thread)."""
        if self.backend == "inotify":
            with self._lock:
                if self._stopped:
                    return
                iw = self._inotify = InotifyWatch(self.root, self._changes, self.modify_events, skip=always_ignored, on_error=self._failed)
            iw.start()  # after a stop() meanwhile: nothing
            return
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    # filtered here, in the watchdog thread, not in the event loop
                    rel = watcher._relative(os.fsdecode(p)) if p else None
                    if rel is not None:
                        watcher._hand_over(rel)

        observer = self._observer = _observer(self.modify_events)
        try:
            observer.schedule(Handler(), str(self.root), recursive=True, event_filter=_wanted_events())
        except TypeError:  # watchdog < 4 has no event_filter
            observer.schedule(Handler(), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            iw, self._inotify = self._inotify, None
        if iw is not None:
            iw.stop()
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
        return self._kept(rel.replace(os.sep, "/"))

    def _kept(self, rel: str) -> str | None:
        """Watch thread: `rel` as NFC, None for what is never synced or what apply itself just
        wrote there (if still exactly that)."""
        rel = unicodedata.normalize("NFC", rel)
        if always_ignored(rel) or (self.own is not None and self.own(rel)):
            return None
        return rel

    def _changes(self, names: list[str], lost: bool) -> None:
        """inotify thread: a burst's changed names (each once), filtered here, handed over together."""
        keep = [rel for rel in map(self._kept, dict.fromkeys(names)) if rel is not None]
        if not keep and not lost:
            return
        with self._lock:
            first = not self._incoming and not self._lost
            self._incoming.extend(keep)
            self._lost = self._lost or lost
        if first:
            self.loop.call_soon_threadsafe(self._take_incoming)

    def _failed(self, e: BaseException) -> None:
        """Watch thread: it has stopped; the next batch raises (the folder restarts the watcher)."""
        self._error = e
        self.loop.call_soon_threadsafe(self._wake.set)

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
            lost, self._lost = self._lost, False
        now = time.monotonic()
        if lost:
            log.warning("%s: filesystem events were lost (queue overflow, or the folder root moved); rescanning the folder", self.root)
            self._full = True
            self.agg.add("", now)  # the batch's deadline; a full scan covers every name
        for rel in names:
            self.agg.add(rel, now)
        self._wake.set()

    async def next_batch(self) -> set[str] | None:
        while True:
            if self._error is not None:
                raise RuntimeError(f"the watch thread of {self.root} failed: {self._error!r}")
            deadline = self.agg.next_deadline()
            if deadline is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            if deadline > now:
                self._wake.clear()
                try:
                    await wait_for(self._wake.wait(), deadline - now)
                except TimeoutError:
                    pass
                continue
            batch = self.agg.due(now)
            if batch:
                if self._full:
                    self._full = False
                    return None
                return batch

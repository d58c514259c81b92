"""The daemon's event log: a bounded ring buffer of typed events, read by long-polling clients.

Rules (as Syncthing's events API):
- Every event gets the next id: ids increase by exactly one, so a client that sees a jump from
  N to N+k knows it missed k-1 events (they left the buffer before it asked).
- `since(N)` returns the events after id N still held; `wait()` long-polls: it returns as soon
  as at least one matching event exists, or an empty list when the timeout passes.
- Emitting never blocks and never awaits: waiters are woken (their futures resolved, through
  `call_soon_threadsafe` when the emitter is a worker thread), never written to. A slow or stuck
  HTTP client only holds its own response.
- The clock is injected; everything but `wait()` is plain synchronous code.

The domain helpers (`changes`, `items_finished`, `progress`) turn what the engine already has
(FileInfo lists, scan callbacks) into events, so the engine emits with one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from syncer.model.conflicts import is_conflict_copy, original_of
from syncer.runtime.timeouts import wait_for

DEFAULT_CAPACITY = 10_000
MAX_ITEMS_PER_EVENT = 100  # names listed in one change event; the count is always exact
PROGRESS_INTERVAL = 0.5  # seconds between two progress events of one source

# The event types, and what their data holds (docs/api.md has the full list).
STARTING = "Starting"  # {device_id}
FOLDER_STATE_CHANGED = "FolderStateChanged"  # {folder, from, to, error}
FOLDER_ERROR = "FolderError"  # {folder, error}
FOLDER_SCAN_PROGRESS = "FolderScanProgress"  # {folder, done, total}
FOLDER_SCANNED = "FolderScanned"  # {folder, changed, deleted, errors, duration}
FOLDER_SUMMARY = "FolderSummary"  # {folder, summary}
FOLDER_COMPLETION = "FolderCompletion"  # {folder, device, completion, need_bytes, need_items}
DOWNLOAD_PROGRESS = "DownloadProgress"  # {folder, items: [{name, blocks, have, size}]}
ITEM_STARTED = "ItemStarted"  # {folder, item, action}
ITEM_FINISHED = "ItemFinished"  # {folder, item, action, error}
LOCAL_CHANGE = "LocalChangeDetected"  # {folder, count, items: [{name, type, action}]}
REMOTE_CHANGE = "RemoteChangeDetected"  # {folder, device, count, items}
DEVICE_CONNECTED = "DeviceConnected"  # {device, name, transport, route, address}
DEVICE_DISCONNECTED = "DeviceDisconnected"  # {device, reason}
DEVICE_STATISTICS = "DeviceStatistics"  # {devices: {id: {down_rate, up_rate, ...}}}
PENDING_DEVICES_CHANGED = "PendingDevicesChanged"  # {devices: [...]}
PENDING_FOLDERS_CHANGED = "PendingFoldersChanged"  # {folders: [...]}
CONFLICT_CREATED = "ConflictCreated"  # {folder, item, original}
CONFLICT_RESOLVED = "ConflictResolved"  # {folder, item, original}
CONFIG_SAVED = "ConfigSaved"  # {}

EVENT_TYPES = frozenset({
    STARTING, FOLDER_STATE_CHANGED, FOLDER_ERROR, FOLDER_SCAN_PROGRESS, FOLDER_SCANNED,
    FOLDER_SUMMARY, FOLDER_COMPLETION, DOWNLOAD_PROGRESS, ITEM_STARTED, ITEM_FINISHED,
    LOCAL_CHANGE, REMOTE_CHANGE, DEVICE_CONNECTED, DEVICE_DISCONNECTED, DEVICE_STATISTICS,
    PENDING_DEVICES_CHANGED, PENDING_FOLDERS_CHANGED, CONFLICT_CREATED, CONFLICT_RESOLVED,
    CONFIG_SAVED,
})


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    time: float  # wall clock, seconds
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": self.time, "data": self.data}


@dataclass(frozen=True, slots=True)
class EventStats:
    emitted: int  # ids handed out so far
    held: int  # events in the buffer now
    oldest_id: int  # 0 when empty
    missed: int  # events clients asked for after they had left the buffer
    waiters: int


class EventLog:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._clock = clock
        self._next_id = 1
        self._lock = threading.Lock()  # worker threads emit too
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._missed = 0

    # --- writing ------------------------------------------------------------------------
    def emit(self, type: str, **data: Any) -> Event:
        with self._lock:
            ev = Event(self._next_id, type, self._clock(), data)
            self._next_id += 1
            self._events.append(ev)
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            _wake(loop, fut)
        for listener in self._listeners:
            listener(ev)
        return ev

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` synchronously on every emit (for counters such as /metrics;
        it must be cheap and must not block)."""
        self._listeners.append(listener)

    # --- reading ------------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def since(self, since: int, types: frozenset[str] | None = None, limit: int | None = None) -> list[Event]:
        with self._lock:
            return self._since(since, types, limit)

    def _since(self, since: int, types: frozenset[str] | None, limit: int | None) -> list[Event]:
        if not self._events:
            return []
        first = self._events[0].id
        start = since + 1 - first
        if start < 0:
            self._missed += -start
            start = 0
        picked = (e for e in itertools.islice(self._events, start, None) if types is None or e.type in types)
        return list(itertools.islice(picked, limit))

    async def wait(
        self, since: int, types: frozenset[str] | None = None, timeout: float = 60.0, limit: int | None = None
    ) -> list[Event]:
        """Events after `since` (matching `types`), waiting up to `timeout` s for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scan_from = since  # events up to here were seen and did not match: skip them next time
        while True:
            with self._lock:
                found = self._since(scan_from, types, limit)
                if found:
                    return found
                scan_from = max(scan_from, self.last_id)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            try:
                await wait_for(fut, remaining)
            except TimeoutError:
                return []
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, fut))

    def statistics(self) -> EventStats:
        with self._lock:
            return EventStats(
                emitted=self._next_id - 1,
                held=len(self._events),
                oldest_id=self._events[0].id if self._events else 0,
                missed=self._missed,
                waiters=len(self._waiters),
            )

    # --- domain helpers (one-line emission from the engine) -----------------------------
    def changes(self, folder: str, files: Iterable[Any], device: str | None = None) -> None:
        """A batch of changed FileInfos found by a scan (device None) or announced by a peer:
        one change event listing at most MAX_ITEMS_PER_EVENT names, plus a conflict event per
        conflict copy that appeared (or, locally, was deleted)."""
        items: list[dict[str, Any]] = []
        count = 0
        conflicts: list[tuple[str, str, bool]] = []
        for f in files:
            count += 1
            deleted = bool(f.deleted)
            if len(items) < MAX_ITEMS_PER_EVENT:
                items.append({"name": f.name, "type": _type_name(f.type), "action": "deleted" if deleted else "modified"})
            if is_conflict_copy(f.name):
                conflicts.append((f.name, original_of(f.name), deleted))
        if not count:
            return
        if device is None:
            self.emit(LOCAL_CHANGE, folder=folder, count=count, items=items)
        else:
            self.emit(REMOTE_CHANGE, folder=folder, device=device, count=count, items=items)
        for name, original, deleted in conflicts:
            if not deleted:
                self.emit(CONFLICT_CREATED, folder=folder, item=name, original=original)
            elif device is None:
                self.emit(CONFLICT_RESOLVED, folder=folder, item=name, original=original)

    def items_started(self, folder: str, files: Iterable[Any]) -> None:
        for f in files:
            self.emit(ITEM_STARTED, folder=folder, item=f.name, action="delete" if f.deleted else "update")

    def items_finished(self, folder: str, stored: Iterable[Any], errors: Iterable[tuple[str, str]] = ()) -> None:
        """Files applied (FileInfos as stored in the local index) and (name, error) failures."""
        for f in stored:
            self.emit(ITEM_FINISHED, folder=folder, item=f.name, action="delete" if f.deleted else "update", error=None)
            if not f.deleted and is_conflict_copy(f.name):
                self.emit(CONFLICT_CREATED, folder=folder, item=f.name, original=original_of(f.name))
        for name, err in errors:
            self.emit(ITEM_FINISHED, folder=folder, item=name, action="update", error=str(err))

    def progress(self, type: str, interval: float = PROGRESS_INTERVAL, **data: Any) -> Callable[[int, int], None]:
        """A `(done, total)` callback (the scanner's progress hook) emitting at most one event
        per `interval` seconds, plus the final one; safe to call from a worker thread."""
        last = [float("-inf")]

        def report(done: int, total: int) -> None:
            now = self._clock()
            if done < total and now - last[0] < interval:
                return
            last[0] = now
            self.emit(type, done=done, total=total, **data)

        return report


def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        if not fut.done():
            fut.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _type_name(t: Any) -> str:
    return {0: "file", 1: "directory", 2: "symlink"}.get(int(t), "file")


def parse_types(raw: str) -> frozenset[str] | None:
    """`events=A,B` of a request; None = all types."""
    names = frozenset(t.strip() for t in raw.split(",") if t.strip())
    return names or None

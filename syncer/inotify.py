"""Watching a folder tree with Linux inotify: one thread, one read per burst of events.

Why not watchdog's inotify observer on Linux: it passes every event through three threads and
two queues (the reader, the emitter that pairs moves, the dispatcher), and its reader wakes for
nearly every event. Receiving 10,000 small files is five events each (the temp file's create,
attribute change and close, the rename's two halves); on 2026-12-02 that cost its threads 2.9
core-seconds, more than the download itself, and syncing with the watcher on ran at 1,400
files/s instead of 2,600 with it off. Here one thread sleeps in poll(2), lets a burst gather for
BURST_S, reads it whole, and hands the folder the changed names in one call. What the events
mean is `watchtree` (pure); this module is the I/O around it.

Watches never follow a symlink (IN_DONT_FOLLOW | IN_ONLYDIR, and the walk does not descend
into one). A directory swapped for a symlink in the instant between the walk and the watch
could get a watch outside the folder; that only makes the folder scan more names, and the scan
reads through the confined layer, which refuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from syncer import watchtree as wt

log = logging.getLogger(__name__)

BURST_S = 0.01  # a burst gathers this long before it is read: one wake-up per burst, not per event
READ_SIZE = 64 << 10
MAX_READS = 16  # per burst (1 MiB, about 25,000 events); the rest waits for the next round
BASE_MASK = (
    wt.IN_CREATE | wt.IN_DELETE | wt.IN_MOVE | wt.IN_ATTRIB | wt.IN_CLOSE_WRITE | wt.IN_DELETE_SELF
    | wt.IN_MOVE_SELF | wt.IN_ONLYDIR | wt.IN_DONT_FOLLOW | wt.IN_EXCL_UNLINK
)

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def available() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(_lib(), "inotify_init1")
    except OSError:
        return False


def _max_watches() -> str:
    try:
        return Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    except OSError:
        return "?"


class InotifyWatch:
    """Watches `root` and every directory below it (but those `skip` names). From the watch
    thread, `on_changes(names, rescan)` gets the folder-relative names (as on disk, '/'-separated)
    that changed in a burst; `rescan` when events were lost and only a full scan can tell."""

    def __init__(
        self, root: Path, on_changes: Callable[[list[str], bool], None], modify_events: bool = False,
        skip: Callable[[str], bool] = lambda rel: False,
    ) -> None:
        self.root = os.fspath(root)
        self.on_changes = on_changes
        self.mask = BASE_MASK | (wt.IN_MODIFY if modify_events else 0)
        self.skip = skip
        self.tree = wt.WatchTree()  # the watch thread's alone once it runs
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start and stop
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._unwatched = 0  # directories left without a watch (limit reached)

    def start(self, wait: bool = True) -> None:
        """Open the inotify instance and start the watch thread, which first walks the tree
        adding watches; with `wait`, return once that walk is done. Nothing once stopped."""
        with self._lock:
            if self._stopping.is_set() or self._thread is not None:
                return
            lib = _lib()
            fd = lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                e = ctypes.get_errno()
                raise OSError(e, f"inotify_init1: {os.strerror(e)} (fs.inotify.max_user_instances reached?)")
            self._fd = fd
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._run, name=f"inotify {self.root}", daemon=True)
            self._thread.start()
        if wait:
            self._ready.wait()

    def stop(self) -> None:
        """Stop the watch thread (safe from any thread, before or during start, more than once)."""
        with self._lock:
            self._stopping.set()
            thread, self._thread = self._thread, None
            if thread is not None:
                os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join(10)
        with self._lock:
            for fd in (self._fd, self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._wake_r = self._wake_w = -1

    # --- the watch thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._watch_below("")
            self._ready.set()
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while not self._stopping.is_set():
                ready = poller.poll()
                if self._stopping.is_set() or any(fd == self._wake_r for fd, _ in ready):
                    return
                time.sleep(BURST_S)
                self._burst()
        except Exception:
            log.exception("watching %s stopped; changes are found by the periodic rescan only", self.root)
        finally:
            self._ready.set()

    def _burst(self) -> None:
        events: list[wt.Event] = []
        for _ in range(MAX_READS):
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            events.extend(wt.parse(buf))
        if not events:
            return
        fx = self.tree.handle(events)
        lib = _lib()
        for wd in fx.unwatch:
            lib.inotify_rm_watch(self._fd, wd)  # EINVAL if already gone: nothing to do
        for rel in fx.watch:
            self._watch_below(rel)
        if fx.changed or fx.rescan:
            self.on_changes(fx.changed, fx.rescan)

    def _watch_below(self, top: str) -> None:
        """Watch `top` and every directory below it (not through symlinks)."""
        lib = _lib()
        stack = [top]
        while stack and not self._stopping.is_set():
            rel = stack.pop()
            path = os.path.join(self.root, rel) if rel else self.root
            wd = lib.inotify_add_watch(self._fd, os.fsencode(path), self.mask)
            if wd < 0:
                e = ctypes.get_errno()
                if e == errno.ENOSPC:
                    if not self._unwatched:
                        log.warning(
                            "inotify watch limit reached (fs.inotify.max_user_watches = %s): changes in some "
                            "directories of %s are found by the periodic rescan only", _max_watches(), self.root,
                        )
                    self._unwatched += 1
                continue  # gone, not a directory any more, unreadable: nothing to watch
            self.tree.added(wd, rel)
            try:
                entries = os.scandir(path)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        child = f"{rel}/{entry.name}" if rel else entry.name
                        if not self.skip(child):
                            stack.append(child)

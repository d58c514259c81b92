"""Watching a folder tree with Linux inotify: one thread, one read per burst of events.

Why not watchdog's inotify observer on Linux: it passes every event through three threads and
two queues (the reader, the emitter that pairs moves, the dispatcher), and its reader wakes for
nearly every event. Receiving 10,000 small files is five events each (the temp file's create,
attribute change and close, the rename's two halves); on 2026-12-02 that cost its threads 2.9
core-seconds, more than the download itself, and syncing with the watcher on ran at 1,400
files/s instead of 2,600 with it off. Here one thread sleeps in poll(2), lets a burst gather for
BURST_S, reads it whole, and hands the folder the changed names in one call. What the events
mean is `watchtree` (pure); this module is the I/O around it.

Watches never follow a symlink: each directory is opened from its parent's fd with O_NOFOLLOW
and watched through that fd (/proc/self/fd/N), so a directory renamed while it is walked is
walked whole, and a directory swapped for a symlink is never entered. Lost events (a queue
overflow) or a vanished root make the next batch a full scan and set every watch up afresh.
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
from syncer.fs.layout import MAX_DEPTH

log = logging.getLogger(__name__)

BURST_S = 0.01  # a burst gathers this long before it is read: one wake-up per burst, not per event
READ_SIZE = 64 << 10
MAX_READS = 16  # per burst (1 MiB, about 25,000 events); the rest waits for the next round
MASK = wt.IN_CREATE | wt.IN_DELETE | wt.IN_MOVE | wt.IN_ATTRIB | wt.IN_CLOSE_WRITE | wt.IN_ONLYDIR | wt.IN_EXCL_UNLINK
ROOT_MASK = wt.IN_DELETE_SELF | wt.IN_MOVE_SELF  # the root's own going (a subdirectory's, its parent reports)
MAX_RETRIES = 3  # bursts a new directory's walk waits for its parent's rename to be seen
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

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
    """Linux with inotify, and /proc (a watch is added through the directory's open fd)."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self/fd"):
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
    that changed in a burst; `rescan` when events were lost and only a full scan can tell (the
    watches are then set up afresh). `on_error(e)` if the thread fails: watching has stopped."""

    def __init__(
        self, root: Path, on_changes: Callable[[list[str], bool], None], modify_events: bool = False,
        skip: Callable[[str], bool] = lambda rel: False, on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.root = os.path.realpath(root)  # the user's own symlink to the folder is fine
        self.on_changes = on_changes
        self.on_error = on_error
        self.mask = MASK | (wt.IN_MODIFY if modify_events else 0)
        self.skip = skip
        self.tree = wt.WatchTree()  # the watch thread's alone once it runs
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start and stop
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error: OSError | None = None
        self._retry: list[tuple[wt.WatchedDir, str, int]] = []  # walks whose parent had moved on, tries
        self._unwatched = 0  # directories left without a watch (limit reached)

    def start(self, wait: bool = True) -> None:
        """Open the inotify instance and start the watch thread, which first walks the tree
        adding watches; with `wait`, return once that walk is done (OSError if the root cannot
        be watched). Nothing once stopped."""
        with self._lock:
            if self._stopping.is_set() or self._thread is not None:
                return
            self._open()
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._run, name=f"inotify {self.root}", daemon=True)
            self._thread.start()
        if wait:
            self._ready.wait()
            if self._start_error is not None:
                raise self._start_error

    def stop(self) -> None:
        """Stop the watch thread (safe from any thread, before or during start, more than once)."""
        with self._lock:
            self._stopping.set()
            thread, self._thread = self._thread, None
            if thread is not None:
                os.write(self._wake_w, b"x")
        if thread is None:
            return
        thread.join(10)
        if thread.is_alive():  # its fds stay open rather than be reused under it
            log.warning("the watch thread of %s did not stop", self.root)
            return
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    # --- the watch thread ----------------------------------------------------------
    def _open(self) -> None:
        fd = _lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)} (fs.inotify.max_user_instances reached?)")
        self._fd = fd

    def _run(self) -> None:
        try:
            try:
                self._watch_root()
            except OSError as e:
                self._start_error = e
                return
            finally:
                self._ready.set()
            while not self._stopping.is_set():
                poller = select.poll()  # afresh after a rebuild (a new inotify fd)
                poller.register(self._fd, select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
                fd = self._fd
                while fd == self._fd and not self._stopping.is_set():
                    ready = poller.poll()
                    if self._stopping.is_set() or any(f == self._wake_r for f, _ in ready):
                        return
                    time.sleep(BURST_S)
                    self._burst()
        except Exception as e:
            log.exception("watching %s stopped; changes are found by the periodic rescan only", self.root)
            if self.on_error is not None:
                self.on_error(e)

    def _burst(self) -> None:
        events: list[wt.Event] = []
        for _ in range(MAX_READS):
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            events.extend(wt.parse(buf))
        fx = self.tree.handle(events)
        if fx.rescan:
            self._rebuild()
            self.on_changes(fx.changed, True)
            return
        lib = _lib()
        for wd in fx.unwatch:
            lib.inotify_rm_watch(self._fd, wd)  # EINVAL if already gone: nothing to do
        todo, self._retry = self._retry + [(p, n, 0) for p, n in fx.watch], []
        for parent, name, tries in todo:
            if self.tree.alive(parent):
                self._watch_new(parent, name, tries)
        if fx.changed:
            self.on_changes(fx.changed, False)

    def _rebuild(self) -> None:
        """Events were lost (or the root went): a new inotify instance, every watch afresh."""
        old = self._fd
        self.tree = wt.WatchTree()
        self._retry = []
        self._open()
        os.close(old)
        try:
            self._watch_root()
        except OSError as e:
            log.warning("watching %s stopped: %s; changes are found by the periodic rescan only", self.root, e.strerror or e)
            self._stopping.set()

    def _watch_root(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._watch_dir(fd, None, "", self.mask | ROOT_MASK, root=True)
        finally:
            os.close(fd)

    def _watch_new(self, parent: wt.WatchedDir, name: str, tries: int = 0) -> None:
        """A directory that appeared in `parent`: open the parent by its current name, one
        component at a time, never through a symlink, and watch the new one and below it."""
        rel = wt.path(parent)
        child_rel = f"{rel}/{name}" if rel else name
        if self.skip(child_rel):
            return
        fds = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        try:
            for comp in rel.split("/") if rel else []:
                try:
                    fds.append(os.open(comp, _DIR_FLAGS, dir_fd=fds[-1]))
                except OSError:  # an ancestor renamed meanwhile: its events re-link the parent first
                    if tries < MAX_RETRIES:
                        self._retry.append((parent, name, tries + 1))
                    return
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=fds[-1])
            except OSError:
                return  # renamed, removed or replaced since: the parent's watch reports that
            try:
                self._watch_dir(fd, parent, name, self.mask, depth=child_rel.count("/") + 1)
            finally:
                os.close(fd)
        finally:
            for f in fds:
                os.close(f)

    def _watch_dir(self, fd: int, parent: wt.WatchedDir | None, name: str, mask: int, root: bool = False, depth: int = 0) -> None:
        """Watch the open directory `fd` (`name` in `parent`) and every directory below it,
        each opened from its parent's fd without following a symlink: a directory renamed while
        it is walked is still walked whole, and nothing outside the folder is ever watched."""
        wd = _lib().inotify_add_watch(self._fd, f"/proc/self/fd/{fd}".encode(), mask)
        if wd < 0:
            e = ctypes.get_errno()
            if root:
                raise OSError(e, f"cannot watch {self.root}: {os.strerror(e)}")
            if e == errno.ENOSPC:
                if not self._unwatched:
                    log.warning(
                        "inotify watch limit reached (fs.inotify.max_user_watches = %s): changes in some "
                        "directories of %s are found by the periodic rescan only", _max_watches(), self.root,
                    )
                self._unwatched += 1
            return
        node = self.tree.add(wd, parent, name)
        if depth >= MAX_DEPTH:
            return  # deeper than any name syncer syncs (the scanner refuses them too)
        rel = wt.path(node)
        try:
            with os.scandir(fd) as entries:
                subdirs = [e.name for e in entries if _is_dir(e)]
        except OSError:
            return
        for sub in subdirs:
            if self._stopping.is_set():
                return
            if self.skip(f"{rel}/{sub}" if rel else sub):
                continue
            try:
                cfd = os.open(sub, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # renamed or removed since the listing: this directory's watch reports it
            try:
                self._watch_dir(cfd, node, sub, mask, depth=depth + 1)
            finally:
                os.close(cfd)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False

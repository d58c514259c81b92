"""The confined filesystem of one shared folder: every access syncer makes to a folder (scan,
hashing, job preparation, apply, conflict copies, archiving, deletes, serving, stale temp files,
the trash can) goes through a `FolderFS`, and nothing here ever follows a symlink or leaves the
folder root.

Rules:
- Names are folder-relative and '/'-separated ("a/b/c.txt"); empty, '.', '..' and NUL
  components are refused, and so are names deeper than MAX_COMPONENTS.
- Each name is resolved one component at a time from a directory fd of the root: every
  directory is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent's fd, and the last
  component is acted on with the `*at` form of the call (`dir_fd=`, `follow_symlinks=False`,
  O_NOFOLLOW). A parent that is a symlink or not a directory raises `UnsafePath` for that name
  only. A symlink as the last component is the object itself: lstat, readlink, unlink and
  rename act on the link, never on its target, and opening or chmod-ing it is refused.
- Directory fds are cached (LRU, keyed by relative path) because the engine touches many files
  in few directories. A cached fd is re-validated on every use: each component must still be
  the same directory (dev, inode) under the same name in its parent, so a directory moved away
  or swapped for a symlink since it was opened is never used (the open fd pins the inode, so a
  new directory cannot reuse its number meanwhile). The layer also drops entries itself when it
  renames or removes a directory.
- Cached fds are used only under one lock (the folder's worker thread, the hashing threads and
  the event loop share a FolderFS) and closed only at the end of an operation, so an fd number
  can never be closed and reused under a call that is using it. fds handed out (`open_read`,
  `open_temp`, `walk`) belong to the caller.
- The root path is resolved once (the configured path may be a symlink the user made);
  `refresh_root` notices when the directory at that path is no longer the one held open (the
  folder was moved, or a disk unmounted) and starts afresh. Idle folders hold no fds
  (`release_idle`), so a disk can be unmounted.

Without openat2(RESOLVE_BENEATH) in Python, a swap between the last validation and the call
that uses the fd can still redirect that one call into the swapped-in directory; never through
a symlink, since every step refuses symlinks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from syncer.fs.layout import MAX_DEPTH, VERSIONS_DIR

# internal names may sit below `.syncer/versions/`, two components deeper than a synced name
MAX_COMPONENTS = MAX_DEPTH + VERSIONS_DIR.count("/") + 1
DIR_CACHE = 128  # directory fds kept open per folder
IDLE_S = 30.0  # a folder untouched this long closes its fds (a disk can be unmounted)

_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW  # cached: only ever used as dir_fd
_LIST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW  # to read a directory
# O_NONBLOCK: opening a FIFO planted under a file's name must not hang the worker thread
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_CREATE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY

_T = TypeVar("_T")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class UnsafePath(OSError):
    """`name` cannot be reached inside the folder without following a symlink: a parent on disk
    is a symlink or not a directory; or the name is malformed or too deep."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(errno.ENOTDIR, reason, name)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def split_name(name: str, max_components: int = MAX_COMPONENTS) -> list[str]:
    parts = name.split("/")
    if len(parts) > max_components:
        raise UnsafePath(name[:200], f"deeper than {max_components} path components")
    if "" in parts or "." in parts or ".." in parts or "\x00" in name:
        raise UnsafePath(name[:200], "not a normalised folder-relative name")
    return parts


def _parents(rel: str) -> Iterator[str]:
    """The directories above `rel` ("a/b/c": "a/b", then "a")."""
    i = rel.rfind("/")
    while i > 0:
        yield rel[:i]
        i = rel.rfind("/", 0, i)


def _openat(dir_fd: int, name: str, flags: int, mode: int = 0o777) -> int:
    """One component, relative to `dir_fd` (a seam: tests swap directories in between)."""
    return os.open(name, flags, mode, dir_fd=dir_fd)


@dataclass(slots=True)
class _Dir:
    fd: int
    dev: int
    ino: int


@dataclass
class Listing:
    """One directory of a walk. `entries`: (name as on disk, lstat, symlink target or "");
    `subdirs`: names of the subdirectories the walk will enter next — prune it in place, as with
    os.walk; `error`: the directory could not be read (or is too deep to enter)."""

    rel: str
    entries: list[tuple[str, os.stat_result, str]] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)
    errors: list[tuple[str, OSError]] = field(default_factory=list)
    error: OSError | None = None


class FolderFS:
    def __init__(self, root: Path | str, max_dirs: int = DIR_CACHE) -> None:
        self.root = Path(os.path.realpath(root))  # resolved once: the user's own symlink is fine
        self.max_dirs = max_dirs
        self._lock = threading.Lock()
        self._root: _Dir | None = None
        self._dirs: OrderedDict[str, _Dir] = OrderedDict()  # least recently used first
        self._below: dict[str, int] = {}  # dir -> how many cached dirs lie below it (_forget is then O(1) for the rest)
        self._graveyard: list[int] = []  # fds to close once the current operation is done
        self._used = time.monotonic()

    # --- directory fds (lock held) ---------------------------------------------------
    def _root_fd(self) -> int:
        if self._root is None:
            fd = os.open(self.root, _PATH_DIR)
            st = os.fstat(fd)
            self._root = _Dir(fd, st.st_dev, st.st_ino)
        return self._root.fd

    def _dir(self, parts: list[str], create: bool = False) -> int:
        """fd of the directory `parts`, every component validated; missing ones are made if
        `create`."""
        parent = self._root.fd if self._root is not None else self._root_fd()
        rel = ""
        for comp in parts:
            rel = f"{rel}/{comp}" if rel else comp
            d = self._dirs.get(rel)
            if d is not None:
                try:
                    st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
                    same = st.st_ino == d.ino and st.st_dev == d.dev
                except OSError:
                    same = False
                if same:
                    self._dirs.move_to_end(rel)
                    parent = d.fd
                    continue
                self._forget(rel)  # moved, removed or swapped since it was opened
            parent = self._open_dir(parent, comp, rel, create)
        return parent

    def _open_dir(self, parent: int, comp: str, rel: str, create: bool) -> int:
        try:
            fd = _openat(parent, comp, _PATH_DIR)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(comp, 0o755, dir_fd=parent)
            except FileExistsError:
                pass
            fd = self._open_dir_or_refuse(parent, comp, rel)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._not_a_dir(parent, comp, rel) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise self._not_a_dir(parent, comp, rel)
        self._dirs[rel] = _Dir(fd, st.st_dev, st.st_ino)
        for up in _parents(rel):
            self._below[up] = self._below.get(up, 0) + 1
        return fd

    def _uncache(self, rel: str, d: _Dir) -> None:
        """`rel` (with fd holder `d`) has left the cache: its fd is closed after the operation."""
        self._graveyard.append(d.fd)
        for up in _parents(rel):
            n = self._below[up] - 1
            if n:
                self._below[up] = n
            else:
                del self._below[up]

    def _open_dir_or_refuse(self, parent: int, comp: str, rel: str) -> int:
        try:
            return _openat(parent, comp, _PATH_DIR)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise self._not_a_dir(parent, comp, rel) from None
            raise

    @staticmethod
    def _not_a_dir(parent: int, comp: str, rel: str) -> UnsafePath:
        try:
            link = stat.S_ISLNK(os.stat(comp, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        return UnsafePath(rel, f"{rel!r} is a symlink (never followed)" if link else f"{rel!r} is not a directory")

    def _forget(self, rel: str) -> None:
        """Drop the cached fds of `rel` and everything below it (closed after the operation)."""
        if rel not in self._dirs and rel not in self._below:
            return  # the common case (a file installed or removed): no walk over the cache
        below = rel + "/"
        for key in [k for k in self._dirs if k == rel or k.startswith(below)]:
            self._uncache(key, self._dirs.pop(key))

    def _done(self) -> None:
        if not self._graveyard and len(self._dirs) <= self.max_dirs:
            return
        while len(self._dirs) > self.max_dirs:
            self._uncache(*self._dirs.popitem(last=False))
        for fd in self._graveyard:
            try:
                os.close(fd)
            except OSError:
                pass
        self._graveyard.clear()

    def _release(self) -> None:
        for d in self._dirs.values():
            self._graveyard.append(d.fd)
        self._dirs.clear()
        self._below.clear()
        if self._root is not None:
            self._graveyard.append(self._root.fd)
            self._root = None
        self._done()

    @contextmanager
    def _at(self, name: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(fd of the parent directory, last component) of `name`, under the lock."""
        parts = split_name(name)
        with self._lock:
            self._used = time.monotonic()
            try:
                yield self._dir(parts[:-1], create), parts[-1]
            finally:
                self._done()

    def _call(self, name: str, fn: Callable[..., _T], *args: Any, create: bool = False, **kw: Any) -> _T:
        """fn(last component, *args, dir_fd=parent fd, **kw) under the lock (the hot path of
        `_at`, without a generator)."""
        parts = split_name(name)
        with self._lock:
            self._used = time.monotonic()
            try:
                return fn(parts[-1], *args, dir_fd=self._dir(parts[:-1], create), **kw)
            finally:
                self._done()

    # --- root -----------------------------------------------------------------------
    def refresh_root(self) -> bool:
        """Is the folder root a directory? Starts afresh if it is no longer the directory we
        hold open (moved or replaced, a disk unmounted or mounted)."""
        with self._lock:
            try:
                st = os.stat(self.root, follow_symlinks=False)
            except OSError:
                self._release()
                return False
            if not stat.S_ISDIR(st.st_mode):
                self._release()
                return False
            if self._root is not None and (st.st_dev, st.st_ino) != (self._root.dev, self._root.ino):
                self._release()
            return True

    def release_idle(self, now: float, idle_s: float = IDLE_S) -> bool:
        """Close every cached fd if nothing used the folder for `idle_s` (monotonic `now`)."""
        with self._lock:
            if (self._root is None and not self._dirs) or now - self._used < idle_s:
                return False
            self._release()
            return True

    def close(self) -> None:
        with self._lock:
            self._release()

    def open_fds(self) -> int:
        """Cached fds (root included): for tests and statistics."""
        with self._lock:
            return len(self._dirs) + (self._root is not None)

    # --- queries --------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result:
        return self._call(name, os.stat, follow_symlinks=False)

    def lstat_or_none(self, name: str) -> os.stat_result | None:
        """None if `name` (or a parent) does not exist; UnsafePath if a parent is a symlink."""
        try:
            return self.lstat(name)
        except FileNotFoundError:
            return None

    def is_dir(self, name: str) -> bool:
        st = self.lstat_or_none(name)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def readlink(self, name: str) -> str:
        return self._call(name, os.readlink)

    def open_read(self, name: str) -> tuple[int, os.stat_result]:
        """A read-only fd of the regular file `name` (the caller closes it), and its fstat."""
        fd = self._call(name, os.open, _READ)
        return fd, _regular(fd, name)

    @staticmethod
    def open_read_at(dir_fd: int, base: str, name: str) -> tuple[int, os.stat_result]:
        """`open_read` of the entry `base` of a directory fd from `open_dir` (`name` for errors)."""
        fd = os.open(base, _READ, dir_fd=dir_fd)
        return fd, _regular(fd, name)

    def open_dir(self, name: str) -> int:
        """An fd of the directory `name` ("" = root) for `*at` calls of the caller's own, who
        closes it; validated now (for a short batch of reads, e.g. hashing a directory's
        files; changes go through the layer's own calls)."""
        parts = split_name(name) if name else []
        with self._lock:
            self._used = time.monotonic()
            try:
                return os.dup(self._dir(parts))
            finally:
                self._done()

    def read_bytes(self, name: str, limit: int) -> bytes:
        """The whole regular file `name`, refused if bigger than `limit`."""
        fd, st = self.open_read(name)
        try:
            if st.st_size > limit:
                raise OSError(errno.EFBIG, f"bigger than {limit} bytes", name)
            data = os.read(fd, limit + 1)
            if len(data) > limit:
                raise OSError(errno.EFBIG, f"bigger than {limit} bytes", name)
            return data
        finally:
            os.close(fd)

    # --- changes --------------------------------------------------------------------
    def open_temp(self, name: str, mode: int) -> tuple[int, os.stat_result]:
        """Open (creating it and its parent directories if needed) the regular file `name` for
        writing; the caller closes it."""
        fd = self._call(name, os.open, _CREATE, mode, create=True)
        return fd, _regular(fd, name)

    def makedirs(self, name: str) -> None:
        """`name` and its missing parents as directories (0755 before the umask)."""
        parts = split_name(name)
        with self._lock:
            self._used = time.monotonic()
            try:
                self._dir(parts, create=True)
            finally:
                self._done()

    def replace(self, src: str, dst: str) -> None:
        """Atomically rename `src` to `dst` (replacing it), creating dst's parents if needed."""
        sp, dp = split_name(src), split_name(dst)
        with self._lock:
            self._used = time.monotonic()
            try:
                sfd = self._dir(sp[:-1])
                dfd = self._dir(dp[:-1], create=True)
                os.replace(sp[-1], dp[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
                self._forget(src)
                self._forget(dst)
            finally:
                self._done()

    def install(self, tmp: str, name: str, mtime_ns: int, mode: int | None, replace: bool) -> os.stat_result:
        """Put the complete temp file `tmp` in place as `name` (both in one directory): give it
        `mtime_ns` (and `mode`), rename it over `name` — or, with `replace` False, only if
        nothing is there (FileExistsError otherwise, atomically: renameat2 RENAME_NOREPLACE) —
        and return the lstat of the result. One directory resolution for all of it (a download
        of many small files pays it once per file, not four times)."""
        tp, np = split_name(tmp), split_name(name)
        if tp[:-1] != np[:-1]:
            raise ValueError("a temp file is installed within its own directory")
        with self._lock:
            self._used = time.monotonic()
            try:
                dfd = self._dir(np[:-1], create=True)
                if mode is not None:
                    fd = _openat(dfd, tp[-1], _READ)
                    try:
                        _regular(fd, tmp)
                        os.fchmod(fd, mode)
                    finally:
                        os.close(fd)
                os.utime(tp[-1], ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
                if replace:
                    os.replace(tp[-1], np[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    _rename_noreplace(dfd, tp[-1], np[-1])
                self._forget(name)
                return os.stat(np[-1], dir_fd=dfd, follow_symlinks=False)
            finally:
                self._done()

    def unlink(self, name: str) -> None:
        self._call(name, os.unlink)

    def rmdir(self, name: str) -> None:
        with self._at(name) as (fd, base):
            os.rmdir(base, dir_fd=fd)
            self._forget(name)

    def symlink(self, target: str, name: str) -> None:
        """A symlink `name` -> `target` (creating parents); the target is never looked at."""
        parts = split_name(name)
        with self._lock:
            self._used = time.monotonic()
            try:
                os.symlink(target, parts[-1], dir_fd=self._dir(parts[:-1], create=True))
            finally:
                self._done()

    def utime(self, name: str, mtime_ns: int, atime_ns: int | None = None) -> None:
        self._call(name, os.utime, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns), follow_symlinks=False)

    def chmod(self, name: str, mode: int, directory: bool = False) -> None:
        """chmod the file (or, with `directory`, the directory) `name` itself: Linux has no
        lchmod, so the object is opened with O_NOFOLLOW and fchmod-ed; a symlink or another
        kind of object is refused."""
        via_proc = False
        with self._at(name) as (dfd, base):
            try:
                fd = _openat(dfd, base, _LIST_DIR if directory else _READ)
            except PermissionError:  # not readable by us: an O_PATH fd, chmod-ed through /proc
                fd = _openat(dfd, base, os.O_PATH | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0))
                via_proc = True
        try:
            kind = os.fstat(fd).st_mode
            if not (stat.S_ISDIR(kind) if directory else stat.S_ISREG(kind)):
                raise OSError(errno.EINVAL, "not a directory" if directory else "not a regular file", name)
            if via_proc:
                os.chmod(f"/proc/self/fd/{fd}", mode)
            else:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Flush the filesystem holding the folder (one call instead of an fsync per file)."""
        with self._lock:
            self._used = time.monotonic()
            try:
                fd = os.open(".", _LIST_DIR, dir_fd=self._root_fd())
            finally:
                self._done()
        try:
            if _libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    # --- walking --------------------------------------------------------------------
    def list_dir(self, rel: str) -> Listing:
        """One directory's entries (see `walk`)."""
        walker = self.walk(rel)
        try:
            listing = next(walker)
            listing.subdirs.clear()
            return listing
        finally:
            walker.close()

    def walk(self, top: str = "", max_components: int = MAX_COMPONENTS) -> Generator[Listing, None, None]:
        """Depth first below the directory `top` ("" = root), parents before children, never
        following a symlink: each directory is opened relative to its parent's fd with
        O_NOFOLLOW, so at most one fd per level is open. Iterative (no recursion limit); a
        directory whose entries would be deeper than `max_components` is yielded with an error
        instead of entered. Raises UnsafePath / FileNotFoundError if `top` itself cannot be
        opened."""
        parts = split_name(top) if top else []
        with self._lock:
            self._used = time.monotonic()
            try:
                parent = self._dir(parts[:-1])
                base = parts[-1] if parts else "."
                try:
                    fd = _openat(parent, base, _LIST_DIR)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise self._not_a_dir(parent, base, top) from None
                    raise
            finally:
                self._done()
        stack: list[list] = []  # [rel, fd, listing, next subdir index]
        try:
            stack.append([top, fd, None, 0])
            stack[-1][2] = listing = _list(top, fd)
            yield listing
            while stack:
                frame = stack[-1]
                rel, dfd, listing, i = frame
                if i >= len(listing.subdirs):
                    os.close(dfd)
                    stack.pop()
                    continue
                frame[3] = i + 1
                name = listing.subdirs[i]
                child = f"{rel}/{name}" if rel else name
                if child.count("/") + 2 > max_components:
                    yield Listing(child, error=UnsafePath(child[:200], f"entries deeper than {max_components} path components (not scanned)"))
                    continue
                try:
                    cfd = _openat(dfd, name, _LIST_DIR)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):  # swapped since it was listed
                        e = UnsafePath(child, "became a symlink or a file while scanned (not followed)")
                    yield Listing(child, error=e)
                    continue
                stack.append([child, cfd, None, 0])
                stack[-1][2] = listing = _list(child, cfd)
                yield listing
        finally:
            for frame in stack:
                os.close(frame[1])


_RENAME_NOREPLACE = 1
_renameat2 = getattr(_libc, "renameat2", None)


def _rename_noreplace(dfd: int, src: str, dst: str) -> None:
    """Rename within one directory unless `dst` exists (FileExistsError): atomic where the
    kernel and filesystem have renameat2, else a check then a rename."""
    if _renameat2 is not None:
        if _renameat2(dfd, os.fsencode(src), dfd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: this filesystem cannot
            raise OSError(err, os.strerror(err), dst)
    try:
        os.stat(dst, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def _regular(fd: int, name: str) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return st


def _list(rel: str, fd: int) -> Listing:
    out = Listing(rel)
    try:
        with os.scandir(fd) as it:
            for de in it:
                name = de.name
                try:
                    st = de.stat(follow_symlinks=False)  # fstatat(fd, name, AT_SYMLINK_NOFOLLOW)
                    target = ""
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        out.subdirs.append(name)
                    elif stat.S_ISLNK(mode):
                        target = os.readlink(name, dir_fd=fd)
                except OSError as e:
                    out.errors.append((name, e))
                    continue
                out.entries.append((name, st, target))
    except OSError as e:
        out.error = e
    return out

"""A folder's files as the transfer sees them: the temp files of downloads, blocks reused from
local files, blocks verified and written, and blocks read to serve peers.

Threads: `prepare` runs in the folder's worker thread; `write_block` in the verify pool;
`read_local` in the serving thread (which alone owns the fd cache). A `JobFile` fences writes:
once a job is aborted no write of it lands in the file (a newer job may reuse the temp file).

Every file is opened through the folder's confined layer (syncer/fs/confined.py): a temp file
whose parent on disk is a symlink or a file fails for that file alone, and a file behind a
symlinked parent is never read, for reuse or for serving. Cached serving fds are dropped when
their names change on disk and closed when idle (`close_idle`), so a deleted file's space comes
back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from syncer.fs import layout
from syncer.fs.blockhash import sha256_at
from syncer.fs.confined import FolderFS
from syncer.fs.serving import ServingFiles
from syncer.index.db import LOCAL, IndexDB
from syncer.index.fileinfo import FileInfo, FileType
from syncer.model import safe_write
from syncer.model.apply import check_syncable
from syncer.transfer.puller import JobSpec

SERVING_FDS = 64
SERVING_ROWS = 256  # local rows cached for serving (consecutive blocks of one file)
FALLOCATE_FROM = 1 << 20  # reserve the space of bigger downloads up front


class DiskFull(Exception):
    """Not enough free space (beyond the configured reserve) for this file."""


class JobFile:
    """The temp file of one job generation."""

    def __init__(self, name: str, gen: int, fd: int) -> None:
        self.name = name
        self.gen = gen
        self.fd = fd
        self.aborted = False
        # buffered writes to one file serialise on the kernel's inode lock, where a waiting
        # thread spins on the CPU; waiting on this lock sleeps instead (hashing stays parallel)
        self.lock = threading.Lock()

    def write(self, data: bytes | memoryview, offset: int) -> bool:
        """Write unless the job was aborted meanwhile (then False: nothing written)."""
        with self.lock:
            if self.aborted:
                return False
            os.pwrite(self.fd, data, offset)
            return True

    def read(self, size: int, offset: int) -> bytes | None:
        with self.lock:
            if self.aborted:
                return None
            return os.pread(self.fd, size, offset)

    def close(self) -> None:
        """Abort (fence) and close: a write still running finishes first, later ones are refused."""
        with self.lock:
            self.aborted = True
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = -1


def write_block(job: JobFile, data: bytes | memoryview, expected: bytes, offset: int) -> str:
    """Verify and write one received block (verify pool): 'ok', 'bad' (hash mismatch) or
    'aborted'; OSError (disk full...) propagates."""
    if hashlib.sha256(data).digest() != expected:
        return "bad"
    return "ok" if job.write(data, offset) else "aborted"


@dataclass
class Prepared:
    spec: JobSpec
    job: JobFile | None
    have: set[int]
    error: str = ""  # why not (then job is None)
    disk_full: bool = False


class Storage:
    def __init__(self, fs: FolderFS, folder: str, reserve_bytes: Callable[[], int], monotonic: Callable[[], float] = time.monotonic) -> None:
        self.fs = fs
        self.root = fs.root
        self.folder = folder
        self.reserve_bytes = reserve_bytes
        self.monotonic = monotonic
        self._fds = ServingFiles(SERVING_FDS)  # serving thread only
        self._rows: OrderedDict[str, FileInfo | None] = OrderedDict()  # serving thread only
        self._stale: set[str] = set()
        self._stale_lock = threading.Lock()

    # --- preparing downloads (worker thread) -------------------------------------------
    def prepare(self, db: IndexDB, specs: list[JobSpec], committed: int) -> list[Prepared]:
        """Open temp files, reuse verified blocks (resume) and identical local blocks (renames,
        copies, unchanged parts of an edited file), and check each file fits on the disk."""
        out: list[Prepared] = []
        known = db.known_hashes(self.folder, (h for s in specs for h in s.file.blocks))
        free = shutil.disk_usage(self.root).free - self.reserve_bytes() - committed
        for spec in specs:
            glob = spec.file
            tmp = layout.temp_name(glob.name)
            mode = safe_write.temp_mode(glob.permissions)
            try:
                check_syncable(glob.name)
                st = self.fs.lstat_or_none(tmp)  # UnsafePath: a parent is a symlink or a file
            except OSError as e:
                out.append(Prepared(spec, None, set(), f"cannot create temp file: {e.strerror or e}"))
                continue
            existing = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
            if glob.size - existing > free:
                out.append(Prepared(spec, None, set(), f"not enough free disk space for {glob.size >> 20} MiB (reserve {self.reserve_bytes() >> 20} MiB)", disk_full=True))
                continue
            try:
                # parents made without following a symlink; the temp file itself O_NOFOLLOW
                fd, st = self.fs.open_temp(tmp, mode)
            except OSError as e:
                out.append(Prepared(spec, None, set(), f"cannot create temp file: {e.strerror or e}", disk_full=e.errno == errno.ENOSPC))
                continue
            try:
                if st.st_mode & 0o7777 != mode:  # umask, or an older temp file
                    os.fchmod(fd, mode)
                have = self._reuse(db, fd, glob, st.st_size, known)
                os.ftruncate(fd, glob.size)
                if glob.size >= FALLOCATE_FROM and len(have) < len(glob.blocks):
                    with contextlib.suppress(OSError, AttributeError):
                        os.posix_fallocate(fd, 0, glob.size)
            except OSError as e:
                os.close(fd)
                out.append(Prepared(spec, None, set(), f"cannot prepare temp file: {e.strerror or e}", disk_full=e.errno == errno.ENOSPC))
                continue
            free -= glob.size - existing
            out.append(Prepared(spec, JobFile(glob.name, spec.gen, fd), have))
        return out

    def _reuse(self, db: IndexDB, fd: int, glob: FileInfo, existing: int, known: set[bytes]) -> set[int]:
        have: set[int] = set()
        bs = glob.block_size
        for i, h in enumerate(glob.blocks):
            off = i * bs
            size = min(bs, glob.size - off)
            if off + size <= existing and sha256_at(fd, off, size) == h:
                have.add(i)
                continue
            local = self._local_block(db, h, size) if h in known else None
            if local is not None:
                os.pwrite(fd, local, off)
                have.add(i)
        return have

    def _local_block(self, db: IndexDB, h: bytes, size: int) -> bytes | None:
        found = db.find_block(self.folder, h)
        if found is None:
            return None
        name, offset, bsize = found
        if bsize != size:
            return None
        try:
            fd, _ = self.fs.open_read(name)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        return data if hashlib.sha256(data).digest() == h else None

    def drop_temp(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.fs.unlink(layout.temp_name(name))

    # --- serving (serving thread) --------------------------------------------------------
    def forget(self, names: list[str] | set[str]) -> None:
        """These names changed on disk (applied, scanned): drop their cached fds and rows, so a
        deleted or replaced file is never held open (any thread)."""
        with self._stale_lock:
            self._stale.update(names)

    def _drop_stale(self) -> None:
        with self._stale_lock:
            stale, self._stale = self._stale, set()
        self._fds.drop(stale)
        for name in stale:
            self._rows.pop(name, None)

    def read_local(self, db: IndexDB, name: str, index: int, offset: int, size: int, expected: bytes) -> bytes | str:
        """A block of our current version of `name`, or why not: 'no-file', 'no-block',
        'changed' (the file on disk is not what the index says: a rescan is due)."""
        self._drop_stale()
        f = self._row(db, name)
        if f is None or f.deleted or f.type != FileType.FILE:
            return "no-file"
        if index >= len(f.blocks) or f.blocks[index] != expected:
            return "no-block"
        off = index * f.block_size
        if (off, min(f.block_size, f.size - off)) != (offset, size):
            return "no-block"
        fd = self._open(f)
        if fd is None:
            return "changed"
        return os.pread(fd, size, off)

    def _row(self, db: IndexDB, name: str) -> FileInfo | None:
        if name in self._rows:
            self._rows.move_to_end(name)
            return self._rows[name]
        f = db.get(self.folder, LOCAL, name)
        self._rows[name] = f
        while len(self._rows) > SERVING_ROWS:
            self._rows.popitem(last=False)
        return f

    def _open(self, f: FileInfo) -> int | None:
        """A cached read-only fd of the file, if the file on disk is still the version `f`
        (opening per block would cost syscalls and a watcher event each time)."""
        fd = self._fds.take(f.name)
        if fd is not None and not _is_version(fd, f):
            os.close(fd)  # replaced since we opened it
            fd = None
        if fd is None:
            try:
                fd, st = self.fs.open_read(f.name)  # never through a symlinked parent
            except OSError:
                return None
            if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                os.close(fd)
                return None
        self._fds.put(f.name, fd, self.monotonic())
        return fd

    def close_idle(self) -> None:
        """Close serving fds unused for a while, and those of changed names (serving thread)."""
        self._drop_stale()
        self._fds.close_idle(self.monotonic())

    def close(self) -> None:
        self._fds.close_all()
        self._rows.clear()


def _is_version(fd: int, f: FileInfo) -> bool:
    st = os.fstat(fd)
    return st.st_size == f.size and st.st_mtime_ns == f.mtime_ns

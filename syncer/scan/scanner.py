"""The scanner: walks a folder, detects what changed since the index was written, hashes changed
files in parallel, and records the changes (and deletions, as tombstones) in the index.

Change detection compares type, size, mtime_ns, permissions and inode with the index; only
files that differ are re-hashed. Hashing runs in a thread pool over all cores: hashlib releases
the GIL, and big files are cut into ranges hashed in parallel. A file that changes while being
hashed is hashed again (or reported), never recorded with wrong hashes. Directory mtimes are not
changes (adding a file changes them and would ripple across devices).

Every access goes through the folder's confined layer (syncer/fs/confined.py): the walk is
iterative, opens each directory relative to its parent without following symlinks, and stops at
MAX_DEPTH; symlinks are recorded with their target and never followed, also not when hashing. A
root-level `.syncerignore` is never announced (it is local to each device).
"""

from __future__ import annotations

import os
import stat
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.errors import FolderError
from syncer.fs.blockhash import sha256_at
from syncer.fs.confined import FolderFS, UnsafePath
from syncer.fs.layout import MARKER, MAX_DEPTH, TEMP_PREFIX, TEMP_SUFFIX
from syncer.ignore import Ignore
from syncer.index.db import LOCAL, IndexDB
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.scan.blocksize import block_size_for

PERMISSION_BITS = 0o777  # setuid/setgid/sticky are local matters, never announced
RANGE_BYTES = 16 << 20  # big files are hashed in ranges of this size, in parallel
SMALL_BATCH = 64  # small files hashed per task (amortises the thread hand-off)
SMALL_FILE = 1 << 20
WRITE_BATCH = 2000  # changed entries recorded per transaction
MAX_PENDING = 8  # hash tasks in flight at once (bounds what a scan holds in memory)
MAX_ERRORS = 1000  # errors listed per scan (the rest are counted in the log)
MAX_TEMPS = 10_000

Progress = Callable[[int, int], None]


@dataclass
class ScanResult:
    # the rows stored, when no on_batch callback took them
    changed: list[FileInfo] = field(default_factory=list)
    deleted: list[FileInfo] = field(default_factory=list)
    changed_count: int = 0
    deleted_count: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    # download temp files walked past (name, mtime): never indexed, but the folder removes
    # stale ones that no download will resume
    temp_files: list[tuple[str, float]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    hashed_bytes: int = 0


@dataclass
class _Entry:
    name: str  # NFC
    path: str  # as on disk (folder-relative)
    st: os.stat_result
    type: FileType
    target: str = ""


class FileChanged(Exception):
    pass


MASS_DELETE_MIN = 10  # below this many deletions a scan is never held back


class MassDelete(FolderError):
    """A scan would delete more than half of the folder; no deletion was recorded."""

    def __init__(self, deleting: int, total: int) -> None:
        super().__init__(f"a scan would delete {deleting} of {total} files; folder paused until confirmed (`syncer resume FOLDER`)")
        self.deleting, self.total = deleting, total


def hash_range(fs: FolderFS, name: str, offset: int, length: int, bs: int, expect: tuple[int, int]) -> list[bytes]:
    """SHA-256 of each block in [offset, offset+length) of `name` (opened through the confined
    layer); raises FileChanged if size/mtime moved."""
    fd, _ = fs.open_read(name)
    return _hash_fd(fd, offset, length, bs, expect)


def _hash_fd(fd: int, offset: int, length: int, bs: int, expect: tuple[int, int]) -> list[bytes]:
    """As hash_range, of an open fd (closed here)."""
    try:
        out = []
        end = offset + length
        pos = offset
        while pos < end:
            want = min(bs, end - pos)
            digest = sha256_at(fd, pos, want)
            if digest is None:
                raise FileChanged("file shrank while hashing")
            out.append(digest)
            pos += want
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != expect:
            raise FileChanged("file changed while hashing")
        return out
    finally:
        os.close(fd)


def hash_small_batch(items: list[tuple[FolderFS, str, int, int, int]]) -> list[list[bytes] | str]:
    """Hash whole small files; each directory of the batch is resolved (and validated) once
    through the confined layer, its files opened relative to it without following symlinks."""
    out: list[list[bytes] | str] = []
    dirs: dict[str, int | str] = {}  # parent -> this batch's own fd, or why it cannot be opened
    try:
        for fs, name, size, mtime, bs in items:
            head, _, base = name.rpartition("/")
            try:
                dfd = dirs.get(head)
                if dfd is None:
                    try:
                        dfd = dirs[head] = fs.open_dir(head)
                    except OSError as e:
                        dfd = dirs[head] = e.strerror or str(e)
                if isinstance(dfd, str):
                    out.append(dfd)
                    continue
                fd, _ = fs.open_read_at(dfd, base, name)
                out.append(_hash_fd(fd, 0, size, bs, (size, mtime)))
            except (OSError, FileChanged) as e:
                out.append(getattr(e, "strerror", None) or str(e))
    finally:
        for dfd in dirs.values():
            if isinstance(dfd, int):
                os.close(dfd)
    return out


class Scanner:
    def __init__(
        self,
        root: Path,
        folder_id: str,
        db: IndexDB,
        local_short: int,
        ignore: Ignore | None = None,
        workers: int | None = None,
        fs: FolderFS | None = None,
    ) -> None:
        self.root = Path(root)
        self.fs = fs if fs is not None else FolderFS(root)
        self.folder_id = folder_id
        self.db = db
        self.short = local_short
        self.ignore = ignore or Ignore()
        self.workers = workers or max(2, os.cpu_count() or 2)

    # --- walking, in index order ------------------------------------------------------
    def _children(self, path: str, nfc_dir: str, run: _Run) -> list[tuple[str, bool, _Entry]]:
        """One directory's entries, each keyed as the index orders names (a subdirectory also
        as `name/`, where its subtree comes), through the confined layer."""
        if nfc_dir.count("/") + 2 > MAX_DEPTH:
            run.error(nfc_dir, f"entries deeper than {MAX_DEPTH} path components (not scanned)", subtree=True)
            return []
        try:
            listing = self.fs.list_dir(path)
        except UnsafePath:
            run.keep_below(nfc_dir)  # became a symlink or a file: the next scan of it says so
            return []
        except OSError as e:
            run.error(nfc_dir or ".", e.strerror or str(e), subtree=True)
            return []
        if listing.error is not None:
            run.error(_printable(nfc_dir) or ".", listing.error.strerror or str(listing.error), subtree=True)
            return []
        for base, err in listing.errors:
            run.error(_printable(f"{path}/{base}" if path else base), err.strerror or str(err))
        ignored = self.ignore.ignored
        items: list[tuple[str, bool, _Entry]] = []
        for base, st, target in listing.entries:
            rel = f"{path}/{base}" if path else base
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                run.error(_printable(rel), "name is not valid UTF-8")
                continue
            nfc = unicodedata.normalize("NFC", rel)
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if not is_dir and stat.S_ISREG(mode) and base.startswith(TEMP_PREFIX) and base.endswith(TEMP_SUFFIX):
                run.temp_file(nfc, st.st_mtime)
                continue
            if ignored(nfc, is_dir, base if nfc is rel else None):
                continue
            if is_dir:
                d = _Entry(nfc, rel, st, FileType.DIRECTORY)  # not `e`: the except clause's name above
                items.append((nfc, False, d))
                items.append((nfc + "/", True, d))
            elif stat.S_ISREG(mode):
                items.append((nfc, False, _Entry(nfc, rel, st, FileType.FILE)))
            elif stat.S_ISLNK(mode):
                items.append((nfc, False, _Entry(nfc, rel, st, FileType.SYMLINK, target)))
            else:
                run.error(nfc, "not a regular file, directory or symlink (skipped)")
        items.sort(key=lambda item: item[0])
        return items

    def _ordered(self, top: _Entry | None, run: _Run) -> Iterator[_Entry]:
        """`top` (None: the root) and everything below it, in index (name) order: a directory's
        entries sorted, each subdirectory's subtree where `name/` sorts among them. Iterative;
        at most one directory listing per level in memory."""
        if top is not None:
            yield top
            if top.type != FileType.DIRECTORY:
                return
        stack = [iter(self._children(top.path if top else "", top.name if top else "", run))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            _, descend, e = item
            if descend:
                stack.append(iter(self._children(e.path, e.name, run)))
            else:
                yield e

    # --- scanning ------------------------------------------------------------------
    def scan(
        self,
        paths: Iterable[str] | None = None,
        progress: Progress | None = None,
        allow_mass_delete: bool = True,
        on_batch: Callable[[list[FileInfo]], None] | None = None,
    ) -> ScanResult:
        """Compare the folder with the local index and record what changed. The walk and the
        index are merged in name order, streaming: changes are hashed in parallel and written a
        batch at a time (each batch handed to `on_batch`; without one they are collected in
        the result), so memory does not grow with the folder. Deletions are recorded at the
        end, unless they would be most of the folder (MassDelete, when not allowed)."""
        if not self.fs.refresh_root() or not self.fs.is_dir(MARKER):
            raise FolderError(f"folder marker {self.root / MARKER} missing: folder stopped")
        result = ScanResult()
        with _Run(self, result, progress, on_batch) as run:
            if paths is None:
                run.merge(self._ordered(None, run), self.db.scan_rows(self.folder_id, "", None), None)
            else:
                for p in _scopes(paths, result):
                    if self.ignore.ignored(p):
                        continue
                    try:
                        st = self.fs.lstat_or_none(p)
                    except UnsafePath:
                        st = None  # a parent is now a symlink or a file: not in the folder any more
                    except OSError as e:
                        result.errors.append((p, e.strerror or str(e)))
                        continue
                    top = None
                    if st is not None:
                        if stat.S_ISDIR(st.st_mode):
                            top = _Entry(p, p, st, FileType.DIRECTORY)
                        elif stat.S_ISREG(st.st_mode):
                            top = _Entry(p, p, st, FileType.FILE)
                        elif stat.S_ISLNK(st.st_mode):
                            try:
                                top = _Entry(p, p, st, FileType.SYMLINK, self.fs.readlink(p))
                            except OSError as e:
                                result.errors.append((p, e.strerror or str(e)))
                                continue
                    disk = self._ordered(top, run) if top is not None else iter(())
                    rows = (r for r in self.db.scan_rows(self.folder_id, p, p + "0") if r[0] == p or r[0].startswith(p + "/"))
                    run.merge(disk, rows, p)
            run.finish(allow_mass_delete)
        return result

    def now_floor(self) -> int:
        """Our counter in a new version is at least the wall clock in seconds (Syncthing's
        rule): a device whose index was lost and rebuilt still makes versions newer than the
        ones its peers hold from before, instead of restarting below them."""
        return int(time.time())

    def _info(self, e: _Entry, old: FileInfo | None, blocks: tuple[bytes, ...], bs: int) -> FileInfo:
        st = e.st
        version = old.version if old is not None else VersionVector()
        return FileInfo(
            name=e.name,
            type=e.type,
            size=st.st_size if e.type == FileType.FILE else 0,
            mtime_ns=st.st_mtime_ns,
            permissions=st.st_mode & PERMISSION_BITS,
            block_size=bs,
            blocks=blocks,
            symlink_target=e.target,
            version=version.update(self.short, self.now_floor()),
            sequence=0,
            deleted=False,
            modified_by=self.short,
            inode=st.st_ino,
            dev=st.st_dev,
        )


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _scopes(paths: Iterable[str], result: ScanResult) -> list[str]:
    """The paths of a scoped scan, NFC, each once, none inside another."""
    scope: list[str] = []
    kept: set[str] = set()
    for p in sorted({unicodedata.normalize("NFC", p.strip("/")) for p in paths}):
        parts = p.split("/")
        if not p or any("/".join(parts[:i]) in kept for i in range(1, len(parts) + 1)):
            continue
        if p.count("/") >= MAX_DEPTH:
            result.errors.append((p[:200], f"deeper than {MAX_DEPTH} path components (not scanned)"))
            continue
        scope.append(p)
        kept.add(p)
    return scope


class _Run:
    """One scan's moving parts: the merge of disk and index, the hashing pipeline, the write
    batches, and the deletions found."""

    def __init__(self, scanner: Scanner, result: ScanResult, progress: Progress | None, on_batch: Callable[[list[FileInfo]], None] | None) -> None:
        self.s = scanner
        self.result = result
        self.progress = progress
        self.on_batch = on_batch
        self.pool = ThreadPoolExecutor(scanner.workers, thread_name_prefix="hash")
        self.pending: deque[tuple[list[_Entry], Any]] = deque()  # hash tasks, oldest first
        self.small: list[_Entry] = []  # small files waiting to fill a hash task
        self.ready: list[tuple[_Entry, tuple[bytes, ...] | None]] = []  # to write (None: keep blocks)
        self.gone: list[str] = []
        self.keep: list[str] = []  # prefixes ("dir/") whose index rows stay: unreadable there
        self.total = 0  # bytes found to hash so far
        self.done = 0

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # what the walk reports
    def error(self, name: str, msg: str, subtree: bool = False) -> None:
        if len(self.result.errors) < MAX_ERRORS:
            self.result.errors.append((name, msg))
        if subtree:
            self.keep_below(name if name != "." else "")

    def keep_below(self, name: str) -> None:
        self.keep.append(name + "/" if name else "")

    def temp_file(self, name: str, mtime: float) -> None:
        if len(self.result.temp_files) < MAX_TEMPS:
            self.result.temp_files.append((name, mtime))

    # the merge
    def merge(self, disk: Iterator[_Entry], rows: Iterator[tuple[Any, ...]], scope: str | None) -> None:
        d = next(disk, None)
        r = next(rows, None)
        while d is not None or r is not None:
            if r is None or (d is not None and d.name < r[0]):
                assert d is not None
                self.entry(d, None)
                d = next(disk, None)
            elif d is None or r[0] < d.name:
                self.unmatched(r)
                r = next(rows, None)
            else:
                self.entry(d, r)
                d = next(disk, None)
                r = next(rows, None)

    def entry(self, e: _Entry, old: tuple[Any, ...] | None) -> None:
        st = e.st
        if e.type == FileType.FILE:
            self.result.files += 1
            self.result.bytes += st.st_size
        perms = st.st_mode & PERMISSION_BITS
        if old is not None and not old[6] and old[1] == e.type:
            _, _, size, mtime, operm, inode, _, target = old
            if e.type == FileType.DIRECTORY and operm == perms:
                return
            if e.type == FileType.SYMLINK and target == e.target:
                return
            if e.type == FileType.FILE and (size, mtime) == (st.st_size, st.st_mtime_ns) and (not inode or inode == st.st_ino):
                if operm != perms:
                    self._ready(e, None)  # permissions only: no re-hash
                return
        if e.type == FileType.FILE:
            self._hash(e)
        else:
            self._ready(e, ())

    def unmatched(self, r: tuple[Any, ...]) -> None:
        name = r[0]
        if r[6] or any(name.startswith(k) for k in self.keep):
            return
        if self.s.ignore.ignored(name, r[1] == FileType.DIRECTORY):
            return  # ignored now: its row stays as it was
        self.gone.append(name)

    # hashing
    def _hash(self, e: _Entry) -> None:
        size = e.st.st_size
        self.total += size
        if size <= SMALL_FILE:
            self.small.append(e)
            if len(self.small) >= SMALL_BATCH:
                self._submit_small()
            return
        fs, bs = self.s.fs, block_size_for(size)
        step = max(bs, RANGE_BYTES - RANGE_BYTES % bs)
        expect = (size, e.st.st_mtime_ns)
        parts = [self.pool.submit(hash_range, fs, e.path, off, min(step, size - off), bs, expect) for off in range(0, size, step)]
        self.pending.append(([e], parts))
        self._drain(MAX_PENDING)

    def _submit_small(self) -> None:
        batch, self.small = self.small, []
        items = [(self.s.fs, e.path, e.st.st_size, e.st.st_mtime_ns, block_size_for(e.st.st_size)) for e in batch]
        self.pending.append((batch, self.pool.submit(hash_small_batch, items)))
        self._drain(MAX_PENDING)

    def _drain(self, limit: int) -> None:
        """Collect finished hash tasks, oldest first, until at most `limit` are pending."""
        while len(self.pending) > limit:
            batch, fut = self.pending.popleft()
            if isinstance(fut, list):  # the ranges of one big file
                e = batch[0]
                blocks: list[bytes] = []
                err = None
                for part in fut:
                    try:
                        blocks += part.result()
                    except (OSError, FileChanged) as ex:
                        err = getattr(ex, "strerror", None) or str(ex)
                self._hashed(e, blocks, err)
            else:
                for e, res in zip(batch, fut.result(), strict=True):
                    self._hashed(e, res if not isinstance(res, str) else None, res if isinstance(res, str) else None)
            if self.progress:
                self.progress(self.done, self.total)

    def _hashed(self, e: _Entry, blocks: list[bytes] | None, err: str | None) -> None:
        self.done += e.st.st_size
        if err is not None or blocks is None:
            self.error(e.name, err or "cannot hash")
            return
        self.result.hashed_bytes += e.st.st_size
        self._ready(e, tuple(blocks))

    # writing
    def _ready(self, e: _Entry, blocks: tuple[bytes, ...] | None) -> None:
        self.ready.append((e, blocks))
        if len(self.ready) >= WRITE_BATCH:
            self._write()

    def _write(self) -> None:
        batch, self.ready = self.ready, []
        if not batch:
            return
        s = self.s
        olds = s.db.get_many(s.folder_id, LOCAL, [e.name for e, _ in batch])
        changed: list[FileInfo] = []
        for e, blocks in batch:
            old = olds.get(e.name)
            if blocks is None:  # permissions only: the old blocks stand
                if old is not None and not old.deleted and old.type == FileType.FILE:
                    changed.append(s._info(e, old, old.blocks, old.block_size))
                    continue
                blocks = ()
            bs = block_size_for(e.st.st_size) if e.type == FileType.FILE else 0
            changed.append(s._info(e, old, blocks, bs))
        self._store(changed, deleted=False)

    def _store(self, rows: list[FileInfo], deleted: bool) -> None:
        stored = self.s.db.update_local(self.s.folder_id, rows)
        if deleted:
            self.result.deleted_count += len(stored)
        else:
            self.result.changed_count += len(stored)
        if self.on_batch is not None:
            self.on_batch(stored)
        elif deleted:
            self.result.deleted += stored
        else:
            self.result.changed += stored

    def finish(self, allow_mass_delete: bool) -> None:
        if self.small:
            self._submit_small()
        self._drain(0)
        self._write()
        s = self.s
        live = s.db.totals(s.folder_id, "local")[0]
        gone = self.gone
        if not allow_mass_delete and len(gone) >= MASS_DELETE_MIN and len(gone) * 2 > live:
            raise MassDelete(len(gone), live)
        for i in range(0, len(gone), WRITE_BATCH):
            names = gone[i : i + WRITE_BATCH]
            olds = s.db.get_many(s.folder_id, LOCAL, names)
            tombs = [
                FileInfo(
                    name=name, type=old.type, size=0, mtime_ns=old.mtime_ns, permissions=old.permissions,
                    block_size=0, blocks=(), symlink_target="", version=old.version.update(s.short, s.now_floor()),
                    sequence=0, deleted=True, modified_by=s.short,
                )
                for name in names
                if (old := olds.get(name)) is not None
            ]
            self._store(tombs, deleted=True)

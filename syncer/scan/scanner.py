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

import hashlib
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from syncer.errors import FolderError
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

Progress = Callable[[int, int], None]


@dataclass
class ScanResult:
    changed: list[FileInfo] = field(default_factory=list)
    deleted: list[FileInfo] = field(default_factory=list)
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
    """A scan would delete more than half of the folder; nothing was recorded."""

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
            data = os.pread(fd, want, pos)
            if len(data) != want:
                raise FileChanged("file shrank while hashing")
            out.append(hashlib.sha256(data).digest())
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

    # --- walking -------------------------------------------------------------------
    def _walk(self, top: str, out: list[_Entry], result: ScanResult) -> None:
        """Everything below the directory `top`, through the confined layer: iterative, never
        following a symlink (symlinks are recorded with their target), at most MAX_DEPTH deep."""
        errors = result.errors
        try:
            walker = self.fs.walk(top, max_components=MAX_DEPTH)
        except OSError as e:
            errors.append((top or ".", e.strerror or str(e)))
            return
        ignored = self.ignore.ignored
        for listing in walker:
            rel = listing.rel
            if listing.error is not None:
                errors.append((_printable(rel) or ".", listing.error.strerror or str(listing.error)))
                continue
            for base, err in listing.errors:
                errors.append((_printable(f"{rel}/{base}" if rel else base), err.strerror or str(err)))
            descend: list[str] = []
            for base, st, target in listing.entries:
                path = f"{rel}/{base}" if rel else base
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    errors.append((_printable(path), "name is not valid UTF-8"))
                    continue
                nfc = unicodedata.normalize("NFC", path)
                mode = st.st_mode
                is_dir = stat.S_ISDIR(mode)
                if not is_dir and stat.S_ISREG(mode) and base.startswith(TEMP_PREFIX) and base.endswith(TEMP_SUFFIX):
                    result.temp_files.append((nfc, st.st_mtime))
                    continue
                if ignored(nfc, is_dir, base if nfc is path else None):
                    continue
                if is_dir:
                    out.append(_Entry(nfc, path, st, FileType.DIRECTORY))
                    descend.append(base)
                elif stat.S_ISREG(mode):
                    out.append(_Entry(nfc, path, st, FileType.FILE))
                elif stat.S_ISLNK(mode):
                    out.append(_Entry(nfc, path, st, FileType.SYMLINK, target))
                else:
                    errors.append((nfc, "not a regular file, directory or symlink (skipped)"))
            listing.subdirs[:] = descend

    def _entries(self, paths: Iterable[str] | None, result: ScanResult) -> tuple[list[_Entry], list[str] | None]:
        """Entries to consider, and the scope (None = whole folder, else name prefixes)."""
        errors = result.errors
        if paths is None:
            out: list[_Entry] = []
            self._walk("", out, result)
            return out, None
        out = []
        scope: list[str] = []
        seen: set[str] = set()
        for p in sorted({unicodedata.normalize("NFC", p.strip("/")) for p in paths}):
            if not p or p in seen or any(p.startswith(s + "/") for s in scope):
                continue
            seen.add(p)
            if p.count("/") >= MAX_DEPTH:
                errors.append((p[:200], f"deeper than {MAX_DEPTH} path components (not scanned)"))
                continue
            scope.append(p)
            if self.ignore.ignored(p):
                continue
            try:
                st = self.fs.lstat_or_none(p)
            except UnsafePath:
                continue  # a parent is now a symlink or a file: not in the folder any more
            except OSError as e:
                errors.append((p, e.strerror or str(e)))
                continue
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append(_Entry(p, p, st, FileType.DIRECTORY))
                self._walk(p, out, result)
            elif stat.S_ISREG(st.st_mode):
                out.append(_Entry(p, p, st, FileType.FILE))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    out.append(_Entry(p, p, st, FileType.SYMLINK, self.fs.readlink(p)))
                except OSError as e:
                    errors.append((p, e.strerror or str(e)))
        return out, scope

    # --- scanning ------------------------------------------------------------------
    def scan(self, paths: Iterable[str] | None = None, progress: Progress | None = None, allow_mass_delete: bool = True) -> ScanResult:
        if not self.fs.refresh_root() or not self.fs.is_dir(MARKER):
            raise FolderError(f"folder marker {self.root / MARKER} missing: folder stopped")
        result = ScanResult()
        entries, scope = self._entries(paths, result)
        state = self.db.scan_state(self.folder_id, scope)

        dirty: list[_Entry] = []
        to_hash: list[_Entry] = []
        for e in entries:
            st = e.st
            perms = st.st_mode & PERMISSION_BITS
            known = state.get(e.name)
            if e.type == FileType.FILE:
                result.files += 1
                result.bytes += st.st_size
            if known is not None and not known[5] and known[0] == e.type:
                _, size, mtime, operm, inode, _, target = known
                if e.type == FileType.DIRECTORY and operm == perms:
                    continue
                if e.type == FileType.SYMLINK and target == e.target:
                    continue
                if e.type == FileType.FILE and (size, mtime) == (st.st_size, st.st_mtime_ns) and (not inode or inode == st.st_ino):
                    if operm == perms:
                        continue
                    dirty.append(e)  # permissions only: no re-hash
                    continue
            (to_hash if e.type == FileType.FILE else dirty).append(e)

        hashed = self._hash(to_hash, result, progress)
        seen = {e.name for e in entries}
        gone = [
            name
            for name, row in state.items()
            if not row[5] and name not in seen and _in_scope(name, scope) and not self.ignore.ignored(name, row[0] == FileType.DIRECTORY)
        ]
        live = sum(1 for row in state.values() if not row[5]) if scope is None else self.db.count(self.folder_id, LOCAL)[0]
        if not allow_mass_delete and len(gone) >= MASS_DELETE_MIN and len(gone) * 2 > live:
            raise MassDelete(len(gone), live)
        olds = self.db.get_many(self.folder_id, LOCAL, [e.name for e in dirty] + [e.name for e, _ in hashed] + gone)

        changed: list[FileInfo] = []
        for e in dirty:
            old = olds.get(e.name)
            if e.type == FileType.FILE and old is not None and not old.deleted:
                blocks, bs = old.blocks, old.block_size
            else:
                blocks, bs = (), 0
            changed.append(self._info(e, old, blocks, bs))
        for e, hashes in hashed:
            changed.append(self._info(e, olds.get(e.name), tuple(hashes), block_size_for(e.st.st_size)))
        deleted: list[FileInfo] = []
        for name in gone:
            old = olds[name]
            deleted.append(
                FileInfo(
                    name=name,
                    type=old.type,
                    size=0,
                    mtime_ns=old.mtime_ns,
                    permissions=old.permissions,
                    block_size=0,
                    blocks=(),
                    symlink_target="",
                    version=old.version.update(self.short),
                    sequence=0,
                    deleted=True,
                    modified_by=self.short,
                )
            )
        stored = self.db.update_local(self.folder_id, changed + deleted)
        result.changed = stored[: len(changed)]
        result.deleted = stored[len(changed) :]
        return result

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
            version=version.update(self.short),
            sequence=0,
            deleted=False,
            modified_by=self.short,
            inode=st.st_ino,
            dev=st.st_dev,
        )

    def _hash(self, entries: list[_Entry], result: ScanResult, progress: Progress | None) -> list[tuple[_Entry, list[bytes]]]:
        total = sum(e.st.st_size for e in entries)
        done = 0
        out: list[tuple[_Entry, list[bytes]]] = []
        if progress:
            progress(0, total)
        small = [e for e in entries if e.st.st_size <= SMALL_FILE]
        big = [e for e in entries if e.st.st_size > SMALL_FILE]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="hash") as pool:
            small_futs = []
            for i in range(0, len(small), SMALL_BATCH):
                batch = small[i : i + SMALL_BATCH]
                items = [(self.fs, e.path, e.st.st_size, e.st.st_mtime_ns, block_size_for(e.st.st_size)) for e in batch]
                small_futs.append((batch, pool.submit(hash_small_batch, items)))
            big_futs = []
            for e in big:
                size, bs = e.st.st_size, block_size_for(e.st.st_size)
                step = max(bs, RANGE_BYTES - RANGE_BYTES % bs)
                expect = (size, e.st.st_mtime_ns)
                parts = [pool.submit(hash_range, self.fs, e.path, off, min(step, size - off), bs, expect) for off in range(0, size, step)]
                big_futs.append((e, parts))
            for batch, fut in small_futs:
                for e, res in zip(batch, fut.result(), strict=True):
                    done += e.st.st_size
                    if isinstance(res, str):
                        result.errors.append((e.name, res))
                    else:
                        out.append((e, res))
                if progress:
                    progress(done, total)
            for e, parts in big_futs:
                blocks: list[bytes] = []
                err = None
                for part in parts:
                    try:
                        blocks += part.result()
                    except (OSError, FileChanged) as ex:
                        err = getattr(ex, "strerror", None) or str(ex)
                done += e.st.st_size
                if progress:
                    progress(done, total)
                if err:
                    result.errors.append((e.name, err))
                else:
                    out.append((e, blocks))
        result.hashed_bytes = sum(e.st.st_size for e, _ in out)
        return out


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _in_scope(name: str, scope: list[str] | None) -> bool:
    return scope is None or any(name == s or name.startswith(s + "/") for s in scope)

"""Applying remote changes to the folder on disk (runs in the folder's worker thread).

Every operation first checks that the file on disk is still what our index says it is; if it was
changed locally and not scanned yet, that local change is kept — as a conflict copy when a file
is replaced, or by skipping a delete — so nothing is ever lost. Completed downloads are applied
in batches: one filesystem sync for all temp files, the renames, one more sync for the renames,
instead of two fsyncs per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import msgspec

from syncer.fs import layout
from syncer.index.fileinfo import FileInfo, FileType
from syncer.model import safe_write
from syncer.model.conflicts import conflict_name

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def on_disk_matches(root: Path, local: FileInfo | None, name: str) -> bool:
    """Is the file at `name` exactly what our index recorded (or absent, if we have none)?"""
    try:
        st = os.lstat(root / name)
    except FileNotFoundError:
        return local is None or local.deleted
    if local is None or local.deleted:
        return False
    if stat.S_ISDIR(st.st_mode):
        return local.type == FileType.DIRECTORY
    if stat.S_ISLNK(st.st_mode):
        return local.type == FileType.SYMLINK and os.readlink(root / name) == local.symlink_target
    return (
        local.type == FileType.FILE
        and st.st_size == local.size
        and st.st_mtime_ns == local.mtime_ns
        and (not local.inode or st.st_ino == local.inode)
    )


def with_disk_identity(root: Path, f: FileInfo) -> FileInfo:
    try:
        st = os.lstat(root / f.name)
    except FileNotFoundError:
        return f
    return msgspec.structs.replace(f, inode=st.st_ino, dev=st.st_dev)


@dataclass
class Outcome:
    applied: list[FileInfo]  # new local rows (sequence to be assigned)
    conflicts: list[str]  # conflict copies created (they are picked up by the next scan)
    retry: list[str]  # not applied now; try again later
    errors: list[tuple[str, str]]


def _keep_as_conflict(root: Path, name: str, short: str, now: float) -> str:
    new = conflict_name(name, short, now)
    os.replace(root / name, root / new)
    return new


def apply_batch(
    root: Path,
    finished: list[tuple[FileInfo, FileInfo | None, bool, str]],
    others: list[tuple[FileInfo, FileInfo | None]],
    now: float,
) -> Outcome:
    """`finished`: (global, local, conflict, loser_short) for files whose temp file is complete;
    `others`: (global, local) for directories, symlinks, deletions and files whose content we
    already have (only their metadata changes)."""
    out = Outcome([], [], [], [])
    if finished:
        syncfs(root)
    for glob, local, conflict, loser in finished:
        tmp = root / layout.temp_name(glob.name)
        final = root / glob.name
        try:
            if conflict or not on_disk_matches(root, local, glob.name):
                if final.exists() or final.is_symlink():
                    out.conflicts.append(_keep_as_conflict(root, glob.name, loser, now))
            elif final.is_file():
                safe_write.archive(root, glob.name, now)
            elif final.is_dir() and not final.is_symlink():
                os.rmdir(final)  # a directory became a file; only if empty
            perms = safe_write.final_mode(glob.permissions)
            if perms != safe_write.temp_mode(glob.permissions):  # read-only: the temp was not
                os.chmod(tmp, perms)
            os.utime(tmp, ns=(glob.mtime_ns, glob.mtime_ns))
            os.replace(tmp, final)
            out.applied.append(with_disk_identity(root, glob))
        except OSError as e:
            out.errors.append((glob.name, e.strerror or str(e)))
    for glob, local in sorted(others, key=lambda x: _order_key(x[0])):
        try:
            _apply_other(root, glob, local, now, out)
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                out.retry.append(glob.name)
            else:
                out.errors.append((glob.name, e.strerror or str(e)))
    if out.applied:
        syncfs(root)
    return out


def _order_key(f: FileInfo) -> tuple[int, int, str]:
    depth = f.name.count("/")
    # create directories parents-first; delete children-first
    return (1, -depth, f.name) if f.deleted else (0, depth, f.name)


def _apply_other(root: Path, glob: FileInfo, local: FileInfo | None, now: float, out: Outcome) -> None:
    path = root / glob.name
    if glob.deleted:
        if not on_disk_matches(root, local, glob.name):
            if path.exists() or path.is_symlink():
                # changed here and not yet scanned: keep it; the scan will announce it
                out.retry.append(glob.name)
                return
        if path.is_symlink() or path.is_file():
            if path.is_file() and not path.is_symlink():
                safe_write.archive(root, glob.name, now)
            else:
                path.unlink()
        elif path.is_dir():
            path.rmdir()
        out.applied.append(glob)
        return
    if glob.type == FileType.FILE:
        # same content as our copy (Need.METADATA): adopt the metadata in place, no rewrite
        if not on_disk_matches(root, local, glob.name):
            out.retry.append(glob.name)  # changed here and not yet scanned: the scan decides
            return
        os.chmod(path, safe_write.final_mode(glob.permissions))
        os.utime(path, ns=(glob.mtime_ns, glob.mtime_ns), follow_symlinks=False)
        out.applied.append(with_disk_identity(root, glob))
    elif glob.type == FileType.DIRECTORY:
        if path.is_symlink() or path.is_file():
            if not on_disk_matches(root, local, glob.name):
                out.retry.append(glob.name)
                return
            safe_write.archive(root, glob.name, now) if path.is_file() else path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, glob.permissions & 0o7777 or 0o755)
        out.applied.append(with_disk_identity(root, glob))
    elif glob.type == FileType.SYMLINK:
        if (path.exists() or path.is_symlink()) and not on_disk_matches(root, local, glob.name):
            out.retry.append(glob.name)
            return
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = root / layout.temp_name(glob.name)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(glob.symlink_target, tmp)
        os.replace(tmp, path)
        out.applied.append(with_disk_identity(root, glob))

"""Applying remote changes to the folder on disk (runs in the folder's worker thread), through
the folder's confined layer: a name whose parent on disk is a symlink or not a directory fails
on its own (UnsafePath, reported per file) and nothing is ever written, renamed, chmod-ed or
deleted outside the folder.

Every operation first checks that the file on disk is still what our index says it is; if it was
changed locally and not scanned yet, that local change is kept — as a conflict copy when a file
is replaced, or by skipping a delete — so nothing is ever lost. Completed downloads are applied
in batches: one filesystem sync for all temp files, the renames, one more sync for the renames,
instead of two fsyncs per file. The versions of files archived by a batch are pruned after it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass, field

import msgspec

from syncer.fs import layout
from syncer.fs.confined import FolderFS
from syncer.index.fileinfo import FileInfo, FileType
from syncer.model import safe_write
from syncer.model.conflicts import conflict_name

log = logging.getLogger(__name__)

LOCAL_ONLY = "local to each device, never synced"


def on_disk_matches(fs: FolderFS, local: FileInfo | None, name: str, st: os.stat_result | None) -> bool:
    """Is `st` (the lstat of `name`, None if absent) exactly what our index recorded (or absent,
    if we have none)?"""
    if st is None:
        return local is None or local.deleted
    if local is None or local.deleted:
        return False
    if stat.S_ISDIR(st.st_mode):
        return local.type == FileType.DIRECTORY
    if stat.S_ISLNK(st.st_mode):
        return local.type == FileType.SYMLINK and fs.readlink(name) == local.symlink_target
    return (
        local.type == FileType.FILE
        and stat.S_ISREG(st.st_mode)
        and st.st_size == local.size
        and st.st_mtime_ns == local.mtime_ns
        and (not local.inode or st.st_ino == local.inode)
    )


def with_disk_identity(fs: FolderFS, f: FileInfo) -> FileInfo:
    """`f` as it now is on disk: inode, and the permissions actually applied (masked)."""
    st = fs.lstat_or_none(f.name)
    if st is None:
        return f
    perms = stat.S_IMODE(st.st_mode) & safe_write.PERMISSION_BITS if f.type != FileType.SYMLINK else f.permissions
    return msgspec.structs.replace(f, inode=st.st_ino, dev=st.st_dev, permissions=perms)


@dataclass
class Outcome:
    applied: list[FileInfo]  # new local rows (sequence to be assigned)
    conflicts: list[str]  # conflict copies created (they are picked up by the next scan)
    retry: list[str]  # not applied now; try again later
    errors: list[tuple[str, str]]
    pruned: int = 0  # old versions removed from the trash can
    archived: list[str] = field(default_factory=list)


def check_syncable(name: str) -> None:
    """Refuse what stays on this device (the root `.syncerignore`), whatever a peer announced
    before validation refused it (rows stored by an older version)."""
    if layout.is_local_only(name):
        raise OSError(errno.EPERM, LOCAL_ONLY, name)


def reason(e: OSError) -> str:
    return e.strerror or str(e)


def _keep_as_conflict(fs: FolderFS, name: str, short: str, now: float) -> str:
    new = conflict_name(name, short, now)
    fs.replace(name, new)
    return new


def apply_batch(
    fs: FolderFS,
    finished: list[tuple[FileInfo, FileInfo | None, bool, str]],
    others: list[tuple[FileInfo, FileInfo | None]],
    now: float,
    versions: safe_write.Versions | None = None,
) -> Outcome:
    """`finished`: (global, local, conflict, loser_short) for files whose temp file is complete;
    `others`: (global, local) for directories, symlinks, deletions and files whose content we
    already have (only their metadata changes)."""
    out = Outcome([], [], [], [])
    if finished:
        fs.sync()
    for glob, local, conflict, loser in finished:
        try:
            _apply_file(fs, glob, local, conflict, loser, now, out)
        except OSError as e:
            out.errors.append((glob.name, reason(e)))
    for glob, local in sorted(others, key=lambda x: _order_key(x[0])):
        try:
            _apply_other(fs, glob, local, now, out)
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                out.retry.append(glob.name)
            else:
                out.errors.append((glob.name, reason(e)))
    if out.applied:
        fs.sync()
    if out.archived:
        try:
            out.pruned = safe_write.prune_archived(fs, out.archived, versions or safe_write.Versions(), now)
        except OSError as e:  # the trash can is best effort; the periodic sweep tries again
            log.warning("cannot prune old versions: %s", reason(e))
    return out


def _apply_file(fs: FolderFS, glob: FileInfo, local: FileInfo | None, conflict: bool, loser: str, now: float, out: Outcome) -> None:
    name = glob.name
    check_syncable(name)
    tmp = layout.temp_name(name)
    perms = safe_write.final_mode(glob.permissions)
    mode = perms if perms != safe_write.temp_mode(glob.permissions) else None  # read-only: the temp was not
    if not conflict and (local is None or local.deleted):
        # a new file: in place only if nothing appeared under its name meanwhile (atomically)
        try:
            out.applied.append(_identity(glob, fs.install(tmp, name, glob.mtime_ns, mode, replace=False)))
            return
        except FileExistsError:
            pass  # something is there now: kept below as a conflict copy
    st = fs.lstat_or_none(name)
    if conflict or not on_disk_matches(fs, local, name, st):
        if st is not None:
            out.conflicts.append(_keep_as_conflict(fs, name, loser, now))
    elif st is not None and stat.S_ISREG(st.st_mode):
        # the same content already there (a scan recorded it while we downloaded, e.g. after a
        # crash between rename and index commit): nothing to keep a version of
        if local is None or local.blocks != glob.blocks:
            if safe_write.archive(fs, name, now) is not None:
                out.archived.append(name)
    elif st is not None and stat.S_ISDIR(st.st_mode):
        fs.rmdir(name)  # a directory became a file; only if empty
    out.applied.append(_identity(glob, fs.install(tmp, name, glob.mtime_ns, mode, replace=True)))


def _identity(f: FileInfo, st: os.stat_result) -> FileInfo:
    """`f` as installed: inode, and the permissions actually on disk (masked)."""
    perms = stat.S_IMODE(st.st_mode) & safe_write.PERMISSION_BITS
    return msgspec.structs.replace(f, inode=st.st_ino, dev=st.st_dev, permissions=perms)


def _order_key(f: FileInfo) -> tuple[int, int, str]:
    depth = f.name.count("/")
    # create directories parents-first; delete children-first
    return (1, -depth, f.name) if f.deleted else (0, depth, f.name)


def _apply_other(fs: FolderFS, glob: FileInfo, local: FileInfo | None, now: float, out: Outcome) -> None:
    name = glob.name
    check_syncable(name)
    st = fs.lstat_or_none(name)
    if glob.deleted:
        if st is not None and not on_disk_matches(fs, local, name, st):
            # changed here and not yet scanned: keep it; the scan will announce it
            out.retry.append(name)
            return
        if st is not None:
            if stat.S_ISREG(st.st_mode):
                if safe_write.archive(fs, name, now) is not None:
                    out.archived.append(name)
            elif stat.S_ISDIR(st.st_mode):
                fs.rmdir(name)
            elif stat.S_ISLNK(st.st_mode):
                fs.unlink(name)
        out.applied.append(glob)
        return
    if glob.type == FileType.FILE:
        # same content as our copy (Need.METADATA): adopt the metadata in place, no rewrite
        if st is None or not on_disk_matches(fs, local, name, st):
            out.retry.append(name)  # changed here and not yet scanned: the scan decides
            return
        mode = safe_write.final_mode(glob.permissions)
        if stat.S_IMODE(st.st_mode) != mode:
            fs.chmod(name, mode)
        if st.st_mtime_ns != glob.mtime_ns:
            fs.utime(name, glob.mtime_ns)
        out.applied.append(with_disk_identity(fs, glob))
    elif glob.type == FileType.DIRECTORY:
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not on_disk_matches(fs, local, name, st):
                out.retry.append(name)
                return
            if stat.S_ISREG(st.st_mode):
                if safe_write.archive(fs, name, now) is not None:
                    out.archived.append(name)
            else:
                fs.unlink(name)
            st = None
        mode = safe_write.dir_mode(glob.permissions)
        if st is None:
            fs.makedirs(name)
        if st is None or stat.S_IMODE(st.st_mode) != mode:
            fs.chmod(name, mode, directory=True)
        out.applied.append(with_disk_identity(fs, glob))
    elif glob.type == FileType.SYMLINK:
        if st is not None and not on_disk_matches(fs, local, name, st):
            out.retry.append(name)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            fs.rmdir(name)
        tmp = layout.temp_name(name)
        with contextlib.suppress(FileNotFoundError):
            fs.unlink(tmp)
        fs.symlink(glob.symlink_target, tmp)
        fs.replace(tmp, name)
        out.applied.append(with_disk_identity(fs, glob))


def remove_local(fs: FolderFS, rows: list[FileInfo], archive_at: float | None) -> list[str]:
    """Remove these entries from disk where the disk still holds exactly what their row says
    (anything changed meanwhile is kept): files archived into the trash can when `archive_at`
    is given, else deleted; directories only when empty, deepest first. Returns the names
    removed (or already gone)."""
    done: list[str] = []
    for f in sorted(rows, key=lambda r: -r.name.count("/")):
        try:
            st = fs.lstat_or_none(f.name)
            if st is None:
                done.append(f.name)
                continue
            if not on_disk_matches(fs, f, f.name, st):
                continue  # changed here since: kept, and still in the index
            if f.type == FileType.DIRECTORY:
                fs.rmdir(f.name)
            elif f.type == FileType.FILE and archive_at is not None:
                safe_write.archive(fs, f.name, archive_at)
            else:
                fs.unlink(f.name)
            done.append(f.name)
        except OSError:
            continue  # not empty, busy, or not reachable without a symlink: kept
    return done

"""Writing files so that nothing half-written is ever visible under the real name.

Blocks go into a temp file in the same directory (`.syncer.NAME.tmp`, never synced, resumable:
its verified blocks are reused after a crash); when complete it is fsynced, gets its mtime and
permissions, and is renamed over the real name atomically; the directory is fsynced so the rename
survives a power cut. Replaced and deleted files are moved into `.syncer/versions/` first.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
from pathlib import Path

from syncer.fs.layout import VERSIONS_DIR


def final_mode(permissions: int) -> int:
    return permissions & 0o7777 or 0o644


def temp_mode(permissions: int) -> int:
    """A download's temp file: the final permission bits, but owner-writable (a resume reopens
    it for writing) and without setuid/setgid/sticky (a write clears those anyway)."""
    return (final_mode(permissions) | 0o200) & 0o777


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finish_temp(tmp: Path, final: Path, mtime_ns: int, mode: int | None) -> None:
    """fsync, set metadata, atomically rename tmp -> final, fsync the directory."""
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(tmp, mode & 0o7777)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, final)
    fsync_dir(final.parent)


def version_path(root: Path, name: str, now: float) -> Path:
    """Where the old copy of `name` goes: `.syncer/versions/DIR/STEM~YYYYMMDD-HHMMSS.EXT`."""
    head, base = posixpath.split(name)
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    vname = f"{stem}~{stamp}" + (f".{ext}" if ext else "")
    return root / VERSIONS_DIR / head / vname


def archive(root: Path, name: str, now: float) -> Path | None:
    """Move the current file at `name` into the versions trash can; None if there is none."""
    src = root / name
    if not src.is_file() or src.is_symlink():
        return None
    dst = version_path(root, name, now)
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dst.exists():
        dst = dst.with_name(f"{dst.stem}-{n}{dst.suffix}")
        n += 1
    os.replace(src, dst)
    # the trash can ages versions by when they were archived, not by their content's mtime
    os.utime(dst, (now, now))
    return dst


def prune_versions(root: Path, keep: int, max_age_s: float, now: float) -> int:
    """Bound the trash can: at most `keep` versions per file, none older than max_age_s.
    Returns how many were removed."""
    base = root / VERSIONS_DIR
    if not base.is_dir():
        return 0
    groups: dict[tuple[str, str], list[Path]] = {}
    for dirpath, _dirs, files in os.walk(base):
        for f in files:
            p = Path(dirpath) / f
            stem, sep, rest = f.rpartition("~")
            key = (dirpath, stem + (rest.partition(".")[2] if sep else f))
            groups.setdefault(key, []).append(p)
    removed = 0
    for paths in groups.values():
        paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for i, p in enumerate(paths):
            try:
                too_old = now - p.stat().st_mtime > max_age_s
            except FileNotFoundError:
                continue
            if i >= keep or too_old:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
    return removed

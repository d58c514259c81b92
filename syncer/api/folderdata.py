"""What the REST API shows of a folder's contents: the need list with a reason per item, the
versions trash can, and restoring a version (the conflict inbox is the folder runtime's).

Everything is paged and bounded: a folder may hold 1,000,000 files. The need list is walked in
the engine's own order (no sort, no copy); the versions directory is walked lazily. File access
under the folder root never follows a symlink (each component is opened with O_NOFOLLOW relative
to its parent)."""

from __future__ import annotations

import calendar
import contextlib
import itertools
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from syncer.errors import FolderError
from syncer.fs import layout

MAX_PAGE = 1000
COPY_CHUNK = 1 << 20

def page_args(page: Any, perpage: Any) -> tuple[int, int]:
    try:
        p, n = int(page or 1), int(perpage or 100)
    except (TypeError, ValueError):
        raise FolderError("page and perpage must be integers") from None
    if p < 1 or not 1 <= n <= MAX_PAGE:
        raise FolderError(f"page must be >= 1 and perpage 1..{MAX_PAGE}")
    return (p - 1) * n, n


def need_page(db: Any, folder: Any, prefix: str, offset: int, limit: int) -> dict[str, Any]:
    """Needed items (and those deliberately not fetched) in name order, with a reason each
    (model/why.py): the rows are read here (the API's DB thread), explained on the loop."""
    rows = db.need_list(folder.id, prefix, offset, limit + 1)
    need, skipped = db.totals(folder.id, "need"), db.totals(folder.id, "skipped")
    return {"folder": folder.id, "total": need[0] + skipped[0], "offset": offset, "rows": rows[:limit], "more": len(rows) > limit}


# --- versions -------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"^(?P<stem>.+)~(?P<stamp>\d{8}-\d{6})(?:-\d+)?(?P<ext>\.[^.]*)?$")


def original_name(version: str) -> tuple[str, float] | None:
    """`dir/a~20250101-101010.txt` (relative to the versions dir) -> (`dir/a.txt`, time)."""
    head, sep, base = version.rpartition("/")
    m = _VERSION_RE.match(base)
    if not m:
        return None
    try:
        t = float(calendar.timegm(time.strptime(m["stamp"], "%Y%m%d-%H%M%S")))  # stamps are UTC
    except ValueError:
        return None
    return head + sep + m["stem"] + (m["ext"] or ""), t


def _walk_versions(base_fd: int, prefix: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(relative name, lstat) of regular files below an open directory, sorted per directory,
    never following symlinks."""
    with os.scandir(base_fd) as it:
        entries = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it)
    for name, is_dir, is_file in entries:
        rel = prefix + name
        if is_file:
            with contextlib.suppress(FileNotFoundError):
                yield rel, os.stat(name, dir_fd=base_fd, follow_symlinks=False)
        elif is_dir:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=base_fd)
            except OSError:
                continue
            try:
                yield from _walk_versions(fd, rel + "/")
            finally:
                os.close(fd)


def versions_page(root: Path, offset: int, limit: int) -> dict[str, Any]:
    try:
        base = open_dir(root, layout.VERSIONS_DIR)
    except FileNotFoundError:
        return {"offset": offset, "items": [], "more": False}
    try:
        picked = list(itertools.islice(_walk_versions(base), offset, offset + limit + 1))
    finally:
        os.close(base)
    items = []
    for rel, st in picked[:limit]:
        parsed = original_name(rel)
        items.append(
            {
                "version": rel,
                "name": parsed[0] if parsed else None,
                "time": parsed[1] if parsed else st.st_mtime,
                "size": st.st_size,
            }
        )
    return {"offset": offset, "items": items, "more": len(picked) > limit}


def check_relative(name: str) -> list[str]:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise FolderError(f"bad path {name[:200]!r}")
    return parts


def open_dir(root: Path, rel: str, create: bool = False) -> int:
    """An fd of directory `rel` under `root`, each component opened without following
    symlinks; with `create`, missing directories are made."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in check_relative(rel) if rel else []:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if isinstance(e, FileNotFoundError):
            raise
        raise FolderError(f"cannot open {rel!r} in {root}: {e.strerror or e} (symlinks are not followed)") from None
    return fd


def restore_version(root: Path, version: str, now: float) -> str:
    """Copy a version back into place (worker thread): the current file, if any, is moved into
    the versions dir first; the copy goes through a temp file, fsync and an atomic rename, as
    any download does. Returns the restored file's name (the caller rescans it)."""
    parsed = original_name(version)
    vparts = check_relative(version)
    if parsed is None:
        raise FolderError(f"{version!r} is not a version name (NAME~YYYYMMDD-HHMMSS.EXT)")
    name = parsed[0]
    head, _, base = name.rpartition("/")
    vdir = open_dir(root, layout.VERSIONS_DIR + ("/" + "/".join(vparts[:-1]) if len(vparts) > 1 else ""))
    try:
        try:
            src = os.open(vparts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=vdir)
        except OSError as e:
            raise FolderError(f"no version {version!r}: {e.strerror or e}") from None
    finally:
        os.close(vdir)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise FolderError(f"version {version!r} is not a regular file")
        tdir = open_dir(root, head, create=True)
        try:
            _archive_current(root, tdir, name, base, now)
            tmp = layout.temp_name(base)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=tdir)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.S_IMODE(st.st_mode) or 0o644, dir_fd=tdir)
            try:
                while chunk := os.read(src, COPY_CHUNK):
                    os.write(out, chunk)
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, base, src_dir_fd=tdir, dst_dir_fd=tdir)
            os.fsync(tdir)
        finally:
            os.close(tdir)
    finally:
        os.close(src)
    return name


def _archive_current(root: Path, tdir: int, name: str, base: str, now: float) -> None:
    try:
        st = os.stat(base, dir_fd=tdir, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise FolderError(f"{name!r} exists and is not a regular file; not replaced")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    head = name.rpartition("/")[0]
    vdir = open_dir(root, layout.VERSIONS_DIR + ("/" + head if head else ""), create=True)
    try:
        for n in itertools.count():
            vname = f"{stem}~{stamp}" + (f"-{n}" if n else "") + (f".{ext}" if ext else "")
            try:
                os.stat(vname, dir_fd=vdir, follow_symlinks=False)
            except FileNotFoundError:
                break
        os.rename(base, vname, src_dir_fd=tdir, dst_dir_fd=vdir)
        os.utime(vname, (now, now), dir_fd=vdir, follow_symlinks=False)
    finally:
        os.close(vdir)

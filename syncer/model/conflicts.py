"""Conflict copies: `NAME.sync-conflict-YYYYMMDD-HHMMSS-SHORTID.EXT` (Syncthing's naming)."""

from __future__ import annotations

import posixpath
import time

MARKER = ".sync-conflict-"


def conflict_name(name: str, short_id: str, now: float) -> str:
    """Name for the losing copy of `name` (a '/'-separated folder path)."""
    head, base = posixpath.split(name)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:  # no extension, or a dotfile like ".bashrc"
        stem, ext = base, ""
    new = f"{stem}{MARKER}{stamp}-{short_id}" + (f".{ext}" if ext else "")
    return posixpath.join(head, new) if head else new


def is_conflict_copy(name: str) -> bool:
    return MARKER in posixpath.basename(name)


def original_of(copy: str) -> str:
    """`dir/a.sync-conflict-20250101-101010-ABCDEFG.txt` -> `dir/a.txt` (itself if no copy)."""
    head, sep, base = copy.rpartition("/")
    stem, marker, rest = base.partition(MARKER)
    if not marker:
        return copy
    _, dot, ext = rest.partition(".")  # rest = YYYYMMDD-HHMMSS-SHORTID[.ext]
    return head + sep + stem + (dot + ext if dot else "")


def kept_name(copy: str, device: str) -> str:
    """What `resolve --keep both` renames a copy to: no longer a conflict copy, still telling
    where it came from: `a (from LAPTOP 2025-01-01 10.10.10).txt`."""
    head, sep, base = copy.rpartition("/")
    stem, marker, rest = base.partition(MARKER)
    if not marker:
        return copy
    stamp, _, tail = rest.partition("-")
    clock, _, tail = tail.partition("-")
    _, dot, ext = tail.partition(".")
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {clock[:2]}.{clock[2:4]}.{clock[4:6]}"
    return head + sep + f"{stem} (from {device} {when})" + (dot + ext if dot else "")

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

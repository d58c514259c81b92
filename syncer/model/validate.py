"""Checks on what peers announce (pure). A hostile or buggy peer must not make us write outside
the folder, into `.syncer/`, over temp files or this device's `.syncerignore`, nor feed us
nonsense block lists, paths deeper than MAX_DEPTH or permission bits beyond 0o7777 (which are
masked to 0o777 when applied). The confined layer enforces the filesystem side again on disk."""

from __future__ import annotations

import posixpath
import unicodedata

from syncer.fs import layout
from syncer.fs.layout import is_temp_name
from syncer.wire import WireFile

MIN_BLOCK = 128 << 10
MAX_BLOCK = 16 << 20
MAX_NAME = 4096
MAX_TARGET = 4096
MAX_VERSION_ENTRIES = 1000  # devices that ever changed one file
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1


def bad_name(name: str) -> str | None:
    if not name or len(name) > MAX_NAME:
        return "empty or too long name"
    if "\x00" in name or "\\" in name:
        return "NUL or backslash in name"
    if name.startswith("/") or posixpath.normpath(name) != name:
        return "name is not a normalised relative path"
    parts = name.split("/")
    if len(parts) > layout.MAX_DEPTH:
        return f"name deeper than {layout.MAX_DEPTH} components"
    if any(p in ("", ".", "..") for p in parts):
        return "name has an empty, '.' or '..' component"
    if parts[0] == layout.MARKER:
        return "name inside .syncer/"
    if layout.is_local_only(name):
        return f"{name} is local to each device, never synced"
    if is_temp_name(name):
        return "name of a temp file"
    if unicodedata.normalize("NFC", name) != name:
        return "name not in NFC"
    return None


def bad_file(w: WireFile) -> str | None:
    err = bad_name(w.name)
    if err:
        return err
    if w.type not in (0, 1, 2):
        return f"unknown file type {w.type}"
    # everything is stored as SQLite's signed 64-bit integers: nothing out of range gets in
    if not 0 <= w.size <= INT64_MAX or not 0 <= w.sequence <= INT64_MAX:
        return "size or sequence out of range"
    if not INT64_MIN <= w.mtime_ns <= INT64_MAX:
        return "modification time out of range"
    if not 0 <= w.permissions <= 0o7777:
        return f"permissions {w.permissions!r} out of range"
    if not 0 <= w.modified_by <= UINT64_MAX or not 0 <= w.block_size <= MAX_BLOCK:
        return "modified_by or block size out of range"
    if not w.version or len(w.version) > MAX_VERSION_ENTRIES:
        return "empty or oversized version vector"
    for entry in w.version:
        if len(entry) != 2 or not 0 <= entry[0] <= UINT64_MAX or not 1 <= entry[1] <= INT64_MAX:
            return "version vector entry out of range"
    if len(w.symlink_target) > MAX_TARGET:
        return "symlink target too long"
    if w.type == 0 and not w.deleted:
        bs = w.block_size
        if bs < MIN_BLOCK or bs > MAX_BLOCK or bs & (bs - 1):
            return f"bad block size {bs}"
        if len(w.blocks) != (w.size + bs - 1) // bs:
            return "block count does not match size"
        if any(len(h) != 32 for h in w.blocks):
            return "block hash is not 32 bytes"
    if w.type == 2 and not w.deleted and not w.symlink_target:
        return "symlink without target"
    return None

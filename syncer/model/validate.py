"""Checks on what peers announce (pure). A hostile or buggy peer must not make us write outside
the folder, into `.syncer/`, or over temp files, nor feed us nonsense block lists."""

from __future__ import annotations

import posixpath
import unicodedata

from syncer.fs import layout
from syncer.fs.layout import is_temp_name
from syncer.wire import WireFile

MIN_BLOCK = 128 << 10
MAX_BLOCK = 16 << 20
MAX_NAME = 4096


def bad_name(name: str) -> str | None:
    if not name or len(name) > MAX_NAME:
        return "empty or too long name"
    if "\x00" in name or "\\" in name:
        return "NUL or backslash in name"
    if name.startswith("/") or posixpath.normpath(name) != name:
        return "name is not a normalised relative path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "name has an empty, '.' or '..' component"
    if parts[0] == layout.MARKER:
        return "name inside .syncer/"
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
    if w.size < 0 or w.sequence < 0:
        return "negative size or sequence"
    if not w.version:
        return "empty version vector"
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

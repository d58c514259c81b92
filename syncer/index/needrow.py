"""A row of the need table (pure): what a folder still needs of one item, as SQLite holds it
(index/db.py reads and writes it; model/need.py keeps it; model/why.py explains it)."""

from __future__ import annotations

import msgspec

NEED_OTHER, NEED_FILE, NEED_DELETE = 0, 1, 2  # NeedRow.kind: a directory or symlink, a file, a deletion


class NeedRow(msgspec.Struct, frozen=True):
    name: str
    kind: int  # NEED_OTHER, NEED_FILE, NEED_DELETE
    size: int
    conflict: bool
    source: bytes
    holders: tuple[bytes, ...]
    version: bytes  # msgpack of the global version vector
    error: str = ""
    failures: int = 0
    retry_at: float = 0.0
    skip: int = 0  # why it is deliberately not fetched (model/why.py SKIP_*), 0: it is


"""FileInfo: what a device knows of one file, directory or symlink (the "torrent" of a file)."""

from __future__ import annotations

from enum import IntEnum

import msgspec

from syncer.index.version import VersionVector


class FileType(IntEnum):
    FILE = 0
    DIRECTORY = 1
    SYMLINK = 2


LOCAL_CHANGE = 1


class FileInfo(msgspec.Struct, frozen=True):
    name: str  # NFC, '/'-separated, relative to the folder root
    type: FileType
    size: int
    mtime_ns: int
    permissions: int
    block_size: int
    blocks: tuple[bytes, ...]  # SHA-256 of block i = bytes [i*block_size, (i+1)*block_size)
    symlink_target: str
    version: VersionVector
    sequence: int
    deleted: bool
    modified_by: int
    # local-only bookkeeping (never sent): detects changes without re-hashing
    inode: int = 0
    dev: int = 0
    flags: int = 0  # LOCAL_CHANGE: a receive-only folder's local change, never announced

    @property
    def block_count(self) -> int:
        return len(self.blocks)

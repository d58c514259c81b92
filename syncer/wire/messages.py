"""The messages of the syncer wire protocol and their type bytes (see docs/protocol.md).

Bodies are msgpack arrays (msgspec `array_like`), so field order is part of the format: append
new fields at the end with defaults, never reorder. Piece is special-cased in frames.py: its
payload travels raw after an 8-byte id, so megabytes of block data are never msgpack-wrapped.
"""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=False):
    pass


class Hello(Message):
    device_name: str
    client_name: str
    client_version: str
    features: list[str] = []


class DeviceSummary(Message):
    device_id: bytes  # 32 bytes
    index_id: int  # which index of this device the sender holds
    max_sequence: int  # the highest sequence of it the sender holds


class FolderSummary(Message):
    id: str
    label: str
    devices: list[DeviceSummary]


class ClusterConfig(Message):
    folders: list[FolderSummary]


class WireFile(Message):
    name: str
    type: int  # 0 file, 1 directory, 2 symlink
    size: int
    mtime_ns: int
    permissions: int
    block_size: int
    blocks: list[bytes]  # SHA-256 per block, in order
    symlink_target: str
    version: list[tuple[int, int]]  # (short device id, counter)
    sequence: int
    deleted: bool
    modified_by: int


class Index(Message):
    folder: str
    files: list[WireFile]


class IndexUpdate(Message):
    folder: str
    files: list[WireFile]


class Bitfield(Message):
    """Which blocks of one version of a file the sender holds (partial holders serve)."""

    folder: str
    name: str
    version: list[tuple[int, int]]
    block_count: int
    bits: bytes  # bit i (MSB first in byte i//8) = holds block i


class Have(Message):
    folder: str
    name: str
    version: list[tuple[int, int]]
    block_index: int


class Request(Message):
    id: int
    folder: str
    name: str
    block_index: int
    offset: int
    size: int
    hash: bytes


class Piece(Message):
    id: int
    data: bytes


class PieceError(Message):
    id: int
    code: int


class Cancel(Message):
    id: int


class Choke(Message):
    pass


class Unchoke(Message):
    pass


class Interested(Message):
    pass


class NotInterested(Message):
    pass


class Ping(Message):
    pass


class Close(Message):
    reason: str


# PieceError codes
ERR_GENERIC = 0
ERR_NO_SUCH_FILE = 1
ERR_NO_SUCH_BLOCK = 2
ERR_INVALID = 3
ERR_CHOKED = 4

TYPES: dict[int, type[Message]] = {
    0x01: Hello,
    0x02: ClusterConfig,
    0x03: Index,
    0x04: IndexUpdate,
    0x05: Bitfield,
    0x06: Have,
    0x07: Request,
    0x08: Piece,
    0x09: PieceError,
    0x0A: Cancel,
    0x0B: Choke,
    0x0C: Unchoke,
    0x0D: Interested,
    0x0E: NotInterested,
    0x0F: Ping,
    0x10: Close,
}
TYPE_OF: dict[type[Message], int] = {v: k for k, v in TYPES.items()}

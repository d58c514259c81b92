"""The messages of the syncer wire protocol and their type bytes (see docs/protocol.md).

Bodies are msgpack arrays (msgspec `array_like`), so field order is part of the format: append
new fields at the end with defaults, never reorder. Piece is special-cased in frames.py: its
payload travels raw after an 8-byte id, so megabytes of block data are never msgpack-wrapped.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# ranges checked while decoding (a violation is a protocol error): what we store goes into
# SQLite's signed 64-bit integers, what we index with must be a sane size
U63 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack holds at most 2**64 - 1
BlockIndex = Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)]
BlockCount = Annotated[int, msgspec.Meta(ge=0, le=1 << 24)]
PieceSize = Annotated[int, msgspec.Meta(ge=0, le=16 << 20)]
ShortText = Annotated[str, msgspec.Meta(max_length=4096)]
FolderId = Annotated[str, msgspec.Meta(max_length=64)]


class Message(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=False):
    """Subclasses inherit these options; each repeats `frozen=True` only so that type checkers,
    which do not know msgspec inherits it, see the same immutable class msgspec builds."""


class Hello(Message, frozen=True):
    device_name: ShortText
    client_name: ShortText
    client_version: ShortText
    features: Annotated[list[ShortText], msgspec.Meta(max_length=64)] = []


class DeviceSummary(Message, frozen=True):
    device_id: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    index_id: U63  # which index of this device the sender holds
    max_sequence: U63  # the highest sequence of it the sender holds


class FolderSummary(Message, frozen=True):
    id: FolderId
    label: ShortText
    devices: Annotated[list[DeviceSummary], msgspec.Meta(max_length=1000)]


class ClusterConfig(Message, frozen=True):
    folders: Annotated[list[FolderSummary], msgspec.Meta(max_length=1000)]


class WireFile(Message, frozen=True):
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


class Index(Message, frozen=True):
    folder: FolderId
    files: list[WireFile]


class IndexUpdate(Message, frozen=True):
    folder: FolderId
    files: list[WireFile]


class Bitfield(Message, frozen=True):
    """Which blocks of one version of a file the sender holds (partial holders serve)."""

    folder: FolderId
    name: ShortText
    version: Annotated[list[tuple[U64, U63]], msgspec.Meta(max_length=1000)]
    block_count: BlockCount
    bits: bytes  # bit i (MSB first in byte i//8) = holds block i


MAX_HAVE_MORE = 1 << 14  # further blocks in one Have


class Have(Message, frozen=True):
    """Block `block_index` of this version, and the blocks in `more` (sent only to a peer whose
    Hello lists FEATURE_HAVE_BATCH; an older one would read the first block alone)."""

    folder: FolderId
    name: ShortText
    version: Annotated[list[tuple[U64, U63]], msgspec.Meta(max_length=1000)]
    block_index: BlockIndex
    more: Annotated[list[BlockIndex], msgspec.Meta(max_length=MAX_HAVE_MORE)] = []

    def indexes(self) -> list[int]:
        return [self.block_index, *self.more]


FEATURE_HAVE_BATCH = "have-batch"


class Request(Message, frozen=True):
    id: U64
    folder: FolderId
    name: ShortText
    block_index: BlockIndex
    offset: U63
    size: PieceSize
    hash: Annotated[bytes, msgspec.Meta(max_length=32)]


class Piece(Message, frozen=True):
    id: int
    data: bytes | memoryview  # received: a view of the frame (frames.py decodes pieces itself)


class PieceError(Message, frozen=True):
    id: U64
    code: Annotated[int, msgspec.Meta(ge=0, le=255)]


class Cancel(Message, frozen=True):
    id: U64


class Choke(Message, frozen=True):
    pass


class Unchoke(Message, frozen=True):
    pass


class Interested(Message, frozen=True):
    pass


class NotInterested(Message, frozen=True):
    pass


class Ping(Message, frozen=True):
    pass


class Close(Message, frozen=True):
    reason: ShortText


class PeerAddresses(Message, frozen=True):
    """Sent by each side once connected (docs/nat.md): what this side sees and knows."""

    observed: str  # the peer's address as this side sees this connection, e.g. tcp://1.2.3.4:5
    listen: list[str]  # this side's listen addresses as bound, e.g. quic://0.0.0.0:22000
    external: list[str]  # addresses believed to reach this side (port mapping, STUN, IPv6)


class PunchVia(Message, frozen=True):
    """Hole punching coordinated by a device connected to both ends (nat/assist.py)."""

    op: int  # PUNCH_REQUEST / PUNCH_OFFER / PUNCH_ANSWER / PUNCH_ERROR
    punch_id: bytes  # 16 random bytes chosen by the initiator
    device: bytes  # request/answer from an end: the other end; from the helper: who it is from
    host: str  # the sender's UDP address as seen by the helper ("" in errors)
    port: int
    reason: str = ""


class RelayVia(Message, frozen=True):
    """Control of a byte channel relayed by a paired device (nat/assist.py)."""

    op: int  # RELAY_OPEN / RELAY_INCOMING / RELAY_ACCEPT / RELAY_ACCEPTED / RELAY_CLOSE / RELAY_CREDIT
    channel: int  # u32, chosen by the sender of OPEN (A-C leg) or INCOMING (C-B leg)
    device: bytes = b""  # OPEN: the other end; INCOMING: who it is from
    credit: int = 0  # RELAY_CREDIT: bytes the receiver consumed since its last credit
    reason: str = ""


class RelayData(Message, frozen=True):
    channel: int
    data: bytes  # at most RELAY_CHUNK bytes: ciphertext of the ends' own TLS session


PEER_ASSIST = (PeerAddresses, PunchVia, RelayVia, RelayData)  # handled by nat/assist.py
PUNCH_REQUEST, PUNCH_OFFER, PUNCH_ANSWER, PUNCH_ERROR = 1, 2, 3, 4
RELAY_OPEN, RELAY_INCOMING, RELAY_ACCEPT, RELAY_ACCEPTED, RELAY_CLOSE, RELAY_CREDIT = 1, 2, 3, 4, 5, 6
RELAY_CHUNK = 64 << 10

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
    0x30: PeerAddresses,
    0x31: PunchVia,
    0x32: RelayVia,
    0x33: RelayData,
}
TYPE_OF: dict[type[Message], int] = {v: k for k, v in TYPES.items()}

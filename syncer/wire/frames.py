"""Framing: `length:u32be | type:u8 | body`, where length counts type + body.

Limits are checked from the 5-byte header, before any body is buffered, so a peer cannot make us
hold more than one maximal frame. Piece bodies are `id:u64be | raw data`; every other body is a
msgpack array decoded with msgspec into the message's Struct.
"""

from __future__ import annotations

import struct

import msgspec

from syncer.wire.messages import TYPE_OF, TYPES, Index, IndexUpdate, Message, Piece

HEADER = struct.Struct(">IB")
PIECE_ID = struct.Struct(">Q")
MAX_PIECE_DATA = 16 << 20  # largest block size
MAX_INDEX_FRAME = 32 << 20  # senders split indexes into batches well below this
MAX_CONTROL_FRAME = 1 << 20
ASSEMBLE_FROM = 1 << 20  # Piece frames at least this big are assembled in a buffer of their size

_encoder = msgspec.msgpack.Encoder()
_decoders = {t: msgspec.msgpack.Decoder(cls) for t, cls in TYPES.items() if cls is not Piece}
_PIECE_TYPE = TYPE_OF[Piece]


class FrameError(Exception):
    """The byte stream is not valid syncer protocol; the reason is sent in Close."""


def max_frame(type_byte: int) -> int:
    if type_byte == _PIECE_TYPE:
        return 1 + PIECE_ID.size + MAX_PIECE_DATA
    if TYPES.get(type_byte) in (Index, IndexUpdate):
        return MAX_INDEX_FRAME
    return MAX_CONTROL_FRAME


def encode(msg: Message) -> bytes:
    t = TYPE_OF[type(msg)]
    if t == _PIECE_TYPE:
        assert isinstance(msg, Piece)
        return b"".join(encode_piece(msg.id, msg.data))
    body = _encoder.encode(msg)
    if len(body) + 1 > max_frame(t):
        raise ValueError(f"{type(msg).__name__} of {len(body)} bytes exceeds the frame limit")
    return HEADER.pack(len(body) + 1, t) + body


def encode_piece(request_id: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    """Header and payload as separate buffers, so megabytes are not copied to be framed."""
    if len(data) > MAX_PIECE_DATA:
        raise ValueError("piece larger than the maximum block size")
    return [HEADER.pack(1 + PIECE_ID.size + len(data), _PIECE_TYPE) + PIECE_ID.pack(request_id), data]


def decode_body(type_byte: int, body: memoryview) -> Message:
    if type_byte == _PIECE_TYPE:
        if len(body) < PIECE_ID.size:
            raise FrameError("truncated piece")
        # the payload stays a view of the received (immutable) buffer: no copy of block data
        return Piece(PIECE_ID.unpack_from(body)[0], body[PIECE_ID.size :])
    dec = _decoders.get(type_byte)
    if dec is None:
        raise FrameError(f"unknown message type 0x{type_byte:02x}")
    try:
        return dec.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise FrameError(f"malformed {TYPES[type_byte].__name__}: {e}") from None


class FrameDecoder:
    """Turns received bytes into messages.

    Frames that arrive whole are decoded straight from the received buffer. A small frame split
    over several reads is kept as a list of chunks and joined once, when its last byte arrives;
    a big Piece (a block of up to 16 MiB) is copied into a buffer of its size as it comes, so it is
    held once, not as chunks and then joined. Every byte is copied at most once, and Piece
    payloads are views of buffers nothing else writes to.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0  # bytes needed before the pending chunks can be parsed again
        self._big: memoryview | None = None  # the big frame being filled, header included
        self._fill = 0

    @property
    def buffered(self) -> int:
        return self._have + self._fill

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Decoded messages; raises FrameError on the first invalid frame."""
        out: list[Message] = []
        if self._big is not None:
            big = self._big
            take = min(len(data), len(big) - self._fill)
            big[self._fill : self._fill + take] = memoryview(data)[:take]
            self._fill += take
            if self._fill < len(big):
                return out
            self._big, self._fill = None, 0
            out.append(decode_body(big[4], big[HEADER.size :]))
            if take == len(data):
                return out
            data = memoryview(data)[take:]
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return out
            data = b"".join(self._chunks)
            self._chunks, self._have = [], 0
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= 4:
            if data[pos : pos + 4] == b"\0\0\0\0":
                raise FrameError("empty frame")
            if end - pos < HEADER.size:
                break
            length, t = HEADER.unpack_from(data, pos)
            if length > max_frame(t):
                raise FrameError(f"frame of {length} bytes for type 0x{t:02x} exceeds the limit")
            if end - pos < 4 + length:
                if length >= ASSEMBLE_FROM and t == _PIECE_TYPE:  # at most one block: 16 MiB
                    big = memoryview(bytearray(4 + length))
                    self._fill = end - pos
                    big[: self._fill] = view[pos:end]
                    self._big = big
                    return out
                break
            out.append(decode_body(t, view[pos + HEADER.size : pos + 4 + length]))
            pos += 4 + length
        if pos < end:
            tail = data[pos:]
            self._chunks = [tail]
            self._have = len(tail)
            self._need = HEADER.size
            if len(tail) >= HEADER.size:
                length, t = HEADER.unpack_from(tail)
                if length > max_frame(t):  # refuse before buffering any of it
                    raise FrameError(f"frame of {length} bytes for type 0x{t:02x} exceeds the limit")
                self._need = 4 + length
        return out

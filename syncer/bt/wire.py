"""The BitTorrent peer wire (BEP 3), fast extension (BEP 6) and extension protocol (BEP 10) with
ut_metadata (BEP 9), as a sans-IO state machine: bytes in -> message events, messages -> bytes.

Rules, all enforced here so the drivers cannot forget one (a violation ends the connection with a
ProtocolError naming it; the machine never raises on peer input):
- The handshake comes first: "\\x13BitTorrent protocol", 8 reserved bytes (extension protocol
  bit 0x10 of byte 5, fast extension bit 0x04 and DHT bit 0x01 of byte 7), info-hash, peer id.
  An outbound connection must get the info-hash it asked for; an inbound one is `accept()`ed by
  the driver once it knows it serves that info-hash.
- Every message is at most MAX_MESSAGE bytes (a bitfield of MAX_PIECES pieces); each type has its
  exact length; piece indices are below the piece count and requests inside their piece once the
  geometry is known (`set_geometry`, which also checks a bitfield received before the metadata);
  requested blocks are 1..BLOCK bytes.
- Bitfield / have all / have none at most once, and not after a have. BEP 6 messages only when
  both sides set the fast bit; extended messages only with the extension bit.
- The machine owns request state both ways: a peer may have at most MAX_PEER_REQUESTS requests
  pending with us (`peer_requests`: added on request, removed by our piece or reject, its cancel,
  or our choke); a piece we did not request (nor cancel recently) is counted and ends the
  connection after MAX_UNREQUESTED. Choking a fast peer sends a reject for each pending request;
  being choked by a non-fast peer drops our pending requests (BEP 6 vs BEP 3 semantics). A
  request while we choke the peer is dropped, or rejected (`data_to_send`) if the peer is fast.
- Keepalive: `tick(now)` returns a keepalive after KEEPALIVE_INTERVAL without sending, and the
  reason to close after IDLE_TIMEOUT without receiving.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from syncer.bt.bitfield import Bitfield
from syncer.bt.metainfo import MAX_METADATA
from syncer.codec import bencode

PSTR = b"\x13BitTorrent protocol"
HANDSHAKE_LEN = 68
BLOCK = 16 << 10
MAX_PIECES = 1 << 21
MAX_MESSAGE = 1 + (MAX_PIECES >> 3)  # id + the largest bitfield; a piece message is far smaller
MAX_EXTENDED = 1 << 17  # an extended message (BEP 9 data: dict + 16 KiB)
MAX_PEER_REQUESTS = 500
ADVERTISED_REQQ = 250
MAX_UNREQUESTED = 32
MAX_ALLOWED_FAST = 64
RECENT_CANCELS = 1024
METADATA_PIECE = 16 << 10
UT_METADATA_ID = 2  # the id we ask peers to use for ut_metadata messages to us
KEEPALIVE_INTERVAL = 90.0
IDLE_TIMEOUT = 240.0

# message ids
CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL, PORT = range(10)
SUGGEST, HAVE_ALL, HAVE_NONE, REJECT, ALLOWED_FAST = 13, 14, 15, 16, 17
EXTENDED = 20


# --- messages (both directions) ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Handshake:
    info_hash: bytes
    peer_id: bytes
    extensions: bool
    fast: bool
    dht: bool


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Choke:
    pass


@dataclass(frozen=True, slots=True)
class Unchoke:
    pass


@dataclass(frozen=True, slots=True)
class Interested:
    pass


@dataclass(frozen=True, slots=True)
class NotInterested:
    pass


@dataclass(frozen=True, slots=True)
class Have:
    index: int


@dataclass(frozen=True, slots=True)
class BitfieldMsg:
    bits: bytes


@dataclass(frozen=True, slots=True)
class HaveAll:
    pass


@dataclass(frozen=True, slots=True)
class HaveNone:
    pass


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Cancel:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Reject:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece:
    index: int
    begin: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Port:
    port: int


@dataclass(frozen=True, slots=True)
class Suggest:
    index: int


@dataclass(frozen=True, slots=True)
class AllowedFast:
    index: int


@dataclass(frozen=True, slots=True)
class ExtendedHandshake:
    ut_metadata: int = 0  # the peer's id for ut_metadata (0: not supported)
    metadata_size: int = 0  # 0: unknown
    listen_port: int = 0
    client: str = ""
    reqq: int = 0


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    piece: int


@dataclass(frozen=True, slots=True)
class MetadataData:
    piece: int
    total_size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MetadataReject:
    piece: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    reason: str


Message = (
    KeepAlive | Choke | Unchoke | Interested | NotInterested | Have | BitfieldMsg | HaveAll
    | HaveNone | Request | Cancel | Reject | Piece | Port | Suggest | AllowedFast
    | ExtendedHandshake | MetadataRequest | MetadataData | MetadataReject
)
Event = Handshake | Message | ProtocolError

_FIXED = {CHOKE: 1, UNCHOKE: 1, INTERESTED: 1, NOT_INTERESTED: 1, HAVE: 5, REQUEST: 13, CANCEL: 13, PORT: 3, SUGGEST: 5, HAVE_ALL: 1, HAVE_NONE: 1, REJECT: 13, ALLOWED_FAST: 5}
_FAST_ONLY = {SUGGEST, HAVE_ALL, HAVE_NONE, REJECT, ALLOWED_FAST}
_SIMPLE: dict[int, Message] = {CHOKE: Choke(), UNCHOKE: Unchoke(), INTERESTED: Interested(), NOT_INTERESTED: NotInterested(), HAVE_ALL: HaveAll(), HAVE_NONE: HaveNone()}
_SIMPLE_ID = {Choke: CHOKE, Unchoke: UNCHOKE, Interested: INTERESTED, NotInterested: NOT_INTERESTED, HaveAll: HAVE_ALL, HaveNone: HAVE_NONE}
_I = struct.Struct(">I")
_IB = struct.Struct(">IB")
_III = struct.Struct(">III")


@dataclass(frozen=True)
class Geometry:
    num_pieces: int
    piece_length: int
    total_length: int

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length


class WireError(Exception):
    pass


def encode_handshake(info_hash: bytes, peer_id: bytes, extensions: bool = True, fast: bool = True, dht: bool = False) -> bytes:
    reserved = bytearray(8)
    if extensions:
        reserved[5] |= 0x10
    if fast:
        reserved[7] |= 0x04
    if dht:
        reserved[7] |= 0x01
    return PSTR + bytes(reserved) + info_hash + peer_id


def parse_handshake(data: bytes) -> Handshake:
    if data[:20] != PSTR:
        raise WireError("not a BitTorrent handshake")
    r = data[20:28]
    return Handshake(bytes(data[28:48]), bytes(data[48:68]), bool(r[5] & 0x10), bool(r[7] & 0x04), bool(r[7] & 0x01))


def encode(msg: Message, peer_ut_metadata: int = 0) -> bytes:
    """One message on the wire (length prefix included)."""
    if isinstance(msg, Piece):
        return _IB.pack(9 + len(msg.data), PIECE) + struct.pack(">II", msg.index, msg.begin) + msg.data
    t = type(msg)
    if t in _SIMPLE_ID:
        return _IB.pack(1, _SIMPLE_ID[t])
    if isinstance(msg, KeepAlive):
        return b"\0\0\0\0"
    if isinstance(msg, (Request, Cancel, Reject)):
        mid = REQUEST if isinstance(msg, Request) else CANCEL if isinstance(msg, Cancel) else REJECT
        return _IB.pack(13, mid) + _III.pack(msg.index, msg.begin, msg.length)
    if isinstance(msg, (Have, Suggest, AllowedFast)):
        mid = HAVE if isinstance(msg, Have) else SUGGEST if isinstance(msg, Suggest) else ALLOWED_FAST
        return _IB.pack(5, mid) + _I.pack(msg.index)
    if isinstance(msg, BitfieldMsg):
        return _IB.pack(1 + len(msg.bits), BITFIELD) + msg.bits
    if isinstance(msg, Port):
        return _IB.pack(3, PORT) + struct.pack(">H", msg.port)
    if isinstance(msg, ExtendedHandshake):
        d: dict[str, Any] = {"m": {"ut_metadata": UT_METADATA_ID}, "reqq": msg.reqq or ADVERTISED_REQQ}
        if msg.metadata_size:
            d["metadata_size"] = msg.metadata_size
        if msg.listen_port:
            d["p"] = msg.listen_port
        if msg.client:
            d["v"] = msg.client
        return _extended(0, bencode.encode(d))
    if isinstance(msg, (MetadataRequest, MetadataData, MetadataReject)):
        if not peer_ut_metadata:
            raise WireError("the peer does not support ut_metadata")
        if isinstance(msg, MetadataRequest):
            body = bencode.encode({"msg_type": 0, "piece": msg.piece})
        elif isinstance(msg, MetadataData):
            body = bencode.encode({"msg_type": 1, "piece": msg.piece, "total_size": msg.total_size}) + msg.data
        else:
            body = bencode.encode({"msg_type": 2, "piece": msg.piece})
        return _extended(peer_ut_metadata, body)
    raise WireError(f"cannot encode {type(msg).__name__}")


def _extended(ext_id: int, body: bytes) -> bytes:
    return _IB.pack(2 + len(body), EXTENDED) + bytes([ext_id]) + body


class PeerConnection:
    """One peer connection's protocol state. `feed` returns events; `send` returns bytes."""

    def __init__(
        self,
        peer_id: bytes,
        info_hash: bytes | None,
        now: float,
        *,
        extensions: bool = True,
        fast: bool = True,
        dht: bool = False,
        geometry: Geometry | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.info_hash = info_hash  # None on an inbound connection until accept()
        self.our_ext, self.our_fast, self.our_dht = extensions, fast, dht
        self.geometry = geometry
        self.peer_handshake: Handshake | None = None
        self.accepted = info_hash is not None
        self.closed = False
        self.close_reason = ""
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.peer_ut_metadata = 0
        self.peer_reqq = 0
        self.peer_requests: set[tuple[int, int, int]] = set()
        self.our_requests: set[tuple[int, int, int]] = set()
        self._recent_cancels: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self.allowed_fast: set[int] = set()
        self.unrequested = 0
        self._had_bitfield = False
        self._had_have = False
        self.early_bitfield: bytes | None = None  # received before the geometry was known
        self._early_haves: bytearray | None = None  # a MAX_PIECES-bit map, made on first use
        self._buf = bytearray()
        self._outbox = bytearray()  # replies the machine owes by itself (rejects)
        self.bytes_in = self.bytes_out = 0
        self.last_recv = self.last_send = now

    # --- negotiated features -------------------------------------------------------------
    @property
    def fast(self) -> bool:
        return self.our_fast and self.peer_handshake is not None and self.peer_handshake.fast

    @property
    def extensions(self) -> bool:
        return self.our_ext and self.peer_handshake is not None and self.peer_handshake.extensions

    # --- handshake -----------------------------------------------------------------------
    def initiate(self, now: float) -> bytes:
        """Our handshake, sent first on an outbound connection."""
        assert self.info_hash is not None
        self.last_send = now
        return self._out(encode_handshake(self.info_hash, self.peer_id, self.our_ext, self.our_fast, self.our_dht))

    def accept(self, info_hash: bytes, now: float, geometry: Geometry | None = None) -> bytes:
        """Inbound: we serve the info-hash the peer asked for; returns our handshake."""
        self.info_hash, self.accepted = info_hash, True
        if geometry is not None:
            self.geometry = geometry
        return self.initiate(now)

    def set_geometry(self, geometry: Geometry) -> list[Event]:
        """The metadata became known: check what the peer sent before it."""
        self.geometry = geometry
        if self.early_bitfield is not None:
            try:
                Bitfield(geometry.num_pieces, self.early_bitfield)
            except ValueError as e:
                return [self._error(f"bad bitfield: {e}")]
        if any(i >= geometry.num_pieces for i in self.early_haves()):
            return [self._error("have index out of range")]
        return []

    def forget_early(self) -> None:
        self.early_bitfield = self._early_haves = None

    def early_haves(self) -> list[int]:
        """Pieces the peer announced with have before the geometry was known."""
        m = self._early_haves
        if m is None:
            return []
        return [i * 8 + b for i, byte in enumerate(m) if byte for b in range(8) if byte & (0x80 >> b)]

    # --- input ---------------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> list[Event]:
        if self.closed:
            return []
        self.bytes_in += len(data)
        self.last_recv = now
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        n = len(buf)
        if self.peer_handshake is None:
            if n < HANDSHAKE_LEN:
                if buf[: min(n, 20)] != PSTR[: min(n, 20)]:
                    return [self._error("not a BitTorrent handshake")]
                return []
            try:
                hs = parse_handshake(bytes(buf[:HANDSHAKE_LEN]))
            except WireError as e:
                return [self._error(str(e))]
            if self.info_hash is not None and hs.info_hash != self.info_hash:
                return [self._error("the peer answered for another info-hash")]
            if hs.peer_id == self.peer_id:
                return [self._error("connected to ourselves")]
            self.peer_handshake = hs
            events.append(hs)
            pos = HANDSHAKE_LEN
        mv = memoryview(buf)
        try:
            while n - pos >= 4:
                length = _I.unpack_from(buf, pos)[0]
                if length > MAX_MESSAGE:
                    events.append(self._error(f"message of {length} bytes"))
                    return events
                if n - pos - 4 < length:
                    break
                start = pos + 4
                pos = start + length
                if length == 0:
                    continue  # keepalive
                ev = self._message(buf[start], mv, start + 1, length - 1)
                if ev is not None:
                    events.append(ev)
                    if isinstance(ev, ProtocolError):
                        return events
        finally:
            mv.release()
            if self.closed:
                buf.clear()
            elif pos:
                del buf[:pos]
        return events

    def _message(self, mid: int, mv: memoryview, p: int, n: int) -> Event | None:
        fixed = _FIXED.get(mid)
        if fixed is not None and n != fixed - 1:
            return self._error(f"message {mid} of wrong length {n + 1}")
        if mid in _FAST_ONLY and not self.fast:
            return self._error(f"fast-extension message {mid} without the fast extension")
        g = self.geometry
        if mid == PIECE:
            if n < 8 or n - 8 > BLOCK:
                return self._error(f"piece message of {n + 1} bytes")
            index, begin = struct.unpack_from(">II", mv, p)
            key = (index, begin, n - 8)
            if key not in self.our_requests:
                if key in self._recent_cancels:
                    del self._recent_cancels[key]
                    return None
                self.unrequested += 1
                if self.unrequested > MAX_UNREQUESTED:
                    return self._error("too many blocks we did not request")
                return None
            self.our_requests.discard(key)
            return Piece(index, begin, bytes(mv[p + 8 : p + n]))
        if mid in _SIMPLE:
            if mid == CHOKE:
                self.peer_choking = True
                if not self.fast:
                    self.our_requests.clear()
            elif mid == UNCHOKE:
                self.peer_choking = False
            elif mid == INTERESTED:
                self.peer_interested = True
            elif mid == NOT_INTERESTED:
                self.peer_interested = False
            else:  # have all / have none
                if self._had_bitfield or self._had_have:
                    return self._error("a second bitfield, or one after a have")
                self._had_bitfield = True
            return _SIMPLE[mid]
        if mid in (HAVE, SUGGEST, ALLOWED_FAST):
            index = _I.unpack_from(mv, p)[0]
            limit = g.num_pieces if g else MAX_PIECES
            if index >= limit:
                return self._error(f"piece index {index} out of range")
            if mid == HAVE:
                self._had_have = True
                if g is None:
                    if self._early_haves is None:
                        self._early_haves = bytearray(MAX_PIECES >> 3)
                    self._early_haves[index >> 3] |= 0x80 >> (index & 7)
                return Have(index)
            if mid == ALLOWED_FAST:
                if len(self.allowed_fast) >= MAX_ALLOWED_FAST:
                    return None
                self.allowed_fast.add(index)
                return AllowedFast(index)
            return Suggest(index)
        if mid in (REQUEST, CANCEL, REJECT):
            index, begin, length = _III.unpack_from(mv, p)
            key = (index, begin, length)
            if mid == REJECT:
                self.our_requests.discard(key)
                return Reject(*key)
            if mid == CANCEL:
                self.peer_requests.discard(key)
                return Cancel(*key)
            if not 0 < length <= BLOCK:
                return self._error(f"request of {length} bytes")
            if g is not None and (index >= g.num_pieces or begin + length > g.piece_size(index)):
                return self._error("request outside the piece")
            if self.am_choking:
                # BEP 6: a fast peer gets an explicit reject; BEP 3: the request is dropped
                if self.fast:
                    self._outbox += self._out(encode(Reject(*key)))
                return None
            if len(self.peer_requests) >= MAX_PEER_REQUESTS:
                return self._error(f"more than {MAX_PEER_REQUESTS} requests pending")
            self.peer_requests.add(key)
            return Request(*key)
        if mid == BITFIELD:
            if self._had_bitfield or self._had_have:
                return self._error("a second bitfield, or one after a have")
            self._had_bitfield = True
            bits = bytes(mv[p : p + n])
            if g is not None:
                try:
                    Bitfield(g.num_pieces, bits)
                except ValueError as e:
                    return self._error(f"bad bitfield: {e}")
            else:
                self.early_bitfield = bits
            return BitfieldMsg(bits)
        if mid == PORT:
            return Port(struct.unpack_from(">H", mv, p)[0])
        if mid == EXTENDED:
            if not self.extensions:
                return self._error("extended message without the extension protocol")
            if n < 1 or n > MAX_EXTENDED:
                return self._error(f"extended message of {n + 1} bytes")
            return self._extended(mv[p], bytes(mv[p + 1 : p + n]))
        return None  # unknown message ids are ignored (BEP 3)

    def _extended(self, ext_id: int, body: bytes) -> Event | None:
        if ext_id == 0:
            try:
                d = bencode.decode(body)
            except bencode.BencodeError as e:
                return self._error(f"bad extension handshake: {e}")
            if not isinstance(d, dict):
                return self._error("extension handshake is not a dictionary")
            m = d.get(b"m")
            ut = m.get(b"ut_metadata", 0) if isinstance(m, dict) else 0
            ut = ut if isinstance(ut, int) and 0 <= ut <= 255 else 0
            size = d.get(b"metadata_size", 0)
            size = size if isinstance(size, int) and 0 < size <= MAX_METADATA else 0
            port = d.get(b"p", 0)
            port = port if isinstance(port, int) and 0 < port < 65536 else 0
            client = d.get(b"v", b"")
            client = client[:64].decode("utf-8", "replace") if isinstance(client, bytes) else ""
            reqq = d.get(b"reqq", 0)
            reqq = reqq if isinstance(reqq, int) and 0 < reqq <= 100_000 else 0
            self.peer_ut_metadata, self.peer_reqq = ut, reqq
            return ExtendedHandshake(ut, size, port, "".join(c for c in client if c.isprintable()), reqq)
        if ext_id != UT_METADATA_ID:
            return None  # an extension we did not offer: ignored
        try:
            d, end = bencode.decode_prefix(body)
        except bencode.BencodeError as e:
            return self._error(f"bad ut_metadata message: {e}")
        if not isinstance(d, dict):
            return self._error("ut_metadata message is not a dictionary")
        kind, piece = d.get(b"msg_type"), d.get(b"piece")
        if not isinstance(kind, int) or not isinstance(piece, int) or not 0 <= piece < -(-MAX_METADATA // METADATA_PIECE):
            return self._error("bad ut_metadata message")
        if kind == 0:
            return MetadataRequest(piece)
        if kind == 2:
            return MetadataReject(piece)
        if kind == 1:
            total = d.get(b"total_size")
            data = body[end:]
            if not isinstance(total, int) or not 0 < total <= MAX_METADATA or len(data) > METADATA_PIECE:
                return self._error("bad ut_metadata data")
            return MetadataData(piece, total, data)
        return None

    def _error(self, reason: str) -> ProtocolError:
        self.closed = True
        self.close_reason = reason
        return ProtocolError(reason)

    # --- output --------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Bytes the machine decided to send by itself while reading (rejects to a fast peer's
        requests while choked); the driver writes them after each feed."""
        out, self._outbox = bytes(self._outbox), bytearray()
        return out

    def ignore_request(self, index: int, begin: int, length: int) -> bytes:
        """We will not serve this request (we lack the piece): a reject for a fast peer, else
        nothing (BEP 3 has no way to say so)."""
        key = (index, begin, length)
        self.peer_requests.discard(key)
        return self._out(encode(Reject(*key))) if self.fast else b""

    def _out(self, data: bytes) -> bytes:
        self.bytes_out += len(data)
        return data

    def send(self, msg: Message, now: float) -> bytes:
        """Encode `msg` and record what sending it means for the connection's state."""
        self.last_send = now
        if isinstance(msg, Piece):
            self.peer_requests.discard((msg.index, msg.begin, len(msg.data)))
        elif isinstance(msg, Request):
            self.our_requests.add((msg.index, msg.begin, msg.length))
        elif isinstance(msg, Cancel):
            key = (msg.index, msg.begin, msg.length)
            if key in self.our_requests:
                self.our_requests.discard(key)
                self._recent_cancels[key] = None
                while len(self._recent_cancels) > RECENT_CANCELS:
                    self._recent_cancels.popitem(last=False)
        elif isinstance(msg, Reject):
            self.peer_requests.discard((msg.index, msg.begin, msg.length))
        elif isinstance(msg, Choke):
            self.am_choking = True
            pending, self.peer_requests = self.peer_requests, set()
            if self.fast:  # BEP 6: every pending request gets an explicit reject
                return self._out(encode(msg) + b"".join(encode(Reject(*k)) for k in sorted(pending)))
        elif isinstance(msg, Unchoke):
            self.am_choking = False
        elif isinstance(msg, Interested):
            self.am_interested = True
        elif isinstance(msg, NotInterested):
            self.am_interested = False
        elif isinstance(msg, (HaveAll, HaveNone, Reject, Suggest, AllowedFast)) and not self.fast:
            raise WireError(f"{type(msg).__name__} needs the fast extension")
        return self._out(encode(msg, self.peer_ut_metadata))

    # --- time ----------------------------------------------------------------------------
    def tick(self, now: float) -> tuple[bytes, str | None]:
        """(keepalive to send or b"", reason to close or None)."""
        if now - self.last_recv > IDLE_TIMEOUT:
            return b"", f"nothing received for {IDLE_TIMEOUT:.0f} s"
        if now - self.last_send >= KEEPALIVE_INTERVAL and self.accepted:
            self.last_send = now
            return self._out(encode(KeepAlive())), None
        return b"", None

    def next_deadline(self) -> float:
        return min(self.last_recv + IDLE_TIMEOUT, self.last_send + KEEPALIVE_INTERVAL)

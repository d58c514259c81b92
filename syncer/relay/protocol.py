"""Relay wire protocol: relay URLs and the frames exchanged over TLS connections to a relay.

Every connection to a relay is TLS 1.3 with mutual authentication (device certificates, ALPN
`syncer-relay/1`), so the relay knows which device each connection belongs to. Frames are
`u16 length (big-endian) | msgpack [tag, field...]`, at most MAX_FRAME bytes of body. The first
frame a client sends decides what the connection is (docs/nat.md has the full exchange):

  Join                -> Joined(cookie)         control connection: "reachable via this relay";
                                                the relay sends Invite / PunchInvite / Pong on it
  Connect(device)     -> Paired(device)         session request; then Go, then the byte pipe
  Accept(token)       -> Paired(device)         answer to an Invite; then Go, then the byte pipe
  PunchRequest(device)-> PunchPrepare(id, cookie), later PunchStart(id, addr, delay)

Once both ends of a session have sent Go the relay copies bytes both ways and never looks at them
again: the peers run their own mutual TLS through the pipe. Pure: encoding, decoding, URL parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import msgspec

from syncer.deviceid import DeviceId
from syncer.errors import InvalidDeviceId, SyncerError

ALPN = "syncer-relay/1"
MAX_FRAME = 4096
HEADER = struct.Struct("!H")
TOKEN_LEN = 16


class RelayProtocolError(SyncerError):
    pass


class Join(msgspec.Struct, tag=1, array_like=True, frozen=True):
    pass


class Joined(msgspec.Struct, tag=2, array_like=True, frozen=True):
    cookie: bytes  # identifies this device in UDP Bind datagrams (nat/messages.py)


class Connect(msgspec.Struct, tag=3, array_like=True, frozen=True):
    device: bytes  # 32-byte device ID to reach


class Invite(msgspec.Struct, tag=4, array_like=True, frozen=True):
    token: bytes
    device: bytes  # who asked


class Accept(msgspec.Struct, tag=5, array_like=True, frozen=True):
    token: bytes


class Paired(msgspec.Struct, tag=6, array_like=True, frozen=True):
    device: bytes  # the other end, as authenticated by the relay (re-checked end to end)


class Go(msgspec.Struct, tag=7, array_like=True, frozen=True):
    """The sender's last frame: everything after it belongs to the pipe."""


class PunchRequest(msgspec.Struct, tag=8, array_like=True, frozen=True):
    device: bytes


class PunchPrepare(msgspec.Struct, tag=9, array_like=True, frozen=True):
    punch_id: bytes
    cookie: bytes  # bind this from the socket you will punch from


class PunchInvite(msgspec.Struct, tag=10, array_like=True, frozen=True):
    punch_id: bytes
    device: bytes


class PunchStart(msgspec.Struct, tag=11, array_like=True, frozen=True):
    punch_id: bytes
    host: str  # the peer's observed public address
    port: int
    delay_ms: int  # start punching this long after receipt


class Ping(msgspec.Struct, tag=12, array_like=True, frozen=True):
    pass


class Pong(msgspec.Struct, tag=13, array_like=True, frozen=True):
    pass


class Error(msgspec.Struct, tag=14, array_like=True, frozen=True):
    code: int
    reason: str


# Error codes
NOT_REACHABLE = 1  # the device has no control connection to this relay
LIMIT = 2  # too many sessions / punches
BAD_REQUEST = 3
TIMEOUT = 4
NOT_FOUND = 5  # unknown or expired token

Message = (
    Join
    | Joined
    | Connect
    | Invite
    | Accept
    | Paired
    | Go
    | PunchRequest
    | PunchPrepare
    | PunchInvite
    | PunchStart
    | Ping
    | Pong
    | Error
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    assert len(body) <= MAX_FRAME
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RelayProtocolError(f"malformed relay frame: {e}") from None


def frame_length(header: bytes) -> int:
    n: int = HEADER.unpack(header)[0]
    if n > MAX_FRAME:
        raise RelayProtocolError(f"relay frame too large ({n} bytes)")
    return n


class FrameDecoder:
    """Sans-IO: feed bytes, get messages. Raises RelayProtocolError on bad input."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER.size:
            n = frame_length(bytes(self._buf[: HEADER.size]))
            if len(self._buf) < HEADER.size + n:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            out.append(decode_body(body))
        return out


def device_bytes(raw: bytes) -> DeviceId:
    try:
        return DeviceId(raw)
    except InvalidDeviceId as e:
        raise RelayProtocolError(str(e)) from None


@dataclass(frozen=True)
class RelayUrl:
    """`relay://HOST:PORT[?id=DEVICE-ID]`: a relay (TCP) and its rendezvous (UDP, same port).

    With `id`, clients refuse a relay whose certificate has another device ID."""

    host: str
    port: int
    device_id: DeviceId | None = None

    @classmethod
    def parse(cls, url: str) -> RelayUrl:
        parts = urlsplit(url)
        if parts.scheme != "relay" or not parts.hostname:
            raise RelayProtocolError(f"bad relay address {url!r}: expected relay://HOST:PORT[?id=DEVICE-ID]")
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None:
            raise RelayProtocolError(f"bad relay address {url!r}: missing or invalid port")
        query = parse_qs(parts.query)
        device_id = None
        if "id" in query:
            try:
                device_id = DeviceId.parse(query["id"][0])
            except InvalidDeviceId as e:
                raise RelayProtocolError(f"bad relay address {url!r}: {e}") from None
        return cls(parts.hostname, port, device_id)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"relay://{host}:{self.port}"
        return f"{base}?id={self.device_id}" if self.device_id else base

"""Control datagrams on the shared UDP socket: rendezvous probes and binds, punch packets.

One UDP socket carries these and QUIC. A control datagram is `0x00` followed by a msgpack array
`[tag, field...]` (msgspec tagged structs); QUIC packets always have the fixed bit 0x40 set in
their first byte, so the first byte alone tells them apart (docs/nat.md has the layouts).
Pure: encode/decode only; anything malformed decodes to None and is dropped by the caller.
"""

from __future__ import annotations

import msgspec

CONTROL_MARKER = 0x00
QUIC_FIXED_BIT = 0x40
MAX_CONTROL_DATAGRAM = 512
TOKEN_LEN = 16
# Requests are padded to this size and the rendezvous answers only requests at least as large as
# its answer, so it cannot amplify traffic towards a spoofed source address.
MIN_REQUEST = 64


class Probe(msgspec.Struct, tag=1, array_like=True, frozen=True):
    """Anyone -> rendezvous: "what address do you see me at?" (STUN-like)."""

    pad: bytes = b""


class Bind(msgspec.Struct, tag=2, array_like=True, frozen=True):
    """Device -> rendezvous: the UDP address of the device that holds `cookie`.

    The cookie was handed out over that device's authenticated TLS connection to the relay, so
    only it can bind its address (a stranger cannot redirect punches)."""

    cookie: bytes
    pad: bytes = b""


class Bound(msgspec.Struct, tag=3, array_like=True, frozen=True):
    """Rendezvous -> device: the observed public address (answer to Probe and Bind)."""

    host: str
    port: int


class Punch(msgspec.Struct, tag=4, array_like=True, frozen=True):
    """Peer -> peer while punching. `heard` = I have received a punch from you already; a
    punch is complete when each side has heard the other say heard=True or sent it QUIC."""

    punch_id: bytes
    heard: bool


Control = Probe | Bind | Bound | Punch

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Control)


def encode(msg: Control) -> bytes:
    return b"\x00" + _encoder.encode(msg)


def padded(msg: Probe | Bind) -> bytes:
    """A request padded to MIN_REQUEST bytes (see MIN_REQUEST)."""
    short = len(encode(msg))
    if short >= MIN_REQUEST:
        return encode(msg)
    # the msgpack bin header of `pad` is 2 bytes whether it holds 0 or up to 255 bytes
    return encode(msgspec.structs.replace(msg, pad=bytes(MIN_REQUEST - short)))


def is_control(datagram: bytes) -> bool:
    return datagram[:1] == b"\x00"


def is_quic(datagram: bytes) -> bool:
    return bool(datagram) and bool(datagram[0] & QUIC_FIXED_BIT)


def decode(datagram: bytes) -> Control | None:
    """The control message in `datagram`, or None when it is not one (or is malformed)."""
    if not is_control(datagram) or len(datagram) > MAX_CONTROL_DATAGRAM:
        return None
    try:
        return _decoder.decode(datagram[1:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None

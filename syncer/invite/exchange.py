"""The invite exchange: a PAKE over an authenticated TLS stream (sans-IO; no sockets, no clock).

Runs on a TLS connection between the joiner (client) and the inviter (server) *before* they are
paired. Each side knows both device IDs from the TLS handshake (which proved that the peer holds
its certificate's key). Rules:

- The joiner speaks first: `PREAMBLE` (so the inviter's pairing gate can tell an invite attempt
  from an unpaired device's wire Hello), then frames `length:u16be | msgpack body`, at most
  MAX_FRAME bytes, one message type per state; anything else is a protocol error.
- Joiner -> `Join(nameplate, pake_b)`; inviter -> `Challenge(pake_a)` (or `Refused`);
  joiner -> `Confirm(mac_j, name, addresses)`; inviter -> `Welcome(mac_i, folder...)` or
  `Refused("wrong-code")`. Two round trips.
- SPAKE2 (inviter = side A, joiner = side B) with idA = inviter device ID, idB = joiner device ID
  *as each side saw them in TLS*. A man in the middle (or a relay terminating TLS) presents its
  own certificate to both, so the two sides use different ids, derive different keys and the
  key confirmation fails; without the password the middle cannot compute either key.
- Key confirmation: mac_j = HMAC(K, "joiner" | T), mac_i = HMAC(K, "inviter" | T | welcome
  fields), T = SHA-256 of version, nameplate, both ids and both PAKE messages. The joiner
  confirms first, so an inviter reveals nothing about the folder to a wrong guess; each session
  gives a guesser exactly one guess (the SPAKE2 property), which the inviter counts.
- After Welcome (or Refused) the exchange is over; the caller closes the connection. Pairing and
  every other effect belong to the drivers (invite/service.py, invite/join.py).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.spake2 import SPAKEError

from syncer.invite.code import InviteCode

PREAMBLE = b"SYNI\x01"  # magic + version; a wire Hello starts with a 4-byte frame length instead
VERSION = 1
FRAME_HEADER = struct.Struct(">H")
MAX_FRAME = 4096
MAX_NAME = 64
MAX_LABEL = 256
MAX_ADDRESSES = 8
MAX_ADDRESS = 200
MAX_REASON = 200
PAKE_LEN = 33  # ed25519 SPAKE2 message: side byte + 32-byte element
MAC_LEN = 32

# refusal codes (Refused.code): what went wrong, for the joiner's error message
UNKNOWN = "unknown"  # no invite with that number here
EXPIRED = "expired"
USED = "used"
REVOKED = "revoked"
DEAD = "dead"  # too many wrong attempts
WRONG_CODE = "wrong-code"
BUSY = "busy"
PROTOCOL = "protocol"


class Join(msgspec.Struct, tag="join", array_like=True):
    version: int
    nameplate: int
    pake: bytes


class Challenge(msgspec.Struct, tag="challenge", array_like=True):
    pake: bytes


class Confirm(msgspec.Struct, tag="confirm", array_like=True):
    mac: bytes
    name: str
    addresses: list[str]


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    mac: bytes
    folder_id: str
    label: str
    read_only: bool
    name: str


class Refused(msgspec.Struct, tag="refused", array_like=True):
    code: str
    reason: str


Message = Join | Challenge | Confirm | Welcome | Refused
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ExchangeError(Exception):
    """The peer broke the protocol; the reason is sent in Refused(protocol) where possible."""


def encode(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    if len(body) > MAX_FRAME:
        raise ValueError(f"{type(msg).__name__} of {len(body)} bytes exceeds the frame limit")
    return FRAME_HEADER.pack(len(body)) + body


def sniff(prefix: bytes) -> bool | None:
    """Whether a connection starting with `prefix` speaks the invite protocol (None: too few
    bytes to tell yet)."""
    n = min(len(prefix), len(PREAMBLE))
    if prefix[:n] != PREAMBLE[:n]:
        return False
    return True if n == len(PREAMBLE) else None


@dataclass
class _Frames:
    """Splits bytes into messages; holds at most one frame's worth."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out: list[Message] = []
        while len(self.buf) >= FRAME_HEADER.size:
            (n,) = FRAME_HEADER.unpack_from(self.buf)
            if n > MAX_FRAME:
                raise ExchangeError(f"frame of {n} bytes is over the limit")
            if len(self.buf) < FRAME_HEADER.size + n:
                break
            body = bytes(self.buf[FRAME_HEADER.size : FRAME_HEADER.size + n])
            del self.buf[: FRAME_HEADER.size + n]
            try:
                out.append(_decoder.decode(body))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise ExchangeError(f"malformed message: {e}") from None
        return out


def _transcript(nameplate: int, inviter: bytes, joiner: bytes, pake_a: bytes, pake_b: bytes) -> bytes:
    h = hashlib.sha256(b"syncer-invite-transcript")
    h.update(struct.pack(">HI", VERSION, nameplate))
    for part in (inviter, joiner, pake_a, pake_b):
        h.update(struct.pack(">H", len(part)) + part)
    return h.digest()


def _welcome_fields(w: Welcome) -> bytes:
    return _encoder.encode([w.folder_id, w.label, w.read_only, w.name])


def _mac(key: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, role + b"".join(parts), hashlib.sha256).digest()


def _clean(text: str, limit: int) -> str:
    """Bounded and without control characters (names end up in config and terminals)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _check_addresses(addresses: list[str]) -> list[str]:
    return [a for a in addresses[:MAX_ADDRESSES] if isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS and a.isprintable()]


# events --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JoinRequested:
    """Inviter: the joiner asks for invite `nameplate`; answer with accept() or refuse()."""

    nameplate: int


@dataclass(frozen=True)
class Confirmed:
    """Inviter: the joiner proved it knows the code; answer with welcome() or refuse()."""

    name: str
    addresses: list[str]


@dataclass(frozen=True)
class WrongCode:
    """Inviter: key confirmation failed (wrong code, or someone in the middle); Refused is
    queued. Count it against the invite."""


@dataclass(frozen=True)
class Welcomed:
    """Joiner: the inviter proved it knows the code and shares this folder with us."""

    folder_id: str
    label: str
    read_only: bool
    name: str


@dataclass(frozen=True)
class WasRefused:
    """Joiner: the inviter refused (code is one of the refusal codes above)."""

    code: str
    reason: str


@dataclass(frozen=True)
class Failed:
    """Either side: the exchange broke (protocol error, failed confirmation of the inviter)."""

    reason: str


Event = JoinRequested | Confirmed | WrongCode | Welcomed | WasRefused | Failed


class State(enum.Enum):
    PREAMBLE = "preamble"
    AWAIT_JOIN = "await-join"
    DECIDING = "deciding"  # inviter: waiting for the driver's accept/refuse, welcome/refuse
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_CONFIRM = "await-confirm"
    AWAIT_WELCOME = "await-welcome"
    DONE = "done"
    FAILED = "failed"


class _Side:
    def __init__(self) -> None:
        self.state = State.FAILED
        self._frames = _Frames()
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def finished(self) -> bool:
        return self.state in (State.DONE, State.FAILED)

    def _send(self, msg: Message) -> None:
        self._out += encode(msg)

    def _fail(self, reason: str, tell_peer: bool = True) -> list[Event]:
        if tell_peer and not self.finished:
            self._send(Refused(PROTOCOL, _clean(reason, MAX_REASON)))
        self.state = State.FAILED
        return [Failed(reason)]

    def receive(self, data: bytes) -> list[Event]:
        if self.finished:
            return []
        try:
            data = self._preamble(data)
            msgs = self._frames.feed(data)
        except ExchangeError as e:
            return self._fail(str(e))
        events: list[Event] = []
        for msg in msgs:
            if self.finished:
                break
            try:
                events += self._on(msg)
            except ExchangeError as e:
                events += self._fail(str(e))
        return events

    def _preamble(self, data: bytes) -> bytes:
        return data

    def _on(self, msg: Message) -> list[Event]:
        raise NotImplementedError


Entropy = Callable[[int], bytes]


class InviterExchange(_Side):
    """The inviter's half. `local` and `peer` are raw device IDs from the TLS handshake."""

    def __init__(self, local: bytes, peer: bytes, entropy: Entropy = secrets.token_bytes) -> None:
        super().__init__()
        self.local, self.peer = local, peer
        self.state = State.PREAMBLE
        self.nameplate = 0
        self._entropy = entropy
        self._pake_b = b""
        self._transcript = b""
        self._key = b""
        self._seen = b""

    def _preamble(self, data: bytes) -> bytes:
        if self.state is not State.PREAMBLE:
            return data
        need = len(PREAMBLE) - len(self._seen)  # the preamble may come in pieces
        self._seen += data[:need]
        ok = sniff(self._seen)
        if ok is False:
            self.state = State.FAILED  # not ours to answer: the caller treats it as a stranger
            raise ExchangeError("not the invite protocol")
        if ok is None:
            return b""
        self.state = State.AWAIT_JOIN
        return data[need:]

    def _on(self, msg: Message) -> list[Event]:
        if self.state is State.AWAIT_JOIN and isinstance(msg, Join):
            if msg.version != VERSION:
                self._send(Refused(PROTOCOL, f"invite protocol version {msg.version} is not supported here; update syncer"))
                self.state = State.FAILED
                return [Failed(f"version {msg.version}")]
            if len(msg.pake) != PAKE_LEN:
                raise ExchangeError("bad PAKE message")
            self.nameplate, self._pake_b = msg.nameplate, msg.pake
            self.state = State.DECIDING
            return [JoinRequested(msg.nameplate)]
        if self.state is State.AWAIT_CONFIRM and isinstance(msg, Confirm):
            if hmac.compare_digest(msg.mac, _mac(self._key, b"joiner", self._transcript)):
                self.state = State.DECIDING
                return [Confirmed(_clean(msg.name, MAX_NAME), _check_addresses(msg.addresses))]
            self.refuse(WRONG_CODE, "wrong code")
            return [WrongCode()]
        raise ExchangeError(f"unexpected {type(msg).__name__} in state {self.state.value}")

    def accept(self, code: InviteCode) -> None:
        """The invite `nameplate` is valid: run the PAKE with its code."""
        assert self.state is State.DECIDING and not self._key
        pake = SPAKE2_A(code.password, idA=self.local, idB=self.peer, entropy_f=self._entropy)
        pake_a = pake.start()
        try:
            self._key = pake.finish(self._pake_b)
        except (SPAKEError, ValueError) as e:
            self._fail(f"bad PAKE message: {e}")
            return
        self._transcript = _transcript(self.nameplate, self.local, self.peer, pake_a, self._pake_b)
        self._send(Challenge(pake_a))
        self.state = State.AWAIT_CONFIRM

    def welcome(self, folder_id: str, label: str, read_only: bool, name: str) -> None:
        assert self.state is State.DECIDING and self._key
        w = Welcome(b"", folder_id, label[:MAX_LABEL], read_only, name[:MAX_NAME])
        w.mac = _mac(self._key, b"inviter", self._transcript, _welcome_fields(w))
        self._send(w)
        self.state = State.DONE

    def refuse(self, code: str, reason: str) -> None:
        if not self.finished:
            self._send(Refused(code, reason[:MAX_REASON]))
            self.state = State.FAILED


class JoinerExchange(_Side):
    """The joiner's half. `local` and `peer` are raw device IDs from the TLS handshake."""

    def __init__(
        self, code: InviteCode, local: bytes, peer: bytes, name: str, addresses: list[str], entropy: Entropy = secrets.token_bytes
    ) -> None:
        super().__init__()
        self.code, self.local, self.peer = code, local, peer
        self.name, self.addresses = name[:MAX_NAME], _check_addresses(addresses)
        self._pake = SPAKE2_B(code.password, idA=peer, idB=local, entropy_f=entropy)
        self._pake_b = b""
        self._transcript = b""
        self._key = b""

    def start(self) -> bytes:
        """The first bytes to write."""
        self._pake_b = self._pake.start()
        self.state = State.AWAIT_CHALLENGE
        return PREAMBLE + encode(Join(VERSION, self.code.nameplate, self._pake_b))

    def _on(self, msg: Message) -> list[Event]:
        if isinstance(msg, Refused) and self.state in (State.AWAIT_CHALLENGE, State.AWAIT_WELCOME):
            self.state = State.FAILED
            return [WasRefused(_clean(msg.code, 20), _clean(msg.reason, MAX_REASON))]
        if self.state is State.AWAIT_CHALLENGE and isinstance(msg, Challenge):
            if len(msg.pake) != PAKE_LEN:
                raise ExchangeError("bad PAKE message")
            try:
                self._key = self._pake.finish(msg.pake)
            except (SPAKEError, ValueError) as e:
                raise ExchangeError(f"bad PAKE message: {e}") from None
            self._transcript = _transcript(self.code.nameplate, self.peer, self.local, msg.pake, self._pake_b)
            self._send(Confirm(_mac(self._key, b"joiner", self._transcript), self.name, self.addresses))
            self.state = State.AWAIT_WELCOME
            return []
        if self.state is State.AWAIT_WELCOME and isinstance(msg, Welcome):
            expected = _mac(self._key, b"inviter", self._transcript, _welcome_fields(msg))
            if not hmac.compare_digest(msg.mac, expected):
                self.state = State.FAILED
                return [Failed("the other device could not prove it knows the code (someone in the middle?)")]
            self.state = State.DONE
            return [Welcomed(_clean(msg.folder_id, 64), _clean(msg.label, MAX_LABEL), bool(msg.read_only), _clean(msg.name, MAX_NAME))]
        raise ExchangeError(f"unexpected {type(msg).__name__} in state {self.state.value}")


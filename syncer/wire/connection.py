"""Sans-IO connection state machine of the syncer protocol.

Rules:
- Each side's first message must be Hello; anything else first is a protocol error.
- After a Close is sent or received, nothing more is accepted or sent.
- Request ids are chosen by the requester and must be unique among its outstanding requests; a
  duplicate id, or more than MAX_INCOMING_REQUESTS outstanding, is a protocol error.
- A Piece/PieceError for an id we never requested (or already cancelled/answered) is dropped
  silently: after a Cancel the answer may already be on the wire.
- A protocol error (unknown type, malformed or oversized frame, rule broken) yields one
  ProtocolError event and makes the connection send Close(reason) and stop; it never raises.
- Keepalive: a Ping goes out after PING_INTERVAL without sending anything; a peer that sent
  nothing for DEAD_TIMEOUT is declared dead. Time is passed in (`now`), never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from syncer.wire import frames
from syncer.wire.messages import Cancel, Close, Hello, Message, Piece, PieceError, Ping, Request

PING_INTERVAL = 30.0
DEAD_TIMEOUT = 90.0
MAX_INCOMING_REQUESTS = 4096


class State(Enum):
    AWAIT_HELLO = "await-hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class MessageReceived:
    message: Message


@dataclass(frozen=True)
class ProtocolError:
    reason: str


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer sent Close, or was declared dead."""

    reason: str


Event = MessageReceived | ProtocolError | ConnectionClosed


@dataclass
class Connection:
    now: float = 0.0
    state: State = State.AWAIT_HELLO
    hello_sent: bool = False
    peer_hello: Hello | None = None
    close_reason: str | None = None
    last_received: float = field(init=False)
    last_sent: float = field(init=False)
    outgoing: set[int] = field(default_factory=set)  # ids we requested, awaiting an answer
    incoming: set[int] = field(default_factory=set)  # ids the peer requested from us
    bytes_in: int = 0
    bytes_out: int = 0
    _decoder: frames.FrameDecoder = field(default_factory=frames.FrameDecoder)
    _pending_out: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last_received = self.last_sent = self.now

    # sending ---------------------------------------------------------------
    def send(self, msg: Message, now: float | None = None) -> bytes:
        """Bytes to write for `msg`. Raises RuntimeError on caller misuse (e.g. after close)."""
        if self.state is State.CLOSED:
            raise RuntimeError("connection is closed")
        if not self.hello_sent and not isinstance(msg, (Hello, Close)):
            raise RuntimeError("Hello must be sent first")
        if isinstance(msg, Hello):
            if self.hello_sent:
                raise RuntimeError("Hello already sent")
            self.hello_sent = True
        elif isinstance(msg, Request):
            if msg.id in self.outgoing:
                raise RuntimeError(f"request id {msg.id} already outstanding")
            self.outgoing.add(msg.id)
        elif isinstance(msg, Cancel):
            self.outgoing.discard(msg.id)
        elif isinstance(msg, (Piece, PieceError)):
            self.incoming.discard(msg.id)
        elif isinstance(msg, Close):
            self._close(msg.reason)
        data = frames.encode(msg)
        self._sent(len(data), now)
        return data

    def send_piece(self, request_id: int, data: bytes | memoryview, now: float | None = None) -> list[bytes | memoryview]:
        """Like send(Piece(...)) but returns header and payload separately (no copy)."""
        if self.state is not State.OPEN:
            raise RuntimeError("connection is not open")
        self.incoming.discard(request_id)
        parts = frames.encode_piece(request_id, data)
        self._sent(len(parts[0]) + len(data), now)
        return parts

    def close(self, reason: str, now: float | None = None) -> bytes:
        """Bytes of a Close frame (empty if already closed)."""
        if self.state is State.CLOSED:
            return b""
        return self.send(Close(reason), now)

    def _sent(self, n: int, now: float | None) -> None:
        self.bytes_out += n
        if now is not None:
            self.last_sent = now

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        self.outgoing.clear()
        self.incoming.clear()

    # receiving -------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> list[Event]:
        if self.state is State.CLOSED or not data:
            return []
        self.bytes_in += len(data)
        if now is not None:
            self.last_received = now
        try:
            messages = self._decoder.feed(data)
        except frames.FrameError as e:
            return self._protocol_error(str(e), [])
        events: list[Event] = []
        for msg in messages:
            err = self._check(msg)
            if err:
                return self._protocol_error(err, events)
            if isinstance(msg, Close):
                self._close(msg.reason)
                events.append(ConnectionClosed(msg.reason))
                return events
            if isinstance(msg, (Piece, PieceError)):
                if msg.id not in self.outgoing:
                    continue
                self.outgoing.discard(msg.id)
            if isinstance(msg, Ping):
                continue
            events.append(MessageReceived(msg))
        return events

    def _check(self, msg: Message) -> str | None:
        if self.state is State.AWAIT_HELLO:
            if not isinstance(msg, Hello):
                return f"expected Hello first, got {type(msg).__name__}"
            self.peer_hello = msg
            self.state = State.OPEN
            return None
        if isinstance(msg, Hello):
            return "duplicate Hello"
        if isinstance(msg, Request):
            if msg.id in self.incoming:
                return f"duplicate request id {msg.id}"
            if len(self.incoming) >= MAX_INCOMING_REQUESTS:
                return f"more than {MAX_INCOMING_REQUESTS} outstanding requests"
            self.incoming.add(msg.id)
        elif isinstance(msg, Cancel):
            self.incoming.discard(msg.id)
        return None

    def _protocol_error(self, reason: str, events: list[Event]) -> list[Event]:
        self._pending_out.append(self.close(f"protocol error: {reason}"))
        events.append(ProtocolError(reason))
        return events

    def data_to_send(self) -> bytes:
        """Bytes the connection produced on its own (the Close after a protocol error)."""
        out = b"".join(self._pending_out)
        self._pending_out.clear()
        return out

    # timers ------------------------------------------------------------------
    def get_timer(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        return min(self.last_sent + PING_INTERVAL, self.last_received + DEAD_TIMEOUT)

    def handle_timer(self, now: float) -> tuple[bytes, list[Event]]:
        """Bytes to send (a Ping) and events (ConnectionClosed when the peer is dead)."""
        if self.state is State.CLOSED:
            return b"", []
        if now - self.last_received >= DEAD_TIMEOUT:
            reason = f"no data from peer for {DEAD_TIMEOUT:.0f}s"
            self._close(reason)
            return b"", [ConnectionClosed(reason)]
        if self.hello_sent and now - self.last_sent >= PING_INTERVAL:
            return self.send(Ping(), now), []
        return b"", []

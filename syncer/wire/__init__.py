"""The syncer wire protocol, sans-IO: frames, messages and the connection state machine."""

from syncer.wire.connection import (
    Connection,
    ConnectionClosed,
    Event,
    MessageReceived,
    ProtocolError,
    State,
)
from syncer.wire.frames import FrameDecoder, FrameError, encode, encode_piece
from syncer.wire.messages import *  # noqa: F403
from syncer.wire.messages import TYPES, Message

__all__ = [
    "Connection",
    "ConnectionClosed",
    "Event",
    "FrameDecoder",
    "FrameError",
    "Message",
    "MessageReceived",
    "ProtocolError",
    "State",
    "TYPES",
    "encode",
    "encode_piece",
] + [cls.__name__ for cls in TYPES.values()]

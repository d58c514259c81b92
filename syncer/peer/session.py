"""A wire-protocol session with one paired device over an authenticated Stream.

Owns the I/O around the sans-IO `wire.Connection`: a read loop feeding it bytes, a timer loop
for keepalives and dead-peer detection, and ordered writes. Received messages go to a
`SessionHandler` (the sync model); the session itself knows nothing about folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from syncer import __version__
from syncer.deviceid import DeviceId
from syncer.net.transport import Stream
from syncer.peer.connections import ConnInfo
from syncer.transfer.rates import RateMeter
from syncer.wire import (
    Connection,
    ConnectionClosed,
    Hello,
    Message,
    MessageReceived,
    ProtocolError,
)

log = logging.getLogger(__name__)

FEATURES = ["bitfield", "choke"]
TIMER_GRANULARITY = 1.0
# frames up to this size (pieces of blocks up to 2 MiB: files up to 4 GiB) arrive whole from
# transports that can align reads, and are decoded in place without being joined
ALIGNED_FRAME_LIMIT = 4 + 1 + 8 + (2 << 20)


class SessionClosed(Exception):
    pass


class SessionHandler(Protocol):
    async def on_message(self, session: PeerSession, msg: Message) -> None: ...


class PeerSession:
    def __init__(self, stream: Stream, local: DeviceId, local_name: str, outbound: bool) -> None:
        self.stream = stream
        self.device = stream.peer
        self.local = local
        self.outbound = outbound
        self.conn = Connection(now=time.monotonic())
        self._hello = Hello(local_name, "syncer", __version__, FEATURES)
        self.info: ConnInfo | None = None
        self.handler: SessionHandler | None = None
        self.remote_name = ""
        self.close_reason = ""
        self.down = RateMeter()
        self.up = RateMeter()
        self._closed = asyncio.Event()
        self._early: list[Message] = []  # messages that arrived together with the peer's Hello
        align = getattr(stream, "align_reads", None)
        if align is not None:
            align(ALIGNED_FRAME_LIMIT)

    # handshake ---------------------------------------------------------------
    async def handshake(self) -> Hello:
        await self._write(self.conn.send(self._hello, time.monotonic()))
        while self.conn.peer_hello is None:
            data = await self.stream.read()
            if not data:
                raise SessionClosed("connection closed during hello")
            for ev in self._feed(data):
                if isinstance(ev, (ProtocolError, ConnectionClosed)):
                    raise SessionClosed(ev.reason)
                if isinstance(ev, MessageReceived) and not isinstance(ev.message, Hello):
                    self._early.append(ev.message)
        self.remote_name = self.conn.peer_hello.device_name
        return self.conn.peer_hello

    # main loop ---------------------------------------------------------------
    async def run(self) -> None:
        timer = asyncio.ensure_future(self._timer_loop())
        try:
            for msg in self._early:
                await self._dispatch(msg)
            self._early.clear()
            while not self._closed.is_set():
                data = await self.stream.read()
                if not data:
                    self._mark_closed(self.close_reason or "connection closed by peer")
                    break
                for ev in self._feed(data):
                    if isinstance(ev, MessageReceived):
                        await self._dispatch(ev.message)
                    elif isinstance(ev, ProtocolError):
                        log.warning("protocol error from %s: %s", self.device.short, ev.reason)
                        await self._flush_own()
                        self._mark_closed(f"protocol error: {ev.reason}")
                        break
                    elif isinstance(ev, ConnectionClosed):
                        self._mark_closed(f"peer closed: {ev.reason}")
                        break
        except (ConnectionError, OSError) as e:
            self._mark_closed(f"connection lost: {e}")
        finally:
            timer.cancel()
            self.stream.abort()
            self._closed.set()

    async def _dispatch(self, msg: Message) -> None:
        if self.handler is not None:
            await self.handler.on_message(self, msg)

    def _feed(self, data: bytes) -> list:
        now = time.monotonic()
        self.down.add(len(data), now)
        return self.conn.receive_data(data, now)

    async def _timer_loop(self) -> None:
        while not self._closed.is_set():
            deadline = self.conn.get_timer()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, min(deadline - time.monotonic(), TIMER_GRANULARITY)))
            out, events = self.conn.handle_timer(time.monotonic())
            if out:
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    await self._write(out)
            for ev in events:
                if isinstance(ev, ConnectionClosed):
                    log.info("peer %s is dead: %s", self.device.short, ev.reason)
                    self._mark_closed(ev.reason)
                    self.stream.abort()

    # sending -----------------------------------------------------------------
    async def send(self, msg: Message) -> None:
        await self.send_many([msg])

    async def send_many(self, msgs: list[Message]) -> None:
        """Send `msgs` in order as one write: a refill of dozens of requests is one TLS record
        and one segment, not one per request."""
        if self._closed.is_set():
            raise ConnectionResetError("session closed")
        now = time.monotonic()
        await self._write(b"".join([self.conn.send(m, now) for m in msgs]))

    async def send_piece(self, request_id: int, data: bytes | memoryview) -> None:
        if self._closed.is_set():
            raise ConnectionResetError("session closed")
        parts = self.conn.send_piece(request_id, data, time.monotonic())
        self.up.add(len(parts[0]) + len(data), time.monotonic())
        await self.stream.writelines(parts)  # type: ignore[arg-type]

    async def _write(self, data: bytes) -> None:
        if data:
            self.up.add(len(data), time.monotonic())
            await self.stream.write(data)

    async def _flush_own(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._write(self.conn.data_to_send())

    def _mark_closed(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self, reason: str) -> None:
        """Send Close(reason) and drop the connection."""
        if self._closed.is_set():
            return
        self._mark_closed(reason)
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await asyncio.wait_for(self._write(self.conn.close(reason, time.monotonic())), 2)
        await self.stream.close()

    def down_rate(self) -> float:
        return self.down.rate(time.monotonic())

    def up_rate(self) -> float:
        return self.up.rate(time.monotonic())

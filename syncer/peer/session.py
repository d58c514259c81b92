"""A wire-protocol session with one paired device over an authenticated Stream.

Owns the I/O around the sans-IO `wire.Connection`:
- a read loop feeding it bytes and handing each message to the `SessionHandler` synchronously
  (the handler never awaits: reading can never wait for serving, writing or the disk, so two
  devices uploading to each other at once cannot deadlock);
- one writer task draining an outgoing queue in order: everything sent is encoded at once (so
  the wire state machine sees sends in order) and queued; the writer hands the transport all
  that is queued in one call;
- a timer loop for keepalives and dead-peer detection, from the connection's own deadline.

The queue is bounded by its producers: the block server and the index sender wait for
`wait_writable()`, requests are bounded by the pipeline, and advisory messages (Have) are
dropped by `send_droppable` when the queue is long. A peer that stops reading while we owe it
more than HARD_QUEUE_BYTES is disconnected rather than buffered without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from syncer import __version__
from syncer.deviceid import DeviceId
from syncer.net.transport import Stream
from syncer.peer.connections import ConnInfo
from syncer.runtime.clock import Clock, SystemClock
from syncer.runtime.timeouts import wait_for
from syncer.transfer.ratelimit import TokenBucket
from syncer.transfer.rates import RateMeter
from syncer.wire import (
    FEATURE_HAVE_BATCH,
    Connection,
    ConnectionClosed,
    Hello,
    Message,
    MessageReceived,
    ProtocolError,
)

log = logging.getLogger(__name__)

FEATURES = ["bitfield", "choke", "interest", "peer-assist", FEATURE_HAVE_BATCH]  # peer-assist: nat/assist.py
TIMER_GRANULARITY = 1.0
# frames up to this size (pieces of blocks up to 2 MiB: files up to 4 GiB) arrive whole from
# transports that can align reads, and are decoded in place without being joined
ALIGNED_FRAME_LIMIT = 4 + 1 + 8 + (2 << 20)
LOW_QUEUE_BYTES = 4 << 20  # producers that wait for room resume below this
SOFT_QUEUE_BYTES = 8 << 20  # advisory messages are dropped above this
HARD_QUEUE_BYTES = 96 << 20  # a peer owing us this much unread is cut off
WRITE_BATCH_BYTES = 8 << 20  # most handed to the transport in one call


class SessionClosed(Exception):
    pass


class SessionHandler(Protocol):
    def on_message(self, session: PeerSession, msg: Message) -> asyncio.Event | None:
        """Handle `msg` without waiting; an event returned means: read no more from this peer
        until it is set (the handler has too much of its input queued)."""
        ...


class PeerSession:
    def __init__(
        self,
        stream: Stream,
        local: DeviceId,
        local_name: str,
        outbound: bool,
        clock: Clock | None = None,
        recv_limit: TokenBucket | None = None,
    ) -> None:
        self.stream = stream
        self.device = stream.peer
        self.local = local
        self.outbound = outbound
        self.clock = clock or SystemClock()
        self.recv_limit = recv_limit
        self.conn = Connection(now=self.clock.monotonic())
        self._hello = Hello(local_name, "syncer", __version__, FEATURES)
        self.info: ConnInfo | None = None
        self.handler: SessionHandler | None = None
        self.remote_name = ""
        self.close_reason = ""
        self.down = RateMeter()
        self.up = RateMeter()
        self.dropped = 0  # advisory messages not sent because the queue was long
        self._closed = asyncio.Event()
        self._early: list[Message] = []  # messages that arrived together with the peer's Hello
        self._out: deque[list[bytes | memoryview]] = deque()
        self._queued = 0
        self._out_wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._writer: asyncio.Task[None] | None = None
        align = getattr(stream, "align_reads", None)
        if align is not None:
            align(ALIGNED_FRAME_LIMIT)

    # handshake ---------------------------------------------------------------
    async def handshake(self) -> Hello:
        await self.stream.write(self.conn.send(self._hello, self.clock.monotonic()))
        while self.conn.peer_hello is None:
            data = await self.stream.read()
            if not data:
                raise SessionClosed("connection closed during hello")
            for ev in self._feed(data):
                if isinstance(ev, (ProtocolError, ConnectionClosed)):
                    raise SessionClosed(ev.reason)
                if isinstance(ev, MessageReceived) and not isinstance(ev.message, Hello):
                    self._early.append(ev.message)
        self.remote_name = self.conn.peer_hello.device_name[:64]
        return self.conn.peer_hello

    def has_feature(self, name: str) -> bool:
        hello = self.conn.peer_hello
        return hello is not None and name in hello.features

    # main loop ---------------------------------------------------------------
    async def run(self) -> None:
        """Read until the connection ends; the writer runs alongside. Returns when closed."""
        self._writer = asyncio.ensure_future(self._write_loop())
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
                        self._queue([self.conn.data_to_send()])
                        await self._flush(2.0)
                        self._mark_closed(f"protocol error: {ev.reason}")
                        break
                    elif isinstance(ev, ConnectionClosed):
                        self._mark_closed(f"peer closed: {ev.reason}")
                        break
                if self.recv_limit is not None:
                    wait = self.recv_limit.take(len(data), self.clock.monotonic())
                    if wait > 0:
                        await self.clock.sleep(wait)  # download rate limit: read this peer slower
        except (ConnectionError, OSError) as e:
            self._mark_closed(f"connection lost: {e}")
        finally:
            timer.cancel()
            self._writer.cancel()
            self.stream.abort()
            self._closed.set()
            self._room.set()  # wake producers waiting for room: they see the session closed

    async def _dispatch(self, msg: Message) -> None:
        if self.handler is None or self._closed.is_set():
            return
        wait = self.handler.on_message(self, msg)
        if wait is not None and not wait.is_set():
            waiters = {asyncio.ensure_future(wait.wait()), asyncio.ensure_future(self._closed.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    def _feed(self, data: bytes) -> list:
        now = self.clock.monotonic()
        self.down.add(len(data), now)
        return self.conn.receive_data(data, now)

    async def _timer_loop(self) -> None:
        while not self._closed.is_set():
            deadline = self.conn.get_timer()
            if deadline is None:
                return
            await self.clock.sleep(max(0.0, min(deadline - self.clock.monotonic(), TIMER_GRANULARITY)))
            out, events = self.conn.handle_timer(self.clock.monotonic())
            if out:
                self._queue([out])
            for ev in events:
                if isinstance(ev, ConnectionClosed):
                    log.info("peer %s is dead: %s", self.device.short, ev.reason)
                    self._mark_closed(ev.reason)
                    self.stream.abort()

    # sending -------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        """Queue `msg`; it goes out in order after everything queued before it."""
        self.send_many([msg])

    def send_many(self, msgs: list[Message]) -> None:
        if self._closed.is_set():
            raise ConnectionResetError("session closed")
        now = self.clock.monotonic()
        self._queue([b"".join([self.conn.send(m, now) for m in msgs])])

    def send_droppable(self, msg: Message) -> bool:
        """Queue an advisory message (Have) unless the peer is already behind on reading."""
        if self._closed.is_set() or self._queued > SOFT_QUEUE_BYTES:
            self.dropped += 1
            return False
        self.send(msg)
        return True

    def send_piece(self, request_id: int, data: bytes | memoryview) -> None:
        if self._closed.is_set():
            raise ConnectionResetError("session closed")
        self._queue(self.conn.send_piece(request_id, data, self.clock.monotonic()))

    def writable(self) -> bool:
        return self._queued < LOW_QUEUE_BYTES

    async def wait_writable(self, empty: bool = False) -> None:
        """Until the queue is short enough for more bulk data (`empty`: until all of it went to
        the transport); raises once the session closed."""
        while not self.writable() or (empty and self._queued):
            if self._closed.is_set():
                raise ConnectionResetError("session closed")
            self._room.clear()
            await self._room.wait()
        if self._closed.is_set():
            raise ConnectionResetError("session closed")

    def _queue(self, parts: list[bytes | memoryview]) -> None:
        n = sum(len(p) for p in parts)
        if not n:
            return
        self._out.append(parts)
        self._queued += n
        self._empty.clear()
        self._out_wake.set()
        if self._queued > HARD_QUEUE_BYTES:
            log.warning("peer %s reads nothing of %d MiB owed; disconnecting", self.device.short, self._queued >> 20)
            self._mark_closed("peer stopped reading")
            self.stream.abort()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._out:
                    self._out_wake.clear()
                    await self._out_wake.wait()
                chunks: list[bytes | memoryview] = []
                n = 0
                while self._out and n < WRITE_BATCH_BYTES:
                    parts = self._out.popleft()
                    chunks.extend(parts)
                    n += sum(len(p) for p in parts)
                await self.stream.writelines(chunks)
                chunks.clear()  # a written block is freed before the producers make the next one
                self._queued -= n
                self.up.add(n, self.clock.monotonic())
                if self._queued < LOW_QUEUE_BYTES:
                    self._room.set()
                if not self._queued:
                    self._empty.set()
        except (ConnectionError, OSError, RuntimeError) as e:
            self._mark_closed(self.close_reason or f"connection lost: {e}")
            self.stream.abort()
            self._empty.set()

    async def _flush(self, timeout: float) -> None:
        """Wait (bounded) until the writer has written everything queued."""
        with contextlib.suppress(TimeoutError):
            await wait_for(self._empty.wait(), timeout)

    def _mark_closed(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self._closed.set()
        self._room.set()  # producers waiting for room see the session closed

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self, reason: str) -> None:
        """Send Close(reason) after what is queued, and drop the connection."""
        if self._closed.is_set():
            return
        with contextlib.suppress(RuntimeError):
            self._queue([self.conn.close(reason, self.clock.monotonic())])
        if self._writer is not None and not self._writer.done():
            await self._flush(2.0)
        else:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
                chunks = [c for parts in self._out for c in parts]
                self._out.clear()
                await wait_for(self.stream.writelines(chunks), 2)
        self._mark_closed(reason)
        await self.stream.close()

    def down_rate(self) -> float:
        return self.down.rate(self.clock.monotonic())

    def up_rate(self) -> float:
        return self.up.rate(self.clock.monotonic())

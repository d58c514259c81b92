"""TCP + TLS 1.3 transport on asyncio.

Inbound connections are pre-auth until the application calls `Stream.peer_accepted()` (the
daemon's pairing gate): until then they are counted by a `PreAuthGate` (admission.py: per-source
and total caps, idle ones evicted first) and cost little. The listener runs its own accept loop:
an accepted socket first waits, holding nothing but its descriptor, for the client's first bytes;
only then does the TLS layer (asyncio's SSL protocol, 256 KiB of buffer) exist, and our receive
buffer stays at PREAUTH_READ_BUFFER until the peer is accepted. The whole way from accept to a
finished handshake is bounded by HANDSHAKE_TIMEOUT. Running out of descriptors (EMFILE) pauses
accepting with a backoff and is logged once per episode, never ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from syncer.identity import Identity
from syncer.net import tls
from syncer.net.admission import GateStats, PreAuthGate, Ticket
from syncer.net.transport import READ_SIZE, Address, Listener, Stream, StreamHandler, TransportError
from syncer.net.udp import plain_host
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # accept -> TLS handshake done
STREAM_LIMIT = 4 << 20
WRITE_HIGH_WATER = 4 << 20
WRITE_SLICE = 1 << 20  # larger payloads are handed to TLS in slices of this size
READ_BUFFER = 256 << 10  # initial receive buffer per connection (see _TlsProtocol.get_buffer)
READ_HIGH_WATER = 4 << 20  # unread bytes at which reading from the socket pauses
MIN_READ_ROOM = 256 << 10
# before the peer is accepted: a small buffer, and reading pauses early
PREAUTH_READ_BUFFER = 8 << 10
PREAUTH_READ_ROOM = 4 << 10
PREAUTH_HIGH_WATER = 64 << 10
LISTEN_BACKLOG = 256
ACCEPT_BACKOFF = 0.05  # first pause after running out of descriptors; doubles up to the max
ACCEPT_BACKOFF_MAX = 1.0
LIMIT_LOG_INTERVAL = 60.0
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_U32 = struct.Struct(">I")


class ReaderWriterStream(Stream):
    """A stream over asyncio's StreamReader/StreamWriter (used where TLS is layered over
    another connection, as inside a relay pipe)."""

    transport = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        sslobj = writer.get_extra_info("ssl_object")
        self.peer = tls.peer_device_id(sslobj)
        host, port = writer.get_extra_info("peername")[:2]
        self.remote_address = str(Address("tcp", host, port))
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._closed = False

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, ssl.SSLError, OSError):
            return b""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._writer.is_closing():
            raise ConnectionResetError("stream closed")
        self._writer.write(data)
        await self._writer.drain()

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        if self._closed or self._writer.is_closing():
            raise ConnectionResetError("stream closed")
        # one buffer, so a small frame header does not become a TLS record of its own
        self._writer.write(b"".join(chunks))
        await self._writer.drain()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
            await wait_for(self._writer.wait_closed(), 5)

    def abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()


class _TlsProtocol(asyncio.BufferedProtocol):
    """Receives straight into one reusable buffer: asyncio's SSL layer decrypts into
    `get_buffer()`, and `read()` copies out once. (StreamReader would copy each byte three
    times on the event loop thread: joining decrypted chunks, feed_data, read.)"""

    def __init__(self, preauth: bool = False) -> None:
        self._buf = bytearray(PREAUTH_READ_BUFFER if preauth else READ_BUFFER)
        self._view = memoryview(self._buf)
        self._room = PREAUTH_READ_ROOM if preauth else MIN_READ_ROOM
        self._high_water = PREAUTH_HIGH_WATER if preauth else READ_HIGH_WATER
        self._bulk = self._high_water + 2 * self._room  # the one size a buffer grows to
        self.moved = 0  # unread bytes moved to the front to make room (a statistic)
        self._start = 0  # unread data is _buf[_start:_end]
        self._end = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self.align_limit = 0  # see TcpStream.align_reads
        self._record_left = 0  # bytes of a big record still to hand over (aligned reads)
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[Any, ...] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream socket's transport (TLS or not); uvloop's are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        # now, while it is open: a peer that refuses us right after the handshake may have closed
        # it (and the transport forgotten its address) before the stream is made
        self.peername = transport.get_extra_info("peername")

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._start == self._end:
            self._start = self._end = 0
        if len(self._buf) - self._end < self._room:
            unread = self._end - self._start
            if unread + self._room > len(self._buf) or (unread > len(self._buf) // 8 and len(self._buf) < self._bulk):
                # making room would move much unread data: grow instead, up to the bulk size
                # (bounded: reading pauses at _high_water unread bytes); straight to it when the
                # buffer is half full (a connection carrying bulk data: doubling cost a 1 -> 7
                # receiver 5 fresh buffers, the last of 8 MiB, per connection); an idle
                # connection keeps its initial buffer
                size = self._bulk if unread >= len(self._buf) // 2 else min(self._bulk, 2 * len(self._buf))
                buf = bytearray(max(size, unread + self._room))
                buf[:unread] = self._view[self._start : self._end]
                self._buf, self._view = buf, memoryview(buf)
            else:
                self.moved += unread
                self._buf[:unread] = self._view[self._start : self._end]
            self._start, self._end = 0, unread
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        unread = self._end - self._start
        if not self._reading_paused and self.transport and (unread >= self._high_water or self._tail_full(unread)):
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _tail_full(self, unread: int) -> bool:
        """The buffer (at its bulk size) has no room left at the end, and making room would move
        more than an eighth of it: the reader is behind, so wait until it has taken most (the
        socket holds the rest). Before, each move was of ~4 MiB: a 1 -> 1 receiver moved 213-225
        MiB for every 256 MiB it received."""
        return len(self._buf) >= self._bulk and len(self._buf) - self._end < self._room and unread > len(self._buf) // 8

    def eof_received(self) -> None:
        self._eof = True
        self._wake_reader()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake_reader()
        self._writing_paused = False
        self._wake_writer()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        w, self._read_waiter = self._read_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        w, self._drain_waiter = self._drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # used by TcpStream ------------------------------------------------------------------
    async def read(self, max_bytes: int) -> bytes:
        while True:
            n, left = self._readable(max_bytes)
            if n or self._eof:
                break
            if self._reading_paused and self.transport:
                # all unread data is one record still arriving: it must be let in
                self._reading_paused = False
                self.transport.resume_reading()
            self._read_waiter = asyncio.get_running_loop().create_future()
            await self._read_waiter
        if not n:
            return b""
        data = self._view[self._start : self._start + n].tobytes()
        self._start += n
        self._record_left = left
        self._maybe_resume()
        return data

    def full_size(self) -> None:
        """The peer was accepted: buffers may grow as for any connection."""
        self._room, self._high_water = MIN_READ_ROOM, READ_HIGH_WATER
        self._bulk = self._high_water + 2 * self._room
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        unread = self._end - self._start
        if self._reading_paused and unread < min(self._high_water // 4, len(self._buf) // 8) and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def _readable(self, max_bytes: int) -> tuple[int, int]:
        """How many buffered bytes a read returns now (0: wait for more), and how many bytes of
        a record too big to hold back remain unread after them."""
        avail = self._end - self._start
        # a record held back must fit below the point where reading pauses
        align_limit = min(self.align_limit, self._high_water // 2)
        if not avail or not align_limit:
            return min(max_bytes, avail), 0
        if self._record_left:
            # inside a big record handed over in parts: its bytes are data, not lengths (a
            # block of zeros read as lengths would be a record every 4 bytes); up to its end
            n = min(max_bytes, avail, self._record_left)
            return n, self._record_left - n
        # end at a record boundary: whole records only, at least one even beyond max_bytes
        pos, end = self._start, self._end
        while end - pos >= 4:
            size = 4 + _U32.unpack_from(self._buf, pos)[0]
            if size > align_limit:
                if pos > self._start:
                    return pos - self._start, 0
                # too big to hold back for: hand it over as it comes, never past its end
                n = min(max_bytes, avail, size)
                return n, size - n
            if pos + size > end or (pos + size - self._start > max_bytes and pos > self._start):
                break
            pos += size
        if pos > self._start:
            return pos - self._start, 0
        return (avail, 0) if self._eof else (0, 0)

    async def drain(self) -> None:
        while self._writing_paused and not self.lost.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self.lost.done():
            raise ConnectionResetError("connection lost")


class TcpStream(Stream):
    transport = "tcp"

    def __init__(self, proto: _TlsProtocol, on_accepted: Callable[[], None] | None = None) -> None:
        assert proto.transport is not None
        self._proto = proto
        self._transport = proto.transport
        self.peer = tls.peer_device_id(self._transport.get_extra_info("ssl_object"))
        if proto.peername is None:
            raise ConnectionResetError("connection closed by the peer")
        host, port = proto.peername[:2]
        self.remote_address = str(Address("tcp", plain_host(host), port))
        self._closed = False
        self._on_accepted = on_accepted

    def peer_accepted(self) -> None:
        on_accepted, self._on_accepted = self._on_accepted, None
        if on_accepted is not None:
            on_accepted()
            self._proto.full_size()

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        return await self._proto.read(max_bytes)

    def align_reads(self, limit: int) -> None:
        """From now on the data is records `length:u32be | length bytes`: reads end at record
        boundaries (for records up to `limit` bytes), so the reader can parse every record in
        place instead of joining pieces of it. Harmless on other data: a record that is too big
        or never completes is handed over as it comes."""
        self._proto.align_limit = limit

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.writelines([data])

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        # not joined: a small header costs a TLS record of its own (~30 bytes), joining would
        # cost a copy of every payload byte on the event loop; the SSL transport encrypts
        # each batch below and hands the socket all of it at once
        batch: list[bytes | bytearray | memoryview] = []
        for c in chunks:
            if len(c) <= WRITE_SLICE:
                if c:
                    batch.append(c)
                continue
            # a big block goes in slices, waiting for room in between: handed over whole, the
            # SSL layer would hold it twice more (encrypted, then in the socket's buffer)
            view = memoryview(c)
            for i in range(0, len(view), WRITE_SLICE):
                batch.append(view[i : i + WRITE_SLICE])
                await self._write(batch)
                batch = []
        await self._write(batch)

    async def _write(self, batch: list[bytes | bytearray | memoryview]) -> None:
        if self._closed or self._transport.is_closing():
            raise ConnectionResetError("stream closed")
        if batch:
            self._transport.writelines(batch)
        await self._proto.drain()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._transport.close()  # TLS close_notify, then FIN
            await wait_for(asyncio.shield(self._proto.lost), 5)

    def abort(self) -> None:
        self._closed = True
        self._transport.abort()


class TcpListener(Listener):
    """A listening socket with its own accept loop and pre-auth admission (module docstring)."""

    def __init__(self, sock: socket.socket, url: str, ctx: ssl.SSLContext, handler: StreamHandler, gate: PreAuthGate) -> None:
        self._sock = sock
        self.url = url
        self._ctx = ctx
        self._handler = handler
        self.gate = gate
        self._loop = asyncio.get_running_loop()
        self._preauth: set[asyncio.Task[None]] = set()  # waiting for bytes or handshaking
        self._handlers: set[asyncio.Task[None]] = set()
        self._starved = 0  # accept attempts failed for lack of descriptors in this episode
        self.accept_errors = 0
        self._limit_logged = -LIMIT_LOG_INTERVAL
        self._accepting = self._loop.create_task(self._accept_loop())

    def statistics(self) -> GateStats:
        return self.gate.statistics()

    async def close(self) -> None:
        self._accepting.cancel()
        for t in list(self._preauth):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._sock.close()
        if self._preauth:
            await asyncio.wait(list(self._preauth), timeout=5)

    async def _accept_loop(self) -> None:
        backoff = ACCEPT_BACKOFF
        while True:
            try:
                conn, addr = await self._loop.sock_accept(self._sock)
            except OSError as e:
                self.accept_errors += 1
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue  # that connection is gone; the next may be fine
                if not self._starved:
                    # once per episode: a flood would otherwise log every retry
                    log.warning("%s: cannot accept connections (%s); retrying with backoff", self.url, e.strerror or e)
                self._starved += 1
                await asyncio.sleep(backoff)  # back off: the pending connection stays queued
                backoff = min(ACCEPT_BACKOFF_MAX, backoff * 2)
                continue
            if self._starved:
                log.info("%s: accepting connections again (%d attempts failed)", self.url, self._starved)
                self._starved, backoff = 0, ACCEPT_BACKOFF
            self._admit(conn, plain_host(addr[0]))
            # an accept that succeeds at once does not yield: let the rest of the loop run
            # between accepts, or a flood would starve it (and the tasks just started)
            await asyncio.sleep(0)

    def _admit(self, conn: socket.socket, ip: str) -> None:
        now = self._loop.time()
        decision = self.gate.admit(ip, now)
        if decision.evicted is not None:
            decision.evicted.handle.cancel()
        if decision.ticket is None or decision.evicted is not None:
            self._report_limit(now)
        if decision.ticket is None:
            log.debug("%s: connection from %s refused (pre-auth limit)", self.url, ip)
            conn.close()
            return
        ticket = decision.ticket
        handed_off: list[bool] = []
        task = self._loop.create_task(self._serve(conn, ip, ticket, handed_off))
        ticket.handle = task
        self._preauth.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._preauth.discard(t)
            self._handlers.discard(t)
            if not handed_off:  # failed, timed out, or cancelled (possibly before it ever ran)
                self.gate.release(ticket)
                conn.close()

        task.add_done_callback(done)

    def _report_limit(self, now: float) -> None:
        """At most one line per LIMIT_LOG_INTERVAL while the pre-auth limits bite."""
        if now - self._limit_logged < LIMIT_LOG_INTERVAL:
            return
        self._limit_logged = now
        st = self.gate.statistics()
        log.warning(
            "%s: pre-auth limits reached (%d connections waiting to authenticate); %d refused and %d evicted so far",
            self.url, st.pending, st.refused, st.evicted,
        )

    async def _serve(self, conn: socket.socket, ip: str, ticket: Ticket, handed_off: list[bool]) -> None:
        task = asyncio.current_task()
        assert task is not None  # a coroutine always runs in a task
        deadline = self._loop.time() + HANDSHAKE_TIMEOUT
        try:
            await _readable(self._loop, conn, HANDSHAKE_TIMEOUT)
            self.gate.busy(ticket)
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: _TlsProtocol(preauth=True),
                conn,
                ssl=self._ctx,
                ssl_handshake_timeout=max(0.1, deadline - self._loop.time()),
            )
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as e:
            log.debug("%s: inbound connection from %s failed before authentication: %r", self.url, ip, e)
            return  # the done callback releases and closes
        handed_off.append(True)  # the TLS transport owns the socket now
        # ours, from the transport: uvloop returns its SSL protocol as the second value
        proto = cast(_TlsProtocol, transport.get_protocol())
        self._preauth.discard(task)
        self._handlers.add(task)
        proto.lost.add_done_callback(lambda _: self.gate.release(ticket))
        try:
            stream = TcpStream(proto, on_accepted=lambda: self.gate.release(ticket))
        except (ssl.SSLError, OSError, ValueError) as e:
            log.info("%s: inbound connection from %s refused: %s", self.url, ip, e)
            assert proto.transport is not None  # set by connection_made before the handshake
            proto.transport.abort()
            return
        try:
            await self._handler(stream)
        except Exception:
            log.exception("%s: stream handler failed", self.url)
            stream.abort()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    """Wait until `sock` has data (or EOF) to read, holding no buffer meanwhile."""
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await wait_for(fut, timeout)
    finally:
        loop.remove_reader(fd)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening socket; `::` listens on IPv6 and IPv4 (dual stack) and falls back to 0.0.0.0
    where the host has no IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dual = host == "::" and socket.has_dualstack_ipv6()
    try:
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG, dualstack_ipv6=dual)
    except OSError as e:
        if host == "::" and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            return bind_tcp("0.0.0.0", port)
        raise
    sock.setblocking(False)
    return sock


class TcpTransport:
    scheme = "tcp"

    def __init__(self, identity: Identity, gate: PreAuthGate | None = None) -> None:
        self._server_ctx = tls.server_context(identity)
        self._client_ctx = tls.client_context(identity)
        self._gate = gate

    async def listen(self, url: str, handler: StreamHandler) -> TcpListener:
        addr = Address.parse(url)
        try:
            sock = bind_tcp(addr.host, addr.port)
        except OSError as e:
            raise TransportError(f"cannot listen on {url}: {e.strerror or e}") from None
        host, port = sock.getsockname()[:2]
        bound = str(Address("tcp", host, port))
        # one gate per transport: the caps hold across all of its listeners
        if self._gate is None:
            self._gate = PreAuthGate()
        return TcpListener(sock, bound, self._server_ctx, handler, self._gate)
    async def connect(self, url: str, timeout: float = 10.0) -> TcpStream:
        addr = Address.parse(url)
        try:
            transport, proto = await wait_for(
                asyncio.get_running_loop().create_connection(
                    _TlsProtocol,
                    addr.host,
                    addr.port,
                    ssl=self._client_ctx,
                    server_hostname="syncer",
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ),
                timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as e:
            raise TransportError(f"cannot connect to {url}: {e or type(e).__name__}") from None
        try:  # (asyncio sets TCP_NODELAY on every TCP transport itself)
            return TcpStream(proto)
        except (ssl.SSLError, OSError, ValueError) as e:
            transport.abort()
            raise TransportError(f"cannot connect to {url}: {e}") from None

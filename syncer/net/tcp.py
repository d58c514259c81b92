"""TCP + TLS 1.3 transport on asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Callable

from syncer.identity import Identity
from syncer.net import tls
from syncer.net.transport import READ_SIZE, Address, Listener, Stream, StreamHandler, TransportError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
STREAM_LIMIT = 4 << 20
WRITE_HIGH_WATER = 4 << 20
READ_BUFFER = 256 << 10  # initial receive buffer per connection; grows while data is held
READ_HIGH_WATER = 4 << 20  # unread bytes at which reading from the socket pauses
MIN_READ_ROOM = 256 << 10
COMPACT_FROM = 2 << 20  # below this size the buffer grows instead of compacting
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

    async def writelines(self, chunks: list[bytes]) -> None:
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
            await asyncio.wait_for(self._writer.wait_closed(), 5)

    def abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()


class _TlsProtocol(asyncio.BufferedProtocol):
    """Receives straight into one reusable buffer: asyncio's SSL layer decrypts into
    `get_buffer()`, and `read()` copies out once. (StreamReader would copy each byte three
    times on the event loop thread: joining decrypted chunks, feed_data, read.)"""

    def __init__(self, on_connected: Callable[[_TlsProtocol], None] | None = None) -> None:
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0  # unread data is _buf[_start:_end]
        self._end = 0
        self._eof = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._on_connected = on_connected
        self.align_limit = 0  # see TcpStream.align_reads
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._start == self._end:
            self._start = self._end = 0
        if len(self._buf) - self._end < MIN_READ_ROOM:
            unread = self._end - self._start
            if unread + MIN_READ_ROOM > len(self._buf) or (unread and len(self._buf) < COMPACT_FROM):
                # grow rather than move unread data to the front over and over: a connection
                # carrying bulk data settles at a few MiB (bounded: reading pauses at
                # READ_HIGH_WATER unread bytes); an idle one keeps READ_BUFFER
                buf = bytearray(2 * len(self._buf))
                buf[:unread] = self._view[self._start : self._end]
                self._buf, self._view = buf, memoryview(buf)
            else:
                self._buf[:unread] = self._view[self._start : self._end]
            self._start, self._end = 0, unread
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if not self._reading_paused and self._end - self._start >= READ_HIGH_WATER and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

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
            n = self._readable(max_bytes)
            if n or self._eof:
                break
            self._read_waiter = asyncio.get_running_loop().create_future()
            await self._read_waiter
        if not n:
            return b""
        data = self._view[self._start : self._start + n].tobytes()
        self._start += n
        if self._reading_paused and self._end - self._start < READ_HIGH_WATER // 4 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def _readable(self, max_bytes: int) -> int:
        """How many buffered bytes a read returns now (0: wait for more)."""
        avail = self._end - self._start
        if not avail or not self.align_limit:
            return min(max_bytes, avail)
        # end at a record boundary: whole records only, at least one even beyond max_bytes
        pos, end = self._start, self._end
        while end - pos >= 4:
            size = 4 + _U32.unpack_from(self._buf, pos)[0]
            if size > self.align_limit:
                # too big to hold back for: hand over what there is, the reader joins it
                return min(max_bytes, avail) if pos == self._start else pos - self._start
            if pos + size > end or (pos + size - self._start > max_bytes and pos > self._start):
                break
            pos += size
        if pos > self._start:
            return pos - self._start
        return avail if self._eof else 0

    async def drain(self) -> None:
        while self._writing_paused and not self.lost.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self.lost.done():
            raise ConnectionResetError("connection lost")


class TcpStream(Stream):
    transport = "tcp"

    def __init__(self, proto: _TlsProtocol) -> None:
        assert proto.transport is not None
        self._proto = proto
        self._transport = proto.transport
        self.peer = tls.peer_device_id(self._transport.get_extra_info("ssl_object"))
        host, port = self._transport.get_extra_info("peername")[:2]
        self.remote_address = str(Address("tcp", host, port))
        self._closed = False

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        return await self._proto.read(max_bytes)

    def align_reads(self, limit: int) -> None:
        """From now on the data is records `length:u32be | length bytes`: reads end at record
        boundaries (for records up to `limit` bytes), so the reader can parse every record in
        place instead of joining pieces of it. Harmless on other data: a record that is too big
        or never completes is handed over as it comes."""
        # a record held back must fit below the point where reading pauses
        self._proto.align_limit = min(limit, READ_HIGH_WATER // 2)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.writelines([data])  # type: ignore[list-item]

    async def writelines(self, chunks: list[bytes]) -> None:
        # not joined: a small header costs a TLS record of its own (~30 bytes), joining would
        # cost a copy of every payload byte on the event loop; the SSL transport encrypts
        # the list and hands the socket all of it at once
        if self._closed or self._transport.is_closing():
            raise ConnectionResetError("stream closed")
        self._transport.writelines([c for c in chunks if c])
        await self._proto.drain()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._transport.close()  # TLS close_notify, then FIN
            await asyncio.wait_for(asyncio.shield(self._proto.lost), 5)

    def abort(self) -> None:
        self._closed = True
        self._transport.abort()


class TcpListener(Listener):
    def __init__(self, server: asyncio.Server, url: str) -> None:
        self._server = server
        self.url = url

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class TcpTransport:
    scheme = "tcp"

    def __init__(self, identity: Identity) -> None:
        self._server_ctx = tls.server_context(identity)
        self._client_ctx = tls.client_context(identity)

    async def listen(self, url: str, handler: StreamHandler) -> TcpListener:
        addr = Address.parse(url)

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def on_connected(proto: _TlsProtocol) -> None:
            try:
                stream = TcpStream(proto)
            except (ssl.SSLError, OSError, ValueError) as e:
                log.info("inbound connection refused: %s", e)
                if proto.transport is not None:
                    proto.transport.close()
                return
            task = loop.create_task(handler(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            server = await loop.create_server(
                lambda: _TlsProtocol(on_connected),
                addr.host,
                addr.port,
                ssl=self._server_ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                reuse_address=True,
            )
        except OSError as e:
            raise TransportError(f"cannot listen on {url}: {e.strerror or e}") from None
        host, port = server.sockets[0].getsockname()[:2]
        return TcpListener(server, str(Address("tcp", host, port)))

    async def connect(self, url: str, timeout: float = 10.0) -> TcpStream:
        addr = Address.parse(url)
        try:
            transport, proto = await asyncio.wait_for(
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

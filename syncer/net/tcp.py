"""TCP + TLS 1.3 transport on asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from syncer.identity import Identity
from syncer.net import tls
from syncer.net.transport import READ_SIZE, Address, Listener, Stream, StreamHandler, TransportError

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
STREAM_LIMIT = 4 << 20
WRITE_HIGH_WATER = 4 << 20


class TcpStream(Stream):
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

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                stream = TcpStream(reader, writer)
            except (ssl.SSLError, OSError, ValueError) as e:
                log.info("inbound connection refused: %s", e)
                writer.close()
                return
            await handler(stream)

        try:
            server = await asyncio.start_server(
                on_conn,
                addr.host,
                addr.port,
                ssl=self._server_ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                limit=STREAM_LIMIT,
                reuse_address=True,
            )
        except OSError as e:
            raise TransportError(f"cannot listen on {url}: {e.strerror or e}") from None
        host, port = server.sockets[0].getsockname()[:2]
        return TcpListener(server, str(Address("tcp", host, port)))

    async def connect(self, url: str, timeout: float = 10.0) -> TcpStream:
        addr = Address.parse(url)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    addr.host,
                    addr.port,
                    ssl=self._client_ctx,
                    server_hostname="syncer",
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                    limit=STREAM_LIMIT,
                ),
                timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as e:
            raise TransportError(f"cannot connect to {url}: {e or type(e).__name__}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return TcpStream(reader, writer)

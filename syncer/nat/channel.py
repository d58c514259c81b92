"""A `Stream` over a byte channel relayed by a paired device, with end-to-end TLS inside.

The channel carries only the ciphertext of a TLS 1.3 session between the two ends (mutual, device
certificates, as on every transport): the relaying device forwards `RelayData` messages it cannot
read. TLS runs on `ssl.SSLObject` with memory BIOs, so no socket is involved:

    write(): plaintext -> SSLObject -> outgoing BIO -> chunks of <= RELAY_CHUNK -> send()
    feed():  chunks from the relay -> incoming BIO -> SSLObject -> read()

Flow control, end to end: a sender may have at most WINDOW bytes that the receiver has not
consumed yet (the receiver grants them back with credit messages once it consumed half a window),
so neither the ends nor the relay hold more than a window per direction, whatever the speeds.
A receiver whose peer overruns the window closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence

from syncer.net import tls
from syncer.net.transport import READ_SIZE, Stream, TransportError
from syncer.runtime.timeouts import wait_for

WINDOW = 512 << 10
HANDSHAKE_TIMEOUT = 15.0

SendData = Callable[[bytes], Awaitable[None]]
SendCredit = Callable[[int], Awaitable[None]]


class ChannelStream(Stream):
    def __init__(
        self,
        ctx: ssl.SSLContext,
        server_side: bool,
        send_data: SendData,
        send_credit: SendCredit,
        on_close: Callable[[], None],
        chunk: int,
        label: str,
        remote: str,
    ) -> None:
        self.transport = label  # e.g. "relay (via laptop)"
        self.remote_address = remote
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=None if server_side else "syncer")
        self._send_data = send_data
        self._send_credit = send_credit
        self._on_close = on_close
        self._chunk = chunk
        self._credit = WINDOW  # bytes we may still send
        self._received = 0  # bytes fed in and not yet credited back
        self._unconsumed = 0  # ciphertext fed in and not yet decrypted
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._eof = False
        self._closed = False
        self._lock = asyncio.Lock()  # one writer of TLS records at a time

    # fed by the relay handler ------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Ciphertext from the other end; False if it overran our window (close the channel)."""
        if self._eof:
            return True
        self._unconsumed += len(data)
        if self._unconsumed > WINDOW:
            return False
        self._in.write(data)
        self._readable.set()
        return True

    def grant(self, n: int) -> None:
        self._credit += max(0, n)
        self._writable.set()

    def ended(self) -> None:
        """The channel is gone (closed by the other end or the relay)."""
        self._eof = True
        self._in.write_eof()
        self._readable.set()
        self._writable.set()

    # TLS -----------------------------------------------------------------------------------------
    async def handshake(self) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            while True:
                try:
                    self._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    await self._wait_readable()
        await self._flush()
        self.peer = tls.peer_device_id(self._ssl)

    async def _wait_readable(self) -> None:
        if self._eof and not self._in.pending:
            raise TransportError("relayed channel closed during the TLS handshake")
        self._readable.clear()
        if not self._in.pending:
            await self._readable.wait()

    async def _flush(self) -> None:
        """Send what TLS produced, in chunks, within the credit the receiver gave us."""
        async with self._lock:
            while self._out.pending:
                while self._credit <= 0:
                    if self._eof or self._closed:
                        raise ConnectionResetError("relayed channel closed")
                    self._writable.clear()
                    await self._writable.wait()
                data = self._out.read(min(self._chunk, self._credit))
                self._credit -= len(data)
                await self._send_data(data)

    async def _account(self) -> None:
        """Credit back what TLS consumed from the incoming BIO."""
        consumed = self._unconsumed - self._in.pending
        if consumed > 0:
            self._unconsumed -= consumed
            self._received += consumed
        if self._received >= WINDOW // 2 and not self._eof:
            n, self._received = self._received, 0
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send_credit(n)

    # Stream --------------------------------------------------------------------------------------
    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            try:
                data = self._ssl.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._account()
                if self._eof and not self._in.pending:
                    return b""
                self._readable.clear()
                if not self._in.pending:
                    await self._readable.wait()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError:
                self.abort()
                return b""
            await self._account()
            if self._out.pending:  # TLS may answer (key updates, session tickets)
                with contextlib.suppress(ConnectionError):
                    await self._flush()
            return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof:
            raise ConnectionResetError("relayed channel closed")
        view = memoryview(data)
        for i in range(0, len(view), 1 << 16):
            self._ssl.write(view[i : i + (1 << 16)])
            await self._flush()

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        await self.write(b"".join(chunks))

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
            self._ssl.unwrap()
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError, RuntimeError):
            await wait_for(self._flush(), 5)
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._eof = True
        self._readable.set()
        self._writable.set()
        self._on_close()

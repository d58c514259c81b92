"""An in-memory stream pair for unit tests: same interface and semantics as a real transport,
with a bounded buffer so backpressure behaves like a socket's."""

from __future__ import annotations

import asyncio

from syncer.deviceid import DeviceId
from syncer.net.transport import READ_SIZE, Stream

BUFFER_LIMIT = 4 << 20  # like the TCP transport's write high-water mark


class _Pipe:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()


class MemoryStream(Stream):
    transport = "memory"

    def __init__(self, peer: DeviceId, inbound: _Pipe, outbound: _Pipe, name: str) -> None:
        self.peer = peer
        self.remote_address = f"memory://{name}"
        self._in = inbound
        self._out = outbound
        self._closed = False

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        p = self._in
        while not p.buf and not p.eof:
            p.readable.clear()
            await p.readable.wait()
        data = bytes(p.buf[:max_bytes])
        del p.buf[:max_bytes]
        if len(p.buf) < BUFFER_LIMIT:
            p.writable.set()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        p = self._out
        if self._closed or p.eof:
            raise ConnectionResetError("stream closed")
        p.buf += data
        p.readable.set()
        while len(p.buf) > BUFFER_LIMIT and not p.eof:
            p.writable.clear()
            await p.writable.wait()

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in (self._out, self._in):
            p.eof = True
            p.readable.set()
            p.writable.set()


def memory_pair(a: DeviceId, b: DeviceId) -> tuple[MemoryStream, MemoryStream]:
    """Two connected streams: the first is a's end (its peer is b), the second b's end."""
    ab, ba = _Pipe(), _Pipe()
    return MemoryStream(b, ba, ab, "b"), MemoryStream(a, ab, ba, "a")

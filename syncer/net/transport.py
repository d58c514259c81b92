"""The small interface every transport implements (TCP, QUIC, relay, memory).

A `Stream` is a bidirectional, ordered, reliable byte stream whose far end has completed mutual
TLS; `peer` is the device ID computed from the peer's certificate. Whether that device may talk
to us is the caller's decision (the daemon's pairing gate), not the transport's; the caller
reports a positive decision with `peer_accepted()`. Every transport passes
the shared conformance tests in tests/transport_conformance.py.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from syncer.deviceid import DeviceId
from syncer.errors import SyncerError

READ_SIZE = 1 << 20


class TransportError(SyncerError):
    pass


class Stream(abc.ABC):
    transport: str  # "tcp", "quic", "relay", "memory"
    peer: DeviceId
    remote_address: str  # URL-ish, e.g. "tcp://127.0.0.1:40000"

    @abc.abstractmethod
    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        """Up to max_bytes; b"" at end of stream."""

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue data and wait while the transport's buffer is above its high-water mark."""

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        for c in chunks:
            await self.write(c)

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush, send end-of-stream and release the connection. Idempotent."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection at once, without flushing."""

    def peer_accepted(self) -> None:
        """The application accepted the peer (a paired device): the connection leaves the
        transport's pre-authentication budget and may use full-size buffers. Idempotent; until
        it is called an inbound connection counts against the caps of net/admission.py."""
        return None  # transports without a pre-auth budget (memory, relay) have nothing to do


StreamHandler = Callable[[Stream], Awaitable[None]]


class Listener(abc.ABC):
    url: str  # the bound address, e.g. "tcp://127.0.0.1:22001"

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Address:
        scheme, sep, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise TransportError(f"bad address {url!r}: expected SCHEME://HOST:PORT")
        return cls(scheme, host.strip("[]"), int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

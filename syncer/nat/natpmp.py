"""NAT-PMP (RFC 6886): a small client of our own. UDP to the default gateway, port 5351:

    external address: request  ver 0 | op 0;   response ver | 128 | result u16 | epoch u32 | ip (4)
    map UDP (op 1) / TCP (op 2): request ver | op | 0 u16 | internal port u16 | suggested
        external port u16 | lifetime u32;  response ver | 128+op | result | epoch | internal |
        mapped external port | lifetime.   Lifetime 0 deletes the mapping.

Requests are retransmitted from 250 ms doubling (RFC 6886: 9 times from 250 ms; we stop after
4, about 4 s). Pure codec + `NatPmpClient`. Miniupnpd speaks it (PCP is not implemented here).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from syncer.errors import SyncerError

T = TypeVar("T")

PORT = 5351
OPS = {"UDP": 1, "TCP": 2}
TRIES = 4
FIRST_WAIT = 0.25


class NatPmpError(SyncerError):
    pass


def external_address_request() -> bytes:
    return b"\x00\x00"


def map_request(protocol: str, internal: int, external: int, lifetime: int) -> bytes:
    return struct.pack("!BBHHHI", 0, OPS[protocol], 0, internal, external, lifetime)


def parse_address_response(data: bytes) -> str | None:
    if len(data) < 12:
        return None
    _, op, result, _ = struct.unpack_from("!BBHI", data)
    if op != 128 or result != 0:
        return None
    return socket.inet_ntoa(data[8:12])


def parse_map_response(data: bytes, protocol: str) -> tuple[int, int, int] | None:
    """(internal port, external port, lifetime) of a successful answer, else None."""
    if len(data) < 16:
        return None
    _, op, result, _, internal, external, lifetime = struct.unpack_from("!BBHIHHI", data)
    if op != 128 + OPS[protocol] or result != 0:
        return None
    return internal, external, lifetime


def default_gateway() -> str | None:
    """The IPv4 default gateway (Linux /proc/net/route)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/net/route") as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[1] == "00000000" and int(fields[3], 16) & 2:  # default route with RTF_GATEWAY
                    return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.answers.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass


class NatPmpClient:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway

    async def _ask(self, request: bytes, accept: Callable[[bytes], T | None]) -> T:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(_Proto, remote_addr=(self.gateway, PORT))
        try:
            wait = FIRST_WAIT
            for _ in range(TRIES):
                transport.sendto(request)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        while True:
                            got = accept(await proto.answers.get())
                            if got is not None:
                                return got
                wait *= 2
        finally:
            transport.close()
        raise NatPmpError(f"no NAT-PMP answer from {self.gateway}")

    async def external_address(self) -> str:
        return await self._ask(external_address_request(), parse_address_response)

    async def map(self, protocol: str, internal: int, external: int, lifetime: int) -> tuple[int, int, int]:
        return await self._ask(map_request(protocol, internal, external, lifetime), lambda d: parse_map_response(d, protocol))

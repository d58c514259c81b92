"""LAN discovery: a periodic UDP broadcast beacon with our device ID and listen port.

Beacon (39 bytes): magic `SYNR` | version u8 (1) | device ID (32 bytes) | TCP port u16 BE. The
sender's address is taken from the datagram. Own beacons and malformed datagrams are ignored.
The socket uses SO_REUSEADDR + SO_REUSEPORT so several daemons on one machine share the port
(broadcasts reach every socket bound to it; tests broadcast to 127.255.255.255 on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from syncer.deviceid import DeviceId

log = logging.getLogger(__name__)

MAGIC = b"SYNR"
VERSION = 1
BEACON = struct.Struct(">4sB32sH")
INTERVAL = 30.0


def encode_beacon(device: DeviceId, port: int) -> bytes:
    return BEACON.pack(MAGIC, VERSION, device.raw, port)


def decode_beacon(data: bytes) -> tuple[DeviceId, int] | None:
    if len(data) != BEACON.size:
        return None
    magic, version, raw, port = BEACON.unpack(data)
    if magic != MAGIC or version != VERSION or port == 0:
        return None
    return DeviceId(raw), port


OnPeer = Callable[[DeviceId, str, str], None]


class LanDiscovery(asyncio.DatagramProtocol):
    def __init__(self, device: DeviceId, listen_port: int, port: int, address: str, on_peer: OnPeer, interval: float = INTERVAL) -> None:
        self.device, self.listen_port = device, listen_port
        self.port, self.address, self.interval = port, address, interval
        self.on_peer = on_peer
        self.transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", self.port))
        sock.setblocking(False)
        self.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        self._task = asyncio.ensure_future(self._beacon_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.transport is not None:
            self.transport.close()

    def send_now(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(encode_beacon(self.device, self.listen_port), (self.address, self.port))

    async def _beacon_loop(self) -> None:
        while True:
            self.send_now()
            await asyncio.sleep(self.interval)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        beacon = decode_beacon(data)
        if beacon is None or beacon[0] == self.device:
            return
        self.received += 1
        device, port = beacon
        host = addr[0] if ":" not in addr[0] else f"[{addr[0]}]"
        self.on_peer(device, f"tcp://{host}:{port}", "lan")

    def error_received(self, exc: Exception) -> None:
        pass

"""LAN discovery: a periodic UDP broadcast beacon with our device ID and listen port.

Beacon (39 bytes): magic `SYNR` | version u8 (1) | device ID (32 bytes) | TCP port u16 BE. The
sender's address is taken from the datagram. Own beacons and malformed datagrams are ignored.
The socket uses SO_REUSEADDR + SO_REUSEPORT so several daemons on one machine share the port
(broadcasts reach every socket bound to it; tests broadcast to 127.255.255.255 on loopback).

Keyed beacons, for lookups by a key other than a device ID (invites: syncer/invite/): a device
that `advertise(key)`s also broadcasts `SYNR | 2 | key (20 bytes) | device ID | port` (59 bytes)
every interval, and at once when it sees a query `SYNR | 3 | key` (25 bytes) for that key (at
most once per QUERY_ANSWER_GAP per key, broadcast, since a unicast answer reaches only one of
the sockets sharing the port). Whoever `watch(key, ...)`es gets the keyed beacons for it.
Version-1 receivers ignore both (wrong length).
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
KEYED_VERSION, QUERY_VERSION = 2, 3
KEYED = struct.Struct(">4sB20s32sH")
QUERY = struct.Struct(">4sB20s")
INTERVAL = 30.0
QUERY_ANSWER_GAP = 1.0
MAX_KEYS = 64


def encode_beacon(device: DeviceId, port: int) -> bytes:
    return BEACON.pack(MAGIC, VERSION, device.raw, port)


def decode_beacon(data: bytes) -> tuple[DeviceId, int] | None:
    if len(data) != BEACON.size:
        return None
    magic, version, raw, port = BEACON.unpack(data)
    if magic != MAGIC or version != VERSION or port == 0:
        return None
    return DeviceId(raw), port


def encode_keyed_beacon(key: bytes, device: DeviceId, port: int) -> bytes:
    return KEYED.pack(MAGIC, KEYED_VERSION, key, device.raw, port)


def decode_keyed_beacon(data: bytes) -> tuple[bytes, DeviceId, int] | None:
    if len(data) != KEYED.size:
        return None
    magic, version, key, raw, port = KEYED.unpack(data)
    if magic != MAGIC or version != KEYED_VERSION or port == 0:
        return None
    return key, DeviceId(raw), port


def encode_query(key: bytes) -> bytes:
    return QUERY.pack(MAGIC, QUERY_VERSION, key)


def decode_query(data: bytes) -> bytes | None:
    if len(data) != QUERY.size:
        return None
    magic, version, key = QUERY.unpack(data)
    return key if magic == MAGIC and version == QUERY_VERSION else None


OnPeer = Callable[[DeviceId, str, str], None]


class LanDiscovery(asyncio.DatagramProtocol):
    def __init__(
        self, device: DeviceId, listen_port: int, port: int, address: str, on_peer: OnPeer,
        interval: float = INTERVAL, beacons: bool = True,
    ) -> None:
        self.device, self.listen_port = device, listen_port
        self.port, self.address, self.interval = port, address, interval
        self.on_peer = on_peer
        self.beacons = beacons  # False: only listen and query (a lookup without a daemon)
        self.transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self.keys: set[bytes] = set()  # advertised
        self._watchers: dict[bytes, OnPeer] = {}
        self._answered: dict[bytes, float] = {}

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
        if self.beacons:
            self._broadcast(encode_beacon(self.device, self.listen_port))

    def _broadcast(self, data: bytes) -> None:
        if self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(data, (self.address, self.port))

    # keyed beacons ---------------------------------------------------------------------
    def advertise(self, key: bytes) -> None:
        """Answer queries for `key` with our address, and beacon it, until withdrawn."""
        if key not in self.keys and len(self.keys) < MAX_KEYS:
            self.keys.add(key)
            self._broadcast(encode_keyed_beacon(key, self.device, self.listen_port))

    def withdraw(self, key: bytes) -> None:
        self.keys.discard(key)
        self._answered.pop(key, None)

    def watch(self, key: bytes, on_peer: OnPeer) -> None:
        """Report every keyed beacon for `key` as (device, address, "lan")."""
        if len(self._watchers) < MAX_KEYS:
            self._watchers[key] = on_peer

    def unwatch(self, key: bytes) -> None:
        self._watchers.pop(key, None)

    def query(self, key: bytes) -> None:
        """Ask devices advertising `key` to beacon now."""
        self._broadcast(encode_query(key))

    async def _beacon_loop(self) -> None:
        while True:
            self.send_now()
            for key in list(self.keys):
                self._broadcast(encode_keyed_beacon(key, self.device, self.listen_port))
            await asyncio.sleep(self.interval)

    def _on_keyed(self, data: bytes, addr: tuple[str, int]) -> None:
        query = decode_query(data)
        if query is not None:
            now = asyncio.get_running_loop().time()
            if query in self.keys and now - self._answered.get(query, -QUERY_ANSWER_GAP) >= QUERY_ANSWER_GAP:
                self._answered[query] = now
                self._broadcast(encode_keyed_beacon(query, self.device, self.listen_port))
            return
        keyed = decode_keyed_beacon(data)
        if keyed is None or keyed[1] == self.device:
            return
        key, device, port = keyed
        watcher = self._watchers.get(key)
        if watcher is not None:
            host = addr[0] if ":" not in addr[0] else f"[{addr[0]}]"
            watcher(device, f"tcp://{host}:{port}", "lan")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) != BEACON.size:
            self._on_keyed(data, addr)
            return
        beacon = decode_beacon(data)
        if beacon is None or beacon[0] == self.device:
            return
        self.received += 1
        device, port = beacon
        host = addr[0] if ":" not in addr[0] else f"[{addr[0]}]"
        self.on_peer(device, f"tcp://{host}:{port}", "lan")

    def error_received(self, exc: Exception) -> None:
        pass

"""LAN keyed beacons (discovery/lan.py) as invites use them: codec, and on loopback a device
advertising a key answers a query at once, while a watcher of another key hears nothing."""

from __future__ import annotations

import asyncio
import socket

from syncer.deviceid import DeviceId
from syncer.discovery.lan import (
    LanDiscovery,
    decode_beacon,
    decode_keyed_beacon,
    decode_query,
    encode_keyed_beacon,
    encode_query,
)

A, B = DeviceId(b"\x0a" * 32), DeviceId(b"\x0b" * 32)
KEY, OTHER = b"\x11" * 20, b"\x22" * 20


def test_keyed_beacon_and_query_codec():
    assert decode_keyed_beacon(encode_keyed_beacon(KEY, A, 22000)) == (KEY, A, 22000)
    assert decode_query(encode_query(KEY)) == KEY
    assert decode_keyed_beacon(encode_query(KEY)) is None and decode_query(encode_keyed_beacon(KEY, A, 1)) is None
    assert decode_beacon(encode_keyed_beacon(KEY, A, 22000)) is None  # version-1 receivers ignore it
    assert decode_keyed_beacon(encode_keyed_beacon(KEY, A, 0)) is None


def test_a_query_is_answered_at_once_on_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> tuple[list, list]:
        heard: list = []
        other: list = []
        # a long beacon interval: only the answer to the query can arrive in time
        a = LanDiscovery(A, 1111, port, "127.255.255.255", lambda *x: None, interval=3600)
        b = LanDiscovery(B, 0, port, "127.255.255.255", lambda *x: None, interval=3600, beacons=False)
        await a.start()
        await b.start()
        try:
            a.advertise(KEY)
            b.watch(KEY, lambda d, addr, src: heard.append((d, addr, src)))
            b.watch(OTHER, lambda d, addr, src: other.append(d))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not heard and loop.time() < deadline:
                b.query(KEY)
                await asyncio.sleep(0.2)  # yields to the sockets; bounded by the deadline
            a.withdraw(KEY)
        finally:
            await a.stop()
            await b.stop()
        return heard, other

    heard, other = asyncio.run(main())
    assert (A, "tcp://127.0.0.1:1111", "lan") in heard and other == []

import asyncio
import socket

from syncer.deviceid import DeviceId
from syncer.discovery.lan import LanDiscovery, decode_beacon, encode_beacon

A, B = DeviceId(b"\x0a" * 32), DeviceId(b"\x0b" * 32)


def test_beacon_round_trip_and_garbage():
    assert decode_beacon(encode_beacon(A, 22000)) == (A, 22000)
    assert decode_beacon(b"") is None and decode_beacon(b"x" * 39) is None
    assert decode_beacon(encode_beacon(A, 22000)[:-1]) is None


def test_two_beacons_find_each_other_on_loopback_and_ignore_themselves():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        found: dict[str, list] = {"a": [], "b": []}
        a = LanDiscovery(A, 1111, port, "127.255.255.255", lambda d, addr, src: found["a"].append((d, addr, src)), interval=0.2)
        b = LanDiscovery(B, 2222, port, "127.255.255.255", lambda d, addr, src: found["b"].append((d, addr, src)), interval=0.2)
        await a.start()
        await b.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not (found["a"] and found["b"]) and loop.time() < deadline:
                await asyncio.sleep(0.05)  # yields to the beacon tasks; bounded by the deadline
            # garbage on the port is ignored
            g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            g.sendto(b"garbage" * 10, ("127.0.0.1", port))
            g.close()
        finally:
            await a.stop()
            await b.stop()
        return found

    found = asyncio.run(main())
    assert (B, "tcp://127.0.0.1:2222", "lan") in found["a"]
    assert (A, "tcp://127.0.0.1:1111", "lan") in found["b"]
    assert all(d != A for d, _, _ in found["a"]) and all(d != B for d, _, _ in found["b"])

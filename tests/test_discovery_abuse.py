"""Tracker and DHT abuse (issue 10 item 13): fair, expiring, bounded swarms; DHT per-source rate
limit, responses only from the queried address, random transaction ids. Pure units with injected
time, then the same properties on real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import aiohttp

from syncer.codec import bencode
from syncer.deviceid import DeviceId
from syncer.discovery.dht import krpc
from syncer.discovery.dht.node import TID_BYTES, DhtNode
from syncer.discovery.peerstore import PeerEntry, PeerStore
from syncer.discovery.tracker_server import TrackerServer

IH = bytes(range(20))
REAL = DeviceId(b"\x01" * 32)


def entry(ip: str, port: int, now: float, device: str = "") -> PeerEntry:
    return PeerEntry(ip, port, device, b"", now)


# --- peer store (pure) ------------------------------------------------------------------------------
def test_one_source_cannot_evict_anyone_else():
    s = PeerStore(ttl=100, max_peers=50, max_per_source=8)
    s.announce(IH, entry("10.0.0.1", 22000, 0, str(REAL)))
    for port in range(1, 201):  # 200 fake announces from one address
        s.announce(IH, entry("10.6.6.6", port, port / 100))
    peers = s.peers(IH, 3)
    assert any(p.device_id == str(REAL) for p in peers)
    assert len([p for p in peers if p.ip == "10.6.6.6"]) == 8  # its share, its newest ones
    assert {p.port for p in peers if p.ip == "10.6.6.6"} == set(range(193, 201))


def test_a_full_swarm_drops_from_the_biggest_source_first():
    s = PeerStore(ttl=100, max_peers=4, max_per_source=3)
    s.announce(IH, entry("10.0.0.1", 1, 0))
    for port in (1, 2, 3):
        s.announce(IH, entry("10.0.0.2", port, 1))
    s.announce(IH, entry("10.0.0.3", 1, 2))  # full: 10.0.0.2 (3 entries) gives one up
    ips = sorted(p.ip for p in s.peers(IH, 3))
    assert ips == ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"]


def test_ipv6_sources_share_per_64():
    s = PeerStore(ttl=100, max_peers=100, max_per_source=2)
    for i in range(10):
        s.announce(IH, entry(f"2001:db8:0:1::{i + 1:x}", 7000, i))
    assert len(s) == 2


def test_entries_expire_and_total_state_is_bounded():
    s = PeerStore(ttl=10, max_swarms=1000, max_peers=100, max_per_source=8, max_entries=50)
    for i in range(200):  # many swarms from many sources: the total cap holds
        s.announce(i.to_bytes(20, "big"), entry(f"10.0.{i // 250}.{i % 250}", 1, 0))
    assert len(s) == 50 and len(s.swarms) <= 50
    assert s.peers((199).to_bytes(20, "big"), 5)  # the newest survive
    s.announce(IH, entry("10.1.0.1", 1, 11))  # announcing later drops what expired
    assert len(s) == 1 and list(s.swarms) == [IH]
    assert s.peers(IH, 22) == []


# --- tracker on real sockets ---------------------------------------------------------------------------
def test_tracker_real_device_survives_a_flood_from_one_address_and_entries_expire():
    clock = [1000.0]

    async def announce(session: aiohttp.ClientSession, url: str, device: str, port: int) -> dict:
        body = {"info_hash": IH.hex(), "device_id": device, "port": port, "event": "started"}
        async with session.post(url, data=json.dumps(body)) as r:
            return await r.json(content_type=None)

    async def main() -> None:
        server = TrackerServer("127.0.0.1", 0, interval=30, rate=1000, burst=1000, clock=lambda: clock[0])
        host, port = await server.start()
        url = f"http://{host}:{port}/announce"
        try:
            async with aiohttp.ClientSession() as real:
                await announce(real, url, str(REAL), 22000)
            flood = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=flood) as evil:
                for i in range(200):
                    clock[0] += 0.01
                    await announce(evil, url, str(DeviceId(os.urandom(32))), 30000 + i)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))) as seeker:
                r = await announce(seeker, url, str(DeviceId(b"\x02" * 32)), 1)
                devices = [p["device_id"] for p in r["peers"]]
                assert str(REAL) in devices
                assert sum(p["ip"] == "127.0.0.2" for p in r["peers"]) == 8
                clock[0] += 2 * 30 + 31  # past the TTL: everything announced so far expires
                r = await announce(seeker, url, str(DeviceId(b"\x02" * 32)), 1)
                assert r["peers"] == [] and len(server.store) == 1  # only the seeker's fresh entry
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


# --- DHT (pure parts with injected time) ------------------------------------------------------------
def test_dht_rate_limits_queries_per_source_with_injected_time():
    now = [0.0]
    node = DhtNode("127.0.0.1", 0, clock=lambda: now[0], query_rate=2, query_burst=5)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    node._send = lambda d, a: sent.append((d, a))  # type: ignore[method-assign]
    ping = krpc.query(b"aa", "ping", {"id": b"M" * 20})
    for _ in range(50):
        node.datagram_received(ping, ("10.9.9.9", 1234))
    assert len(sent) == 5 and node.stats["rate_limited"] == 45
    node.datagram_received(ping, ("10.1.1.1", 1234))  # another source is not affected
    assert len(sent) == 6
    now[0] = 1.0  # two more per second
    for _ in range(5):
        node.datagram_received(ping, ("10.9.9.9", 1234))
    assert len(sent) == 8
    assert node.table.closest(b"M" * 20)[0].ip in ("10.9.9.9", "10.1.1.1")


# --- DHT on real sockets ------------------------------------------------------------------------------
def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def test_dht_takes_responses_only_from_the_queried_address_and_uses_random_ids():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        node = DhtNode("127.0.0.1", 0)
        host, port = await node.start()
        target, forger = _udp(), _udp()
        try:
            q = asyncio.ensure_future(node.query(target.getsockname(), "ping", {}))
            data, src = await asyncio.wait_for(loop.sock_recvfrom(target, 2000), 5)
            tid = bencode.decode(data)[b"t"]
            assert len(tid) == TID_BYTES
            # a forged answer with the right id, but from another address: ignored
            await loop.sock_sendto(forger, krpc.response(tid, {"id": b"F" * 20}), (host, port))
            # then the real one
            for _ in range(500):
                if node.stats["unexpected_responses"]:
                    break
                await asyncio.sleep(0.01)  # poll with a deadline for the datagram to be handled
            assert node.stats["unexpected_responses"] == 1 and not q.done()
            await loop.sock_sendto(target, krpc.response(tid, {"id": b"T" * 20}), src)
            r = await asyncio.wait_for(q, 5)
            assert r[b"id"] == b"T" * 20
            assert [n.id for n in node.table.closest(b"T" * 20)] == [b"T" * 20]  # the forger is not in the table

            # transaction ids are random, not a counter
            tids = []
            for _ in range(20):
                t = asyncio.ensure_future(node.query(target.getsockname(), "ping", {}))
                d, _ = await asyncio.wait_for(loop.sock_recvfrom(target, 2000), 5)
                tids.append(int.from_bytes(bencode.decode(d)[b"t"], "big"))
                t.cancel()
            assert len(set(tids)) == 20
            assert sum(1 for a, b in zip(tids, tids[1:], strict=False) if b == a + 1) < 3
        finally:
            target.close()
            forger.close()
            await node.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_dht_query_flood_from_one_address_is_answered_only_up_to_its_rate():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        node = DhtNode("127.0.0.1", 0, query_rate=10, query_burst=20)
        host, port = await node.start()
        flooder = _udp()
        try:
            ping = krpc.query(b"aa", "ping", {"id": b"M" * 20})
            started = loop.time()
            for sent in range(50, 301, 50):  # in rounds: a socket buffer holds ~200 datagrams
                for _ in range(50):
                    await loop.sock_sendto(flooder, ping, (host, port))
                for _ in range(500):
                    if node.stats["queries_in"] + node.stats["rate_limited"] >= sent:
                        break
                    await asyncio.sleep(0.01)  # poll with a deadline until the round was handled
            answered = node.stats["queries_in"]
            assert node.stats["queries_in"] + node.stats["rate_limited"] == 300
            # the burst plus what refilled meanwhile (10 per second)
            assert 20 <= answered <= 20 + 10 * (loop.time() - started) + 1, answered
        finally:
            flooder.close()
            await node.stop()

    asyncio.run(asyncio.wait_for(main(), 60))

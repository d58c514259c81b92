"""Tracker server: syncer JSON announces, BEP 3/23 GET announces, scrape, bad input, limits."""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.parse
import urllib.request

import pytest

from syncer.codec import bencode
from syncer.deviceid import DeviceId
from syncer.discovery.peerstore import IpRateLimit, PeerEntry, PeerStore
from syncer.discovery.tracker_client import TrackerClient
from syncer.discovery.tracker_server import TrackerServer

DEV_A = DeviceId(b"\x01" * 32)
DEV_B = DeviceId(b"\x02" * 32)
IH = bytes(range(20))


def run(coro):
    return asyncio.run(coro)


async def with_server(fn, **kw):
    server = TrackerServer("127.0.0.1", 0, interval=30, **kw)
    host, port = await server.start()
    try:
        return await fn(f"http://{host}:{port}", server)
    finally:
        await server.stop()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def test_json_announce_returns_other_devices():
    async def body(base, server):
        a = {"info_hash": IH.hex(), "device_id": str(DEV_A), "port": 1111, "event": "started"}
        b = {"info_hash": IH.hex(), "device_id": str(DEV_B), "port": 2222, "event": "started"}
        s, r = await asyncio.to_thread(_post, base + "/announce", json.dumps(a).encode())
        assert s == 200 and r == {"interval": 30, "peers": []}
        s, r = await asyncio.to_thread(_post, base + "/announce", json.dumps(b).encode())
        assert r["peers"] == [{"ip": "127.0.0.1", "port": 1111, "device_id": str(DEV_A)}]
        b["event"] = "stopped"
        await asyncio.to_thread(_post, base + "/announce", json.dumps(b).encode())
        a["event"] = None
        s, r = await asyncio.to_thread(_post, base + "/announce", json.dumps(a).encode())
        assert r["peers"] == []

    run(with_server(body))


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'{"info_hash": "zz"}', json.dumps({"info_hash": IH.hex(), "device_id": "bad", "port": 1}).encode(),
     json.dumps({"info_hash": IH.hex(), "device_id": str(DEV_A), "port": 0}).encode(),
     json.dumps({"info_hash": IH.hex(), "device_id": str(DEV_A), "port": 5, "event": "weird"}).encode(),
     b"{" * 5000],
)
def test_bad_json_is_a_clear_400(payload):
    async def body(base, server):
        s, r = await asyncio.to_thread(_post, base + "/announce", payload)
        assert (s == 400 and "error" in r) or s == 413  # 413: body over the size limit

    run(with_server(body))


def _bt_url(base: str, ih: bytes, peer_id: bytes, port: int, **extra) -> str:
    q = "info_hash=" + urllib.parse.quote_from_bytes(ih) + "&peer_id=" + urllib.parse.quote_from_bytes(peer_id)
    q += f"&port={port}&uploaded=0&downloaded=0&left=100&unknown_param=1"
    for k, v in extra.items():
        q += f"&{k}={v}"
    return f"{base}/announce?{q}"


def test_bep3_compact_and_non_compact_and_scrape():
    ih = b"\x00%&=+ \xff" + bytes(13)  # bytes that need percent-encoding

    async def body(base, server):
        r1 = bencode.decode(await asyncio.to_thread(_get, _bt_url(base, ih, b"A" * 20, 6881, event="started")))
        assert r1[b"interval"] == 30 and r1[b"peers"] == b""
        r2 = bencode.decode(await asyncio.to_thread(_get, _bt_url(base, ih, b"B" * 20, 6882, compact=1)))
        assert r2[b"peers"] == bytes([127, 0, 0, 1]) + struct.pack(">H", 6881)
        r3 = bencode.decode(await asyncio.to_thread(_get, _bt_url(base, ih, b"C" * 20, 6883, compact=0)))
        assert sorted((p[b"peer id"], p[b"port"]) for p in r3[b"peers"]) == [(b"A" * 20, 6881), (b"B" * 20, 6882)]
        sc = bencode.decode(await asyncio.to_thread(_get, f"{base}/scrape?info_hash=" + urllib.parse.quote_from_bytes(ih)))
        assert sc[b"files"][ih][b"incomplete"] == 3
        await asyncio.to_thread(_get, _bt_url(base, ih, b"A" * 20, 6881, event="stopped"))
        r4 = bencode.decode(await asyncio.to_thread(_get, _bt_url(base, ih, b"B" * 20, 6882, numwant=5)))
        assert len(r4[b"peers"]) == 6  # only C left besides B itself

    run(with_server(body))


@pytest.mark.parametrize(
    "query",
    ["", "info_hash=short&peer_id=" + "a" * 20 + "&port=1", "info_hash=" + "a" * 20 + "&peer_id=" + "a" * 20 + "&port=x",
     "info_hash=" + "a" * 20 + "&peer_id=" + "a" * 20 + "&port=99999", "info_hash=" + "a" * 20 + "&peer_id=" + "a" * 20 + "&port=1&event=bogus"],
)
def test_bad_bep3_requests_get_failure_reason(query):
    async def body(base, server):
        r = bencode.decode(await asyncio.to_thread(_get, f"{base}/announce?{query}"))
        assert b"failure reason" in r

    run(with_server(body))


def test_rate_limit_per_ip():
    async def body(base, server):
        url = _bt_url(base, IH, b"Z" * 20, 7000)
        results = [bencode.decode(await asyncio.to_thread(_get, url)) for _ in range(6)]
        assert any(b"failure reason" in r for r in results)

    run(with_server(body, rate=0.001, burst=3))


def test_peer_store_bounds_and_expiry():
    s = PeerStore(ttl=10, max_swarms=3, max_peers=2)
    for i in range(5):
        s.announce(bytes([i]) * 20, PeerEntry("1.1.1.1", 1, "", b"", 0))
    assert len(s.swarms) == 3
    for port in range(5):
        s.announce(b"x" * 20, PeerEntry("1.1.1.1", port + 1, "", b"", 0))
    assert len(s.swarms[b"x" * 20]) == 2
    assert s.peers(b"x" * 20, now=5) and s.peers(b"x" * 20, now=11) == []
    assert s.expire(now=11) > 0 and len(s) == 0


def test_ip_rate_limit_is_bounded():
    r = IpRateLimit(rate=1, burst=1, max_ips=10)
    assert r.allow("a", 0) and not r.allow("a", 0) and r.allow("a", 1.5)
    for i in range(100):
        r.allow(f"ip{i}", 0)
    assert len(r.buckets) == 10


def test_client_announces_and_looks_up():
    async def body(base, server):
        a = TrackerClient([base + "/announce"], DEV_A, 1111)
        b = TrackerClient([base + "/announce"], DEV_B, 2222)
        await a.start()
        try:
            for _ in range(200):
                if server.announces:
                    break
                await asyncio.sleep(0.01)  # yields to the server task in this loop
            await b.start()
            assert await b.lookup(DEV_A) == [("127.0.0.1", 1111)]
            assert await b.lookup(DeviceId(b"\x09" * 32)) == []
        finally:
            await a.stop()
            await b.stop()

    run(with_server(body))

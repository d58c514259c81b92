"""DHT: routing table and tokens (pure), BEP 5 messages on real UDP sockets, a 60-node network
in one process where lookups converge, fuzzed datagrams, and the dht-node command."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.codec import bencode
from syncer.discovery.dht import krpc
from syncer.discovery.dht.krpc import NodeInfo
from syncer.discovery.dht.node import DhtNode
from syncer.discovery.dht.routing import K, RoutingTable
from syncer.discovery.dht.tokens import ROTATE, Tokens
from tests.helpers import SYNCER


def nid(i: int) -> bytes:
    return i.to_bytes(20, "big")


def test_routing_table_splits_own_bucket_and_stays_bounded():
    own = os.urandom(20)
    t = RoutingTable(own)
    rng = random.Random(1)
    for i in range(5000):
        t.add(NodeInfo(rng.randbytes(20), "127.0.0.1", 1000 + i % 60000), now=0)
    assert len(t.buckets) > 1
    assert all(len(b.nodes) <= K for b in t.buckets)
    assert len(t) <= K * 161
    target = os.urandom(20)
    closest = t.closest(target)
    assert len(closest) == K
    ds = [int.from_bytes(n.id, "big") ^ int.from_bytes(target, "big") for n in closest]
    assert ds == sorted(ds)


def test_bad_nodes_are_replaced():
    t = RoutingTable(nid(0))
    far = [NodeInfo(nid((1 << 159) + i), "127.0.0.1", 2000 + i) for i in range(K + 1)]
    for n in far:
        t.add(n, 0)
    bucket = t._bucket(far[0].id)
    assert far[-1].id not in bucket.nodes and far[-1].id in bucket.replacements
    t.failed(far[0].id)
    t.failed(far[0].id)
    assert far[0].id not in bucket.nodes and far[-1].id in bucket.nodes


def test_tokens_rotate_and_bind_to_ip():
    tk = Tokens(now=0)
    tok = tk.issue("10.0.0.1", 0)
    assert tk.valid(tok, "10.0.0.1", 1) and not tk.valid(tok, "10.0.0.2", 1)
    assert tk.valid(tok, "10.0.0.1", ROTATE + 1)  # previous secret still accepted
    assert not tk.valid(tok, "10.0.0.1", 2 * ROTATE + 1)


def test_bep5_queries_on_a_real_socket():
    async def main() -> None:
        node = DhtNode("127.0.0.1", 0)
        host, port = await node.start()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        loop = asyncio.get_running_loop()

        async def ask(payload: bytes) -> dict:
            await loop.sock_sendto(s, payload, (host, port))
            data = await asyncio.wait_for(loop.sock_recv(s, 2000), 5)
            return bencode.decode(data)

        try:
            me = b"M" * 20
            r = await ask(krpc.query(b"aa", "ping", {"id": me}))
            assert r[b"t"] == b"aa" and r[b"y"] == b"r" and r[b"r"][b"id"] == node.id
            r = await ask(krpc.query(b"ab", "get_peers", {"id": me, "info_hash": b"I" * 20}))
            token = r[b"r"][b"token"]
            assert b"values" not in r[b"r"]
            r = await ask(krpc.query(b"ac", "announce_peer", {"id": me, "info_hash": b"I" * 20, "port": 9999, "token": token}))
            assert r[b"y"] == b"r"
            r = await ask(krpc.query(b"ad", "announce_peer", {"id": me, "info_hash": b"I" * 20, "port": 0, "token": token, "implied_port": 1}))
            assert r[b"y"] == b"r"
            r = await ask(krpc.query(b"ae", "get_peers", {"id": me, "info_hash": b"I" * 20}))
            my_port = s.getsockname()[1]
            assert sorted(krpc.decode_peers(r[b"r"][b"values"])) == sorted([("127.0.0.1", 9999), ("127.0.0.1", my_port)])
            r = await ask(krpc.query(b"af", "find_node", {"id": me, "target": b"T" * 20}))
            assert [n.id for n in krpc.decode_nodes(r[b"r"][b"nodes"])] == [me]
            # errors per BEP 5
            r = await ask(krpc.query(b"ag", "announce_peer", {"id": me, "info_hash": b"I" * 20, "port": 1, "token": b"bad"}))
            assert r[b"y"] == b"e" and r[b"e"][0] == 203
            r = await ask(krpc.query(b"ah", "frobnicate", {"id": me}))
            assert r[b"e"][0] == 204
            r = await ask(krpc.query(b"ai", "ping", {}))
            assert r[b"e"][0] == 203
        finally:
            s.close()
            await node.stop()

    asyncio.run(main())


def test_sixty_node_network_lookups_converge():
    async def main() -> None:
        nodes = [DhtNode("127.0.0.1", 0) for _ in range(60)]
        first = await nodes[0].start()
        for n in nodes[1:]:
            await n.start()
            n.bootstrap_nodes = [first]
        await asyncio.gather(*(n.bootstrap() for n in nodes[1:]))
        await nodes[0].bootstrap()
        try:
            assert all(len(n.table) >= K for n in nodes)
            keys = [os.urandom(20) for _ in range(3)]
            for i, key in enumerate(keys):
                assert await nodes[5 + i].announce(key, 40000 + i) > 0
            for i, key in enumerate(keys):
                results = await asyncio.gather(*(n.get_peers(key) for n in nodes[::7]))
                assert all(("127.0.0.1", 40000 + i) in r for r in results), (i, results)
            assert sum(len(n.store) for n in nodes) <= 3 * K
        finally:
            await asyncio.gather(*(n.stop() for n in nodes))

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_datagrams_never_crash(data):
    node = DhtNode("127.0.0.1", 0)
    sent = []
    node._send = lambda d, a: sent.append(d)  # type: ignore[method-assign]
    node.datagram_received(data, ("127.0.0.1", 5))
    node.datagram_received(bencode.encode({"t": b"x", "y": "q", "q": "get_peers", "a": {"id": data[:20].ljust(20, b"0"), "info_hash": data}}), ("127.0.0.1", 5))
    assert all(len(d) <= krpc.MAX_DATAGRAM for d in sent)


def test_oversized_and_flooded_storage_stays_bounded():
    node = DhtNode("127.0.0.1", 0)
    node._send = lambda d, a: None  # type: ignore[method-assign]
    node.datagram_received(b"d" + b"x" * 5000, ("127.0.0.1", 5))
    assert node.stats["dropped"] == 1
    for i in range(3000):
        tok = node.tokens.issue("127.0.0.1", node.tokens.rotated)
        msg = krpc.query(b"t1", "announce_peer", {"id": os.urandom(20), "info_hash": b"K" * 20, "port": 1 + i, "token": tok})
        node.datagram_received(msg, ("127.0.0.1", 5))
    assert len(node.store) <= 100 and len(node.table) <= K * 161


def test_dht_node_command_runs_and_answers():
    p = subprocess.Popen([SYNCER, "dht-node", "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        s.sendto(krpc.query(b"zz", "ping", {"id": b"Q" * 20}), ("127.0.0.1", port))
        assert bencode.decode(s.recv(2000))[b"y"] == b"r"
        s.close()
    finally:
        p.terminate()
        assert p.wait(20) == 0

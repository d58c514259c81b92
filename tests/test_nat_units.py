"""Issue 13, pure parts and single-process pieces: the defaults that reach the internet (asserted
here; the suite itself runs in a namespace with loopback only), STUN codec and a client/responder
pair on real sockets, NAT classification, BEP 42 ids (the BEP's test vectors), the DHT routing
table kept between runs and bootstrap nodes asked only while the table is thin, dial plans with
helper devices, NAT-PMP messages."""

from __future__ import annotations

import asyncio
import json
import struct

from syncer.config import SETTINGS, load_config
from syncer.discovery.dht import bep42, krpc
from syncer.discovery.dht import node as dht_node
from syncer.discovery.dht.krpc import NodeInfo
from syncer.discovery.dht.node import DhtNode
from syncer.nat import natpmp
from syncer.nat.natkind import DEPENDENT, INDEPENDENT, NO_NAT, UNKNOWN, Observation, classify
from syncer.nat.policy import Route, plan
from syncer.net import stun
from syncer.net.udp import UdpEndpoint


def test_internet_defaults(tmp_path):
    cfg = load_config(tmp_path / "config.toml")
    assert cfg.get("discovery.dht.bootstrap") == [
        "dht.libtorrent.org:25401",
        "router.bittorrent.com:6881",
        "dht.transmissionbt.com:6881",
    ]
    assert cfg.get("nat.stun_servers") == ["stun.l.google.com:19302", "stun.cloudflare.com:3478", "stun.nextcloud.com:443"]
    for switch in ("discovery.dht.enabled", "nat.enabled", "nat.stun", "nat.port_mapping", "nat.assist", "nat.relay_via_devices"):
        assert cfg.get(switch) is True and SETTINGS[switch].kind is bool, switch
    assert cfg.get("listen") == ["tcp://[::]:22000", "quic://[::]:22000"]  # dual stack


# --- STUN ---------------------------------------------------------------------------------------------
def test_stun_request_answer_roundtrip_v4_and_v6():
    txid, req = stun.request()
    assert stun.is_stun(req) and len(txid) == 12
    for source in (("198.51.100.7", 40001), ("2001:db8::5", 22000)):
        resp = stun.answer(req, source)
        assert resp is not None and stun.parse_response(resp, txid) == source
        assert stun.parse_response(resp, b"x" * 12) is None  # another transaction
    assert stun.answer(b"\x00\x01garbage-garbage-garbage", ("1.2.3.4", 1)) is None


def test_stun_parses_an_rfc3489_mapped_address_answer():
    txid = b"T" * 12
    value = struct.pack("!BBH", 0, 1, 3478) + bytes([192, 0, 2, 9])
    body = struct.pack("!HH", stun.MAPPED_ADDRESS, len(value)) + value
    msg = struct.pack("!HHI12s", stun.BINDING_SUCCESS, len(body), stun.MAGIC, txid) + body
    assert stun.parse_response(msg, txid) == ("192.0.2.9", 3478)


def test_stun_client_and_responder_on_real_sockets():
    async def main() -> None:
        server, client = await UdpEndpoint.bind("127.0.0.1", 0), await UdpEndpoint.bind("127.0.0.1", 0)
        responder = stun.StunResponder(server)
        try:
            mapped = await stun.binding(client, server.local_address, timeout=5)
            assert mapped == client.local_address and responder.answered == 1
        finally:
            server.close()
            client.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_nat_kind_from_two_observers():
    def obs(observer_ip: str, mapped: tuple[str, int], local=("10.0.0.2", 22000)) -> Observation:
        return Observation(f"stun:{observer_ip}", (observer_ip, 3478), local, mapped, 0.0)

    assert classify([]) == UNKNOWN
    assert classify([obs("198.18.0.10", ("198.18.0.1", 22000))]) == UNKNOWN  # one observer cannot tell
    assert classify([obs("198.18.0.10", ("198.18.0.1", 22000)), obs("198.18.0.11", ("198.18.0.1", 22000))]) == INDEPENDENT
    assert classify([obs("198.18.0.10", ("198.18.0.1", 40001)), obs("198.18.0.11", ("198.18.0.1", 51234))]) == DEPENDENT
    public = ("198.18.0.10", 22000)
    assert classify([obs("198.18.0.11", public, public), obs("198.18.0.12", public, public)]) == NO_NAT


# --- DHT ------------------------------------------------------------------------------------------------
def test_bep42_test_vectors():
    vectors = [("124.31.75.21", 1, "5fbfbf"), ("21.75.31.124", 86, "5a3ce9"), ("65.23.51.170", 22, "a5d432"),
               ("84.124.73.14", 65, "1b0321"), ("43.213.53.83", 90, "e56f6c")]
    for ip, r, prefix in vectors:
        nid = bep42.node_id(ip, r)
        assert nid[:2].hex() == prefix[:4] and nid[2] & 0xF8 == int(prefix[4:], 16) & 0xF8 and nid[19] == r
        assert bep42.valid(nid, ip) and not bep42.valid(nid, "8.8.4.4")


def test_external_address_votes_give_a_bep42_id_and_keep_the_table():
    node = DhtNode("127.0.0.1", 0)
    node.table.add(NodeInfo(b"N" * 20, "198.51.100.1", 6881), 0)
    for _ in range(2):  # two BEP 42 answers agree on our address
        node._vote(krpc.encode_peer("203.0.113.50", 6881))
    assert node.external_ip == "203.0.113.50" and bep42.valid(node.id, "203.0.113.50")
    assert [n.id for n in node.table.closest(b"N" * 20)] == [b"N" * 20]


def test_routing_table_is_saved_and_reused_and_bootstrap_only_while_thin(tmp_path, monkeypatch):
    state = tmp_path / "dht-nodes.json"
    thin = 6  # how many nodes a lookup in a 48-node network surely reaches (k = 8 respond)
    monkeypatch.setattr(dht_node, "THIN", thin)

    async def main() -> None:
        helpers = [DhtNode("127.0.0.1", 0) for _ in range(48)]
        for h in helpers:
            await h.start()
        boot = DhtNode("127.0.0.1", 0)
        await boot.start()
        try:
            for h in [boot, *helpers]:  # a small network: everybody knows everybody
                for o in helpers:
                    h.table.add(NodeInfo(o.id, o.host, o.port), 0)
            first = DhtNode("127.0.0.1", 0, bootstrap=[(boot.host, boot.port)], state_file=state)
            await first.start()
            assert await first.bootstrap() >= thin and first.bootstraps == 1
            await first.stop()  # saves the table
            saved = json.loads(state.read_text())
            assert len(saved["nodes"]) >= thin and saved["id"] == first.id.hex()
            assert oct(state.stat().st_mode & 0o777) == "0o600"

            # next run: the saved nodes suffice, the bootstrap node is not asked
            asked = boot.stats["queries_in"]
            again = DhtNode("127.0.0.1", 0, bootstrap=[(boot.host, boot.port)], state_file=state)
            await again.start()
            assert again.id == first.id
            assert await again.bootstrap() >= thin and again.bootstraps == 0
            assert boot.stats["queries_in"] == asked or all(n.ip == "127.0.0.1" for n in again.table.closest(again.id))
            await again.stop()
        finally:
            for h in [*helpers, boot]:
                await h.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_thin_table_bootstrap_backs_off():
    node = DhtNode("127.0.0.1", 0, bootstrap=[("127.0.0.1", 9)])
    now = 0.0
    assert node.bootstrap_backoff.due(now)
    node.bootstrap_backoff.failed(now)
    assert not node.bootstrap_backoff.due(30.0) and node.bootstrap_backoff.next_at >= 45.0


# --- dialing ---------------------------------------------------------------------------------------------
def test_plan_puts_helpers_after_servers_and_relaying_through_a_device_last():
    attempts = plan(["tcp://192.0.2.1:22000"], ["relay://198.51.100.1:22067"], helpers=["DEVICE-C"])
    assert [(a.route, a.kind) for a in attempts] == [
        (Route.DIRECT, "tcp"),
        (Route.PUNCHED, "punch"),
        (Route.PUNCHED, "assist-punch"),
        (Route.RELAYED, "relay"),
        (Route.VIA, "assist-relay"),
    ]
    assert [a.kind for a in plan([], [], helpers=["C"], nat_enabled=False, relay_via_devices=False)] == []


# --- NAT-PMP ----------------------------------------------------------------------------------------------
def test_natpmp_messages():
    assert natpmp.external_address_request() == b"\x00\x00"
    req = natpmp.map_request("UDP", 22000, 22000, 3600)
    assert req == struct.pack("!BBHHHI", 0, 1, 0, 22000, 22000, 3600)
    resp = struct.pack("!BBHIHHI", 0, 129, 0, 12345, 22000, 40000, 3600)
    assert natpmp.parse_map_response(resp, "UDP") == (22000, 40000, 3600)
    addr = struct.pack("!BBHI", 0, 128, 0, 12345) + bytes([198, 18, 0, 1])
    assert natpmp.parse_address_response(addr) == "198.18.0.1"
    assert natpmp.parse_map_response(struct.pack("!BBHIHHI", 0, 129, 3, 1, 0, 0, 0), "UDP") is None  # refused


def test_doctor_without_a_daemon_probes_stun_itself(tmp_path):
    import os
    import subprocess
    import sys

    from tests.helpers import SYNCER

    home = tmp_path / "home"
    home.mkdir()
    # two observers (two loopback addresses): the public address here is the local one
    server = subprocess.Popen([sys.executable, "-m", "syncer.net.stun", "127.0.0.1", "127.0.0.2", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("STUN listening on")
        addrs = line.split("on ", 1)[1].split()
        env = dict(os.environ, SYNCER_HOME=str(home))
        subprocess.run([SYNCER, "config", "set", "nat.stun_servers", ",".join(addrs)], env=env, check=True, capture_output=True)
        out = subprocess.run([SYNCER, "doctor", "--json"], env=env, check=True, capture_output=True, text=True, timeout=60)
        report = json.loads(out.stdout)
        assert report["daemon"] == "not running"
        assert report["nat"]["nat_type"] == "no-nat", report
        assert {e["observer"] for e in report["nat"]["external_addresses"]} == {f"stun:{a}" for a in addrs}
    finally:
        server.terminate()
        server.wait(10)

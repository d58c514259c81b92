"""Interop with a standard BitTorrent implementation (libtorrent): its DHT bootstraps from our
node, announces into it and looks up peers in it, and answers our queries; it announces to our
tracker over the BEP 3 HTTP protocol. Loopback only: libtorrent's default bootstrap nodes, LSD,
UPnP and NAT-PMP are off."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from syncer.discovery.dht.node import DhtNode
from syncer.discovery.peerstore import PeerEntry
from syncer.discovery.tracker_server import TrackerServer

lt = pytest.importorskip("libtorrent", reason="libtorrent (the test extra) is not installed")

DEADLINE = 20.0


def session(**extra) -> lt.session:
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "alert_mask": lt.alert.category_t.all_categories,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
    }
    settings.update(extra)
    return lt.session(settings)


async def poll(pred, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.05)  # lets our node's datagram handlers run; bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


def test_libtorrent_dht_uses_our_node_and_answers_us():
    async def main() -> None:
        node = DhtNode("127.0.0.1", 0)
        _, port = await node.start()
        ses = session(enable_dht=True, dht_bootstrap_nodes=f"127.0.0.1:{port}")
        try:
            await poll(lambda: node.stats["queries_in"] > 0 and len(node.table) > 0, "libtorrent to query our node")
            # libtorrent announces; our node stores it (token round trip done by libtorrent)
            ih = os.urandom(20)
            ses.dht_announce(lt.sha1_hash(ih), 45678, 0)
            await poll(lambda: node.store.peers(ih, time.monotonic()), "announce_peer from libtorrent")
            assert node.store.peers(ih, time.monotonic())[0].port == 45678
            # libtorrent looks up a key our node holds
            key = os.urandom(20)
            node.store.announce(key, PeerEntry("127.0.0.1", 5555, "", b"", time.monotonic()))
            ses.dht_get_peers(lt.sha1_hash(key))
            found: list = []

            def reply():
                for a in ses.pop_alerts():
                    if isinstance(a, lt.dht_get_peers_reply_alert):
                        found.extend(a.peers())
                return found

            await poll(reply, "libtorrent get_peers reply")
            assert ("127.0.0.1", 5555) in found
            # and our node queries libtorrent's node
            lt_node = node.table.closest(ih)[0]
            assert len(await node.ping(lt_node.addr)) == 20
        finally:
            await node.stop()

    asyncio.run(main())


def test_libtorrent_announces_to_our_tracker():
    async def main() -> None:
        tracker = TrackerServer("127.0.0.1", 0, interval=30)
        host, port = await tracker.start()
        ses = session()
        try:
            ih = os.urandom(20)
            atp = lt.add_torrent_params()
            atp.info_hashes = lt.info_hash_t(lt.sha1_hash(ih))
            atp.save_path = "/tmp"
            atp.trackers = [f"http://{host}:{port}/announce"]
            h = ses.add_torrent(atp)
            await poll(lambda: tracker.store.peers(ih, time.monotonic()), "libtorrent's announce")
            peer = tracker.store.peers(ih, time.monotonic())[0]
            assert peer.ip == "127.0.0.1" and len(peer.peer_id) == 20
            replies: list = []

            def reply():
                for a in ses.pop_alerts():
                    if isinstance(a, lt.tracker_reply_alert):
                        replies.append(a)
                return replies

            await poll(reply, "libtorrent to accept our tracker's reply")
            ses.remove_torrent(h)
        finally:
            await tracker.stop()

    asyncio.run(main())

"""Joining with only the code through a `syncer tracker` and a `syncer dht-node`, and with a
link whose only address is a `syncer relay` (the inviter answers a stranger's relay invitation
while an invite is active). Real daemons and servers on loopback."""

from __future__ import annotations

import json
import re

import pytest

from tests.daemons import cluster, wait_until
from tests.syncfix import wait_same
from tests.test_discovery_e2e import server
from tests.test_invite_e2e import configure, invite, invite_row, join, photos
from tests.test_relay_invites_e2e import relay_process

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_join_with_only_the_code_through_a_tracker_then_the_dht(tmp_path):
    with server("tracker", "--interval", "10") as tport, server("dht-node") as dport, cluster(tmp_path, "a", "b") as (a, b):
        tracker = {"discovery.tracker.enabled": True, "discovery.tracker.urls": [f"http://127.0.0.1:{tport}/announce"]}
        dht = {"discovery.dht.enabled": True, "discovery.dht.bootstrap": [f"127.0.0.1:{dport}"]}
        configure(a, **tracker, **dht)
        configure(b, **tracker)
        photos(a, tmp_path)
        docs = tmp_path / "a-docs"
        docs.mkdir()
        (docs / "cv.txt").write_text("cv")
        a.syncer("share", str(docs), "--id", "docs-1", "--label", "Docs", check=True)
        a.start()
        inv = invite(a)
        r = join(b, inv["code"], str(tmp_path / "b"), timeout=40)  # b has no daemon: its own lookups
        assert r.returncode == 0, r.stderr
        assert "found via tracker" in r.stdout
        assert invite_row(a, inv["id"])["joined"] == [b.device_id]
        # a second folder, to the device now paired, found through the DHT alone
        configure(b, **{"discovery.tracker.enabled": False}, **dht)
        inv = json.loads(a.syncer("invite", "docs-1", "--json", check=True).stdout)
        r = join(b, inv["code"], str(tmp_path / "b-docs"), timeout=40)
        assert r.returncode == 0, r.stderr
        assert "found via dht" in r.stdout
        folders = {f["id"]: f for f in json.loads(b.syncer("folders", "--json", check=True).stdout)}
        assert folders["docs-1"]["label"] == "Docs" and folders["ph-1"]["devices"] == [a.device_id]


@pytest.mark.slow
def test_join_through_a_relay_with_a_link(tmp_path):
    with relay_process(tmp_path / "relay-home") as url, cluster(tmp_path, "a", "b") as (a, b):
        configure(a, relays=[url])
        src = photos(a, tmp_path)
        a.start()
        wait_until(lambda: "registered at relay" in a.log_text(), 30, "a registered at the relay")
        inv = invite(a)
        assert any(x.startswith("relay://") for x in re.findall(r"addr=([^&]+)", inv["link"]))
        only_relay = re.sub(r"&addr=(tcp|quic)[^&]*", "", inv["link"])  # no direct address left
        r = join(b, only_relay, str(tmp_path / "b"))
        assert r.returncode == 0, r.stderr
        assert "found via link at relay://" in r.stdout
        b.start()
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 60, "connected through the relay")
        assert b.device(a)["transport"] == "relay"
        wait_same(src, tmp_path / "b")

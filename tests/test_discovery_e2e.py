"""Two daemons with no static addresses find each other and sync through (a) a `syncer tracker`,
(b) a `syncer dht-node` as bootstrap, (c) LAN beacons — each on loopback only."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.daemons import Node, cluster, wait_until
from tests.helpers import SYNCER
from tests.syncfix import share, wait_same

pytestmark = pytest.mark.e2e
FID = "found-1"


@contextmanager
def server(*args: str) -> Iterator[int]:
    p = subprocess.Popen([SYNCER, *args, "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        p.terminate()
        assert p.wait(20) == 0


def _sync_and_check_source(tmp_path: Path, a: Node, b: Node, source: str) -> None:
    da, db_ = tmp_path / "A", tmp_path / "B"
    da.mkdir()
    (da / "found.txt").write_text(f"found via {source}")
    share(a, da, FID)
    share(b, db_, FID)
    a.start()
    b.start()
    a.pair(b, address=False)
    b.pair(a, address=False)
    wait_until(lambda: a.connected_to(b) and b.connected_to(a), 60, f"connected via {source}")
    wait_same(da, db_)
    sources = {x["source"] for n, o in ((a, b), (b, a)) for x in n.device(o)["addresses"]}
    assert source in sources, sources
    # no static address was ever configured
    assert all(x["source"] != "static" for x in a.device(b)["addresses"])


def test_found_through_tracker_only(tmp_path):
    with server("tracker", "--interval", "10") as port, cluster(tmp_path, "a", "b") as (a, b):
        for n in (a, b):
            n.syncer("config", "set", "discovery.tracker.enabled", "true", check=True)
            n.syncer("config", "set", "discovery.tracker.urls", f"http://127.0.0.1:{port}/announce", check=True)
        _sync_and_check_source(tmp_path, a, b, "tracker")


def test_found_through_dht_bootstrap_only(tmp_path):
    with server("dht-node") as port, cluster(tmp_path, "a", "b") as (a, b):
        for n in (a, b):
            n.syncer("config", "set", "discovery.dht.enabled", "true", check=True)
            n.syncer("config", "set", "discovery.dht.bootstrap", f"127.0.0.1:{port}", check=True)
        _sync_and_check_source(tmp_path, a, b, "dht")


def test_found_through_lan_beacons_only(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with cluster(tmp_path, "a", "b") as (a, b):
        for n in (a, b):
            n.syncer("config", "set", "discovery.lan.enabled", "true", check=True)
            n.syncer("config", "set", "discovery.lan.port", str(port), check=True)
            n.syncer("config", "set", "discovery.lan.address", "127.255.255.255", check=True)
        _sync_and_check_source(tmp_path, a, b, "lan")

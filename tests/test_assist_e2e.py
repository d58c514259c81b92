"""Help from a third paired device, on loopback with real daemons: A and B know only C's address
and each other's device ID; C coordinates a hole punch between them (QUIC, shown as punched), or
relays a channel with end-to-end TLS inside when punching is off (shown as relay (via c)).
The NAT-lab versions of both are in tests/test_nat_assist_lab.py."""

from __future__ import annotations

import os

import pytest

from tests.daemons import Node, cluster, wait_until
from tests.syncfix import share, wait_same

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
FID = "through-c"
LISTEN = ["tcp://127.0.0.1:0", "quic://127.0.0.1:0"]


def setup(a: Node, b: Node, c: Node, tmp_path, punching: bool) -> tuple:
    da, db_ = tmp_path / "A", tmp_path / "B"
    da.mkdir()
    (da / "hello.bin").write_bytes(os.urandom(300_000))
    share(a, da, FID)
    share(b, db_, FID)
    for n in (a, b, c):
        n.syncer("config", "set", "nat.enabled", "true", check=True)
        n.syncer("config", "set", "nat.stun_servers", "", check=True)
        n.syncer("config", "set", "nat.port_mapping", "false", check=True)
    if not punching:
        for n in (a, b):
            n.syncer("config", "set", "nat.assist", "false", check=True)
    c.start(LISTEN)
    for n in (a, b):
        n.syncer("pair", c.device_id, "--name", "c", "--address", c.listen_url(), check=True)
        c.syncer("pair", n.device_id, "--name", n.name, check=True)
    a.syncer("pair", b.device_id, "--name", "b", check=True)  # by device ID alone
    b.syncer("pair", a.device_id, "--name", "a", check=True)
    a.start(LISTEN)
    b.start(LISTEN)
    return da, db_


def test_punched_through_a_paired_device(tmp_path):
    with cluster(tmp_path, "a", "b", "c") as (a, b, c):
        da, db_ = setup(a, b, c, tmp_path, punching=True)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 60, "a and b connected through c's help")
        wait_same(da, db_, 60)
        row = a.device(b)
        assert row["transport"] == "quic (punched)" and row["route"] == "punched", row
        assert b.device(a)["transport"] == "quic (punched)"
        assert not (tmp_path / "home-c" / FID).exists()
        ok = [x for x in row["attempts"] if x["result"] == "ok"]
        assert ok and ok[-1]["kind"] == "assist-punch"


def test_relayed_through_a_paired_device_when_punching_is_off(tmp_path):
    with cluster(tmp_path, "a", "b", "c") as (a, b, c):
        da, db_ = setup(a, b, c, tmp_path, punching=False)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 60, "a and b connected through c")
        wait_same(da, db_, 60)
        assert a.device(b)["transport"] == "relay (via c)", a.device(b)
        assert b.device(a)["transport"] == "relay (via c)"
        assert a.device(b)["route"] == "via"
        # and a bigger file both ways through the channel (window and credit at work)
        (db_ / "back.bin").write_bytes(os.urandom(3 << 20))
        b.syncer("scan", FID, check=True)
        wait_same(da, db_, 60, "3 MiB back through c")

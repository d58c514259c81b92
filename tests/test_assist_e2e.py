"""Help from a third paired device, on loopback with real daemons: A and B know only C's address
and each other's device ID; with punching off, C relays a channel with end-to-end TLS inside
(shown as relay (via c)), megabytes both ways under the channel's credit window, and the relayed
connection is replaced by a direct one once an address is known. Punching through C and relaying
across real NATs are in tests/test_nat_assist_lab.py."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Node, wait_until
from tests.natlab.homes import make_home, pair
from tests.syncfix import share, wait_same

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]
FID = "through-c"
LISTEN = ["tcp://127.0.0.1:0", "quic://127.0.0.1:0"]


class FastNode(Node):
    """A harness Node whose home is set up in-process (a CLI process per setting made these
    three-device tests spend most of their time starting Python)."""

    def __init__(self, root: Path, name: str, settings: dict[str, str]) -> None:
        self.name = name
        self.home = root / f"home-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.device_id = make_home(self.home, {**QUIET_NODE, "device.name": name, **settings})


QUIET_NODE = {"nat.enabled": "true", "nat.stun_servers": "", "nat.port_mapping": "false"}


@contextlib.contextmanager
def three(tmp_path: Path, punching: bool = False) -> Iterator[tuple[Node, Node, Node, Path, Path]]:
    off = {} if punching else {"nat.assist": "false"}
    a, b, c = FastNode(tmp_path, "a", off), FastNode(tmp_path, "b", off), FastNode(tmp_path, "c", {})
    try:
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "hello.bin").write_bytes(os.urandom(300_000))
        share(a, da, FID)
        share(b, db_, FID)
        c.start(LISTEN)
        for n in (a, b):
            pair(n.home, c.device_id, "c", [c.listen_url()])
            c.syncer("pair", n.device_id, "--name", n.name, check=True)  # the running c reloads
        pair(a.home, b.device_id, "b")  # by device ID alone
        pair(b.home, a.device_id, "a")
        a.start(LISTEN)
        b.start(LISTEN)
        yield a, b, c, da, db_
    except BaseException:
        for n in (a, b, c):
            sys.stderr.write(f"\n----- log of {n.name} -----\n{n.log_text()[-6000:]}\n")
        raise
    finally:
        for n in (a, b, c):
            n.stop()


def test_relayed_through_a_paired_device_when_punching_is_off(tmp_path):
    with three(tmp_path, punching=False) as (a, b, c, da, db_):
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 60, "a and b connected through c")
        wait_same(da, db_, 60)
        assert a.device(b)["transport"] == "relay (via c)", a.device(b)
        assert b.device(a)["transport"] == "relay (via c)"
        assert a.device(b)["route"] == "via"
        # and a bigger file both ways through the channel (window and credit at work)
        (db_ / "back.bin").write_bytes(os.urandom(3 << 20))
        b.syncer("scan", FID, check=True)
        wait_same(da, db_, 60, "3 MiB back through c")


def test_a_relayed_connection_is_upgraded_once_a_direct_address_is_known(tmp_path):
    with three(tmp_path, punching=False) as (a, b, c, da, db_):
        wait_until(lambda: a.connected_to(b) and a.device(b)["transport"] == "relay (via c)", 60, "relayed through c")
        wait_same(da, db_, 60)
        a.pair(b)  # now a knows b's address: the next upgrade round goes direct
        row = wait_until(lambda: (r := a.device(b))["connected"] and r["route"] == "direct" and r, 60, "upgraded to direct")
        assert row["transport"] == "tcp"
        wait_until(lambda: b.device(a)["route"] == "direct", 30, "b keeps the direct one too")

"""End-to-end: real daemons on loopback connect, refuse strangers, survive garbage."""

from __future__ import annotations

import json
import os
import socket
import ssl

import pytest

from tests.daemons import cluster, wait_until
from tests.helpers import run_syncer

pytestmark = pytest.mark.e2e


def test_paired_devices_connect_and_report_each_other(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        a.start()
        b.start()
        a.pair(b)
        b.pair(a)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), what="a and b connected")
        row = a.device(b)
        assert row["transport"] == "tcp"
        assert row["address"].startswith("tcp://127.0.0.1:")
        assert row["name"] == "b"
        devices = json.loads(a.syncer("devices", "--json", check=True).stdout)
        assert [d["device_id"] for d in devices] == [b.device_id]
        assert devices[0]["connected"] is True
        # one connection per pair even though both sides dial
        assert a.log_text().count("connected to") >= 1


def test_unpaired_device_is_refused_and_listed_as_pending(tmp_path):
    with cluster(tmp_path, "a", "b", "c") as (a, b, c):
        for n in (a, b, c):
            n.start()
        a.pair(b)
        b.pair(a)
        c.pair(a)  # c knows a, but a never paired c
        wait_until(lambda: a.connected_to(b), what="a and b connected")
        pend = wait_until(
            lambda: [d for d in json.loads(a.syncer("pending", "--json", check=True).stdout)["devices"] if d["device_id"] == c.device_id],
            what="c pending at a",
        )
        assert pend[0]["address"].startswith("tcp://127.0.0.1:")
        assert c.device_id not in [d["device_id"] for d in a.status()["devices"]]
        assert not c.connected_to(a)
        # c never got any folder information from a
        assert json.loads(c.syncer("pending", "--json", check=True).stdout)["folders"] == []
        assert "refused" in a.log_text()
        # pairing c afterwards lets it in, and pending forgets it
        a.pair(c)
        wait_until(lambda: a.connected_to(c) and c.connected_to(a), what="a and c connected after pairing")
        assert json.loads(a.syncer("pending", "--json", check=True).stdout)["devices"] == []


def test_garbage_and_plain_tcp_are_closed_daemon_keeps_serving(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        a.start()
        host, port = a.listen_url().removeprefix("tcp://").rsplit(":", 1)
        # plain TCP with garbage
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(os.urandom(4096) + b"GET / HTTP/1.1\r\n\r\n")
            s.settimeout(15)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        # a TLS client without a certificate
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"hello?")
                    tls.settimeout(15)
                    assert tls.recv(100) == b""
            except (ssl.SSLError, ConnectionResetError, OSError):
                pass
        # a real device with a certificate, paired, still gets in
        b.start()
        a.pair(b)
        b.pair(a)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), what="a and b connected after garbage")
        assert a.proc is not None and a.proc.poll() is None


def test_start_stop_status_and_refuse_second_daemon(tmp_path, home):
    assert run_syncer(home, "config", "set", "listen", "tcp://127.0.0.1:0", check=True).returncode == 0
    run_syncer(home, "config", "set", "api.address", "127.0.0.1:0", check=True)
    for key in ("discovery.tracker.enabled", "discovery.dht.enabled", "discovery.lan.enabled"):
        run_syncer(home, "config", "set", key, "false", check=True)
    st = run_syncer(home, "status")
    assert st.returncode != 0 and "not running" in st.stdout
    try:
        out = run_syncer(home, "start", check=True).stdout
        assert "started" in out
        status = json.loads(run_syncer(home, "status", "--json", check=True).stdout)
        assert status["device_id"] == run_syncer(home, "id", check=True).stdout.strip()
        assert status["listen"][0].startswith("tcp://127.0.0.1:")
        again = run_syncer(home, "start")
        assert again.returncode != 0 and "already running" in again.stderr
        fg = run_syncer(home, "run")
        assert fg.returncode != 0 and "already running" in fg.stderr
    finally:
        stop = run_syncer(home, "stop")
    assert stop.returncode == 0, stop.stderr
    assert run_syncer(home, "status").returncode != 0
    assert (home / "syncer.log").exists()



def _set_paired(nodes, paired: bool) -> None:
    """Pair (or unpair) every node with every other at once: config edits first, then every
    daemon told to reload, so they all dial each other at the same moment."""
    from syncer.api import client
    from syncer.config import DeviceConfig, edit_config
    from syncer.paths import get_paths

    homes = [get_paths({"SYNCER_HOME": str(n.home)}) for n in nodes]
    for n, paths in zip(nodes, homes, strict=True):
        with edit_config(paths.config_file) as cfg:
            for o in nodes:
                if o is n:
                    continue
                if paired:
                    cfg.upsert_device(DeviceConfig(id=o.device_id, name=o.name, addresses=[o.listen_url()]))
                else:
                    cfg.remove_device(o.device_id)
    for paths in homes:
        client.reload_if_running(paths)


def test_both_sides_dialing_at_once_end_with_one_working_connection(tmp_path):
    """Both daemons are paired at the same moment and dial each other at once, several times
    over: however the duplicate connections race, both end up on the same one and data flows
    (two handshakes finishing together once both replaced the same session, leaving one
    orphaned: its peer kept a connection the other side no longer used, and the sync never
    started)."""
    from tests.syncfix import share

    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        db_.mkdir()
        a.start()
        b.start()
        share(a, da, "race1")
        share(b, db_, "race1")
        for i in range(8):
            _set_paired([a, b], True)
            (da / f"round{i}.txt").write_text(f"round {i}")
            a.syncer("scan", "race1", check=True)
            wait_until(lambda i=i: (db_ / f"round{i}.txt").exists() and (db_ / f"round{i}.txt").read_text() == f"round {i}", 30, f"round {i} synced")
            wait_until(lambda: a.connected_to(b) and b.connected_to(a), 30, f"round {i}: both see the connection")
            _set_paired([a, b], False)
            wait_until(lambda: not any(d["connected"] for n in (a, b) for d in n.status()["devices"]), 30, f"round {i}: disconnected")


def test_the_device_that_waits_its_turn_still_dials_when_only_it_can(tmp_path):
    """Only the device that gives the other the first dial (DIAL_YIELD) knows the other's
    address: after the wait it dials itself, and they connect."""
    from syncer.deviceid import DeviceId
    from syncer.peer.connections import dials_first

    with cluster(tmp_path, "a", "b") as (a, b):
        a.start()
        b.start()
        first, second = (a, b) if dials_first(DeviceId.parse(a.device_id), DeviceId.parse(b.device_id)) else (b, a)
        first.pair(second, address=False)  # it cannot reach `second`: only the reverse works
        second.pair(first)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 30, "a and b connected")
        assert [e["result"] for e in second.device(first)["attempts"]] == ["ok"]

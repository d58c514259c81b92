"""Invites end to end: real daemons, real sockets, real files (inside scripts/test's loopback
namespace). One command on each side pairs both ways and the folder syncs; used, wrong,
expired codes are refused; only the code is needed on the LAN; a man in the middle that
presents its own certificate fails the key confirmation and learns nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from syncer.api import client
from syncer.config import edit_config
from syncer.discovery.lan import encode_keyed_beacon
from syncer.identity import load_or_create
from syncer.invite.code import InviteCode
from syncer.net.tcp import TcpTransport
from syncer.paths import get_paths
from tests.daemons import Node, cluster, wait_until
from tests.helpers import SYNCER
from tests.syncfix import wait_same

pytestmark = pytest.mark.e2e


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(node: Node, **settings: object) -> None:
    """Settings written in-process (a `syncer config set` per key costs a Python start)."""
    with edit_config(node.home / "config.toml") as cfg:
        for key, value in settings.items():
            cfg.set(key, value)


def lan_on(node: Node, port: int) -> None:
    configure(node, **{"discovery.lan.enabled": True, "discovery.lan.port": port, "discovery.lan.address": "127.255.255.255"})


def photos(node: Node, root: Path) -> Path:
    d = root / f"{node.name}-photos"
    d.mkdir()
    (d / "beach.jpg").write_bytes(os.urandom(300_000))
    (d / "notes").mkdir()
    (d / "notes" / "list.txt").write_text("sunscreen\n")
    node.syncer("share", str(d), "--id", "ph-1", "--label", "Photos", check=True)
    return d


def invite(node: Node, *args: str) -> dict[str, Any]:
    return json.loads(node.syncer("invite", "ph-1", "--json", *args, check=True).stdout)


def api(node: Node, path: str) -> Any:
    return client.call(get_paths({"SYNCER_HOME": str(node.home)}), "GET", path)


def invite_row(node: Node, nameplate: int) -> dict[str, Any]:
    return next(r for r in api(node, "/rest/invites") if r["id"] == nameplate)


def join(node: Node, text: str, *args: str, cwd: Path | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYNCER_HOME=str(node.home))
    return subprocess.run(
        [SYNCER, "join", text, *args, "--timeout", str(timeout)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout + 60,
    )


def config_devices(node: Node) -> list[dict[str, Any]]:
    return json.loads(node.syncer("devices", "--json", check=True).stdout)


def test_invite_then_join_pairs_both_ways_and_syncs_and_a_used_code_is_refused(tmp_path):
    with cluster(tmp_path, "a", "b", "c") as (a, b, c):
        src = photos(a, tmp_path)
        a.start()
        b.start()
        human = a.syncer("invite", "ph-1", check=True).stdout
        assert "code: " in human and "link: syncer://join?" in human and "▀" in human  # the QR code
        inv = invite(a)
        r = join(b, inv["link"], str(tmp_path / "b-photos"))
        assert r.returncode == 0, r.stderr
        assert "paired with a" in r.stdout and "joined folder 'Photos' (ph-1)" in r.stdout
        # paired both ways without a device ID typed anywhere, and the folder syncs
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 30, "a and b connected")
        devices = a.syncer("devices", check=True).stdout  # "since" is a local date, not an epoch float
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d \(\d+s ago\)", devices) and not re.search(r"\d{9,}\.\d", devices)
        wait_same(src, tmp_path / "b-photos")
        (tmp_path / "b-photos" / "from-b.txt").write_text("back")
        wait_until(lambda: (src / "from-b.txt").exists(), 60, "b's file at a")
        folder = next(f for f in json.loads(b.syncer("folders", "--json", check=True).stdout) if f["id"] == "ph-1")
        assert folder["label"] == "Photos" and folder["devices"] == [a.device_id]
        row = invite_row(a, inv["id"])
        assert row["status"] == "used" and row["joined"] == [b.device_id]
        # the same link again, from another device (no daemon there): refused, nothing paired
        r = join(c, inv["link"], str(tmp_path / "c-photos"))
        assert r.returncode != 0 and "already used" in r.stderr, r.stderr
        assert config_devices(c) == [] and not (tmp_path / "c-photos").exists()
        assert all(d["device_id"] != c.device_id for d in a.status()["devices"])


def test_join_on_the_lan_with_only_the_code_and_no_daemon(tmp_path):
    port = free_udp_port()
    with cluster(tmp_path, "a", "b") as (a, b):
        for n in (a, b):
            lan_on(n, port)
        src = photos(a, tmp_path)
        a.start()
        inv = invite(a, "--read-only", "--uses", "2")
        work = tmp_path / "work"
        work.mkdir()
        r = join(b, inv["code"], cwd=work)  # no PATH: ./Photos
        assert r.returncode == 0, r.stderr
        assert "found via lan" in r.stdout and "read-only" in r.stdout
        assert "the daemon is not running: start it with `syncer start`" in r.stdout
        assert (work / "Photos" / ".syncer").is_dir()
        b.start()
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), 30, "a and b connected")
        wait_same(src, work / "Photos")
        row = invite_row(a, inv["id"])
        assert row["status"] == "active" and row["used"] == 1  # one use of two left


def test_wrong_codes_kill_the_invite_and_an_expired_one_is_refused(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        photos(a, tmp_path)
        a.start()
        keep = invite(a)  # another active invite: a's gate stays open, refusals are precise
        inv = invite(a)
        right = InviteCode.parse(inv["code"])
        wrong = str(InviteCode(right.nameplate, (right.words[0], right.words[1], "zoo" if right.words[2] != "zoo" else "able")))
        for k in range(3):
            r = join(b, inv["link"].replace(inv["code"], wrong), str(tmp_path / "b"))
            assert r.returncode != 0 and "refused the code" in r.stderr, r.stderr
            assert invite_row(a, inv["id"])["failures"] == k + 1
        assert invite_row(a, inv["id"])["status"] == "dead"
        r = join(b, inv["link"], str(tmp_path / "b"))  # the right code, too late
        assert r.returncode != 0 and "3 wrong codes" in r.stderr, r.stderr
        assert config_devices(b) == [] and all(d["device_id"] != b.device_id for d in a.status()["devices"])

        short = invite(a, "--expires", "1s")
        wait_until(lambda: invite_row(a, short["id"])["status"] == "expired", 10, "the invite to expire")
        r = join(b, short["link"], str(tmp_path / "b"))
        assert r.returncode != 0 and "this invite has expired" in r.stderr, r.stderr
        out = a.syncer("invites", check=True).stdout
        assert "dead" in out and "expired" in out
        r = a.syncer("invite", "--revoke", str(short["id"]))
        assert r.returncode == 0 and "already ended (expired)" in r.stdout
        # with no invite active at all, the gate closes at once, and the joiner says what that means
        assert "revoked" in a.syncer("invite", "--revoke", str(keep["id"]), check=True).stdout
        r = join(b, keep["link"], str(tmp_path / "b"))
        assert r.returncode != 0 and "has no active invite" in r.stderr, r.stderr
        assert not (tmp_path / "b").exists() and config_devices(b) == []


class Middle:
    """A man in the middle: its own certificate on both sides, piping the plaintext of the
    invite exchange between joiner and inviter, and announcing itself on the LAN under the
    invite's locator key (which whoever watches discovery can see)."""

    def __init__(self, home: Path, inviter_url: str, key: bytes, lan_port: int) -> None:
        self.identity = load_or_create(home / "cert.pem", home / "key.pem")
        self.inviter_url, self.key, self.lan_port = inviter_url, key, lan_port
        self.piped = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.listener = await TcpTransport(self.identity).listen("tcp://127.0.0.1:0", self._on_joiner)
        port = int(self.listener.url.rpartition(":")[2])
        self.beacon = asyncio.ensure_future(self._beacons(port))

    async def _beacons(self, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        while True:
            s.sendto(encode_keyed_beacon(self.key, self.identity.device_id, port), ("127.255.255.255", self.lan_port))
            await asyncio.sleep(0.2)

    async def _on_joiner(self, joiner) -> None:
        joiner.peer_accepted()
        inviter = await TcpTransport(self.identity).connect(self.inviter_url)

        async def pipe(src, dst) -> None:
            while data := await src.read(65536):
                self.piped += len(data)
                await dst.write(data)
            await dst.close()

        await asyncio.gather(pipe(joiner, inviter), pipe(inviter, joiner), return_exceptions=True)

    @contextmanager
    def running(self) -> Iterator[Middle]:
        self._thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            async def stop() -> None:
                self.beacon.cancel()
                await self.listener.close()

            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def test_a_man_in_the_middle_with_its_own_certificate_fails_and_nothing_is_shared(tmp_path):
    port = free_udp_port()
    with cluster(tmp_path, "a", "b") as (a, b):
        lan_on(b, port)  # the inviter is not on the LAN: b can only find the middle
        photos(a, tmp_path)
        a.start()
        inv = invite(a)
        code = InviteCode.parse(inv["code"])
        with Middle(tmp_path / "middle", a.listen_url(), code.locator_key(), port).running() as mitm:
            r = join(b, inv["code"], str(tmp_path / "b"), timeout=15)
        assert mitm.piped > 0  # it did sit in the middle of the exchange
        assert r.returncode != 0 and "refused the code" in r.stderr, r.stderr
        row = invite_row(a, inv["id"])
        assert row["failures"] == 1 and row["status"] == "active" and row["joined"] == []
        assert config_devices(b) == [] and a.status()["devices"] == []
        assert "wrong code from" in a.log_text()

"""Relay invitations against a real daemon behind a real `syncer relay` (issue 10: "an unpaired
stranger makes a daemon accept 199 relay invitations (one relay connection each) before any
device check"): a stranger's flood of session requests makes the victim open no connection at
all, while a paired device still reaches it through the same relay; plus the pure InviteGate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.net.transport import TransportError
from syncer.relay.client import RelayTransport
from syncer.relay.invites import InviteGate
from tests.daemons import cluster, wait_until
from tests.helpers import SYNCER
from tests.natlab.lab import LineReader
from tests.syncfix import share, wait_same

FID = "via-relay"
STRANGER_REQUESTS = 120


def dev(i: int) -> DeviceId:
    return DeviceId(bytes([i]) * 32)


def test_invite_gate_policy_caps_and_rate():
    paired = {dev(1), dev(2)}
    g = InviteGate(lambda d: d in paired, max_total=3, max_per_device=2, rate=1, burst=2)
    assert not g.admit(dev(9), 0) and g.refused == 1  # a stranger: nothing opened
    assert g.admit(dev(1), 0) and g.admit(dev(1), 0)
    assert not g.admit(dev(1), 0)  # per-device concurrency
    assert g.admit(dev(2), 0)
    g.done(dev(1))
    g.done(dev(1))
    assert not g.admit(dev(1), 0.1)  # its burst is used up: rate limited
    assert g.admit(dev(1), 1.5)
    assert g.active == 2 and g.limited == 2


def tcp_peers(pid: int) -> list[tuple[str, int]]:
    """(remote ip, remote port) of the established TCP sockets process `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:  # ESTABLISHED
            ip_hex, port_hex = f[2].split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
            out.append((ip, int(port_hex, 16)))
    return out


@contextlib.contextmanager
def relay_process(home: Path) -> Iterator[str]:
    assert SYNCER
    proc = subprocess.Popen([SYNCER, "relay", "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, SYNCER_HOME=str(home)))
    try:
        out = LineReader(proc)
        out.wait_for("listening on ", 30)
        yield out.wait_for("", 5)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def flood_invitations(url: str, stranger_dir: Path, victim: str, failures: list[int]) -> None:
    """STRANGER_REQUESTS concurrent session requests from an unpaired device."""
    ident = load_or_create(stranger_dir / "cert.pem", stranger_dir / "key.pem")

    async def main() -> None:
        relay = RelayTransport(ident, url)

        async def one() -> None:
            try:
                s = await relay.connect(DeviceId.parse(victim), timeout=4)
                s.abort()
            except TransportError:
                failures.append(1)

        await asyncio.gather(*(one() for _ in range(STRANGER_REQUESTS)))

    asyncio.run(main())


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_stranger_invitation_flood_opens_nothing_and_a_paired_device_gets_through(tmp_path):
    with relay_process(tmp_path / "relay-home") as url, cluster(tmp_path, "a", "b") as (a, b):
        relay_port = int(url.split("://")[1].split("?")[0].rsplit(":", 1)[1])
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "through-the-relay.txt").write_text("paired devices still get through")
        share(a, da, FID)
        share(b, db_, FID)
        for n in (a, b):
            n.syncer("config", "set", "relays", url, check=True)
        b.syncer("pair", a.device_id, "--name", "a", check=True)  # no addresses: only the relay
        b.start()
        assert b.proc is not None
        wait_until(lambda: "registered at relay" in b.log_text(), 30, "victim registered at the relay")
        # its control connection, and now and then its own attempt to reach a through the relay
        assert 1 <= len([p for p in tcp_peers(b.proc.pid) if p[1] == relay_port]) <= 2

        failures: list[int] = []
        flood = threading.Thread(target=flood_invitations, args=(url, tmp_path / "stranger", b.device_id, failures))
        flood.start()
        seen = 0
        try:
            a.syncer("pair", b.device_id, "--name", "b", check=True)
            a.start()

            def synced() -> bool:
                nonlocal seen
                seen = max(seen, len([p for p in tcp_peers(b.proc.pid) if p[1] == relay_port]))  # type: ignore[union-attr]
                return (db_ / "through-the-relay.txt").exists()

            wait_until(synced, 60, "paired device synced through the relay during the flood")
            while flood.is_alive():  # keep counting until the stranger gave up
                synced()
                flood.join(0.05)
        finally:
            flood.join(60)
        wait_same(da, db_, 30)
        assert b.device(a)["transport"] == "relay"
        assert len(failures) == STRANGER_REQUESTS  # the stranger got no session
        # the control connection, the paired device's session and b's own dial of a at most;
        # never one per invitation (there were STRANGER_REQUESTS of them)
        assert seen <= 4, seen

"""Reliability: a peer connects while the daemon is still running its initial scan of a big
folder (20,000 files not yet in its index). The connection must end up syncing -- it used to
get a session with no handler: every message dropped, kept alive by pings, never redialled."""

from __future__ import annotations

import random
import socket
import time

import pytest

from syncer.api import client
from syncer.config import DeviceConfig, edit_config
from syncer.net.transport import TransportError
from syncer.paths import get_paths
from syncer.wire import ClusterConfig, Index, IndexUpdate
from tests.daemons import cluster, wait_until
from tests.hostile import HostilePeer
from tests.syncfix import folder_status, share

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
FID = "startup-1234"
FILES = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _populate(root, rng: random.Random) -> None:
    for i in range(FILES):
        d = root / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}").write_bytes(rng.randbytes(64))


def _scanning(st: dict) -> bool:
    """The daemon's model is not ready yet: no folder status at all, or still scanning."""
    folders = [f for f in st.get("folders", []) if f["id"] == FID]
    return not folders or folders[0]["state"] in ("starting", "scanning")


def test_peer_connecting_during_initial_scan_ends_up_syncing(tmp_path):
    rng = random.Random(20_000)
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        share(a, da, FID)
        share(b, db_, FID)  # shared while empty: the daemon's own start has all 20,000 to hash
        _populate(db_, rng)
        (da / "from-a.txt").write_text("a was there first")
        a.start()
        b.pair(a)  # b knows a; a learns b's address only once b listens
        b.start()  # returns once b's control API is up; its folder scan has just begun
        assert _scanning(b.status()), "b finished its initial scan before a could connect: not the race"
        # what `syncer pair` does, without starting a CLI process (its start-up can outlast the
        # scan on a fast machine): write config.toml, tell the running daemon to reload
        paths = get_paths({"SYNCER_HOME": str(a.home)})
        with edit_config(paths.config_file) as cfg:
            cfg.upsert_device(DeviceConfig(id=b.device_id, name="b", addresses=[b.listen_url()]))
        client.reload_if_running(paths)
        wait_until(lambda: a.connected_to(b), what="a to connect to b")
        raced = _scanning(b.status())
        # whether or not a got in during the scan, the pair must end up syncing both ways
        wait_until(lambda: (da / "from-a.txt").exists() and (db_ / "from-a.txt").exists(), 60, "a's file to reach b")
        # a learns all of b's index, and b's files flow (the whole 20,000 would only cost time)
        wait_until(lambda: (s := folder_status(a, FID))["local_files"] + s["need_files"] >= FILES + 100 + 1, 60,
                   "b's whole index at a")
        wait_until(lambda: sum(1 for _ in da.glob("d*/f*")) >= 1000, 60, "b's files arriving at a")
        assert raced, "a connected only after b's scan: the startup race was not exercised"


def test_peer_connecting_the_moment_the_listener_opens_gets_a_working_session(tmp_path):
    """A paired peer dials in a tight loop while the daemon starts, so it gets in as early as
    the listener lets it: whenever that is, the daemon must then talk to it (ClusterConfig)."""
    with cluster(tmp_path, "b") as (b,):
        db_ = tmp_path / "B"
        share(b, db_, FID)
        _populate(db_, random.Random(1))
        peer = HostilePeer(tmp_path)
        try:
            b.syncer("pair", peer.device_id, "--name", "early", check=True)
            url = f"tcp://127.0.0.1:{_free_port()}"
            b.start(listen=[url], wait=False)
            deadline = time.monotonic() + 60
            while True:
                try:
                    peer._run(peer._connect(url), timeout=15)
                    break
                except (TransportError, OSError):
                    assert time.monotonic() < deadline, "b never accepted a connection"
                    time.sleep(0.002)  # retry interval of the dialing loop, bounded by the deadline
            connected_at = time.monotonic()
            peer.share(FID, b.device_id)

            def offered() -> bool:
                assert not peer.closed.is_set(), "b dropped the early connection"
                return any(f.id == FID for cc in peer.received_of(ClusterConfig) for f in cc.folders)

            wait_until(offered, 60, "b's ClusterConfig offering the folder on the early connection")
            # and b's whole index follows: 20,000 files and their 100 directories
            wait_until(lambda: sum(len(m.files) for m in peer.received_of(Index) + peer.received_of(IndexUpdate)) >= FILES + 100,
                       60, "b's index on the early connection")
            b.wait_ready()
            print(f"index {time.monotonic() - connected_at:.1f}s after connecting")
        finally:
            peer.shutdown()

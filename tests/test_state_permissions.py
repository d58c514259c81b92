"""State directory permissions (issue 10 item 14): SYNCER_HOME 0700, secrets 0600 — created so,
and tightened when they already exist with looser modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from syncer.index.db import IndexDB
from syncer.paths import get_paths
from tests.daemons import cluster, wait_until
from tests.hostile import HostilePeer

SECRETS = ["config.toml", "cert.pem", "key.pem", "index.db", "index.db-wal", "index.db-shm", "api-token", "pending.json"]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_existing_home_and_files_are_tightened(tmp_path, loose_umask):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    for name in SECRETS:
        (home / name).write_text("")
        os.chmod(home / name, 0o644)
    (home / "config.toml").write_text('[device]\nname = "x"\n')
    (home / "cert.pem").unlink()
    (home / "key.pem").unlink()
    get_paths({"SYNCER_HOME": str(home)}).ensure()  # what every command does first
    assert mode(home) == 0o700
    for name in SECRETS:
        if (home / name).exists():
            assert mode(home / name) == 0o600, name


def test_index_db_and_its_wal_files_are_private_even_if_it_existed(tmp_path, loose_umask):
    db_path = tmp_path / "index.db"
    IndexDB(db_path).close()
    os.chmod(db_path, 0o644)
    db = IndexDB(db_path)  # reopened: tightened
    db.conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    db.conn.execute("INSERT INTO t VALUES (1)")
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        assert mode(tmp_path / name) == 0o600, name
    db.close()


@pytest.mark.e2e
def test_fresh_home_of_a_running_daemon_holds_nothing_readable_by_others(tmp_path, loose_umask):
    peer = HostilePeer(tmp_path, "stranger")  # never paired: recorded in pending.json
    try:
        with cluster(tmp_path, "a") as (a,):
            folder = tmp_path / "F"
            folder.mkdir()
            (folder / "x.txt").write_text("x")
            a.syncer("share", str(folder), "--id", "perm-test", check=True)
            a.start()
            peer.knock(a.listen_url())
            wait_until(lambda: (a.home / "pending.json").exists(), 30, "stranger recorded")
            a.stop()
            assert mode(a.home) == 0o700
            for name in SECRETS:
                p = a.home / name
                if p.exists():
                    assert mode(p) == 0o600, name
            assert (a.home / "index.db").exists() and (a.home / "api-token").exists()
    finally:
        peer.shutdown()

"""Reliability: an index.db damaged while the daemon was stopped is moved aside, the folder is
rescanned and re-synced with its peer, and nothing is lost, reverted or duplicated."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

from syncer.index.db import CorruptIndex, IndexDB, is_corruption, recover_if_damaged
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from tests.daemons import cluster, pair_all, wait_until
from tests.faults import garble_pages, settle_wal, truncate_db
from tests.syncfix import folder_status, share, transfer, tree, wait_same, wait_tree

pytestmark = pytest.mark.reliability
FID = "recover-1234"
NOW = 1_700_000_000.0


def _rows(n: int) -> list[FileInfo]:
    return [
        FileInfo(f"d{i % 10}/f{i:05d}", FileType.FILE, i, 1, 0o644, 131072, (os.urandom(32),), "",
                 VersionVector(((7, 1),)), 0, False, 7)
        for i in range(n)
    ]


def _filled_db(path: Path, n: int = 3000) -> None:
    db = IndexDB(path)
    db.update_local("f", _rows(n))
    db.close()
    settle_wal(path)


# --- the database layer -----------------------------------------------------------------------
def test_sound_database_is_kept(tmp_path):
    path = tmp_path / "index.db"
    _filled_db(path)
    assert recover_if_damaged(path, NOW) is None
    assert IndexDB(path).count("f")[0] == 3000
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []


@pytest.mark.parametrize("damage", ["garbage-pages", "truncated", "garbage-header"])
def test_damaged_database_is_moved_aside_and_replaced(tmp_path, damage):
    path = tmp_path / "index.db"
    _filled_db(path)
    original = path.read_bytes()
    if damage == "garbage-pages":
        garble_pages(path, random.Random(1))
    elif damage == "truncated":
        truncate_db(path)
    else:
        with open(path, "r+b") as f:
            f.write(os.urandom(100))
    damaged = path.read_bytes()
    assert damaged != original
    with pytest.raises(CorruptIndex):
        db = IndexDB(path)  # a garbled header fails here, torn pages only in the check
        db.check()
    moved, reason = recover_if_damaged(path, NOW)
    assert moved.name == "index.db.corrupt-20231114-221320" and moved.read_bytes() == damaged
    assert reason and "damaged" not in reason  # the cause itself, e.g. "database disk image is malformed"
    fresh = IndexDB(path)
    fresh.check()
    assert fresh.count("f") == (0, 0) and fresh.folders() == []
    fresh.close()
    # a second damage the same second does not overwrite the first one's evidence
    with open(path, "r+b") as f:
        f.write(os.urandom(100))
    again, _ = recover_if_damaged(path, NOW)
    assert again != moved and moved.read_bytes() == damaged


def test_locked_or_busy_is_not_damage(tmp_path):
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    path = tmp_path / "index.db"
    _filled_db(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        assert recover_if_damaged(path, NOW) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []
    assert IndexDB(path).count("f")[0] == 3000


# --- end to end ---------------------------------------------------------------------------------
def _populate(da: Path, db_: Path) -> None:
    (da / "docs" / "deep").mkdir(parents=True)
    for i in range(300):
        (da / "docs" / f"note{i:03d}.txt").write_text(f"note {i} " * (i + 1))
    (da / "docs" / "deep" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (da / "emptydir").mkdir()
    os.symlink("docs/note000.txt", da / "link")
    db_.mkdir()
    (db_ / "from-b").mkdir()
    for i in range(20):
        (db_ / "from-b" / f"b{i:02d}.txt").write_text(f"b's own file {i}")
    (db_ / "b-edited.txt").write_text("first version, written on b")


@pytest.mark.parametrize("damage", ["garbage-pages", "truncated"])
def test_damaged_index_is_rebuilt_and_nothing_is_lost(tmp_path, damage):
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        _populate(da, db_)
        share(a, da, FID)
        share(b, db_, FID)
        a.start()
        b.start()
        pair_all([a, b])
        before = wait_same(da, db_, what="initial sync")
        for n in (a, b):
            wait_until(lambda n=n: folder_status(n, FID)["state"] == "idle" and folder_status(n, FID)["need_files"] == 0,
                       what=f"{n.name} idle")
        b.stop()
        index = b.home / "index.db"
        settle_wal(index)
        garble_pages(index, random.Random(seed)) if damage == "garbage-pages" else truncate_db(index)
        # while b is down (and its history lost), b changes a file of its own: that edit must win
        edited = "second version, written on b while its index was damaged"
        (db_ / "b-edited.txt").write_text(edited)

        b.start()
        notices = wait_until(lambda: b.status()["notices"], what="b's notice about its index")
        assert len(notices) == 1 and "damaged" in notices[0] and "index.db.corrupt-" in notices[0], notices
        aside = [p.name for p in b.home.iterdir() if p.name.startswith("index.db.corrupt-")]
        assert len(aside) == 1 and aside[0] in notices[0]
        assert "index database was damaged" in b.log_text()

        expected = dict(before, **{"b-edited.txt": tree(db_)["b-edited.txt"]})
        wait_tree(db_, expected, what="b re-synced")
        wait_tree(da, expected, what="b's edit on a")
        assert (da / "b-edited.txt").read_text() == edited
        for n in (a, b):
            wait_until(lambda n=n: folder_status(n, FID)["state"] == "idle" and folder_status(n, FID)["need_files"] == 0,
                       what=f"{n.name} idle after recovery")
        # nothing deleted, reverted or duplicated on either side, and nothing rewritten either:
        # identical content was recognised as the same file, not re-downloaded or copied
        assert tree(da) == expected and tree(db_) == expected
        for d in (da, db_):
            assert [n for n in tree(d) if ".sync-conflict-" in n] == []
            versions = d / ".syncer" / "versions"
            assert not versions.exists() or not any(versions.rglob("*")), sorted(map(str, versions.rglob("*")))
        assert transfer(b, a, FID)["bytes_in"] == 0  # counters of b's new run: nothing fetched
        st = folder_status(b, FID)
        assert st["local_files"] == folder_status(a, FID)["local_files"] and st["error"] == ""

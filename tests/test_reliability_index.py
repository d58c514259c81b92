"""Reliability: an index.db damaged while the daemon was stopped is moved aside, the folder is
rescanned and re-synced with its peer, and nothing is lost, reverted or duplicated."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import msgspec
import pytest

from syncer.index.db import CorruptIndex, IndexDB, is_corruption, recover_if_damaged
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import Ordering, VersionVector
from syncer.model.globalstate import Need, global_version, need
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


# --- what a rebuilt index means for versions (pure) ---------------------------------------------
A, B = 0xA000_0000_0000_0001, 0xB000_0000_0000_0002


def _file(version, content=b"x", mtime=5, by=A) -> FileInfo:
    blocks = (content * 32,) if content else ()
    return FileInfo("f", FileType.FILE, len(content), mtime, 0o644, 131072, blocks, "",
                    VersionVector.from_list(version), 0, False, by)


def test_same_content_from_unrelated_histories_is_adopted_in_place():
    # b rebuilt its index: its rescan says {b:1}, a still says {a:3}; same bytes
    ours, theirs = _file([(B, 1)], by=B), _file([(A, 3)], by=A)
    glob = global_version([ours, theirs])
    assert glob is not None and ours.version.compare(theirs.version) is Ordering.CONCURRENT
    loser = ours if glob is theirs else theirs
    assert need(loser, glob) is Need.METADATA  # no download, no rewrite, no conflict copy
    assert need(glob, glob) is Need.NOTHING
    # a touch or chmod elsewhere: a newer version, same bytes
    assert need(_file([(A, 1)]), _file([(A, 2)], mtime=9)) is Need.METADATA


def test_different_content_still_conflicts_or_applies():
    assert need(_file([(B, 1)], b"mine", mtime=1, by=B), _file([(A, 1)], b"theirs", mtime=2)) is Need.CONFLICT
    assert need(_file([(A, 1)], b"old"), _file([(A, 2)], b"new")) is Need.APPLY
    gone = msgspec.structs.replace(_file([(A, 2)], b""), deleted=True)
    assert need(_file([(A, 1)]), gone) is Need.APPLY


def test_counters_with_a_time_floor_outrun_a_lost_history():
    # before the loss a holds b's version {a:1, b:3}; b restarts from an empty index
    held = VersionVector.from_list([(A, 1), (B, 3)])
    assert VersionVector().update(B).compare(held) is Ordering.LESSER  # plain +1: b's edit loses
    fresh = VersionVector().update(B, floor=1_700_000_000)
    assert fresh.compare(held) is Ordering.CONCURRENT  # an edit is never silently dominated
    assert VersionVector.from_list([(B, 3)]).compare(VersionVector().update(B, floor=1_700_000_000)) is Ordering.LESSER
    assert fresh.update(B, floor=1_700_000_000).counter(B) == 1_700_000_001  # still +1 within a second


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


def _versions(root: Path) -> list[Path]:
    return sorted(p for p in (root / ".syncer" / "versions").rglob("*") if p.is_file())


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
        wait_tree(db_, expected, 45, "b re-synced")  # seconds when it works: a failure waits less
        wait_tree(da, expected, 45, "b's edit on a")
        assert (da / "b-edited.txt").read_text() == edited
        for n in (a, b):
            wait_until(lambda n=n: folder_status(n, FID)["state"] == "idle" and folder_status(n, FID)["need_files"] == 0,
                       what=f"{n.name} idle after recovery")
        # nothing deleted, reverted or duplicated on either side, and nothing rewritten either:
        # identical content was recognised as the same file, not re-downloaded or copied
        assert tree(da) == expected and tree(db_) == expected
        for d in (da, db_):
            assert [n for n in tree(d) if ".sync-conflict-" in n] == []
        # the trash can holds only what a real edit replaced: a's copy of b's first version
        for d, want in ((db_, 0), (da, 1)):
            archived = _versions(d)
            assert len(archived) == want, f"{len(archived)} files rewritten and archived in {d.name}: {[p.name for p in archived[:5]]}"
        [old] = _versions(da)
        assert old.name.startswith("b-edited~") and old.read_text() == "first version, written on b"
        assert transfer(b, a, FID)["bytes_in"] == 0  # counters of b's new run: nothing fetched
        st = folder_status(b, FID)
        assert st["local_files"] == folder_status(a, FID)["local_files"] and st["error"] == ""

"""End-to-end sync with real daemons on loopback: initial sync, edits, deletes, renames,
conflicts, ignores, resume after kill -9, a corrupting peer, and a swarm."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.daemons import cluster, pair_all, wait_until
from tests.syncfix import folder_status, share, transfer, tree, wait_same

pytestmark = pytest.mark.e2e
FID = "photos-1234"


def share_and_connect(a, b, da: Path, db_: Path) -> None:
    """Both share FID (a's content in da), start, and pair with each other."""
    share(a, da, FID)
    share(b, db_, FID)
    a.start()
    b.start()
    pair_all([a, b])


def test_many_small_files_arrive_and_leave_no_temp_files(tmp_path):
    # several apply batches: a file whose batch was still being applied once got a second,
    # redundant download whose temp file stayed behind
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        for i in range(1500):
            sub = da / f"d{i % 4}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"f{i:04d}").write_bytes(os.urandom(1000 + i))
        share_and_connect(a, b, da, db_)
        t = wait_same(da, db_, timeout=180, what="1500 files synced")
        assert len(t) == 1504
        wait_until(lambda: folder_status(b, FID)["state"] == "idle", what="receiver idle")
        assert sorted(p.name for p in db_.rglob(".syncer.*.tmp")) == []
        # what the receiver wrote is not scanned again because its watcher saw it being written
        # (before apply noted its writes ahead of the renames, nearly every file was)
        reported = sum(int(m) for m in re.findall(r"watcher reports (\d+) changed paths", b.log_text()))
        assert reported < 75, f"the receiver's watcher reported {reported} of 1,500 files it wrote itself"


def test_stale_temp_files_are_removed_fresh_ones_kept(tmp_path):
    # a crash (or a download abandoned after the file was deleted everywhere) leaves a temp file
    # that nothing will resume: removed once a day old, like Syncthing's keepTemporariesH
    with cluster(tmp_path, "a") as (a,):
        da = tmp_path / "A"
        share(a, da, FID)
        (da / "keep.txt").write_text("kept")
        a.start()
        (da / "sub").mkdir()
        stale, fresh = da / "sub" / ".syncer.gone.bin.tmp", da / ".syncer.recent.bin.tmp"
        stale.write_bytes(os.urandom(1000))
        fresh.write_bytes(os.urandom(1000))
        two_days_ago = time.time() - 2 * 86400
        os.utime(stale, (two_days_ago, two_days_ago))
        a.syncer("scan", FID, check=True)  # returns once the scan is done
        assert not stale.exists() and fresh.exists()
        assert (da / "keep.txt").read_text() == "kept"
        assert "removed stale temp file sub/.syncer.gone.bin.tmp" in a.log_text()


def test_initial_sync_both_ways_then_edit_delete_rename(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        (da / "sub" / "deep").mkdir(parents=True)
        (da / "hello.txt").write_text("hello from a")
        (da / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        (da / "sub" / "deep" / "empty").write_bytes(b"")
        (da / "emptydir").mkdir()
        os.symlink("hello.txt", da / "link")
        os.chmod(da / "hello.txt", 0o640)
        (da / "readonly.txt").write_text("read only")
        os.chmod(da / "readonly.txt", 0o444)
        db_.mkdir()
        (db_ / "from-b.txt").write_text("hello from b")
        share_and_connect(a, b, da, db_)
        t = wait_same(da, db_, what="initial sync both ways")
        assert {"hello.txt", "from-b.txt", "sub/big.bin", "sub/deep/empty", "emptydir", "link"} <= set(t)
        assert t["link"] == ("link", "hello.txt")
        assert os.stat(db_ / "hello.txt").st_mode & 0o777 == 0o640
        assert os.stat(db_ / "readonly.txt").st_mode & 0o777 == 0o444
        assert os.stat(db_ / "hello.txt").st_mtime_ns == os.stat(da / "hello.txt").st_mtime_ns

        # edit on b -> a
        (db_ / "hello.txt").write_text("edited on b")
        wait_until(lambda: (da / "hello.txt").read_text() == "edited on b", what="edit propagated")
        # the replaced version went to the trash can
        versions = list((da / ".syncer" / "versions").glob("hello~*.txt"))
        assert versions and versions[0].read_text() == "hello from a"

        # rename of a big file: no re-download (blocks reused locally)
        before = transfer(b, a, FID)["bytes_in"]
        os.rename(da / "sub" / "big.bin", da / "moved.bin")
        wait_until(lambda: (db_ / "moved.bin").exists() and not (db_ / "sub" / "big.bin").exists(), what="rename")
        wait_same(da, db_)
        assert transfer(b, a, FID)["bytes_in"] - before < 1024 * 1024

        # delete
        (da / "from-b.txt").unlink()
        wait_until(lambda: not (db_ / "from-b.txt").exists(), what="delete propagated")
        wait_same(da, db_)
        st = folder_status(b, FID)
        assert st["completion"] == 100 and st["need_bytes"] == 0


def test_concurrent_edits_keep_both_as_conflict_copy(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "doc.txt").write_text("v1")
        share_and_connect(a, b, da, db_)
        wait_same(da, db_)
        b.stop()
        (da / "doc.txt").write_text("edit on a")
        a.syncer("scan", FID, check=True)
        (db_ / "doc.txt").write_text("edit on b, longer")
        b.start()
        b.syncer("scan", FID, check=True)

        def settled():
            ta, tb = tree(da), tree(db_)
            conflicts = [n for n in ta if ".sync-conflict-" in n]
            return ta == tb and len(conflicts) == 1 and conflicts

        [conflict] = wait_until(settled, what="one conflict copy on both sides")
        contents = {(da / "doc.txt").read_text(), (da / conflict).read_text()}
        assert contents == {"edit on a", "edit on b, longer"}
        assert conflict.startswith("doc.sync-conflict-") and conflict.endswith(".txt")


def test_ignore_patterns_are_not_synced(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / ".syncerignore").write_text("*.log\nbuild/\n")
        (da / "keep.txt").write_text("keep")
        (da / "noise.log").write_text("noise")
        (da / "build").mkdir()
        (da / "build" / "out.o").write_text("obj")
        share_and_connect(a, b, da, db_)
        wait_until(lambda: (db_ / "keep.txt").exists(), what="sync")
        wait_until(lambda: folder_status(b, FID)["need_files"] == 0, what="b idle")
        assert not (db_ / "noise.log").exists() and not (db_ / "build").exists()
        assert not (db_ / ".syncerignore").exists()  # local to each device, like .stignore


def test_folder_offer_is_pending_until_joined(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da = tmp_path / "A"
        da.mkdir()
        (da / "x").write_text("x")
        share(a, da, FID)
        a.start()
        b.start()
        pair_all([a, b])
        pend = wait_until(lambda: json.loads(b.syncer("pending", "--json", check=True).stdout)["folders"], what="offer")
        assert pend[0]["folder_id"] == FID and pend[0]["offered_by"] == a.device_id
        share(b, tmp_path / "B", FID)
        wait_same(da, tmp_path / "B")
        assert json.loads(b.syncer("pending", "--json", check=True).stdout)["folders"] == []


def test_marker_missing_stops_folder_instead_of_deleting(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        for i in range(5):
            (da / f"f{i}").write_text(str(i))
        share_and_connect(a, b, da, db_)
        wait_same(da, db_)
        # simulate an unmounted disk: the whole folder content including the marker vanishes
        for p in da.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        a.syncer("scan", FID)
        wait_until(lambda: folder_status(a, FID)["state"] == "stopped", what="a stopped")
        # no deletions were recorded or announced: a's index still lists every file
        assert folder_status(a, FID)["local_files"] == 5
        assert "marker" in folder_status(a, FID)["error"]
        assert len([n for n in tree(db_) if n.startswith("f")]) == 5


def test_resume_after_kill_9_mid_transfer(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        size = 24 * 1024 * 1024
        (da / "big.bin").write_bytes(os.urandom(size))
        share(a, da, FID)
        share(b, db_, FID)
        a.syncer("config", "set", "limits.max_send_kbps", "4096", check=True)  # ~6 s transfer
        a.start()
        b.start()
        pair_all([a, b])
        tmp = db_ / ".syncer.big.bin.tmp"
        wait_until(lambda: tmp.exists() and transfer(b, a, FID)["bytes_in"] >= 4 * 1024 * 1024, what="transfer under way")
        b.kill()
        assert not (db_ / "big.bin").exists()  # nothing half-written under the real name
        assert tmp.exists()
        b.start()
        wait_same(da, db_, what="byte-identical after resume")
        # the second run fetched only what the first had not verified yet
        assert transfer(b, a, FID)["bytes_in"] < size - 2 * 1024 * 1024
        assert not tmp.exists()


def test_resume_after_sender_killed(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
        share(a, da, FID)
        share(b, db_, FID)
        a.syncer("config", "set", "limits.max_send_kbps", "4096", check=True)
        a.start()
        b.start()
        pair_all([a, b])
        wait_until(lambda: transfer(b, a, FID)["bytes_in"] >= 2 * 1024 * 1024, what="transfer under way")
        a.kill()
        wait_until(lambda: not b.connected_to(a), what="b notices a is gone")
        assert not (db_ / "big.bin").exists()
        a.start()
        wait_same(da, db_, what="byte-identical after the sender restarted")


def test_swarm_receivers_feed_each_other(tmp_path):
    names = ["seed", "r1", "r2", "r3", "r4"]
    with cluster(tmp_path, *names) as nodes:
        seed, receivers = nodes[0], nodes[1:]
        dirs = {n.name: tmp_path / n.name.upper() for n in nodes}
        dirs["seed"].mkdir()
        for i in range(4):
            (dirs["seed"] / f"part{i}.bin").write_bytes(os.urandom(16 * 1024 * 1024))
        for n in nodes:
            share(n, dirs[n.name], FID)
        # the seed's upload is capped so the receivers have a reason to trade
        seed.syncer("config", "set", "limits.max_send_kbps", "8192", check=True)
        for n in nodes:
            n.start()
        pair_all(nodes)
        for r in receivers:
            wait_same(dirs["seed"], dirs[r.name], timeout=180, what=f"{r.name} complete")
        from_peers = from_seed = 0
        for r in receivers:
            from_seed += transfer(r, seed, FID)["blocks_in"]
            from_peers += sum(transfer(r, o, FID)["blocks_in"] for o in receivers if o is not r)
        # 4 receivers x 64 MiB in 256 KiB blocks = 1024 blocks fetched in all
        assert from_seed + from_peers >= 1000
        assert from_peers > 0.25 * (from_seed + from_peers), (from_seed, from_peers)


def test_mass_delete_pauses_folder_until_confirmed(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        for i in range(20):
            (da / f"f{i:02d}.txt").write_text(str(i))
        share_and_connect(a, b, da, db_)
        wait_same(da, db_)
        for i in range(15):
            (da / f"f{i:02d}.txt").unlink()
        a.syncer("scan", FID, check=True)
        st = wait_until(lambda: (s := folder_status(a, FID))["state"] == "paused" and s, what="a paused")
        assert "would delete 15 of 20" in st["error"]
        assert len([n for n in tree(db_) if n.startswith("f")]) == 20  # nothing announced
        a.syncer("resume", FID, check=True)
        wait_same(da, db_, what="deletions synced after confirmation")
        assert len([n for n in tree(db_) if n.startswith("f")]) == 5


def test_pulling_stops_before_the_disk_is_full(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        share(a, da, FID)
        share(b, db_, FID)
        # reserve more free space than any disk has: b must refuse to pull, loudly
        b.syncer("config", "set", "limits.min_free_disk_mb", str(1 << 40), check=True)
        a.start()
        b.start()
        pair_all([a, b])
        st = wait_until(lambda: (s := folder_status(b, FID))["state"] == "error" and s, what="b refuses to pull")
        assert "free disk space" in st["error"] and st["need_files"] == 1
        assert not (db_ / "big.bin").exists() and not (db_ / ".syncer.big.bin.tmp").exists()
        b.syncer("config", "set", "limits.min_free_disk_mb", "1", check=True)
        wait_same(da, db_, what="sync once space is available")

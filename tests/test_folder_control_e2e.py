"""Everyday control with real daemons: folder types (send-only + override, receive-only +
revert), selective sync (select, unselect), `why` with reasons from real situations, and
`ignore test`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.daemons import cluster, pair_all, wait_until
from tests.syncfix import folder_status, tree, wait_same

pytestmark = pytest.mark.e2e
FID = "ctl-1"


def start_pair(a, b, da: Path, db_: Path, b_args: tuple[str, ...] = (), a_args: tuple[str, ...] = ()) -> None:
    da.mkdir(parents=True, exist_ok=True)
    db_.mkdir(parents=True, exist_ok=True)
    a.syncer("share", str(da), "--id", FID, *a_args, check=True)
    b.syncer("share", str(db_), "--id", FID, *b_args, check=True)
    a.start()
    b.start()
    pair_all([a, b])


def why(node, path: str = "") -> dict:
    args = ["why", FID] + ([path] if path else []) + ["--json"]
    return json.loads(node.syncer(*args, check=True).stdout)


def reasons(node) -> dict[str, str]:
    return {i["name"]: i["reason"] for i in why(node)["items"]}


def test_receive_only_keeps_local_changes_here_until_reverted(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "doc.txt").write_text("original")
        (da / "other.txt").write_text("other")
        start_pair(a, b, da, db_, b_args=("--type", "receive-only"))
        wait_same(da, db_, what="first sync")
        (db_ / "doc.txt").write_text("changed on b")  # a local change in a receive-only folder
        (db_ / "added.txt").write_text("only on b")
        b.syncer("scan", FID, check=True)
        wait_until(lambda: reasons(b).get("doc.txt") == "local-change", 30, "the change listed on b")
        # a never hears of it: its copy and its need are untouched
        a.syncer("scan", FID, check=True)
        assert (da / "doc.txt").read_text() == "original" and not (da / "added.txt").exists()
        assert folder_status(a, FID)["need_files"] == 0
        # a remote change to another file still arrives
        (da / "other.txt").write_text("other v2")
        a.syncer("scan", FID, check=True)
        wait_until(lambda: (db_ / "other.txt").read_text() == "other v2", 30, "remote changes still applied")
        dry = b.syncer("revert", FID, "--dry-run", check=True).stdout
        assert "would restore 1" in dry and "would remove 1" in dry
        assert (db_ / "doc.txt").read_text() == "changed on b"  # a dry run changes nothing
        b.syncer("revert", FID, check=True)
        wait_same(da, db_, what="local changes reverted")
        assert not (db_ / "added.txt").exists() and any((db_ / ".syncer" / "versions").rglob("added*"))


def test_send_only_ignores_remote_changes_until_override(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "master.txt").write_text("from a")
        start_pair(a, b, da, db_, a_args=("--type", "send-only"))
        wait_same(da, db_, what="first sync")
        (db_ / "master.txt").write_text("edited on b")
        b.syncer("scan", FID, check=True)
        wait_until(lambda: reasons(a).get("master.txt") == "send-only", 30, "a lists b's change as not applied")
        assert (da / "master.txt").read_text() == "from a"
        assert "would announce 1" in a.syncer("override", FID, "--dry-run", check=True).stdout
        a.syncer("override", FID, check=True)
        wait_until(lambda: (db_ / "master.txt").read_text() == "from a", 30, "a's version wins on b")
        wait_until(lambda: not reasons(a), 30, "nothing left out of sync on a")


def test_selective_sync_fetches_only_what_is_selected(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        for d in ("photos", "music"):
            (da / d).mkdir(parents=True)
            for i in range(3):
                (da / d / f"{i}.bin").write_bytes(os.urandom(20_000))
        start_pair(a, b, da, db_, b_args=("--selective",))
        wait_until(lambda: folder_status(b, FID).get("skipped_files", 0) >= 8, 30, "metadata of everything on b")
        assert sorted(p.name for p in db_.iterdir()) == [".syncer"]  # nothing fetched
        assert set(reasons(b).values()) == {"not-selected"}
        b.syncer("select", FID, "photos", check=True)
        wait_until(lambda: sorted(p.name for p in (db_ / "photos").iterdir()) == ["0.bin", "1.bin", "2.bin"] if (db_ / "photos").is_dir() else False, 30, "photos fetched")
        assert not (db_ / "music").exists()
        # later files under a selected path arrive too
        (da / "photos" / "new.bin").write_bytes(os.urandom(100))
        a.syncer("scan", FID, check=True)
        wait_until(lambda: (db_ / "photos" / "new.bin").exists(), 30, "a new file under photos")
        st = folder_status(b, FID)
        assert st["completion"] == 100.0  # counts only what is selected
        out = b.syncer("unselect", FID, "photos", check=True).stdout
        assert "freed 5" in out  # four files and their directory
        assert not (db_ / "photos").exists()
        # freed here only: a still has everything, and was told of no deletion
        a.syncer("scan", FID, check=True)
        assert len([n for n in tree(da) if n.endswith(".bin")]) == 7
        assert folder_status(a, FID)["need_files"] == 0


def test_why_gives_reasons_from_real_situations(tmp_path):
    """ignored here, folder paused, no connected device has it, disk reserve reached (with the
    tests above: not selected, send-only, local change)."""
    from tests.apihelp import Api

    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        db_.mkdir()
        (da / "notes.tmp").write_text("ignored on b")
        (da / "first.bin").write_bytes(os.urandom(100_000))
        (db_ / ".syncerignore").write_text("*.tmp\n")
        start_pair(a, b, da, db_)
        wait_until(lambda: (db_ / "first.bin").exists(), 60, "first sync")
        assert reasons(b) == {"notes.tmp": "ignored"}
        assert "'*.tmp'" in b.syncer("ignore", "test", FID, "notes.tmp", check=True).stdout
        assert "not ignored" in b.syncer("ignore", "test", FID, "first.bin", check=True).stdout
        Api(b).json("POST", f"/rest/folders/{FID}/pause")
        (da / "third.bin").write_bytes(os.urandom(200_000))
        a.syncer("scan", FID, check=True)
        wait_until(lambda: reasons(b).get("third.bin") == "paused", 30, "paused")
        a.stop()
        Api(b).json("POST", f"/rest/folders/{FID}/resume")
        item = wait_until(lambda: next((i for i in why(b)["items"] if i["name"] == "third.bin" and i["reason"] == "no-source"), None), 30, "no source")
        assert "a" in item["text"]  # which device has it
        b.syncer("config", "set", "limits.min_free_disk_mb", str(1 << 40), check=True)
        a.start()
        wait_until(lambda: reasons(b).get("third.bin") == "disk-reserve", 60, "disk reserve")
        b.syncer("config", "set", "limits.min_free_disk_mb", "1", check=True)
        wait_until(lambda: (db_ / "third.bin").exists(), 90, "synced once space is allowed")
        assert reasons(b) == {"notes.tmp": "ignored"}


def test_a_conflict_resolved_on_one_device_is_gone_on_a_third(tmp_path):
    with cluster(tmp_path, "a", "b", "c") as (a, b, c):
        da, db_, dc = tmp_path / "A", tmp_path / "B", tmp_path / "C"
        for d in (da, db_, dc):
            d.mkdir()
        (da / "doc.txt").write_text("v1")
        for n, d in ((a, da), (b, db_), (c, dc)):
            n.syncer("share", str(d), "--id", FID, check=True)
        a.start()
        b.start()
        c.start()
        pair_all([a, b, c])
        wait_same(da, dc)
        wait_same(da, db_)
        b.stop()
        (da / "doc.txt").write_text("edit on a")
        a.syncer("scan", FID, check=True)
        wait_until(lambda: (dc / "doc.txt").read_text() == "edit on a", 30, "c has a's edit")
        (db_ / "doc.txt").write_text("edit on b, longer")
        b.start()
        b.syncer("scan", FID, check=True)

        def copies(d: Path) -> list[str]:
            return sorted(n for n in tree(d) if ".sync-conflict-" in n)

        wait_until(lambda: len(copies(dc)) == 1 and copies(dc) == copies(da) == copies(db_), 60, "one conflict copy everywhere")
        listed = json.loads(b.syncer("conflicts", FID, "--json", check=True).stdout)
        assert [r["name"] for r in listed] == ["doc.txt"] and listed[0]["copy"] == copies(db_)[0]
        assert next(f for f in b.status()["folders"] if f["id"] == FID)["conflicts"] == 1
        winner = (db_ / "doc.txt").read_text()
        loser = (db_ / copies(db_)[0]).read_text()
        # keep the copy's content (whichever device made it): it wins on every device
        b.syncer("resolve", FID, "doc.txt", "--keep", copies(db_)[0], check=True)
        for d in (da, db_, dc):
            wait_until(lambda d=d: not copies(d) and (d / "doc.txt").read_text() == loser, 60, f"resolved on {d.name}")
        assert winner != loser
        assert json.loads(c.syncer("conflicts", FID, "--json", check=True).stdout) == []
        # nothing is lost: the replaced version is in b's trash can
        assert any((db_ / ".syncer" / "versions").rglob("doc*"))

"""Reliability: the receiver's disk fills up. Its folder lives on a 64 MiB tmpfs mounted in a
mount namespace of the receiving daemon's own (the host never sees the mount); the sender offers
more than fits. The receiver says so in its status, does not flood its log, still syncs the
files that fit, and resumes by itself once space is freed."""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.daemons import cluster, pair_all, wait_until
from tests.faults import inside, mounted_on_host, open_deleted, tmpfs_wrap
from tests.syncfix import folder_status, share, tree, wait_tree

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)"),
]
FID = "diskfull-1234"
MIB = 1 << 20
TMPFS_MB = 64
RESERVE_MB = 4  # limits.min_free_disk_mb on the receiver
FILLER = 30 * MIB  # the receiver's own big file: leaves ~34 MiB, 30 usable above the reserve
BIG = 20 * MIB  # two of these from the sender: each fits, both do not
WINDOW_S = 10.0  # log lines about the full disk are counted over this long
MAX_LINES = 25  # in WINDOW_S: at most ~2.5 a second (a storm was ~31 a second)
DISK_FULL = re.compile(r"no space left|enospc|disk space|disk is full|disk full", re.I)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _disk_full_lines(log: str, since: float, until: float) -> list[str]:
    out = []
    for line in log.splitlines():
        m = STAMP.match(line)
        if m and DISK_FULL.search(line):
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if since <= t <= until:
                out.append(line)
    return out


def _disk_error(st: dict) -> bool:
    """The folder's status names the full disk: as the folder's error, or as the error of the
    files it cannot fetch (whichever way the status lists per-file errors)."""
    texts = [st.get("error") or ""]
    for key in ("errors", "file_errors", "pull_errors"):
        for item in st.get(key) or []:
            texts.append(str(item))
    return any(DISK_FULL.search(t) for t in texts)


def test_disk_full_is_reported_bounded_and_resumes(tmp_path):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        for i in range(20):
            (da / f"small{i:02d}.bin").write_bytes(os.urandom(64 << 10))
        (da / "big1.bin").write_bytes(os.urandom(BIG))
        (da / "big2.bin").write_bytes(os.urandom(BIG))
        share(a, da, FID)
        share(b, db_, FID)
        b.configure({"limits.min_free_disk_mb": str(RESERVE_MB)})
        a.start()
        b.start(wrap=tmpfs_wrap(db_, TMPFS_MB))
        try:
            seen = inside(b, db_)
            assert not mounted_on_host(db_), "the tmpfs leaked into the host's mount namespace"
            assert shutil.disk_usage(seen).total <= TMPFS_MB * MIB
            # the receiver's own big file takes half its disk before the sender is paired
            (seen / "filler.bin").write_bytes(os.urandom(FILLER))
            b.syncer("scan", FID, check=True)
            assert folder_status(b, FID)["local_files"] == 1
            pair_all([a, b])

            # 1. a clear error in status, not "syncing" forever
            wait_until(lambda: _disk_error(folder_status(b, FID)), what="b's status to report the full disk")
            first = time.time()
            # 2. what fits is synced all the same: the small files and one of the big ones
            want = tree(da)
            smalls = {n: h for n, h in want.items() if n.startswith("small")}

            def fitting_synced() -> bool:
                have = tree(seen)
                return all(have.get(n) == h for n, h in smalls.items()) and any(have.get(n) == want[n] for n in ("big1.bin", "big2.bin"))

            wait_until(fitting_synced, 45, "the files that fit to be synced despite the full disk")
            # 3. no log storm: count the lines about the full disk over a fixed window (an
            # observation period, not a wait for some state)
            wait_until(lambda: time.time() > first + WINDOW_S, WINDOW_S + 5, "the observation window to pass")
            lines = _disk_full_lines(b.log_text(), first, first + WINDOW_S)
            assert len(lines) < MAX_LINES, f"{len(lines)} disk-full lines in {WINDOW_S:.0f}s:\n" + "\n".join(lines[:10])
            st = folder_status(b, FID)
            assert st["state"] != "syncing" and _disk_error(st) and st["need_files"] == 1, st

            # 4. space is freed (the user deletes the filler): syncing resumes by itself
            (seen / "filler.bin").unlink()
            want.pop("filler.bin", None)  # a may or may not have fetched it yet
            try:
                wait_tree(seen, want, 60, "b to resume and converge once space is free")
            except AssertionError as e:
                free = shutil.disk_usage(seen).free >> 20
                raise AssertionError(f"{e}; {free} MiB free; deleted files b holds open: {open_deleted(b)}") from None
            wait_tree(da, want, 30, "the filler's deletion to reach a")
            wait_until(lambda: (s := folder_status(b, FID))["state"] == "idle" and s["error"] == "" and s["need_files"] == 0,
                       what="b idle with no error")
            assert list(seen.rglob(".syncer.*.tmp")) == []
        finally:
            b.stop()
            assert not mounted_on_host(db_)
        assert not any(Path(db_).iterdir()) or sorted(p.name for p in db_.iterdir()) == [".syncer"]

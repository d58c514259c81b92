"""Reliability: kill -9 of the receiver and of the sender at 20 random moments of an initial sync
(one 256 MiB file of random data and 2,000 small files). At every moment nothing partial is
visible under a real name; in the end both trees are byte-identical, with no temp files left and
no versions archived (an initial sync replaces nothing)."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from syncer.fs import layout
from tests.daemons import Node, cluster, pair_all, wait_until
from tests.syncfix import folder_status, share, tree, wait_tree

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
FID = "kill-1234"
BIG = "big.bin"
BIG_SIZE = 256 << 20
SMALL = 2000
KILLS = 20
SEND_KIB_S = 32 << 10  # the big file takes ~8 s of connected time: kills land all through it
UNITS = 2 * SMALL  # progress: one unit per small file, the big file counts as many as all of them


def _seed() -> int:
    return int(os.environ.get("SYNCER_TEST_SEED") or random.randrange(1 << 32))


class Visible:
    """Checks what a folder shows under real names against the files each side started with
    (content hashes are cached per inode, size and mtime: the big file is hashed once)."""

    def __init__(self, *originals: dict[str, str]) -> None:
        self.allowed: dict[str, set[str]] = {}
        for o in originals:
            for name, h in o.items():
                self.allowed.setdefault(name, set()).add(h)
        self._hashes: dict[tuple[int, int, int], str] = {}

    def _hash(self, path: Path, st: os.stat_result) -> str:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            self._hashes[key] = h.hexdigest()
        return self._hashes[key]

    def check(self, root: Path, moment: str) -> None:
        for dirpath, dirs, files in os.walk(root):
            if Path(dirpath) == root:
                dirs[:] = [d for d in dirs if d != layout.MARKER]
            for f in files:
                if layout.is_temp_name(f):
                    continue
                path = Path(dirpath) / f
                name = str(path.relative_to(root))
                try:
                    st = path.stat()
                    h = self._hash(path, st)
                except FileNotFoundError:
                    continue  # being replaced right now (the other daemon is alive)
                assert h in self.allowed.get(name, ()), (
                    f"{moment}: {root.name}/{name} ({st.st_size} bytes) is neither the sender's version "
                    "nor a pre-existing one: a partial or foreign file under a real name"
                )
        versions = root / layout.VERSIONS_DIR
        stray = sorted(str(p.relative_to(versions)) for p in versions.rglob("*") if p.is_file()) if versions.exists() else []
        assert stray == [], f"{moment}: versions archived during an initial sync in {root.name}: {stray[:5]}"


def _progress(root: Path) -> int:
    """Work done on the receiver, from its disk: small files in place, plus the big file's
    written share (its temp file is sparse until written)."""
    done = sum(len(files) for _, _, files in os.walk(root / "small"))
    big = root / BIG
    if big.exists():
        return done + SMALL
    try:
        st = (root / layout.temp_name(BIG)).stat()
    except FileNotFoundError:
        return done
    return done + min(SMALL, st.st_blocks * 512 * SMALL // BIG_SIZE)


def _populate(da: Path, db_: Path, rng: random.Random) -> None:
    da.mkdir()
    with open(da / BIG, "wb") as f:
        for _ in range(BIG_SIZE >> 24):
            f.write(os.urandom(16 << 20))
    for i in range(SMALL):
        d = da / "small" / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.dat").write_bytes(rng.randbytes(rng.randrange(1, 6000)))
    (db_ / "b-own").mkdir(parents=True)
    for i in range(20):
        (db_ / "b-own" / f"mine{i:02d}.txt").write_text(f"b's file {i}, there before the sync")


def test_kill_9_at_random_moments_never_shows_partial_files(tmp_path):
    seed = _seed()
    print(f"seed={seed} (SYNCER_TEST_SEED={seed} repeats these kill moments)")
    rng = random.Random(seed)
    t_start = time.monotonic()
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        _populate(da, db_, rng)
        orig_a, orig_b = tree(da), tree(db_)
        files_a = {n: h for n, h in orig_a.items() if isinstance(h, str) and h != "dir"}
        files_b = {n: h for n, h in orig_b.items() if isinstance(h, str) and h != "dir"}
        on_b, on_a = Visible(files_a, files_b), Visible(files_a, files_b)
        share(a, da, FID)
        share(b, db_, FID)
        a.configure({"limits.max_send_kbps": str(SEND_KIB_S)})
        print(f"populated in {time.monotonic() - t_start:.1f}s")
        a.start()
        b.start()
        pair_all([a, b])

        moments = sorted(rng.uniform(0.02, 0.95) * UNITS for _ in range(KILLS))
        for i, at in enumerate(moments):
            victim: Node = b if i % 2 == 0 else a
            what = f"kill {i + 1}/{KILLS} of {victim.name} at progress {at:.0f}/{UNITS} (seed={seed})"
            t0 = time.monotonic()
            wait_until(lambda at=at: _progress(db_) >= at, 90, what)
            t1 = time.monotonic()
            victim.kill()
            on_b.check(db_, what)
            on_a.check(da, what)
            victim.restart()
            print(f"{what}: waited {t1 - t0:.1f}s, check+restart {time.monotonic() - t1:.1f}s")

        expected = dict(orig_a, **orig_b)
        t0 = time.monotonic()
        wait_tree(db_, expected, 180, f"receiver converged (seed={seed})")
        print(f"receiver converged after {time.monotonic() - t0:.1f}s")
        wait_tree(da, expected, 60, f"sender has the receiver's files (seed={seed})")
        print(f"sender converged after {time.monotonic() - t0:.1f}s")
        for n in (a, b):
            wait_until(lambda n=n: (s := folder_status(n, FID))["state"] == "idle" and s["need_files"] == 0,
                       what=f"{n.name} idle (seed={seed})")
        print(f"idle after {time.monotonic() - t0:.1f}s")
        on_b.check(db_, "at the end")
        on_a.check(da, "at the end")
        for d in (da, db_):
            leftovers = sorted(str(p.relative_to(d)) for p in d.rglob(".syncer.*.tmp"))
            assert leftovers == [], f"temp files left in {d.name} once idle (seed={seed}): {leftovers[:5]}"

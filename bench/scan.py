"""Scanner benchmark: 1 GiB in 4 files, 100,000 small files, and a rescan of the unchanged tree.

python -m bench.scan [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from syncer.index.db import IndexDB
from syncer.scan import Scanner


def drop_caches_note() -> str:
    return "page cache warm (files just written), as for a scan right after a change"


def sha256_single_thread(mb: int = 256) -> float:
    data = os.urandom(1 << 20)
    t = time.perf_counter()
    for _ in range(mb):
        hashlib.sha256(data).digest()
    return mb / (time.perf_counter() - t) * (1 << 20) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller data for a smoke run")
    args = ap.parse_args()
    big_files, big_size = (4, 256 << 20) if not args.quick else (4, 16 << 20)
    small_count = 100_000 if not args.quick else 5_000
    base = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="syncer-bench-scan-"))
    try:
        print(f"SHA-256 single thread: {sha256_single_thread():.2f} GB/s")
        big = base / "big"
        (big / ".syncer").mkdir(parents=True)
        chunk = os.urandom(16 << 20)
        for i in range(big_files):
            with open(big / f"f{i}.bin", "wb") as f:
                for j in range(big_size // len(chunk)):
                    f.write(chunk[j % 7 :] + chunk[: j % 7])
        total = big_files * big_size
        s = Scanner(big, "big", IndexDB(base / "big.db"), 1)
        t = time.perf_counter()
        r = s.scan()
        dt = time.perf_counter() - t
        assert r.hashed_bytes == total
        print(f"scan {big_files} x {big_size >> 20} MiB: {dt:.2f} s, {total / dt / 1e9:.2f} GB/s ({drop_caches_note()})")

        small = base / "small"
        (small / ".syncer").mkdir(parents=True)
        for d in range(small_count // 1000):
            sub = small / f"d{d:03d}"
            sub.mkdir()
            for i in range(1000):
                (sub / f"f{i:04d}.txt").write_bytes(os.urandom(64))
        s = Scanner(small, "small", IndexDB(base / "small.db"), 1)
        t = time.perf_counter()
        r = s.scan()
        dt = time.perf_counter() - t
        print(f"scan {small_count} small files: {dt:.2f} s, {small_count / dt:,.0f} files/s")
        t = time.perf_counter()
        r = s.scan()
        dt = time.perf_counter() - t
        assert not r.changed and not r.deleted
        print(f"rescan of the unchanged {small_count}-file tree: {dt:.2f} s")
    finally:
        if not os.environ.get("BENCH_DIR"):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

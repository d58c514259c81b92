"""One very large file: peak memory and resume after kill -9 (issue 12 goal 4).

python -m bench.bigfile [--gib 16] [--kill-at 0.4]

A GIB-GiB sparse file (holes, with 1 MiB of random data at the start of every GiB so it is not
one repeated block) is shared by one daemon; a second daemon joins, is killed with SIGKILL once
KILL_AT of the file has arrived, is started again and finishes. Prints the time of each part,
the bytes the seed uploaded in all (resume: about the file's size, not size + what arrived
before the kill), whether the copy is identical, and each daemon's peak RSS (VmHWM; for the
receiver the larger of its two runs). Loopback only; data under $BENCH_DIR or a temp dir.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._sync_syncer import FID, pair_instantly, poll
from bench.scale import peak_rss_mib
from syncer.api import actions
from syncer.paths import get_paths
from tests.daemons import Node
from tests.syncfix import folder_status, transfer

GiB = 1 << 30
MiB = 1 << 20


def make_sparse(path: Path, gib: int) -> None:
    with open(path, "wb") as f:
        f.truncate(gib * GiB)
        for g in range(gib):
            f.seek(g * GiB)
            f.write(os.urandom(MiB))


def reset_peak_rss(pid: int) -> None:
    """Start the process's VmHWM afresh (Linux clear_refs 5), so later peaks are not the scan's."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=16)
    ap.add_argument("--kill-at", type=float, default=0.4)
    args = ap.parse_args()
    size = args.gib * GiB
    base = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="bench-big-"))
    for old in ("home-seed", "home-recv"):  # daemons of an earlier run: their index would skip the scan
        shutil.rmtree(base / old, ignore_errors=True)
    src, dst = base / "src", base / "dst"
    for d in (src, dst):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    make_sparse(src / "big.img", args.gib)
    a, b = Node(base, "seed"), Node(base, "recv")
    try:
        for node, path in ((a, src), (b, dst)):
            actions.add_folder(get_paths({"SYNCER_HOME": str(node.home)}).config_file, path, FID)
        t0 = time.perf_counter()
        a.start()
        poll(lambda: folder_status(a, FID).get("local_bytes", 0) >= size, 3600, "the seed's scan")
        scan = time.perf_counter() - t0
        assert a.proc is not None
        rss_scan = peak_rss_mib(a.proc.pid)
        reset_peak_rss(a.proc.pid)  # from here on the seed's peak is the transfer's
        b.start()
        t1 = time.perf_counter()
        pair_instantly([a, b])
        poll(lambda: transfer(b, a, FID)["bytes_in"] >= args.kill_at * size, 3600, f"{args.kill_at:.0%} arrived")
        before_kill = time.perf_counter() - t1
        assert b.proc is not None
        rss_b1 = peak_rss_mib(b.proc.pid)
        got1 = transfer(b, a, FID)["bytes_in"]
        b.kill()
        t2 = time.perf_counter()
        b.restart()

        def done() -> bool:
            st = folder_status(b, FID)
            return bool(st["local_bytes"] >= size and st["need_files"] == 0)

        poll(done, 7200, "the receiver complete")
        after = time.perf_counter() - t2
        assert a.proc is not None and b.proc is not None
        got2 = transfer(b, a, FID)["bytes_in"]  # the restarted process counts from zero
        rss_a, rss_b = peak_rss_mib(a.proc.pid), max(rss_b1, peak_rss_mib(b.proc.pid))
    finally:
        a.stop()
        b.stop()
    same = sha256_file(src / "big.img") == sha256_file(dst / "big.img")
    print(f"{args.gib} GiB sparse file: seed scan {scan:.1f} s ({size / scan / 1e9:.2f} GB/s), peak RSS {rss_scan:.0f} MiB")
    print(f"  until kill -9 of the receiver: {before_kill:.1f} s, {got1 / GiB:.2f} GiB received")
    print(f"  restart to complete: {after:.1f} s; total transfer {before_kill + after:.1f} s "
          f"({size / (before_kill + after) / 1e6:.0f} MB/s)")
    print(f"  received after the restart {got2 / GiB:.2f} GiB, in all {(got1 + got2) / GiB:.2f} GiB "
          f"for a {args.gib} GiB file (fetched twice: {max(0, got1 + got2 - size) / GiB:.2f} GiB)")
    print(f"  identical: {same}; peak RSS while transferring: seed {rss_a:.0f} MiB, receiver {rss_b:.0f} MiB (goal < 150 MiB)")
    if not os.environ.get("BENCH_DIR"):
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

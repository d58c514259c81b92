"""How syncer scales with the number of files, side by side with Syncthing.

python -m bench.scale [--sizes 10000,100000,1000000] [--no-syncthing] [--syncthing-max 100000]

For each size: N small files (64 B, 1,000 per directory) generated once, then for each tool two
daemons on loopback: the sender's first scan, the index exchange (pairing until the receiver
knows every file), the initial sync (pairing until the receiver has every file: files/s), an
unchanged rescan through the daemon's API, and each daemon's peak RSS (VmHWM). Data under
$BENCH_DIR or a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench import _sync_others as others
from bench._sync_syncer import FID, pair_instantly, poll
from syncer.api import actions, client
from syncer.paths import get_paths
from tests.daemons import Node
from tests.syncfix import folder_status

PER_DIR = 1000
SIZE = 64


def generate(d: Path, n: int) -> None:
    if (d / ".complete").exists():
        return
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    payload = os.urandom(SIZE * 16)
    for i in range(n):
        sub = d / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            sub.mkdir()
        off = (i * 7) % (len(payload) - SIZE)
        with open(sub / f"f{i:07d}", "wb") as f:
            f.write(payload[off : off + SIZE] + i.to_bytes(8, "big"))
    (d / ".complete").write_text("")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def peak_rss_mib(pid: int) -> float:
    """Peak RSS (VmHWM) of the process or of the largest of its descendants: Syncthing 1.19
    runs its real process as a child of a small monitor process even with --no-restart."""
    best = float("nan")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        v = int(line.split()[1]) / 1024
                        best = v if best != best else max(best, v)
        except OSError:
            continue
        todo += _children(p)
    return best


# ext4 here has no journal, and then a create skips every inode freed in the last 60 s (360 s
# while its inode-table block is dirty): after a run removed its trees, the next run's creations
# are several times slower for a minute (docs/benchmarks.md, W2). Removals are flushed, and a
# measured sync starts only once that minute is over; otherwise the smallest size, which comes
# right after the biggest one's cleanup, measures the cleanup.
FREED_INODES_S = 61.0
_removed_at = float("-inf")


def _remove(*paths: Path) -> None:
    global _removed_at
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
    os.sync()
    _removed_at = time.monotonic()


def _settle() -> None:
    """Before a measured sync: wait out the minute after the last removal (see above)."""
    left = _removed_at + FREED_INODES_S - time.monotonic()
    if left > 0:
        time.sleep(left)


def _copy_tree(src: Path, dst: Path) -> None:
    """The sender's folder: a copy of the generated tree (each tool gets fresh inodes)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))


def _figures(n: int, scan: float, index: float, sync: float, rescan: float, sender: int, receiver: int) -> dict[str, float]:
    """One tool's row, the daemons still running (their peak RSS is read now)."""
    return {
        "scan_s": scan, "index_s": index, "sync_s": sync, "files_per_s": n / sync,
        "rescan_s": rescan, "rss_sender_mib": peak_rss_mib(sender), "rss_receiver_mib": peak_rss_mib(receiver),
    }


def _median_time(run: Callable[[], object], times: int = 3) -> float:
    """Median wall time of `times` runs (the unchanged rescan)."""
    out = []
    for _ in range(times):
        t = time.perf_counter()
        run()
        out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2]


def syncer_run(root: Path, data: Path, n: int) -> dict[str, float]:
    src, dst = root / "sy-src", root / "sy-dst"
    _copy_tree(data, src)
    dst.mkdir()
    a, b = Node(root, "sa"), Node(root, "sb")
    try:
        for node, path in ((a, src), (b, dst)):
            actions.add_folder(get_paths({"SYNCER_HOME": str(node.home)}).config_file, path, FID)
        _settle()
        t0 = time.perf_counter()
        a.start()
        poll(lambda: (folder_status(a, FID).get("last_scan") is not None), 7200, "first scan")
        scan = time.perf_counter() - t0
        b.start()
        t1 = time.perf_counter()
        pair_instantly([a, b])
        dirs = (n + PER_DIR - 1) // PER_DIR
        index_at = None

        def done() -> bool:
            nonlocal index_at
            st = folder_status(b, FID)
            if index_at is None and st["need_files"] + st["local_files"] >= n + dirs:
                index_at = time.perf_counter()
            return bool(st["local_files"] >= n + dirs and st["need_files"] == 0)

        poll(done, 7200, "initial sync")
        sync = time.perf_counter() - t1

        def settled() -> bool:  # the sender knows the receiver is complete and has nothing to do
            st = folder_status(a, FID)
            return st["state"] == "idle" and list(st["device_completion"].values()) == [100.0]

        poll(settled, 3600, "the sender settled")
        paths = get_paths({"SYNCER_HOME": str(a.home)})
        rescan = _median_time(lambda: client.call(paths, "POST", f"/rest/scan?folder={FID}", timeout=3600))
        assert a.proc is not None and b.proc is not None
        return _figures(n, scan, (index_at or time.perf_counter()) - t1, sync, rescan, a.proc.pid, b.proc.pid)
    finally:
        a.stop()
        b.stop()
        _remove(src, dst)


def syncthing_run(root: Path, data: Path, n: int) -> dict[str, float]:
    src, dst = root / "st-src", root / "st-dst"
    _copy_tree(data, src)
    a = others.Syncthing(root / "st-a", "a", 1)
    b = others.Syncthing(root / "st-b", "b", 1)
    a.configure(b, src)
    b.configure(a, dst)
    try:
        _settle()
        t0 = time.perf_counter()
        a.start()
        poll(lambda: a.status()["state"] == "idle" and a.status()["localFiles"] >= n, 7200, "syncthing scan")
        scan = time.perf_counter() - t0
        t1 = time.perf_counter()
        b.start()
        index_at = None

        def done() -> bool:
            nonlocal index_at
            try:
                s = b.status()
            except OSError:
                return False
            if index_at is None and s.get("globalFiles", 0) >= n:
                index_at = time.perf_counter()
            return bool(s["needFiles"] == 0 and s["localFiles"] >= n and s["state"] == "idle")

        poll(done, 7200, "syncthing sync")
        sync = time.perf_counter() - t1
        poll(lambda: a.api(f"/rest/db/completion?folder=bench&device={b.device_id}").get("completion") == 100 and a.status()["state"] == "idle",
             3600, "syncthing's sender settled")

        def rescan_once() -> None:
            req = urllib.request.Request(f"http://127.0.0.1:{a.gui_port}/rest/db/scan?folder=bench", method="POST", headers={"X-API-Key": a.apikey})
            with urllib.request.urlopen(req, timeout=3600):
                pass

        rescan = _median_time(rescan_once)
        assert a.proc is not None and b.proc is not None
        return _figures(n, scan, (index_at or time.perf_counter()) - t1, sync, rescan, a.proc.pid, b.proc.pid)
    finally:
        a.stop()
        b.stop()
        _remove(src, dst, root / "st-a", root / "st-b")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000", help="file counts (e.g. 10000,100000,1000000)")
    ap.add_argument("--no-syncthing", action="store_true")
    ap.add_argument("--syncthing-max", type=int, default=100_000, help="largest size run with Syncthing too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="syncer-scale-"))
    results = []
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            data = base / f"data-{n}"
            generate(data, n)
            run_root = base / f"run-{n}"
            if run_root.exists():
                _remove(run_root)  # left by an interrupted run
            run_root.mkdir()
            row: dict[str, object] = {"files": n, "syncer": syncer_run(run_root, data, n)}
            if not args.no_syncthing and others.syncthing_available() and n <= args.syncthing_max:
                row["syncthing"] = syncthing_run(run_root, data, n)
            shutil.rmtree(run_root, ignore_errors=True)
            results.append(row)
            _print(row)
    finally:
        if not os.environ.get("BENCH_DIR"):
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))


def _print(row: dict[str, object]) -> None:
    n = row["files"]
    for tool in ("syncer", "syncthing"):
        r = row.get(tool)
        if not isinstance(r, dict):
            continue
        print(
            f"{n:>9,} files {tool:<9} scan {r['scan_s']:7.1f} s  index {r['index_s']:7.1f} s  "
            f"sync {r['sync_s']:7.1f} s = {r['files_per_s']:7.0f} files/s  rescan {r['rescan_s']:5.2f} s  "
            f"peak RSS {r['rss_sender_mib']:5.0f} / {r['rss_receiver_mib']:5.0f} MiB",
            flush=True,
        )
    if isinstance(row.get("syncer"), dict) and isinstance(row.get("syncthing"), dict):
        s, t = row["syncer"], row["syncthing"]
        print(f"{'':>9}       ratio     files/s {s['files_per_s'] / t['files_per_s']:.2f}x Syncthing", flush=True)  # type: ignore[index]


if __name__ == "__main__":
    main()

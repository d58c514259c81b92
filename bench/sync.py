"""Sync benchmarks W1-W5, syncer against rsync and Syncthing on the same data in the same run.

python -m bench.sync [--quick] [--only W1,W2,...] [--no-syncthing] [--no-warm]

W1 initial sync of 4 x 256 MiB; W2 10,000 x 4 KiB files; W3 latency of a 4 KiB edit (p50/p95 of
10); W4 append 1 MiB to a synced 256 MiB file (time, bytes on the wire); W5 1 seed -> 7
receivers of 256 MiB vs 1 -> 1 (three of each, medians), and its control: 4 unrelated 1 -> 1
pairs synced at once vs in turn (what eight daemons on the machine's cores cost without a
swarm). Loopback only; data under $BENCH_DIR or a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import _sync_others as others
from bench import _sync_syncer as sy

MiB = 1 << 20
W5_RUNS = 3
CONTROL_PAIRS = 4  # W5's control: as many daemons as 1 -> 7 has, in unrelated pairs


def make_big(d: Path, n: int, size: int) -> int:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with open(d / f"f{i}.bin", "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 16 * MiB))
                f.write(chunk)
                left -= len(chunk)
    return n * size


def make_small(d: Path, n: int, size: int) -> int:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = d / f"d{i // 1000:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"s{i:05d}.bin").write_bytes(os.urandom(size))
    return n


def digest(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and ".syncer" not in p.parts and ".stfolder" not in p.parts:
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def warm_memory(nbytes: int) -> None:
    """Touch `nbytes` of RAM (at most 3/4 of what is available) and free it again.

    This VM backs guest memory lazily and takes freed memory back within seconds (free page
    reporting): writing a file into page cache that was never used, or freed more than a few
    seconds ago, runs at ~0.4-0.7 GB/s; into pages freed just before, at 3-4 GB/s (the kernel
    hands out unreported pages first). Which one a tool gets is luck, and for W1 it decides the
    result. So every tool's measured sync starts right after this, alike: its writes land in
    backed memory, as on a real machine. `--no-warm` measures without it."""
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    chunk = 256 * MiB
    zeros = bytes(64 * MiB)
    maps = []
    try:
        for _ in range(min(nbytes, avail * 3 // 4) // chunk):
            m = mmap.mmap(-1, chunk)
            for _ in range(chunk // len(zeros)):
                m.write(zeros)
            maps.append(m)
    finally:
        for m in maps:
            m.close()


REPORTING = Path("/sys/module/page_reporting/parameters/min_free_ms")
PRIME_BYTES = 8 << 30


@contextlib.contextmanager
def freed_memory_kept(ms: int = 60_000) -> Iterator[str]:
    """While the benchmark runs, memory freed in this VM stays backed for `ms` before it is
    reported back to the host; restored afterwards. Yields a line saying what was done.

    The VM reports freed pages at once (min_free_ms = 0), so warm_memory's pages are gone again
    within a second or two, and every later page the kernel writes into (page cache) faults in
    from the host first: writing 1.8 GB into page cache over 7 s cost 1.66 s of kernel time
    against 0.33 s in one burst, and 0.64 s over 7 s with min_free_ms = 60000 (measured
    2026-12-02). A longer run pays more, which skews every comparison of runs of different
    length: W5's 1 -> 7 against 1 -> 1 (perf: copy_folio_from_iter_atomic was 20 % of a
    receiver's CPU in 1 -> 7, not measurable in 1 -> 1), and W1/W2's syncer against Syncthing."""
    try:
        old = REPORTING.read_text().strip()
        REPORTING.write_text(str(ms))
    except OSError:
        yield "freed memory: as the machine has it (no page-reporting control here)"
        return
    try:
        # and once, memory backed before the first workload: right after the switch, W1 ran at
        # 277-303 MB/s in 3 of 4 tries without this, 410-419 in 2 of 2 with it (2026-12-02)
        t = time.perf_counter()
        warm_memory(PRIME_BYTES)
        yield (f"freed memory: kept {ms} ms before it is reported to the host (min_free_ms {old} -> {ms}, restored "
               f"after); {PRIME_BYTES >> 30} GiB backed first in {time.perf_counter() - t:.0f} s")
    finally:
        REPORTING.write_text(old)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# --- syncthing helpers -------------------------------------------------------------------------
def syncthing_pair(root: Path, src: Path, dst: Path, delay: int = 1) -> tuple[others.Syncthing, others.Syncthing]:
    a = others.Syncthing(root / "st-a", "a", delay)
    b = others.Syncthing(root / "st-b", "b", delay)
    a.configure(b, src)
    b.configure(a, dst)
    return a, b


def st_wait(b: others.Syncthing, files: int, nbytes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = b.status()
            if s["needFiles"] == 0 and s["localFiles"] >= files and s["localBytes"] >= nbytes and s["state"] == "idle":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("syncthing did not finish")


def st_initial(
    root: Path, src: Path, files: int, nbytes: int, timeout: float, before: Callable[[], None] | None = None
) -> tuple[float, others.Syncthing, others.Syncthing]:
    dst = root / "st-dst"
    a, b = syncthing_pair(root, src, dst)
    a.start()
    deadline = time.monotonic() + timeout
    while a.status()["state"] != "idle" or a.status()["localFiles"] < files:
        if time.monotonic() > deadline:
            raise TimeoutError("syncthing scan")
        time.sleep(0.05)
    if before is not None:
        before()
    t = time.perf_counter()
    b.start()
    st_wait(b, files, nbytes, timeout)
    return time.perf_counter() - t, a, b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="W1,W2,W3,W4,W5")
    ap.add_argument("--no-syncthing", action="store_true")
    ap.add_argument("--no-warm", action="store_true", help="skip touching free RAM first (see warm_memory)")
    args = ap.parse_args()
    only = set(args.only.upper().split(","))
    big = (16 if args.quick else 256) * MiB
    n_small = 1000 if args.quick else 10_000
    if os.environ.get("BENCH_DIR"):
        # a fresh directory each run: the last run's daemon homes and receiver folders would
        # start this one with its index and files (its sources are new random data), and the
        # receiver could look done before it synced anything
        base = Path(os.environ["BENCH_DIR"]) / "sync"
        shutil.rmtree(base, ignore_errors=True)
        os.sync()  # as after a run: new files must not land among inodes freed just now
        base.mkdir(parents=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="syncer-bench-sync-"))
    use_st = others.syncthing_available() and not args.no_syncthing

    def warm(nbytes: int) -> Callable[[], None]:
        return (lambda: None) if args.no_warm else (lambda: warm_memory(nbytes))

    rows: list[tuple[str, str, str, str, str]] = []

    class Rows(list):  # print each result as soon as it is measured
        def append(self, row):  # type: ignore[override]
            print("RESULT", " | ".join(row), flush=True)
            super().append(row)

    rows = Rows()
    with contextlib.ExitStack() as stack:
        if not args.no_warm:
            print(stack.enter_context(freed_memory_kept()), flush=True)
        _run(args, only, big, n_small, base, use_st, warm, rows)
    w = [max(len(r[i]) for r in rows + [("workload", "syncer", "rsync", "Syncthing 1.19", "goal")]) for i in range(5)]
    for r in [("workload", "syncer", "rsync", "Syncthing 1.19", "goal")] + rows:
        print(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def _run(
    args: argparse.Namespace, only: set[str], big: int, n_small: int, base: Path, use_st: bool,
    warm: Callable[[int], Callable[[], None]], rows: list[tuple[str, str, str, str, str]],
) -> None:
    try:
        if only & {"W1", "W3", "W4"}:
            src = base / "w1-src"
            total = make_big(src, 4, big)
            # syncer
            root = base / "w1-syncer"
            dt, nodes = sy.initial_sync(root, src, before=warm(2 * total))
            try:
                mismatch = set(digest(src).items()) ^ set(digest(root / "dst-r0").items())
                assert not mismatch, f"W1: receiver differs from source: {sorted(mismatch)[:5]}"
                w1 = total / dt / 1e6
                lat = sy.edit_latency(nodes, src) if "W3" in only else []
                w4t, w4b = sy.append_sync(nodes, src, "f0.bin") if "W4" in only else (0.0, 0)
            finally:
                sy.stop_all(nodes)
            # rsync
            src2 = base / "w1-src-rs"
            shutil.copytree(src, src2)
            rs = others.RsyncDaemon(base, src2)
            try:
                warm(2 * total)()
                t, _ = rs.pull(base / "w1-rsync")
                rs_w1 = total / t / 1e6
                (src2 / "edit.bin").write_bytes(os.urandom(4096))
                rs_w3, _ = rs.pull(base / "w1-rsync")
                with open(src2 / "f0.bin", "ab") as f:
                    f.write(os.urandom(MiB))
                rs_w4t, rs_w4b = rs.pull(base / "w1-rsync")
            finally:
                rs.stop()
            st_w1 = st_lat = None
            st_w4 = (0.0, 0)
            if use_st:
                src3 = base / "w1-src-st"
                shutil.copytree(src, src3, ignore=shutil.ignore_patterns(".syncer"))
                t, a, b = st_initial(base / "w1-st", src3, 4, total, 900, before=warm(2 * total))
                try:
                    st_w1 = total / t / 1e6
                    st_lat = others.edit_poll(src3, base / "w1-st" / "st-dst", 10) if "W3" in only else []
                    before = b.bytes_in_total()
                    with open(src3 / "f0.bin", "ab") as f:
                        f.write(os.urandom(MiB))
                    t0 = time.perf_counter()
                    want = (src3 / "f0.bin").stat().st_size
                    dstf = base / "w1-st" / "st-dst" / "f0.bin"
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        try:
                            if dstf.stat().st_size == want and not b.status()["needFiles"]:
                                break
                        except FileNotFoundError:
                            pass  # being replaced
                        time.sleep(0.01)
                    st_w4 = (time.perf_counter() - t0, b.bytes_in_total() - before)
                finally:
                    a.stop()
                    b.stop()
            rows.append((f"W1 initial sync 4 x {big // MiB} MiB (MB/s)", f"{w1:.0f}", f"{rs_w1:.0f}", f"{st_w1:.0f}" if st_w1 else "-", ">= 1.5x Syncthing"))
            if lat:
                rows.append(("W3 4 KiB edit latency p50 / p95 (s)", f"{statistics.median(lat):.2f} / {pct(lat, .95):.2f}",
                             f"{rs_w3:.2f} (one run, no watcher)", f"{statistics.median(st_lat):.2f} / {pct(st_lat, .95):.2f} (fsWatcherDelayS=1)" if st_lat else "-", "p50 <= 1 s"))
            if w4t:
                rows.append(("W4 append 1 MiB to 256 MiB: time (s), wire", f"{w4t:.2f}, {w4b / MiB:.2f} MiB", f"{rs_w4t:.2f}, {rs_w4b / MiB:.2f} MiB",
                             f"{st_w4[0]:.2f}, {st_w4[1] / MiB:.2f} MiB" if use_st else "-", "<= 2 MiB on the wire"))
        if "W2" in only:
            src = base / "w2-src"
            make_small(src, n_small, 4096)
            dt, nodes = sy.initial_sync(base / "w2-syncer", src, before=warm(1 << 30))
            sy.stop_all(nodes)
            mismatch = set(digest(src).items()) ^ set(digest(base / "w2-syncer" / "dst-r0").items())
            assert not mismatch, f"W2: receiver differs from source: {sorted(mismatch)[:5]}"
            w2 = n_small / dt
            src2 = base / "w2-src-rs"
            shutil.copytree(src, src2, ignore=shutil.ignore_patterns(".syncer"))
            rs = others.RsyncDaemon(base, src2)
            try:
                warm(1 << 30)()
                t, _ = rs.pull(base / "w2-rsync")
            finally:
                rs.stop()
            st_w2 = None
            if use_st:
                src3 = base / "w2-src-st"
                shutil.copytree(src, src3, ignore=shutil.ignore_patterns(".syncer"))
                tt, a, b = st_initial(base / "w2-st", src3, n_small, n_small * 4096, 900, before=warm(1 << 30))
                a.stop()
                b.stop()
                st_w2 = n_small / tt
            rows.append((f"W2 initial sync {n_small} x 4 KiB (files/s)", f"{w2:.0f}", f"{n_small / t:.0f}", f"{st_w2:.0f}" if st_w2 else "-", ">= 2x Syncthing"))
        if "W5" in only:
            src = base / "w5-src"
            make_big(src, 1, big)
            # 1 -> 1 and 1 -> 7 alternated W5_RUNS times, medians compared: one 1 -> 1 takes under a
            # second and its core-seconds varied by a third from run to run, seven times over
            cpu1: list[float] = []
            cpu7: list[float] = []
            t1s, t7s, shares = [], [], []
            for k in range(W5_RUNS):
                t1, nodes = sy.initial_sync(base / f"w5-1to1-{k}", src, receivers=1, before=warm(2 * big), cpu=cpu1)
                sy.stop_all(nodes)
                t7, nodes = sy.initial_sync(base / f"w5-1to7-{k}", src, receivers=7, before=warm(14 * big), cpu=cpu7)
                try:
                    up, got = sy.uploads(nodes)
                finally:
                    sy.stop_all(nodes)
                t1s.append(t1)
                t7s.append(t7)
                shares.append(up.get("seed", 0) / got if got else float("nan"))
                print(f"W5 run {k + 1}: 1 -> 1 {t1:.2f} s, {cpu1[-1]:.2f} core-s; 1 -> 7 {t7:.2f} s, {cpu7[-1]:.2f} core-s; uploaded (MiB): "
                      + ", ".join(f"{n} {b / MiB:.0f}" for n, b in up.items())
                      + f"; received in all {got / MiB:.0f} MiB (ideal {7 * big / MiB:.0f})", flush=True)
            med = statistics.median
            t1, t7 = med(t1s), med(t7s)
            rows.append((f"W5 1 -> 7 receivers of {big // MiB} MiB vs 1 -> 1 (s, median of {W5_RUNS})", f"{t7:.1f} vs {t1:.1f} = {t7 / t1:.2f}x", "-", "-", "<= 2.5x"))
            rows.append((f"W5 seed's share of all bytes uploaded (of {W5_RUNS} runs)", f"{100 * min(shares):.0f}-{100 * max(shares):.0f} %", "-", "-", "<= 25 %"))
            swarm = med(cpu7) / (7 * med(cpu1))
            rows.append((f"W5 core-seconds 1 -> 7 vs 7 x (1 -> 1), medians of {W5_RUNS}", f"{med(cpu7):.1f} vs {7 * med(cpu1):.1f} = {swarm:.2f}x", "-", "-", "<= 1.15x"))
            # the control: eight daemons on this machine's cores with no swarm (unrelated pairs),
            # their syncs in turn and at once; what that costs is not the swarm's overhead
            srcs = []
            for i in range(CONTROL_PAIRS):
                srcs.append(base / f"w5-src{i}")
                shutil.copytree(src, srcs[-1], ignore=shutil.ignore_patterns(".syncer"))
            apart = sy.independent_pairs(base / "w5-apart", srcs, together=False, before=warm(2 * CONTROL_PAIRS * big))
            at_once = sy.independent_pairs(base / "w5-at-once", srcs, together=True, before=warm(2 * CONTROL_PAIRS * big))
            rows.append((f"W5 control: {CONTROL_PAIRS} unrelated 1 -> 1 pairs at once vs in turn (core-seconds)",
                         f"{at_once:.1f} vs {apart:.1f} = {at_once / apart:.2f}x", "-", "-", "-"))
            rows.append(("W5 core-seconds beyond the control's", f"{swarm / (at_once / apart):.2f}x", "-", "-", "-"))
    finally:
        if not os.environ.get("BENCH_DIR"):
            shutil.rmtree(base, ignore_errors=True)
            os.sync()  # the next run's files must not land among inodes freed just now (docs/benchmarks.md)


if __name__ == "__main__":
    main()

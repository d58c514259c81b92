"""BitTorrent download speed: `syncer get` against a libtorrent session, both fetching the same
file from the same libtorrent seed over loopback, from the magnet link (metadata over BEP 9
first), alternated over a few rounds.

The seed runs in this process (libtorrent's own threads); `syncer get` is the real command in a
subprocess (timed from launch to exit, so Python start-up and metadata are included); the
libtorrent downloader is a second session in this process (timed from add_torrent to finished:
no process start-up, which flatters it by ~0.3-0.5 s). Each download is checked against the
source.

python -m bench.bt [--mib 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libtorrent as lt

SETTINGS = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
}


def session() -> lt.session:
    return lt.session(SETTINGS)


def wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling libtorrent's state; bounded by the deadline


def digest(p: Path) -> str:
    h = hashlib.sha1()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_syncer(magnet: str, dest: Path, home: Path) -> float:
    env = dict(os.environ, SYNCER_HOME=str(home))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "syncer", "get", magnet, "--to", str(dest), "--json"], env=env, capture_output=True, text=True, timeout=900)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"syncer get failed: {proc.stderr}")
    s = json.loads(proc.stdout)
    assert s["state"] == "done" and not s["banned"], s
    return dt


def run_libtorrent(magnet: str, dest: Path) -> float:
    ses = session()
    atp = lt.parse_magnet_uri(magnet)
    atp.save_path = str(dest)
    t = time.perf_counter()
    h = ses.add_torrent(atp)
    wait(lambda: h.status().is_seeding, 900, "libtorrent to finish")
    dt = time.perf_counter() - t
    ses.remove_torrent(h)
    del ses
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="bench-bt-"))
    try:
        src = base / "seed" / "payload.bin"
        src.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        want = digest(src)
        ct = lt.create_torrent(lt.list_files(str(src)))
        lt.set_piece_hashes(ct, str(src.parent))
        ti = lt.torrent_info(lt.bencode(ct.generate()))
        seed = session()
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(src.parent)
        h = seed.add_torrent(atp)
        wait(lambda: h.status().is_seeding, 300, "the seed to check its data")
        magnet = lt.make_magnet_uri(h) + f"&x.pe=127.0.0.1:{seed.listen_port()}"
        home = base / "syncer-home"
        home.mkdir()
        for kv in (("discovery.dht.enabled", "false"), ("bt.listen", "127.0.0.1:0")):
            subprocess.run([sys.executable, "-m", "syncer", "config", "set", *kv], env=dict(os.environ, SYNCER_HOME=str(home)), check=True, capture_output=True)
        print(f"{args.mib} MiB, one file, piece size {ti.piece_length() >> 10} KiB, {ti.num_pieces()} pieces, libtorrent {lt.__version__} seed on loopback")
        results: dict[str, list[float]] = {"syncer get": [], "libtorrent": []}
        for r in range(args.rounds):
            for name in (("syncer get", "libtorrent") if r % 2 == 0 else ("libtorrent", "syncer get")):
                dest = base / f"dl-{name.replace(' ', '-')}-{r}"
                dest.mkdir()
                dt = run_syncer(magnet, dest, home) if name == "syncer get" else run_libtorrent(magnet, dest)
                assert digest(dest / "payload.bin") == want, f"{name}: wrong data"
                shutil.rmtree(dest)
                results[name].append(dt)
                print(f"round {r + 1}: {name:<11} {dt:6.2f} s  {args.mib * 1.048576 / dt:7.1f} MB/s", flush=True)
        for name, times in results.items():
            med = statistics.median(times)
            print(f"median {name:<11} {med:6.2f} s  {args.mib * 1.048576 / med:7.1f} MB/s")
    finally:
        if not os.environ.get("BENCH_DIR"):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

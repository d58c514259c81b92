"""syncer side of the sync benchmark: real daemons on loopback (via the test harness)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from bench._sync_others import edit_poll
from syncer.api import client
from syncer.config import DeviceConfig, edit_config
from syncer.paths import get_paths
from tests.daemons import Node
from tests.syncfix import folder_status, share, transfer

FID = "bench"
# daemons log at INFO, as users run them (the test harness's default is DEBUG)
os.environ.setdefault("SYNCER_NODE_LOG_LEVEL", "INFO")
POLL = 0.05  # status polls cost the daemon CPU too; 50 ms is < 1 % of any result here


def poll(pred, timeout: float, what: str) -> None:
    """wait_until with a short interval (its back-off would add up to 0.25 s to a result) that
    grows to 1 % of the time waited so far, at most 1 s: a status call costs the benchmark
    process and the daemon some CPU, and 20 a second for a 20-minute sync took a third of a core."""
    start = time.monotonic()
    deadline = start + timeout
    while not pred():
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(min(1.0, max(POLL, 0.01 * (now - start))))


def pair_instantly(nodes: list[Node]) -> None:
    """What `syncer pair ID --address URL` does on every node for every other node (edit
    config.toml, tell the daemon to reload), without starting a CLI process per pair: with 8
    nodes that would be 56 Python start-ups inside the measured time."""
    urls = {n.name: n.listen_url() for n in nodes}
    homes = [get_paths({"SYNCER_HOME": str(n.home)}) for n in nodes]
    for n, paths in zip(nodes, homes, strict=True):
        with edit_config(paths.config_file) as cfg:
            for o in nodes:
                if o is not n:
                    cfg.upsert_device(DeviceConfig(id=o.device_id, name=o.name, addresses=[urls[o.name]]))
    for paths in homes:
        client.reload_if_running(paths)


def _nodes(root: Path, names: list[str]) -> list[Node]:
    return [Node(root, n) for n in names]


def cpu_seconds(nodes: list[Node]) -> float:
    """User + system CPU time the nodes' daemons have used so far (core-seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for n in nodes:
        assert n.proc is not None
        with open(f"/proc/{n.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _holds(n: Node) -> tuple[int, int]:
    """Files and bytes the node's folder holds."""
    st = folder_status(n, FID)
    return st["local_files"], st["local_bytes"]


def _has_all(n: Node, files: int, nbytes: int) -> bool:
    """The node holds at least that much and needs nothing more."""
    st = folder_status(n, FID)
    return bool(st["local_files"] >= files and st["local_bytes"] >= nbytes and not st["need_files"])


def initial_sync(
    root: Path, src: Path, receivers: int = 1, timeout: float = 900, before: Callable[[], None] | None = None,
    cpu: list[float] | None = None,
) -> tuple[float, list[Node]]:
    """Time from pairing (daemons already running, seed scanned) until every receiver has it
    all; `before` runs just before the clock starts; `cpu` gets the daemons' core-seconds
    over that time appended."""
    nodes = _nodes(root, ["seed"] + [f"r{i}" for i in range(receivers)])
    try:
        share(nodes[0], src, FID)
        for n in nodes[1:]:
            share(n, root / f"dst-{n.name}", FID)
        for n in nodes:
            n.start()
        files, want = _holds(nodes[0])
        if before is not None:
            before()
        c0 = cpu_seconds(nodes)
        t = time.perf_counter()
        pair_instantly(nodes)

        pending = nodes[1:]

        def all_done() -> bool:
            # one receiver asked per poll, and none again once it has it all: the polls cost
            # the daemons CPU, and asking all 7 each time charged 1 -> 7 for the benchmark's
            # own polling (the first receiver answered every one)
            while pending and _has_all(pending[0], files, want):
                pending.pop(0)
            return not pending

        poll(all_done, timeout, "initial sync")
        took = time.perf_counter() - t
        if cpu is not None:
            cpu.append(cpu_seconds(nodes) - c0)
        return took, nodes
    except BaseException:
        for n in nodes:
            n.stop()
        raise


def independent_pairs(root: Path, srcs: list[Path], together: bool, timeout: float = 900,
                      before: Callable[[], None] | None = None) -> float:
    """W5's control: len(srcs) unrelated 1 -> 1 pairs (each seed its own copy), all daemons
    running throughout; the pairs synced one after the other, or all at once (`together`).
    Returns the daemons' core-seconds over the syncs: what running this many daemons on this
    many cores costs by itself, with no swarm at all."""
    pairs = [(Node(root, f"seed{i}"), Node(root, f"r{i}")) for i in range(len(srcs))]
    nodes = [n for pair in pairs for n in pair]
    try:
        for (seed, r), src in zip(pairs, srcs, strict=True):
            share(seed, src, FID)
            share(r, root / f"dst-{r.name}", FID)
        for n in nodes:
            n.start()
        want = [_holds(seed) for seed, _ in pairs]

        def done(i: int) -> bool:
            return _has_all(pairs[i][1], *want[i])

        if before is not None:
            before()
        c0 = cpu_seconds(nodes)
        if together:
            for pair in pairs:
                pair_instantly(list(pair))
            poll(lambda: all(done(i) for i in range(len(pairs))), timeout, "independent pairs")
        else:
            for i, pair in enumerate(pairs):
                pair_instantly(list(pair))
                poll(lambda i=i: done(i), timeout, f"pair {i}")
        return cpu_seconds(nodes) - c0
    finally:
        stop_all(nodes)


def uploads(nodes: list[Node]) -> tuple[dict[str, int], int]:
    """Bytes each node served to the others, and bytes all of them received, in the folder."""
    up: dict[str, int] = {}
    got = 0
    for n in nodes:
        rows = [transfer(n, o, FID) for o in nodes if o is not n]
        up[n.name] = sum(r["bytes_out"] for r in rows)
        got += sum(r["bytes_in"] for r in rows)
    return up, got


def stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.stop()


def edit_latency(nodes: list[Node], src: Path, edits: int = 10) -> list[float]:
    return edit_poll(src, nodes[1].home.parent / f"dst-{nodes[1].name}", edits)


def append_sync(nodes: list[Node], src: Path, name: str) -> tuple[float, int]:
    dst = nodes[1].home.parent / f"dst-{nodes[1].name}"
    a, b = nodes
    before = b.device(a)["wire_bytes_in"] + a.device(b)["wire_bytes_in"]
    with open(src / name, "ab") as f:
        f.write(os.urandom(1 << 20))
    want = (src / name).stat().st_size
    t = time.perf_counter()
    poll(lambda: (dst / name).stat().st_size == want and folder_status(b, FID)["need_files"] == 0, 120, "append")
    dt = time.perf_counter() - t
    after = b.device(a)["wire_bytes_in"] + a.device(b)["wire_bytes_in"]
    return dt, after - before

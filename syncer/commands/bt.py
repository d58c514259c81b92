"""`syncer publish`, `get`, `publications`, `unpublish`: public shares over BitTorrent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from syncer.api import client
from syncer.commands import common
from syncer.errors import DaemonError, SyncerError
from syncer.paths import Paths
from syncer.runtime.timeouts import wait_for

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app

REFRESH = 0.25
log = logging.getLogger(__name__)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class DaemonFinder:
    """The running daemon's DHT node, over the control API (the CLI's side: bt/ knows nothing
    of the API)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    async def _call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        try:
            return await asyncio.to_thread(client.call, self.paths, "POST", path, body, 60.0)
        except DaemonError as e:
            log.info("DHT through the daemon: %s", e)
            return {}

    async def get_peers(self, info_hash: bytes) -> list[tuple[str, int]]:
        from syncer.bt.dht import MAX_PEERS  # imported when used: the CLI starts faster

        r = await self._call("/rest/bt/dht/get_peers", {"info_hash": info_hash.hex()})
        peers = r.get("peers")
        out = []
        for p in peers[:MAX_PEERS] if isinstance(peers, list) else []:
            if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int):
                out.append((p[0], p[1]))
        return out

    async def announce(self, info_hash: bytes, port: int) -> int:
        r = await self._call("/rest/bt/dht/announce", {"info_hash": info_hash.hex(), "port": port})
        n = r.get("nodes", 0)
        return n if isinstance(n, int) else 0


@app.command()
def publish(
    path: Path = typer.Argument(..., help="a file or directory to publish"),
    name: str = typer.Option("", "--name", help="the torrent's name (default: the file or directory name)"),
    tracker: list[str] = typer.Option([], "--tracker", help="tracker announce URL (repeatable)"),
    no_dht: bool = typer.Option(False, "--no-dht", help="do not announce into the DHT"),
    torrent_out: Path | None = typer.Option(None, "--torrent-out", help="also write the .torrent file here"),
    json: bool = common.JsonOption,
) -> None:
    """Publish PATH as a BitTorrent v1 torrent seeded by the daemon; prints its magnet link."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from syncer.bt.create import CreateError, build
    from syncer.bt.magnet import Magnet, parse_hostport
    from syncer.bt.metainfo import torrent_file
    from syncer.bt.publications import Publication, PublicationStore

    for url in tracker:
        if not url.startswith(("http://", "https://")):
            raise SyncerError(f"bad tracker {url!r}: expected an http(s):// announce URL")
    path = path.expanduser().absolute()
    if not path.exists():
        raise SyncerError(f"{path} does not exist")
    p = common.paths()
    console = Console(stderr=True)
    with Progress(TextColumn("hashing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console, transient=True, disable=json or not console.is_terminal) as progress:
        task = progress.add_task("hash", total=None)
        try:
            info, fp = build(path, name or None, progress=lambda n: progress.advance(task, n))
        except OSError as e:
            raise CreateError(f"cannot read {path}: {e}") from None
    store = PublicationStore(p.state_dir)
    store.add(
        Publication(info.hex, info.name, str(path), list(tracker), not no_dht, fp, time.time(), 0, info.total_length),
        torrent_file(info, list(tracker)),
    )
    if torrent_out is not None:
        torrent_out.write_bytes(torrent_file(info, list(tracker)))
    peers: list[tuple[str, int]] = []
    note = ""
    try:
        st = client.call(p, "POST", "/rest/bt/publish", {"info_hash": info.hex})
        peers = [parse_hostport(a) for a in st.get("addresses", [])]
    except client.NotRunning:
        note = "the daemon is not running: it seeds this publication once started (`syncer start`)"
    magnet = Magnet(info.info_hash, info.name, tuple(tracker), tuple(peers)).uri()
    if json:
        common.print_json({"info_hash": info.hex, "name": info.name, "magnet": magnet, "size": info.total_length, "pieces": info.num_pieces, "piece_length": info.piece_length, "files": len(info.files), "seeding": not note})
        return
    typer.echo(magnet)
    if note:
        typer.echo(note, err=True)


@app.command()
def publications(json: bool = common.JsonOption) -> None:
    """List publications: state, peers, uploaded, ratio."""
    from syncer.bt.publications import PublicationStore

    p = common.paths()
    try:
        rows = client.call(p, "GET", "/rest/bt/publications")
    except client.NotRunning:
        rows = [
            {"info_hash": x.info_hash, "name": x.name, "path": x.path, "size": x.size, "state": "daemon not running", "problem": "", "peers": 0, "uploaded": x.uploaded, "ratio": x.uploaded / x.size if x.size else 0.0, "up_rate": 0.0, "trackers": x.trackers, "dht": x.dht}
            for x in PublicationStore(p.state_dir).load()
        ]
    if json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo("no publications (publish one with `syncer publish PATH`)")
        return
    t = Table("info-hash", "name", "size", "state", "peers", "uploaded", "ratio", "path")
    for r in rows:
        state = r["state"] + (f": {r['problem']}" if r.get("problem") else "")
        t.add_row(r["info_hash"][:12], r["name"], _human(r["size"]), state, str(r["peers"]), _human(r["uploaded"]), f"{r['ratio']:.2f}", r["path"])
    Console(width=200).print(t)


@app.command()
def unpublish(key: str = typer.Argument(..., help="info-hash (or a prefix), magnet link, name or path")) -> None:
    """Stop publishing; the files are left alone."""
    from syncer.bt.publications import PublicationStore

    p = common.paths()
    pub = PublicationStore(p.state_dir).remove(key)
    with contextlib.suppress(client.NotRunning):
        client.call(p, "POST", "/rest/bt/unpublish", {"info_hash": pub.info_hash})
    typer.echo(f"unpublished {pub.name} ({pub.info_hash})")


@app.command()
def get(
    source: str = typer.Argument(..., help="a magnet link or a .torrent file"),
    to: Path = typer.Option(Path("."), "--to", help="directory to download into"),
    files: list[str] = typer.Option([], "--files", help="only files matching this glob (repeatable)"),
    seed: bool = typer.Option(False, "--seed", help="keep seeding after the download (until Ctrl-C)"),
    json: bool = common.JsonOption,
) -> None:
    """Download a torrent from standard BitTorrent peers; resumes where it stopped."""
    from syncer.bt import magnet as magnets
    from syncer.bt.metainfo import MetainfoError, parse_info, parse_torrent

    # the outcome (an error included) is reported once, below; logs only when asked for
    logging.basicConfig(level=os.environ.get("SYNCER_LOG_LEVEL", "CRITICAL").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = common.paths()
    cfg = common.config()
    to = to.expanduser().absolute()
    if not to.is_dir():
        raise SyncerError(f"{to} is not a directory")
    info = None
    if source.startswith("magnet:"):
        try:
            m = magnets.parse(source)
        except magnets.MagnetError as e:
            raise SyncerError(str(e)) from None
        ih, trackers, peers, select = m.info_hash, m.trackers, m.peers, m.select_only
        cached = _metadata_cache(p.state_dir, ih)
        with contextlib.suppress(OSError, MetainfoError):
            info = parse_info(cached.read_bytes(), ih)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise SyncerError(f"cannot read {source}: {e.strerror or e}") from None
        try:
            t = parse_torrent(data)
        except MetainfoError as e:
            raise SyncerError(f"{source}: {e}") from None
        info, ih, trackers, peers, select = t.info, t.info.info_hash, t.trackers, (), None
    daemon = client.is_running(p)
    try:
        summary = asyncio.run(_get(p, cfg, daemon, ih, info, trackers, peers, select, to, tuple(files), seed, json))
    except KeyboardInterrupt:
        raise SyncerError("interrupted; run the same command again to resume") from None
    if json:
        common.print_json(summary)
    elif summary["state"] in ("done", "seeding", "stopped"):
        typer.echo(
            f"{summary['name']}: {_human(summary['have_bytes'])} in {summary['path']} "
            f"({_human(summary['downloaded'])} downloaded, {summary['resumed_pieces']} pieces resumed, "
            f"{len(summary['banned'])} peers banned)"
        )
    if summary["state"] == "error":
        raise SyncerError(summary["error"])


def _metadata_cache(state_dir: Path, ih: bytes) -> Path:
    return state_dir / "bt" / "metadata" / f"{ih.hex()}.info"


async def _get(p: Any, cfg: Any, daemon: bool, ih: bytes, info: Any, trackers: tuple[str, ...], peers: tuple[tuple[str, int], ...], select: frozenset[int] | None, to: Path, globs: tuple[str, ...], seed: bool, json: bool) -> dict[str, Any]:
    from syncer.bt.dht import NodeFinder, own_node
    from syncer.bt.resume import Journal, journal_path
    from syncer.bt.service import parse_listen
    from syncer.bt.session import BtSession
    from syncer.bt.torrent import Placement, State, Torrent

    host, _ = parse_listen(cfg.get("bt.listen"))
    node = None
    finder: Any = None
    if daemon:  # the daemon's DHT node knows the network already
        finder = DaemonFinder(p)
    elif cfg.get("discovery.dht.enabled"):
        boot = []
        for b in cfg.get("discovery.dht.bootstrap"):
            h, _, port = b.rpartition(":")
            boot.append((h.strip("[]"), int(port)))
        node = await own_node(boot)
        asyncio.ensure_future(node.bootstrap())
        finder = NodeFinder(lambda: node)
    session = BtSession(host, 0, dht=lambda: finder)
    await session.start()

    def save_metadata(meta: Any) -> None:
        cache = _metadata_cache(p.state_dir, ih)
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_bytes(meta.raw)
            os.replace(tmp, cache)

    journal = Journal(journal_path(p.state_dir, ih, to), ih)
    torrent = Torrent(session, ih, Placement(to, globs=globs, indices=select), info=info, trackers=trackers, peers=peers, use_dht=finder is not None, seed=seed, journal=journal, on_metadata=save_metadata)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    session.add(torrent)
    try:
        await _watch(torrent, stop, seed, quiet=json, listen=f"{session.host}:{session.port}")
    finally:
        stats = torrent.statistics()
        await session.stop()
        if node is not None:
            await node.stop()
    if torrent.state is State.STOPPED and torrent.complete.is_set() and not torrent.error:
        stats["state"] = "seeding" if seed else "done"
    stats["path"] = str(to / torrent.name)
    return stats


async def _watch(torrent: Any, stop: asyncio.Event, seed: bool, quiet: bool, listen: str) -> None:
    """Until complete (or, with --seed, until a signal), with a progress bar on a terminal."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[peers]}"),
    )
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal, refresh_per_second=4) as progress:
        task = progress.add_task(torrent.name, total=None, peers="")
        done_at: float | None = None
        while not stop.is_set():
            s = torrent.statistics()
            phase = s["state"]
            desc = s["name"] if phase in ("downloading", "seeding", "done") else f"{s['name']} ({phase})"
            peers = f"{s['peers']} peers, {s['seeds']} seeds" + (f", up {_human(s['up_rate'])}/s" if seed else "")
            progress.update(task, description=desc[:40], total=s["wanted_bytes"] or None, completed=s["have_bytes"], peers=peers)
            if torrent.error:
                return
            if torrent.complete.is_set():
                if not seed:
                    return
                if done_at is None:
                    done_at = time.monotonic()
                    print(f"{s['name']}: complete; seeding on {listen} until Ctrl-C", file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):
                await wait_for(stop.wait(), REFRESH)


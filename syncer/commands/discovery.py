"""`syncer tracker` and `syncer dht-node`: standalone discovery servers."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import typer

from syncer.errors import SyncerError

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


def _serve(start: Callable[[], Awaitable[tuple[str, int]]], stop: Callable[[], Awaitable[Any]]) -> None:
    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        host, port = await start()
        print(f"listening on {host}:{port}", flush=True)
        try:
            await done.wait()
        finally:
            await stop()

    asyncio.run(main())


def _parse_hostport(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit():
        raise SyncerError(f"bad address {v!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@app.command()
def tracker(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(6969, "--port"),
    interval: int = typer.Option(60, "--interval", help="re-announce interval given to clients (s)"),
    rate: float = typer.Option(50.0, "--rate-per-ip", help="sustained requests/s allowed per source IP"),
) -> None:
    """Run a tracker (syncer JSON + BitTorrent HTTP tracker) until SIGTERM."""
    from syncer.discovery.tracker_server import TrackerServer

    server = TrackerServer(host, port, interval=interval, rate=rate, burst=max(200.0, rate * 4))
    _serve(server.start, server.stop)


@app.command("dht-node")
def dht_node(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(6881, "--port"),
    bootstrap: list[str] = typer.Option([], "--bootstrap", help="HOST:PORT of a node to join through"),
) -> None:
    """Run a standalone Mainline-compatible DHT node until SIGTERM."""
    from syncer.discovery.dht.node import DhtNode

    node = DhtNode(host, port, bootstrap=[_parse_hostport(b) for b in bootstrap])

    async def start() -> tuple[str, int]:
        addr = await node.start()
        asyncio.ensure_future(node.bootstrap())
        return addr

    _serve(start, node.stop)
    sys.exit(0)

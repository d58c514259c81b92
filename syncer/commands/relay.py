"""`syncer relay`: the relay + rendezvous server in the foreground."""

from __future__ import annotations

import asyncio
import signal

import typer

from syncer.commands import common
from syncer.identity import load_or_create
from syncer.relay.server import RelayError, RelayLimits, RelayServer

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


@app.command("relay")
def relay_cmd(
    host: str = typer.Option("0.0.0.0", "--host", help="address to listen on (TCP and UDP)"),
    port: int = typer.Option(22067, "--port", help="port for TCP and UDP; 0 = pick a free one"),
    max_sessions: int = typer.Option(RelayLimits.max_sessions, "--max-sessions", help="relayed sessions at once"),
    idle_timeout: float = typer.Option(RelayLimits.idle_timeout, "--idle-timeout", help="close a session idle this many seconds"),
    rate_kbps: int = typer.Option(0, "--rate-kbps", help="per-session rate cap in KiB/s each way (0 = none)"),
) -> None:
    """Run a relay + rendezvous server in the foreground until SIGTERM/SIGINT.

    Its identity lives in SYNCER_HOME/relay/ (created on first use); clients may pin it with
    relay://HOST:PORT?id=DEVICE-ID, printed at start."""
    relay_dir = common.paths().config_dir / "relay"
    identity = load_or_create(relay_dir / "cert.pem", relay_dir / "key.pem")
    limits = RelayLimits(
        max_sessions=max_sessions, idle_timeout=idle_timeout, rate_limit=rate_kbps * 1024
    )
    asyncio.run(_serve(RelayServer(identity, limits), host, port))


async def _serve(server: RelayServer, host: str, port: int) -> None:
    try:
        await server.start(host, port)
    except OSError as e:
        raise RelayError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shown = f"[{server.host}]" if ":" in server.host else server.host
    typer.echo(f"listening on {shown}:{server.port}")
    typer.echo(server.url)
    try:
        await stop.wait()
    finally:
        await server.close()

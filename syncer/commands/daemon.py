"""`syncer run`, `start`, `stop`, `status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from syncer.api import client
from syncer.commands import common
from syncer.commands.service import installed
from syncer.errors import DaemonError

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


@app.command()
def run(
    listen: list[str] = typer.Option([], "--listen", help="listen address, e.g. tcp://0.0.0.0:22000 (repeatable; overrides config)"),
    api: str = typer.Option("", "--api", help="control API HOST:PORT (overrides config)"),
) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    # syncer.cli sends `run` to commands/run.py without Typer; this declaration gives --help
    from syncer.commands.run import start

    start(listen, api)


def _read_pid() -> int | None:
    try:
        pid = int(common.paths().pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


@app.command()
def start(
    listen: list[str] = typer.Option([], "--listen", help="listen address (repeatable; overrides config)"),
    api: str = typer.Option("", "--api", help="control API HOST:PORT (overrides config)"),
) -> None:
    """Start the daemon in the background (log in the state dir)."""
    p = common.paths()
    pid = _read_pid()
    if pid is not None:
        raise DaemonError(f"the daemon is already running (pid {pid}); stop it with `syncer stop`")
    common.identity()  # create it now so errors show here, not in the log
    args = [sys.executable, "-m", "syncer", "run"]
    for url in listen:
        args += ["--listen", url]
    if api:
        args += ["--api", api]
    with open(p.log_file, "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=os.environ.copy()
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = p.log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(no log)"]
            raise DaemonError(f"the daemon exited at start ({proc.returncode}): {tail[0]} (whole log: {p.log_file})")
        if _read_pid() == proc.pid and client.is_running(p):
            typer.echo(f"started (pid {proc.pid}, log {p.log_file})")
            return
        time.sleep(0.05)  # polling a subprocess's readiness; bounded by the deadline
    proc.terminate()
    raise DaemonError(f"the daemon did not become ready within {START_TIMEOUT:.0f}s (see {p.log_file})")


@app.command()
def stop() -> None:
    """Stop the background daemon."""
    pid = _read_pid()
    if pid is None:
        raise DaemonError("the daemon is not running (start it with `syncer start`)")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if _read_pid() is None:
            typer.echo(f"stopped (pid {pid})")
            return
        time.sleep(0.05)  # waiting for another process to exit; bounded by the deadline
    raise DaemonError(f"the daemon (pid {pid}) did not stop within {STOP_TIMEOUT:.0f}s; `kill -9 {pid}` ends it")


@app.command()
def status(json: bool = common.JsonOption) -> None:
    """Show the daemon's state: folders, completion, peers and transports."""
    p = common.paths()
    try:
        data = client.call(p, "GET", "/rest/status")
    except client.NotRunning:
        if json:
            common.print_json({"running": False, "service": installed()})
            raise typer.Exit(3) from None
        typer.echo("the daemon is not running (start it with `syncer start`)")
        typer.echo(_service_line())
        raise typer.Exit(3) from None
    if json:
        common.print_json({**data, "service": installed()})
        return
    c = Console(width=200)
    c.print(f"device {data['device_id']} ({data['name']}), pid {data['pid']}, up {common.format_duration(data['uptime_s'])}")
    c.print(_service_line(), highlight=False, markup=False)
    c.print("listening on " + ", ".join(data["listen"]) + f"; API {data['api']}")
    for notice in data.get("notices", []):
        c.print(f"notice: {notice}", markup=False, highlight=False)
    if data.get("folders"):
        t = Table("folder", "label", "state", "complete", "need", "path")
        for f in data["folders"]:
            t.add_row(
                f["id"], f.get("label", ""), f["state"], f"{f.get('completion', 100):.1f}%",
                _bytes(f.get("need_bytes", 0)), f["path"],
            )
        c.print(t)
    t = Table("device", "name", "state", "transport", "address", "down", "up")
    for d in data["devices"]:
        t.add_row(
            d["device_id"][:15], d.get("name", ""), "connected" if d["connected"] else "disconnected",
            d.get("transport") or "", d.get("address") or "",
            _rate(d.get("down_rate", 0)), _rate(d.get("up_rate", 0)),
        )
    c.print(t)


def _service_line() -> str:
    svc = installed()
    if svc["installed"]:
        return f"login service: installed ({svc['path']})"
    return "login service: not installed (`syncer service install` starts syncer at login)"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rate(n: float) -> str:
    return _bytes(n) + "/s"

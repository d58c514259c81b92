"""`syncer service install|uninstall|status`: run the daemon in the background from login on.

Linux: a systemd *user* unit `~/.config/systemd/user/syncer.service` ($XDG_CONFIG_HOME honoured)
running `python -m syncer run` with this SYNCER_HOME, restarted on failure; installing enables
and starts it with `systemctl --user` when that is available (else it says what to run).
macOS: a launchd agent `~/Library/LaunchAgents/io.syncer.daemon.plist` (RunAtLoad, KeepAlive),
loaded with `launchctl`. The daemon's own pid lock keeps a `syncer start` and the service from
running two daemons for one SYNCER_HOME.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import typer

from syncer.commands import common
from syncer.errors import SyncerError

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app
service_app = typer.Typer(help="Start syncer at login (systemd user unit, launchd agent).", no_args_is_help=True)
app.add_typer(service_app, name="service")

UNIT_NAME = "syncer.service"
LAUNCHD_LABEL = "io.syncer.daemon"
COMMAND_TIMEOUT = 30.0


def is_macos() -> bool:
    return sys.platform == "darwin"


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def service_file() -> Path:
    return plist_path() if is_macos() else unit_path()


def _home_env() -> str | None:
    home = os.environ.get("SYNCER_HOME")
    return str(Path(home).expanduser().absolute()) if home else None


def unit_text(python: str, syncer_home: str | None) -> str:
    env = f'Environment="SYNCER_HOME={syncer_home}"\n' if syncer_home else ""
    return (
        "[Unit]\n"
        "Description=syncer: peer-to-peer folder sync\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"ExecStart={shlex.quote(python)} -m syncer run\n"
        f"{env}"
        "Restart=on-failure\n"
        "RestartSec=10\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def plist_text(python: str, syncer_home: str | None, log: Path) -> str:
    env = ""
    if syncer_home:
        env = (
            "  <key>EnvironmentVariables</key>\n  <dict>\n"
            f"    <key>SYNCER_HOME</key><string>{escape(syncer_home)}</string>\n  </dict>\n"
        )
    args = "".join(f"    <string>{escape(a)}</string>\n" for a in (python, "-m", "syncer", "run"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
        '<plist version="1.0">\n<dict>\n'
        f"  <key>Label</key><string>{LAUNCHD_LABEL}</string>\n"
        f"  <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n"
        f"{env}"
        "  <key>RunAtLoad</key><true/>\n"
        "  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>\n"
        f"  <key>StandardOutPath</key><string>{escape(str(log))}</string>\n"
        f"  <key>StandardErrorPath</key><string>{escape(str(log))}</string>\n"
        "</dict>\n</plist>\n"
    )


def installed() -> dict[str, object]:
    """For `syncer status`: whether the login service is installed, and where."""
    path = service_file()
    return {"installed": path.exists(), "path": str(path), "kind": "launchd" if is_macos() else "systemd"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run(*args: str) -> str | None:
    """Run a service manager command; None if it worked, else why not."""
    if shutil.which(args[0]) is None:
        return f"{args[0]} is not available here"
    try:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode != 0:
        return (r.stderr or r.stdout).strip().splitlines()[-1:][0] if (r.stderr or r.stdout).strip() else f"exit {r.returncode}"
    return None


@service_app.command("install")
def install(start: bool = typer.Option(True, "--start/--no-start", help="also start it now")) -> None:
    """Install the login service (systemd user unit or launchd agent) and start it."""
    p = common.paths()
    path = service_file()
    if is_macos():
        _write(path, plist_text(sys.executable, _home_env(), p.log_file))
        typer.echo(f"installed {path}")
        steps: list[tuple[str, ...]] = [("launchctl", "load", "-w", str(path))] if start else []
        manual = f"launchctl load -w {path}"
    else:
        _write(path, unit_text(sys.executable, _home_env()))
        typer.echo(f"installed {path}")
        steps = [("systemctl", "--user", "daemon-reload"), ("systemctl", "--user", "enable", *(["--now"] if start else []), UNIT_NAME)]
        manual = f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
    for step in steps:
        why = _run(*step)
        if why is not None:
            typer.echo(f"could not enable it ({why}); in your desktop session, run: {manual}")
            return
    typer.echo("syncer now starts at login" + (" and runs now (see `syncer status`)" if start else ""))


@service_app.command("uninstall")
def uninstall() -> None:
    """Stop and remove the login service."""
    path = service_file()
    if not path.exists():
        raise SyncerError(f"no login service is installed ({path} does not exist)")
    if is_macos():
        _run("launchctl", "unload", "-w", str(path))
        path.unlink()
    else:
        _run("systemctl", "--user", "disable", "--now", UNIT_NAME)
        path.unlink()
        _run("systemctl", "--user", "daemon-reload")
    typer.echo(f"removed {path}; syncer no longer starts at login")


@service_app.command("status")
def service_status(json: bool = common.JsonOption) -> None:
    """Whether the login service is installed."""
    info = installed()
    if json:
        common.print_json(info)
    elif info["installed"]:
        typer.echo(f"installed: {info['path']} ({info['kind']}); syncer starts at login")
    else:
        typer.echo("not installed: `syncer service install` starts syncer at login")

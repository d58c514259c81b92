"""`syncer invite`, `invites`, `join`: one-step pairing and joining a folder (syncer/invite/)."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from syncer.api import client
from syncer.commands import common
from syncer.config import FolderConfig, edit_config
from syncer.deviceid import DeviceId
from syncer.errors import DaemonError, FolderError, SyncerError
from syncer.invite.code import parse_code_or_link
from syncer.invite.pairing import pair_for_folder
from syncer.invite.store import InviteStore
from syncer.model import share as folderlib

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app

JOIN_TIMEOUT = 60.0


def _store() -> InviteStore:
    return InviteStore(common.paths().invites_file)


def _api(method: str, path: str, body: Any = None, timeout: float = client.TIMEOUT) -> Any:
    try:
        return client.call(common.paths(), method, path, body, timeout=timeout)
    except client.Refused as e:
        raise SyncerError(e.detail) from None


@app.command()
def invite(
    folder: str = typer.Argument("", help="folder id or label to invite to"),
    read_only: bool = typer.Option(False, "--read-only", help="the other device gets a receive-only copy"),
    expires: str = typer.Option("24h", "--expires", help="how long the code works, e.g. 30m, 24h, 7d"),
    uses: int = typer.Option(1, "--uses", help="how many devices may join with it"),
    revoke: int = typer.Option(0, "--revoke", metavar="ID", help="revoke the invite with this ID instead"),
    qr: bool = typer.Option(True, "--qr/--no-qr", help="print the link as a QR code"),
    json: bool = common.JsonOption,
) -> None:
    """Invite another device to a folder: prints a short code, a link and a QR code.

    On the other device, `syncer join CODE` pairs both devices and joins the folder."""
    if revoke:
        _revoke(revoke, json)
        return
    if not folder:
        raise FolderError("name the folder to invite to: `syncer invite FOLDER` (see `syncer folders`)")
    seconds = common.parse_duration(expires)
    body = {"folder": folder, "read_only": read_only, "expires_s": seconds, "uses": uses}
    try:
        inv = _api("POST", "/rest/invites", body)
    except client.NotRunning:
        raise DaemonError(
            "the daemon is not running, and it is what answers the other device: start it with "
            "`syncer start`, then run `syncer invite` again"
        ) from None
    if json:
        common.print_json(inv)
        return
    mode = "read-only" if inv["read_only"] else "read-write"
    typer.echo(
        f"Invite {inv['id']} to folder {inv['label'] or inv['folder_id']!r} ({inv['folder_id']}), {mode}, "
        f"{inv['uses']} use{'s' if inv['uses'] != 1 else ''}, expires {common.format_when(inv['expires'])}"
    )
    typer.echo("")
    typer.echo(f"code: {inv['code']}")
    typer.echo(f"      on the other device: syncer join {inv['code']}")
    typer.echo(f"link: {inv['link']}")
    if qr:
        typer.echo(_qr(inv["link"]))
    typer.echo(f"Revoke it with `syncer invite --revoke {inv['id']}`; list invites with `syncer invites`.")


def _qr(text: str) -> str:
    import segno

    out = io.StringIO()
    segno.make(text, error="l").terminal(out=out, compact=True)
    return out.getvalue().rstrip("\n")


def _revoke(nameplate: int, json: bool) -> None:
    try:
        inv = _api("POST", "/rest/invites/revoke", {"id": nameplate})
    except client.NotRunning:
        with _store().locked() as store:
            inv = store.revoke(nameplate, time.time()).public(time.time())
    if json:
        common.print_json(inv)
    elif inv["status"] == "revoked":
        typer.echo(f"invite {nameplate} revoked")
    else:
        typer.echo(f"invite {nameplate} had already ended ({inv['status']})")


@app.command()
def invites(json: bool = common.JsonOption) -> None:
    """List the invites issued here: status, uses, wrong codes, expiry."""
    try:
        rows = _api("GET", "/rest/invites")
    except client.NotRunning:
        rows = _store().listing(time.time())
    if json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo("no invites (invite a device with `syncer invite FOLDER`)")
        return
    t = Table("id", "folder", "status", "mode", "used", "wrong codes", "expires", "code")
    for r in rows:
        active = r["status"] == "active"
        t.add_row(
            str(r["id"]), r["folder_id"], r["status"], "read-only" if r["read_only"] else "read-write",
            f"{r['used']}/{r['uses']}", str(r["failures"]), common.format_when(r["expires"]),
            r["code"] if active else "",
        )
    Console(width=200).print(t)


@app.command()
def join(
    code: str = typer.Argument(..., help="the code (like 7-orbit-velvet-canyon) or the syncer:// link"),
    path: Path = typer.Argument(None, help="where the folder goes (default: ./LABEL)"),
    selective: bool = typer.Option(False, "--selective", help="join with metadata only; fetch paths with `syncer select`"),
    timeout: float = typer.Option(JOIN_TIMEOUT, "--timeout", help="seconds to look for the inviting device"),
    json: bool = common.JsonOption,
) -> None:
    """Join a folder another device invited us to: pairs both devices, one command each side."""
    parse_code_or_link(code)  # a typo is reported before anything else happens
    p = common.paths()
    if path is not None:
        _check_target(path.expanduser())
    try:
        result = _api("POST", "/rest/join", {"text": code, "timeout": timeout}, timeout=timeout + 30)
        daemon = True
    except client.NotRunning:
        result = asyncio.run(_join_here(code, timeout))
        daemon = False
    root = _add_folder(result, path, selective)
    if daemon:
        client.reload_if_running(p)
    if json:
        common.print_json({**result, "path": str(root), "daemon_running": daemon})
        return
    inviter = result["name"] or DeviceId.parse(result["device"]).short
    typer.echo(f"paired with {inviter} ({result['device']}), found via {result['source']} at {result['address']}")
    mode = " (read-only: changes made here stay here)" if result["read_only"] else ""
    typer.echo(f"joined folder {result['label'] or result['folder_id']!r} ({result['folder_id']}) at {root}{mode}")
    if daemon:
        typer.echo("syncing now; follow it with `syncer status`")
    else:
        typer.echo("the daemon is not running: start it with `syncer start` to sync (or `syncer service install` to start it at login)")


async def _join_here(text: str, timeout: float) -> dict[str, Any]:
    """No daemon runs: do the exchange in this process, with discovery of our own."""
    from syncer.invite.addresses import dialable
    from syncer.invite.join import Finder, Joiner

    cfg = common.config()
    ident = common.identity()
    code, link = parse_code_or_link(text)
    listen = cfg.get("listen")
    ports = [int(u.rpartition(":")[2]) for u in listen if u.rpartition(":")[2].isdigit()]
    port = next((x for x in ports if x), 22000)
    finder = Finder(cfg, ident.device_id, None, port)
    joiner = Joiner(ident, cfg, code, link, cfg.device_name, dialable(listen), finder)
    return (await joiner.run(timeout)).to_json()


def _safe_name(label: str, fallback: str) -> str:
    name = re.sub(r"[/\\\x00-\x1f]", "_", label).strip(" .") or fallback
    return name[:100]


def _check_target(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path} exists and is not a directory: name another PATH")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise FolderError(f"{parent} does not exist: create it first, or name another PATH")


def _add_folder(result: dict[str, Any], path: Path | None, selective: bool) -> Path:
    p = common.paths()
    folder_id = result["folder_id"]
    if path is None:
        path = Path.cwd() / _safe_name(result["label"], folder_id)
    path = path.expanduser()
    _check_target(path)
    path.mkdir(exist_ok=True)
    device = DeviceId.parse(result["device"])
    with edit_config(p.config_file) as cfg:
        pinned = pair_for_folder(cfg, device, result["name"], result["addresses"], folder_id)
        root = folderlib.validate_share(cfg, path, folder_id)
        folderlib.create_marker(root)
        old = cfg.folder(folder_id)
        folder = FolderConfig(id=folder_id, path=str(root), label=result["label"] or root.name, devices=[str(device)])
        if old is not None and old.devices is not None:
            folder.devices = sorted(set(old.devices) | {str(device)})
        if result["read_only"]:
            folder.type = "receive-only"
        folder.selective = selective
        cfg.upsert_folder(folder)
    if pinned:
        print(f"note: folders {', '.join(pinned)} stay shared with the devices they had (not with the new one)", file=sys.stderr)
    from syncer.commands.folders import _scan_with_progress

    _scan_with_progress(root, folder_id)
    return root



"""`syncer share`, `folders`, `scan`, `manifest`, `verify`."""

from __future__ import annotations

import json as jsonlib
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from syncer.api import actions, client
from syncer.commands import common
from syncer.deviceid import DeviceId
from syncer.errors import DaemonError, FolderError
from syncer.ignore import Ignore
from syncer.index.db import IndexDB
from syncer.index.version import short_id
from syncer.manifest import load_manifest, make_manifest, verify
from syncer.model import share as folderlib
from syncer.pending import PendingStore
from syncer.scan import Scanner

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


def _scan_with_progress(root: Path, folder_id: str, allow_mass_delete: bool = True) -> tuple[int, int, int]:
    db = IndexDB(common.paths().index_db)
    db.add_folder(folder_id, str(root))
    scanner = Scanner(root, folder_id, db, short_id(common.identity().device_id), Ignore.load(root))
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"scanning {root}", total=None)
        try:
            result = scanner.scan(
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                allow_mass_delete=allow_mass_delete,
                on_batch=lambda stored: None,  # counted, not kept: a folder may hold millions
            )
            if result.changed_count or result.deleted_count:
                db.invalidate_need(folder_id)  # the daemon recomputes it when it starts
        finally:
            db.close()
    for name, msg in result.errors:
        console.print(f"[yellow]skipped {name}: {msg}")
    return result.files, result.bytes, len(result.errors)


@app.command()
def share(
    path: Path = typer.Argument(..., help="the folder to share"),
    id: str = typer.Option("", "--id", help="folder id (to join a folder another device offered)"),
    label: str = typer.Option("", "--label", help="a human-readable name"),
    with_: list[str] = typer.Option([], "--with", help="share only with these devices (repeatable)"),
    type_: str = typer.Option(None, "--type", help="send-receive (default), send-only or receive-only"),
    selective: bool = typer.Option(None, "--selective/--no-selective", help="join with metadata only; `syncer select` fetches paths"),
) -> None:
    """Share a folder (or join one by id); prints the folder id."""
    p = common.paths()
    devices = [str(DeviceId.parse(d)) for d in with_] or None
    folder_id = id or folderlib.new_folder_id()
    path = path.expanduser().absolute()
    label = label or (_offered_label(folder_id) if id else "")  # a joined folder keeps the offered name
    body = {"path": str(path), "id": folder_id, "label": label, "devices": devices, "join": bool(id), "type": type_, "selective": selective}
    try:
        # a running daemon shares it (and scans it) itself: POST /rest/folders, as the web UI does
        client.call(p, "POST", "/rest/folders", body, timeout=3600)
        row = _wait_first_scan(p, folder_id)
        root, files, size, errors = Path(row["path"]), row["local_files"], row["local_bytes"], 0
    except client.NotRunning:
        # joining a folder offered by another device creates the empty directory for it
        cfg = actions.add_folder(p.config_file, path, folder_id, label, devices, joining=bool(id), type=type_, selective=selective)
        root = Path(cfg.path)
        files, size, errors = _scan_with_progress(root, folder_id)
        PendingStore(p.state_dir / "pending.json").forget_folder(folder_id)
    err = Console(stderr=True)
    err.print(f"shared {root} as {folder_id}: {files} files, {size} bytes" + (f", {errors} skipped" if errors else ""))
    for line in _next_steps(folder_id):
        err.print(line, highlight=False, markup=False)
    typer.echo(folder_id)


def _wait_first_scan(p: Any, folder_id: str) -> dict[str, Any]:
    """The daemon scans a new folder in the background: wait (showing that it does) until the
    first scan is done, so the counts printed are the folder's."""
    deadline = time.monotonic() + 3600
    with Console(stderr=True).status(f"the daemon is scanning {folder_id}..."):
        while True:
            row = next((f for f in client.call(p, "GET", "/rest/folders") if f["id"] == folder_id), None)
            if row is not None and (row.get("last_scan") or row.get("state") in ("stopped", "error", "paused")):
                return row
            if time.monotonic() > deadline:
                raise DaemonError(f"the daemon has not finished scanning {folder_id} after an hour; see `syncer status`")
            time.sleep(0.2)  # polling a running daemon, bounded by the deadline


def _stopped(folder_id: str, path: str) -> FolderError:
    state = folderlib.folder_state(Path(path))
    fix = (
        f"mount or restore {path}"
        if "path missing" in state
        else f"if {path} is the right folder, `syncer share {path} --id {folder_id}` marks it again"
    )
    return FolderError(f"folder {folder_id}: {state} ({path}); {fix}")


def _offered_label(folder_id: str) -> str:
    """The label the offering device gave, so the joined folder keeps its name."""
    store = PendingStore(common.paths().state_dir / "pending.json")
    return next((f.label for (fid, _), f in store.folders.items() if fid == folder_id and f.label), "")


def _next_steps(folder_id: str) -> list[str]:
    """What a new user does next, after `syncer share`."""
    p = common.paths()
    paired = bool(common.config().devices)
    lines = []
    if client.is_running(p):
        lines.append("the daemon is running: " + ("the folder syncs with your paired devices now" if paired else "the folder syncs as soon as a device joins"))
    else:
        lines.append("the daemon is not running: start it with `syncer start` (or `syncer service install` to start it at login)")
    lines.append(f"to add a device: `syncer invite {folder_id}` here, then `syncer join CODE` there (or `syncer pair DEVICE-ID` on both)")
    return lines


@app.command()
def folders(json: bool = common.JsonOption) -> None:
    """List shared folders."""
    p = common.paths()
    try:
        live = {f["id"]: f for f in client.call(p, "GET", "/rest/folders")}
    except client.NotRunning:
        live = {}
    cfg = common.config()
    db = IndexDB(p.index_db)
    rows: list[dict[str, Any]] = []
    for f in cfg.folders:
        files, size = db.count(f.id)
        state = folderlib.folder_state(Path(f.path))
        if f.id in live and state == "ok":
            state = live[f.id]["state"]
        rows.append({"id": f.id, "label": f.label, "path": f.path, "state": state, "files": files, "bytes": size,
                     "devices": f.devices if f.devices is not None else "all paired"})
    if json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo("no shared folders (share one with `syncer share PATH`)")
        return
    t = Table("id", "label", "state", "files", "bytes", "path")
    for r in rows:
        t.add_row(r["id"], r["label"], r["state"], str(r["files"]), str(r["bytes"]), r["path"])
    Console(width=200).print(t)


@app.command()
def scan(folder: str = typer.Argument("", help="folder id (default: all)"), json: bool = common.JsonOption) -> None:
    """Rescan now."""
    p = common.paths()
    cfg = common.config()
    targets = [f for f in cfg.folders if not folder or f.id == folder]
    if folder and not targets:
        raise FolderError(f"no folder with id {folder!r} (see `syncer folders`)")
    if client.is_running(p):
        result = client.call(p, "POST", "/rest/scan" + (f"?folder={folder}" if folder else ""), timeout=3600)
    else:
        out = []
        for f in targets:
            if folderlib.folder_state(Path(f.path)) != "ok":
                raise _stopped(f.id, f.path)
            # the same guard as the daemon's: a scan that would delete most of the folder
            # records nothing until `syncer resume FOLDER` confirms it
            files, size, errors = _scan_with_progress(Path(f.path), f.id, allow_mass_delete=False)
            out.append({"folder": f.id, "files": files, "bytes": size, "errors": errors})
        result = {"scanned": out}
    if json:
        common.print_json(result)
    else:
        for r in result["scanned"]:
            if r.get("error"):
                typer.echo(f"{r['folder']}: {r['state']}: {r['error']}")
            else:
                typer.echo(f"{r['folder']}: scanned " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "folder"))


@app.command()
def resume(folder: str = typer.Argument(..., help="folder id")) -> None:
    """Confirm that the many deletions found in a paused folder are wanted, and sync them."""
    p = common.paths()
    if common.config().folder(folder) is None:
        raise FolderError(f"no folder with id {folder!r} (see `syncer folders`)")
    f = common.config().folder(folder)
    if client.is_running(p):
        r = client.call(p, "POST", f"/rest/resume?folder={folder}", timeout=3600)
        typer.echo(f"{folder}: resumed, {r.get('deleted', 0)} deletions recorded")
        return
    assert f is not None
    if folderlib.folder_state(Path(f.path)) != "ok":
        raise _stopped(f.id, f.path)
    files, _, _ = _scan_with_progress(Path(f.path), f.id, allow_mass_delete=True)
    typer.echo(f"{folder}: deletions recorded, {files} files remain")


@app.command()
def manifest(
    file: Path = typer.Argument(..., help="the file to describe"),
    output: Path = typer.Option(None, "-o", "--output", help="write here instead of stdout"),
) -> None:
    """Write the standalone metadata file (name, size, chunk size, chunk hashes)."""
    if not file.is_file():
        raise FolderError(f"{file} is not a file: name a regular file")
    text = jsonlib.dumps(make_manifest(file), indent=1) + "\n"
    if output:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(output)
    else:
        typer.echo(text, nl=False)


@app.command("verify")
def verify_cmd(
    manifest_file: Path = typer.Argument(..., help="a manifest written by `syncer manifest`"),
    file: Path = typer.Argument(..., help="the file to check"),
    json: bool = common.JsonOption,
) -> None:
    """Check a file against a manifest; exit code 1 on any mismatch."""
    m = load_manifest(manifest_file)
    v = verify(m, file)
    if json:
        common.print_json({"ok": v.ok, "mismatch": v.mismatch, "missing": v.missing, "size_matches": v.size_matches, "good": v.good})
    else:
        typer.echo(f"{len(v.ok)}/{len(m['chunks'])} chunks ok")
        for i in v.mismatch:
            typer.echo(f"chunk {i}: MISMATCH")
        for i in v.missing:
            typer.echo(f"chunk {i}: missing")
        if not v.size_matches:
            typer.echo(f"size differs from the manifest ({m['size']} bytes)")
    if not v.good:
        raise typer.Exit(1)

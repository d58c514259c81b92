"""Everyday control of a folder: why things are not in sync, conflicts, folder types (override,
revert), selective sync (select, unselect), and testing ignore rules. These ask the running
daemon (its live state is the answer); `ignore test` works without one."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import typer

from syncer.api import client
from syncer.commands import common
from syncer.errors import FolderError
from syncer.ignore import Ignore

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app
ignore_app = typer.Typer(help="Test .syncerignore rules.", no_args_is_help=True)
app.add_typer(ignore_app, name="ignore")

WHY_PAGE = 1000


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@app.command()
def why(
    folder: str = typer.Argument(..., help="folder id"),
    path: str = typer.Argument("", help="a file or directory in the folder (default: everything)"),
    limit: int = typer.Option(100, "--limit", help="at most this many items"),
    json: bool = common.JsonOption,
) -> None:
    """Why items are not in sync: a reason per needed item."""
    p = common.paths()
    items: list[dict] = []
    page, total = 1, 0
    per = min(WHY_PAGE, max(1, limit))
    while len(items) < limit:
        r = client.call(p, "GET", f"/rest/folders/{_q(folder)}/need?page={page}&perpage={per}&path={_q(path)}")
        total = r["total"]
        items += r["items"]
        if not r.get("more"):
            break
        page += 1
    items = items[:limit]
    if json:
        common.print_json({"folder": folder, "path": path, "total": total, "items": items})
        return
    if not items:
        typer.echo(f"{path or folder}: in sync" if not path else f"{path}: nothing needed here")
        return
    width = max(len(i["reason"]) for i in items)
    for i in items:
        typer.echo(f"{i['reason']:<{width}}  {i['name']}: {i['text']}")
    if total > len(items):
        typer.echo(f"... and {total - len(items)} more (--limit)")


@app.command()
def conflicts(folder: str = typer.Argument("", help="folder id (default: all)"), json: bool = common.JsonOption) -> None:
    """The conflict inbox: files changed on two devices at once, and their copies."""
    p = common.paths()
    fids = [folder] if folder else [f["id"] for f in client.call(p, "GET", "/rest/folders")]
    rows = []
    for fid in fids:
        r = client.call(p, "GET", f"/rest/folders/{_q(fid)}/conflicts?perpage=1000")
        rows += [{"folder": fid, **i} for i in r["items"]]
    if json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo("no conflicts")
        return
    for r in rows:
        who = f" (the version of {r['loser']})" if r.get("loser") else ""
        typer.echo(f"{r['folder']}: {r['name']}  <->  {r['copy']}{who}")
    typer.echo("resolve with: syncer resolve FOLDER PATH --keep local|remote|both|COPY")


@app.command()
def resolve(
    folder: str = typer.Argument(..., help="folder id"),
    path: str = typer.Argument(..., help="the file in conflict (or one of its copies)"),
    keep: str = typer.Option(..., "--keep", help="local, remote, both, or the name of the copy to keep"),
) -> None:
    """Settle a conflict; the result reaches every device and the copies disappear everywhere."""
    r = client.call(common.paths(), "POST", f"/rest/folders/{_q(folder)}/conflicts/resolve", {"path": path, "keep": keep}, timeout=3600)
    typer.echo(f"{folder}: {r['name']}: {r['result']}")


@app.command()
def override(folder: str = typer.Argument(..., help="folder id (send-only)"), dry_run: bool = typer.Option(False, "--dry-run", help="only count")) -> None:
    """Send-only folder: make this device's state win on every device."""
    r = client.call(common.paths(), "POST", f"/rest/folders/{_q(folder)}/override", {"dry_run": dry_run}, timeout=3600)
    verb = "would announce" if dry_run else "announced"
    typer.echo(f"{folder}: {verb} {r['announce']} entries as this device has them")


@app.command()
def revert(folder: str = typer.Argument(..., help="folder id (receive-only)"), dry_run: bool = typer.Option(False, "--dry-run", help="only count")) -> None:
    """Receive-only folder: undo the changes made here; the other devices' version comes back."""
    r = client.call(common.paths(), "POST", f"/rest/folders/{_q(folder)}/revert", {"dry_run": dry_run}, timeout=3600)
    verb = "would restore" if dry_run else "restoring"
    typer.echo(f"{folder}: {verb} {r['restore']} changed entries, {'would remove' if dry_run else 'removed'} {r['remove']} added here (into .syncer/versions)")


@app.command()
def select(folder: str = typer.Argument(..., help="folder id (joined with --selective)"), paths: list[str] = typer.Argument(..., help="paths to fetch")) -> None:
    """Selective folder: fetch these paths (and what appears below them later)."""
    r = client.call(common.paths(), "POST", f"/rest/folders/{_q(folder)}/select", {"paths": paths}, timeout=3600)
    typer.echo(f"{folder}: selected {', '.join(r['selected']) or 'nothing'}")


@app.command()
def unselect(folder: str = typer.Argument(..., help="folder id (joined with --selective)"), paths: list[str] = typer.Argument(..., help="paths to stop fetching")) -> None:
    """Selective folder: free the local copies of these paths (other devices keep theirs)."""
    r = client.call(common.paths(), "POST", f"/rest/folders/{_q(folder)}/unselect", {"paths": paths}, timeout=3600)
    msg = f"{folder}: freed {r['freed']} local copies"
    if r["kept_changed_here"]:
        msg += f"; kept {r['kept_changed_here']} changed here and not synced yet"
    typer.echo(msg)


@ignore_app.command("test")
def ignore_test(folder: str = typer.Argument(..., help="folder id"), path: str = typer.Argument(..., help="a path in the folder")) -> None:
    """Say whether PATH is ignored, and which rule decided it."""
    p = common.paths()
    try:
        r = client.call(p, "GET", f"/rest/folders/{_q(folder)}/ignore?path={_q(path)}")
        ignored, rule = r["ignored"], r["rule"]
    except client.NotRunning:
        cfg = common.config().folder(folder)
        if cfg is None:
            raise FolderError(f"no folder with id {folder!r} (see `syncer folders`)") from None
        root = Path(cfg.path)
        ignored, rule = Ignore.load(root).explain(path.strip("/"), (root / path).is_dir())
    if rule is None:
        typer.echo(f"{path}: not ignored (no rule matches)")
    else:
        typer.echo(f"{path}: {'ignored' if ignored else 'not ignored'} by rule {rule!r}")

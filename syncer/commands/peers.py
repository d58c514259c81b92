"""`syncer pair`, `unpair`, `devices`, `pending`."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from syncer.api import actions, client
from syncer.commands import common
from syncer.deviceid import DeviceId
from syncer.errors import ConfigError
from syncer.pending import PendingStore

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


@app.command()
def pair(
    device: str = typer.Argument(..., help="the other device's ID"),
    address: list[str] = typer.Option([], "--address", help="static address, e.g. tcp://192.0.2.1:22000 (repeatable)"),
    name: str = typer.Option("", "--name", help="a name for the device"),
) -> None:
    """Link a device: it may connect to us and we connect to it. Pairing is mutual: run it on both."""
    dev = DeviceId.parse(device)
    own = common.identity().device_id
    if dev == own:
        raise ConfigError("that is this device's own ID; pair with the other device's ID")
    p = common.paths()
    try:
        client.call(p, "POST", "/rest/devices", {"device_id": str(dev), "name": name, "addresses": address})
    except client.NotRunning:
        actions.pair(p.config_file, own, str(dev), name, address)
        PendingStore(p.state_dir / "pending.json").forget_device(str(dev))
    typer.echo(f"paired {dev}")


@app.command()
def unpair(device: str = typer.Argument(..., help="the device's ID")) -> None:
    """Unlink a device; its connection is closed and it gets nothing more."""
    dev = DeviceId.parse(device)
    p = common.paths()
    try:
        client.call(p, "DELETE", f"/rest/devices/{dev}")
    except client.NotRunning:
        actions.unpair(p.config_file, str(dev))
    typer.echo(f"unpaired {dev}")


def device_rows() -> list[dict[str, Any]]:  # JSON rows
    """From the running daemon when there is one (with connection state), else from config."""
    p = common.paths()
    try:
        return client.call(p, "GET", "/rest/devices")
    except client.NotRunning:
        return [
            {
                "device_id": d.id,
                "name": d.name,
                "addresses": [{"address": a, "source": "static"} for a in d.addresses],
                "connected": False,
                "address": None,
                "transport": None,
                "since": None,
            }
            for d in common.config().devices
        ]


@app.command()
def devices(json: bool = common.JsonOption) -> None:
    """List paired devices: connected or not, address, transport, since."""
    rows = device_rows()
    if json:
        common.print_json(rows)
        return
    if not rows:
        typer.echo("no paired devices (invite one with `syncer invite FOLDER`, or pair with `syncer pair DEVICE-ID`)")
        return
    t = Table("device", "name", "state", "transport", "address", "since")
    for r in rows:
        t.add_row(
            str(r["device_id"]),
            str(r.get("name") or ""),
            "connected" if r.get("connected") else "disconnected",
            str(r.get("transport") or ""),
            str(r.get("address") or ", ".join(a["address"] for a in r.get("addresses", []))),
            common.format_when(r.get("since")),
        )
    Console(width=200).print(t)


@app.command()
def pending(json: bool = common.JsonOption) -> None:
    """Devices that tried to connect without being paired, and folders offered to us."""
    p = common.paths()
    try:
        data = client.call(p, "GET", "/rest/pending")
    except client.NotRunning:
        data = PendingStore(p.state_dir / "pending.json").to_json()
    if json:
        common.print_json(data)
        return
    if not data["devices"] and not data["folders"]:
        typer.echo("nothing pending")
    for d in data["devices"]:
        seen = common.format_when(d.get("last_seen"))
        typer.echo(f"device {d['device_id']} {d.get('name') or ''} from {d['address']}{', last seen ' + seen if seen else ''} (pair it with `syncer pair {d['device_id']}`)")
    for f in data["folders"]:
        typer.echo(f"folder {f['folder_id']} {f.get('label') or ''} offered by {f['offered_by']} (join with `syncer share PATH --id {f['folder_id']}`)")

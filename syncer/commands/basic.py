"""`syncer id` and `syncer config`."""

from __future__ import annotations

import typer

from syncer.api import client
from syncer.commands import common
from syncer.config import SETTINGS, edit_config, parse_value
from syncer.errors import ConfigError

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app

config_app = typer.Typer(help="Read and write config.toml.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command("id")
def id_cmd(json: bool = common.JsonOption) -> None:
    """Print this device's ID (creates the identity on first use)."""
    ident = common.identity()
    if json:
        common.print_json({"device_id": str(ident.device_id), "short_id": ident.device_id.short})
    else:
        typer.echo(str(ident.device_id))


@config_app.command("get")
def config_get(key: str, json: bool = common.JsonOption) -> None:
    """Print the value of KEY."""
    value = common.config().get(key)
    if json:
        common.print_json({key: value})
    elif isinstance(value, list):
        typer.echo("\n".join(value))
    elif isinstance(value, bool):
        typer.echo("true" if value else "false")
    else:
        typer.echo(str(value))


@config_app.command("set")
def config_set(
    key: str,
    value: list[str] = typer.Argument(
        ..., help="value; lists take several values or a comma-separated one"
    ),
) -> None:
    """Set KEY to VALUE (validated; the file is untouched on error)."""
    setting = SETTINGS.get(key)
    if setting is None:
        raise ConfigError(f"unknown config key {key!r} (see `syncer config list`)")
    parsed = parse_value(setting, value)
    p = common.paths()
    try:
        client.call(p, "PATCH", "/rest/config", {key: parsed})  # a running daemon saves and reloads
    except client.NotRunning:
        with edit_config(p.config_file) as cfg:
            cfg.set(key, parsed)


@config_app.command("list")
def config_list(json: bool = common.JsonOption) -> None:
    """List all settings with their current values."""
    cfg = common.config()
    if json:
        common.print_json({k: cfg.get(k) for k in SETTINGS})
        return
    for k, s in SETTINGS.items():
        typer.echo(f"{k} = {cfg.get(k)!r}    # {s.help}")



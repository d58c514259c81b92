"""The `syncer` command. Each group of commands lives in `syncer/commands/` as its own Typer app;
this module only merges them and turns SyncerError into one line on stderr with a non-zero exit."""

from __future__ import annotations

import sys

import typer

from syncer.errors import SyncerError

app = typer.Typer(
    name="syncer",
    help="Peer-to-peer folder sync with BitTorrent-style swarming.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from syncer.commands import (
        basic,
        bt,
        daemon,
        discovery,
        doctor,
        folderops,
        folders,
        gui,
        invite,
        peers,
        relay,
        service,
    )

    for module in (basic, folders, folderops, peers, invite, daemon, service, discovery, relay, doctor, gui, bt):
        app.registered_commands.extend(module.app.registered_commands)
        app.registered_groups.extend(module.app.registered_groups)


def main() -> None:
    _register()
    try:
        app()
    except SyncerError as e:
        print(f"syncer: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

"""The `syncer` command. Each group of commands lives in `syncer/commands/` as its own Typer app;
this module only merges them and turns SyncerError into one line on stderr with a non-zero exit.
`syncer run` (the resident daemon) skips Typer altogether: commands/run.py."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from syncer.errors import SyncerError

if TYPE_CHECKING:
    import typer


def _app() -> typer.Typer:
    import typer

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

    app = typer.Typer(
        name="syncer",
        help="Peer-to-peer folder sync with BitTorrent-style swarming.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in (basic, folders, folderops, peers, invite, daemon, service, discovery, relay, doctor, gui, bt):
        app.registered_commands.extend(module.app.registered_commands)
        app.registered_groups.extend(module.app.registered_groups)
    return app


def main() -> None:
    try:
        if sys.argv[1:2] == ["run"] and not {"-h", "--help"} & set(sys.argv[2:]):
            from syncer.commands import run

            run.run(sys.argv[2:])
        else:
            _app()()
    except SyncerError as e:
        print(f"syncer: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

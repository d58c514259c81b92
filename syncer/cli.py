"""The `syncer` command. Each group of commands lives in `syncer/commands/`; this module only
assembles them and turns SyncerError into one line on stderr with a non-zero exit."""

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
    # imported for their side effect of adding commands to `app`
    from syncer.commands import basic  # noqa: F401

    for name in ("folders", "peers", "daemon", "discovery", "relay"):
        try:
            __import__(f"syncer.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"syncer.commands.{name}":
                raise


def main() -> None:
    _register()
    try:
        app()
    except SyncerError as e:
        print(f"syncer: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

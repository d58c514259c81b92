"""`syncer gui`: a one-time login link for the web UI of the running daemon."""

from __future__ import annotations

import webbrowser

import typer

from syncer.api import client
from syncer.commands import common

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


@app.command()
def gui(open_: bool = typer.Option(False, "--open", help="open the link in a browser")) -> None:
    """Print a one-time login URL for the web UI (valid 5 minutes, usable once)."""
    url = client.call(common.paths(), "POST", "/rest/gui/login-url")["url"]
    typer.echo(url)
    if open_ and not webbrowser.open(url):
        typer.echo("no browser found; open the link above yourself", err=True)

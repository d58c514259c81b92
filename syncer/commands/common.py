"""Helpers shared by the command modules."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from syncer.config import Config, load_config
from syncer.identity import Identity, load_or_create
from syncer.paths import Paths, get_paths

JsonOption = typer.Option(False, "--json", help="print machine-readable JSON")


def paths() -> Paths:
    return get_paths().ensure()


def identity() -> Identity:
    p = paths()
    return load_or_create(p.cert_file, p.key_file)


def config() -> Config:
    return load_config(paths().config_file)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")

"""Helpers shared by the command modules."""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time as _time
from typing import Any

import typer

from syncer.config import Config, load_config
from syncer.errors import SyncerError
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


# human output: times as local dates and durations, never epoch floats (--json stays raw) --------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in `24h`, `30m`, `90s`, `7d`, `1h30m` or a plain number of seconds."""
    t = text.strip().lower()
    if t.replace(".", "", 1).isdigit():
        return float(t)
    total, num = 0.0, ""
    for ch in t:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in _UNITS and num:
            total += float(num) * _UNITS[ch]
            num = ""
        else:
            raise SyncerError(f"bad duration {text!r}: use e.g. 90s, 30m, 24h, 7d or 1h30m")
    if num or total <= 0:
        raise SyncerError(f"bad duration {text!r}: use e.g. 90s, 30m, 24h, 7d or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `4m 10s`, `12s`: the two largest units."""
    s = int(max(0.0, seconds) + 0.5)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0") or len(parts) == 1)


def format_time(epoch: float | None) -> str:
    """A wall-clock time as a local date and time, `2026-12-01 14:03`; "" for none."""
    if not epoch:
        return ""
    return _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def format_when(epoch: float | None, now: float | None = None) -> str:
    """`2026-12-01 14:03 (5m ago)` or `... (in 23h 59m)`."""
    if not epoch:
        return ""
    now = _time.time() if now is None else now
    delta = epoch - now
    rel = f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"
    return f"{format_time(epoch)} ({rel})"

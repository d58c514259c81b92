"""Which event loop the daemon runs on.

uvloop (libuv, with its TLS layer in Cython) when it is installed, else asyncio's own. On this
machine kind one TLS stream moves 466-515 MB/s under uvloop against 214-250 MB/s under asyncio
at the same CPU (both ends in one process, docs/benchmarks.md): asyncio's SSL transport spends
most of its time in Python between the socket and OpenSSL, and for bulk transfers the receiving
daemon's event loop is the bottleneck. uvloop has no Windows build; there, and with
SYNCER_EVENT_LOOP=asyncio, asyncio's loop is used (same behaviour, slower).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from syncer.errors import ConfigError

ENV = "SYNCER_EVENT_LOOP"  # "uvloop" or "asyncio"; unset: uvloop if installed


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The name of the loop to use and a factory for it."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise ConfigError(f"{ENV} must be 'uvloop' or 'asyncio', not {wanted!r}")
    if wanted != "asyncio":
        try:
            import uvloop
        except ImportError:
            if wanted == "uvloop":
                raise ConfigError(f"{ENV}=uvloop but uvloop is not installed") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


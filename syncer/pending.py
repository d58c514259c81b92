"""Devices that tried to connect without being paired, and folders offered to us that we have
not joined. Kept in `pending.json` in the state dir so `syncer pending` works with or without a
running daemon.

Everything here comes from strangers or peers, so it is bounded: at most MAX_DEVICES devices and
MAX_FOLDERS folders (least recently seen dropped first), folder ids must be valid folder ids,
labels, names and addresses are cut to MAX_LABEL / MAX_NAME / MAX_ADDRESS characters with
control characters replaced (they end up on terminals). Writes are batched: a change marks the
store dirty and, inside a running event loop, one write happens at most every SAVE_INTERVAL
seconds (a small file, written on the loop); without a loop (the CLI) a change is written at
once. `flush()` writes what is pending (the daemon calls it on shutdown).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from syncer.model.share import valid_folder_id

MAX_DEVICES = 100
MAX_FOLDERS = 200
MAX_LABEL = 256
MAX_NAME = 64
MAX_ADDRESS = 128
SAVE_INTERVAL = 1.0


def clean(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, control characters replaced by U+FFFD."""
    return "".join("\ufffd" if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 else c for c in text[:limit])


@dataclass
class PendingDevice:
    device_id: str
    address: str
    name: str
    first_seen: float
    last_seen: float


@dataclass
class PendingFolder:
    folder_id: str
    label: str
    offered_by: str
    last_seen: float


class PendingStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic, interval: float = SAVE_INTERVAL) -> None:
        self.path = path
        self.devices: dict[str, PendingDevice] = {}
        self.folders: dict[tuple[str, str], PendingFolder] = {}
        self.writes = 0
        self._clock = clock
        self._interval = interval
        self._dirty = False
        self._last_write = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            for d in data.get("devices", [])[:MAX_DEVICES]:
                self.devices[d["device_id"]] = PendingDevice(**d)
            for f in data.get("folders", [])[:MAX_FOLDERS]:
                self.folders[(f["folder_id"], f["offered_by"])] = PendingFolder(**f)
        except (FileNotFoundError, ValueError, TypeError, KeyError, AttributeError):
            pass  # a missing or damaged file only loses hints; it is rebuilt as devices retry

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [asdict(d) for d in sorted(self.devices.values(), key=lambda d: -d.last_seen)],
            "folders": [asdict(f) for f in sorted(self.folders.values(), key=lambda f: -f.last_seen)],
        }

    # writing -------------------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, self.path)
        self.writes += 1

    def flush(self) -> None:
        """Write now if anything changed since the last write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dirty:
            self._dirty = False
            self._last_write = self._clock()
            self.save()

    def _changed(self) -> None:
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no event loop (a CLI command): write at once
            return
        if self._timer is None:
            delay = max(0.0, self._last_write + self._interval - self._clock())
            self._timer = loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.flush()

    # changes -------------------------------------------------------------------------------------
    def add_device(self, device_id: str, address: str, name: str, now: float) -> None:
        device_id, address, name = device_id[:MAX_NAME], clean(address, MAX_ADDRESS), clean(name, MAX_NAME)
        d = self.devices.get(device_id)
        if d:
            d.address, d.last_seen = address, now
            d.name = name or d.name
        else:
            self.devices[device_id] = PendingDevice(device_id, address, name, now, now)
            _trim(self.devices, MAX_DEVICES, lambda v: v.last_seen)
        self._changed()

    def add_folder(self, folder_id: str, label: str, offered_by: str, now: float) -> None:
        if not valid_folder_id(folder_id):
            return  # not a folder id we could ever join: nothing to remember
        self.folders[(folder_id, offered_by[:MAX_NAME])] = PendingFolder(folder_id, clean(label, MAX_LABEL), offered_by[:MAX_NAME], now)
        _trim(self.folders, MAX_FOLDERS, lambda v: v.last_seen)
        self._changed()

    def forget_device(self, device_id: str) -> None:
        if self.devices.pop(device_id, None) is not None:
            self._changed()

    def forget_folder(self, folder_id: str) -> None:
        keys = [k for k in self.folders if k[0] == folder_id]
        for k in keys:
            del self.folders[k]
        if keys:
            self._changed()


def _trim(d: dict[Any, Any], cap: int, key: Any) -> None:
    while len(d) > cap:
        oldest = min(d, key=lambda k: key(d[k]))
        del d[oldest]

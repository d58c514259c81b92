"""Devices that tried to connect without being paired, and folders offered to us that we have
not joined. Kept in `pending.json` in the state dir so `syncer pending` works with or without a
running daemon; bounded so a flood of strangers cannot grow it without limit."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MAX_DEVICES = 100
MAX_FOLDERS = 200


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
    def __init__(self, path: Path) -> None:
        self.path = path
        self.devices: dict[str, PendingDevice] = {}
        self.folders: dict[tuple[str, str], PendingFolder] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            for d in data.get("devices", []):
                self.devices[d["device_id"]] = PendingDevice(**d)
            for f in data.get("folders", []):
                self.folders[(f["folder_id"], f["offered_by"])] = PendingFolder(**f)
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            pass  # a missing or damaged file only loses hints; it is rebuilt as devices retry

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [asdict(d) for d in sorted(self.devices.values(), key=lambda d: -d.last_seen)],
            "folders": [asdict(f) for f in sorted(self.folders.values(), key=lambda f: -f.last_seen)],
        }

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, self.path)

    def add_device(self, device_id: str, address: str, name: str, now: float) -> None:
        d = self.devices.get(device_id)
        if d:
            d.address, d.last_seen = address, now
            d.name = name or d.name
        else:
            self.devices[device_id] = PendingDevice(device_id, address, name, now, now)
            _trim(self.devices, MAX_DEVICES, lambda v: v.last_seen)
        self.save()

    def add_folder(self, folder_id: str, label: str, offered_by: str, now: float) -> None:
        self.folders[(folder_id, offered_by)] = PendingFolder(folder_id, label, offered_by, now)
        _trim(self.folders, MAX_FOLDERS, lambda v: v.last_seen)
        self.save()

    def forget_device(self, device_id: str) -> None:
        changed = self.devices.pop(device_id, None) is not None
        if changed:
            self.save()

    def forget_folder(self, folder_id: str) -> None:
        keys = [k for k in self.folders if k[0] == folder_id]
        for k in keys:
            del self.folders[k]
        if keys:
            self.save()


def _trim(d: dict[Any, Any], cap: int, key: Any) -> None:
    while len(d) > cap:
        oldest = min(d, key=lambda k: key(d[k]))
        del d[oldest]

"""Set up SYNCER_HOMEs for lab daemons in-process (the product's own identity and config code),
instead of a `syncer config set` process per key: a lab test with three devices otherwise spends
most of its time starting Python."""

from __future__ import annotations

from pathlib import Path

from syncer.config import SETTINGS, DeviceConfig, edit_config, parse_value
from syncer.identity import load_or_create
from syncer.paths import get_paths

QUIET = {
    "discovery.tracker.enabled": "false",
    "discovery.dht.enabled": "false",
    "discovery.lan.enabled": "false",
    "nat.port_mapping": "false",
    "api.address": "127.0.0.1:0",
}


def make_home(home: Path, settings: dict[str, str]) -> str:
    """Identity + settings (values as on the command line); returns the device ID."""
    paths = get_paths({"SYNCER_HOME": str(home)}).ensure()
    device = str(load_or_create(paths.cert_file, paths.key_file).device_id)
    with edit_config(paths.config_file) as cfg:
        for key, raw in {**QUIET, **settings}.items():
            cfg.set(key, parse_value(SETTINGS[key], [raw]))
    return device


def pair(home: Path, device: str, name: str, addresses: list[str] | None = None) -> None:
    paths = get_paths({"SYNCER_HOME": str(home)})
    with edit_config(paths.config_file) as cfg:
        cfg.upsert_device(DeviceConfig(id=device, name=name, addresses=list(addresses or [])))

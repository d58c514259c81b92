"""Configuration changes behind the CLI and the REST API alike: each one is a locked, validated,
atomic `edit_config`. The CLI calls these directly when no daemon runs; a running daemon calls
them for its REST endpoints and then reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncer.config import (
    FOLDER_TYPES,
    SETTINGS,
    DeviceConfig,
    FolderConfig,
    edit_config,
    parse_value,
    validate,
)
from syncer.deviceid import DeviceId
from syncer.errors import ConfigError, FolderError
from syncer.model import share as folderlib

MAX_ADDRESSES = 32
MAX_NAME = 200


def add_folder(
    config_file: Path, path: Path, folder_id: str, label: str = "", devices: list[str] | None = None, joining: bool = False,
    type: str | None = None, selective: bool | None = None,
) -> FolderConfig:
    """Share `path` as `folder_id` (or join that folder). When joining, a missing directory is
    created (its parent must exist). Returns the folder's new config."""
    devs = None if devices is None else [str(DeviceId.parse(d)) for d in devices]
    path = path.expanduser()
    if not path.is_absolute():
        raise FolderError(f"{path}: give an absolute path")
    if not path.exists() and joining:
        parent = path.parent
        if not parent.is_dir():
            raise FolderError(f"{parent} does not exist")
        path.mkdir()
    with edit_config(config_file) as cfg:
        root = folderlib.validate_share(cfg, path, folder_id)
        folderlib.create_marker(root)
        old = cfg.folder(folder_id)
        new = FolderConfig(
            id=folder_id,
            path=str(root),
            label=_name(label) or (old.label if old else root.name),
            devices=devs if devs is not None else (old.devices if old else None),
            paused=old.paused if old else False,
            type=_folder_type(type) if type is not None else (old.type if old else "send-receive"),
            selective=bool(selective) if selective is not None else (old.selective if old else False),
            selected=list(old.selected) if old else [],
        )
        cfg.upsert_folder(new)
    return new


def _folder_type(value: Any) -> str:
    if value not in FOLDER_TYPES:
        raise FolderError(f"folder type must be one of {', '.join(FOLDER_TYPES)}, not {value!r}")
    return str(value)


def set_selection(config_file: Path, folder_id: str, paths: list[str], selected: bool) -> tuple[FolderConfig, list[str]]:
    """Add paths to (or remove them from) a selective folder's selection; returns the new
    config and the paths that actually changed."""
    clean = [_relative(p) for p in _list(paths, "paths")]
    with edit_config(config_file) as cfg:
        f = cfg.folder(folder_id)
        if f is None:
            raise FolderError(f"no folder with id {folder_id!r}")
        if not f.selective:
            raise FolderError(f"folder {folder_id} was not joined with --selective: everything in it is synced already")
        current = set(f.selected)
        changed = [p for p in clean if (p not in current) == selected]
        f.selected = sorted(current | set(clean)) if selected else sorted(current - set(clean))
        cfg.upsert_folder(f)
    return f, changed


def _relative(path: Any) -> str:
    p = str(path).strip().strip("/")
    parts = p.split("/")
    if not p or any(x in ("", ".", "..") for x in parts) or "\0" in p or len(p) > 4096:
        raise FolderError(f"bad path {str(path)[:200]!r}: give a path inside the folder, like photos/2024")
    return p


_KEEP: Any = object()  # "leave this field as it is"


def edit_folder(
    config_file: Path, folder_id: str, label: Any = _KEEP, devices: Any = _KEEP, paused: Any = _KEEP, type: Any = _KEEP
) -> FolderConfig:
    with edit_config(config_file) as cfg:
        f = cfg.folder(folder_id)
        if f is None:
            raise FolderError(f"no folder with id {folder_id!r}")
        if label is not _KEEP:
            f.label = _name(label)
        if devices is not _KEEP:
            f.devices = None if devices is None else [str(DeviceId.parse(str(d))) for d in _list(devices, "devices")]
        if paused is not _KEEP:
            f.paused = _bool(paused, "paused")
        if type is not _KEEP:
            f.type = _folder_type(type)
        cfg.upsert_folder(f)
    return f


def remove_folder(config_file: Path, folder_id: str) -> None:
    with edit_config(config_file) as cfg:
        if not cfg.remove_folder(folder_id):
            raise FolderError(f"no folder with id {folder_id!r}")


def pair(config_file: Path, own: DeviceId, device: str, name: str = "", addresses: list[str] | None = None) -> DeviceConfig:
    dev = DeviceId.parse(device)
    if dev == own:
        raise ConfigError("that is this device's own ID; pair with the other device's ID")
    addrs = _list(addresses or [], "addresses")
    with edit_config(config_file) as cfg:
        old = cfg.device(dev)
        new = DeviceConfig(
            id=str(dev),
            name=_name(name) or (old.name if old else ""),
            addresses=addrs or (old.addresses if old else []),
            paused=old.paused if old else False,
        )
        cfg.upsert_device(new)
    return new


def edit_device(config_file: Path, device: str, name: Any = _KEEP, addresses: Any = _KEEP, paused: Any = _KEEP) -> DeviceConfig:
    dev = DeviceId.parse(device)
    with edit_config(config_file) as cfg:
        d = cfg.device(dev)
        if d is None:
            raise ConfigError(f"device {dev} is not paired (see `syncer devices`)")
        if name is not _KEEP:
            d.name = _name(name)
        if addresses is not _KEEP:
            d.addresses = _list(addresses, "addresses")
        if paused is not _KEEP:
            d.paused = _bool(paused, "paused")
        cfg.upsert_device(d)
    return d


def unpair(config_file: Path, device: str) -> DeviceId:
    dev = DeviceId.parse(device)
    with edit_config(config_file) as cfg:
        if not cfg.remove_device(dev):
            raise ConfigError(f"device {dev} is not paired (see `syncer devices`)")
    return dev


def set_settings(config_file: Path, values: dict[str, Any]) -> None:
    """Set several settings at once: all are checked before anything is written. A string for
    a non-string setting is parsed as on the command line (`"true"`, `"8"`, `"a,b"`)."""
    if not isinstance(values, dict) or not values:
        raise ConfigError("give an object of settings to change, e.g. {\"limits.max_send_kbps\": 100}")
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        setting = SETTINGS.get(key)
        if setting is None:
            raise ConfigError(f"unknown config key {key!r}")
        if isinstance(value, str) and setting.kind is not str:
            parsed[key] = parse_value(setting, [value])
        else:
            validate(setting, value)
            parsed[key] = value
    with edit_config(config_file) as cfg:
        for key, value in parsed.items():
            cfg.set(key, value)


def _name(v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError("a name or label must be a string")
    v = v.strip()
    if len(v) > MAX_NAME or any(ord(c) < 32 for c in v):
        raise ConfigError(f"a name or label must be at most {MAX_NAME} printable characters")
    return v


def _list(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or len(v) > MAX_ADDRESSES:
        raise ConfigError(f"{what} must be a list of at most {MAX_ADDRESSES} strings")
    return [x.strip() for x in v if x.strip()]


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{what} must be true or false")
    return v

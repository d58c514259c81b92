"""`config.toml`: settings, paired devices and shared folders.

The file is the source of truth for configuration (the index DB holds only index state). It is
edited by people and by `syncer config set` / `pair` / `share`; edits go through `edit_config()`,
which locks, re-reads, validates and writes atomically, keeping the user's comments (tomlkit).
A bad key or value raises ConfigError before anything is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from syncer.deviceid import DeviceId
from syncer.errors import ConfigError, InvalidDeviceId

ADDRESS_SCHEMES = ("tcp", "quic", "relay")
FOLDER_TYPES = ("send-receive", "send-only", "receive-only")
# public infrastructure nobody has to run for us (docs/nat.md)
DEFAULT_DHT_BOOTSTRAP = ("dht.libtorrent.org:25401", "router.bittorrent.com:6881", "dht.transmissionbt.com:6881")
DEFAULT_STUN_SERVERS = ("stun.l.google.com:19302", "stun.cloudflare.com:3478", "stun.nextcloud.com:443")


def _is_address(v: str) -> bool:
    scheme, sep, rest = v.partition("://")
    if not sep or scheme not in ADDRESS_SCHEMES or not rest:
        return False
    if scheme == "relay":
        return True
    host, _, port = rest.rpartition(":")
    return bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def _is_hostport(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def _is_url(v: str) -> bool:
    return v.startswith(("http://", "https://")) and len(v) > 8


@dataclass(frozen=True)
class Setting:
    key: str
    kind: type  # bool, int, float, str or list (of str)
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    check_help: str = ""


def _each(pred: Callable[[str], bool]) -> Callable[[Any], bool]:
    return lambda values: all(pred(v) for v in values)


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting("device.name", str, "", "name shown to other devices (default: host name)"),
        Setting(
            "listen",
            list,
            ["tcp://[::]:22000", "quic://[::]:22000"],
            "listen addresses (tcp://HOST:PORT, quic://HOST:PORT); [::] is IPv6 and IPv4 (dual stack)",
            _each(_is_address),
            "each must look like tcp://HOST:PORT or quic://HOST:PORT",
        ),
        Setting(
            "api.address",
            str,
            "127.0.0.1:8384",
            "control API HOST:PORT (port 0 = any free port)",
            _is_hostport,
            "must be HOST:PORT",
        ),
        Setting(
            "api.password",
            str,
            "",
            "password for the web UI's login page; required to listen beyond loopback",
        ),
        Setting(
            "api.allowed_hosts",
            list,
            [],
            "Host header names the API accepts besides loopback names (DNS-rebinding guard; "
            "'*' = any)",
        ),
        Setting("discovery.tracker.enabled", bool, True, "announce to and query trackers"),
        Setting(
            "discovery.tracker.urls",
            list,
            [],
            "tracker announce URLs",
            _each(_is_url),
            "each must be an http(s):// URL",
        ),
        Setting("discovery.dht.enabled", bool, True, "run a DHT node and use it to find devices"),
        Setting(
            "discovery.dht.port",
            int,
            0,
            "UDP port of the DHT node (0 = same as the first listen port)",
            lambda v: 0 <= v <= 65535,
            "must be 0..65535",
        ),
        Setting(
            "discovery.dht.bootstrap",
            list,
            list(DEFAULT_DHT_BOOTSTRAP),
            "DHT bootstrap nodes HOST:PORT (contacted only while the saved routing table is thin)",
            _each(_is_hostport),
            "each must be HOST:PORT",
        ),
        Setting("discovery.lan.enabled", bool, True, "broadcast and listen for LAN beacons"),
        Setting(
            "discovery.lan.port",
            int,
            21027,
            "UDP port of LAN beacons",
            lambda v: 1 <= v <= 65535,
            "must be 1..65535",
        ),
        Setting("discovery.lan.address", str, "255.255.255.255", "address LAN beacons are sent to"),
        Setting(
            "relays",
            list,
            [],
            "relay servers relay://HOST:PORT",
            _each(_is_address),
            "each must be relay://HOST:PORT",
        ),
        Setting(
            "nat.enabled",
            bool,
            True,
            "NAT traversal: hole punching (through relays' rendezvous or paired devices), STUN, port "
            "mapping; off turns all of them off",
        ),
        Setting("nat.stun", bool, True, "learn our public address from STUN servers (RFC 8489)"),
        Setting(
            "nat.stun_servers",
            list,
            list(DEFAULT_STUN_SERVERS),
            "STUN servers HOST:PORT asked from our UDP (QUIC) socket",
            _each(_is_hostport),
            "each must be HOST:PORT",
        ),
        Setting("nat.port_mapping", bool, True, "map the listen ports on the router (UPnP IGD, NAT-PMP)"),
        Setting("nat.assist", bool, True, "hole punching coordinated by a paired device connected to both ends"),
        Setting(
            "nat.relay_via_devices",
            bool,
            True,
            "as a last resort relay through a paired device connected to both ends, and relay for them",
        ),
        Setting(
            "limits.max_send_kbps",
            int,
            0,
            "upload rate limit in KiB/s (0 = unlimited)",
            lambda v: v >= 0,
            "must be >= 0",
        ),
        Setting(
            "limits.max_recv_kbps",
            int,
            0,
            "download rate limit in KiB/s (0 = unlimited)",
            lambda v: v >= 0,
            "must be >= 0",
        ),
        Setting(
            "limits.min_free_disk_mb",
            int,
            256,
            "stop pulling when free disk falls below this",
            lambda v: v >= 0,
            "must be >= 0",
        ),
        Setting(
            "transfer.unlimited_own_devices",
            bool,
            True,
            "never choke paired devices sharing a folder",
        ),
        Setting("bt.enabled", bool, True, "seed publications over BitTorrent (syncer publish)"),
        Setting(
            "bt.listen",
            str,
            "0.0.0.0:6881",
            "BitTorrent peer-wire TCP HOST:PORT (its own port, apart from the sync protocol; 0 = any)",
            _is_hostport,
            "must be HOST:PORT",
        ),
        Setting("watch.enabled", bool, True, "watch folders for changes"),
        Setting(
            "watch.modify_events",
            bool,
            False,
            "also react to every write to a file still open (inotify IN_MODIFY); by default a "
            "change is seen when the writer closes the file, files kept open at the next rescan",
        ),
        Setting(
            "watch.delay_ms",
            int,
            100,
            "debounce delay of the watcher in ms",
            lambda v: 0 <= v <= 600_000,
            "must be 0..600000",
        ),
        Setting(
            "scan.interval_s",
            int,
            3600,
            "full rescan interval in seconds (jittered)",
            lambda v: v >= 10,
            "must be >= 10",
        ),
        Setting(
            "versions.keep",
            int,
            5,
            "old versions kept per file in .syncer/versions (0 = none)",
            lambda v: v >= 0,
            "must be >= 0",
        ),
        Setting(
            "versions.max_age_days",
            int,
            30,
            "old versions older than this are removed",
            lambda v: v >= 1,
            "must be >= 1",
        ),
    ]
}


def parse_value(setting: Setting, raw: list[str]) -> Any:
    """Parse command-line text into a typed value for `setting`."""
    k = setting.kind
    if k is list:
        if len(raw) == 1 and raw[0] in ("", "[]"):
            value: Any = []
        else:
            value = [v.strip() for item in raw for v in item.split(",") if v.strip()]
    elif len(raw) != 1:
        raise ConfigError(f"{setting.key} takes exactly one value")
    elif k is bool:
        t = raw[0].strip().lower()
        if t in ("true", "yes", "on", "1"):
            value = True
        elif t in ("false", "no", "off", "0"):
            value = False
        else:
            raise ConfigError(f"{setting.key} must be true or false, got {raw[0]!r}")
    elif k is int:
        try:
            value = int(raw[0])
        except ValueError:
            raise ConfigError(f"{setting.key} must be an integer, got {raw[0]!r}") from None
    else:
        value = raw[0]
    validate(setting, value)
    return value


def validate(setting: Setting, value: Any) -> None:
    ok_type = isinstance(value, setting.kind) and not (
        setting.kind is int and isinstance(value, bool)
    )
    if setting.kind is list:
        ok_type = ok_type and all(isinstance(v, str) for v in value)
    if not ok_type:
        raise ConfigError(f"{setting.key} must be of type {setting.kind.__name__}, got {value!r}")
    if setting.check and not setting.check(value):
        raise ConfigError(f"bad value for {setting.key}: {setting.check_help}")


@dataclass
class DeviceConfig:
    id: str
    name: str = ""
    addresses: list[str] = field(default_factory=list)
    paused: bool = False  # neither dialed nor accepted until resumed

    @property
    def device_id(self) -> DeviceId:
        return DeviceId.parse(self.id)


@dataclass
class FolderConfig:
    id: str
    path: str
    label: str = ""
    # None = shared with every paired device; otherwise only these device IDs
    devices: list[str] | None = None
    paused: bool = False
    type: str = "send-receive"  # send-receive | send-only | receive-only
    selective: bool = False  # only `selected` paths are fetched (metadata of everything is kept)
    selected: list[str] = field(default_factory=list)

    def shared_with(self, device: DeviceId | str, paired: list[DeviceConfig]) -> bool:
        d = str(device)
        if not any(p.id == d for p in paired):
            return False
        return self.devices is None or d in self.devices


class Config:
    """A parsed config.toml. Typed accessors over the tomlkit document.

    The device and folder lists are read from the document once and kept as plain tuples until
    the next change through these methods (the only way the document is changed): tomlkit's item
    access is slow, and the status call and the dialer look devices up many times a second (a
    status call with 7 devices took ~10 ms, 9 % of a W5 receiver's samples). Callers get fresh
    dataclasses each time, so editing one changes nothing until it is upserted."""

    def __init__(self, doc: tomlkit.TOMLDocument, path: Path) -> None:
        self.doc = doc
        self.path = path
        self._devices: dict[str, tuple[str, tuple[str, ...], bool]] | None = None
        self._folders: list[tuple[Any, ...]] | None = None

    def _changed(self) -> None:
        self._devices = self._folders = None

    # settings -----------------------------------------------------------
    def get(self, key: str) -> Any:
        setting = SETTINGS.get(key)
        if setting is None:
            raise ConfigError(f"unknown config key {key!r} (see `syncer config list`)")
        node: Any = self.doc
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return setting.default
            node = node[part]
        return _plain(node)

    def set(self, key: str, value: Any) -> None:
        setting = SETTINGS.get(key)
        if setting is None:
            raise ConfigError(f"unknown config key {key!r} (see `syncer config list`)")
        validate(setting, value)
        parts = key.split(".")
        node: Any = self.doc
        for part in parts[:-1]:
            if part not in node:
                node[part] = tomlkit.table()
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"config.toml: {part!r} is not a table")
        node[parts[-1]] = value
        self._changed()

    @property
    def device_name(self) -> str:
        return self.get("device.name") or socket.gethostname()

    # devices --------------------------------------------------------------
    def _device_rows(self) -> dict[str, tuple[str, tuple[str, ...], bool]]:
        if self._devices is None:
            rows: dict[str, tuple[str, tuple[str, ...], bool]] = {}
            for d in self.doc.get("devices", []):  # a hand-edited duplicate: the first counts
                rows.setdefault(str(d["id"]), (str(d.get("name", "")), tuple(str(a) for a in d.get("addresses", [])), bool(d.get("paused", False))))
            self._devices = rows
        return self._devices

    @property
    def devices(self) -> list[DeviceConfig]:
        return [DeviceConfig(id=i, name=n, addresses=list(a), paused=p) for i, (n, a, p) in self._device_rows().items()]

    def device(self, device_id: DeviceId | str) -> DeviceConfig | None:
        d = str(device_id)
        row = self._device_rows().get(d)
        return None if row is None else DeviceConfig(id=d, name=row[0], addresses=list(row[1]), paused=row[2])

    def upsert_device(self, dev: DeviceConfig) -> None:
        for a in dev.addresses:
            if not _is_address(a):
                raise ConfigError(
                    f"bad address {a!r}: expected tcp://HOST:PORT, quic://HOST:PORT or relay://HOST:PORT"
                )
        self._changed()
        if "devices" not in self.doc:
            self.doc["devices"] = tomlkit.aot()
        table: dict[str, Any] = {"id": dev.id, "name": dev.name, "addresses": dev.addresses}
        if dev.paused:
            table["paused"] = True
        for t in self.doc["devices"]:
            if t["id"] == dev.id:
                t.update(table)
                if not dev.paused and "paused" in t:
                    del t["paused"]
                return
        self.doc["devices"].append(table)

    def remove_device(self, device_id: DeviceId | str) -> bool:
        self._changed()
        d = str(device_id)
        items = self.doc.get("devices", [])
        for i, t in enumerate(items):
            if t["id"] == d:
                del items[i]
                return True
        return False

    # folders --------------------------------------------------------------
    @property
    def folders(self) -> list[FolderConfig]:
        if self._folders is None:
            rows = []
            for f in self.doc.get("folders", []):
                devs = f.get("devices")
                rows.append((
                    str(f["id"]), str(f["path"]), str(f.get("label", "")),
                    None if devs is None else tuple(str(x) for x in devs), bool(f.get("paused", False)),
                    str(f.get("type", "send-receive")), bool(f.get("selective", False)),
                    tuple(str(x) for x in f.get("selected", [])),
                ))
            self._folders = rows
        return [
            FolderConfig(id=i, path=p, label=lb, devices=None if d is None else list(d), paused=pa, type=t, selective=se, selected=list(sl))
            for i, p, lb, d, pa, t, se, sl in self._folders
        ]

    def folder(self, folder_id: str) -> FolderConfig | None:
        return next((f for f in self.folders if f.id == folder_id), None)

    def upsert_folder(self, folder: FolderConfig) -> None:
        self._changed()
        if "folders" not in self.doc:
            self.doc["folders"] = tomlkit.aot()
        table: dict[str, Any] = {
            "id": folder.id,
            "path": folder.path,
            "label": folder.label,
            "paused": folder.paused,
        }
        if folder.type != "send-receive":
            table["type"] = folder.type
        if folder.selective:
            table["selective"] = True
            table["selected"] = folder.selected
        if folder.devices is not None:
            table["devices"] = folder.devices
        for t in self.doc["folders"]:
            if t["id"] == folder.id:
                t.clear()
                t.update(table)
                return
        self.doc["folders"].append(table)

    def remove_folder(self, folder_id: str) -> bool:
        self._changed()
        items = self.doc.get("folders", [])
        for i, t in enumerate(items):
            if t["id"] == folder_id:
                del items[i]
                return True
        return False

    def check(self) -> None:
        """Validate the whole document; raises ConfigError naming the first problem."""
        for key in SETTINGS:
            validate(SETTINGS[key], self.get(key))
        for d in self.doc.get("devices", []):
            if "id" not in d:
                raise ConfigError(f"{self.path}: a [[devices]] entry has no id")
            try:
                DeviceId.parse(str(d["id"]))
            except InvalidDeviceId as e:
                raise ConfigError(f"{self.path}: {e}") from None
        for f in self.doc.get("folders", []):
            if "id" not in f or "path" not in f:
                raise ConfigError(f"{self.path}: a [[folders]] entry needs id and path")
            if str(f.get("type", "send-receive")) not in FOLDER_TYPES:
                raise ConfigError(f"{self.path}: folder {f['id']}: type must be one of {', '.join(FOLDER_TYPES)}")


def _plain(node: Any) -> Any:
    if hasattr(node, "unwrap"):
        return node.unwrap()
    return node


def load_config(path: Path) -> Config:
    if not path.exists():
        return Config(tomlkit.document(), path)
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (tomlkit.exceptions.TOMLKitError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    cfg = Config(doc, path)
    cfg.check()
    return cfg


def save_config(cfg: Config) -> None:
    cfg.check()
    cfg.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = cfg.path.with_name(f".{cfg.path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private, like the key
    with open(fd, "w", encoding="utf-8") as f:
        f.write(tomlkit.dumps(cfg.doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cfg.path)


@contextlib.contextmanager
def edit_config(path: Path) -> Iterator[Config]:
    """Read-modify-write under an exclusive lock; nothing is written if the body raises."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        cfg = load_config(path)
        yield cfg
        save_config(cfg)

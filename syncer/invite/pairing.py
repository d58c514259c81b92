"""What an accepted invite changes in config.toml, on both sides (pure over a Config).

Pairing a device normally shares every folder that is "shared with all paired devices" with it.
An invite is for one folder, so first such folders are pinned to the devices they are shared
with now; then the device is paired and the invited folder shared with it (and only that one).
"""

from __future__ import annotations

from syncer.config import Config, DeviceConfig, _is_address
from syncer.deviceid import DeviceId

MAX_ADDRESSES = 8


def pin_open_folders(cfg: Config, except_folder: str) -> list[str]:
    """Folders shared with every paired device get an explicit list of today's devices; returns
    their ids."""
    current = [d.id for d in cfg.devices]
    pinned = []
    for f in cfg.folders:
        if f.devices is None and f.id != except_folder:
            f.devices = list(current)
            cfg.upsert_folder(f)
            pinned.append(f.id)
    return pinned


def pair_for_folder(cfg: Config, device: DeviceId, name: str, addresses: list[str], folder_id: str) -> list[str]:
    """Pair `device` (keeping what we knew of it) and share `folder_id` with it, if that folder
    is configured here. Returns the folders pinned by `pin_open_folders`."""
    old = cfg.device(device)
    pinned = [] if old is not None else pin_open_folders(cfg, folder_id)
    good = [a for a in addresses if _is_address(a)][:MAX_ADDRESSES]
    known = old.addresses if old else []
    cfg.upsert_device(
        DeviceConfig(
            id=str(device),
            name=(old.name if old and old.name else name),
            addresses=known + [a for a in good if a not in known],
        )
    )
    folder = cfg.folder(folder_id)
    if folder is not None and folder.devices is not None and str(device) not in folder.devices:
        folder.devices.append(str(device))
        cfg.upsert_folder(folder)
    return pinned

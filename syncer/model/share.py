"""Shared-folder bookkeeping on disk: the `.syncer/` marker, folder ids, path validation."""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from syncer.config import Config
from syncer.errors import FolderError
from syncer.fs.layout import MARKER

_ID_CHARS = string.ascii_lowercase + string.digits


def new_folder_id() -> str:
    """Random id like Syncthing's `abcde-fghij`."""
    part = lambda: "".join(secrets.choice(_ID_CHARS) for _ in range(5))  # noqa: E731
    return f"{part()}-{part()}"


def valid_folder_id(folder_id: str) -> bool:
    return 0 < len(folder_id) <= 64 and all(c.isalnum() or c in "-_." for c in folder_id)


def validate_share(cfg: Config, path: Path, folder_id: str) -> Path:
    """The resolved folder path, or FolderError with one clear reason."""
    if not valid_folder_id(folder_id):
        raise FolderError(f"invalid folder id {folder_id!r}: use letters, digits, '-', '_' or '.' (at most 64)")
    if not path.exists():
        raise FolderError(f"{path} does not exist")
    if not path.is_dir():
        raise FolderError(f"{path} is not a directory")
    root = path.resolve()
    for f in cfg.folders:
        other = Path(f.path).resolve()
        if f.id == folder_id:
            if other == root:
                continue
            raise FolderError(f"folder id {folder_id!r} is already used for {other}")
        if other == root:
            raise FolderError(f"{root} is already shared as folder {f.id!r}")
        if other in root.parents:
            raise FolderError(f"{root} is inside shared folder {f.id!r} ({other})")
        if root in other.parents:
            raise FolderError(f"{root} contains shared folder {f.id!r} ({other})")
    return root


def create_marker(root: Path) -> None:
    (root / MARKER).mkdir(exist_ok=True)
    (root / MARKER / "README").write_text(
        "This directory marks a folder shared by syncer. Deleting it stops syncing this folder\n"
        "(so an unmounted disk is never taken for 'all files deleted').\n"
    )


def folder_state(root: Path) -> str:
    if not root.is_dir():
        return "stopped: path missing"
    if not (root / MARKER).is_dir():
        return "stopped: marker missing"
    return "ok"

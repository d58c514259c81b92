"""Helpers for sync end-to-end tests: folders on real daemons, tree comparison."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from tests.daemons import Node, wait_until

SKIP_NAMES = {".syncer"}


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below `top` (nothing skipped): type and mode, size, mtime and content (or
    link target), so a test can assert that nothing outside a folder changed at all."""
    st = os.lstat(top)
    out: dict[str, tuple[Any, ...]] = {".": (oct(st.st_mode), st.st_mtime_ns)}
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = os.lstat(p)
            body = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(top))] = (oct(st.st_mode), st.st_size, st.st_mtime_ns, body)
    return out


def tree(root: Path) -> dict[str, Any]:
    """name -> sha256 (files), 'dir', or ('link', target); temp files and .syncer/ excluded."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirs[:] = [d for d in dirs if not (rel == "." and d in SKIP_NAMES)]
        for d in dirs:
            p = Path(dirpath) / d
            name = os.path.normpath(os.path.join(rel, d))
            out[name] = ("link", os.readlink(p)) if p.is_symlink() else "dir"
        for f in files:
            if f.startswith(".syncer.") and f.endswith(".tmp"):
                continue
            p = Path(dirpath) / f
            name = os.path.normpath(os.path.join(rel, f))
            if p.is_symlink():
                out[name] = ("link", os.readlink(p))
            else:
                out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tree_diff(got: dict[str, Any], want: dict[str, Any], limit: int = 10) -> str:
    """What differs between two trees, briefly (for failure messages)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(n for n in set(got) & set(want) if got[n] != want[n])
    parts = [f"{label} {len(names)}: {names[:limit]}" for label, names in
             (("missing", missing), ("extra", extra), ("different", changed)) if names]
    return "; ".join(parts) or "identical"


def wait_tree(root: Path, want: dict[str, Any], timeout: float = 90, what: str = "tree as expected") -> None:
    """Wait until `root` holds exactly `want`; on timeout the message says what differs."""
    last: list[dict[str, Any]] = [{}]

    def ok() -> bool:
        last[0] = tree(root)
        return last[0] == want

    try:
        wait_until(ok, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}: {root.name} vs expected: {tree_diff(last[0], want)}") from None


def share(node: Node, path: Path, folder_id: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    node.syncer("share", str(path), "--id", folder_id, check=True)


def folder_status(node: Node, folder_id: str) -> dict[str, Any]:
    return next(f for f in node.folders() if f["id"] == folder_id)


def wait_same(a: Path, b: Path, timeout: float = 90, what: str = "folders identical") -> dict[str, Any]:
    def same() -> dict[str, Any] | None:
        ta, tb = tree(a), tree(b)
        return ta if ta == tb and ta else None

    return wait_until(same, timeout, what)


def transfer(node: Node, other: Node, folder_id: str) -> dict[str, int]:
    """This node's transfer counters with `other` in `folder_id`."""
    row = node.device(other)
    return row.get("folders", {}).get(folder_id, {"bytes_in": 0, "bytes_out": 0, "blocks_in": 0, "blocks_out": 0, "bad_blocks": 0})

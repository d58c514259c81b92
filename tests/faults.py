"""Faults for the reliability suite: damaged index databases, a small disk in a private mount
namespace, and what a test needs to look inside that namespace."""

from __future__ import annotations

import os
import random
import shlex
import sqlite3
from pathlib import Path

from tests.daemons import Node

PAGE = 4096


def settle_wal(db: Path) -> None:
    """Checkpoint the write-ahead log into the main file, as after any clean close, so damage
    done to the main file is not masked by newer copies of its pages in the log."""
    c = sqlite3.connect(db)
    try:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        c.close()
    wal = Path(f"{db}-wal")
    if wal.exists() and wal.stat().st_size == 0:
        wal.unlink()


def garble_pages(db: Path, rng: random.Random, fraction: float = 0.25) -> list[int]:
    """Overwrite a run of pages in the middle of the file (never page 1, which holds the
    header) with random bytes; returns the page numbers (1-based) overwritten."""
    pages = db.stat().st_size // PAGE
    assert pages >= 8, f"{db} has only {pages} pages"
    count = max(2, int(pages * fraction))
    first = max(2, pages // 2 - count // 2)
    with open(db, "r+b") as f:
        for p in range(first, first + count):
            f.seek((p - 1) * PAGE)
            f.write(rng.randbytes(PAGE))
    return list(range(first, first + count))


def truncate_db(db: Path) -> int:
    """Cut the file to half its pages (a torn copy, a full disk during a write)."""
    size = (db.stat().st_size // PAGE // 2) * PAGE
    os.truncate(db, size)
    return size


def tmpfs_wrap(mountpoint: Path, size_mb: int) -> list[str]:
    """argv that runs a command in a mount namespace of its own with a `size_mb` tmpfs on
    `mountpoint` (recreating the folder marker on it). The mount exists only in that namespace:
    when the daemon exits it is gone, and the host never sees it."""
    script = (
        f"mount -t tmpfs -o size={size_mb}m,mode=0755 syncer-test {shlex.quote(str(mountpoint))}"
        f" && mkdir -p {shlex.quote(str(mountpoint / '.syncer'))} && exec \"$@\""
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def inside(node: Node, path: Path) -> Path:
    """`path` as the daemon of `node` sees it (through its mount namespace)."""
    assert node.proc is not None and node.proc.poll() is None, f"{node.name} is not running"
    return Path(f"/proc/{node.proc.pid}/root") / path.relative_to("/")


def mounted_on_host(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def open_deleted(node: Node) -> list[str]:
    """Files the daemon of `node` holds open that were deleted (their space is not freed)."""
    assert node.proc is not None
    fds = Path(f"/proc/{node.proc.pid}/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(" (deleted)"):
            out.append(target)
    return sorted(out)

"""Writing files so that nothing half-written is ever visible under the real name, and the
trash can of replaced and deleted files. Everything goes through the folder's confined layer.

Blocks go into a temp file in the same directory (`.syncer.NAME.tmp`, never synced, resumable:
its verified blocks are reused after a crash); when complete it gets its mtime and permissions
and is renamed over the real name atomically (apply.py batches the syncs). Replaced and deleted
files are moved into `.syncer/versions/` first, as `DIR/STEM~YYYYMMDD-HHMMSS.EXT`; the trash
can keeps at most `versions.keep` versions per file, none older than `versions.max_age_days`
(pruned when a file is archived, and swept periodically with bounded work per run).

Permissions from peers are masked to 0o777: setuid, setgid and sticky bits are never applied.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import stat
import time
from dataclasses import dataclass

from syncer.fs.confined import FolderFS
from syncer.fs.layout import VERSIONS_DIR

PERMISSION_BITS = 0o777
PRUNE_BUDGET = 20_000  # trash-can entries looked at per periodic run


def final_mode(permissions: int) -> int:
    return permissions & PERMISSION_BITS or 0o644


def dir_mode(permissions: int) -> int:
    return permissions & PERMISSION_BITS or 0o755


def temp_mode(permissions: int) -> int:
    """A download's temp file: the final permission bits, but owner-writable (a resume reopens
    it for writing)."""
    return final_mode(permissions) | 0o200


@dataclass(frozen=True)
class Versions:
    """How much of the trash can to keep: `keep` versions per file (0 = none), none older
    than `max_age_s`."""

    keep: int = 5
    max_age_s: float = 30 * 86400.0


def version_name(name: str, now: float) -> str:
    """Where the old copy of `name` goes: `.syncer/versions/DIR/STEM~YYYYMMDD-HHMMSS.EXT`."""
    head, base = posixpath.split(name)
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    vname = f"{stem}~{stamp}" + (f".{ext}" if ext else "")
    return posixpath.join(VERSIONS_DIR, head, vname)


_VERSION = re.compile(r"(?P<stem>.+)~\d{8}-\d{6}(?:-\d+)?(?:\.(?P<ext>[^.]*))?")


def version_key(base: str) -> tuple[str, str] | None:
    """(stem, extension) of the file a trash-can entry is a version of; None for other names."""
    m = _VERSION.fullmatch(base)
    return None if m is None else (m["stem"], m["ext"] or "")


def archive(fs: FolderFS, name: str, now: float) -> str | None:
    """Move the regular file at `name` into the trash can; its trash-can name, or None if
    there is no regular file there."""
    st = fs.lstat_or_none(name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    dst = version_name(name, now)
    root, ext = posixpath.splitext(dst)
    n = 1
    while fs.lstat_or_none(dst) is not None:
        dst = f"{root}-{n}{ext}"
        n += 1
    fs.replace(name, dst)
    # the trash can ages versions by when they were archived, not by their content's mtime
    fs.utime(dst, int(now * 1e9))
    return dst


def prune_archived(fs: FolderFS, names: list[str], policy: Versions, now: float) -> int:
    """After archiving `names`: bound their versions (one listing per trash-can directory).
    Returns how many versions were removed."""
    by_dir: dict[str, set[tuple[str, str]]] = {}
    for name in names:
        head, base = posixpath.split(name)
        stem, dot, ext = base.rpartition(".")
        if not dot or not stem:
            stem, ext = base, ""
        by_dir.setdefault(posixpath.join(VERSIONS_DIR, head).rstrip("/"), set()).add((stem, ext))
    removed = 0
    for vdir, keys in by_dir.items():
        try:
            listing = fs.list_dir(vdir)
        except OSError:
            continue
        removed += _prune_listing(fs, vdir, listing.entries, policy, now, keys)
    return removed


def prune_tree(
    fs: FolderFS, policy: Versions, now: float, cursor: tuple[str, ...] | None = None, budget: int = PRUNE_BUDGET
) -> tuple[int, tuple[str, ...] | None]:
    """Sweep the whole trash can: directories in sorted depth-first order, stopping after about
    `budget` entries. Returns (versions removed, cursor to resume from, or None when done);
    emptied directories are removed too."""
    removed = seen = 0
    if not fs.is_dir(VERSIONS_DIR):
        return 0, None
    base_depth = VERSIONS_DIR.count("/") + 1
    walker = fs.walk(VERSIONS_DIR)
    try:
        for listing in walker:
            key = tuple(listing.rel.split("/")[base_depth:])
            listing.subdirs.sort()
            # keep only subtrees holding something after the cursor (pre-order of sorted
            # names = lexicographic order of the component tuples)
            if cursor is not None:
                listing.subdirs[:] = [
                    d for d in listing.subdirs if (k := (*key, d)) > cursor or cursor[: len(k)] == k
                ]
            if listing.error is not None or (cursor is not None and key <= cursor):
                continue
            seen += len(listing.entries) + 1
            n = _prune_listing(fs, listing.rel, listing.entries, policy, now, None)
            removed += n
            if key and n and n == len(listing.entries):
                with contextlib.suppress(OSError):
                    fs.rmdir(listing.rel)  # emptied (fails harmlessly if anything is left)
            if seen >= budget:
                return removed, key
    finally:
        walker.close()
    return removed, None


def _prune_listing(fs: FolderFS, vdir: str, entries: list, policy: Versions, now: float, only: set[tuple[str, str]] | None) -> int:
    groups: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for base, st, _ in entries:
        if not stat.S_ISREG(st.st_mode):
            continue
        key = version_key(base)
        if key is None or (only is not None and key not in only):
            continue
        groups.setdefault(key, []).append((st.st_mtime, base))
    removed = 0
    for versions in groups.values():
        versions.sort(reverse=True)  # newest first
        for i, (mtime, base) in enumerate(versions):
            if i >= policy.keep or now - mtime > policy.max_age_s:
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(f"{vdir}/{base}")
                    removed += 1
    return removed

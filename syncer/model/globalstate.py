"""Global state of a file across devices, and what this device needs (pure).

Each device announces its version of every file with a version vector. The global version is
the one no other version dominates; between concurrent versions (a conflict) the winner is the
newer modification time, then the higher device short id, exactly as every device computes it,
so all devices agree without talking. A deletion never beats a concurrent modification: losing
data is worse than resurrecting a file.

A newer version with the same content as ours (a touch, a chmod, or the same file scanned by two
devices whose histories do not know each other, e.g. after an index database was rebuilt) moves
no data: we adopt its version vector and metadata in place, with no download, no rewrite, no
archived copy and no conflict.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import Ordering


def _beats(a: FileInfo, b: FileInfo) -> bool:
    """True if version `a` should be the global one rather than `b`."""
    order = a.version.compare(b.version)
    if order is Ordering.GREATER:
        return True
    if order in (Ordering.LESSER, Ordering.EQUAL):
        return False
    # concurrent: a conflict
    if a.deleted != b.deleted:
        return not a.deleted
    if a.mtime_ns != b.mtime_ns:
        return a.mtime_ns > b.mtime_ns
    return a.modified_by > b.modified_by


def global_version(candidates: Iterable[FileInfo]) -> FileInfo | None:
    best: FileInfo | None = None
    for f in candidates:
        if best is None or _beats(f, best):
            best = f
    return best


class Need(Enum):
    NOTHING = "nothing"
    APPLY = "apply"  # the global version replaces ours
    CONFLICT = "conflict"  # ours is concurrent and loses: keep it as a conflict copy, then apply
    METADATA = "metadata"  # same content as ours: adopt the global version and metadata in place


def need(local: FileInfo | None, glob: FileInfo | None) -> Need:
    if glob is None:
        return Need.NOTHING
    if local is None:
        return Need.NOTHING if glob.deleted else Need.APPLY
    order = glob.version.compare(local.version)
    if order is Ordering.GREATER or (order is Ordering.CONCURRENT and _beats(glob, local)):
        if glob.type == FileType.FILE and not glob.deleted and same_content(local, glob):
            return Need.METADATA
        if order is Ordering.GREATER or local.deleted or glob.deleted or same_content(local, glob):
            return Need.APPLY
        return Need.CONFLICT
    return Need.NOTHING


def same_content(a: FileInfo, b: FileInfo) -> bool:
    return (a.type, a.size, a.blocks, a.symlink_target, a.deleted) == (b.type, b.size, b.blocks, b.symlink_target, b.deleted)

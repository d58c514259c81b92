"""FileInfo <-> WireFile. The wire layer never imports the model; this is the one bridge."""

from __future__ import annotations

from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.wire import WireFile


def to_wire(f: FileInfo) -> WireFile:
    return WireFile(
        f.name,
        int(f.type),
        f.size,
        f.mtime_ns,
        f.permissions,
        f.block_size,
        list(f.blocks),
        f.symlink_target,
        f.version.to_list(),
        f.sequence,
        f.deleted,
        f.modified_by,
    )


def from_wire(w: WireFile) -> FileInfo:
    return FileInfo(
        name=w.name,
        type=FileType(w.type),
        size=w.size,
        mtime_ns=w.mtime_ns,
        permissions=w.permissions,
        block_size=w.block_size,
        blocks=tuple(w.blocks),
        symlink_target=w.symlink_target,
        version=VersionVector.from_list([list(x) for x in w.version]),
        sequence=w.sequence,
        deleted=w.deleted,
        modified_by=w.modified_by,
    )

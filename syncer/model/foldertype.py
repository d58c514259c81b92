"""Folder types beyond send-receive (worker thread, on the index DB).

- send-only: changes from other devices are never applied (their need rows are kept with
  SKIP_SEND_ONLY, so `why` and status show them). `override` makes this device's state win: every
  such entry gets a version that dominates both sides (ours merged with the global one, plus our
  counter), content unchanged — an entry we do not have becomes a deletion — and is announced.
- receive-only: what changes here is recorded with the LOCAL_CHANGE flag and never announced;
  it takes no part in the global state, and remote changes to it wait (SKIP_LOCAL_CHANGE).
  `revert` drops local changes: a changed or deleted entry gets an empty version, so the global
  one is fetched again (the local file goes to the trash can as with any replaced file); an entry
  only we have is removed (into the trash can) and forgotten, never announced as deleted.
A local change that equals the global content is adopted with the global version, not flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

from syncer.deviceid import DeviceId
from syncer.index.db import LOCAL, IndexDB
from syncer.index.fileinfo import LOCAL_CHANGE, FileInfo
from syncer.model.globalstate import same_content
from syncer.model.need import _global

FOLDER_TYPES = ("send-receive", "send-only", "receive-only")
ROWS_PER_QUERY = 400  # names per rows_for call: bounded memory, few round trips


@dataclass
class Plan:
    """What override or revert would do (a dry run shows the counts)."""

    announce: list[FileInfo]  # rows to store (new sequence, announced)
    restore: list[str]  # revert: local changes to replace by the global version
    remove: list[str]  # revert: entries only we have: remove from disk and forget

    def counts(self) -> dict[str, int]:
        return {"announce": len(self.announce), "restore": len(self.restore), "remove": len(self.remove)}


def mark_local_changes(db: IndexDB, folder: str, devices: list[DeviceId], names: Iterable[str]) -> list[str]:
    """Receive-only: after a scan stored local rows for `names`, flag those that differ from
    the other devices' global version; adopt the global version where the content is the same.
    Returns the names flagged."""
    flagged: list[str] = []
    adopt: list[FileInfo] = []
    for name, local, cands in _with_local_row(db, folder, devices, list(names)):
        _, glob = _global(cands)
        if glob is not None and same_content(local, glob):
            if local.version != glob.version or local.flags:
                adopt.append(msgspec.structs.replace(local, version=glob.version, flags=0))
            continue
        flagged.append(name)
    db.set_flags(folder, flagged, LOCAL_CHANGE)
    if adopt:
        db.update_local(folder, adopt)
    return flagged


def override_plan(db: IndexDB, folder: str, devices: list[DeviceId], short: int, skip_send_only: int) -> Plan:
    """Send-only: new local rows that dominate every entry changed elsewhere."""
    raws = [d.raw for d in devices]
    out: list[FileInfo] = []
    offset = 0
    while True:
        rows = [r for r in db.need_list(folder, "", offset, 1000)]
        if not rows:
            break
        offset += len(rows)
        names = [r.name for r in rows if r.skip == skip_send_only]
        found = db.rows_for(folder, [LOCAL, *raws], names)
        for name in names:
            cands = found.get(name, {})
            local = cands.pop(LOCAL, None)
            _, glob = _global(cands)
            if glob is None:
                continue
            version = (local.version.merge(glob.version) if local is not None else glob.version).update(short)
            if local is not None:
                out.append(msgspec.structs.replace(local, version=version, modified_by=short, flags=0))
            else:
                out.append(FileInfo(name, glob.type, 0, glob.mtime_ns, glob.permissions, 0, (), "", version, 0, True, short))
    return Plan(out, [], [])


def revert_plan(db: IndexDB, folder: str, devices: list[DeviceId]) -> Plan:
    """Receive-only: which local changes get the global version back, which are removed."""
    raws = [d.raw for d in devices]
    restore: list[str] = []
    remove: list[str] = []
    after = ""
    while True:
        names = db.flagged(folder, LOCAL_CHANGE, after, 1000)
        if not names:
            break
        after = names[-1]
        found = db.rows_for(folder, raws, names) if raws else {}
        for name in names:
            _, glob = _global(found.get(name, {}))
            (restore if glob is not None and not glob.deleted else remove).append(name)
    return Plan([], restore, remove)


def freeable(db: IndexDB, folder: str, devices: list[DeviceId], names: list[str]) -> tuple[list[FileInfo], list[str]]:
    """Selective sync: local rows under an unselected path that another device holds in the
    same version (a copy is elsewhere: freeing ours loses nothing), and the names kept because
    they changed here."""
    free: list[FileInfo] = []
    keep: list[str] = []
    for name, local, cands in _with_local_row(db, folder, devices, names):
        if local.deleted:
            continue
        if local.flags or not any(f.version == local.version for f in cands.values()):
            keep.append(name)
        else:
            free.append(local)
    return free, keep


def _with_local_row(db: IndexDB, folder: str, devices: list[DeviceId], names: list[str]) -> Iterator[tuple[str, FileInfo, dict[bytes, FileInfo]]]:
    """Each of `names` that has a local row: that row and the devices' rows of it, by raw device
    id (ROWS_PER_QUERY names a query)."""
    raws = [d.raw for d in devices]
    for i in range(0, len(names), ROWS_PER_QUERY):
        part = names[i : i + ROWS_PER_QUERY]
        rows = db.rows_for(folder, [LOCAL, *raws], part)
        for name in part:
            cands = rows.get(name, {})
            local = cands.pop(LOCAL, None)
            if local is not None:
                yield name, local, cands

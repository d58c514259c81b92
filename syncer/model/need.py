"""The folder's need, kept in the index DB (worker thread only).

Whenever rows of some names change (an index from a peer, a scan, an applied batch), their global
version and this device's need are recomputed from every sharing device's row of those names
(point lookups, a few hundred names per query) and written to the `need` table, which the puller
reads page by page in pulling order. The changes go back to the puller as `NeedChange`s, so it
can abort jobs whose version was superseded and start new passes only when something became
startable. A full recomputation (streamed, name by name in bounded steps) happens only when the
set of sharing devices changes, or a peer's index was reset.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from syncer.deviceid import DeviceId
from syncer.index.db import (
    LOCAL,
    NEED_DELETE,
    NEED_FILE,
    NEED_OTHER,
    IndexDB,
    NeedRow,
    encode_version,
)
from syncer.index.fileinfo import FileInfo, FileType
from syncer.model.globalstate import Need, _beats, need
from syncer.transfer.puller import NeedChange, Wanted

CHUNK = 400  # names per recomputation query
WALK_STEP = 2000  # names per step of a full recomputation


def kind_of(f: FileInfo) -> int:
    if f.deleted:
        return NEED_DELETE
    return NEED_FILE if f.type == FileType.FILE else NEED_OTHER


def basis_of(devices: Iterable[DeviceId]) -> bytes:
    return b"".join(sorted(d.raw for d in devices))


class NeedIndex:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def ensure_basis(self, db: IndexDB, devices: list[DeviceId]) -> bool:
        """Recompute everything if the need was computed for other devices; True if it was."""
        basis = basis_of(devices)
        if db.need_basis(self.folder) == basis:
            return False
        self.recompute_all(db, devices)
        return True

    def recompute_all(self, db: IndexDB, devices: list[DeviceId]) -> None:
        db.clear_need(self.folder)
        for names in self._all_names(db, [LOCAL, *(d.raw for d in devices)]):
            self.recompute(db, devices, names)
        db.set_need_basis(self.folder, basis_of(devices))

    def _all_names(self, db: IndexDB, devices: list[bytes]) -> Iterator[list[str]]:
        """Every name any of `devices` has a row for, in order, in chunks (merged per device
        from the primary key: no sort, no set of all names in memory)."""

        def walk(device: bytes) -> Iterator[str]:
            after = ""
            while True:
                names = db.names(self.folder, device, after, WALK_STEP)
                yield from names
                if len(names) < WALK_STEP:
                    return
                after = names[-1]

        chunk: list[str] = []
        last = None
        for name in heapq.merge(*(walk(d) for d in devices)):
            if name == last:
                continue
            last = name
            chunk.append(name)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def recompute(self, db: IndexDB, devices: list[DeviceId], names: Iterable[str]) -> list[NeedChange]:
        """Recompute the need of `names` from every sharing device's row; returns the changes."""
        out: list[NeedChange] = []
        names = list(dict.fromkeys(names))
        raws = [LOCAL, *(d.raw for d in devices)]
        by_raw = {d.raw: d for d in devices}
        for i in range(0, len(names), CHUNK):
            part = names[i : i + CHUNK]
            rows = db.rows_for(self.folder, raws, part)
            old = db.need_rows(self.folder, part)
            upserts: list[NeedRow] = []
            deletes: list[str] = []
            for name in part:
                cands = rows.get(name, {})
                local = cands.get(LOCAL)
                source, glob = _global(cands)
                n = need(local, glob)
                if glob is None or n is Need.NOTHING:
                    if name in old:
                        deletes.append(name)
                    out.append(NeedChange(name, None))
                    continue
                holders = tuple(raw for raw, f in cands.items() if raw != LOCAL and f.version == glob.version)
                version = encode_version(glob.version)
                prev = old.get(name)
                keep = prev is not None and prev.version == version and prev.source in holders
                row = NeedRow(
                    name, kind_of(glob), glob.size if not glob.deleted else 0, n is Need.CONFLICT, source, holders, version,
                    prev.error if keep and prev else "", prev.failures if keep and prev else 0, prev.retry_at if keep and prev else 0.0,
                )
                if row != prev:
                    upserts.append(row)
                key = (row.kind, row.size if row.kind == NEED_FILE else 0, name)
                out.append(NeedChange(name, key, glob.version, frozenset(by_raw[h] for h in holders if h in by_raw)))
            db.write_need(self.folder, upserts, deletes)
        return out

    def page(self, db: IndexDB, devices: list[DeviceId], after: tuple[int, int, str] | None, inclusive: bool, limit: int, now_wall: float) -> tuple[list[Wanted], bool]:
        """Up to `limit` need entries in pulling order from `after`; True if the need ends there."""
        by_raw = {d.raw: d for d in devices}
        rows = db.need_page(self.folder, after, inclusive, limit, now_wall)
        out = [
            Wanted(f, r.kind, r.conflict, frozenset(by_raw[h] for h in r.holders if h in by_raw))
            for r, f in rows
        ]
        return out, len(rows) < limit


def _global(cands: dict[bytes, FileInfo]) -> tuple[bytes, FileInfo | None]:
    """The global version among the rows and a device holding it (remote devices preferred, so
    the source is someone we can download from)."""
    best: FileInfo | None = None
    source = LOCAL
    for raw, f in cands.items():
        if best is None or _beats(f, best) or (raw != LOCAL and source == LOCAL and f.version == best.version):
            best, source = f, raw
    return source, best

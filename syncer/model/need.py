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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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
from syncer.index.fileinfo import LOCAL_CHANGE, FileInfo, FileType
from syncer.model.globalstate import Need, _beats, need, same_content
from syncer.model.why import (
    SKIP_IGNORED,
    SKIP_LOCAL_CHANGE,
    SKIP_NONE,
    SKIP_SEND_ONLY,
    SKIP_UNSELECTED,
)
from syncer.transfer.puller import NeedChange, Wanted

CHUNK = 400  # names per recomputation query
WALK_STEP = 2000  # names per step of a full recomputation


def kind_of(f: FileInfo) -> int:
    if f.deleted:
        return NEED_DELETE
    return NEED_FILE if f.type == FileType.FILE else NEED_OTHER


@dataclass(frozen=True)
class Policy:
    """What this folder deliberately does not fetch."""

    type: str = "send-receive"  # send-receive | send-only | receive-only
    selected: tuple[str, ...] | None = None  # selective folders: these paths (and what is below)
    ignored: Callable[[str, bool], bool] | None = None  # this device's .syncerignore
    ignore_rules: str = ""  # their text, so a change of rules recomputes the need

    def basis(self) -> bytes:
        """Changes of these change every entry's need: a recomputation is due."""
        sel = "\0".join(self.selected) if self.selected is not None else "*"
        return f"{self.type}|{sel}|{self.ignore_rules}".encode()

    def is_selected(self, name: str) -> bool:
        if self.selected is None:
            return True
        for p in self.selected:
            # the path itself, what is below it, and its parent directories (they must exist)
            if not p or name == p or name.startswith(p + "/") or p.startswith(name + "/"):
                return True
        return False

    def skip(self, name: str, glob: FileInfo, n: Need, local: FileInfo | None) -> int:
        if local is not None and local.flags & LOCAL_CHANGE:
            return SKIP_LOCAL_CHANGE
        if not self.is_selected(name):
            return SKIP_UNSELECTED
        if self.ignored is not None and self.ignored(name, glob.type == FileType.DIRECTORY):
            return SKIP_IGNORED
        if self.type == "send-only":
            return SKIP_SEND_ONLY
        return SKIP_NONE


def basis_of(devices: Iterable[DeviceId], policy: Policy | None = None) -> bytes:
    return b"".join(sorted(d.raw for d in devices)) + b"|" + (policy or Policy()).basis()


def _devices_of(basis: bytes, policy: Policy) -> set[bytes] | None:
    """The devices a basis was made for, if it was made with `policy` (None otherwise)."""
    tail = b"|" + policy.basis()
    head = basis[: len(basis) - len(tail)]
    if not basis.endswith(tail) or len(head) % 32:
        return None
    return {head[i : i + 32] for i in range(0, len(head), 32)}


class NeedIndex:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def ensure_basis(self, db: IndexDB, devices: list[DeviceId], policy: Policy) -> bool:
        """Recompute everything if the need was computed for other devices or another policy;
        True if it was."""
        basis = basis_of(devices, policy)
        old = db.need_basis(self.folder)
        if old == basis:
            return False
        before = _devices_of(old, policy) if old is not None else None
        if before is not None and not any(db.has_rows(self.folder, raw) for raw in before ^ {d.raw for d in devices}):
            # only devices with no rows here came or went (a device just paired, or unshared
            # before it sent anything): every entry's need is what it was. At 1,000,000 files a
            # recomputation takes about 20 s, which pairing a new device would otherwise cost.
            db.set_need_basis(self.folder, basis)
            return False
        self.recompute_all(db, devices, policy)
        return True

    def recompute_all(self, db: IndexDB, devices: list[DeviceId], policy: Policy) -> None:
        db.clear_need(self.folder)
        for names in self._all_names(db, [LOCAL, *(d.raw for d in devices)]):
            self.recompute(db, devices, names, policy)
        db.set_need_basis(self.folder, basis_of(devices, policy))

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

    def recompute(self, db: IndexDB, devices: list[DeviceId], names: Iterable[str], policy: Policy) -> list[NeedChange]:
        """Recompute the need of `names` from every sharing device's row; returns the changes
        (entries deliberately not fetched are kept, with why, but are no change for the puller)."""
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
                if local is not None and local.flags & LOCAL_CHANGE:
                    # a receive-only folder's local change takes no part in the global state
                    source, glob = _global({k: v for k, v in cands.items() if k != LOCAL})
                    n = Need.NOTHING if glob is None or same_content(local, glob) else Need.APPLY
                else:
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
                skip = policy.skip(name, glob, n, local)
                # same content as ours (Need.METADATA): nothing to fetch, applied like a directory
                kind, size = (NEED_OTHER, 0) if n is Need.METADATA else (kind_of(glob), glob.size if not glob.deleted else 0)
                row = NeedRow(
                    name, kind, size, n is Need.CONFLICT, source, holders, version,
                    prev.error if keep and prev else "", prev.failures if keep and prev else 0, prev.retry_at if keep and prev else 0.0,
                    skip,
                )
                if row != prev:
                    upserts.append(row)
                if skip:
                    out.append(NeedChange(name, None))  # for the puller: nothing to fetch
                    continue
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

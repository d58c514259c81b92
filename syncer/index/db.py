"""The index database: SQLite in WAL mode, numbered schema migrations, batched writes.

Stores the local index and each remote device's index of every folder, keyed by
(folder, device, name). The local device is the constant LOCAL (32 zero bytes). Local rows get
increasing sequence numbers per folder, so a peer that has our index up to sequence S is sent
only what changed after S. One IndexDB per thread (sqlite3 connections are not shared).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from syncer.errors import SyncerError
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.needrow import NEED_DELETE as NEED_DELETE  # re-exported: model/need.py
from syncer.index.needrow import NEED_FILE as NEED_FILE
from syncer.index.needrow import NEED_OTHER as NEED_OTHER
from syncer.index.needrow import NeedRow
from syncer.index.version import VersionVector
from syncer.paths import private_file

T = TypeVar("T")
LOCAL = b"\x00" * 32
HASH_LEN = 32
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[tuple[int, int]])
_COLUMNS = "name, type, size, mtime_ns, permissions, block_size, blocks, symlink_target, version, sequence, deleted, modified_by, inode, dev, flags"


class IndexError_(SyncerError):
    pass


class CorruptIndex(IndexError_):
    """The database file is damaged: not a database, malformed or missing pages."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(
            f"index database {path} is damaged ({reason}); the daemon moves it aside and "
            "rebuilds the index from the folders when it starts"
        )
        self.reason = reason


# SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB (a locked,
# busy or read-only database is not damaged)
_CORRUPT_CODES = frozenset({11, 26})
SQLITE_MAGIC = b"SQLite format 3\x00"
CORRUPT_SUFFIX = ".corrupt-"


def is_corruption(e: BaseException) -> bool:
    """Does this error mean the database file itself is damaged?"""
    if isinstance(e, CorruptIndex):
        return True
    if not isinstance(e, sqlite3.DatabaseError):
        return False
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES  # extended codes carry the primary in the low byte
    text = str(e)
    return "malformed" in text or "not a database" in text


def encode_version(v: VersionVector) -> bytes:
    return _enc.encode([(_signed(d), c) for d, c in v])


def _signed(u: int) -> int:
    """SQLite integers are signed 64-bit; device short ids use all 64 bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _unsigned(s: int) -> int:
    return s + (1 << 64) if s < 0 else s


def migrations() -> list[tuple[int, str]]:
    pkg = resources.files("syncer.index") / "migrations"
    out = []
    for entry in pkg.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), entry.read_text()))
    return sorted(out)


def _row(r: tuple) -> FileInfo:
    blob = r[6]
    return FileInfo(
        name=r[0],
        type=FileType(r[1]),
        size=r[2],
        mtime_ns=r[3],
        permissions=r[4],
        block_size=r[5],
        blocks=tuple(blob[i : i + HASH_LEN] for i in range(0, len(blob), HASH_LEN)),
        symlink_target=r[7],
        version=VersionVector(tuple((_unsigned(d), c) for d, c in _dec.decode(r[8]))),
        sequence=r[9],
        deleted=bool(r[10]),
        modified_by=_unsigned(r[11]),
        inode=r[12],
        dev=r[13],
        flags=r[14],
    )


def _params(folder: str, device: bytes, f: FileInfo) -> tuple:
    return (
        folder,
        device,
        f.name,
        int(f.type),
        f.size,
        f.mtime_ns,
        f.permissions,
        f.block_size,
        b"".join(f.blocks),
        f.symlink_target,
        encode_version(f.version),
        f.sequence,
        int(f.deleted),
        _signed(f.modified_by),
        f.inode,
        f.dev,
        f.flags,
    )


class IndexDB:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            private_file(self.path, "-wal", "-shm")  # 0600; SQLite gives -wal/-shm the same mode
        try:
            self.conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise IndexError_(f"index database {path}: {e}") from None
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if is_corruption(e):
                raise CorruptIndex(path, str(e)) from None
            raise IndexError_(f"index database {path}: {e}") from None

    def check(self) -> None:
        """Raise CorruptIndex unless the file is whole and its b-trees are sound.

        Cost: `PRAGMA quick_check` reads every page once (no index-vs-table cross check):
        0.11 s for an 80 MB index of 200,000 files with a warm page cache, so about 0.6 s for a
        million files -- a fraction of the start-up scan, which reads every local row anyway. The
        daemon runs it once per start, not per connection."""
        if str(self.path) != ":memory:":
            _check_header(self.path)
        try:
            rows = self.conn.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as e:
            if is_corruption(e):
                raise CorruptIndex(self.path, str(e)) from None
            raise IndexError_(f"index database {self.path}: {e}") from None
        if rows != [("ok",)]:
            detail = " ".join(str(rows[0][0]).split()) if rows else "no result"
            raise CorruptIndex(self.path, detail[:200])

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        known = migrations()
        newest = known[-1][0] if known else 0
        if current > newest:
            raise IndexError_(
                f"index database {self.path} has schema version {current}, newer than this syncer "
                f"understands ({newest}); upgrade syncer"
            )
        for version, sql in known:
            if version <= current:
                continue
            c.execute("BEGIN IMMEDIATE")
            try:
                # re-check under the write lock: another process may have migrated meanwhile
                now = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                if version > now:
                    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
                    for stmt in body.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    c.execute("INSERT INTO schema_version VALUES (?)", (version,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        return self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0

    # --- transactions ---------------------------------------------------------------
    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            result = fn(c, *args)
            c.execute("COMMIT")
            return result
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # --- folders --------------------------------------------------------------------
    def add_folder(self, folder: str, path: str) -> None:
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO folders VALUES (?, ?)", (folder, path)))

    def remove_folder(self, folder: str) -> None:
        """Forget everything about a folder that is no longer shared (its files stay on disk)."""

        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM folders WHERE id = ?", (folder,))
            for table in ("indexes", "files", "blocks", "need", "need_basis", "counts", "conflicts"):
                c.execute(f"DELETE FROM {table} WHERE folder = ?", (folder,))

        self._write(work)

    def folders(self) -> list[tuple[str, str]]:
        return list(self.conn.execute("SELECT id, path FROM folders ORDER BY id"))

    # --- index ids and sequences ------------------------------------------------------
    def index_id(self, folder: str, device: bytes = LOCAL) -> int:
        """Index ID of device's index of folder; created (random) on first use for LOCAL."""
        row = self.conn.execute("SELECT index_id FROM indexes WHERE folder=? AND device=?", (folder, device)).fetchone()
        if row:
            return row[0]
        if device != LOCAL:
            return 0
        new = secrets.randbits(63) or 1
        self._write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO indexes (folder, device, index_id, max_sequence) VALUES (?, ?, ?, 0)",
                (folder, device, new),
            )
        )
        return self.index_id(folder, device)

    def remote_index_id(self, folder: str, device: bytes) -> int:
        return self.index_id(folder, device) if device != LOCAL else 0

    def set_index_id(self, folder: str, device: bytes, index_id: int) -> None:
        self._write(
            lambda c: c.execute(
                "INSERT INTO indexes (folder, device, index_id, max_sequence) VALUES (?, ?, ?, 0) "
                "ON CONFLICT (folder, device) DO UPDATE SET index_id = excluded.index_id",
                (folder, device, index_id),
            )
        )

    def max_sequence(self, folder: str, device: bytes = LOCAL) -> int:
        row = self.conn.execute("SELECT max_sequence FROM indexes WHERE folder=? AND device=?", (folder, device)).fetchone()
        return row[0] if row else 0

    def reset_device(self, folder: str, device: bytes) -> None:
        """Forget a remote device's index of folder (its index ID changed)."""

        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM files WHERE folder=? AND device=?", (folder, device))
            c.execute("UPDATE indexes SET max_sequence = 0 WHERE folder=? AND device=?", (folder, device))

        self._write(work)

    # --- files ------------------------------------------------------------------------
    def update_local(self, folder: str, files: Iterable[FileInfo]) -> list[FileInfo]:
        files = list(files)
        if not files:
            return []
        self.index_id(folder, LOCAL)

        def work(c: sqlite3.Connection) -> list[FileInfo]:
            seq = c.execute("SELECT max_sequence FROM indexes WHERE folder=? AND device=?", (folder, LOCAL)).fetchone()[0]
            out = []
            for f in files:
                seq += 1
                out.append(msgspec.structs.replace(f, sequence=seq))
            before = self._live_totals(c, folder, LOCAL, [f.name for f in out])
            c.executemany(f"INSERT OR REPLACE INTO files (folder, device, {_COLUMNS}) VALUES ({','.join('?' * 17)})", [_params(folder, LOCAL, f) for f in out])
            c.executemany("DELETE FROM blocks WHERE folder=? AND name=?", [(folder, f.name) for f in out])
            c.executemany(
                "INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)",
                [(folder, h, f.name, i) for f in out if not f.deleted and f.type == FileType.FILE for i, h in enumerate(f.blocks)],
            )
            c.execute("UPDATE indexes SET max_sequence=? WHERE folder=? AND device=?", (seq, folder, LOCAL))
            live = {f.name: f for f in out if not f.deleted}
            _add_count(c, folder, "local", len(live) - before[0], sum(f.size for f in live.values()) - before[1])
            return out

        return self._write(work)

    @staticmethod
    def _live_totals(c: sqlite3.Connection, folder: str, device: bytes, names: list[str]) -> tuple[int, int]:
        """(entries, bytes) of the non-deleted rows among `names`."""
        n = size = 0
        for i in range(0, len(names), 500):
            part = names[i : i + 500]
            r = c.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE folder=? AND device=? AND deleted=0 AND name IN ({','.join('?' * len(part))})",
                (folder, device, *part),
            ).fetchone()
            n += r[0]
            size += r[1]
        return n, size

    def set_flags(self, folder: str, names: list[str], flags: int) -> None:
        """Set the local-only flags of these local rows (not announced: no new sequence)."""
        if names:
            self._write(lambda c: c.executemany(
                "UPDATE files SET flags=? WHERE folder=? AND device=? AND name=?", [(flags, folder, LOCAL, n) for n in names]
            ))

    def flagged(self, folder: str, flag: int, after: str, limit: int) -> list[str]:
        q = "SELECT name FROM files WHERE folder=? AND device=? AND name>? AND (flags & ?) != 0 ORDER BY name LIMIT ?"
        return [r[0] for r in self.conn.execute(q, (folder, LOCAL, after, flag, limit))]

    def count_flagged(self, folder: str, flag: int) -> int:
        q = "SELECT COUNT(*) FROM files WHERE folder=? AND device=? AND (flags & ?) != 0"
        return self.conn.execute(q, (folder, LOCAL, flag)).fetchone()[0]

    def reset_local_versions(self, folder: str, names: list[str]) -> None:
        """Give these local rows an empty version and no flags: any other version beats them
        (a receive-only folder's reverted local changes). Their sequence stays: not announced."""
        empty = encode_version(VersionVector())
        if names:
            self._write(lambda c: c.executemany(
                "UPDATE files SET version=?, flags=0 WHERE folder=? AND device=? AND name=?", [(empty, folder, LOCAL, n) for n in names]
            ))

    def forget_local(self, folder: str, names: list[str]) -> None:
        """Drop these local rows without a tombstone: nobody is told they were deleted (freed
        copies of a selective folder, a receive-only folder's reverted additions)."""
        if not names:
            return

        def work(c: sqlite3.Connection) -> None:
            n, size = self._live_totals(c, folder, LOCAL, names)
            c.executemany("DELETE FROM files WHERE folder=? AND device=? AND name=?", [(folder, LOCAL, x) for x in names])
            c.executemany("DELETE FROM blocks WHERE folder=? AND name=?", [(folder, x) for x in names])
            _add_count(c, folder, "local", -n, -size)

        self._write(work)

    def names_below(self, folder: str, device: bytes, prefix: str, after: str, limit: int) -> list[str]:
        """Names of one device's rows equal to or below `prefix`, in order, after `after`."""
        lo = max(after, prefix) if after else prefix
        q = "SELECT name FROM files WHERE folder=? AND device=? AND name>=? AND name<? AND name>? ORDER BY name LIMIT ?"
        rows = self.conn.execute(q, (folder, device, lo, prefix + "0", after, limit))
        return [r[0] for r in rows if r[0] == prefix or r[0].startswith(prefix + "/")]

    def update_remote(self, folder: str, device: bytes, files: Iterable[FileInfo]) -> None:
        files = list(files)
        if not files:
            return

        def work(c: sqlite3.Connection) -> None:
            c.executemany(f"INSERT OR REPLACE INTO files (folder, device, {_COLUMNS}) VALUES ({','.join('?' * 17)})", [_params(folder, device, f) for f in files])
            top = max(f.sequence for f in files)
            c.execute(
                "INSERT INTO indexes (folder, device, index_id, max_sequence) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (folder, device) DO UPDATE SET max_sequence = MAX(max_sequence, excluded.max_sequence)",
                (folder, device, top),
            )

        self._write(work)

    def get(self, folder: str, device: bytes, name: str) -> FileInfo | None:
        r = self.conn.execute(f"SELECT {_COLUMNS} FROM files WHERE folder=? AND device=? AND name=?", (folder, device, name)).fetchone()
        return _row(r) if r else None

    def all_files(self, folder: str, device: bytes = LOCAL) -> Iterator[FileInfo]:
        cur = self.conn.execute(f"SELECT {_COLUMNS} FROM files WHERE folder=? AND device=?", (folder, device))
        return (_row(r) for r in cur.fetchall())

    def files_since(self, folder: str, device: bytes, sequence: int) -> Iterator[FileInfo]:
        cur = self.conn.execute(
            f"SELECT {_COLUMNS} FROM files WHERE folder=? AND device=? AND sequence>? ORDER BY sequence",
            (folder, device, sequence),
        )
        return (_row(r) for r in cur.fetchall())

    def scan_state(self, folder: str, scope: Iterable[str] | None = None) -> dict[str, tuple[int, int, int, int, int, int, str]]:
        """Cheap view of the local index for change detection, without block lists:
        name -> (type, size, mtime_ns, permissions, inode, deleted, symlink_target); with
        `scope`, only those names and what lies below them (a watcher batch in a big folder
        must not load the whole folder)."""
        cols = "SELECT name, type, size, mtime_ns, permissions, inode, deleted, symlink_target FROM files WHERE folder=? AND device=?"
        if scope is None:
            return {r[0]: r[1:] for r in self.conn.execute(cols, (folder, LOCAL))}
        out: dict[str, tuple[int, int, int, int, int, int, str]] = {}
        q = cols + " AND name>=? AND name<?"
        for p in scope:
            # one key range holds p and everything below it ("0" sorts right after "/"), plus
            # siblings like "p.txt" that are filtered out here
            below = p + "/"
            for r in self.conn.execute(q, (folder, LOCAL, p, p + "0")):
                if r[0] == p or r[0].startswith(below):
                    out[r[0]] = r[1:]
        return out

    def scan_rows(self, folder: str, lo: str, hi: str | None, step: int = 4096) -> Iterator[tuple[str, int, int, int, int, int, int, str]]:
        """The slim local rows of the scanner (name, type, size, mtime_ns, permissions, inode,
        deleted, symlink_target) with lo <= name < hi, in name order, a page at a time: a
        scan of a million files never holds them all (and no read transaction stays open while
        it writes)."""
        cols = "SELECT name, type, size, mtime_ns, permissions, inode, deleted, symlink_target FROM files WHERE folder=? AND device=?"
        after, op = lo, ">="
        while True:
            if hi is None:
                rows = self.conn.execute(cols + f" AND name{op}? ORDER BY name LIMIT ?", (folder, LOCAL, after, step)).fetchall()
            else:
                rows = self.conn.execute(cols + f" AND name{op}? AND name<? ORDER BY name LIMIT ?", (folder, LOCAL, after, hi, step)).fetchall()
            yield from rows
            if len(rows) < step:
                return
            after, op = rows[-1][0], ">"

    def get_many(self, folder: str, device: bytes, names: Iterable[str]) -> dict[str, FileInfo]:
        out: dict[str, FileInfo] = {}
        names = list(names)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            cur = self.conn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE folder=? AND device=? AND name IN ({','.join('?' * len(chunk))})",
                (folder, device, *chunk),
            )
            for r in cur.fetchall():
                out[r[0]] = _row(r)
        return out

    def has_rows(self, folder: str, device: bytes) -> bool:
        """Does the index hold any row (a deletion too) of `device` in `folder`?"""
        return self.conn.execute("SELECT 1 FROM files WHERE folder=? AND device=? LIMIT 1", (folder, device)).fetchone() is not None

    def count(self, folder: str, device: bytes = LOCAL) -> tuple[int, int]:
        r = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE folder=? AND device=? AND deleted=0",
            (folder, device),
        ).fetchone()
        return r[0], r[1]

    def known_hashes(self, folder: str, hashes: Iterable[bytes]) -> set[bytes]:
        """Which of these block hashes some local file has (one query per 500, not per block)."""
        todo = list(set(hashes))
        found: set[bytes] = set()
        for i in range(0, len(todo), 500):
            part = todo[i : i + 500]
            q = f"SELECT DISTINCT hash FROM blocks WHERE folder=? AND hash IN ({','.join('?' * len(part))})"
            found.update(r[0] for r in self.conn.execute(q, (folder, *part)))
        return found

    def find_block(self, folder: str, hash: bytes) -> tuple[str, int, int] | None:
        """(name, offset, size) of a local, non-deleted file holding a block with this hash."""
        r = self.conn.execute(
            "SELECT b.name, b.idx, f.block_size, f.size FROM blocks b CROSS JOIN files f "  # CROSS: blocks by hash first (the planner would walk all files)
            "ON f.folder=b.folder AND f.device=? AND f.name=b.name "
            "WHERE b.folder=? AND b.hash=? AND f.deleted=0 LIMIT 1",
            (LOCAL, folder, hash),
        ).fetchone()
        if r is None:
            return None
        name, idx, bs, size = r
        off = idx * bs
        return name, off, min(bs, size - off)

    # --- need (what this device lacks, in pulling order) ---------------------------------
    def rows_for(self, folder: str, devices: list[bytes], names: list[str]) -> dict[str, dict[bytes, FileInfo]]:
        """name -> device -> row, for these devices and names (a point lookup per pair)."""
        out: dict[str, dict[bytes, FileInfo]] = {}
        dq = ",".join("?" * len(devices))
        for i in range(0, len(names), 400):
            part = names[i : i + 400]
            cur = self.conn.execute(
                f"SELECT device, {_COLUMNS} FROM files WHERE folder=? AND device IN ({dq}) AND name IN ({','.join('?' * len(part))})",
                (folder, *devices, *part),
            )
            for r in cur:
                out.setdefault(r[1], {})[bytes(r[0])] = _row(r[1:])
        return out

    def need_rows(self, folder: str, names: list[str]) -> dict[str, NeedRow]:
        out: dict[str, NeedRow] = {}
        for i in range(0, len(names), 500):
            part = names[i : i + 500]
            cur = self.conn.execute(
                f"SELECT {_NEED_COLUMNS} FROM need WHERE folder=? AND name IN ({','.join('?' * len(part))})",
                (folder, *part),
            )
            for r in cur:
                out[r[0]] = _need_row(r)
        return out

    def write_need(self, folder: str, upserts: list[NeedRow], deletes: list[str]) -> None:
        """Apply a recomputation's result, keeping the need totals right."""
        if not upserts and not deletes:
            return

        def work(c: sqlite3.Connection) -> None:
            names = [n.name for n in upserts] + deletes
            old: dict[str, tuple[int, int]] = {}  # name -> (size, skip)
            for i in range(0, len(names), 500):
                part = names[i : i + 500]
                for r in c.execute(f"SELECT name, size, skip FROM need WHERE folder=? AND name IN ({','.join('?' * len(part))})", (folder, *part)):
                    old[r[0]] = (r[1], r[2])
            c.executemany(
                f"INSERT OR REPLACE INTO need (folder, {_NEED_COLUMNS}) VALUES (?{',?' * 11})",
                [(folder, n.name, n.kind, n.size, int(n.conflict), n.source, b"".join(n.holders), n.version, n.error, n.failures, n.retry_at, n.skip) for n in upserts],
            )
            c.executemany("DELETE FROM need WHERE folder=? AND name=?", [(folder, name) for name in deletes])
            # totals: 'need' counts what is to be fetched, 'skipped' what deliberately is not
            delta = {"need": [0, 0], "skipped": [0, 0]}
            for n in upserts:
                if n.name in old:
                    size, skip = old[n.name]
                    d = delta["skipped" if skip else "need"]
                    d[0] -= 1
                    d[1] -= size
                d = delta["skipped" if n.skip else "need"]
                d[0] += 1
                d[1] += n.size
            for name in deletes:
                if name in old:
                    size, skip = old[name]
                    d = delta["skipped" if skip else "need"]
                    d[0] -= 1
                    d[1] -= size
            for what, (dn, dbytes) in delta.items():
                _add_count(c, folder, what, dn, dbytes)

        self._write(work)

    def record_failures(self, folder: str, failures: list[tuple[str, str, float]]) -> None:
        """(name, error, retry_at): the attempt failed; wait until retry_at (wall clock)."""
        self._write(lambda c: c.executemany(
            "UPDATE need SET error=?, failures=failures+1, retry_at=? WHERE folder=? AND name=?",
            [(err[:500], at, folder, name) for name, err, at in failures],
        ))

    def clear_need(self, folder: str) -> None:
        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM need WHERE folder=?", (folder,))
            c.execute("DELETE FROM counts WHERE folder=? AND what IN ('need', 'skipped')", (folder,))
            c.execute("DELETE FROM need_basis WHERE folder=?", (folder,))

        self._write(work)

    def invalidate_need(self, folder: str) -> None:
        """Local rows changed without the need being kept up to date (a scan by the CLI while
        no daemon ran): the daemon recomputes it when it starts the folder."""
        self._write(lambda c: c.execute("DELETE FROM need_basis WHERE folder=?", (folder,)))

    def need_basis(self, folder: str) -> bytes | None:
        r = self.conn.execute("SELECT devices FROM need_basis WHERE folder=?", (folder,)).fetchone()
        return bytes(r[0]) if r else None

    def set_need_basis(self, folder: str, devices: bytes) -> None:
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO need_basis VALUES (?, ?)", (folder, devices)))

    def need_page(self, folder: str, after: tuple[int, int, str] | None, inclusive: bool, limit: int, now: float) -> list[tuple[NeedRow, FileInfo]]:
        """Need rows in pulling order from key `after` (None: the start; `inclusive`: the row
        with that key too), skipping those waiting for a retry, each with the global version's
        row (from its source device)."""
        q = (
            f"SELECT {', '.join('n.' + c for c in _NEED_COLUMNS.split(', '))}, {', '.join('f.' + c for c in _COLUMNS.split(', '))} "
            "FROM need n JOIN files f ON f.folder=n.folder AND f.device=n.source AND f.name=n.name "
            "WHERE n.folder=? AND n.skip=0 AND n.retry_at<=? "
        )
        if after is None:
            cur = self.conn.execute(q + "ORDER BY n.kind, n.size, n.name LIMIT ?", (folder, now, limit))
        else:
            op = ">=" if inclusive else ">"
            cur = self.conn.execute(q + f"AND (n.kind, n.size, n.name) {op} (?, ?, ?) ORDER BY n.kind, n.size, n.name LIMIT ?", (folder, now, *after, limit))
        return [(_need_row(r[:11]), _row(r[11:])) for r in cur]

    def next_retry(self, folder: str, now: float) -> float | None:
        r = self.conn.execute("SELECT MIN(retry_at) FROM need WHERE folder=? AND retry_at>?", (folder, now)).fetchone()
        return r[0] if r and r[0] is not None else None

    def need_list(self, folder: str, prefix: str, offset: int, limit: int) -> list[NeedRow]:
        """Need rows (skipped ones too) in name order, all or those at/below `prefix`."""
        q = f"SELECT {_NEED_COLUMNS} FROM need WHERE folder=?"
        args: list[object] = [folder]
        if prefix:
            q += " AND (name=? OR (name>=? AND name<?))"
            args += [prefix, prefix + "/", prefix + "0"]  # "0" sorts right after "/"
        q += " ORDER BY name LIMIT ? OFFSET ?"
        return [_need_row(r) for r in self.conn.execute(q, (*args, limit, offset))]

    # --- the conflict inbox ---------------------------------------------------------------
    def record_conflicts(self, folder: str, rows: list[tuple[str, str, int, int, bytes, bytes, float]]) -> None:
        """(copy, original, loser short id, winner short id, loser version, winner version, when)."""
        if rows:
            self._write(lambda c: c.executemany(
                "INSERT OR REPLACE INTO conflicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(folder, cp, name, _signed(lo), _signed(wi), lv, wv, t) for cp, name, lo, wi, lv, wv, t in rows],
            ))

    def conflicts(self, folder: str, limit: int) -> list[dict[str, object]]:
        """Conflict copies present in the local index: those made here (with the devices and
        versions involved) and those that arrived from other devices (named, not recorded)."""
        out: dict[str, dict[str, object]] = {}
        q = ("SELECT c.copy, c.name, c.loser, c.winner, c.created FROM conflicts c JOIN files f ON f.folder=c.folder "
             "AND f.device=? AND f.name=c.copy AND f.deleted=0 WHERE c.folder=? ORDER BY c.copy LIMIT ?")
        for cp, name, lo, wi, t in self.conn.execute(q, (LOCAL, folder, limit)):
            out[cp] = {"copy": cp, "name": name, "loser": _unsigned(lo), "winner": _unsigned(wi), "created": t}
        q = ("SELECT name, modified_by, mtime_ns FROM files INDEXED BY files_conflicts WHERE folder=? AND device=? AND deleted=0 AND type=0 "
             "AND instr(name, '.sync-conflict-') > 0 ORDER BY name LIMIT ?")
        for name, by, mtime in self.conn.execute(q, (folder, LOCAL, limit)):
            if name not in out:
                out[name] = {"copy": name, "name": None, "loser": _unsigned(by), "winner": None, "created": mtime / 1e9}
        return sorted(out.values(), key=lambda r: str(r["copy"]))[:limit]

    def drop_conflicts(self, folder: str, copies: list[str]) -> None:
        if copies:
            self._write(lambda c: c.executemany("DELETE FROM conflicts WHERE folder=? AND copy=?", [(folder, x) for x in copies]))

    def count_conflicts(self, folder: str) -> int:
        q = "SELECT COUNT(*) FROM files INDEXED BY files_conflicts WHERE folder=? AND device=? AND deleted=0 AND type=0 AND instr(name, '.sync-conflict-') > 0"
        return self.conn.execute(q, (folder, LOCAL)).fetchone()[0]

    def need_errors(self, folder: str, limit: int) -> list[tuple[str, str]]:
        q = "SELECT name, error FROM need INDEXED BY need_errors WHERE folder=? AND error!='' AND skip=0 ORDER BY name LIMIT ?"
        return [(r[0], r[1]) for r in self.conn.execute(q, (folder, limit))]

    def count_need_errors(self, folder: str) -> int:
        q = "SELECT COUNT(*) FROM need INDEXED BY need_errors WHERE folder=? AND error!='' AND skip=0"
        return self.conn.execute(q, (folder,)).fetchone()[0]

    def totals(self, folder: str, what: str) -> tuple[int, int]:
        """(entries, bytes) of the folder's local index ('local') or need ('need')."""
        r = self.conn.execute("SELECT files, bytes FROM counts WHERE folder=? AND what=?", (folder, what)).fetchone()
        return (r[0], r[1]) if r else (0, 0)

    def names(self, folder: str, device: bytes, after: str, limit: int) -> list[str]:
        """Names of one device's rows in order (to walk a folder in bounded steps)."""
        return [r[0] for r in self.conn.execute("SELECT name FROM files WHERE folder=? AND device=? AND name>? ORDER BY name LIMIT ?", (folder, device, after, limit))]

    def files_page(self, folder: str, device: bytes, after_sequence: int, limit: int) -> list[FileInfo]:
        """Rows with a sequence above `after_sequence`, in sequence order, at most `limit`."""
        cur = self.conn.execute(
            f"SELECT {_COLUMNS} FROM files WHERE folder=? AND device=? AND sequence>? ORDER BY sequence LIMIT ?",
            (folder, device, after_sequence, limit),
        )
        return [_row(r) for r in cur]


def _add_count(c: sqlite3.Connection, folder: str, what: str, files: int, nbytes: int) -> None:
    if files or nbytes:
        c.execute(
            "INSERT INTO counts (folder, what, files, bytes) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (folder, what) DO UPDATE SET files = files + excluded.files, bytes = bytes + excluded.bytes",
            (folder, what, files, nbytes),
        )


_NEED_COLUMNS = "name, kind, size, conflict, source, holders, version, error, failures, retry_at, skip"


def _need_row(r: tuple) -> NeedRow:
    h = bytes(r[5])
    return NeedRow(r[0], r[1], r[2], bool(r[3]), bytes(r[4]), tuple(h[i : i + 32] for i in range(0, len(h), 32)), bytes(r[6]), r[7], r[8], r[9], r[10])


def _check_header(path: Path) -> None:
    """The 100-byte header: SQLite's magic, and a file at least as long as the page count it
    records (a truncated copy opens fine and fails only when a missing page is read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return
    if not head:
        return  # empty: SQLite makes a new database of it
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        raise CorruptIndex(path, "file is not a database")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # the in-header page count is valid only if written by the same change as the counter
    valid = head[24:28] == head[92:96] and pages > 0
    if valid and size < pages * page_size and not _has_wal(path):
        raise CorruptIndex(path, f"truncated: {size} bytes, its header says {pages} pages of {page_size}")


def _has_wal(path: Path) -> bool:
    # a crash during a checkpoint can leave the new header written before the pages after it;
    # the write-ahead log still holds them and SQLite replays it on open
    try:
        return os.path.getsize(f"{path}-wal") > 0
    except OSError:
        return False


def move_aside(path: Path, now: float) -> Path:
    """Rename a damaged database, with its -wal and -shm files, to
    `index.db.corrupt-YYYYMMDD-HHMMSS` (kept for inspection, never deleted); returns the new
    name of the main file."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    base = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}")
    n = 1
    while base.exists():
        base = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}-{n}")
        n += 1
    # the log first: a crash in between must not leave the old log next to a new database
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, f"{base}{suffix}")
    os.replace(path, base)
    return base


def recover_if_damaged(path: Path, now: float) -> tuple[Path, str] | None:
    """Check the database at `path` (creating it if missing). If it is damaged, move it aside
    and create a fresh one; returns (where the damaged file went, what was wrong), else None.
    Only for the daemon, before anything else opens the file."""
    try:
        db = IndexDB(path)
        try:
            db.check()
        finally:
            db.close()
        return None
    except CorruptIndex as e:
        reason = e.reason
    moved = move_aside(path, now)
    IndexDB(path).close()
    return moved, reason

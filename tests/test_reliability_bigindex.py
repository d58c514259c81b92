"""Reliability: a folder of 1,000 files of 256 MiB is indexed to a peer and syncs.

Each file has 1,024 blocks of 256 KiB, so a full index carries ~34 MB of block hashes: more than
one 32 MiB index frame. Index messages used to be cut at 1,000 files whatever their size, so
encoding failed and the connection died at every ClusterConfig.

How the test stays fast and honest: the files are sparse (no disk used), and hashing 250 GiB of
zeros would take minutes, so each side's index.db is filled beforehand with exactly the rows its
scanner would have written for those files (real size, mtime, inode and mode; the SHA-256 of a
256 KiB zero block 1,024 times), through the product's own IndexDB; the daemon's start-up scan
then finds them unchanged, like any restart. Everything after that is the real thing: real
daemons, TLS over TCP, the real index exchange in both directions and real transfers.

  sender a:   997 sparse files (pre-indexed) + 3 files of 256 MiB random data (hashed by a's own
              scan at start; highest sequence numbers, so they travel in the last index batch)
  receiver b: the same 997 sparse files, pre-indexed with a's versions (synced earlier), and a
              small file of its own (scanned at start: last in b's index)

a's whole index must reach b (b then needs exactly the 3 files: 768 MiB, downloaded and verified
block by block) and b's whole index must reach a (a then gets b's small file)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from syncer.deviceid import DeviceId
from syncer.index.db import LOCAL, IndexDB
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector, short_id
from syncer.scan.blocksize import block_size_for
from syncer.wire.frames import MAX_INDEX_FRAME
from tests.daemons import Node, cluster, pair_all, wait_until
from tests.syncfix import folder_status, share

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
FID = "media-1234"
FILES = 1000
REAL = 3  # the last ones: real random data, really transferred
SIZE = 256 << 20
BS = block_size_for(SIZE)
ZERO_BLOCK = hashlib.sha256(bytes(BS)).digest()
MTIME_NS = 1_700_000_000_123_456_789


def _name(i: int) -> str:
    return f"media/clip{i:04d}.mov"


def _sparse(root: Path, n: int) -> None:
    (root / "media").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = root / _name(i)
        with open(p, "wb") as f:
            f.truncate(SIZE)
        os.utime(p, ns=(MTIME_NS, MTIME_NS))


def _preindex(node: Node, root: Path, n: int, author: int) -> None:
    """Rows as the scanner of the file's author would have stored them (version {author: 1}),
    with this disk's inode, device and mode, so the daemon's scan finds them unchanged."""
    rows = []
    for i in range(n):
        st = os.stat(root / _name(i))
        rows.append(FileInfo(
            name=_name(i), type=FileType.FILE, size=st.st_size, mtime_ns=st.st_mtime_ns,
            permissions=st.st_mode & 0o7777, block_size=BS, blocks=(ZERO_BLOCK,) * (SIZE // BS),
            symlink_target="", version=VersionVector(((author, 1),)), sequence=0, deleted=False,
            modified_by=author, inode=st.st_ino, dev=st.st_dev,
        ))
    db = IndexDB(node.home / "index.db")
    try:
        db.update_local(FID, rows)
        assert db.count(FID, LOCAL) == (n, n * SIZE)
    finally:
        db.close()


def _idle(n: Node) -> bool:
    folders = [f for f in n.status()["folders"] if f["id"] == FID]
    return bool(folders) and folders[0]["state"] == "idle"


def test_index_of_1000_files_of_256_mib_reaches_the_peer_and_syncs(tmp_path):
    # the premise: one index of these files does not fit in one frame
    assert FILES * (SIZE // BS) * 34 > MAX_INDEX_FRAME
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        share(a, da, FID)  # while empty: the folder is known, nothing hashed yet
        share(b, db_, FID)
        author = short_id(DeviceId.parse(a.device_id))
        _sparse(da, FILES - REAL)
        _sparse(db_, FILES - REAL)
        # ~1M block rows per side (what the scanner would store): both at once, SQLite works
        # outside the GIL
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda nd: _preindex(nd[0], nd[1], FILES - REAL, author), ((a, da), (b, db_))))
        real = {}
        for i in range(FILES - REAL, FILES):
            data = os.urandom(SIZE)
            (da / _name(i)).write_bytes(data)
            real[_name(i)] = hashlib.sha256(data).hexdigest()
            del data
        (db_ / "from-b.txt").write_text("b's own file, last in b's index")
        a.start()
        b.start()
        for n, files in ((a, FILES + 1), (b, FILES - REAL + 2)):  # + the media directory
            wait_until(lambda n=n: _idle(n), 60, f"{n.name}'s start-up scan")
            assert folder_status(n, FID)["local_files"] == files

        pair_all([a, b])
        # a's whole index at b: exactly the 3 real files are needed (the others are b's already)
        seen: list[dict] = [{}]

        def all_of_a_known() -> bool:
            seen[0] = s = folder_status(b, FID)
            arrived = sum((db_ / n).exists() for n in real)
            return s["need_files"] + arrived == REAL and s["local_files"] >= FILES - REAL + 2 + arrived

        try:
            wait_until(all_of_a_known, 45, "a's index of 1,000 x 256 MiB at b")
        except AssertionError as e:
            raise AssertionError(f"{e}; b's status: {seen[0]}") from None
        # b's whole index at a: b's own file, the last entry, arrives
        wait_until(lambda: (da / "from-b.txt").exists(), 45, "b's index of 997 x 256 MiB + 1 at a")
        assert (da / "from-b.txt").read_text() == "b's own file, last in b's index"
        # and the 3 real files sync: 768 MiB fetched and verified block by block
        wait_until(lambda: (s := folder_status(b, FID))["need_files"] == 0 and s["state"] == "idle", 120,
                   "b to fetch the 3 real files")
        for name, digest in real.items():
            h = hashlib.sha256()
            with open(db_ / name, "rb") as f:
                while chunk := f.read(16 << 20):
                    h.update(chunk)
            assert h.hexdigest() == digest, name
        st_a, st_b = folder_status(a, FID), folder_status(b, FID)
        assert st_a["need_files"] == 0 and st_a["local_files"] == FILES + 2
        assert st_b["local_files"] == FILES + 2 and st_b["local_bytes"] == FILES * SIZE + len("b's own file, last in b's index")
        assert a.connected_to(b) and b.connected_to(a)

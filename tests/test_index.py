import sqlite3

import msgspec
import pytest

from syncer.deviceid import DeviceId
from syncer.errors import SyncerError
from syncer.index.db import LOCAL, IndexDB, migrations
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import Ordering, VersionVector, short_id

REMOTE = b"\x07" * 32


def fi(name, blocks=(b"a" * 32,), version=((1, 1),), deleted=False, size=5) -> FileInfo:
    return FileInfo(name, FileType.FILE, size, 1, 0o644, 131072, tuple(blocks), "", VersionVector.from_list(version), 0, deleted, 1)


def test_version_vector_ordering_and_update():
    a = VersionVector.from_list([(1, 1)])
    b = a.update(2)
    assert b.compare(a) is Ordering.GREATER and a.compare(b) is Ordering.LESSER
    assert a.update(1).compare(b) is Ordering.CONCURRENT
    assert a.compare(VersionVector.from_list([[1, 1]])) is Ordering.EQUAL
    assert a.merge(b).counter(2) == 1 and b.counter(9) == 0
    assert VersionVector.from_list(b.to_list()) == b


def test_short_id_is_first_8_bytes():
    d = DeviceId(bytes(range(32)))
    assert short_id(d) == int.from_bytes(bytes(range(8)), "big")


def test_local_updates_get_increasing_sequences_and_files_since(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    out = db.update_local("f", [fi("a"), fi("b")])
    assert [f.sequence for f in out] == [1, 2]
    out = db.update_local("f", [fi("a", version=((1, 2),))])
    assert out[0].sequence == 3 and db.max_sequence("f") == 3
    assert [f.name for f in db.files_since("f", LOCAL, 2)] == ["a"]
    assert db.get("f", LOCAL, "a").version.counter(1) == 2
    assert db.count("f") == (2, 10)


def test_remote_index_kept_apart_and_reset(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    db.update_local("f", [fi("a")])
    remote = [msgspec.structs.replace(fi("r"), sequence=9)]
    db.update_remote("f", REMOTE, remote)
    assert [f.name for f in db.all_files("f", REMOTE)] == ["r"]
    assert db.max_sequence("f", REMOTE) == 9
    assert db.index_id("f", REMOTE) == 0
    db.set_index_id("f", REMOTE, 77)
    assert db.remote_index_id("f", REMOTE) == 77
    db.reset_device("f", REMOTE)
    assert list(db.all_files("f", REMOTE)) == [] and db.max_sequence("f", REMOTE) == 0
    assert [f.name for f in db.all_files("f")] == ["a"]


def test_local_index_id_is_stable(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    first = db.index_id("f")
    assert first and IndexDB(tmp_path / "i.db").index_id("f") == first


def test_find_block_local_only_and_not_deleted(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    h = b"h" * 32
    db.update_local("f", [fi("x", blocks=(b"z" * 32, h), size=131072 + 10)])
    assert db.find_block("f", h) == ("x", 131072, 10)
    db.update_remote("f", REMOTE, [fi("y", blocks=(b"q" * 32,))])
    assert db.find_block("f", b"q" * 32) is None
    assert db.known_hashes("f", [h, b"q" * 32, h]) == {h}
    db.update_local("f", [fi("x", blocks=(), deleted=True, size=0)])
    assert db.find_block("f", h) is None


def test_unsigned_64bit_ids_round_trip(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    big = 2**64 - 3
    f = msgspec.structs.replace(fi("a", version=((big, 5),)), modified_by=big)
    db.update_local("f", [f])
    got = db.get("f", LOCAL, "a")
    assert got.modified_by == big and got.version.counter(big) == 5


def test_migrations_numbered_and_recorded(tmp_path):
    known = migrations()
    assert [v for v, _ in known] == list(range(1, len(known) + 1))
    db = IndexDB(tmp_path / "i.db")
    assert db.schema_version() == known[-1][0]
    db.close()
    IndexDB(tmp_path / "i.db").close()  # re-opening applies nothing twice
    rows = sqlite3.connect(tmp_path / "i.db").execute("SELECT version FROM schema_version").fetchall()
    assert [r[0] for r in rows] == [v for v, _ in known]


def test_newer_schema_is_refused(tmp_path):
    IndexDB(tmp_path / "i.db").close()
    c = sqlite3.connect(tmp_path / "i.db")
    c.execute("INSERT INTO schema_version VALUES (999)")
    c.commit()
    c.close()
    with pytest.raises(SyncerError, match="newer"):
        IndexDB(tmp_path / "i.db")


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "i.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SyncerError, match="index database"):
        IndexDB(tmp_path / "i.db")


def test_scan_state_limited_to_scope(tmp_path):
    db = IndexDB(tmp_path / "i.db")
    names = ["a", "a/b", "a/b/c", "a.txt", "a-b", "a0", "ab", "b", "b/x"]
    db.update_local("f", [fi(n) for n in names])
    assert set(db.scan_state("f")) == set(names)
    assert set(db.scan_state("f", ["a"])) == {"a", "a/b", "a/b/c"}
    assert set(db.scan_state("f", ["a/b/c", "b"])) == {"a/b/c", "b", "b/x"}
    assert db.scan_state("f", ["zzz"]) == {}


def test_need_basis_kept_when_only_devices_without_rows_come_or_go(tmp_path, monkeypatch):
    """Pairing a device that has sent nothing yet changes no entry's need, so the full
    recomputation (about 20 s at 1,000,000 files) is skipped; a device with rows still
    triggers it, and the need is then what a recomputation from scratch gives."""
    from syncer.model.need import NeedIndex, Policy

    db = IndexDB(tmp_path / "i.db")
    a, b, c = DeviceId(b"\x01" * 32), DeviceId(b"\x02" * 32), DeviceId(b"\x03" * 32)
    db.update_local("f", [fi("mine")])
    db.update_remote("f", a.raw, [msgspec.structs.replace(fi("theirs", version=((9, 1),)), sequence=1)])
    need = NeedIndex("f")
    full = []
    monkeypatch.setattr(need, "recompute_all", lambda *args, _orig=need.recompute_all: (full.append(1), _orig(*args))[1])
    assert need.ensure_basis(db, [a], Policy()) and len(full) == 1
    table = db.need_list("f", "", 0, 100)
    assert [r.name for r in table] == ["theirs"]
    assert not need.ensure_basis(db, [a, b], Policy()) and len(full) == 1  # b: no rows
    assert not need.ensure_basis(db, [a, b], Policy())  # the new basis was stored
    assert not need.ensure_basis(db, [a], Policy()) and len(full) == 1  # b unshared before it sent anything
    assert db.need_list("f", "", 0, 100) == table
    db.update_remote("f", c.raw, [msgspec.structs.replace(fi("more", version=((8, 1),)), sequence=1)])
    assert need.ensure_basis(db, [a, c], Policy()) and len(full) == 2  # c has rows
    assert sorted(r.name for r in db.need_list("f", "", 0, 100)) == ["more", "theirs"]
    assert need.ensure_basis(db, [c], Policy()) and len(full) == 3  # a's rows no longer count
    assert [r.name for r in db.need_list("f", "", 0, 100)] == ["more"]
    assert need.ensure_basis(db, [c], Policy(type="send-only")) and len(full) == 4  # another policy

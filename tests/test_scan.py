import os
import socket
import time
import unicodedata

import pytest

from syncer.errors import FolderError
from syncer.fs import layout
from syncer.ignore import Ignore
from syncer.index.db import LOCAL, IndexDB
from syncer.index.fileinfo import FileType
from syncer.scan import Scanner, block_size_for
from syncer.scan import scanner as scanner_mod


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "f"
    (root / ".syncer").mkdir(parents=True)
    return root


def make(root, tmp_path, **kw):
    return Scanner(root, "fid", IndexDB(tmp_path / "i.db"), 7, **kw)


@pytest.mark.parametrize(
    "size,bs",
    [(0, 128 << 10), (2000 * (128 << 10), 128 << 10), (2000 * (128 << 10) + 1, 256 << 10),
     (256 << 20, 256 << 10), (2000 * (16 << 20) + 1, 16 << 20), (10**15, 16 << 20)],
)
def test_block_size_rule(size, bs):
    assert block_size_for(size) == bs


def test_scan_records_files_dirs_symlinks(folder, tmp_path):
    (folder / "d").mkdir()
    data = os.urandom(300_000)
    (folder / "d" / "x.bin").write_bytes(data)
    os.symlink("/etc/passwd", folder / "link")
    s = make(folder, tmp_path)
    r = s.scan()
    by = {f.name: f for f in r.changed}
    assert set(by) == {"d", "d/x.bin", "link"}
    assert by["d"].type == FileType.DIRECTORY
    assert by["link"].type == FileType.SYMLINK and by["link"].symlink_target == "/etc/passwd"
    assert by["link"].size == 0 and by["link"].blocks == ()  # not followed
    x = by["d/x.bin"]
    import hashlib

    assert x.blocks == (hashlib.sha256(data[:131072]).digest(), hashlib.sha256(data[131072:262144]).digest(), hashlib.sha256(data[262144:]).digest())
    # counters start at the wall clock in seconds (a rebuilt index still makes newer versions)
    assert abs(x.version.counter(7) - time.time()) < 60 and x.modified_by == 7 and x.sequence > 0


def test_unchanged_files_not_rehashed(folder, tmp_path, monkeypatch):
    (folder / "a").write_bytes(b"a" * 1000)
    s = make(folder, tmp_path)
    before = s.scan().changed[0].version.counter(7)
    calls = []
    real = scanner_mod.hash_small_batch
    monkeypatch.setattr(scanner_mod, "hash_small_batch", lambda items: calls.append(items) or real(items))
    r = s.scan()
    assert r.changed == [] and r.deleted == [] and calls == []
    (folder / "a").write_bytes(b"b" * 1001)
    r = s.scan()
    assert [f.name for f in r.changed] == ["a"] and len(calls) == 1
    assert r.changed[0].version.counter(7) > before


def test_permission_change_without_rehash(folder, tmp_path):
    (folder / "a").write_bytes(b"a")
    s = make(folder, tmp_path)
    first = s.scan().changed[0]
    os.chmod(folder / "a", 0o600)
    r = s.scan()
    assert r.changed[0].permissions == 0o600 and r.changed[0].blocks == first.blocks


def test_deleted_files_become_tombstones(folder, tmp_path):
    (folder / "a").write_text("a")
    (folder / "d").mkdir()
    (folder / "d" / "b").write_text("b")
    s = make(folder, tmp_path)
    first = {f.name: f.version.counter(7) for f in s.scan().changed}
    (folder / "a").unlink()
    (folder / "d" / "b").unlink()
    (folder / "d").rmdir()
    r = s.scan()
    assert {f.name for f in r.deleted} == {"a", "d", "d/b"}
    assert all(f.deleted and f.blocks == () and f.version.counter(7) > first[f.name] for f in r.deleted)
    assert s.scan().deleted == []


def test_partial_scan_of_paths(folder, tmp_path):
    (folder / "a").write_text("a")
    (folder / "b").write_text("b")
    s = make(folder, tmp_path)
    s.scan()
    (folder / "a").write_text("aa")
    (folder / "b").write_text("bb")
    (folder / "c").write_text("c")
    r = s.scan(["a", "c"])
    assert {f.name for f in r.changed} == {"a", "c"}
    (folder / "c").unlink()
    assert [f.name for f in s.scan(["c"]).deleted] == ["c"]


def test_ignored_and_internal_files_skipped(folder, tmp_path):
    (folder / ".syncerignore").write_text("*.log\n")
    for name in ("x.log", ".DS_Store", ".syncer.f.tmp", "keep"):
        (folder / name).write_text("z")
    (folder / "sub").mkdir()
    (folder / "sub" / ".syncerignore").write_text("only the root one is special")
    s = make(folder, tmp_path, ignore=Ignore.load(folder))
    names = {f.name for f in s.scan().changed}
    assert names == {"keep", "sub", "sub/.syncerignore"}  # the root .syncerignore stays local
    assert s.scan([".syncerignore"]).changed == []


def test_download_temp_files_are_reported_not_indexed(folder, tmp_path):
    (folder / "sub").mkdir()
    (folder / "sub" / ".syncer.photo.jpg.tmp").write_bytes(b"partial")
    os.utime(folder / "sub" / ".syncer.photo.jpg.tmp", (1000.0, 1000.0))
    (folder / ".syncer.top.tmp").write_text("x")
    r = make(folder, tmp_path).scan()
    assert {f.name for f in r.changed} == {"sub"}
    assert sorted(r.temp_files)[1] == ("sub/.syncer.photo.jpg.tmp", 1000.0)
    assert sorted(n for n, _ in r.temp_files) == [".syncer.top.tmp", "sub/.syncer.photo.jpg.tmp"]
    assert [layout.final_name(n) for n, _ in sorted(r.temp_files)] == ["top", "sub/photo.jpg"]
    assert layout.final_name(layout.temp_name("a/b/c.txt")) == "a/b/c.txt"


def test_nfc_names(folder, tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    (folder / nfd).write_text("x")
    names = [f.name for f in make(folder, tmp_path).scan().changed]
    assert names == [unicodedata.normalize("NFC", "café")]


def test_unreadable_entries_reported_scan_continues(folder, tmp_path):
    os.mkfifo(folder / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    (folder / "ok").write_text("fine")
    try:
        r = make(folder, tmp_path).scan()
    finally:
        sock.close()
    assert [f.name for f in r.changed] == ["ok"]
    assert {n for n, _ in r.errors} == {"fifo", "sock"}


def test_undecodable_name_reported(folder, tmp_path):
    bad = os.path.join(os.fsencode(folder), b"bad\xffname")
    with open(bad, "wb") as f:
        f.write(b"x")
    (folder / "ok").write_text("fine")
    r = make(folder, tmp_path).scan()
    assert [f.name for f in r.changed] == ["ok"]
    assert len(r.errors) == 1 and "UTF-8" in r.errors[0][1]


def test_missing_marker_stops_instead_of_deleting(folder, tmp_path):
    (folder / "a").write_text("a")
    s = make(folder, tmp_path)
    s.scan()
    os.rmdir(folder / ".syncer")
    with pytest.raises(FolderError, match="marker"):
        s.scan()
    assert [f.name for f in s.db.all_files("fid", LOCAL) if not f.deleted] == ["a"]


def test_big_file_hashed_in_parallel_ranges_matches_serial(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(scanner_mod, "RANGE_BYTES", 1 << 20)
    data = os.urandom(5 * (1 << 20) + 123)
    (folder / "big").write_bytes(data)
    import hashlib

    f = make(folder, tmp_path).scan().changed[0]
    bs = block_size_for(len(data))
    assert f.blocks == tuple(hashlib.sha256(data[i : i + bs]).digest() for i in range(0, len(data), bs))


def test_progress_reported(folder, tmp_path):
    (folder / "a").write_bytes(b"x" * 5000)
    seen = []
    make(folder, tmp_path).scan(progress=lambda d, t: seen.append((d, t)))
    # streaming: the total grows as the walk finds files to hash; it ends with all of it done
    assert seen[-1] == (5000, 5000) and all(d <= t for d, t in seen) and seen == sorted(seen)

"""The confined filesystem layer (syncer/fs/confined.py) and what is built on it: nothing is
ever followed through a symlink or done outside the folder root; a swapped directory is never
used; the walk is iterative and depth-capped; the trash can is pruned; serving fds are dropped."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import msgspec
import pytest

from syncer.fs import confined
from syncer.fs.confined import MAX_COMPONENTS, FolderFS, UnsafePath
from syncer.fs.layout import MAX_DEPTH, VERSIONS_DIR
from syncer.fs.serving import ServingFiles
from syncer.index.db import IndexDB
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.model import safe_write
from syncer.model.apply import apply_batch
from syncer.scan import Scanner
from tests.syncfix import snapshot


@pytest.fixture
def world(tmp_path):
    """root/ (the folder) with d -> absolute outside, r -> ../outside (relative), f a file, and
    a secret tree outside the root."""
    root = tmp_path / "root"
    (root / ".syncer").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "f").write_text("plain file")
    outside = tmp_path / "outside"
    (outside / "secretdir").mkdir(parents=True)
    (outside / "secret").write_text("private key")
    (outside / "secretdir" / "id_rsa").write_text("another secret")
    os.symlink(outside, root / "d")
    os.symlink("../outside", root / "r")
    fs = FolderFS(root)
    yield root, outside, fs
    fs.close()


PARENTS = ["d", "r", "f"]  # absolute symlink, relative symlink, a file


@pytest.mark.parametrize("parent", PARENTS)
def test_every_operation_refuses_a_name_below_a_symlink_or_file(world, parent):
    root, outside, fs = world
    before = snapshot(outside)
    name = f"{parent}/secret"
    calls = [
        lambda: fs.lstat(name),
        lambda: fs.lstat_or_none(name),
        lambda: fs.readlink(name),
        lambda: fs.open_read(name),
        lambda: fs.open_temp(f"{parent}/new", 0o644),
        lambda: fs.open_temp(f"{parent}/secretdir/new", 0o644),
        lambda: fs.makedirs(f"{parent}/newdir"),
        lambda: fs.replace(name, "stolen"),
        lambda: fs.replace("real", f"{parent}/planted"),
        lambda: fs.unlink(name),
        lambda: fs.rmdir(f"{parent}/secretdir"),
        lambda: fs.symlink("/etc/passwd", f"{parent}/link"),
        lambda: fs.utime(name, 1),
        lambda: fs.chmod(name, 0o777),
        lambda: fs.chmod(f"{parent}/secretdir", 0o777, directory=True),
        lambda: fs.read_bytes(name, 1000),
        lambda: fs.open_dir(f"{parent}/secretdir"),
        lambda: fs.list_dir(parent),
        lambda: list(fs.walk(f"{parent}/secretdir")),
    ]
    for call in calls:
        with pytest.raises(UnsafePath) as info:
            call()
        assert parent in str(info.value)
        assert ("symlink" if parent != "f" else "not a directory") in info.value.strerror
    assert snapshot(outside) == before
    assert not (root / "stolen").exists() and (root / "real").is_dir()


def test_a_symlink_as_last_component_is_the_link_itself(world):
    root, outside, fs = world
    before = snapshot(outside)
    assert stat.S_ISLNK(fs.lstat("d").st_mode) and fs.readlink("r") == "../outside"
    assert not fs.is_dir("d")
    for call in (lambda: fs.open_read("d"), lambda: fs.chmod("d", 0o700, directory=True), lambda: fs.chmod("d", 0o700)):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    fs.utime("d", 5_000_000_000)  # the link's own mtime
    assert os.lstat(root / "d").st_mtime_ns == 5_000_000_000
    fs.replace("d", "d2")
    fs.unlink("d2")
    assert not os.path.lexists(root / "d2")
    with pytest.raises(OSError) as info:
        fs.open_temp("r", 0o644)  # O_NOFOLLOW: never opens the link's target
    assert info.value.errno == errno.ELOOP
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a/", "a\x00b", "/".join(["d"] * (MAX_COMPONENTS + 1))]
)
def test_malformed_and_too_deep_names_refused(world, name):
    _, _, fs = world
    with pytest.raises(UnsafePath):
        fs.lstat(name)
    with pytest.raises(UnsafePath):
        fs.open_temp(name, 0o644)


def test_directory_swapped_for_a_symlink_between_resolution_steps(world, monkeypatch):
    """A directory on the way is swapped for a symlink to the outside after its parent was
    opened and before it is: the layer refuses instead of following it."""
    root, outside, fs = world
    (root / "a" / "b").mkdir(parents=True)
    before = snapshot(outside)
    real_openat = confined._openat

    def swapping(dir_fd, name, flags, mode=0o777):
        if name == "b" and (root / "a" / "b").is_dir() and not (root / "a" / "b").is_symlink():
            os.rename(root / "a" / "b", root / "b.moved")
            os.symlink(outside / "secretdir", root / "a" / "b")
        return real_openat(dir_fd, name, flags, mode)

    monkeypatch.setattr(confined, "_openat", swapping)
    with pytest.raises(UnsafePath, match="symlink"):
        fs.open_temp("a/b/x", 0o644)
    assert snapshot(outside) == before


def test_parent_swapped_while_held_lands_inside_never_outside(world, monkeypatch):
    """`a` is replaced by a symlink right after it was opened: the open fd still is the real
    directory (now `a.old`, inside the root), so the file lands there, never outside."""
    root, outside, fs = world
    (root / "a" / "b").mkdir(parents=True)
    before = snapshot(outside)
    real_openat = confined._openat

    def swapping(dir_fd, name, flags, mode=0o777):
        if name == "b" and not (root / "a").is_symlink():
            os.rename(root / "a", root / "a.old")
            os.symlink(outside, root / "a")
        return real_openat(dir_fd, name, flags, mode)

    monkeypatch.setattr(confined, "_openat", swapping)
    fd, _ = fs.open_temp("a/b/x", 0o644)
    os.close(fd)
    assert (root / "a.old" / "b" / "x").is_file()
    assert snapshot(outside) == before


def test_cached_directory_moved_outside_is_never_used(world):
    """A cached directory fd whose directory was moved outside the root (and replaced by a
    symlink) fails re-validation: nothing is written through the stale fd."""
    root, outside, fs = world
    (root / "a" / "b").mkdir(parents=True)
    fd, _ = fs.open_temp("a/b/first", 0o644)  # caches a and a/b
    os.close(fd)
    os.rename(root / "a", outside / "moved")
    os.symlink(outside / "moved", root / "a")
    before = snapshot(outside)
    with pytest.raises(UnsafePath, match="symlink"):
        fs.open_temp("a/b/second", 0o644)
    with pytest.raises(UnsafePath):
        fs.lstat("a/b/first")
    assert snapshot(outside) == before
    # replaced by a real directory again: the new one is used, not the cached old one
    os.unlink(root / "a")
    (root / "a" / "b").mkdir(parents=True)
    fd, _ = fs.open_temp("a/b/third", 0o644)
    os.close(fd)
    assert (root / "a" / "b" / "third").exists() and not (outside / "moved" / "b" / "third").exists()


def test_layer_renames_and_removals_invalidate_its_cache(world):
    root, _, fs = world
    fs.makedirs("x/y")
    fd, _ = fs.open_temp("x/y/f", 0o644)
    os.close(fd)
    fs.replace("x", "z")  # the cached x and x/y are dropped
    fs.makedirs("x/y")
    assert fs.lstat_or_none("x/y/f") is None and fs.lstat("z/y/f")
    fs.unlink("z/y/f")
    fs.rmdir("z/y")
    fs.rmdir("z")
    assert not (root / "z").exists()


def test_dir_fds_bounded_released_when_idle_and_reopened(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    fs = FolderFS(root, max_dirs=4)
    for i in range(10):
        fd, _ = fs.open_temp(f"d{i}/sub/f", 0o644)
        os.close(fd)
    assert fs.open_fds() <= 5  # 4 directories + the root
    import time

    assert not fs.release_idle(time.monotonic(), idle_s=30)
    assert fs.release_idle(time.monotonic() + 31, idle_s=30) and fs.open_fds() == 0
    assert fs.lstat("d9/sub/f").st_size == 0  # reopened on demand
    fs.close()
    assert fs.open_fds() == 0


def test_dir_cache_counts_what_lies_below_each_directory(tmp_path):
    """_forget skips its walk over the cache for names with nothing cached at or below them;
    the counts must follow every way a directory leaves the cache (eviction, forget, release)."""
    root = tmp_path / "root"
    root.mkdir()
    fs = FolderFS(root, max_dirs=3)

    def expected() -> dict[str, int]:
        out: dict[str, int] = {}
        for rel in fs._dirs:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                out["/".join(parts[:i])] = out.get("/".join(parts[:i]), 0) + 1
        return out

    for name in ("a/b/c/f", "a/b/g", "x/y/f", "a/b/c/h", "x/f"):
        fd, _ = fs.open_temp(name, 0o644)
        os.close(fd)
        assert fs._below == expected() and len(fs._dirs) <= 3
    fd, _ = fs.open_temp("a/b/c/f2", 0o644)
    os.close(fd)
    assert "a/b/c" in fs._dirs and fs._below == expected()
    fs.replace("a/b", "moved")  # a/b and a/b/c are dropped, a stays
    assert not any(k.startswith("a/b") for k in fs._dirs) and fs._below == expected()
    assert fs.lstat("moved/c/f2").st_size == 0
    fs.close()
    assert fs._below == {} and fs._dirs == {}


def test_root_symlink_made_by_the_user_is_resolved_once(tmp_path):
    real = tmp_path / "real"
    (real / ".syncer").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    fs = FolderFS(tmp_path / "link")
    assert fs.root == real.resolve() and fs.is_dir(".syncer") and fs.refresh_root()
    # the folder is moved away and another directory appears at its path (a disk unmounted
    # and its mount point left empty): the layer starts afresh on the new directory
    os.rename(real, tmp_path / "moved")
    real.mkdir()
    assert fs.refresh_root() and not fs.is_dir(".syncer")
    os.rmdir(real)
    assert not fs.refresh_root()
    fs.close()


def test_walk_never_enters_symlinks_and_records_targets(world):
    root, _, fs = world
    (root / "real" / "inner").mkdir()
    (root / "real" / "inner" / "x").write_text("x")
    listings = {ls.rel: ls for ls in fs.walk()}
    assert set(listings) == {"", ".syncer", "real", "real/inner"}
    top = {name: (stat.S_IFMT(st.st_mode), target) for name, st, target in listings[""].entries}
    assert top["d"] == (stat.S_IFLNK, str(root.parent / "outside")) and top["r"] == (stat.S_IFLNK, "../outside")
    assert "secret" not in str(listings)


def _deep(root: Path, depth: int) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_scanner_walk_is_iterative_and_reports_too_deep_paths(tmp_path):
    """1,100 nested directories: the old recursive walk raised RecursionError and ended rescans
    for good; now the scan records what is within MAX_DEPTH and reports the rest."""
    root = tmp_path / "root"
    (root / ".syncer").mkdir(parents=True)
    (root / "ok").write_text("fine")
    try:
        _deep(root, 1100)
        s = Scanner(root, "fid", IndexDB(tmp_path / "i.db"), 7)
        r = s.scan()
        names = {f.name for f in r.changed}
        assert "ok" in names and "/".join(["d"] * MAX_DEPTH) in names
        assert max(n.count("/") + 1 for n in names) == MAX_DEPTH
        assert len(r.errors) == 1 and "deeper than 255" in r.errors[0][1]
        assert r.errors[0][0] == "/".join(["d"] * MAX_DEPTH)
        s.fs.close()
    finally:
        # pytest's own (recursive) clean-up of old temp dirs would hit the RecursionError
        subprocess.run(["rm", "-rf", str(root / "d")], check=True)


def test_scanner_records_a_directory_replaced_by_a_symlink(tmp_path):
    root = tmp_path / "root"
    (root / ".syncer").mkdir(parents=True)
    (root / "d").mkdir()
    (root / "d" / "x").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("outside x")
    (outside / "secret").write_text("secret")
    s = Scanner(root, "fid", IndexDB(tmp_path / "i.db"), 7)
    s.scan()
    os.rename(root / "d", tmp_path / "d.away")
    os.symlink(outside, root / "d")
    r = s.scan(["d/x", "d/secret"])  # a watcher batch naming paths through the new symlink
    assert [f.name for f in r.deleted] == ["d/x"] and r.changed == []
    r = s.scan()
    assert [(f.name, f.type, f.symlink_target) for f in r.changed] == [("d", FileType.SYMLINK, str(outside))]
    assert not any("secret" in f.name for f in s.db.all_files("fid", b"\0" * 32))
    s.fs.close()


def test_open_temp_and_chmod_refuse_fifos_without_blocking(world):
    root, _, fs = world
    os.mkfifo(root / "fifo")
    for call in (lambda: fs.open_temp("fifo", 0o644), lambda: fs.open_read("fifo"), lambda: fs.chmod("fifo", 0o600)):
        with pytest.raises(OSError, match="not a regular file"):
            call()
    fs.chmod("real", 0o700, directory=True)
    assert stat.S_IMODE(os.lstat(root / "real").st_mode) == 0o700


def _file(name: str, content: bytes, perms: int = 0o644, counter: int = 1) -> FileInfo:
    bs = 128 << 10
    blocks = tuple(hashlib.sha256(content[i : i + bs]).digest() for i in range(0, len(content), bs))
    return FileInfo(name=name, type=FileType.FILE, size=len(content), mtime_ns=1_700_000_000_000_000_000,
                    permissions=perms, block_size=bs, blocks=blocks, symlink_target="",
                    version=VersionVector().update(99) if counter == 1 else VersionVector({99: counter}),
                    sequence=0, deleted=False, modified_by=99)


def _write_temp(fs: FolderFS, name: str, content: bytes, perms: int) -> None:
    from syncer.fs.layout import temp_name

    fd, _ = fs.open_temp(temp_name(name), safe_write.temp_mode(perms))
    os.write(fd, content)
    os.close(fd)


def test_apply_refuses_only_the_names_behind_symlinks_and_masks_special_bits(world):
    root, outside, fs = world
    before = snapshot(outside)
    _write_temp(fs, "setuid", b"#!/bin/sh\n", 0o6755)
    _write_temp(fs, "real/ok", b"fine", 0o644)
    finished = [(_file("setuid", b"#!/bin/sh\n", 0o6755), None, False, "X"), (_file("real/ok", b"fine"), None, False, "X"),
                (_file("d/secret", b"overwrite"), None, False, "X"), (_file("r/new", b"planted"), None, False, "X")]
    d = FileInfo(name="d/secretdir", type=FileType.DIRECTORY, size=0, mtime_ns=1, permissions=0o1777, block_size=0, blocks=(),
                 symlink_target="", version=VersionVector().update(99), sequence=0, deleted=False, modified_by=99)
    sticky = FileInfo(name="sticky", type=FileType.DIRECTORY, size=0, mtime_ns=1, permissions=0o1777, block_size=0, blocks=(),
                      symlink_target="", version=VersionVector().update(99), sequence=0, deleted=False, modified_by=99)
    out = apply_batch(fs, finished, [(d, None), (sticky, None)], 1_700_000_000.0)
    assert {f.name for f in out.applied} == {"setuid", "real/ok", "sticky"}
    assert {n for n, _ in out.errors} == {"d/secret", "r/new", "d/secretdir"}
    assert all("symlink" in e for _, e in out.errors)
    assert stat.S_IMODE(os.lstat(root / "setuid").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(root / "sticky").st_mode) == 0o777
    assert {f.name: f.permissions for f in out.applied}["setuid"] == 0o755  # as on disk: no rescan churn
    assert snapshot(outside) == before


def test_archiving_prunes_that_files_versions(world):
    root, _, fs = world
    policy = safe_write.Versions(keep=2, max_age_s=1e9)
    for i in range(5):
        (root / "doc.txt").write_text(f"v{i}")
        assert safe_write.archive(fs, "doc.txt", 1_700_000_000.0 + i) is not None
        safe_write.prune_archived(fs, ["doc.txt"], policy, 1_700_000_000.0 + i)
    (root / "other.txt").write_text("o")
    safe_write.archive(fs, "other.txt", 1_700_000_000.0)
    kept = sorted(os.listdir(root / VERSIONS_DIR))
    assert kept == ["doc~20231114-221323.txt", "doc~20231114-221324.txt", "other~20231114-221320.txt"]
    assert (root / VERSIONS_DIR / kept[1]).read_text() == "v4"


def test_trash_can_sweep_is_bounded_and_resumes(world):
    root, _, fs = world
    now = 1_800_000_000.0
    vdir = root / VERSIONS_DIR
    for i in range(30):
        sub = vdir / f"dir{i:02d}"
        sub.mkdir(parents=True)
        for age_days, stamp in ((40, "20240101-000000"), (1, "20240301-000000")):
            p = sub / f"f~{stamp}.txt"
            p.write_text(stamp)
            os.utime(p, (now - age_days * 86400, now - age_days * 86400))
    (vdir / "dir00" / "not-a-version").write_text("kept")
    policy = safe_write.Versions(keep=5, max_age_s=30 * 86400)
    removed, cursor = safe_write.prune_tree(fs, policy, now, None, budget=20)
    assert removed < 30 and cursor is not None  # bounded: stopped part way
    total, runs = removed, 1
    while cursor is not None:
        removed, cursor = safe_write.prune_tree(fs, policy, now, cursor, budget=20)
        assert removed <= 10  # 20 entries looked at: about 6 directories of 3
        total, runs = total + removed, runs + 1
    assert total == 30 and 4 <= runs <= 12  # each old version removed exactly once
    left = sorted(str(p.relative_to(vdir)) for p in vdir.rglob("*") if p.is_file())
    assert len(left) == 31 and "dir00/not-a-version" in left and all("20240301" in n for n in left if "~" in n)
    # everything expired: emptied directories go too
    removed, cursor = safe_write.prune_tree(fs, safe_write.Versions(keep=0, max_age_s=1), now, None)
    assert removed == 30 and cursor is None and sorted(os.listdir(vdir)) == ["dir00"]


def test_serving_files_drop_touched_and_idle_fds(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    s = ServingFiles(max_fds=2, idle_s=10)
    fds = {n: os.open(tmp_path / n, os.O_RDONLY) for n in ("a", "b")}
    s.put("a", fds["a"], 0.0)
    s.put("b", fds["b"], 5.0)
    (tmp_path / "a").unlink()
    s.drop(["a"])  # applied or scanned: closed, so the deleted file's space comes back
    with pytest.raises(OSError):
        os.fstat(fds["a"])
    assert s.close_idle(14.0) == 0 and s.close_idle(15.0) == 1 and len(s) == 0
    fd = s.take("b")
    assert fd is None
    for i in range(3):
        s.put(f"x{i}", os.open(tmp_path / "b", os.O_RDONLY), float(i))
    assert len(s) == 2 and "x0" not in s
    s.close_all()
    assert len(s) == 0


def test_apply_over_the_same_content_keeps_no_version_but_a_different_one_is_archived(tmp_path):
    """A file already in place with the downloaded content (a scan recorded it during the
    download, e.g. after a crash between rename and index commit) is replaced without a
    spurious version in the trash can; different content is archived first."""
    root = tmp_path / "r"
    (root / ".syncer").mkdir(parents=True)
    fs = FolderFS(root)
    for name, there, new in (("same", b"identical", b"identical"), ("other", b"old content", b"new content")):
        (root / name).write_bytes(there)
        st = os.lstat(root / name)
        local = msgspec.structs.replace(_file(name, there, counter=1), mtime_ns=st.st_mtime_ns, size=st.st_size, inode=st.st_ino)
        _write_temp(fs, name, new, 0o644)
        out = apply_batch(fs, [(_file(name, new, counter=2), local, False, "X")], [], now=1_800_000_000.0)
        assert out.errors == [] and [f.name for f in out.applied] == [name]
        assert (root / name).read_bytes() == new
    assert [p.name.split("~")[0] for p in (root / VERSIONS_DIR).rglob("*") if p.is_file()] == ["other"]

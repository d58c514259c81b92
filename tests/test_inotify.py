"""syncer's Linux inotify watcher: what events mean for the watched tree (pure, synthetic events),
then the real kernel: new, renamed, moved-in and moved-out directories, symlinks, bursts, limits."""

import asyncio
import ctypes
import errno
import logging
import threading

import pytest

from syncer import inotify
from syncer import watchtree as wt
from syncer.watch import FolderWatcher
from tests.daemons import wait_until

linux = pytest.mark.skipif(not inotify.available(), reason="Linux inotify")


def ev(wd: int, mask: int, name: bytes = b"", cookie: int = 0) -> wt.Event:
    return wt.Event(wd, mask, cookie, name)


def tree(*dirs: str) -> wt.WatchTree:
    """A tree watching the root (wd 1) and `dirs` (wd 2, 3, ...), parents first."""
    t = wt.WatchTree()
    nodes = {"": t.add(1, None)}
    for i, d in enumerate(dirs):
        head, _, base = d.rpartition("/")
        nodes[d] = t.add(i + 2, nodes[head], base)
    return t


def node(t: wt.WatchTree, wd: int) -> wt.WatchedDir:
    found = t._by_wd[wd]
    assert t.alive(found)
    return found


def watching(fx: wt.Effects) -> list[str]:
    return [f"{wt.path(p)}/{n}".lstrip("/") for p, n in fx.watch]


def test_parse_reads_every_event_of_a_buffer():
    def packed(wd: int, mask: int, cookie: int, name: bytes) -> bytes:
        padded = name + b"\0" * (-len(name) % 16 or (16 if name else 0))
        return wt.HEADER.pack(wd, mask, cookie, len(padded)) + padded

    buf = packed(1, wt.IN_CREATE, 0, b"a.txt") + packed(2, wt.IN_IGNORED, 0, b"") + packed(1, wt.IN_MOVED_TO, 5, b"x" * 16)
    assert wt.parse(buf) == [ev(1, wt.IN_CREATE, b"a.txt"), ev(2, wt.IN_IGNORED), ev(1, wt.IN_MOVED_TO, b"x" * 16, 5)]
    assert wt.parse(buf[:10]) == []  # never half an event


def test_names_are_relative_to_the_folder():
    t = tree("a", "a/b")
    fx = t.handle([ev(3, wt.IN_CLOSE_WRITE, b"f"), ev(1, wt.IN_ATTRIB, b"top"), ev(3, wt.IN_DELETE, b"g")])
    assert fx.changed == ["a/b/f", "top", "a/b/g"] and not fx.watch and not fx.unwatch and not fx.rescan


def test_a_new_directory_is_reported_and_watched():
    fx = tree().handle([ev(1, wt.IN_CREATE | wt.IN_ISDIR, b"new")])
    assert fx.changed == ["new"] and watching(fx) == ["new"]


def test_a_directory_renamed_inside_keeps_its_watches_under_the_new_name():
    t = tree("a", "a/b", "x")  # wds 2, 3, 4
    fx = t.handle([ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"a", 7), ev(4, wt.IN_MOVED_TO | wt.IN_ISDIR, b"z", 7)])
    assert fx.changed == ["a", "x/z"] and not fx.watch and not fx.unwatch
    assert t.path_of(2) == "x/z" and t.path_of(3) == "x/z/b"
    assert t.handle([ev(3, wt.IN_CLOSE_WRITE, b"f")]).changed == ["x/z/b/f"]


def test_rename_relinks_the_subtree_without_walking_it():
    t = tree("a", "x")
    for i in range(1000):
        t.add(100 + i, node(t, 2), f"d{i}")
    fx = t.handle([ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"a", 9), ev(1, wt.IN_MOVED_TO | wt.IN_ISDIR, b"renamed", 9)])
    assert fx.changed == ["a", "renamed"] and not fx.watch and not fx.unwatch
    assert t.path_of(999 + 100) == "renamed/d999"
    assert t.handle([ev(150, wt.IN_CLOSE_WRITE, b"f")]).changed == ["renamed/d50/f"]


def test_a_directory_moved_out_loses_its_watches():
    t = tree("a", "a/b")
    fx = t.handle([ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"a", 3)])
    assert fx.changed == ["a"] and sorted(fx.unwatch) == [2, 3]
    assert t.handle([ev(3, wt.IN_CLOSE_WRITE, b"f")]).changed == []  # its late events: not ours
    assert len(t) == 1


def test_a_directory_moved_in_from_outside_is_watched():
    fx = tree().handle([ev(1, wt.IN_MOVED_TO | wt.IN_ISDIR, b"came", 11)])
    assert fx.changed == ["came"] and watching(fx) == ["came"]


def test_removed_directories_are_forgotten():
    t = tree("a", "a/b")
    fx = t.handle([ev(3, wt.IN_DELETE_SELF), ev(3, wt.IN_IGNORED), ev(2, wt.IN_DELETE | wt.IN_ISDIR, b"b")])
    assert fx.changed == ["a/b"] and t.path_of(3) is None and t.path_of(2) == "a"


def test_lost_events_and_a_vanished_root_ask_for_a_full_scan():
    assert tree().handle([ev(-1, wt.IN_Q_OVERFLOW)]).rescan
    assert tree().handle([ev(1, wt.IN_DELETE_SELF)]).rescan
    assert tree().handle([ev(1, wt.IN_MOVE_SELF)]).rescan
    assert not tree("a").handle([ev(2, wt.IN_MOVE_SELF)]).rescan  # a subdirectory's: its parent reports it


def test_a_watch_added_again_is_relinked():
    t = tree("a")
    t.add(2, node(t, 1), "b")  # the same directory (same wd) seen again under another name
    assert t.path_of(2) == "b" and t.handle([ev(1, wt.IN_CREATE, b"a")]).changed == ["a"]


def test_a_new_directory_is_watched_under_the_name_it_has_after_the_burst():
    t = tree("q")
    fx = t.handle([
        ev(2, wt.IN_CREATE | wt.IN_ISDIR, b"new"),
        ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"q", 4), ev(1, wt.IN_MOVED_TO | wt.IN_ISDIR, b"r", 4),
    ])
    assert watching(fx) == ["r/new"]


def test_renamed_onto_a_watched_directory_both_are_watched_afresh():
    # renameat2(RENAME_EXCHANGE) of a and b: each half is a rename onto the other
    t = tree("a", "a/deep", "b")
    fx = t.handle([
        ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"a", 1), ev(1, wt.IN_MOVED_TO | wt.IN_ISDIR, b"b", 1),
        ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"b", 2), ev(1, wt.IN_MOVED_TO | wt.IN_ISDIR, b"a", 2),
    ])
    assert sorted(watching(fx)) == ["a", "b"] and sorted(fx.unwatch) == [2, 3, 4] and len(t) == 1


# --- the real kernel ------------------------------------------------------------------
async def _until(w: FolderWatcher, name: str, got: set[str] | None = None) -> set[str]:
    got = set() if got is None else got
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while name not in got:
        batch = await asyncio.wait_for(w.next_batch(), max(0.1, deadline - loop.time()))
        assert batch is not None
        got |= batch
    return got


def _watching(root, body) -> None:
    async def main() -> None:
        w = FolderWatcher(root, 0.02, asyncio.get_running_loop(), backend="inotify")
        w.start()
        try:
            await body(w)
        finally:
            w.stop()

    asyncio.run(main())


@linux
def test_new_renamed_and_moved_in_directories_are_watched(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    (outside / "x" / "y").mkdir(parents=True)

    async def body(w: FolderWatcher) -> None:
        (root / "new" / "deep").mkdir(parents=True)
        await _until(w, "new")
        (root / "new" / "deep" / "f").write_text("1")  # the new directories got watches
        await _until(w, "new/deep/f")
        (root / "a").rename(root / "z")
        await _until(w, "z")
        (root / "z" / "g").write_text("2")  # reported under its new name
        assert "a/g" not in await _until(w, "z/g")
        (outside / "x").rename(root / "x")
        await _until(w, "x")
        (root / "x" / "y" / "h").write_text("3")
        await _until(w, "x/y/h")

    _watching(root, body)


@linux
def test_moved_out_directories_and_symlinks_report_nothing(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "leaving").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)

    async def body(w: FolderWatcher) -> None:
        (root / "leaving").rename(outside / "left")
        got = await _until(w, "leaving")
        (outside / "left" / "f").write_text("not ours any more")
        (outside / "g").write_text("behind a symlink")
        (root / ".syncer").mkdir()
        (root / ".syncer" / "x").write_text("internal")
        (root / "marker").write_text("m")
        got = await _until(w, "marker", got)
        assert not {"leaving/f", "left/f", "link/g", ".syncer/x"} & got, got

    _watching(root, body)
    # and the internal directory never got a watch of its own
    (root / ".syncer").mkdir(exist_ok=True)
    seen: list[list[str]] = []
    iw = inotify.InotifyWatch(root, lambda names, lost: seen.append(names), skip=lambda rel: rel == ".syncer")
    iw.start()
    try:
        assert len(iw.tree) == 1
    finally:
        iw.stop()


@linux
def test_a_burst_is_handed_over_in_few_calls(tmp_path):
    calls: list[int] = []
    names: set[str] = set()
    done = threading.Event()

    def on_changes(changed: list[str], lost: bool) -> None:
        calls.append(len(changed))
        names.update(changed)
        if "last" in names:
            done.set()

    iw = inotify.InotifyWatch(tmp_path, on_changes)
    iw.start()
    try:
        for i in range(2000):
            (tmp_path / f"f{i}").write_bytes(b"x")
        (tmp_path / "last").write_bytes(b"x")
        assert done.wait(20)
    finally:
        iw.stop()
    assert {f"f{i}" for i in range(2000)} <= names
    # three events a file (create, modify is not watched, close): one call per burst of them
    assert len(calls) < 400, len(calls)


@linux
def test_watch_limit_is_reported_once_and_the_rest_still_watched(tmp_path, monkeypatch, caplog):
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    real = inotify._lib()

    class Limited:  # room for one watch: the root's (the walk adds it first)
        calls = 0

        def __getattr__(self, name):
            return getattr(real, name)

        def inotify_add_watch(self, fd, path, mask):
            self.calls += 1
            if self.calls > 1:
                ctypes.set_errno(errno.ENOSPC)
                return -1
            return real.inotify_add_watch(fd, path, mask)

    limited = Limited()

    monkeypatch.setattr(inotify, "_lib", lambda: limited)
    got: list[str] = []
    iw = inotify.InotifyWatch(tmp_path, lambda names, lost: got.extend(names))
    with caplog.at_level(logging.WARNING, "syncer.inotify"):
        iw.start()
        try:
            assert len(iw.tree) == 1
            (tmp_path / "top").write_text("x")
            deadline = threading.Event()
            for _ in range(200):
                if "top" in got:
                    break
                deadline.wait(0.05)
            assert "top" in got
        finally:
            iw.stop()
    warnings = [r for r in caplog.records if "watch limit" in r.getMessage()]
    assert len(warnings) == 1 and "max_user_watches" in warnings[0].getMessage()


def test_lost_events_make_the_next_batch_a_full_scan(tmp_path):
    async def main() -> None:
        w = FolderWatcher(tmp_path, 0.02, asyncio.get_running_loop(), backend="inotify")
        t = threading.Thread(target=w._changes, args=(["a"], True))
        t.start()
        t.join()
        assert await asyncio.wait_for(w.next_batch(), 5) is None
        w._changes(["b"], False)
        assert await asyncio.wait_for(w.next_batch(), 5) == {"b"}

    asyncio.run(main())


class Recorder:
    """on_changes for an InotifyWatch: every name it was given, waitable."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.lost = False
        self.cond = threading.Condition()

    def __call__(self, names: list[str], lost: bool) -> None:
        with self.cond:
            self.names.update(names)
            self.lost |= lost
            self.cond.notify_all()

    def wait(self, name: str, timeout: float = 20) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: name in self.names, timeout), f"{name} never reported"


@linux
def test_directories_exchanged_by_renameat2_keep_their_names(tmp_path):
    libc = ctypes.CDLL(None, use_errno=True)
    (tmp_path / "a" / "in-a").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    rec = Recorder()
    iw = inotify.InotifyWatch(tmp_path, rec)
    iw.start()
    try:
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        assert libc.renameat2(AT_FDCWD, bytes(tmp_path / "a"), AT_FDCWD, bytes(tmp_path / "b"), RENAME_EXCHANGE) == 0
        rec.wait("b")
        rec.wait("a")
        (tmp_path / "b" / "in-a" / "f").write_text("1")  # what was a, now at b
        (tmp_path / "a" / "g").write_text("2")  # what was b, now at a
        rec.wait("b/in-a/f")
        rec.wait("a/g")
        assert "a/in-a/f" not in rec.names
    finally:
        iw.stop()


@linux
def test_lost_events_rebuild_every_watch(tmp_path):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 50_000:
        pytest.skip(f"max_queued_events {limit}: too many files to overflow it in a test")
    (tmp_path / "old").mkdir()
    (tmp_path / "flood").mkdir()
    rec = Recorder()
    hold = threading.Event()

    def on_changes(names: list[str], lost: bool) -> None:
        rec(names, lost)
        if "go" in names:
            assert hold.wait(20)  # the watch thread busy (as walking a big tree) while events pile up

    iw = inotify.InotifyWatch(tmp_path, on_changes)
    iw.start()
    try:
        (tmp_path / "go").write_text("x")
        rec.wait("go")
        for i in range(limit // 2 + 1000):  # two events each: more than the kernel queues
            (tmp_path / "flood" / f"f{i}").touch()
        (tmp_path / "newdir").mkdir()
        (tmp_path / "old").rename(tmp_path / "renamed")
        hold.set()
        with rec.cond:
            assert rec.cond.wait_for(lambda: rec.lost, 20), "the overflow was not reported"
        (tmp_path / "newdir" / "f").write_text("1")  # watched although its creation was lost
        (tmp_path / "renamed" / "g").write_text("2")  # under its new name
        rec.wait("newdir/f")
        rec.wait("renamed/g")
        assert "old/g" not in rec.names
    finally:
        hold.set()
        iw.stop()


@linux
def test_a_tree_renamed_while_it_is_walked_is_watched_whole(tmp_path):
    (tmp_path / "big").mkdir()
    for i in range(2000):
        (tmp_path / "big" / f"d{i:04}").mkdir()
    rec = Recorder()
    iw = inotify.InotifyWatch(tmp_path, rec)
    iw.start(wait=False)
    try:
        wait_until(lambda: len(iw.tree) >= 3, 20, "the walk under way")  # the root and big watched
        (tmp_path / "big").rename(tmp_path / "big2")  # most likely while the walk is still going
        assert iw._ready.wait(20)
        rec.wait("big2")
        for i in range(0, 2000, 97):
            (tmp_path / "big2" / f"d{i:04}" / "f").touch()
        (tmp_path / "marker").touch()
        for i in range(0, 2000, 97):
            rec.wait(f"big2/d{i:04}/f")
        assert not any(n.startswith("big/") for n in rec.names)
    finally:
        iw.stop()

"""syncer's Linux inotify watcher: what events mean for the watched tree (pure, synthetic events),
then the real kernel: new, renamed, moved-in and moved-out directories, symlinks, bursts, limits."""

import asyncio
import ctypes
import errno
import logging
import os
import threading

import pytest

from syncer import inotify
from syncer import watchtree as wt
from syncer.watch import FolderWatcher

linux = pytest.mark.skipif(not inotify.available(), reason="Linux inotify")


def ev(wd: int, mask: int, name: bytes = b"", cookie: int = 0) -> wt.Event:
    return wt.Event(wd, mask, cookie, name)


def tree(*dirs: str) -> wt.WatchTree:
    """A tree watching the root (wd 1) and `dirs` (wd 2, 3, ...), parents first."""
    t = wt.WatchTree()
    t.added(1, "")
    for i, d in enumerate(dirs):
        t.added(i + 2, d)
    return t


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
    assert fx.changed == ["new"] and fx.watch == ["new"]


def test_a_directory_renamed_inside_keeps_its_watches_under_the_new_name():
    t = tree("a", "a/b", "x")  # wds 2, 3, 4
    fx = t.handle([ev(1, wt.IN_MOVED_FROM | wt.IN_ISDIR, b"a", 7), ev(4, wt.IN_MOVED_TO | wt.IN_ISDIR, b"z", 7)])
    assert fx.changed == ["a", "x/z"] and not fx.watch and not fx.unwatch
    assert t.path_of(2) == "x/z" and t.path_of(3) == "x/z/b"
    assert t.handle([ev(3, wt.IN_CLOSE_WRITE, b"f")]).changed == ["x/z/b/f"]


def test_rename_relinks_the_subtree_without_walking_it():
    t = tree("a", "x")
    for i in range(1000):
        t.added(100 + i, f"a/d{i}")
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
    assert fx.changed == ["came"] and fx.watch == ["came"]


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
    t.added(2, "b")  # the same directory (same wd) seen again under another name
    assert t.path_of(2) == "b" and t.handle([ev(1, wt.IN_CREATE, b"a")]).changed == ["a"]


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

    class Limited:
        def __getattr__(self, name):
            return getattr(real, name)

        def inotify_add_watch(self, fd, path, mask):
            if path != os.fsencode(tmp_path):
                ctypes.set_errno(errno.ENOSPC)
                return -1
            return real.inotify_add_watch(fd, path, mask)

    monkeypatch.setattr(inotify, "_lib", lambda: Limited())
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

import asyncio
import random

import pytest

from syncer import inotify
from syncer.ignore import Ignore, always_ignored
from syncer.watch import Aggregator, FolderWatcher, RescanSchedule

# every real-watcher test runs on both backends: syncer's inotify watcher (Linux) and watchdog's
BACKENDS = [pytest.param("inotify", marks=pytest.mark.skipif(not inotify.available(), reason="Linux only")), "watchdog"]


def test_ignore_patterns():
    ig = Ignore(["*.log", "build/", "!keep.log", "# comment", "/top.txt"])
    assert ig.ignored("a.log") and ig.ignored("x/y/b.log")
    assert not ig.ignored("keep.log")
    assert ig.ignored("build", is_dir=True) and ig.ignored("build/out.o")
    assert ig.ignored("top.txt") and not ig.ignored("sub/top.txt")
    assert not ig.ignored("readme.md")


def test_always_ignored():
    for n in (".syncer", ".syncer/versions/x", "d/.syncer.f.tmp", ".DS_Store", "d/Thumbs.db", "._x"):
        assert always_ignored(n), n
    for n in (".syncerignore", "d/.syncer", "normal.txt"):
        assert not always_ignored(n), n


def test_aggregator_debounces_with_injected_time():
    a = Aggregator(delay=0.1, max_delay=1.0)
    a.add("f", 0.0)
    assert a.next_deadline() == 0.1 and a.due(0.05) == set()
    a.add("f", 0.08)  # still being written: wait for quiet
    assert a.due(0.15) == set() and a.due(0.18) == {"f"}
    assert a.next_deadline() is None


def test_aggregator_max_delay_for_constant_writes():
    a = Aggregator(delay=0.1, max_delay=1.0)
    t = 0.0
    while t < 0.95:
        a.add("busy", t)
        assert a.due(t) == set()
        t += 0.05
    a.add("busy", 1.0)
    assert a.due(1.0) == {"busy"}


def test_rescan_schedule_jitter():
    s = RescanSchedule(3600, random.Random(1))
    times = [s.next(0) for _ in range(50)]
    assert all(3240 <= t <= 3960 for t in times) and len(set(times)) > 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_watcher_reports_changes(tmp_path, backend):
    async def main() -> set[str]:
        w = FolderWatcher(tmp_path, 0.05, asyncio.get_running_loop(), backend=backend)
        w.start()
        try:
            (tmp_path / "new.txt").write_text("x")
            (tmp_path / ".syncer.new.txt.tmp").write_text("ignored")
            got: set[str] = set()
            deadline = asyncio.get_running_loop().time() + 20
            while "new.txt" not in got:
                got |= await asyncio.wait_for(w.next_batch(), max(0.1, deadline - asyncio.get_running_loop().time()))
            return got
        finally:
            w.stop()

    got = asyncio.run(main())
    assert "new.txt" in got and not any(".tmp" in p for p in got)


def test_aggregator_batches_a_burst_as_one():
    a = Aggregator(delay=0.1, max_delay=1.0)
    for i in range(15):
        a.add(f"f{i}", i * 0.02)  # a delete loop spread over 0.3 s
    assert a.due(0.35) == set()
    assert len(a.due(0.39)) == 15


async def _collect_until(w: FolderWatcher, name: str, got: set[str]) -> set[str]:
    """Batches from `w` until one holds `name` (every earlier event is in `got` by then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while name not in got:
        batch = await asyncio.wait_for(w.next_batch(), max(0.1, deadline - loop.time()))
        assert batch is not None, "no events lost here: a full rescan was not called for"
        got |= batch
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_watcher_sees_closed_writes_and_chmod_not_writes_to_open_files(tmp_path, backend):
    (tmp_path / "perm.txt").write_text("p")
    (tmp_path / "held.log").write_text("start\n")

    async def main() -> None:
        w = FolderWatcher(tmp_path, 0.05, asyncio.get_running_loop(), backend=backend)
        w.start()
        try:
            with open(tmp_path / "held.log", "a") as held:
                held.write("still being written\n")
                held.flush()
                (tmp_path / "perm.txt").chmod(0o600)  # IN_ATTRIB only
                (tmp_path / "marker").write_text("m")
                got = await _collect_until(w, "marker", set())
                assert "perm.txt" in got
                assert "held.log" not in got  # its writer has not closed it yet
            # closed now: reported
            assert "held.log" in await _collect_until(w, "held.log", set())
        finally:
            w.stop()

    asyncio.run(main())


@pytest.mark.parametrize("backend", BACKENDS)
def test_modify_events_report_writes_to_open_files(tmp_path, backend):
    (tmp_path / "held.log").write_text("start\n")

    async def main() -> None:
        w = FolderWatcher(tmp_path, 0.05, asyncio.get_running_loop(), modify_events=True, backend=backend)
        w.start()
        try:
            with open(tmp_path / "held.log", "a") as held:
                held.write("more\n")
                held.flush()
                assert "held.log" in await _collect_until(w, "held.log", set())
        finally:
            w.stop()

    asyncio.run(main())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_change_in_a_directory_reports_the_file_not_the_directory(tmp_path, backend):
    # the directory's name would have the scan walk all of it again for one changed file
    (tmp_path / "big").mkdir()
    for i in range(50):
        (tmp_path / "big" / f"f{i}").write_text("x")

    async def main() -> set[str]:
        w = FolderWatcher(tmp_path, 0.05, asyncio.get_running_loop(), backend=backend)
        w.start()
        try:
            (tmp_path / "big" / "f7").write_text("changed")
            (tmp_path / "big" / "new").write_text("n")
            (tmp_path / "big" / "f8").unlink()
            got = await _collect_until(w, "big/f8", set())
            return await _collect_until(w, "big/new", got)
        finally:
            w.stop()

    got = asyncio.run(main())
    assert {"big/f7", "big/new", "big/f8"} <= got and "big" not in got

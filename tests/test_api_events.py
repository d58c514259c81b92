"""The event log: unit tests of the ring buffer and its waiters (injected clock), then the
long-poll endpoint of a real daemon, including a client that never reads its responses."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.parse
from types import SimpleNamespace

import pytest

from syncer import events as ev
from syncer.events import EventLog
from syncer.model.conflicts import original_of
from tests.apihelp import Api
from tests.daemons import cluster, wait_until


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ids_are_gap_free_and_since_resumes() -> None:
    log = EventLog(capacity=100, clock=Clock())
    for i in range(10):
        log.emit("ItemFinished", n=i)
    first = log.since(0, limit=4)
    assert [e.id for e in first] == [1, 2, 3, 4]
    rest = log.since(first[-1].id)
    assert [e.id for e in rest] == list(range(5, 11))
    assert [e.data["n"] for e in first + rest] == list(range(10))
    assert log.since(10) == []


def test_overflow_drops_oldest_and_counts_what_a_client_missed() -> None:
    log = EventLog(capacity=5, clock=Clock())
    for i in range(12):
        log.emit("X", n=i)
    got = log.since(0)
    assert [e.id for e in got] == [8, 9, 10, 11, 12]  # the jump from 0 to 8 shows the gap
    st = log.statistics()
    assert (st.emitted, st.held, st.oldest_id, st.missed) == (12, 5, 8, 7)


def test_filtering_by_type() -> None:
    log = EventLog(clock=Clock())
    log.emit("A")
    log.emit("B")
    log.emit("A")
    assert [e.id for e in log.since(0, frozenset({"A"}))] == [1, 3]
    assert [e.id for e in log.since(1, frozenset({"B", "A"}))] == [2, 3]


def test_wait_returns_empty_list_on_timeout_and_wakes_on_emit() -> None:
    async def main() -> None:
        log = EventLog(clock=Clock())
        assert await log.wait(0, timeout=0.05) == []
        waiter = asyncio.ensure_future(log.wait(0, frozenset({"B"}), timeout=30))
        await asyncio.sleep(0)
        log.emit("A")  # not matching: the waiter goes on waiting
        await asyncio.sleep(0.01)
        assert not waiter.done()
        log.emit("B", x=1)
        got = await asyncio.wait_for(waiter, 5)
        assert [(e.id, e.type) for e in got] == [(2, "B")]
        assert log.statistics().waiters == 0

    asyncio.run(main())


def test_emit_from_a_worker_thread_wakes_the_loop() -> None:
    async def main() -> None:
        log = EventLog(clock=Clock())
        waiter = asyncio.ensure_future(log.wait(0, timeout=30))
        await asyncio.sleep(0)
        t = threading.Thread(target=lambda: log.emit("FolderScanProgress", done=1, total=2))
        t.start()
        got = await asyncio.wait_for(waiter, 5)
        t.join()
        assert got[0].type == "FolderScanProgress"

    asyncio.run(main())


def test_emit_never_waits_for_waiters() -> None:
    """Hundreds of waiters that never run again (a stuck client's handler): emit stays cheap."""

    async def main() -> None:
        log = EventLog(clock=Clock())
        waiters = [asyncio.ensure_future(log.wait(0, timeout=30)) for _ in range(500)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        for i in range(1000):
            log.emit("X", n=i)
        assert time.perf_counter() - t0 < 2.0  # generous: no awaiting, no writing inside emit
        done = await asyncio.gather(*waiters)
        assert all(d and d[0].id == 1 for d in done)

    asyncio.run(main())


def test_progress_reporter_is_throttled_and_keeps_the_last() -> None:
    clock = Clock()
    log = EventLog(clock=clock)
    report = log.progress("FolderScanProgress", folder="f")
    for done in range(0, 100, 10):
        report(done, 100)
        clock.t += 0.1
    report(100, 100)
    got = [e.data["done"] for e in log.since(0)]
    assert got[0] == 0 and got[-1] == 100 and len(got) <= 4


def test_change_helpers_report_conflicts() -> None:
    log = EventLog(clock=Clock())
    f = lambda name, deleted=False: SimpleNamespace(name=name, deleted=deleted, type=0)  # noqa: E731
    log.changes("f1", [f("a.txt"), f("d/b.sync-conflict-20250101-101010-ABCDEFG.txt")])
    log.changes("f1", [f("d/b.sync-conflict-20250101-101010-ABCDEFG.txt", True)])
    log.changes("f1", [f(f"n{i}") for i in range(500)], device="DEV")
    types = [(e.type, e.data.get("item")) for e in log.since(0)]
    assert types == [
        (ev.LOCAL_CHANGE, None),
        (ev.CONFLICT_CREATED, "d/b.sync-conflict-20250101-101010-ABCDEFG.txt"),
        (ev.LOCAL_CHANGE, None),
        (ev.CONFLICT_RESOLVED, "d/b.sync-conflict-20250101-101010-ABCDEFG.txt"),
        (ev.REMOTE_CHANGE, None),
    ]
    last = log.since(4)[0].data
    assert last["count"] == 500 and len(last["items"]) == ev.MAX_ITEMS_PER_EVENT
    assert original_of("d/b.sync-conflict-20250101-101010-ABCDEFG.txt") == "d/b.txt"
    assert original_of("Makefile.sync-conflict-20250101-101010-ABCDEFG") == "Makefile"


# --- the endpoint of a real daemon -----------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("events")
    with cluster(root, "a") as (a,):
        a.start()
        folder = root / "f"
        folder.mkdir()
        a.syncer("share", str(folder), "--id", "f1", check=True)
        yield a, folder


def test_endpoint_since_timeout_and_filter(node) -> None:  # type: ignore[no-untyped-def]
    a, folder = node
    api = Api(a)
    everything = api.json("GET", "/rest/events?since=0&timeout=0")
    ids = [e["id"] for e in everything]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # gap-free
    assert {"Starting", "FolderScanned"} <= {e["type"] for e in everything}
    last = ids[-1]
    t0 = time.monotonic()
    assert api.json("GET", f"/rest/events?since={last + 1000}&timeout=0.5") == []  # nothing newer: empty on timeout
    assert time.monotonic() - t0 >= 0.4
    # a long poll filtered to scans returns as soon as a file change has been scanned
    result: dict[str, object] = {}
    t = threading.Thread(target=lambda: result.update(got=api.json("GET", f"/rest/events?since={last}&timeout=30&events=LocalChangeDetected")))
    t.start()
    (folder / "new.txt").write_text("x")
    a.syncer("scan", "f1", check=True)
    t.join(40)
    got = result["got"]
    assert isinstance(got, list) and got and {e["type"] for e in got} == {"LocalChangeDetected"}
    assert got[0]["data"]["items"][0]["name"] == "new.txt"
    # resuming from the last id returns what came after, without repeats
    later = api.json("GET", f"/rest/events?since={got[-1]['id']}&timeout=0")
    assert all(e["id"] > got[-1]["id"] for e in later)
    assert api.request("GET", "/rest/events?events=NoSuchEvent")[0] == 400


def test_a_client_that_never_reads_does_not_block_the_daemon(node) -> None:  # type: ignore[no-untyped-def]
    a, folder = node
    api = Api(a)
    host, port = urllib.parse.urlsplit(api.address).hostname, urllib.parse.urlsplit(api.address).port
    stuck = []
    # clients with tiny receive windows that ask for the whole buffer, pipelined, and never read
    for _ in range(4):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.connect((host, port))
        req = f"GET /rest/events?since=0&timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.token}\r\n\r\n"
        s.sendall(req.encode() * 50)
        stuck.append(s)
    try:
        # meanwhile the daemon goes on: many events, API answers, a scan
        for i in range(200):
            (folder / f"many-{i}.txt").write_text(str(i))
        t0 = time.monotonic()
        a.syncer("scan", "f1", check=True)
        wait_until(lambda: api.json("GET", "/rest/folders")[0]["local_files"] >= 200, 30, "scan recorded")
        for _ in range(20):
            assert api.json("GET", "/rest/ping") == {"ping": "pong"}
        assert time.monotonic() - t0 < 20
        fresh = api.json("GET", "/rest/events?since=0&timeout=0&events=LocalChangeDetected")
        assert any(e["data"]["count"] >= 1 for e in fresh)
    finally:
        for s in stuck:
            s.close()

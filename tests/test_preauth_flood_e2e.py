"""A real daemon under a flood of idle, never-authenticated TCP connections (issue 10: "1,100 idle
pre-TLS TCP connections cost 636 MB and EMFILE"): memory and descriptors stay bounded, the
control API answers, and a paired device connects and syncs in the middle of the flood."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import cluster, wait_until
from tests.syncfix import share, wait_same

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]
FID = "flooded"
FLOOD = 1100
SOURCES = 110  # 127.0.1.1 .. 127.0.1.110, ten connections each
RSS_LIMIT_KB = 200 * 1024


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


@contextlib.contextmanager
def lowered_soft_limit(soft: int) -> Iterator[None]:
    """Children started meanwhile inherit a low soft limit (as on many desktops)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_connection_flood_keeps_the_daemon_bounded_and_serving(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < FLOOD + 200:
        pytest.skip(f"the test itself needs {FLOOD + 200} descriptors (hard limit {hard})")
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        (da / "during-the-flood.bin").write_bytes(os.urandom(2 << 20))
        share(a, da, FID)
        share(b, db_, FID)
        with lowered_soft_limit(1024):
            b.start()
        assert b.proc is not None
        pid = b.proc.pid
        # raised to the hard limit at daemon start
        assert open_files_limit(pid)[0] == open_files_limit(pid)[1]
        rss_before = vm_rss_kb(pid)
        port = int(b.listen_url().rsplit(":", 1)[1])

        flood: list[socket.socket] = []
        try:
            for i in range(FLOOD):  # bounded: FLOOD idle connections, nothing ever sent
                s = socket.socket()
                s.bind((f"127.0.1.{1 + i % SOURCES}", 0))
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                s.setblocking(False)
                flood.append(s)
            # the daemon holds at most its pre-auth cap and closed the rest at once
            wait_until(lambda: sum(map(closed_by_peer, flood)) >= FLOOD - 128, 30, "flood connections refused")
            rss_flood = vm_rss_kb(pid)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            assert rss_flood < RSS_LIMIT_KB, (rss_before, rss_flood)
            assert fds < 128 + 150, fds
            assert b.status()["device_id"] == b.device_id  # the control API answers
            assert "pre-auth limits reached" in b.log_text()

            # a paired device gets in while the flood connections are still open
            b.pair(a, address=False)
            a.start()
            a.pair(b)
            wait_same(da, db_, 60, "sync in the middle of the flood")
            assert b.device(a)["connected"]
            rss_after = vm_rss_kb(pid)
            print(f"VmRSS of the daemon: {rss_before} kB before, {rss_flood} kB under {FLOOD} "
                  f"idle connections, {rss_after} kB after syncing; {fds} descriptors")
            assert rss_after < RSS_LIMIT_KB
        finally:
            for s in flood:
                s.close()

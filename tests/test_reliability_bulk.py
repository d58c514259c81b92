"""Reliability: both devices upload at once. Each sends the other 2 x 256 MiB in one shared
folder, over TCP and over QUIC; both must finish (answering requests inside the read loop let
each side block writing pieces while the other did the same)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.daemons import Node, cluster, wait_until
from tests.syncfix import folder_status, share, transfer, tree

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
FID = "bulk-1234"
SIZE = 256 << 20
STALL_S = 20.0  # no byte moving either way for this long: stuck
DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four 256 MiB files of random data, written once for both transports (hard-linked into
    each test's folders: senders only read them)."""
    d = tmp_path_factory.mktemp("bulk-payload")
    out = {}
    for name in ("a1.bin", "a2.bin", "b1.bin", "b2.bin"):
        with open(d / name, "wb") as f:
            for _ in range(SIZE >> 24):
                f.write(os.urandom(16 << 20))
        out[name] = d / name
    return out


def _moved(a: Node, b: Node) -> int:
    return transfer(a, b, FID)["bytes_in"] + transfer(b, a, FID)["bytes_in"]


class Stalled(Exception):
    """Not an AssertionError: wait_until must not keep polling past it."""


def _done(a: Node, b: Node, da: Path, db_: Path) -> bool:
    for n in (a, b):
        st = folder_status(n, FID)
        if st["need_files"] or st["state"] != "idle":
            return False
    names = ("a1.bin", "a2.bin", "b1.bin", "b2.bin")
    return all((d / x).is_file() and (d / x).stat().st_size == SIZE for d in (da, db_) for x in names)


@pytest.mark.parametrize("scheme", ["tcp", "quic"])
def test_both_ways_bulk_finishes(tmp_path, payload, scheme):
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        db_.mkdir()
        for name, src in payload.items():
            os.link(src, (da if name.startswith("a") else db_) / name)
        share(a, da, FID)
        share(b, db_, FID)
        listen = [f"{scheme}://127.0.0.1:0"]
        a.start(listen=listen)
        b.start(listen=listen)
        for x, y in ((a, b), (b, a)):
            x.syncer("pair", y.device_id, "--name", y.name, "--address", y.listen_url(scheme), check=True)
        wait_until(lambda: a.connected_to(b) and b.connected_to(a), what=f"connected over {scheme}")
        assert a.device(b)["transport"].startswith(scheme), a.device(b)

        # finished, or fail as soon as nothing has moved for STALL_S (a deadlock stalls for good)
        start = time.monotonic()
        last = [-1, start]

        def done_or_moving() -> bool:
            now, moved = time.monotonic(), _moved(a, b)
            if moved != last[0]:
                last[:] = [moved, now]
            elif now - last[1] > STALL_S:
                raise Stalled(
                    f"stalled over {scheme}: nothing moved for {STALL_S:.0f}s after {moved >> 20} MiB of "
                    f"{4 * SIZE >> 20} (a<-b {transfer(a, b, FID)['bytes_in'] >> 20} MiB, "
                    f"b<-a {transfer(b, a, FID)['bytes_in'] >> 20} MiB)"
                )
            return _done(a, b, da, db_)

        wait_until(done_or_moving, DEADLINE_S, f"both directions done over {scheme}")
        elapsed = time.monotonic() - start
        assert tree(da) == tree(db_)
        # each side fetched the other's files from the other (nothing was local)
        assert transfer(a, b, FID)["bytes_in"] >= 2 * SIZE and transfer(b, a, FID)["bytes_in"] >= 2 * SIZE
        print(f"{scheme}: 2 x 2 x 256 MiB both ways in {elapsed:.1f}s")

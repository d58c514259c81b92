"""A hostile paired peer against the engine's bounds: numbers beyond what SQLite stores,
availability floods, index messages cut by size. Real daemon, real protocol (tests/hostile.py)."""

from __future__ import annotations

import os
import re

import pytest

from syncer.index.db import LOCAL
from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.model.folder import INDEX_MESSAGE_BYTES, _cut
from syncer.wire import Bitfield, Have, Index, frames
from syncer.wire.frames import encode
from tests.daemons import cluster, wait_until
from tests.hostile import HostilePeer, file_entry
from tests.syncfix import folder_status, share

pytestmark = pytest.mark.e2e
FID = "shared-1"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_out_of_range_numbers_are_refused_per_entry_and_the_rest_syncs(tmp_path):
    peer = HostilePeer(tmp_path)
    with cluster(tmp_path, "b") as (b,):
        dest = tmp_path / "B"
        share(b, dest, FID)
        b.syncer("pair", peer.device_id, "--name", "evil", check=True)
        b.start()
        good = os.urandom(5000)
        v = [(peer.short, 1)]
        entries = [
            file_entry("innocent.txt", good, v),
            file_entry("mtime.bin", b"x", v, mtime_ns=1 << 63),
            file_entry("counter.bin", b"y", [(peer.short, 1 << 63)]),
            file_entry("seq.bin", b"z", v, sequence=1 << 63),
            file_entry("perms.bin", b"w", v, permissions=-1),
        ]
        with peer.connect(b.listen_url()):
            peer.share(FID, b.device_id)
            peer.serve({"innocent.txt": good, "mtime.bin": b"x", "counter.bin": b"y", "seq.bin": b"z", "perms.bin": b"w"})
            peer.send(Index(FID, entries))
            wait_until(lambda: (dest / "innocent.txt").exists() and (dest / "innocent.txt").read_bytes() == good, 60, "the innocent file")
            # the next round trip proves the daemon digested everything before it
            extra = os.urandom(100)
            peer.serve({"later.txt": extra})
            peer.send(Index(FID, [file_entry("later.txt", extra, [(peer.short, 2)], sequence=2)]))
            wait_until(lambda: (dest / "later.txt").exists(), 60, "a later file")
        names = sorted(p.name for p in dest.iterdir())
        assert names == [".syncer", "innocent.txt", "later.txt"]  # nothing refused got in, no conflict copies
        # the need is updated right after the rename: poll for it
        st = wait_until(lambda: (s := folder_status(b, FID))["need_files"] == 0 and s, 30, "nothing needed")
        assert st["file_error_count"] == 0
        log = b.log_text()
        assert "Traceback" not in log and "OverflowError" not in log
        assert log.count("ignoring") <= 4  # one line per refused entry, no storm
    peer.shutdown()


def test_bitfield_and_have_floods_stay_bounded(tmp_path):
    """Four 1 MiB bitfields (8 M blocks each) and 20,000 haves for names that are not being
    downloaded: dropped on arrival, no per-message task, memory flat, the daemon answers."""
    peer = HostilePeer(tmp_path)
    with cluster(tmp_path, "b") as (b,):
        dest = tmp_path / "B"
        share(b, dest, FID)
        b.syncer("pair", peer.device_id, "--name", "evil", check=True)
        b.start()
        pid = b.proc.pid
        with peer.connect(b.listen_url()):
            peer.share(FID, b.device_id)
            wait_until(lambda: b.device_by_id(peer.device_id)["connected"], 30, "the peer connected")
            before = rss_kib(pid)
            n = (8 << 20) - 8192  # just below the 1 MiB control-frame limit
            for i in range(4):
                peer.send(Bitfield(FID, f"nonexistent-{i}", [(peer.short, 1)], n, b"\xff" * (n // 8)))
            haves = [Have(FID, f"ghost-{i}", [(peer.short, 1)], i) for i in range(20_000)]
            for i in range(0, len(haves), 2000):
                peer.send(*haves[i : i + 2000])
            # still serving its API and this peer; then a real file still syncs
            content = os.urandom(300_000)
            peer.serve({"real.bin": content})
            peer.send(Index(FID, [file_entry("real.bin", content, [(peer.short, 1)])]))
            wait_until(lambda: (dest / "real.bin").exists() and (dest / "real.bin").read_bytes() == content, 60, "a real file after the flood")
            after = rss_kib(pid)
        assert after - before < 64 * 1024, f"RSS grew by {(after - before) // 1024} MiB"
        assert "Traceback" not in b.log_text()
    peer.shutdown()


def test_index_of_big_files_is_cut_below_the_frame_limit():
    """1,000 files of 256 MiB (2,048 block hashes each): the index goes out as several messages,
    each well below the frame limit (it used to be one message that could not be encoded)."""
    blocks = tuple(os.urandom(32) for _ in range(2048))
    rows = [
        FileInfo(f"video-{i:04d}.mkv", FileType.FILE, 256 << 20, 1, 0o644, 128 << 10, blocks, "", VersionVector(((1, 1),)), i + 1, False, 1)
        for i in range(1000)
    ]
    batches = _cut(rows)
    assert sum(len(b) for b in batches) == 1000 and len(batches) > 1
    for batch in batches:
        size = len(encode(Index(FID, batch)))
        assert size <= INDEX_MESSAGE_BYTES * 1.1 < frames.MAX_INDEX_FRAME
    assert LOCAL  # the rows are what the local index holds

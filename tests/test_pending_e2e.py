"""pending.json under hostile input (issue 10: "240 offered folders with 4,000-char labels rewrite
pending.json 240 times on the loop"): labels, names and ids are bounded and checked, writes are
batched (at most one per second, and flushed on shutdown); plus the store's rules in a unit test."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from syncer.deviceid import DeviceId
from syncer.pending import MAX_FOLDERS, MAX_LABEL, PendingStore
from syncer.wire import ClusterConfig, DeviceSummary, FolderSummary
from tests.daemons import cluster, wait_until
from tests.hostile import HostilePeer


def test_store_bounds_cleans_and_batches(tmp_path):
    now = [0.0]
    store = PendingStore(tmp_path / "pending.json", clock=lambda: now[0])

    async def main() -> None:
        for i in range(300):
            store.add_folder(f"f-{i}", "x" * 5000 + "\x1b[2J", "dev", float(i))
        store.add_folder("../../etc", "bad id", "dev", 1.0)
        store.add_device("D" * 200, "tcp://1.2.3.4:5", "evil\x07name" * 20, 1.0)
        assert store.writes == 0  # nothing written yet: batched
        for _ in range(100):  # the first write is due at once (nothing written before)
            if store.writes:
                break
            await asyncio.sleep(0.01)
        assert store.writes == 1
        store.add_folder("f-late", "late", "dev", 400.0)
        now[0] = 0.5
        await asyncio.sleep(0.05)
        assert store.writes == 1  # the next one waits for the interval (0.5 s more here)
        store.flush()
        assert store.writes == 2

    asyncio.run(main())
    data = json.loads((tmp_path / "pending.json").read_text())
    assert len(data["folders"]) == MAX_FOLDERS
    assert all(len(f["label"]) <= MAX_LABEL and "\x1b" not in f["label"] for f in data["folders"])
    assert not any(f["folder_id"] == "../../etc" for f in data["folders"])
    assert len(data["devices"][0]["name"]) <= 64 and "\x07" not in data["devices"][0]["name"]
    assert (tmp_path / "pending.json").stat().st_mode & 0o777 == 0o600
    # without an event loop (the CLI) a change is written at once
    store.forget_folder("f-late")
    assert store.writes == 3


class _Writes(FileSystemEventHandler):
    """Counts completed writes of pending.json (each is a rename of its temp file over it)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def on_moved(self, event: FileSystemEvent) -> None:
        if str(event.dest_path).endswith("/pending.json"):
            with self.lock:
                self.count += 1


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_hostile_peer_offering_240_folders_with_huge_labels(tmp_path):
    peer = HostilePeer(tmp_path)
    writes = _Writes()
    observer = InotifyObserver()
    try:
        with cluster(tmp_path, "b") as (b,):
            b.syncer("pair", peer.device_id, "--name", "evil", check=True)
            b.start()
            observer.schedule(writes, str(b.home))
            observer.start()
            victim = DeviceId.parse(b.device_id).raw
            me = peer.identity.device_id.raw

            def offer(ids: range) -> ClusterConfig:
                return ClusterConfig([
                    FolderSummary(f"offered-{i:03d}", "L" * 4000, [DeviceSummary(me, 7, 0), DeviceSummary(victim, 0, 0)])
                    for i in ids
                ])

            with peer.connect(b.listen_url()):
                started = time.monotonic()
                for _ in range(2):  # 480 offers in all
                    peer.send(offer(range(0, 120)))
                    peer.send(offer(range(120, 240)))
                peer.send(ClusterConfig([FolderSummary("../../etc", "x", [DeviceSummary(me, 7, 0)])]))
                pending_file = b.home / "pending.json"

                def recorded() -> list[dict]:
                    folders = json.loads(pending_file.read_text())["folders"]
                    return folders if len(folders) == MAX_FOLDERS else []

                folders = wait_until(recorded, 30, "offered folders recorded")
                t0 = time.monotonic()
                assert b.status()["device_id"] == b.device_id  # the daemon answers meanwhile
                assert time.monotonic() - t0 < 5
                assert all(len(f["label"]) == MAX_LABEL for f in folders)
                assert not any(f["folder_id"] == "../../etc" for f in folders)
                elapsed = time.monotonic() - started
            b.stop()
        with writes.lock:
            count = writes.count
        # one write per second at most (plus the first and the one at shutdown), never one per offer
        assert 1 <= count <= elapsed + 3, (count, elapsed)
        print(f"pending.json written {count} times for 480 offers in {elapsed:.1f} s")
    finally:
        observer.stop()
        observer.join(5)
        peer.shutdown()

"""A paired peer that serves corrupt blocks: every block is verified, the peer is penalised, the
file comes from an honest peer, and nothing corrupt is ever written under the real name."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.index.version import short_id
from syncer.net.tcp import TcpTransport
from syncer.scan.blocksize import block_size_for
from syncer.wire import (
    ClusterConfig,
    Connection,
    DeviceSummary,
    FolderSummary,
    Hello,
    Index,
    MessageReceived,
    Request,
    WireFile,
)
from tests.daemons import cluster, wait_until
from tests.syncfix import share, transfer, wait_same

pytestmark = pytest.mark.e2e
FID = "shared-1"


async def corrupt_peer(identity, url: str, target_raw: bytes, wf: WireFile, stop: asyncio.Event) -> int:
    """Connects to `url`, announces `wf` and answers every request with garbage."""
    stream = await TcpTransport(identity).connect(url)
    conn = Connection()
    await stream.write(conn.send(Hello("evil", "syncer", "0.1", [])))
    await stream.write(conn.send(ClusterConfig([FolderSummary(FID, "", [
        DeviceSummary(identity.device_id.raw, 4242, wf.sequence), DeviceSummary(target_raw, 0, 0)])])))
    await stream.write(conn.send(Index(FID, [wf])))
    served = 0
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(stream.read(), 0.5)
        except TimeoutError:
            continue
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, MessageReceived) and isinstance(ev.message, Request):
                req = ev.message
                await stream.writelines(conn.send_piece(req.id, os.urandom(req.size)))
                served += 1
    stream.abort()
    return served


def test_corrupt_blocks_are_rejected_and_fetched_elsewhere(tmp_path):
    evil = load_or_create(tmp_path / "evil-cert.pem", tmp_path / "evil-key.pem")
    with cluster(tmp_path, "a", "b") as (a, b):
        da, db_ = tmp_path / "A", tmp_path / "B"
        da.mkdir()
        content = os.urandom(1024 * 1024 + 5)
        (da / "data.bin").write_bytes(content)
        share(a, da, FID)
        share(b, db_, FID)
        b.syncer("pair", str(evil.device_id), "--name", "evil", check=True)
        b.syncer("pair", a.device_id, check=True)
        b.start()
        # the evil peer announces exactly a's version of the file (so an honest source exists)
        st = os.stat(da / "data.bin")
        bs = block_size_for(len(content))
        a_short = short_id(DeviceId.parse(a.device_id))
        wf = WireFile("data.bin", 0, len(content), st.st_mtime_ns, st.st_mode & 0o7777, bs,
                      [hashlib.sha256(content[i:i + bs]).digest() for i in range(0, len(content), bs)],
                      "", [(a_short, 1)], 1, False, a_short)
        b_raw = DeviceId.parse(b.device_id).raw

        async def scenario() -> int:
            stop = asyncio.Event()
            task = asyncio.ensure_future(corrupt_peer(evil, b.listen_url(), b_raw, wf, stop))
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda: b.device_by_id(str(evil.device_id)).get("folders", {}).get(FID, {}).get("bad_blocks", 0) >= 1,
                    60,
                    "b to reject corrupt blocks",
                )
                assert not (db_ / "data.bin").exists()
            finally:
                stop.set()
            return await task

        served = asyncio.run(scenario())
        assert served >= 1
        # an honest peer appears: the file arrives intact
        a.start()
        a.pair(b)
        b.syncer("pair", a.device_id, "--address", a.listen_url(), check=True)
        wait_same(da, db_, what="file from the honest peer")
        assert (db_ / "data.bin").read_bytes() == content
        assert transfer(b, a, FID)["blocks_in"] >= 1


def test_hand_made_index_from_a_paired_peer_is_synced(tmp_path):
    """The hostile-peer harness itself: a file announced and served by hand arrives intact."""
    from tests.hostile import HostilePeer, file_entry

    peer = HostilePeer(tmp_path)
    with cluster(tmp_path, "b") as (b,):
        dest = tmp_path / "B"
        share(b, dest, FID)
        b.syncer("pair", peer.device_id, "--name", "evil", check=True)
        b.start()
        content = os.urandom(300_000)
        with peer.connect(b.listen_url()):
            peer.share(FID, b.device_id)
            peer.serve({"hello.bin": content})
            peer.send(Index(FID, [file_entry("hello.bin", content, [(peer.short, 1)])]))
            wait_until(lambda: (dest / "hello.bin").exists() and (dest / "hello.bin").read_bytes() == content, 60, "the announced file")
        assert len(peer.requests) >= 1
    peer.shutdown()

"""Hostile BitTorrent peers against a seeding session, over real loopback sockets: oversized
lengths, garbage before the handshake, request floods, metadata floods, idle connections past
the handshake deadline, a flood of connections. Each is closed or refused with bounded state,
and an honest downloader (syncer's own Torrent, in the same loop) still gets the data."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from pathlib import Path

from syncer.bt import peer as peer_mod
from syncer.bt import session as session_mod
from syncer.bt.create import build
from syncer.bt.session import BtSession
from syncer.bt.torrent import Placement, State, Torrent
from syncer.bt.wire import MAX_PEER_REQUESTS
from tests.helpers import run_syncer

PSTR = b"\x13BitTorrent protocol"


def frame(mid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the session sends until it closes the connection."""
    out = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                out += chunk
        except ConnectionResetError:  # closed with our bytes unread: a reset, just as closed
            pass
    return out


async def handshake(port: int, ih: bytes, reserved: bytes = bytes(8)) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PSTR + reserved + ih + b"-EV0001-" + os.urandom(12))
    hs = await r.readexactly(68)
    return r, w, hs


def test_hostile_peers_are_bounded_and_an_honest_one_still_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_mod, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(session_mod, "MAX_UNROUTED", 8)
    src = tmp_path / "pub"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(600_000))
    info, _ = build(src, piece_length=32768)
    ih = info.info_hash

    async def main() -> None:
        seeder = BtSession("127.0.0.1", 0)
        _, port = await seeder.start()
        t = seeder.add(Torrent(seeder, ih, Placement(tmp_path, top="pub", complete=True), info=info, use_dht=False))
        try:
            await asyncio.wait_for(_until(lambda: t.state is State.SEEDING), 10)

            # 1. garbage instead of a handshake: closed at once, nothing sent back
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(os.urandom(1 << 20))
            assert await closed(r) == b""
            w.close()

            # 2. an unknown info-hash: closed without our handshake
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(PSTR + bytes(8) + os.urandom(20) + os.urandom(20))
            assert await closed(r) == b""

            # 3. a 4 GiB length prefix after the handshake
            r, w, hs = await handshake(port, ih)
            assert hs[28:48] == ih
            w.write(b"\xff\xff\xff\xff")
            await closed(r)

            # 4. a request flood while choked (no fast extension): dropped, nothing queued
            r, w, _ = await handshake(port, ih)
            w.write(b"".join(frame(6, struct.pack(">III", i % info.num_pieces, 0, 16)) for i in range(2000)))
            await w.drain()
            await asyncio.sleep(0.2)  # let the session read it all; the bound is checked below
            link = next(x for x in t.links if x.conn.peer_handshake and x.conn.peer_handshake.peer_id.startswith(b"-EV"))
            assert link.conn.peer_requests == set() and not link.uploads and not link.closed

            # 5. interested, unchoked, then more requests than allowed pending: dropped peer
            w.write(frame(2))
            await asyncio.wait_for(_until(lambda: not link.conn.am_choking), 5)
            w.write(b"".join(frame(6, struct.pack(">III", i % info.num_pieces, (i // info.num_pieces) * 16 % 32768, 16)) for i in range(MAX_PEER_REQUESTS * 3)))
            data = await closed(r)
            assert len(data) < (MAX_PEER_REQUESTS + 50) * (13 + 16) + 4096  # never more than the allowed pending were served
            assert link.closed and "requests pending" in link.close_reason

            # 6. a metadata request flood over the extension protocol: rejects past a small limit
            r, w, hs = await handshake(port, ih, reserved=b"\0\0\0\0\0\x10\0\0")
            assert hs[25] & 0x10
            w.write(frame(20, b"\x00d1:md11:ut_metadatai5eee"))
            w.write(b"".join(frame(20, b"\x02d8:msg_typei0e5:piecei0ee") for _ in range(200)))
            await w.drain()
            got = b""
            async with asyncio.timeout(5):
                while got.count(b"msg_typei1e") + got.count(b"msg_typei2e") < 200:
                    got += await r.read(65536)
            assert 0 < got.count(b"msg_typei1e") <= 4 * 3 + 8 and got.count(b"msg_typei2e") >= 200 - 20
            w.close()

            # 7. connections that never handshake: closed at the deadline, at most MAX_UNROUTED kept
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
            results = await asyncio.gather(*(closed(r, 5) for r, _ in idle))
            assert results == [b""] * 12 and len(seeder._unrouted) == 0

            # an honest downloader (syncer's own, through the real socket) still gets everything
            leech = BtSession("127.0.0.1", 0)
            await leech.start()
            dl = tmp_path / "dl"
            dl.mkdir()
            lt = leech.add(Torrent(leech, ih, Placement(dl), trackers=(), peers=(("127.0.0.1", port),), use_dht=False, seed=False))
            await asyncio.wait_for(lt.complete.wait(), 20)
            assert lt.state is State.DONE and lt.error == ""
            assert hashlib.sha1((dl / "pub" / "f.bin").read_bytes()).digest() == hashlib.sha1((src / "f.bin").read_bytes()).digest()
            await leech.stop()
        finally:
            await seeder.stop()

    asyncio.run(main())


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.02)  # polling a condition of the same loop; callers bound it


def test_bad_input_on_the_command_line_is_one_clear_line(tmp_path: Path):
    home = tmp_path / "home"
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infoi1ee")
    for args, words in [  # (the messages themselves are unit-tested; this is the CLI path)
        (("get", "magnet:?xt=urn:btih:nothex"), "40 hex"),
        (("get", str(tmp_path)), "cannot read"),
        (("publish", str(tmp_path), "--tracker", "udp://x:1"), "http(s)"),
        (("unpublish", "nothing"), "no publication matches"),
    ]:
        proc = run_syncer(home, *args)
        assert proc.returncode == 1 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    proc = run_syncer(home, "get", str(tmp_path / "bad.torrent"))
    assert proc.returncode == 1 and "no info dictionary" in proc.stderr
    # --files that match nothing: said at once (the .torrent holds the file list), nothing written
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "a.txt").write_text("a")
    tfile = tmp_path / "pub.torrent"
    run_syncer(home, "publish", str(pub), "--torrent-out", str(tfile), check=True)
    dl = tmp_path / "dl"
    dl.mkdir()
    proc = run_syncer(home, "get", str(tfile), "--to", str(dl), "--files", "*.mkv")
    assert proc.returncode == 1 and "--files matched none of the torrent's files (e.g. a.txt)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(dl.iterdir()) == []

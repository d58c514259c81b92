"""Protocol throughput: bulk Piece frames through the daemon's session stack (PeerSession over
TLS 1.3 over TCP: asyncio, wire framing, request/response pipelining, one write per answered
request, requests refilled in batches as the puller does) against a bare TLS stream on the same
transport, alternated over several rounds; plus in-process frame encode/decode rates.

python -m bench.wire [--mib N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.net.tcp import TcpTransport
from syncer.peer.session import PeerSession
from syncer.wire import FrameDecoder, Message, Piece, Request, encode
from syncer.wire.frames import encode_piece

BLOCK = 256 << 10
WINDOW = 128  # x BLOCK = 32 MiB, the puller's per-peer pipeline (PEER_PIPELINE_BYTES)


def in_process(mib: int) -> None:
    for size in (128 << 10, 1 << 20):
        data = os.urandom(size)
        n = (mib << 20) // size
        dec = FrameDecoder()
        t = time.perf_counter()
        for i in range(n):
            parts = encode_piece(i, data)
            dec.feed(parts[0])
            out = dec.feed(parts[1])
            assert len(out) == 1
        dt = time.perf_counter() - t
        print(f"in-process Piece {size >> 10} KiB encode+decode: {n * size / dt / 1e9:.2f} GB/s")
    req = Request(1, "folder", "some/file/name.bin", 5, 5 * BLOCK, BLOCK, b"h" * 32)
    frame = encode(req)
    dec = FrameDecoder()
    t = time.perf_counter()
    for _ in range(100_000):
        encode(req)
        dec.feed(frame)
    print(f"in-process Request encode+decode: {100_000 / (time.perf_counter() - t):,.0f}/s")


class _Server:
    """Answers every Request with a Piece, as the daemon's block server does (queued; the
    session's writer sends it)."""

    def __init__(self, payload: bytes, total: int) -> None:
        self.payload, self.left = payload, total

    def on_message(self, session: PeerSession, msg: Message) -> None:
        if isinstance(msg, Request):
            session.send_piece(msg.id, self.payload)
            self.left -= len(self.payload)


class _Client:
    """Keeps WINDOW requests in flight like the puller: refilled once below 3/4, in one write."""

    def __init__(self, session: PeerSession, total: int) -> None:
        self.session, self.total = session, total
        self.got = self.inflight = 0
        self.next_id, self.blocks = 1, total // BLOCK
        self.done = asyncio.Event()

    def refill(self) -> None:
        reqs: list[Message] = []
        while self.inflight < WINDOW and self.next_id <= self.blocks:
            reqs.append(Request(self.next_id, "f", "x", self.next_id, 0, BLOCK, b"h" * 32))
            self.next_id += 1
            self.inflight += 1
        if reqs:
            self.session.send_many(reqs)

    def on_message(self, session: PeerSession, msg: Message) -> None:
        if isinstance(msg, Piece):
            self.got += len(msg.data)
            self.inflight -= 1
            if self.got >= self.total:
                self.done.set()
            elif self.inflight * 4 < WINDOW * 3:
                self.refill()


def _server(home: str, mode: str, q: mp.Queue, total: int) -> None:
    ident = load_or_create(Path(home) / "b-cert.pem", Path(home) / "b-key.pem")

    async def main() -> None:
        done = asyncio.Event()
        payload = os.urandom(BLOCK)

        async def handler(stream):  # type: ignore[no-untyped-def]
            if mode == "bare":
                sent = 0
                while sent < total:
                    await stream.write(payload)
                    sent += len(payload)
                await stream.close()
            else:
                session = PeerSession(stream, DeviceId(b"b" * 32), "b", outbound=False)
                session.handler = _Server(payload, total)
                await session.handshake()
                await session.run()  # until the client hangs up
            done.set()

        listener = await TcpTransport(ident).listen("tcp://127.0.0.1:0", handler)
        q.put(listener.url)
        await done.wait()
        await listener.close()

    asyncio.run(main())


async def _client(home: str, url: str, mode: str, total: int) -> float:
    ident = load_or_create(Path(home) / "a-cert.pem", Path(home) / "a-key.pem")
    stream = await TcpTransport(ident).connect(url)
    t = time.perf_counter()
    got = 0
    if mode == "bare":
        while got < total:
            data = await stream.read()
            if not data:
                break
            got += len(data)
    else:
        session = PeerSession(stream, DeviceId(b"a" * 32), "a", outbound=True)
        client = _Client(session, total)
        session.handler = client
        await session.handshake()
        runner = asyncio.ensure_future(session.run())
        client.refill()
        await asyncio.wait(
            [runner, asyncio.ensure_future(client.done.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        got = client.got
        runner.cancel()
    dt = time.perf_counter() - t
    stream.abort()
    assert got >= total, (got, total)
    return total / dt


def over_tls(mib: int, rounds: int) -> None:
    total = mib << 20
    home = tempfile.mkdtemp(prefix="syncer-bench-wire-")
    results: dict[str, list[float]] = {"bare": [], "protocol": []}
    # alternated over several rounds: on this VM a single run of either varies by +-20 %
    try:
        for _ in range(rounds):
            for mode in ("bare", "protocol"):
                q: mp.Queue = mp.Queue()
                p = mp.Process(target=_server, args=(home, mode, q, total))
                p.start()
                try:
                    url = q.get(timeout=30)
                    results[mode].append(asyncio.run(_client(home, url, mode, total)))
                finally:
                    p.join(30)
                    if p.is_alive():
                        p.kill()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    bare, proto = statistics.median(results["bare"]), statistics.median(results["protocol"])

    def spread(rates: list[float]) -> str:
        return f"{min(rates) / 1e6:.0f}-{max(rates) / 1e6:.0f}"

    print(
        f"bare TLS 1.3 stream (asyncio, loopback, sender in another process): median {bare / 1e6:.0f} MB/s ({spread(results['bare'])}, {rounds} runs)"
    )
    print(
        f"syncer sessions, 256 KiB pieces, {WINDOW} requests in flight:      median {proto / 1e6:.0f} MB/s ({spread(results['protocol'])})"
    )
    print(f"protocol layer cost (medians): {100 * (1 - proto / bare):.1f} % (goal < 20 %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    in_process(min(args.mib, 512))
    over_tls(args.mib, args.rounds)


if __name__ == "__main__":
    main()

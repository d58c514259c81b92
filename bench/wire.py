"""Protocol throughput: bulk Piece frames through the real session stack (TLS 1.3 over TCP,
asyncio, wire framing, request/response pipelining) against a bare TLS stream on the same
transport, in the same run; plus in-process frame encode/decode rates.

python -m bench.wire [--mib N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from syncer.identity import load_or_create
from syncer.net.tcp import TcpTransport
from syncer.session import ALIGNED_FRAME_LIMIT
from syncer.wire import Connection, FrameDecoder, Hello, MessageReceived, Piece, Request, encode
from syncer.wire.frames import encode_piece

BLOCK = 256 << 10
WINDOW = 128


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
            else:
                stream.align_reads(ALIGNED_FRAME_LIMIT)  # as PeerSession does
                conn = Connection()
                await stream.write(conn.send(Hello("b", "syncer", "bench")))
                served = 0
                while served < total:
                    data = await stream.read()
                    if not data:
                        break
                    out: list = []
                    for ev in conn.receive_data(data):
                        if isinstance(ev, MessageReceived) and isinstance(ev.message, Request):
                            out += conn.send_piece(ev.message.id, payload)
                            served += BLOCK
                    if out:
                        await stream.writelines(out)
            await stream.close()
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
        stream.align_reads(ALIGNED_FRAME_LIMIT)
        conn = Connection()
        await stream.write(conn.send(Hello("a", "syncer", "bench")))
        next_id, blocks = 1, total // BLOCK
        inflight = 0
        while got < total:
            reqs = []
            while inflight < WINDOW and next_id <= blocks:
                reqs.append(conn.send(Request(next_id, "f", "x", next_id, 0, BLOCK, b"h" * 32)))
                next_id += 1
                inflight += 1
            if reqs:
                await stream.write(b"".join(reqs))
            data = await stream.read()
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, MessageReceived) and isinstance(ev.message, Piece):
                    got += len(ev.message.data)
                    inflight -= 1
    dt = time.perf_counter() - t
    stream.abort()
    assert got >= total, (got, total)
    return total / dt


def over_tls(mib: int) -> None:
    total = mib << 20
    home = tempfile.mkdtemp(prefix="syncer-bench-wire-")
    results = {}
    for mode in ("bare", "protocol", "bare", "protocol"):
        q: mp.Queue = mp.Queue()
        p = mp.Process(target=_server, args=(home, mode, q, total))
        p.start()
        try:
            url = q.get(timeout=30)
            rate = asyncio.run(_client(home, url, mode, total))
            results.setdefault(mode, []).append(rate)
        finally:
            p.join(30)
            if p.is_alive():
                p.kill()
    bare, proto = max(results["bare"]), max(results["protocol"])
    print(f"bare TLS 1.3 stream (asyncio, loopback, sender in another process): {bare / 1e6:.0f} MB/s")
    print(f"syncer protocol, 256 KiB pieces, {WINDOW} requests in flight:     {proto / 1e6:.0f} MB/s")
    print(f"protocol layer cost: {100 * (1 - proto / bare):.1f} % (goal < 20 %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    in_process(min(args.mib, 512))
    over_tls(args.mib)


if __name__ == "__main__":
    main()

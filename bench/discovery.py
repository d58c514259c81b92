"""Discovery servers under load, each server in its own process (one core), the load generator
in this one: tracker announces/s (BEP 3 GET and syncer JSON POST, pipelined over keep-alive
connections) and DHT get_peers/s answered (UDP, bounded window of outstanding queries).

python -m bench.discovery [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

from syncer.codec import bencode
from syncer.deviceid import DeviceId
from syncer.discovery.dht import krpc

CONNECTIONS = 16
PIPELINE = 32
UDP_WINDOW = 256


def start(*args: str) -> tuple[subprocess.Popen[str], int]:
    exe = shutil.which("syncer") or sys.executable
    argv = [exe, *args] if exe.endswith("syncer") else [exe, "-m", "syncer", *args]
    p = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()  # type: ignore[union-attr]
    return p, int(line.rsplit(":", 1)[1])


def get_request(i: int, port: int) -> bytes:
    ih = (i % 1000).to_bytes(20, "big")
    pid = i.to_bytes(20, "big")
    q = f"info_hash={urllib.parse.quote_from_bytes(ih)}&peer_id={urllib.parse.quote_from_bytes(pid)}&port={1024 + i % 60000}&left=0&compact=1"
    return f"GET /announce?{q} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def post_request(i: int, port: int) -> bytes:
    body = json.dumps({"info_hash": (i % 1000).to_bytes(20, "big").hex(), "device_id": str(DeviceId(i.to_bytes(32, "big"))),
                       "port": 1024 + i % 60000, "event": None}).encode()
    return (f"POST /announce HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def http_load(port: int, make, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def conn(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k * 10_000_000
        while time.monotonic() < deadline:
            writer.write(b"".join(make(i + j, port) for j in range(PIPELINE)))
            i += PIPELINE
            for _ in range(PIPELINE):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:80]
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                done += 1
        writer.close()

    t = time.monotonic()
    await asyncio.gather(*(conn(k) for k in range(CONNECTIONS)))
    return done / (time.monotonic() - t)


def udp_load(port: int, seconds: float) -> float:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    deadline = time.monotonic() + seconds
    sent = got = outstanding = 0
    me = os.urandom(20)
    t = time.monotonic()
    while time.monotonic() < deadline:
        while outstanding < UDP_WINDOW:
            q = krpc.query((sent & 0xFFFF).to_bytes(2, "big"), "get_peers", {"id": me, "info_hash": (sent % 997).to_bytes(20, "big")})
            s.sendto(q, ("127.0.0.1", port))
            sent += 1
            outstanding += 1
        try:
            data = s.recv(2048)
        except TimeoutError:
            outstanding = 0  # the rest were lost: refill the window (they are not counted)
            continue
        outstanding -= 1
        if bencode.decode(data).get(b"y") == b"r":
            got += 1
    dt = time.monotonic() - t
    s.close()
    return got / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    p, port = start("tracker", "--rate-per-ip", "1000000")
    try:
        get_rate = asyncio.run(http_load(port, get_request, args.seconds))
        post_rate = asyncio.run(http_load(port, post_request, args.seconds))
    finally:
        p.terminate()
        p.wait(10)
    print(f"tracker BEP 3 GET announces: {get_rate:,.0f}/s")
    print(f"tracker JSON POST announces: {post_rate:,.0f}/s")
    p, port = start("dht-node")
    try:
        dht_rate = udp_load(port, args.seconds)
    finally:
        p.terminate()
        p.wait(10)
    print(f"DHT get_peers answered: {dht_rate:,.0f}/s (goal >= 5,000/s each)")


if __name__ == "__main__":
    main()

"""Transport throughput on loopback: QUIC, relay (through a `syncer relay` process, end-to-end
TLS inside) and TCP+TLS for reference, in one run.

    python -m bench.nat [--mib 128]

"QUIC, 1350 B datagrams" forces the datagram size used off loopback, to show what a real
network path gets (aioquic's cost is per packet). The receiving end runs in its own process (`python -m bench.nat receiver ...`), so sender and
receiver do not share a core; for the relay there are three processes. Each figure is the best
of REPEAT transfers, timed from the first byte written to the receiver's acknowledgement of the
last; connect time is the median of CONNECTS fresh connections (TLS handshake(s) included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from syncer.identity import Identity, load_or_create
from syncer.nat.rendezvous import PunchResponder, punch_and_connect
from syncer.net import quic
from syncer.net.quic import QuicTransport
from syncer.net.tcp import TcpTransport
from syncer.net.transport import Stream
from syncer.relay.client import RelayTransport

LOOPBACK_DATAGRAM_SIZE = quic.LOOPBACK_DATAGRAM_SIZE
CHUNK = 1 << 20
REPEAT = 3
CONNECTS = 5
ACK = struct.Struct("!Q")


def _ids(d: Path) -> tuple[Identity, Identity]:
    return load_or_create(d / "a.pem", d / "a.key"), load_or_create(d / "b.pem", d / "b.key")


# receiver process --------------------------------------------------------------------------------


async def _count(stream: Stream) -> None:
    """Read one transfer (u64 length, then that many bytes) and acknowledge it with its length."""
    header = bytearray()
    while len(header) < ACK.size:
        more = await stream.read(ACK.size - len(header))
        if not more:
            return
        header += more
    want, n = ACK.unpack(header)[0], 0
    while n < want and (chunk := await stream.read()):
        n += len(chunk)
    await stream.write(ACK.pack(n))
    await stream.close()


def _small_datagrams() -> None:
    """QUIC as on a real network path: the non-loopback datagram size even on loopback."""
    quic.LOOPBACK_DATAGRAM_SIZE = quic.DEFAULT_DATAGRAM_SIZE


async def receiver(kind: str, d: Path, relay: str | None) -> None:
    _, b = _ids(d)
    if kind == "quic-small":
        _small_datagrams()
        kind = "quic"
    if kind == "tcp":
        listener = await TcpTransport(b).listen("tcp://127.0.0.1:0", _count)
        print("READY", listener.url, flush=True)
    elif kind == "quic":
        listener = await QuicTransport(b).listen("quic://127.0.0.1:0", _count)
        print("READY", listener.url, flush=True)
    elif kind == "relay":
        assert relay
        t = RelayTransport(b, relay)
        await t.register(_count)
        print("READY", relay, flush=True)
    else:
        assert relay
        r = PunchResponder(b, relay, _count, host="127.0.0.1")
        await r.start()
        print("READY", relay, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes


# sender --------------------------------------------------------------------------------------------


async def _send(stream: Stream, total: int) -> float:
    body = os.urandom(CHUNK)
    t0 = time.perf_counter()
    await stream.write(ACK.pack(total))
    for _ in range(total // CHUNK):
        await stream.write(body)
    ack = bytearray()
    while len(ack) < ACK.size:
        more = await stream.read(ACK.size - len(ack))
        if not more:
            raise RuntimeError("receiver closed early")
        ack += more
    dt = time.perf_counter() - t0
    assert ACK.unpack(ack)[0] == total, (ACK.unpack(ack)[0], total)
    await stream.close()
    return total / dt / 1e6


async def _measure(kind: str, target: str, d: Path, total: int) -> tuple[float, float]:
    a, b = _ids(d)
    if kind == "quic-small":
        _small_datagrams()
        kind = "quic"

    async def connect() -> Stream:
        if kind == "tcp":
            return await TcpTransport(a).connect(target)
        if kind == "quic":
            return await QuicTransport(a).connect(target)
        if kind == "relay":
            return await RelayTransport(a, target).connect(b.device_id)
        return await punch_and_connect(a, target, b.device_id)

    times = []
    for _ in range(CONNECTS):
        t0 = time.perf_counter()
        s = await connect()
        times.append(time.perf_counter() - t0)
        await _send(s, CHUNK)  # tiny transfer, so the receiver is done with it
    rates = [await _send(await connect(), total) for _ in range(REPEAT)]
    quic.LOOPBACK_DATAGRAM_SIZE = LOOPBACK_DATAGRAM_SIZE
    return max(rates), statistics.median(times) * 1000


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout
    for line in p.stdout:
        if line.startswith(("READY ", "relay://")):
            return p, line.split()[-1]
    raise RuntimeError(f"{argv} did not start")


def _stop(p: subprocess.Popen[str]) -> None:
    if p.stdin:
        p.stdin.close()
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", nargs="?", default="bench")
    ap.add_argument("--kind")
    ap.add_argument("--dir")
    ap.add_argument("--relay")
    ap.add_argument("--mib", type=int, default=128)
    args = ap.parse_args()
    if args.role == "receiver":
        asyncio.run(receiver(args.kind, Path(args.dir), args.relay))
        return
    total = args.mib * CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _ids(d)
        procs: list[subprocess.Popen[str]] = []
        try:
            syncer = shutil.which("syncer")
            relay_argv = [syncer] if syncer else [sys.executable, "-m", "syncer"]
            relay, relay_url = _spawn(
                [*relay_argv, "relay", "--host", "127.0.0.1", "--port", "0"],
                env=dict(os.environ, SYNCER_HOME=str(d / "relay-home")),
            )
            procs.append(relay)
            print(f"transport throughput on loopback, {args.mib} MiB one way, best of {REPEAT}; "
                  f"connect = median of {CONNECTS}")
            for kind in ("tcp", "quic", "quic-small", "relay", "punch"):
                argv = [sys.executable, "-m", "bench.nat", "receiver", "--kind", kind, "--dir", tmp]
                if kind in ("relay", "punch"):
                    argv += ["--relay", relay_url]
                p, target = _spawn(argv)
                procs.append(p)
                rate, connect_ms = asyncio.run(_measure(kind, target, d, total))
                label = {
                    "tcp": "TCP + TLS 1.3",
                    "quic": "QUIC (aioquic)",
                    "quic-small": "QUIC, 1350 B datagrams",
                    "relay": "relay (TLS in TLS)",
                    "punch": "punched QUIC",
                }[kind]
                print(f"{label:24s} {rate:7.1f} MB/s   connect {connect_ms:6.1f} ms", flush=True)
                _stop(p)
        finally:
            for p in procs:
                _stop(p)


if __name__ == "__main__":
    main()

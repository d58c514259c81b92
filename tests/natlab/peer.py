"""NAT lab driver: one peer built from the product code, run inside a lab namespace.

    python -m tests.natlab.peer respond --cert C --key K --relay URL [--streams N]
    python -m tests.natlab.peer dial --cert C --key K --relay URL --peer ID --bytes N
                                     [--relay-fallback] [--rounds R --idle S] [--keepalive S]

`respond` registers with the relay (relayed sessions) and runs a PunchResponder on the same
control connection; prints `READY {json}`, then per stream served `RESULT {json}`.
`dial` tries punch_and_connect (and the relay if that fails and --relay-fallback), then sends
`rounds` payloads of N random bytes (length-prefixed), idling S seconds between rounds; the
responder answers each with its sha256. Prints `RESULT {json}`; exit 0 when every round matched.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import struct
import sys
import time

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.nat.punch import PunchFailed
from syncer.nat.rendezvous import PunchResponder, punch_and_connect
from syncer.net.transport import Stream, TransportError
from syncer.relay.client import RelayTransport

LEN = struct.Struct("!Q")


def emit(tag: str, data: dict) -> None:
    print(f"{tag} {json.dumps(data)}", flush=True)


async def read_exactly(s: Stream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await s.read(min(1 << 20, n - len(out)))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


async def respond(args: argparse.Namespace) -> int:
    ident = load_or_create(args.cert, args.key)
    served = 0
    all_served = asyncio.Event()

    async def serve(stream: Stream) -> None:
        nonlocal served
        rounds, total = 0, 0
        digest = hashlib.sha256()
        try:
            while header := await stream.read(LEN.size):
                header += await read_exactly(stream, LEN.size - len(header))
                payload = await read_exactly(stream, LEN.unpack(header)[0])
                digest.update(payload)
                total += len(payload)
                rounds += 1
                await stream.write(hashlib.sha256(payload).digest())
        except (EOFError, ConnectionError) as e:
            emit("ERROR", {"error": str(e)})
        finally:
            await stream.close()
        emit("RESULT", {
            "peer": str(stream.peer), "transport": stream.transport, "remote": stream.remote_address,
            "rounds": rounds, "bytes": total, "sha256": digest.hexdigest(),
        })
        served += 1
        if served >= args.streams:
            all_served.set()

    relay = RelayTransport(ident, args.relay)
    await relay.register(serve)
    responder = PunchResponder(ident, args.relay, serve, relay=relay, keepalive=args.keepalive)
    await responder.start()
    emit("READY", {"device_id": str(ident.device_id), "local": list(responder.local_address)})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(all_served.wait())}
    await asyncio.wait(waiters, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await responder.close()
    await relay.close()
    return 0 if all_served.is_set() else 1


async def dial(args: argparse.Namespace) -> int:
    ident = load_or_create(args.cert, args.key)
    peer = DeviceId.parse(args.peer)
    result: dict = {"punch_ok": False}
    t0 = time.monotonic()
    stream: Stream
    try:
        stream = await punch_and_connect(
            ident, args.relay, peer, punch_duration=args.punch_seconds, keepalive=args.keepalive
        )
        result["punch_ok"] = True
    except (PunchFailed, TransportError) as e:
        result["punch_error"] = str(e)
        result["punch_s"] = time.monotonic() - t0
        if not args.relay_fallback:
            emit("RESULT", result)
            return 1
        stream = await RelayTransport(ident, args.relay).connect(peer)
    result.update(connected_s=time.monotonic() - t0, transport=stream.transport,
                  peer=str(stream.peer), remote=stream.remote_address)
    ok = True
    sent = hashlib.sha256()
    t1 = time.monotonic()
    for r in range(args.rounds):
        if r:
            await asyncio.sleep(args.idle)  # the scenario: stay silent, NAT mappings may expire
        payload = os.urandom(args.bytes)
        sent.update(payload)
        await stream.write(LEN.pack(len(payload)) + payload)
        try:
            reply = await asyncio.wait_for(read_exactly(stream, 32), args.round_timeout)
        except (TimeoutError, EOFError) as e:
            result["error"] = f"round {r}: {type(e).__name__} {e}"
            ok = False
            break
        ok = ok and reply == hashlib.sha256(payload).digest()
    result.update(transfer_s=time.monotonic() - t1, sha256=sent.hexdigest(), ok=ok)
    if ok:
        await stream.close()
    else:
        stream.abort()  # the path may be dead: do not wait for acknowledgements
    emit("RESULT", result)
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["respond", "dial"])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--relay", required=True)
    ap.add_argument("--peer")
    ap.add_argument("--bytes", type=int, default=4 << 20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--idle", type=float, default=0.0)
    ap.add_argument("--round-timeout", type=float, default=30.0)
    ap.add_argument("--punch-seconds", type=float, default=5.0)
    ap.add_argument("--keepalive", type=float, default=15.0)
    ap.add_argument("--relay-fallback", action="store_true")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    from pathlib import Path

    args.cert, args.key = Path(args.cert), Path(args.key)
    return asyncio.run(respond(args) if args.mode == "respond" else dial(args))


if __name__ == "__main__":
    sys.exit(main())

"""Conformance tests every transport must pass.

A transport module registers a pair factory in PAIR_FACTORIES: an async context manager yielding
(a_end, b_end) where a_end.peer is device b and b_end.peer is device a. test_transports.py runs
every test below against every registered factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from typing import Any

from syncer.identity import Identity
from syncer.net.transport import Stream

PairFactory = Callable[[Identity, Identity], contextlib.AbstractAsyncContextManager[tuple[Stream, Stream]]]

DEADLINE = 30.0


async def read_exactly(s: Stream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await s.read(n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


async def read_to_eof(s: Stream) -> bytes:
    out = bytearray()
    while chunk := await s.read():
        out += chunk
    return bytes(out)


async def check_peer_ids(a: Stream, b: Stream, ida: Identity, idb: Identity) -> None:
    assert a.peer == idb.device_id
    assert b.peer == ida.device_id
    assert a.transport == b.transport
    assert a.remote_address and b.remote_address


async def check_echo_both_ways(a: Stream, b: Stream, *_: Any) -> None:
    await a.write(b"hello from a")
    assert await read_exactly(b, 12) == b"hello from a"
    await b.write(b"hello from b")
    assert await read_exactly(a, 12) == b"hello from b"


async def check_bulk_concurrent(a: Stream, b: Stream, *_: Any) -> None:
    size = 8 << 20
    data_a, data_b = os.urandom(size), os.urandom(size)

    async def send(s: Stream, data: bytes) -> None:
        view = memoryview(data)
        for off in range(0, len(data), 300_000):
            await s.write(view[off : off + 300_000])

    _, _, got_b, got_a = await asyncio.gather(
        send(a, data_a), send(b, data_b), read_exactly(b, size), read_exactly(a, size)
    )
    assert hashlib.sha256(got_b).digest() == hashlib.sha256(data_a).digest()
    assert hashlib.sha256(got_a).digest() == hashlib.sha256(data_b).digest()


async def check_order_of_many_small_writes(a: Stream, b: Stream, *_: Any) -> None:
    msgs = [f"{i:05d}".encode() for i in range(2000)]
    await a.writelines(msgs[:1000])
    for m in msgs[1000:]:
        await a.write(m)
    assert await read_exactly(b, 5 * 2000) == b"".join(msgs)


async def check_big_payload_among_small_ones(a: Stream, b: Stream, *_: Any) -> None:
    # a block bigger than the transport's write slice, between a header and a trailer
    parts = [b"head", os.urandom((5 << 20) + 3), b"tail", memoryview(os.urandom(3 << 20))[1:]]
    want = b"".join(parts)
    _, got = await asyncio.gather(a.writelines(parts), read_exactly(b, len(want)))
    assert got == want


async def check_close_delivers_pending_then_eof(a: Stream, b: Stream, *_: Any) -> None:
    payload = os.urandom(1 << 20)
    await a.write(payload)
    await a.close()
    assert await read_to_eof(b) == payload
    await a.close()  # idempotent


async def check_abort_unblocks_peer(a: Stream, b: Stream, *_: Any) -> None:
    reader = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)  # let the read start waiting (no timing assumption: it just yields)
    a.abort()
    assert await reader == b""
    # writing to a dead stream fails (possibly after the buffer fills), it never hangs
    try:
        for _ in range(64):
            await b.write(b"x" * 65536)
    except (ConnectionError, OSError):
        pass


CHECKS = [
    check_peer_ids,
    check_echo_both_ways,
    check_bulk_concurrent,
    check_order_of_many_small_writes,
    check_big_payload_among_small_ones,
    check_close_delivers_pending_then_eof,
    check_abort_unblocks_peer,
]


def run_check(
    factory: PairFactory,
    check: Callable[..., Any],
    ida: Identity,
    idb: Identity,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> None:
    async def main() -> None:
        async with factory(ida, idb) as (a, b):
            # as the daemon's pairing gate does: both peers are accepted (full-size buffers)
            a.peer_accepted()
            b.peer_accepted()
            try:
                await asyncio.wait_for(check(a, b, ida, idb), DEADLINE)
            finally:
                a.abort()
                b.abort()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())

"""Relay: wire protocol, pure pairing/limits, and the server's behaviour on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.deviceid import DeviceId
from syncer.identity import Identity, load_or_create
from syncer.net.transport import Stream, TransportError
from syncer.relay import protocol as p
from syncer.relay.client import RelayTransport
from syncer.relay.rendezvous import PunchLimit, Rendezvous
from syncer.relay.server import RelayLimits, RelayServer
from syncer.relay.sessions import SessionRefused, SessionTable
from tests.transport_conformance import read_exactly, read_to_eof

A = DeviceId(bytes(range(32)))
B = DeviceId(bytes(range(1, 33)))
C = DeviceId(bytes(range(2, 34)))


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d: Path = tmp_path_factory.mktemp("relay-ids")
    return {n: load_or_create(d / f"{n}-cert.pem", d / f"{n}-key.pem") for n in ("relay", "a", "b", "c")}


# protocol -------------------------------------------------------------------------------------

ALL_MESSAGES: list[p.Message] = [
    p.Join(), p.Joined(b"c" * 16), p.Connect(A.raw), p.Invite(b"t" * 16, A.raw), p.Accept(b"t" * 16),
    p.Paired(B.raw), p.Go(), p.PunchRequest(B.raw), p.PunchPrepare(b"i" * 16, b"c" * 16),
    p.PunchInvite(b"i" * 16, A.raw), p.PunchStart(b"i" * 16, "198.18.0.1", 40001, 0), p.Ping(),
    p.Pong(), p.Error(p.NOT_REACHABLE, "nope"),
]


def test_every_message_round_trips_even_byte_by_byte() -> None:
    wire = b"".join(p.encode(msg) for msg in ALL_MESSAGES)
    dec = p.FrameDecoder()
    got = [msg for i in range(len(wire)) for msg in dec.feed(wire[i : i + 1])]
    assert got == ALL_MESSAGES


def test_frame_layout_is_length_prefixed_msgpack_array() -> None:
    assert p.encode(p.Go()) == b"\x00\x02\x91\x07"  # u16 length 2, [7]
    assert p.encode(p.Accept(b"\x01" * 16))[:5] == b"\x00\x14\x92\x05\xc4"


def test_oversized_and_malformed_frames_are_protocol_errors() -> None:
    with pytest.raises(p.RelayProtocolError, match="too large"):
        p.FrameDecoder().feed(b"\xff\xff")
    with pytest.raises(p.RelayProtocolError, match="malformed"):
        p.FrameDecoder().feed(b"\x00\x02\x91\x63")  # unknown tag 99
    with pytest.raises(p.RelayProtocolError):
        p.device_bytes(b"short")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_fuzz_raises_only_protocol_errors(data: bytes) -> None:
    try:
        p.FrameDecoder().feed(data)
    except p.RelayProtocolError:
        pass


def test_relay_url() -> None:
    u = p.RelayUrl.parse(f"relay://127.0.0.1:22067?id={A}")
    assert (u.host, u.port, u.device_id) == ("127.0.0.1", 22067, A)
    assert p.RelayUrl.parse(str(u)) == u
    assert str(p.RelayUrl.parse("relay://[::1]:5")) == "relay://[::1]:5"
    for bad in ("tcp://h:1", "relay://h", "relay://h:x", "relay://:1", f"relay://h:1?id={str(A)[:-1]}"):
        with pytest.raises(p.RelayProtocolError):
            p.RelayUrl.parse(bad)


# pure session logic -------------------------------------------------------------------------


def test_sessions_pair_only_the_invited_device_once_and_in_time() -> None:
    t = SessionTable(max_sessions=2, pending_timeout=10)
    s = t.open(A, B, now=0)
    with pytest.raises(SessionRefused, match="another device"):
        t.accept(s.token, C, now=1)
    assert t.accept(s.token, B, now=1) is s
    with pytest.raises(SessionRefused):
        t.accept(s.token, B, now=1)  # at most once
    late = t.open(A, B, now=0)
    with pytest.raises(SessionRefused, match="expired"):
        t.accept(late.token, B, now=11)
    with pytest.raises(SessionRefused) as e:
        t.open(A, C, now=0)
    assert e.value.code == p.LIMIT
    t.close(s.token)
    assert (t.active, t.pending) == (0, 1)


def test_rendezvous_pairs_fresh_binds_only() -> None:
    r = Rendezvous(max_punches=1)
    req, tgt = r.issue_cookie(A), r.issue_cookie(B)
    assert r.bind(tgt, ("198.18.0.2", 1), now=0) == []  # before the punch: stale for it
    pid = r.open_punch(req, tgt, now=1)
    with pytest.raises(PunchLimit):
        r.open_punch(req, tgt, now=1)
    assert r.bind(req, ("198.18.0.1", 2), now=2) == []  # target not fresh yet
    assert r.bind(b"unknown", ("1.2.3.4", 5), now=2) == []
    [ready] = r.bind(tgt, ("198.18.0.2", 3), now=3)
    assert (ready.punch_id, ready.requester_addr, ready.target_addr) == (pid, ("198.18.0.1", 2), ("198.18.0.2", 3))
    assert r.bind(tgt, ("198.18.0.2", 3), now=4) == []  # reported once
    pid2 = r.open_punch(req, tgt, now=5)
    r.revoke(req)
    assert r.pending == 0 and r.binding(req) is None and pid2


# server ---------------------------------------------------------------------------------------


def run(coro: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


async def _started(ident: Identity, limits: RelayLimits | None = None, cls: type[RelayServer] = RelayServer) -> RelayServer:
    server = cls(ident, limits)
    await server.start("127.0.0.1", 0)
    return server


def test_relayed_session_end_to_end(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"])
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        sa = await RelayTransport(ids["a"], server.url).connect(ids["b"].device_id)
        sb = await got.get()
        assert (sa.transport, sa.peer, sb.peer) == ("relay", ids["b"].device_id, ids["a"].device_id)
        assert sa.remote_address == f"relay://127.0.0.1:{server.port}"
        await sa.write(b"ping")
        assert await read_exactly(sb, 4) == b"ping"
        await sa.close()
        assert await read_to_eof(sb) == b""
        stats = server.statistics()
        assert stats.sessions_total == 1 and stats.control_connections == 1
        await tb.close()
        await server.close()

    run(main)


def test_relay_sees_only_ciphertext(ids: dict[str, Identity]) -> None:
    seen = bytearray()

    class Spy(RelayServer):
        async def _pipe(self, src, dst, idle):  # type: ignore[no-untyped-def]
            orig = src.reader.read

            async def read(n: int = -1) -> bytes:
                chunk = await orig(n)
                seen.extend(chunk)
                return chunk

            src.reader.read = read
            await super()._pipe(src, dst, idle)

    async def main() -> None:
        server = await _started(ids["relay"], cls=Spy)
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        sa = await RelayTransport(ids["a"], server.url).connect(ids["b"].device_id)
        sb = await got.get()
        secret = b"the plaintext the relay must never see " * 100
        await sa.write(secret)
        assert await read_exactly(sb, len(secret)) == secret
        assert len(seen) > len(secret)
        assert b"plaintext the relay" not in bytes(seen)
        # certificates travel encrypted too (TLS 1.3), so the relay cannot even see device IDs
        assert ids["a"].cert_der[-64:] not in bytes(seen)
        sa.abort()
        sb.abort()
        await tb.close()
        await server.close()

    run(main)


def test_unreachable_device_and_pinned_relay_id(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"])
        with pytest.raises(TransportError, match="not connected to this relay"):
            await RelayTransport(ids["a"], server.url).connect(ids["b"].device_id)
        wrong = f"relay://127.0.0.1:{server.port}?id={ids['c'].device_id}"
        with pytest.raises(TransportError, match="expected"):
            await RelayTransport(ids["a"], wrong).connect(ids["b"].device_id)
        await server.close()

    run(main)


def test_bad_input_closes_only_that_connection(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"])
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        ta = RelayTransport(ids["a"], server.url)
        for garbage in (b"\xff\xff" + b"x" * 100, b"\x00\x02\x91\x63", p.encode(p.Go())):
            conn = await ta.open(p.Ping())  # a valid frame, but not a valid first frame
            conn.writer.write(garbage)
            reply = await conn.read(5)
            assert isinstance(reply, p.Error) and reply.code == p.BAD_REQUEST
            assert await conn.reader.read() == b""  # closed by the relay
            conn.abort()
        # garbage on a control connection drops that control connection only
        evil = await RelayTransport(ids["c"], server.url).open(p.Join())
        assert isinstance(await evil.read(5), p.Joined)
        evil.writer.write(b"\xff\xff")
        assert isinstance(await evil.read(5), p.Error)
        evil.abort()
        sa = await ta.connect(ids["b"].device_id)
        sb = await got.get()
        await sa.write(b"still fine")
        assert await read_exactly(sb, 10) == b"still fine"
        sa.abort()
        sb.abort()
        await tb.close()
        await server.close()

    run(main)


def test_a_token_is_useless_to_other_devices(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"])
        # b's control connection, spoken by hand to see the invitation
        control = await RelayTransport(ids["b"], server.url).open(p.Join())
        assert isinstance(await control.read(5), p.Joined)
        connecting = asyncio.ensure_future(RelayTransport(ids["a"], server.url).connect(ids["b"].device_id))
        invite = await control.read(5)
        assert isinstance(invite, p.Invite) and invite.device == ids["a"].device_id.raw
        thief = await RelayTransport(ids["c"], server.url).open(p.Accept(invite.token))
        reply = await thief.read(5)
        assert isinstance(reply, p.Error) and "another device" in reply.reason
        thief.abort()
        connecting.cancel()
        control.abort()
        await server.close()

    run(main)


def test_session_limit_and_idle_timeout(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"], RelayLimits(max_sessions=1, idle_timeout=0.5))
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        ta = RelayTransport(ids["a"], server.url)
        sa = await ta.connect(ids["b"].device_id)
        sb = await got.get()
        with pytest.raises(TransportError, match="limit"):
            await ta.connect(ids["b"].device_id)
        t0 = time.monotonic()
        assert await read_to_eof(sb) == b""  # nobody sends: the relay closes the session
        assert time.monotonic() - t0 < 5
        assert await read_to_eof(sa) == b""
        assert server.statistics().active_sessions == 0
        await tb.close()
        await server.close()

    run(main)


def test_rate_cap_per_session(ids: dict[str, Identity]) -> None:
    rate = 2 << 20

    async def main() -> None:
        server = await _started(ids["relay"], RelayLimits(rate_limit=rate))
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        sa = await RelayTransport(ids["a"], server.url).connect(ids["b"].device_id)
        sb = await got.get()
        data = os.urandom(4 << 20)
        t0 = time.monotonic()
        _, received = await asyncio.gather(sa.write(data), read_exactly(sb, len(data)))
        elapsed = time.monotonic() - t0
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        # burst of `rate` bytes, then `rate` per second: 4 MiB needs at least ~1 s
        assert elapsed >= 0.9, elapsed
        sa.abort()
        sb.abort()
        await tb.close()
        await server.close()

    run(main)


def test_control_connection_reconnects_after_a_relay_restart(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = await _started(ids["relay"])
        port = server.port
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        await server.close()
        server = RelayServer(ids["relay"])
        await server.start("127.0.0.1", port)
        deadline = time.monotonic() + 10
        while server.statistics().control_connections == 0:  # poll with a deadline
            assert time.monotonic() < deadline, "control connection did not come back"
            await asyncio.wait_for(tb.registered.wait(), 10)
            await asyncio.sleep(0.05)
        sa = await RelayTransport(ids["a"], server.url).connect(ids["b"].device_id)
        sb = await got.get()
        assert sb.peer == ids["a"].device_id
        sa.abort()
        sb.abort()
        await tb.close()
        await server.close()

    run(main)

"""NAT traversal: control datagrams, punch state machine, keepalive, dialer policy, and
rendezvous + punching on loopback (the real NATs are in test_nat_lab.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.identity import Identity, load_or_create
from syncer.nat.attempts import execute
from syncer.nat.policy import Attempt, Route, UpgradePolicy, plan, should_replace
from syncer.nat.punch import PunchFailed, PunchSession, PunchState, punch
from syncer.nat.rendezvous import PunchResponder, probe, punch_and_connect
from syncer.net import udp_messages as m
from syncer.net.tcp import TcpTransport
from syncer.net.transport import Stream
from syncer.net.udp import Keepalive, UdpEndpoint
from syncer.relay.client import RelayTransport
from syncer.relay.server import RelayServer
from tests.transport_conformance import read_exactly

PID = b"p" * 16
PEER = ("198.18.0.2", 40002)


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d: Path = tmp_path_factory.mktemp("nat-ids")
    return {n: load_or_create(d / f"{n}-cert.pem", d / f"{n}-key.pem") for n in ("relay", "a", "b")}


def run(coro: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


# control datagrams ------------------------------------------------------------------------------


def test_control_datagrams_round_trip_and_demux_by_first_byte() -> None:
    for msg in (m.Probe(), m.Bind(b"c" * 16), m.Bound("198.18.0.1", 40001), m.Punch(PID, True)):
        wire = m.encode(msg)
        assert wire[0] == 0 and m.is_control(wire) and not m.is_quic(wire)
        assert m.decode(wire) == msg
    assert m.encode(m.Punch(PID, True)) == b"\x00\x93\x04\xc4\x10" + PID + b"\xc3"
    assert m.decode(b"\xc0quic long header") is None and m.is_quic(b"\xc0") and m.is_quic(b"\x40")
    assert m.decode(b"\x00" + b"\x91\x01" + b"x" * 600) is None  # too long
    assert len(m.padded(m.Probe())) == len(m.padded(m.Bind(b"c" * 16))) == m.MIN_REQUEST


@given(st.binary(max_size=80))
def test_control_decoder_never_raises(data: bytes) -> None:
    m.decode(b"\x00" + data)


# punch state machine ------------------------------------------------------------------------------


def test_punch_waits_for_start_then_sends_every_interval() -> None:
    s = PunchSession(PID, PEER, start=10.0, interval=0.05, duration=5.0)
    assert s.poll(9.0) == [] and s.state is PunchState.WAITING
    assert s.next_deadline() == 10.0
    assert s.poll(10.0) == [(m.Punch(PID, False), PEER)]
    assert s.poll(10.01) == []
    assert s.poll(10.05) == [(m.Punch(PID, False), PEER)]
    assert s.poll(12.0) == [(m.Punch(PID, False), PEER)]  # late wake-up: one packet, no burst
    assert s.next_deadline() == pytest.approx(12.05)


def test_punch_follows_the_address_a_punch_came_from() -> None:
    s = PunchSession(PID, PEER, start=0.0)
    s.poll(0.0)
    s.receive(m.Punch(b"x" * 16, True), ("203.0.113.9", 1), now=0.01)  # other session: ignored
    assert not s.heard
    mapped = ("198.18.0.2", 20012)  # the peer's NAT picked another port than announced
    s.receive(m.Punch(PID, False), mapped, now=0.02)
    assert s.heard and s.peer == mapped
    assert s.poll(0.02) == [(m.Punch(PID, True), mapped)]  # answered at once
    assert s.poll(0.05) == []
    assert s.poll(0.07) == [(m.Punch(PID, True), mapped)]


def test_punch_done_when_the_peer_heard_us_and_says_goodbye() -> None:
    s = PunchSession(PID, PEER, start=0.0)
    s.poll(0.0)
    s.receive(m.Punch(PID, True), PEER, now=0.1)
    assert s.state is PunchState.DONE and s.finished
    assert s.poll(0.1) == [(m.Punch(PID, True), PEER)]  # farewell so the peer completes too
    assert s.poll(0.2) == [] and s.next_deadline() is None


def test_punch_fails_after_its_duration() -> None:
    s = PunchSession(PID, PEER, start=1.0, interval=0.05, duration=5.0)
    sent = 0
    now = 1.0
    while not s.finished:
        sent += len(s.poll(now))
        now = s.next_deadline() or now
    assert s.state is PunchState.FAILED and now == pytest.approx(6.0)
    assert sent == s.sent == pytest.approx(100, abs=1)


def test_keepalive_timer() -> None:
    k = Keepalive(interval=15, last_sent=0)
    assert not k.due(14.9) and k.due(15)
    k.sent(20)
    assert k.deadline() == 35


# policy ---------------------------------------------------------------------------------------


def test_plan_orders_direct_then_punch_then_relay() -> None:
    attempts = plan(
        ["quic://10.0.0.2:22000", "relay://r1:22067?id=X", "tcp://10.0.0.2:22000", "tcp://10.0.0.2:22000"],
        ["relay://R1:22067", "relay://r2:22067"],
    )
    assert [(a.route, a.kind, a.url) for a in attempts] == [
        (Route.DIRECT, "quic", "quic://10.0.0.2:22000"),
        (Route.DIRECT, "tcp", "tcp://10.0.0.2:22000"),
        (Route.PUNCHED, "punch", "relay://r1:22067?id=X"),
        (Route.PUNCHED, "punch", "relay://r2:22067"),
        (Route.RELAYED, "relay", "relay://r1:22067?id=X"),
        (Route.RELAYED, "relay", "relay://r2:22067"),
    ]
    assert [a.kind for a in plan(["tcp://h:1"], ["relay://r:1"], nat_enabled=False)] == ["tcp", "relay"]


def test_upgrade_policy_retries_better_routes_with_backoff() -> None:
    attempts = plan(["tcp://h:1"], ["relay://r:1"])
    u = UpgradePolicy(interval=60, max_interval=200)
    assert u.candidates(attempts) == attempts  # not connected: everything
    u.connected(Route.RELAYED, now=0)
    assert not u.due(59) and u.due(60)
    assert [a.kind for a in u.candidates(attempts)] == ["tcp", "punch"]
    u.round_failed(now=60)
    assert u.next_deadline() == 180
    u.round_failed(now=180)
    assert u.next_deadline() == 380  # capped at max_interval
    u.connected(Route.DIRECT, now=400)
    assert u.next_deadline() is None and u.candidates(attempts) == []
    assert should_replace(Route.RELAYED, Route.PUNCHED) and not should_replace(Route.PUNCHED, Route.PUNCHED)


# punching and rendezvous on loopback -----------------------------------------------------------


def test_punch_between_two_sockets_and_failure_is_bounded() -> None:
    async def main() -> None:
        a, b = await UdpEndpoint.bind("127.0.0.1", 0), await UdpEndpoint.bind("127.0.0.1", 0)
        results = await asyncio.gather(punch(a, PID, b.local_address), punch(b, PID, a.local_address))
        assert results == [b.local_address, a.local_address]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            t0 = time.monotonic()
            with pytest.raises(PunchFailed, match="no answer in 0.3 s"):
                await punch(a, PID, silent.getsockname(), duration=0.3)
            assert time.monotonic() - t0 < 2
        a.close()
        b.close()

    run(main)


def test_rendezvous_probe_and_amplification_guard(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = RelayServer(ids["relay"])
        await server.start("127.0.0.1", 0)
        udp = await UdpEndpoint.bind("127.0.0.1", 0)
        udp.send_control(m.Probe(), ("127.0.0.1", server.port))  # unpadded: ignored
        assert await probe(udp, ("127.0.0.1", server.port)) == udp.local_address
        assert server.statistics().probes == 1
        udp.close()
        await server.close()

    run(main)


def test_punch_and_connect_through_the_rendezvous(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = RelayServer(ids["relay"])
        await server.start("127.0.0.1", 0)
        async with PunchResponder(ids["b"], server.url, host="127.0.0.1") as responder:
            a = await punch_and_connect(ids["a"], server.url, ids["b"].device_id)
            b = await responder.accept()
            assert (a.transport, a.peer, b.peer) == ("quic", ids["b"].device_id, ids["a"].device_id)
            assert a.remote_address == f"quic://127.0.0.1:{responder.local_address[1]}"
            await a.write(b"punched")
            assert await read_exactly(b, 7) == b"punched"
            assert responder.public_address == responder.local_address  # no NAT on loopback
            a.abort()
            b.abort()
        assert server.statistics().punches_started == 1
        await server.close()

    run(main)


def test_punch_to_an_unregistered_device_fails_fast(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = RelayServer(ids["relay"])
        await server.start("127.0.0.1", 0)
        t0 = time.monotonic()
        with pytest.raises(PunchFailed, match="not connected to this relay"):
            await punch_and_connect(ids["a"], server.url, ids["b"].device_id)
        assert time.monotonic() - t0 < 5
        await server.close()

    run(main)


def test_execute_attempts(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        server = RelayServer(ids["relay"])
        await server.start("127.0.0.1", 0)
        got: asyncio.Queue[Stream] = asyncio.Queue()
        tb = RelayTransport(ids["b"], server.url)
        await tb.register(got.put)
        listener = await TcpTransport(ids["b"]).listen("tcp://127.0.0.1:0", got.put)
        for attempt in plan([listener.url], [server.url], nat_enabled=False):
            s = await execute(attempt, ids["a"], ids["b"].device_id)
            peer_end = await got.get()
            assert s.peer == ids["b"].device_id and s.transport == attempt.kind
            s.abort()
            peer_end.abort()
        with pytest.raises(Exception, match="unknown attempt"):
            await execute(Attempt(Route.DIRECT, "carrier-pigeon", "x", 1), ids["a"], ids["b"].device_id)
        await listener.close()
        await tb.close()
        await server.close()

    run(main)

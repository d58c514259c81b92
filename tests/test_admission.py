"""Pre-auth admission: the pure gate, then the TCP listener and QUIC endpoint enforcing it on
real sockets (caps per source and in total, idle connections evicted for a newcomer, small
buffers until the application accepts the peer, an accept loop that survives EMFILE)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from syncer.identity import Identity, load_or_create
from syncer.net import quic, tcp
from syncer.net.admission import KeyedRateLimit, PreAuthGate, source_key
from syncer.net.quic import QuicTransport
from syncer.net.tcp import TcpTransport
from syncer.net.transport import Stream, TransportError


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Identity]:
    d: Path = tmp_path_factory.mktemp("ids")
    return load_or_create(d / "a-cert.pem", d / "a-key.pem"), load_or_create(d / "b-cert.pem", d / "b-key.pem")


def run(coro, timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


# --- the pure gate ------------------------------------------------------------------------------
def test_per_source_cap_and_release():
    g = PreAuthGate(max_total=100, max_per_ip=2)
    t1, t2 = g.admit("10.0.0.1", 0).ticket, g.admit("10.0.0.1", 1).ticket
    assert t1 and t2 and g.admit("10.0.0.1", 2).ticket is None
    assert g.admit("10.0.0.2", 2).ticket is not None  # other sources are not affected
    g.release(t1)
    g.release(t1)  # idempotent: the second release frees nothing more
    assert g.admit("10.0.0.1", 3).ticket is not None
    assert g.admit("10.0.0.1", 3).ticket is None
    assert g.statistics().refused == 2


def test_total_cap_evicts_the_oldest_idle_and_refuses_when_all_are_busy():
    g = PreAuthGate(max_total=3, max_per_ip=10)
    a, b, c = (g.admit(f"10.0.0.{i}", i).ticket for i in range(3))
    assert a and b and c
    g.busy(a)  # a is handshaking: not evicted
    d = g.admit("10.0.1.1", 5)
    assert d.ticket is not None and d.evicted is b and b.released
    g.busy(c)
    g.busy(d.ticket)
    refused = g.admit("10.0.1.2", 6)
    assert refused.ticket is None and refused.evicted is None
    assert len(g) == 3 and g.statistics().evicted == 1


def test_no_eviction_when_disabled():
    g = PreAuthGate(max_total=1, max_per_ip=1, evict_idle=False)
    assert g.admit("10.0.0.1", 0).ticket is not None
    assert g.admit("10.0.0.2", 0).ticket is None


def test_ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4():
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1"
    g = PreAuthGate(max_total=100, max_per_ip=2)
    assert g.admit("2001:db8::1", 0).ticket and g.admit("2001:db8::2", 0).ticket
    assert g.admit("2001:db8::3", 0).ticket is None


def test_keyed_rate_limit_refills_and_stays_bounded():
    r = KeyedRateLimit(rate=1, burst=2, max_keys=3)
    assert r.allow("a", 0) and r.allow("a", 0) and not r.allow("a", 0)
    assert r.allow("a", 1.0)
    for k in "bcdef":
        r.allow(k, 2)
    assert len(r) == 3


# --- TCP on real sockets ----------------------------------------------------------------------------
def _idle_from(ip: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((ip, 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


async def _closed_by_peer(loop: asyncio.AbstractEventLoop, s: socket.socket, timeout: float = 5) -> bool:
    try:
        return await asyncio.wait_for(loop.sock_recv(s, 1), timeout) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_tcp_caps_idle_connections_per_source_and_evicts_for_a_real_client(ids):
    ida, idb = ids

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[Stream] = []

        async def handler(s: Stream) -> None:
            got.append(s)

        gate = PreAuthGate(max_total=6, max_per_ip=3)
        listener = await TcpTransport(idb, gate).listen("tcp://127.0.0.1:0", handler)
        port = int(listener.url.rsplit(":", 1)[1])
        socks: list[socket.socket] = []
        try:
            # 5 idle connections from one source: 3 admitted, 2 closed at once
            socks = [_idle_from("127.0.0.2", port) for _ in range(5)]
            closed = await asyncio.gather(*(_closed_by_peer(loop, s, 0.5) for s in socks))
            assert sorted(closed) == [False, False, False, True, True]
            # 3 more from another source fill the total cap (6)
            socks += [_idle_from("127.0.0.3", port) for _ in range(3)]
            assert await _wait(lambda: len(gate) == 6)
            # a real client still gets in: the oldest idle connection makes room
            stream = await TcpTransport(ida).connect(listener.url)
            assert await _wait(lambda: bool(got))
            assert got[0].peer == ida.device_id and stream.peer == idb.device_id
            assert gate.statistics().evicted >= 1
            got[0].peer_accepted()
            assert len(gate) <= 5  # the accepted one left the budget
            stream.abort()
        finally:
            for s in socks:
                s.close()
            await listener.close()

    run(main())


async def _wait(pred, timeout: float = 5) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)  # polling with a deadline
    return True


def test_tcp_idle_connection_is_dropped_at_the_handshake_deadline(ids, monkeypatch):
    _, idb = ids
    monkeypatch.setattr(tcp, "HANDSHAKE_TIMEOUT", 0.3)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def handler(s: Stream) -> None:
            raise AssertionError("no stream expected")

        listener = await TcpTransport(idb).listen("tcp://127.0.0.1:0", handler)
        s = _idle_from("127.0.0.1", int(listener.url.rsplit(":", 1)[1]))
        try:
            assert await _closed_by_peer(loop, s, 5)
            assert await _wait(lambda: len(listener.gate) == 0)
        finally:
            s.close()
            await listener.close()

    run(main())


def test_tcp_buffers_stay_small_until_the_peer_is_accepted(ids):
    ida, idb = ids

    async def main() -> None:
        got: asyncio.Queue[Stream] = asyncio.Queue()

        async def handler(s: Stream) -> None:
            await got.put(s)

        listener = await TcpTransport(idb).listen("tcp://127.0.0.1:0", handler)
        a = await TcpTransport(ida).connect(listener.url)
        b = await asyncio.wait_for(got.get(), 5)
        proto = b._proto  # type: ignore[attr-defined]
        payload = os.urandom(1 << 20)
        writer = asyncio.ensure_future(a.write(payload))
        # the unaccepted side reads at most about PREAUTH_HIGH_WATER from the socket
        assert await _wait(lambda: proto._reading_paused)
        assert len(proto._buf) <= 2 * tcp.PREAUTH_HIGH_WATER
        assert proto._end - proto._start <= tcp.PREAUTH_HIGH_WATER + len(proto._buf)
        b.peer_accepted()
        received = bytearray()
        while len(received) < len(payload):
            received += await b.read()
        await writer
        assert bytes(received) == payload
        a.abort()
        b.abort()
        await listener.close()

    run(main())


def test_accept_loop_survives_running_out_of_descriptors(tmp_path, ids):
    # in a child process: its open-files limit is lowered, then every descriptor used up
    _, idb = ids
    script = textwrap.dedent(
        f"""
        import asyncio, logging, os, resource, socket, sys
        from pathlib import Path
        from syncer.identity import load_or_create
        from syncer.net.tcp import TcpTransport
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)

        async def main():
            ident = load_or_create(Path({str(idb.cert_file)!r}), Path({str(idb.key_file)!r}))
            got = asyncio.Event()
            async def handler(s):
                got.set()
            listener = await TcpTransport(ident).listen("tcp://127.0.0.1:0", handler)
            port = int(listener.url.rsplit(":", 1)[1])
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            hog = []
            try:
                while True:
                    hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            for _ in range(500):  # until the accept loop met EMFILE a few times (bounded poll)
                if listener.accept_errors >= 3:
                    break
                await asyncio.sleep(0.01)
            print("ERRORS", listener.accept_errors, flush=True)
            for fd in hog:
                os.close(fd)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP, no TLS
            writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")  # not TLS: the handshake fails
            data = await asyncio.wait_for(reader.read(1), 10)  # the listener accepted and closed it
            print("SERVED", data == b"", flush=True)
            await listener.close()

        asyncio.run(main())
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SERVED True" in p.stdout, p.stdout + p.stderr
    assert p.stdout.count("cannot accept connections") == 1, p.stdout  # logged once, not per retry
    assert "accepting connections again" in p.stdout


# --- QUIC -------------------------------------------------------------------------------------------
def test_quic_caps_pending_handshakes(ids, monkeypatch):
    ida, idb = ids
    monkeypatch.setattr(quic, "MAX_PENDING_PER_IP", 2)

    async def main() -> None:
        held: list[Stream] = []

        async def handler(s: Stream) -> None:
            held.append(s)  # never accepted: each keeps its pre-auth slot

        listener = await QuicTransport(idb).listen("quic://127.0.0.1:0", handler)
        try:
            a1 = await QuicTransport(ida).connect(listener.url, timeout=5)
            a2 = await QuicTransport(ida).connect(listener.url, timeout=5)
            with pytest.raises(TransportError):
                await QuicTransport(ida).connect(listener.url, timeout=0.5)
            gate = listener.endpoint.gate
            assert len(gate) == 2 and gate.statistics().refused >= 1
            assert await _wait(lambda: len(held) == 2)
            held[0].peer_accepted()  # accepted: the slot is free for the next one
            a3 = await QuicTransport(ida).connect(listener.url, timeout=5)
            for s in (a1, a2, a3):
                s.abort()
        finally:
            await listener.close()

    run(main())


def test_dual_stack_listeners_accept_ipv4_and_ipv6(ids):
    ida, idb = ids
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")

    async def main() -> None:
        got: list[Stream] = []

        async def handler(s: Stream) -> None:
            s.peer_accepted()
            got.append(s)

        for transport in (TcpTransport, QuicTransport):
            listener = await transport(idb).listen(f"{transport.scheme}://[::]:0", handler)
            port = int(listener.url.rsplit(":", 1)[1])
            try:
                for host in ("127.0.0.1", "[::1]"):
                    s = await transport(ida).connect(f"{transport.scheme}://{host}:{port}")
                    assert s.peer == idb.device_id
                    s.abort()
                assert await _wait(lambda: len(got) == 2)
                # the IPv4 peer is shown as IPv4, not as ::ffff:127.0.0.1
                assert sorted(x.remote_address.split("://")[1].rsplit(":", 1)[0] for x in got) == ["127.0.0.1", "[::1]"]
            finally:
                for x in got:
                    x.abort()
                got.clear()
                await listener.close()

    run(main())

"""QUIC transport: certificate checks on both sides, backpressure, sharing the socket."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aioquic.asyncio import connect as aioquic_connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from syncer.identity import Identity, ca_cert_path, load_or_create
from syncer.net import quic
from syncer.net import udp_messages as m
from syncer.net.quic import QuicEndpoint, QuicTransport, datagram_size_for
from syncer.net.transport import Address, Stream, TransportError
from syncer.net.udp import Addr, UdpEndpoint
from tests.transport_conformance import read_exactly


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d: Path = tmp_path_factory.mktemp("quic-ids")
    out = {n: load_or_create(d / f"{n}-cert.pem", d / f"{n}-key.pem") for n in ("a", "b")}
    out["rogue"] = _self_signed(d)
    return out


def _self_signed(d: Path) -> Identity:
    """A certificate that looks like a device's but is not issued by the syncer device CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("syncer")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / "rogue-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "rogue-key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(d / "rogue-cert.pem", d / "rogue-key.pem", cert.public_bytes(serialization.Encoding.DER))


def run(coro: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


def test_datagram_size_policy() -> None:
    assert datagram_size_for("127.0.0.1") == datagram_size_for("::1") == quic.LOOPBACK_DATAGRAM_SIZE
    assert datagram_size_for("198.18.0.2") == datagram_size_for("example.org") == quic.DEFAULT_DATAGRAM_SIZE
    assert quic.LOOPBACK_DATAGRAM_SIZE < 16384  # aioquic's 2-byte long-header length field


def test_server_rejects_client_certificate_not_from_the_device_ca(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        accepted: list[Stream] = []

        async def handler(s: Stream) -> None:
            accepted.append(s)

        listener = await QuicTransport(ids["b"]).listen("quic://127.0.0.1:0", handler)
        with pytest.raises(TransportError):
            await QuicTransport(ids["rogue"]).connect(listener.url, timeout=5)
        for _ in range(200):  # the server forgets the connection once its close is sent
            if listener.endpoint.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert accepted == [] and listener.endpoint.connections == 0
        await listener.close()

    run(main)


def test_server_rejects_client_without_certificate(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        accepted: list[Stream] = []

        async def handler(s: Stream) -> None:
            accepted.append(s)

        listener = await QuicTransport(ids["b"]).listen("quic://127.0.0.1:0", handler)
        addr = Address.parse(listener.url)
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["syncer/1"], server_name="syncer")
        cfg.load_verify_locations(str(ca_cert_path()))
        async with aioquic_connect(addr.host, addr.port, configuration=cfg) as client:
            reader, writer = await client.create_stream()
            writer.write(quic.STREAM_PREAMBLE + b"let me in")
            # the server closes the connection: the stream ends without data
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        assert accepted == []
        await listener.close()

    run(main)


def test_client_rejects_server_certificate_not_from_the_device_ca(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        async def handler(s: Stream) -> None:
            raise AssertionError("no stream may reach the handler")

        listener = await QuicTransport(ids["rogue"]).listen("quic://127.0.0.1:0", handler)
        with pytest.raises(TransportError):
            await QuicTransport(ids["a"]).connect(listener.url, timeout=5)
        await listener.close()

    run(main)


def test_backpressure_bounds_both_buffers(ids: dict[str, Identity]) -> None:
    chunk = 1 << 20

    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        listener = await QuicTransport(ids["b"]).listen("quic://127.0.0.1:0", accepted.put)
        a = await QuicTransport(ids["a"]).connect(listener.url)
        b = await accepted.get()
        assert isinstance(b, quic.QuicStream)
        data = os.urandom(24 * chunk)
        written = 0
        # b never reads: a's writes must stall, with the data held in bounded buffers
        for off in range(0, len(data), chunk):
            try:
                await asyncio.wait_for(a.write(data[off : off + chunk]), 1)
            except TimeoutError:
                break  # that chunk was queued; only the wait for buffer space was cancelled
            written += chunk
        assert written < len(data), "writes never blocked"
        assert len(b._buf) <= quic.STREAM_WINDOW
        assert written <= quic.STREAM_WINDOW + quic.WRITE_HIGH_WATER + chunk
        # reading releases the writer; everything arrives intact and in order
        rest = asyncio.ensure_future(a.write(data[written + chunk :]))
        got = await read_exactly(b, len(data))
        await rest
        assert got == data
        a.abort()
        await listener.close()

    run(main)


def test_one_socket_carries_control_datagrams_and_quic(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        udp = await UdpEndpoint.bind("127.0.0.1", 0)
        control: list[tuple[m.Control, Addr]] = []
        udp.add_control_handler(lambda msg, addr: control.append((msg, addr)))
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        server = QuicEndpoint(udp, ids["b"], accepted.put, owns_socket=True)
        other = await UdpEndpoint.bind("127.0.0.1", 0)
        client = QuicEndpoint(other, ids["a"], owns_socket=True)
        other.sendto(b"\x01junk that is neither control nor QUIC", udp.local_address)
        other.sendto(b"\x00\xff\xfe malformed control", udp.local_address)
        other.send_control(m.Punch(b"p" * 16, False), udp.local_address)
        a = await client.connect(udp.local_address)
        b = await accepted.get()
        await a.write(b"quic on the shared socket")
        assert await read_exactly(b, 25) == b"quic on the shared socket"
        assert control == [(m.Punch(b"p" * 16, False), other.local_address)]
        a.abort()
        await client.close()
        await server.close()

    run(main)


def test_peer_going_away_ends_the_stream(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        listener = await QuicTransport(ids["b"]).listen("quic://127.0.0.1:0", accepted.put)
        a = await QuicTransport(ids["a"]).connect(listener.url)
        b = await accepted.get()
        await listener.close()  # closes b's connection with it
        assert await asyncio.wait_for(a.read(), 10) == b""
        with pytest.raises(ConnectionError):
            await a.write(b"x")
        assert await b.read() == b""

    run(main)


def test_connect_to_nothing_times_out_cleanly(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))  # a UDP port that never answers
            port = s.getsockname()[1]
            with pytest.raises(TransportError, match="timed out"):
                await QuicTransport(ids["a"]).connect(f"quic://127.0.0.1:{port}", timeout=0.5)

    run(main)


def test_tls_versions_and_alpn(ids: dict[str, Identity]) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        listener = await QuicTransport(ids["b"]).listen("quic://127.0.0.1:0", accepted.put)
        a = await QuicTransport(ids["a"]).connect(listener.url)
        assert isinstance(a, quic.QuicStream)
        assert a._d.quic.tls.alpn_negotiated == "syncer/1"
        assert ssl.TLSVersion.TLSv1_3  # QUIC is always TLS 1.3
        a.abort()
        await listener.close()

    run(main)

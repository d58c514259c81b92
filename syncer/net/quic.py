"""QUIC transport (aioquic) with the same mutual TLS and device-ID check as TCP.

One QUIC connection carries one bidirectional stream, exposed as a `Stream`. Connections live on a
`UdpEndpoint` (nat/demux.py), so the same socket can also carry rendezvous and punch datagrams:
`QuicTransport.connect/listen` bind their own socket, `QuicEndpoint` runs QUIC on an existing
(e.g. already punched) one.

Things aioquic does not do by itself, and how this module does them (docs/nat.md):
- Client certificates: an aioquic server neither asks for nor verifies them. We set the TLS
  context's `_request_client_certificate`; aioquic then checks the client's CertificateVerify
  signature (proof of key possession) and we verify the chain against the syncer device CA right
  after the handshake, before any stream is handed out. A client without a valid certificate gets
  CONNECTION_CLOSE (CRYPTO_ERROR bad_certificate) instead of HANDSHAKE_DONE and never a stream;
  the client side hands out its stream only once the handshake is confirmed (HANDSHAKE_DONE).
- Backpressure: aioquic doubles a stream's receive window whenever the peer used half of it,
  whether or not the application reads. `_Connection` grants credit from what the application
  consumed instead, so a slow reader holds at most STREAM_WINDOW bytes; writers wait while more
  than WRITE_HIGH_WATER bytes are unacknowledged.
- Pre-auth budget: a server connection counts against a `PreAuthGate` (at most
  MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_IP per source; further Initials are dropped) from its
  first Initial until the application accepts the peer (`Stream.peer_accepted()`) or it ends, and
  until then its stream window is PREAUTH_STREAM_WINDOW instead of STREAM_WINDOW.
- Keepalive: a PING after KEEPALIVE_INTERVAL without sending, so NAT mappings stay open.
- Datagram size: 16,000 bytes on loopback (aioquic's throughput is bound by per-packet work),
  1,350 elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.tls import AlertBadCertificate, verify_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from syncer.deviceid import DeviceId
from syncer.identity import Identity, ca_cert_path
from syncer.net import tls
from syncer.net.admission import GateStats, PreAuthGate, Ticket
from syncer.net.transport import READ_SIZE, Address, Listener, Stream, StreamHandler, TransportError
from syncer.net.udp import KEEPALIVE_INTERVAL, Addr, Keepalive, UdpEndpoint, plain_host
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

SERVER_NAME = "syncer"  # the SAN of every device certificate (identity.py)
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 40.0  # > 2 keepalives, so only a dead peer times out
CLOSE_FLUSH_TIMEOUT = 10.0
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 2 * STREAM_WINDOW
WRITE_HIGH_WATER = 4 << 20
WRITE_LOW_WATER = WRITE_HIGH_WATER // 2
# aioquic writes long-header packet lengths as 2-byte varints (< 16384), and pads the client's
# Initial to the datagram size, so 16,000 is the largest safe value.
LOOPBACK_DATAGRAM_SIZE = 16_000
DEFAULT_DATAGRAM_SIZE = 1350
CID_LENGTH = 8
MAX_CONNECTIONS = 1024  # per endpoint; further Initials are dropped (handshake-flood bound)
MAX_PENDING_HANDSHAKES = 64  # server connections not accepted by the application yet
MAX_PENDING_PER_IP = 8
PREAUTH_STREAM_WINDOW = 64 << 10
# The client opens the stream by sending this byte (a version of this mapping); until then the
# server has no stream to hand out, since QUIC streams exist only once data is sent on them.
STREAM_PREAMBLE = b"\x01"
STREAM_ID = 0  # the first client-initiated bidirectional stream
ERROR_ABORTED = 0x1  # application error code for abort()
ERROR_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42  # TLS alert bad_certificate


def datagram_size_for(host: str) -> int:
    """Largest datagram we send towards `host` (pure)."""
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
        loopback = addr.is_loopback or (addr.version == 6 and bool(addr.ipv4_mapped and addr.ipv4_mapped.is_loopback))
    except ValueError:
        loopback = host == "localhost"
    return LOOPBACK_DATAGRAM_SIZE if loopback else DEFAULT_DATAGRAM_SIZE


def _configuration(identity: Identity, is_client: bool, remote_host: str) -> QuicConfiguration:
    cfg = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[tls.ALPN],
        server_name=SERVER_NAME if is_client else None,
        idle_timeout=IDLE_TIMEOUT,
        max_datagram_size=datagram_size_for(remote_host),
        max_data=CONNECTION_WINDOW,
        # a server grants little until the application accepted the peer (Stream.peer_accepted)
        max_stream_data=STREAM_WINDOW if is_client else PREAUTH_STREAM_WINDOW,
        connection_id_length=CID_LENGTH,
        verify_mode=ssl.CERT_REQUIRED,
        cafile=str(ca_cert_path()),
    )
    cfg.load_cert_chain(str(identity.cert_file), str(identity.key_file))
    return cfg


class _Connection(QuicConnection):
    """aioquic's connection with client-certificate requests and consumption-based credit."""

    def __init__(self, *, configuration: QuicConfiguration, **kw: Any) -> None:
        super().__init__(configuration=configuration, **kw)
        self.consumed: dict[int, int] = {}  # stream id -> bytes the application has read
        self.window = configuration.max_stream_data  # receive window granted beyond `consumed`
        # one client-initiated bidirectional stream; the server may open none
        allowed = 0 if configuration.is_client else 1
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            limit.value = limit.sent = allowed if limit is self._local_max_streams_bidi else 0

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls._request_client_certificate = True

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if stream.max_stream_data_local:
            window = self.window
            target = self.consumed.get(stream.stream_id, 0) + window
            # move the window once the reader consumed half of it (batches MAX_STREAM_DATA)
            if target - stream.max_stream_data_local >= window // 2:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def credit_pending(self, stream_id: int) -> bool:
        """True when a read has freed enough of the window to be worth announcing now."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        window = self.window
        target = self.consumed.get(stream_id, 0) + window
        return target - stream.max_stream_data_local_sent >= window // 2

    def unacked(self, stream_id: int) -> int:
        """Bytes written on the stream that the peer has not acknowledged yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return stream.sender._buffer_stop - stream.sender._buffer_start

    def send_finished(self, stream_id: int) -> bool:
        """True once everything written, FIN included, has been acknowledged."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    @property
    def confirmed(self) -> bool:
        """Handshake confirmed: the client received HANDSHAKE_DONE (RFC 9001 4.1.2)."""
        return bool(self._handshake_confirmed)

    def peer_certificate(self) -> x509.Certificate | None:
        return self.tls._peer_certificate

    def peer_chain(self) -> list[x509.Certificate]:
        return list(self.tls._peer_certificate_chain)


class QuicStream(Stream):
    transport = "quic"

    def __init__(self, driver: _Driver, peer: DeviceId) -> None:
        self._d = driver
        self.peer = peer
        host, port = driver.remote[:2]
        self.remote_address = str(Address("quic", plain_host(host), port))
        self._buf = bytearray()
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False

    # called by the driver -------------------------------------------------------------------
    def _data(self, data: bytes, end: bool) -> None:
        self._buf += data
        if end:
            self._eof = True
        self._readable.set()

    def _terminated(self) -> None:
        self._eof = True
        self._readable.set()
        self._writable.set()

    def _acked(self) -> None:
        if self._d.quic.unacked(STREAM_ID) <= WRITE_LOW_WATER:
            self._writable.set()

    # Stream ----------------------------------------------------------------------------------
    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        while not self._buf and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if not self._buf:
            return b""
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        q = self._d.quic
        q.consumed[STREAM_ID] = q.consumed.get(STREAM_ID, 0) + len(data)
        if not self._d.terminated and q.credit_pending(STREAM_ID):
            self._d.transmit()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._d.terminated:
            raise ConnectionResetError("stream closed")
        if not data:
            return
        self._d.quic.send_stream_data(STREAM_ID, bytes(data))
        self._d.transmit()
        while self._d.quic.unacked(STREAM_ID) > WRITE_HIGH_WATER:
            if self._d.terminated:
                raise ConnectionResetError("stream closed")
            self._writable.clear()
            await self._writable.wait()

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        await self.write(b"".join(chunks))

    def peer_accepted(self) -> None:
        self._d.accepted()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        d = self._d
        if d.terminated:
            return
        with contextlib.suppress(Exception):
            d.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
            d.transmit()
            # closing the connection before the peer acknowledged everything would lose data
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                while not d.quic.send_finished(STREAM_ID) and not d.terminated:
                    self._writable.clear()
                    await self._writable.wait()
        d.close()
        with contextlib.suppress(TimeoutError):
            await wait_for(asyncio.shield(d.done), 5)

    def abort(self) -> None:
        self._closed = True
        self._d.close(ERROR_ABORTED, "aborted")
        self._d.teardown()  # no draining period: the socket may go away right now


class _Driver:
    """Drives one aioquic connection: datagrams in, events, timers, datagrams out.

    `ready` resolves to the QuicStream once the handshake is done, the peer's certificate is
    verified and the stream is open; it fails with TransportError otherwise."""

    def __init__(
        self,
        quic: _Connection,
        endpoint: QuicEndpoint,
        remote: Addr,
        keepalive: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.quic = quic
        self.endpoint = endpoint
        self.remote = remote
        self.is_client = quic.configuration.is_client
        self.ready: asyncio.Future[QuicStream] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.stream: QuicStream | None = None
        self.terminated = False
        self._peer: DeviceId | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._keepalive = Keepalive(keepalive, loop.time())
        self._handshake_timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        self.ticket: Ticket | None = None  # a server connection's place in the pre-auth budget

    def accepted(self) -> None:
        """The application accepted the peer: full stream window, out of the pre-auth budget."""
        self.endpoint._release(self)
        if self.quic.window < STREAM_WINDOW:
            self.quic.window = STREAM_WINDOW
            if not self.terminated:
                self.transmit()  # announce the larger window now

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.terminated:
            return
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self._process_events()
        self._check_confirmed()
        self.transmit()
        if self.stream is not None:
            self.stream._acked()

    def transmit(self) -> None:
        now = self._loop.time()
        sent = False
        for data, addr in self.quic.datagrams_to_send(now=now):
            self.endpoint.udp.sendto(data, addr)
            sent = True
        if sent:
            self._keepalive.sent(now)
        self._schedule(now)

    def close(self, error_code: int = QuicErrorCode.NO_ERROR, reason: str = "") -> None:
        if self.terminated:
            return
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()
        self._process_events()

    # internals --------------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        at = self.quic.get_timer()
        if self.quic._state is QuicConnectionState.CONNECTED:
            ka = self._keepalive.deadline()
            at = ka if at is None else min(at, ka)
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self._loop.time()
        if self._keepalive.due(now) and not self.terminated:
            self.quic.send_ping(0)
        timer = self.quic.get_timer()
        if timer is not None and now >= timer:
            self.quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _handshake_timeout(self) -> None:
        if not self.ready.done():
            self._fail(TransportError(f"QUIC handshake with {self._where} timed out"))
            self.close(QuicErrorCode.CONNECTION_REFUSED, "handshake timeout")

    @property
    def _where(self) -> str:
        return f"{self.remote[0]}:{self.remote[1]}"

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: a server driver may have nobody awaiting it

    def _process_events(self) -> None:
        while (ev := self.quic.next_event()) is not None:
            if isinstance(ev, events.StreamDataReceived):
                self._on_stream_data(ev)
            elif isinstance(ev, events.HandshakeCompleted):
                self._on_handshake()
            elif isinstance(ev, events.ConnectionIdIssued):
                self.endpoint._register(ev.connection_id, self)
            elif isinstance(ev, events.ConnectionIdRetired):
                self.endpoint._unregister(ev.connection_id)
            elif isinstance(ev, events.ConnectionTerminated):
                self._on_terminated(ev)
            elif isinstance(ev, events.StreamReset) and ev.stream_id == STREAM_ID:
                if self.stream is not None:
                    self.stream._terminated()

    def _on_handshake(self) -> None:
        cert = self.quic.peer_certificate()
        try:
            if cert is None:
                raise AlertBadCertificate("peer presented no certificate")
            if not self.is_client:
                # aioquic checked the client's signature, not its chain: do that here
                verify_certificate(cert, self.quic.peer_chain(), cafile=str(ca_cert_path()))
        except AlertBadCertificate as e:
            log.info("QUIC peer %s rejected: %s", self._where, e)
            self._fail(TransportError(f"QUIC peer {self._where} rejected: {e}"))
            self.close(ERROR_BAD_CERTIFICATE, "certificate rejected")
            return
        self._peer = DeviceId.from_cert_der(cert.public_bytes(Encoding.DER))
        if self.is_client:
            # open the stream now (1-RTT data), but hand it out only once the server confirmed
            # the handshake: a server rejecting our certificate closes the connection instead
            self.quic.send_stream_data(STREAM_ID, STREAM_PREAMBLE)
            self._check_confirmed()

    def _check_confirmed(self) -> None:
        if self.is_client and self.stream is None and self._peer is not None and self.quic.confirmed:
            self._open_stream()

    def _open_stream(self) -> None:
        assert self._peer is not None
        self.stream = QuicStream(self, self._peer)
        self._handshake_timer.cancel()
        if not self.ready.done():
            self.ready.set_result(self.stream)
        if not self.is_client:
            self.endpoint._accepted(self.stream)

    def _on_stream_data(self, ev: events.StreamDataReceived) -> None:
        q = self.quic
        if ev.stream_id != STREAM_ID:
            return  # the stream limits make this impossible for a conforming peer
        data = ev.data
        if self.stream is None:
            if self.is_client or self._peer is None:
                return
            if data[:1] != STREAM_PREAMBLE:
                self.close(QuicErrorCode.PROTOCOL_VIOLATION, "bad stream preamble")
                return
            q.consumed[STREAM_ID] = q.consumed.get(STREAM_ID, 0) + 1
            data = data[1:]
            self._open_stream()
        assert self.stream is not None
        self.stream._data(data, ev.end_stream)

    def _on_terminated(self, ev: events.ConnectionTerminated) -> None:
        self.teardown(f"{ev.reason_phrase or ev.error_code}")

    def teardown(self, reason: str = "aborted") -> None:
        """Forget the connection locally (after it terminated, or to abort it)."""
        if self.terminated:
            return
        self.terminated = True
        self._handshake_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        self._fail(TransportError(f"QUIC connection to {self._where} closed: {reason}"))
        if self.stream is not None:
            self.stream._terminated()
        self.endpoint._forget(self)
        if not self.done.done():
            self.done.set_result(None)


class QuicEndpoint:
    """QUIC connections on one `UdpEndpoint`, routed by destination connection ID.

    With `handler`, peers may connect to us (each verified connection's stream is passed to it,
    in a task); `connect()` opens outgoing connections from the same socket. Every connection
    sends a PING after `keepalive` seconds without sending anything."""

    def __init__(
        self,
        udp: UdpEndpoint,
        identity: Identity,
        handler: StreamHandler | None = None,
        owns_socket: bool = False,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self.udp = udp
        self.keepalive = keepalive
        self._identity = identity
        self._handler = handler
        self._owns_socket = owns_socket
        self._by_cid: dict[bytes, _Driver] = {}
        self._drivers: set[_Driver] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.gate = PreAuthGate(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_IP, evict_idle=False)
        udp.on_quic = self._datagram_received

    async def connect(self, addr: Addr, timeout: float = HANDSHAKE_TIMEOUT) -> QuicStream:
        if self._closed:
            raise TransportError("QUIC endpoint is closed")
        loop = asyncio.get_running_loop()
        cfg = _configuration(self._identity, True, addr[0])
        quic = _Connection(configuration=cfg)
        driver = self._add(quic, addr, [quic.host_cid])
        quic.connect(addr, now=loop.time())
        driver.transmit()
        try:
            return await wait_for(asyncio.shield(driver.ready), timeout)
        except TimeoutError:
            driver.close(QuicErrorCode.CONNECTION_REFUSED, "timeout")
            raise TransportError(f"cannot connect to quic://{addr[0]}:{addr[1]}: timed out") from None
        except asyncio.CancelledError:
            driver.close(ERROR_ABORTED, "cancelled")
            raise

    async def close(self) -> None:
        self._closed = True
        for d in list(self._drivers):
            d.close()
        for t in list(self._tasks):
            t.cancel()
        if self._owns_socket:
            self.udp.close()
            with contextlib.suppress(TimeoutError):
                await wait_for(asyncio.shield(self.udp.closed), 5)

    @property
    def connections(self) -> int:
        return len(self._drivers)

    def statistics(self) -> GateStats:
        return self.gate.statistics()

    # internals --------------------------------------------------------------------------------
    def _add(self, quic: _Connection, addr: Addr, cids: list[bytes]) -> _Driver:
        driver = _Driver(quic, self, addr, self.keepalive)
        self._drivers.add(driver)
        for cid in cids:
            self._register(cid, driver)
        return driver

    def _register(self, cid: bytes, driver: _Driver) -> None:
        self._by_cid[cid] = driver

    def _unregister(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def _release(self, driver: _Driver) -> None:
        if driver.ticket is not None:
            self.gate.release(driver.ticket)

    def _forget(self, driver: _Driver) -> None:
        self._release(driver)
        self._drivers.discard(driver)
        for cid in [c for c, d in self._by_cid.items() if d is driver]:
            del self._by_cid[cid]

    def _datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            return
        driver = self._by_cid.get(header.destination_cid)
        if driver is None:
            if (
                self._handler is None
                or self._closed
                or header.packet_type != QuicPacketType.INITIAL
                or len(data) < 1200  # RFC 9000: a client's Initial datagram is padded to 1200
                or len(self._drivers) >= MAX_CONNECTIONS
            ):
                return
            cfg = _configuration(self._identity, False, addr[0])
            if header.version not in cfg.supported_versions:
                return
            ticket = self.gate.admit(addr[0], asyncio.get_running_loop().time()).ticket
            if ticket is None:
                return  # too many handshakes pending (from this source): the client retries
            quic = _Connection(
                configuration=cfg, original_destination_connection_id=header.destination_cid
            )
            driver = self._add(quic, addr, [header.destination_cid, quic.host_cid])
            driver.ticket = ticket
        driver.datagram_received(data, addr)

    def _accepted(self, stream: QuicStream) -> None:
        if self._handler is None:
            stream.abort()
            return
        task = asyncio.ensure_future(self._handler(stream))
        self._tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("QUIC stream handler failed: %r", exc)


class QuicListener(Listener):
    def __init__(self, endpoint: QuicEndpoint, url: str) -> None:
        self.endpoint = endpoint
        self.url = url

    async def close(self) -> None:
        await self.endpoint.close()


class QuicTransport:
    scheme = "quic"

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    async def listen(self, url: str, handler: StreamHandler) -> QuicListener:
        addr = Address.parse(url)
        try:
            udp = await UdpEndpoint.bind(addr.host, addr.port)
        except OSError as e:
            raise TransportError(f"cannot listen on {url}: {e.strerror or e}") from None
        endpoint = QuicEndpoint(udp, self._identity, handler, owns_socket=True)
        host, port = udp.local_address
        return QuicListener(endpoint, str(Address("quic", host, port)))

    async def connect(self, url: str, timeout: float = 10.0) -> QuicStream:
        """A new connection from a fresh socket; the socket closes with the stream."""
        addr = Address.parse(url)
        bind_host = "::" if ":" in addr.host else "0.0.0.0"
        try:
            udp = await UdpEndpoint.bind(bind_host, 0)
        except OSError as e:
            raise TransportError(f"cannot connect to {url}: {e.strerror or e}") from None
        endpoint = QuicEndpoint(udp, self._identity, owns_socket=True)
        try:
            stream = await endpoint.connect((addr.host, addr.port), timeout)
        except BaseException:
            await endpoint.close()
            raise
        # the socket is this connection's alone: close it with the connection
        stream._d.done.add_done_callback(lambda _: udp.close())
        return stream

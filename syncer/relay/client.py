"""Relay transport: streams whose bytes go through a `syncer relay`.

Each connection to the relay is TLS with the device certificate (the relay authenticates us; with
`?id=` in the URL we authenticate the relay). Once the relay has paired a session, both ends send
Go and start a second, end-to-end mutual TLS inside the relayed pipe (`loop.start_tls` on top of
the relay connection): the requester is the TLS client, the invited device the TLS server. The
relay sees only that inner ciphertext, and `Stream.peer` comes from the inner handshake exactly as
for TCP; it must also match the device the relay said it paired us with.

`register(on_stream)` keeps a control connection (ping every PING_INTERVAL, reconnect with
backoff) and accepts invitations; `connect(device_id)` asks the relay for a session. The control
connection also carries the rendezvous messages used by nat/rendezvous.py.

Invitations are answered only as `InviteGate` (invites.py) allows: the inviting device must pass
the `accept` policy (the daemon's "is it paired?") before any connection is opened, and
concurrent and per-second invitations are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from syncer.deviceid import DeviceId
from syncer.identity import Identity
from syncer.net import tls
from syncer.net.backoff import Backoff
from syncer.net.tcp import STREAM_LIMIT, ReaderWriterStream
from syncer.net.transport import StreamHandler, TransportError
from syncer.relay import protocol as p
from syncer.relay.invites import InviteGate, Policy
from syncer.runtime.tasks import TaskSet
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
PING_INTERVAL = 30.0
PONG_TIMEOUT = 20.0
RECONNECT_MAX = 30.0

ControlListener = Callable[[p.Message], None]


class _ReplacesWriter(Protocol):
    """The private method of asyncio.StreamReaderProtocol (CPython 3.11+) used below."""

    def _replace_writer(self, writer: asyncio.StreamWriter) -> None: ...


class RelayStream(ReaderWriterStream):
    transport = "relay"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, relay: p.RelayUrl) -> None:
        super().__init__(reader, writer)
        self.remote_address = str(p.RelayUrl(relay.host, relay.port))
        self._outer_writer: asyncio.StreamWriter | None = None


class _RelayConnection:
    """One TLS connection to the relay, speaking frames until it becomes a pipe."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: asyncio.StreamReaderProtocol) -> None:
        self.reader = reader
        self.writer = writer
        self._protocol = protocol

    def send(self, msg: p.Message) -> None:
        self.writer.write(p.encode(msg))

    async def read(self, timeout: float | None = None) -> p.Message:
        async with asyncio.timeout(timeout):
            n = p.frame_length(await self.reader.readexactly(p.HEADER.size))
            return p.decode_body(await self.reader.readexactly(n))

    async def into_stream(self, ctx: ssl.SSLContext, server_side: bool, relay: p.RelayUrl) -> RelayStream:
        """Send Go and run end-to-end TLS inside the pipe.

        Nothing but our own frames precedes the pipe data (the relay pipes only after both Go
        frames), so the reader holds no pipe bytes when TLS takes over the transport."""
        self.send(p.Go())
        loop = asyncio.get_running_loop()
        inner = await loop.start_tls(
            self.writer.transport,
            self._protocol,
            ctx,
            server_side=server_side,
            server_hostname=None if server_side else "syncer",
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        if inner is None:
            raise TransportError("relay connection closed during the end-to-end handshake")
        writer = asyncio.StreamWriter(inner, self._protocol, self.reader, loop)
        # what StreamWriter.start_tls does, which can only be the TLS client: asyncio has no public
        # call for being the TLS server over a connection we dialed
        cast(_ReplacesWriter, self._protocol)._replace_writer(writer)
        stream = RelayStream(self.reader, writer, relay)
        # a StreamWriter closes its transport when garbage-collected: keep the outer one alive
        stream._outer_writer = self.writer
        return stream

    def abort(self) -> None:
        self.writer.transport.abort()


class RelayTransport:
    scheme = "relay"

    def __init__(self, identity: Identity, relay_url: str, accept: Policy | None = None) -> None:
        self.identity = identity
        self.invites = InviteGate(accept)
        self.relay = p.RelayUrl.parse(relay_url)
        self._relay_ctx = tls.client_context(identity, alpn=p.ALPN)
        self._e2e_client = tls.client_context(identity)
        self._e2e_server = tls.server_context(identity)
        self._on_stream: StreamHandler | None = None
        self._listeners: list[ControlListener] = []
        self._control: _RelayConnection | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._tasks = TaskSet(self._task_failed)
        self.cookie: bytes | None = None  # rendezvous cookie of the current control connection
        self.registered = asyncio.Event()
        self._closed = False

    # connections -------------------------------------------------------------------------------
    async def open(self, first: p.Message, timeout: float = HANDSHAKE_TIMEOUT) -> _RelayConnection:
        """A new TLS connection to the relay whose first frame is `first`."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await wait_for(
                loop.create_connection(
                    lambda: protocol,
                    self.relay.host,
                    self.relay.port,
                    ssl=self._relay_ctx,
                    server_hostname="syncer",
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ),
                timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as e:
            raise TransportError(f"cannot reach relay {self.relay}: {e or type(e).__name__}") from None
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        relay_id = tls.peer_device_id(writer.get_extra_info("ssl_object"))
        if self.relay.device_id is not None and relay_id != self.relay.device_id:
            transport.abort()
            raise TransportError(
                f"relay {self.relay.host}:{self.relay.port} has device ID {relay_id}, expected {self.relay.device_id}"
            )
        conn = _RelayConnection(reader, writer, protocol)
        conn.send(first)
        return conn

    async def connect(self, device_id: DeviceId, timeout: float = 10.0) -> RelayStream:
        """A stream to `device_id` through the relay (it must be registered there)."""
        try:
            async with asyncio.timeout(timeout):
                conn = await self.open(p.Connect(device_id.raw))
                try:
                    msg = await conn.read()
                    if isinstance(msg, p.Error):
                        raise TransportError(f"relay {self.relay}: {msg.reason}")
                    if not isinstance(msg, p.Paired) or msg.device != device_id.raw:
                        raise TransportError(f"relay {self.relay}: unexpected answer {type(msg).__name__}")
                    stream = await conn.into_stream(self._e2e_client, False, self.relay)
                except BaseException:
                    conn.abort()
                    raise
        except TimeoutError:
            raise TransportError(f"relay {self.relay}: no session to {device_id.short} within {timeout:.0f} s") from None
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, p.RelayProtocolError) as e:
            raise TransportError(f"relay {self.relay}: {e or type(e).__name__}") from None
        return self._checked(stream, device_id)

    @staticmethod
    def _checked(stream: RelayStream, expected: DeviceId) -> RelayStream:
        if stream.peer != expected:
            stream.abort()
            raise TransportError(f"relayed peer is {stream.peer}, expected {expected}")
        return stream

    # registration --------------------------------------------------------------------------------
    def add_listener(self, listener: ControlListener) -> Callable[[], None]:
        """Also pass control messages (Joined, PunchInvite, PunchStart) to `listener`."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def register(self, on_stream: StreamHandler | None) -> None:
        """Keep a control connection so peers can reach us; invited sessions go to on_stream
        (None: invitations are ignored, e.g. a control connection used only for punching).

        Raises TransportError if the first attempt fails; later drops reconnect by themselves.
        The relay keeps one control connection per device, so use one RelayTransport per
        relay and share it (PunchResponder(relay=...))."""
        self._on_stream = on_stream
        await self._join()
        self._control_task = asyncio.ensure_future(self._control_loop())

    async def _join(self) -> None:
        conn = await self.open(p.Join())
        try:
            msg = await conn.read(HANDSHAKE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, p.RelayProtocolError) as e:
            conn.abort()
            raise TransportError(f"relay {self.relay}: registration failed: {e or type(e).__name__}") from None
        if not isinstance(msg, p.Joined):
            conn.abort()
            reason = msg.reason if isinstance(msg, p.Error) else type(msg).__name__
            raise TransportError(f"relay {self.relay}: registration refused: {reason}")
        self._control = conn
        self.cookie = msg.cookie
        self.registered.set()
        self._notify(msg)

    async def _control_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=1.0, maximum=RECONNECT_MAX)
        while not self._closed:
            conn = self._control
            if conn is not None:
                await self._serve_control(conn)
                conn.abort()
                self._control = None
                self.registered.clear()
            try:
                await asyncio.sleep(max(0.0, backoff.next_at - loop.time()))  # reconnect backoff
                await self._join()
                backoff.succeeded()
            except TransportError as e:
                log.info("relay %s: %s", self.relay, e)
                backoff.failed(loop.time())

    async def _serve_control(self, conn: _RelayConnection) -> None:
        waiting_pong = False
        while True:
            try:
                msg = await conn.read(PONG_TIMEOUT if waiting_pong else PING_INTERVAL)
            except TimeoutError:
                if waiting_pong:
                    return  # relay is gone
                conn.send(p.Ping())
                waiting_pong = True
                continue
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, p.RelayProtocolError, OSError):
                return
            waiting_pong = False
            if isinstance(msg, p.Invite):
                self._on_invite(msg)
            else:
                self._notify(msg)

    def accepts(self, device: DeviceId) -> bool:
        """Whether invitations from `device` are answered at all (the accept policy)."""
        return self.invites.allowed(device)

    def _on_invite(self, invite: p.Invite) -> None:
        if self._on_stream is None:
            return
        try:
            device = p.device_bytes(invite.device)
        except p.RelayProtocolError:
            return
        if not self.invites.admit(device, asyncio.get_running_loop().time()):
            log.debug("relay %s: invitation from %s ignored", self.relay, device.short)
            return
        self._tasks.spawn(self._accept(invite, device))

    def _notify(self, msg: p.Message) -> None:
        for listener in list(self._listeners):
            listener(msg)

    def _task_failed(self, exc: BaseException) -> None:
        log.warning("relay %s: stream handler failed: %r", self.relay, exc)

    async def _accept(self, invite: p.Invite, expected: DeviceId) -> None:
        assert self._on_stream is not None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                conn = await self.open(p.Accept(invite.token))
                try:
                    msg = await conn.read()
                    if not isinstance(msg, p.Paired) or msg.device != invite.device:
                        raise TransportError(f"relay {self.relay}: session not paired ({type(msg).__name__})")
                    stream = await conn.into_stream(self._e2e_server, True, self.relay)
                except BaseException:
                    conn.abort()
                    raise
            stream = self._checked(stream, expected)
        except (TransportError, TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, p.RelayProtocolError) as e:
            log.info("relay %s: invited session failed: %s", self.relay, e)
            return
        finally:
            self.invites.done(expected)
        await self._on_stream(stream)

    async def close(self) -> None:
        self._closed = True
        if self._control_task is not None:
            self._control_task.cancel()
        if self._control is not None:
            self._control.abort()
        self._tasks.cancel()
        pending = [t for t in [self._control_task, *self._tasks] if t is not None]
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(pending, timeout=5)

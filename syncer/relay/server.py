"""The relay + rendezvous server behind `syncer relay`.

TCP (TLS, mutual): control connections, relayed sessions and punch requests (protocol.py).
UDP, same port number: rendezvous probes and cookie binds (nat/messages.py). Pairing and limits
are pure (sessions.py, rendezvous.py); this module does the I/O. Bad input closes the connection
it came on and nothing else; every wait is bounded by a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from dataclasses import dataclass

from syncer.deviceid import DeviceId
from syncer.errors import SyncerError
from syncer.identity import Identity
from syncer.net import tls
from syncer.net import udp_messages as m
from syncer.net.udp import Addr, UdpEndpoint
from syncer.relay import protocol as p
from syncer.relay.rendezvous import PunchLimit, ReadyPunch, Rendezvous
from syncer.relay.sessions import IdleTimer, SessionRefused, SessionTable
from syncer.runtime.timeouts import wait_for
from syncer.transfer.ratelimit import TokenBucket

log = logging.getLogger(__name__)

PIPE_CHUNK = 256 << 10
MAX_CONTROL_BACKLOG = 256 << 10  # a control connection that does not read its invites is dropped
PORT_ATTEMPTS = 20
PUNCH_START_DELAY_MS = 0  # both sides get PunchStart at about the same time; punching retries


class RelayError(SyncerError):
    pass


@dataclass(frozen=True)
class RelayLimits:
    max_sessions: int = 1000  # pending + active relayed sessions
    max_connections: int = 4000  # TLS connections of every kind
    max_punches: int = 1000
    idle_timeout: float = 300.0  # a session with no bytes either way for this long is closed
    pending_timeout: float = 10.0  # invite -> accept, paired -> both Go
    handshake_timeout: float = 10.0  # TLS handshake and first frame
    control_idle_timeout: float = 90.0  # clients ping every 30 s
    punch_timeout: float = 5.0  # both sides must bind their UDP address within this
    rate_limit: int = 0  # bytes/s per session and direction, 0 = unlimited


@dataclass(frozen=True)
class RelayStats:
    connections: int
    control_connections: int
    pending_sessions: int
    active_sessions: int
    sessions_total: int
    bytes_relayed: int
    punches_started: int
    punches_failed: int
    probes: int


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, device: DeviceId) -> None:
        self.reader = reader
        self.writer = writer
        self.device = device
        self.cookie = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read(self) -> p.Message:
        n = p.frame_length(await self.reader.readexactly(p.HEADER.size))
        return p.decode_body(await self.reader.readexactly(n))

    def send(self, msg: p.Message) -> None:
        if self.writer.transport.get_write_buffer_size() > MAX_CONTROL_BACKLOG:
            self.abort()
            return
        self.writer.write(p.encode(msg))

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(Exception):
            await wait_for(self.writer.wait_closed(), 5)


class RelayServer:
    def __init__(self, identity: Identity, limits: RelayLimits | None = None) -> None:
        self.identity = identity
        self.limits = limits or RelayLimits()
        self._ssl = tls.server_context(identity, alpn=p.ALPN)
        self._sessions = SessionTable(self.limits.max_sessions, self.limits.pending_timeout)
        self._rendezvous = Rendezvous(self.limits.max_punches)
        self._controls: dict[DeviceId, _Conn] = {}
        self._waiting: dict[bytes, asyncio.Future[_Conn]] = {}  # session token -> acceptor
        self._punches: dict[bytes, asyncio.Future[ReadyPunch]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._udp: UdpEndpoint | None = None
        self.host = ""
        self.port = 0
        self._closing = False
        self._bytes = self._sessions_total = self._punched = self._punch_failed = self._probes = 0

    # lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on TCP and UDP `port` (0: a free port number free for both)."""
        for _ in range(PORT_ATTEMPTS if port == 0 else 1):
            server = await asyncio.start_server(
                self._on_tcp,
                host,
                port,
                ssl=self._ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout,
                reuse_address=True,
            )
            bound = server.sockets[0].getsockname()[1]
            try:
                self._udp = await UdpEndpoint.bind(host, bound)
            except OSError as e:
                server.close()
                await server.wait_closed()
                if port == 0 and e.errno == errno.EADDRINUSE:
                    continue
                raise
            self._server = server
            self.host, self.port = host, bound
            self._udp.add_control_handler(self._on_udp)
            return
        raise OSError(errno.EADDRINUSE, "no port free for both TCP and UDP")

    @property
    def device_id(self) -> DeviceId:
        return self.identity.device_id

    @property
    def url(self) -> str:
        return str(p.RelayUrl(self.host, self.port, self.device_id))

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await wait_for(self._server.wait_closed(), 5)

    def statistics(self) -> RelayStats:
        return RelayStats(
            connections=len(self._tasks),
            control_connections=len(self._controls),
            pending_sessions=self._sessions.pending,
            active_sessions=self._sessions.active,
            sessions_total=self._sessions_total,
            bytes_relayed=self._bytes,
            punches_started=self._punched,
            punches_failed=self._punch_failed,
            probes=self._probes,
        )

    # UDP rendezvous ---------------------------------------------------------------------------
    def _on_udp(self, msg: m.Control, addr: Addr) -> None:
        assert self._udp is not None
        if isinstance(msg, m.Probe | m.Bind):
            # only answer requests padded to MIN_REQUEST: no amplification towards spoofed sources
            if len(m.encode(msg)) < m.MIN_REQUEST:
                return
        if isinstance(msg, m.Probe):
            self._probes += 1
            self._udp.send_control(m.Bound(addr[0], addr[1]), addr)
        elif isinstance(msg, m.Bind):
            if self._rendezvous.binding(msg.cookie) is None:
                return
            ready = self._rendezvous.bind(msg.cookie, addr, asyncio.get_running_loop().time())
            self._udp.send_control(m.Bound(addr[0], addr[1]), addr)
            for r in ready:
                fut = self._punches.get(r.punch_id)
                if fut is not None and not fut.done():
                    fut.set_result(r)

    # TCP --------------------------------------------------------------------------------------
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.limits.max_connections:
            writer.transport.abort()
            return
        self._tasks.add(task)
        conn: _Conn | None = None
        try:
            conn = _Conn(reader, writer, tls.peer_device_id(writer.get_extra_info("ssl_object")))
            first = await wait_for(conn.read(), self.limits.handshake_timeout)
            if isinstance(first, p.Join):
                await self._control(conn)
            elif isinstance(first, p.Connect):
                await self._connect(conn, p.device_bytes(first.device))
            elif isinstance(first, p.Accept):
                await self._accept(conn, first.token)
            elif isinstance(first, p.PunchRequest):
                await self._punch_request(conn, p.device_bytes(first.device))
            else:
                conn.send(p.Error(p.BAD_REQUEST, f"unexpected {type(first).__name__}"))
        except p.RelayProtocolError as e:
            log.info("relay: bad input, closing connection: %s", e)
            if conn is not None:
                conn.send(p.Error(p.BAD_REQUEST, str(e)[:200]))
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            # close() cancels handlers; asyncio would log a cancelled connection callback as an error
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)
            if conn is not None:
                if not conn.done.done():
                    conn.done.set_result(None)
                await conn.close()
            else:
                writer.transport.abort()

    async def _control(self, conn: _Conn) -> None:
        old = self._controls.get(conn.device)
        if old is not None:
            old.abort()  # a reconnecting device replaces its previous control connection
        conn.cookie = self._rendezvous.issue_cookie(conn.device)
        self._controls[conn.device] = conn
        try:
            conn.send(p.Joined(conn.cookie))
            while True:
                msg = await wait_for(conn.read(), self.limits.control_idle_timeout)
                if isinstance(msg, p.Ping):
                    conn.send(p.Pong())
                else:
                    raise p.RelayProtocolError(f"unexpected {type(msg).__name__} on control connection")
        finally:
            if self._controls.get(conn.device) is conn:
                del self._controls[conn.device]
            self._rendezvous.revoke(conn.cookie)

    async def _connect(self, conn: _Conn, target: DeviceId) -> None:
        loop = asyncio.get_running_loop()
        ctl = self._controls.get(target)
        if ctl is None:
            conn.send(p.Error(p.NOT_REACHABLE, "device is not connected to this relay"))
            return
        try:
            session = self._sessions.open(conn.device, target, loop.time())
        except SessionRefused as e:
            conn.send(p.Error(e.code, e.reason))
            return
        fut: asyncio.Future[_Conn] = loop.create_future()
        self._waiting[session.token] = fut
        try:
            ctl.send(p.Invite(session.token, conn.device.raw))
            try:
                other = await wait_for(fut, self.limits.pending_timeout)
            except TimeoutError:
                conn.send(p.Error(p.TIMEOUT, "device did not answer the invitation"))
                return
            try:
                await self._run_session(conn, other)
            finally:
                if not other.done.done():
                    other.done.set_result(None)
                await other.close()
        finally:
            self._waiting.pop(session.token, None)
            self._sessions.close(session.token)

    async def _accept(self, conn: _Conn, token: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._sessions.accept(token, conn.device, loop.time())
        except SessionRefused as e:
            conn.send(p.Error(e.code, e.reason))
            return
        fut = self._waiting.get(token)
        if fut is None or fut.done():
            conn.send(p.Error(p.NOT_FOUND, "session is gone"))
            return
        fut.set_result(conn)
        await conn.done  # the requester's task runs the pipe and resolves this

    async def _run_session(self, a: _Conn, b: _Conn) -> None:
        loop = asyncio.get_running_loop()
        a.send(p.Paired(b.device.raw))
        b.send(p.Paired(a.device.raw))

        async def expect_go(c: _Conn) -> None:
            msg = await c.read()
            if not isinstance(msg, p.Go):
                raise p.RelayProtocolError(f"expected Go, got {type(msg).__name__}")

        await wait_for(asyncio.gather(expect_go(a), expect_go(b)), self.limits.pending_timeout)
        self._sessions_total += 1
        idle = IdleTimer(self.limits.idle_timeout, loop.time())
        pipes = {
            asyncio.ensure_future(self._pipe(a, b, idle)),
            asyncio.ensure_future(self._pipe(b, a, idle)),
        }
        try:
            while True:
                done, _ = await asyncio.wait(
                    pipes,
                    timeout=max(0.0, idle.deadline() - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done or idle.expired(loop.time()):
                    break
        finally:
            for t in pipes:
                t.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, src: _Conn, dst: _Conn, idle: IdleTimer) -> None:
        loop = asyncio.get_running_loop()
        rate = self.limits.rate_limit
        bucket = TokenBucket(rate, max(rate, PIPE_CHUNK)) if rate else None
        try:
            while chunk := await src.reader.read(PIPE_CHUNK):
                now = loop.time()
                idle.touch(now)
                self._bytes += len(chunk)
                if bucket is not None and (delay := bucket.take(len(chunk), now)) > 0:
                    await asyncio.sleep(delay)  # rate cap, not synchronisation
                dst.writer.write(chunk)
                await dst.writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    async def _punch_request(self, conn: _Conn, target: DeviceId) -> None:
        loop = asyncio.get_running_loop()
        ctl = self._controls.get(target)
        if ctl is None:
            conn.send(p.Error(p.NOT_REACHABLE, "device is not connected to this relay"))
            return
        cookie = self._rendezvous.issue_cookie(conn.device)
        try:
            try:
                punch_id = self._rendezvous.open_punch(cookie, ctl.cookie, loop.time())
            except PunchLimit as e:
                conn.send(p.Error(p.LIMIT, str(e)))
                return
            fut: asyncio.Future[ReadyPunch] = loop.create_future()
            self._punches[punch_id] = fut
            conn.send(p.PunchPrepare(punch_id, cookie))
            ctl.send(p.PunchInvite(punch_id, conn.device.raw))
            try:
                ready = await wait_for(fut, self.limits.punch_timeout)
            except TimeoutError:
                self._punch_failed += 1
                self._rendezvous.cancel(punch_id)
                conn.send(p.Error(p.TIMEOUT, "no UDP binding from both sides in time"))
                return
            finally:
                self._punches.pop(punch_id, None)
            self._punched += 1
            delay = PUNCH_START_DELAY_MS
            conn.send(p.PunchStart(punch_id, *ready.target_addr, delay))
            ctl.send(p.PunchStart(punch_id, *ready.requester_addr, delay))
            # the requester hangs up once it has PunchStart; don't wait longer than a punch
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
                await wait_for(conn.read(), self.limits.punch_timeout)
        finally:
            self._rendezvous.revoke(cookie)

"""Rendezvous client: punched QUIC connections through a relay's rendezvous.

Initiator, `punch_and_connect()`:
  1. TLS connection to the relay: PunchRequest(peer) -> PunchPrepare(punch_id, cookie).
  2. Bind(cookie) datagrams from our UDP socket every BIND_INTERVAL until the relay answers with
     PunchStart(punch_id, peer's observed address, delay), after it saw both sides bind.
  3. punch() from the same socket, then a QUIC client connection on it to the address that
     answered; the peer's device ID must be the one we asked for.
Responder, `PunchResponder`: one long-lived UDP socket with a QUIC endpoint accepting connections;
on PunchInvite (over the relay control connection) it binds its cookie, on PunchStart it punches.
A Bind every KEEPALIVE_INTERVAL keeps its mapping towards the rendezvous open and tells it our
public address. Failures raise PunchFailed (a SyncerError) within a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from syncer.deviceid import DeviceId
from syncer.identity import Identity
from syncer.nat.punch import PUNCH_DURATION, PunchFailed, punch
from syncer.net import udp_messages as m
from syncer.net.quic import HANDSHAKE_TIMEOUT, QuicEndpoint, QuicStream
from syncer.net.transport import Stream, StreamHandler, TransportError
from syncer.net.udp import KEEPALIVE_INTERVAL, Addr, UdpEndpoint
from syncer.relay import protocol as p
from syncer.relay.client import RelayTransport

log = logging.getLogger(__name__)

BIND_INTERVAL = 0.1
RENDEZVOUS_TIMEOUT = 10.0  # request -> PunchStart (the relay gives up after its punch_timeout)
MAX_BINDERS = 8  # punch invitations answered at once


async def resolve_udp(host: str, port: int) -> Addr:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise TransportError(f"cannot resolve {host}")
    return str(infos[0][4][0]), int(infos[0][4][1])  # (host, port, ...) for both IP families


def _wildcard_for(addr: Addr) -> str:
    return "::" if ":" in addr[0] else "0.0.0.0"


async def _bind_repeatedly(udp: UdpEndpoint, server: Addr, cookie: bytes, interval: float) -> None:
    """Bind(cookie) every `interval` until cancelled (UDP may drop any one of them)."""
    datagram = m.padded(m.Bind(cookie))
    while True:
        udp.sendto(datagram, server)
        await asyncio.sleep(interval)  # retransmission pacing, not synchronisation


async def probe(udp: UdpEndpoint, server: Addr, timeout: float = 3.0, interval: float = 0.2) -> Addr:
    """Our public address as the rendezvous at `server` sees it (STUN-like)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Addr] = loop.create_future()

    def on_control(msg: m.Control, addr: Addr) -> None:
        if isinstance(msg, m.Bound) and addr == server and not answer.done():
            answer.set_result((msg.host, msg.port))

    remove = udp.add_control_handler(on_control)
    datagram = m.padded(m.Probe())
    try:
        async with asyncio.timeout(timeout):
            while True:
                udp.sendto(datagram, server)
                done, _ = await asyncio.wait({answer}, timeout=interval)
                if done:
                    return answer.result()
    except TimeoutError:
        raise TransportError(f"rendezvous {server[0]}:{server[1]} did not answer") from None
    finally:
        remove()


async def punch_and_connect(
    identity: Identity,
    rendezvous_url: str,
    peer_device_id: DeviceId,
    *,
    endpoint: UdpEndpoint | None = None,
    punch_duration: float = PUNCH_DURATION,
    timeout: float = RENDEZVOUS_TIMEOUT,
    keepalive: float = KEEPALIVE_INTERVAL,
) -> QuicStream:
    """A QUIC stream to `peer_device_id` over a hole punched via the relay at `rendezvous_url`.

    Uses `endpoint`'s socket if given (the caller keeps owning it), else a fresh socket that
    closes with the stream. Raises PunchFailed (NAT not punchable, peer gone) or TransportError
    (relay unreachable); takes at most about timeout + punch_duration + HANDSHAKE_TIMEOUT."""
    relay = RelayTransport(identity, rendezvous_url)
    server = await resolve_udp(relay.relay.host, relay.relay.port)
    udp = endpoint or await UdpEndpoint.bind(_wildcard_for(server), 0)
    quic = QuicEndpoint(udp, identity, owns_socket=endpoint is None, keepalive=keepalive)
    try:
        conn = await relay.open(p.PunchRequest(peer_device_id.raw))
        binder: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(timeout):
                prepare = await conn.read()
                if isinstance(prepare, p.Error):
                    raise PunchFailed(f"rendezvous {relay.relay}: {prepare.reason}")
                if not isinstance(prepare, p.PunchPrepare):
                    raise PunchFailed(f"rendezvous {relay.relay}: unexpected {type(prepare).__name__}")
                binder = asyncio.ensure_future(_bind_repeatedly(udp, server, prepare.cookie, BIND_INTERVAL))
                start = await conn.read()
            if isinstance(start, p.Error):
                raise PunchFailed(f"rendezvous {relay.relay}: {start.reason}")
            if not isinstance(start, p.PunchStart) or start.punch_id != prepare.punch_id:
                raise PunchFailed(f"rendezvous {relay.relay}: unexpected {type(start).__name__}")
        except TimeoutError:
            raise PunchFailed(f"rendezvous {relay.relay}: no punch coordination within {timeout:.0f} s") from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError, p.RelayProtocolError) as e:
            raise PunchFailed(f"rendezvous {relay.relay}: {e or type(e).__name__}") from None
        finally:
            if binder is not None:
                binder.cancel()
            conn.writer.close()  # the relay's part is done
        peer = await punch(
            udp, start.punch_id, (start.host, start.port), delay=start.delay_ms / 1000, duration=punch_duration
        )
        stream = await quic.connect(peer, HANDSHAKE_TIMEOUT)
    except BaseException:
        if endpoint is None:
            await quic.close()
        raise
    if stream.peer != peer_device_id:
        stream.abort()
        raise TransportError(f"punched peer is {stream.peer}, expected {peer_device_id}")
    if endpoint is None:
        stream._d.done.add_done_callback(lambda _: udp.close())
    return stream


class PunchResponder:
    """Accepts punched QUIC connections arranged by a relay's rendezvous.

    Streams go to `handler` if given, else are yielded by `accept()` / `async for`. Pass
    `relay` to share an already registered RelayTransport's control connection; otherwise the
    responder registers its own (relayed sessions are then not accepted on it)."""

    def __init__(
        self,
        identity: Identity,
        rendezvous_url: str,
        handler: StreamHandler | None = None,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        relay: RelayTransport | None = None,
        punch_duration: float = PUNCH_DURATION,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self.identity = identity
        self._url = rendezvous_url
        self._handler = handler
        self._host, self._port = host, port
        self._relay = relay
        self._own_relay = relay is None
        self._punch_duration = punch_duration
        self._keepalive_interval = keepalive
        self._queue: asyncio.Queue[Stream] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._binders: dict[bytes, asyncio.Task[None]] = {}
        self._remove_listener = lambda: None
        self.udp: UdpEndpoint | None = None
        self.quic: QuicEndpoint | None = None
        self.server: Addr = ("", 0)
        self.public_address: Addr | None = None
        self.punches_ok = 0
        self.punches_failed = 0

    async def start(self) -> PunchResponder:
        relay = self._relay or RelayTransport(self.identity, self._url)
        self._relay = relay
        self.server = await resolve_udp(relay.relay.host, relay.relay.port)
        self.udp = await UdpEndpoint.bind(self._host, self._port)
        self.quic = QuicEndpoint(
            self.udp, self.identity, self._on_stream, owns_socket=True, keepalive=self._keepalive_interval
        )
        self.udp.add_control_handler(self._on_udp)
        self._remove_listener = relay.add_listener(self._on_relay)
        try:
            if self._own_relay:
                await relay.register(None)
            elif relay.cookie is not None:
                self._on_relay(p.Joined(relay.cookie))
        except BaseException:
            await self.close()
            raise
        self._spawn(self._keepalive())
        return self

    async def __aenter__(self) -> PunchResponder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def local_address(self) -> Addr:
        assert self.udp is not None
        return self.udp.local_address

    async def accept(self) -> Stream:
        return await self._queue.get()

    async def __aiter__(self) -> AsyncIterator[Stream]:
        while True:
            yield await self._queue.get()

    async def close(self) -> None:
        self._remove_listener()
        for t in [*self._tasks, *self._binders.values()]:
            t.cancel()
        if self._own_relay and self._relay is not None:
            await self._relay.close()
        if self.quic is not None:
            await self.quic.close()

    # internals ----------------------------------------------------------------------------------
    async def _on_stream(self, stream: Stream) -> None:
        if self._handler is not None:
            await self._handler(stream)
        else:
            await self._queue.put(stream)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _send_bind(self) -> None:
        cookie = self._relay.cookie if self._relay is not None else None
        if cookie is not None and self.udp is not None:
            self.udp.sendto(m.padded(m.Bind(cookie)), self.server)

    async def _keepalive(self) -> None:
        while True:
            self._send_bind()  # keeps our NAT mapping towards the rendezvous, refreshes public_address
            await asyncio.sleep(self._keepalive_interval)

    def _on_udp(self, msg: m.Control, addr: Addr) -> None:
        if isinstance(msg, m.Bound) and addr == self.server:
            self.public_address = (msg.host, msg.port)

    def _on_relay(self, msg: p.Message) -> None:
        if isinstance(msg, p.Joined):
            self._send_bind()
        elif isinstance(msg, p.PunchInvite):
            cookie = self._relay.cookie if self._relay is not None else None
            if cookie is None or self.udp is None or msg.punch_id in self._binders:
                return
            if len(self._binders) >= MAX_BINDERS or not self._invited_by_accepted(msg.device):
                return  # a stranger (or a flood) gets no UDP traffic from us
            binder = asyncio.ensure_future(_bind_repeatedly(self.udp, self.server, cookie, BIND_INTERVAL))
            self._binders[msg.punch_id] = binder
            # the relay gives up after its punch timeout; stop binding by then in any case
            asyncio.get_running_loop().call_later(RENDEZVOUS_TIMEOUT, binder.cancel)
            pid = msg.punch_id
            binder.add_done_callback(lambda _: self._forget_binder(pid))
        elif isinstance(msg, p.PunchStart):
            agreed = self._binders.pop(msg.punch_id, None)
            if agreed is None:
                return  # not a punch we agreed to
            agreed.cancel()
            self._spawn(self._punch(msg))

    def _forget_binder(self, pid: bytes) -> None:
        self._binders.pop(pid, None)

    def _invited_by_accepted(self, raw: bytes) -> bool:
        try:
            device = p.device_bytes(raw)
        except p.RelayProtocolError:
            return False
        return self._relay is None or self._relay.accepts(device)

    async def _punch(self, start: p.PunchStart) -> None:
        assert self.udp is not None
        try:
            await punch(
                self.udp,
                start.punch_id,
                (start.host, start.port),
                delay=start.delay_ms / 1000,
                duration=self._punch_duration,
            )
            self.punches_ok += 1
        except PunchFailed as e:
            self.punches_failed += 1
            log.info("punch failed: %s", e)


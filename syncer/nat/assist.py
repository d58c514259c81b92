"""Help from paired devices: observed addresses, hole punching and relaying through a device
connected to both ends — no `syncer relay` needed (docs/nat.md "Through a paired device").

Roles, for ends A and B and a helper C paired with both (sessions A-C and C-B exist):

Addresses: right after connecting, each side sends `PeerAddresses(observed, listen, external)`:
the address it sees the other at, its own listen addresses, and what it believes reaches it.

Punch (`punch_via`, the idea of BEP 55 / libp2p DCUtR):
  A: STUN from its QUIC socket to C's QUIC socket -> A's mapping; PunchVia(REQUEST, id, B, a)
  C: PunchVia(OFFER, id, A, a) to B (A as C authenticated it, not as A claims)
  B: STUN to C -> b; PunchVia(ANSWER, id, A, b) to C; starts punching towards a at once
  C: PunchVia(ANSWER, id, B, b) to A;  A: punches towards b, then QUIC from the same socket
  The QUIC connection B accepts from that address is marked "punched". With an
  endpoint-dependent NAT on either side the punch fails within its duration (PUNCH_DURATION).

Relay (`relay_via`, last resort): A sends RelayVia(OPEN, ch_a, B) to C; C (if it relays for
paired devices and is within its limits) sends RelayVia(INCOMING, ch_b, A) to B; B accepts
(RelayVia(ACCEPT, ch_b)), C answers A (ACCEPTED, ch_a). From then on C forwards RelayData and
credit between (A, ch_a) and (B, ch_b) without looking inside: A and B run their own mutual TLS
through the channel (channel.py), as TLS client and server. Shown as `relay (via C's name)`.

Rules: everything is only between paired devices (sessions exist only with them) and checked
again at the far end (B only answers offers and channels from a device it paired); each role has
its own switch (nat.assist, nat.relay_via_devices); punches waiting at a helper, channels per
device and in total, and every wait are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncer.deviceid import DeviceId
from syncer.errors import SyncerError
from syncer.identity import Identity
from syncer.nat.channel import ChannelStream
from syncer.nat.punch import PUNCH_DURATION, PunchFailed, punch
from syncer.net import stun, tls
from syncer.net.quic import QuicEndpoint
from syncer.net.transport import Address, Stream, TransportError
from syncer.runtime.tasks import TaskSet
from syncer.runtime.timeouts import wait_for
from syncer.wire import messages as m

log = logging.getLogger(__name__)

FEATURE = "peer-assist"
ANSWER_TIMEOUT = 10.0  # request -> answer through the helper
PENDING_PUNCHES = 16  # punches a helper forwards at once
MAX_CHANNELS = 16  # channels a helper relays at once
MAX_CHANNELS_PER_DEVICE = 4
MAX_ANSWERING = 4  # punch offers answered at once (each: a STUN request and PUNCH_DURATION)
PUNCHED_GRACE = 30.0  # how long an inbound QUIC connection from a punched address counts as punched


class AssistFailed(SyncerError):
    pass


@dataclass
class PeerInfo:
    observed: str = ""  # our address as this peer saw it
    listen: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


def _host(url: str) -> str:
    return Address.parse(url).host


def _udp_address(host: str, port: int) -> bool:
    """An IP literal and a port (never a name: nothing a peer sends makes us resolve names)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return 0 < port < 65536


def _quic_port(listen: list[str]) -> int | None:
    for url in listen:
        if url.startswith("quic://"):
            with contextlib.suppress(TransportError):
                return Address.parse(url).port
    return None


class PeerAssist:
    def __init__(
        self,
        identity: Identity,
        sessions: dict[DeviceId, Any],
        paired: Callable[[DeviceId], bool],
        setting: Callable[[str], Any],
        on_stream: Callable[[Stream, str], Any],
        names: Callable[[DeviceId], str],
    ) -> None:
        self.identity = identity
        self.sessions = sessions  # the daemon's: device -> PeerSession
        self.paired = paired
        self.setting = setting
        self.on_stream = on_stream  # (stream, route) -> awaitable: the daemon's pairing gate
        self.names = names
        self.quic: QuicEndpoint | None = None  # the QUIC listener's endpoint (set by the daemon)
        self.listen: list[str] = []
        self.external: Callable[[], list[str]] = list  # what we believe reaches us (NatService)
        self.on_addresses: Callable[[DeviceId, PeerInfo], None] = lambda d, i: None
        self.peers: dict[DeviceId, PeerInfo] = {}
        self._e2e_client = tls.client_context(identity)
        self._e2e_server = tls.server_context(identity)
        self._answers: dict[bytes, asyncio.Future[m.PunchVia]] = {}  # as initiator
        self._forwarding: dict[bytes, tuple[DeviceId, float]] = {}  # as helper: punch id -> initiator
        self._punched: dict[tuple[str, int], float] = {}  # addresses we punched towards (as target)
        # channels: (device, channel id) -> ChannelStream (an end) or (device, id) (a helper's other leg)
        self._ends: dict[tuple[DeviceId, int], ChannelStream] = {}
        self._legs: dict[tuple[DeviceId, int], tuple[DeviceId, int]] = {}
        self._accepts: dict[tuple[DeviceId, int], asyncio.Future[m.RelayVia]] = {}
        self._tasks = TaskSet(self._task_failed)
        self._answering = 0
        self.stats = {"punch_forwarded": 0, "punch_ok": 0, "punch_failed": 0, "relayed_channels": 0, "relayed_bytes": 0}

    # --- sessions ------------------------------------------------------------------------------------
    @staticmethod
    def supported(session: Any) -> bool:
        return bool(session.has_feature(FEATURE))

    def connected(self, session: Any) -> None:
        """Tell a newly connected device what we see and know."""
        if not self.supported(session):
            return
        msg = m.PeerAddresses(session.stream.remote_address, list(self.listen), list(self.external())[:8])
        with contextlib.suppress(ConnectionError):
            session.send(msg)

    def disconnected(self, device: DeviceId) -> None:
        self.peers.pop(device, None)
        for key in [k for k in self._ends if k[0] == device]:
            self._ends.pop(key).ended()
        for key in [k for k in self._legs if k[0] == device]:
            other = self._legs.pop(key)
            self._legs.pop(other, None)
            with contextlib.suppress(AssistFailed, ConnectionError):
                self._send(other[0], m.RelayVia(m.RELAY_CLOSE, other[1], reason="the other end left"))

    def helpers(self, target: DeviceId) -> list[DeviceId]:
        """Connected devices that may help to reach `target` (they say whether they can)."""
        return [d for d, s in self.sessions.items() if d != target and self.supported(s)][:2]

    def route_of(self, stream: Stream) -> str:
        """'punched' for an inbound QUIC connection from an address we just punched towards."""
        if stream.transport != "quic":
            return "direct"
        with contextlib.suppress(TransportError):
            a = Address.parse(stream.remote_address)
            until = self._punched.get((a.host, a.port))
            if until is not None and until > time.monotonic():
                return "punched"
        return "direct"

    # --- messages (called from a session's read loop: never waits; may return an event to wait
    # for before reading on, when relayed data meets a full queue) ---------------------------------
    def on_message(self, session: Any, msg: m.Message) -> asyncio.Event | None:
        try:
            if isinstance(msg, m.PeerAddresses):
                self._on_addresses(session, msg)
            elif isinstance(msg, m.PunchVia):
                self._on_punch(session, msg)
            elif isinstance(msg, m.RelayVia):
                return self._on_relay(session, msg)
            elif isinstance(msg, m.RelayData):
                return self._on_data(session, msg)
        except (ValueError, TransportError, AssistFailed, ConnectionError) as e:
            log.info("peer assist: %s from %s not handled: %s", type(msg).__name__, session.device.short, e)
        return None

    def _on_addresses(self, session: Any, msg: m.PeerAddresses) -> None:
        info = PeerInfo(msg.observed[:200], [u[:200] for u in msg.listen[:8]], [u[:200] for u in msg.external[:8]])
        self.peers[session.device] = info
        self.on_addresses(session.device, info)

    def quic_addr(self, device: DeviceId) -> tuple[str, int] | None:
        """The device's QUIC socket as we reach it (it answers STUN there), if known."""
        try:
            return self._helper_udp(device)
        except (AssistFailed, TransportError):
            return None

    def _send(self, device: DeviceId, msg: m.Message) -> asyncio.Event | None:
        """Queue `msg` to `device`; an event to wait for if its queue is long (else None)."""
        session = self.sessions.get(device)
        if session is None:
            raise AssistFailed(f"{self.names(device)} is not connected")
        session.send(msg)
        if session.writable():
            return None
        room = asyncio.Event()

        async def wait() -> None:
            with contextlib.suppress(ConnectionError):
                await session.wait_writable()
            room.set()

        self._tasks.spawn(wait())  # one per congested forward, not per message: the caller waits on it
        return room

    async def _send_paced(self, device: DeviceId, msg: m.Message) -> None:
        room = self._send(device, msg)
        if room is not None:
            await room.wait()

    @staticmethod
    def _task_failed(exc: BaseException) -> None:
        if not isinstance(exc, (ConnectionError, SyncerError, OSError)):  # a peer went away: expected
            log.warning("peer assist task failed: %r", exc)

    # --- punching --------------------------------------------------------------------------------------
    def _helper_udp(self, helper: DeviceId) -> tuple[str, int]:
        """The helper's QUIC socket (its STUN responder): its IP as we reach it, its QUIC port."""
        session = self.sessions.get(helper)
        info = self.peers.get(helper)
        port = _quic_port(info.listen) if info else None
        if session is None or port is None:
            raise AssistFailed(f"{self.names(helper)} has no QUIC socket to punch with")
        return _host(session.stream.remote_address), port

    async def _mapping(self, helper: DeviceId) -> tuple[str, int]:
        if self.quic is None:
            raise AssistFailed("no QUIC listener to punch from")
        try:
            return await stun.binding(self.quic.udp, self._helper_udp(helper))
        except stun.StunError as e:
            raise AssistFailed(f"no STUN answer from {self.names(helper)}: {e}") from None

    async def punch_via(self, helper: DeviceId, target: DeviceId) -> Stream:
        """A QUIC connection to `target` through a hole punched with `helper`'s help."""
        if not self.setting("nat.assist") or self.quic is None:
            raise AssistFailed("assisted punching is off")
        host, port = await self._mapping(helper)
        pid = os.urandom(16)
        fut: asyncio.Future[m.PunchVia] = asyncio.get_running_loop().create_future()
        self._answers[pid] = fut
        try:
            self._send(helper, m.PunchVia(m.PUNCH_REQUEST, pid, target.raw, host, port))
            try:
                answer = await wait_for(fut, ANSWER_TIMEOUT)
            except TimeoutError:
                raise AssistFailed(f"no punch answer through {self.names(helper)}") from None
        finally:
            self._answers.pop(pid, None)
        if answer.op == m.PUNCH_ERROR:
            raise AssistFailed(f"{self.names(helper)}: {answer.reason}")
        try:
            peer = await punch(self.quic.udp, pid, (answer.host, answer.port), duration=PUNCH_DURATION)
        except PunchFailed:
            self.stats["punch_failed"] += 1
            raise
        self.stats["punch_ok"] += 1
        stream = await self.quic.connect(peer)
        if stream.peer != target:
            stream.abort()
            raise TransportError(f"punched peer is {stream.peer}, expected {target}")
        return stream

    def _on_punch(self, session: Any, msg: m.PunchVia) -> None:
        me = session.device
        if msg.op == m.PUNCH_REQUEST:  # we are the helper
            target = DeviceId(msg.device)
            error = self._refuse_punch(target)
            if error:
                session.send(m.PunchVia(m.PUNCH_ERROR, msg.punch_id, msg.device, "", 0, error))
                return
            self._forwarding[msg.punch_id] = (me, time.monotonic() + ANSWER_TIMEOUT)
            self.stats["punch_forwarded"] += 1
            self._send(target, m.PunchVia(m.PUNCH_OFFER, msg.punch_id, me.raw, msg.host[:64], msg.port))
        elif msg.op == m.PUNCH_OFFER:  # we are the target; `me` is the helper
            if self._answering >= MAX_ANSWERING or not _udp_address(msg.host, msg.port):
                session.send(m.PunchVia(m.PUNCH_ERROR, msg.punch_id, msg.device, "", 0, "busy or bad address"))
                return
            self._answering += 1  # counted now: a burst of offers in one read must not pass
            self._tasks.spawn(self._answer_offer(me, msg))
        elif msg.op in (m.PUNCH_ANSWER, m.PUNCH_ERROR):
            fut = self._answers.get(msg.punch_id)
            if fut is not None:  # we are the initiator
                if not fut.done() and (msg.op == m.PUNCH_ERROR or _udp_address(msg.host, msg.port)):
                    fut.set_result(msg)
                return
            fwd = self._forwarding.pop(msg.punch_id, None)
            if fwd is not None and fwd[1] > time.monotonic() and DeviceId(msg.device) == fwd[0]:
                self._send(fwd[0], m.PunchVia(msg.op, msg.punch_id, me.raw, msg.host[:64], msg.port, msg.reason[:200]))

    def _refuse_punch(self, target: DeviceId) -> str:
        now = time.monotonic()
        for pid, (_, until) in list(self._forwarding.items()):
            if until <= now:
                del self._forwarding[pid]
        if not self.setting("nat.assist"):
            return "this device does not coordinate punches"
        if target not in self.sessions or not self.supported(self.sessions[target]):
            return "the other device is not connected here"
        if len(self._forwarding) >= PENDING_PUNCHES:
            return "too many punches at once"
        return ""

    async def _answer_offer(self, helper: DeviceId, offer: m.PunchVia) -> None:
        source = DeviceId(offer.device)
        try:
            if not self.paired(source) or not self.setting("nat.assist") or self.quic is None:
                self._send(helper, m.PunchVia(m.PUNCH_ERROR, offer.punch_id, offer.device, "", 0, "refused"))
                return
            try:
                host, port = await self._mapping(helper)
            except AssistFailed as e:
                self._send(helper, m.PunchVia(m.PUNCH_ERROR, offer.punch_id, offer.device, "", 0, str(e)[:200]))
                return
            self._punched[(offer.host, offer.port)] = time.monotonic() + PUNCHED_GRACE
            if len(self._punched) > 64:
                self._punched.pop(next(iter(self._punched)))
            self._send(helper, m.PunchVia(m.PUNCH_ANSWER, offer.punch_id, offer.device, host, port))
            try:
                peer = await punch(self.quic.udp, offer.punch_id, (offer.host, offer.port), duration=PUNCH_DURATION)
                self._punched[peer] = time.monotonic() + PUNCHED_GRACE
                self.stats["punch_ok"] += 1
            except PunchFailed as e:
                self.stats["punch_failed"] += 1
                log.info("punch from %s via %s failed: %s", source.short, self.names(helper), e)
        finally:
            self._answering -= 1

    # --- relaying ----------------------------------------------------------------------------------------
    def _new_channel(self, device: DeviceId) -> int:
        while True:
            ch = int.from_bytes(os.urandom(4), "big")
            if (device, ch) not in self._ends and (device, ch) not in self._legs and (device, ch) not in self._accepts:
                return ch

    def _stream(self, device: DeviceId, channel: int, server_side: bool, helper: DeviceId) -> ChannelStream:
        async def send_data(data: bytes) -> None:
            await self._send_paced(helper, m.RelayData(channel, data))

        async def send_credit(n: int) -> None:
            self._send(helper, m.RelayVia(m.RELAY_CREDIT, channel, credit=n))

        def on_close() -> None:
            if self._ends.pop((helper, channel), None) is not None:
                with contextlib.suppress(AssistFailed, ConnectionError):
                    self._send(helper, m.RelayVia(m.RELAY_CLOSE, channel))

        s = ChannelStream(
            self._e2e_server if server_side else self._e2e_client,
            server_side,
            send_data,
            send_credit,
            on_close,
            m.RELAY_CHUNK,
            f"relay (via {self.names(helper)})",
            f"device://{helper.short}",
        )
        self._ends[(helper, channel)] = s
        return s

    async def relay_via(self, helper: DeviceId, target: DeviceId) -> Stream:
        """A stream to `target` relayed by `helper`, with end-to-end TLS inside."""
        if not self.setting("nat.relay_via_devices"):
            raise AssistFailed("relaying through devices is off")
        ch = self._new_channel(helper)
        fut: asyncio.Future[m.RelayVia] = asyncio.get_running_loop().create_future()
        self._accepts[(helper, ch)] = fut
        try:
            self._send(helper, m.RelayVia(m.RELAY_OPEN, ch, target.raw))
            try:
                answer = await wait_for(fut, ANSWER_TIMEOUT)
            except TimeoutError:
                raise AssistFailed(f"{self.names(helper)} did not open a relay channel") from None
        finally:
            self._accepts.pop((helper, ch), None)
        if answer.op != m.RELAY_ACCEPTED:
            raise AssistFailed(f"{self.names(helper)}: {answer.reason or 'relay refused'}")
        stream = self._stream(target, ch, False, helper)
        try:
            await stream.handshake()
        except (TimeoutError, ssl.SSLError, ConnectionError, TransportError) as e:
            stream.abort()
            raise AssistFailed(f"end-to-end TLS through {self.names(helper)} failed: {e or type(e).__name__}") from None
        if stream.peer != target:
            stream.abort()
            raise TransportError(f"relayed peer is {stream.peer}, expected {target}")
        return stream

    def _on_relay(self, session: Any, msg: m.RelayVia) -> asyncio.Event | None:
        me = session.device
        key = (me, msg.channel)
        if msg.op == m.RELAY_OPEN:  # helper: A asks for a channel to B
            target = DeviceId(msg.device)
            reason = self._refuse_relay(me, target)
            if reason:
                session.send(m.RelayVia(m.RELAY_CLOSE, msg.channel, reason=reason))
                return None
            ch_b = self._new_channel(target)
            self._legs[key] = (target, ch_b)
            self._legs[(target, ch_b)] = key
            return self._send(target, m.RelayVia(m.RELAY_INCOMING, ch_b, me.raw))
        if msg.op == m.RELAY_INCOMING:  # end B: `me` is the helper
            source = DeviceId(msg.device)
            if not self.paired(source) or not self.setting("nat.relay_via_devices"):
                session.send(m.RelayVia(m.RELAY_CLOSE, msg.channel, reason="refused"))
                return None
            if sum(1 for k in self._ends if k[0] == me) >= MAX_CHANNELS_PER_DEVICE or (me, msg.channel) in self._ends:
                session.send(m.RelayVia(m.RELAY_CLOSE, msg.channel, reason="too many channels"))
                return None
            stream = self._stream(source, msg.channel, True, me)  # registered now, counted now
            session.send(m.RelayVia(m.RELAY_ACCEPT, msg.channel))
            self._tasks.spawn(self._incoming(me, source, stream))
        elif msg.op == m.RELAY_ACCEPT:  # helper: B accepted
            other = self._legs.get(key)
            if other is not None:
                self.stats["relayed_channels"] += 1
                return self._send(other[0], m.RelayVia(m.RELAY_ACCEPTED, other[1]))
        elif msg.op in (m.RELAY_ACCEPTED, m.RELAY_CLOSE) and key in self._accepts:
            fut = self._accepts[key]
            if not fut.done():
                fut.set_result(msg)
        elif msg.op == m.RELAY_CLOSE:
            end = self._ends.pop(key, None)
            if end is not None:
                end.ended()
            other = self._legs.pop(key, None)
            if other is not None:
                self._legs.pop(other, None)
                return self._send(other[0], m.RelayVia(m.RELAY_CLOSE, other[1], reason=msg.reason[:200]))
        elif msg.op == m.RELAY_CREDIT:
            end = self._ends.get(key)
            if end is not None:
                end.grant(msg.credit)
            elif (other := self._legs.get(key)) is not None:
                return self._send(other[0], m.RelayVia(m.RELAY_CREDIT, other[1], credit=msg.credit))
        return None

    def _refuse_relay(self, source: DeviceId, target: DeviceId) -> str:
        if not self.setting("nat.relay_via_devices"):
            return "this device does not relay"
        if target not in self.sessions or not self.supported(self.sessions[target]):
            return "the other device is not connected here"
        if len(self._legs) // 2 >= MAX_CHANNELS:
            return "too many relayed channels"
        if sum(1 for k in self._legs if k[0] == source) >= MAX_CHANNELS_PER_DEVICE:
            return "too many relayed channels for this device"
        return ""

    async def _incoming(self, helper: DeviceId, source: DeviceId, stream: ChannelStream) -> None:
        try:
            await stream.handshake()
        except (TimeoutError, ssl.SSLError, ConnectionError, TransportError) as e:
            log.info("relayed channel from %s via %s: TLS failed: %s", source.short, self.names(helper), e or type(e).__name__)
            stream.abort()
            return
        if stream.peer != source:
            log.warning("relayed channel via %s: expected %s, reached %s", self.names(helper), source.short, stream.peer.short)
            stream.abort()
            return
        await self.on_stream(stream, "via")

    def _on_data(self, session: Any, msg: m.RelayData) -> asyncio.Event | None:
        key = (session.device, msg.channel)
        end = self._ends.get(key)
        if end is not None:
            if len(msg.data) > m.RELAY_CHUNK or not end.feed(msg.data):
                end.abort()
            return None
        other = self._legs.get(key)
        if other is not None and len(msg.data) <= m.RELAY_CHUNK:
            self.stats["relayed_bytes"] += len(msg.data)
            return self._send(other[0], m.RelayData(other[1], msg.data))
        return None

    async def close(self) -> None:
        for s in list(self._ends.values()):
            s.ended()
        self._tasks.cancel()

"""One UDP socket shared by rendezvous, punching, keepalives and QUIC.

Datagrams are routed by their first bytes: STUN messages (RFC 8489: two zero bits, then the
magic cookie at bytes 4-7) to the STUN handlers, control datagrams (0x00, see udp_messages.py) to
every registered control handler, QUIC packets (fixed bit 0x40) to the QUIC handler, anything
else is dropped. Replies go out of this same socket, so they leave from the address and port the peer's
NAT has a mapping for (the lab's "reply from the right source" pitfall).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from syncer.net import stun
from syncer.net import udp_messages as messages
from syncer.net.udp_messages import Control

log = logging.getLogger(__name__)

Addr = tuple[str, int]
ControlHandler = Callable[[Control, Addr], None]
DatagramHandler = Callable[[bytes, Addr], None]

# UDP conntrack entries last 30 s until a flow is "assured"; stay well below
KEEPALIVE_INTERVAL = 15.0

# best effort: the kernel caps these at net.core.[rw]mem_max; bigger buffers absorb QUIC bursts
SOCKET_BUFFER = 4 << 20


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket; `::` is dual stack (IPv4 peers appear as ::ffff:a.b.c.d) and falls back to
    0.0.0.0 where the host has no IPv6."""
    if host == "::":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:
            return bind_udp("0.0.0.0", port)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            if e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                return bind_udp("0.0.0.0", port)
            raise
        return sock
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def plain_host(host: str) -> str:
    """An IPv4-mapped IPv6 address (what a dual-stack socket reports) as plain IPv4."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._control_handlers: list[ControlHandler] = []
        self._stun_handlers: list[DatagramHandler] = []
        self._v6 = False
        self.on_quic: DatagramHandler | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.local_address: Addr = ("", 0)

    @classmethod
    async def bind(cls, host: str = "0.0.0.0", port: int = 0) -> UdpEndpoint:
        return await cls.from_socket(bind_udp(host, port))

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> UdpEndpoint:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, sock=sock)
        return proto

    # asyncio.DatagramProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.local_address = transport.get_extra_info("sockname")[:2]
        sock = transport.get_extra_info("socket")
        self._v6 = sock is not None and sock.family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        # one spelling per peer for everything above (a dual-stack socket reports ::ffff:a.b.c.d)
        addr = (plain_host(addr[0]), addr[1])
        if stun.is_stun(data):
            for stun_handler in list(self._stun_handlers):
                stun_handler(data, addr)
        elif messages.is_control(data):
            msg = messages.decode(data)
            if msg is not None:
                for handler in list(self._control_handlers):
                    handler(msg, addr)
        elif messages.is_quic(data) and self.on_quic is not None:
            self.on_quic(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while punching) are expected; punching retries anyway
        log.debug("udp error on %s: %s", self.local_address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # API -----------------------------------------------------------------------------------
    def add_control_handler(self, handler: ControlHandler) -> Callable[[], None]:
        """Register `handler`; returns a function that unregisters it."""
        self._control_handlers.append(handler)
        return lambda: self._control_handlers.remove(handler) if handler in self._control_handlers else None

    def send_control(self, msg: Control, addr: Addr) -> None:
        self.sendto(messages.encode(msg), addr)

    def sendto(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if self._v6 and "." in addr[0] and ":" not in addr[0]:
                addr = (f"::ffff:{addr[0]}", addr[1])
            with contextlib.suppress(OSError):  # e.g. no route: UDP is best effort anyway
                self._transport.sendto(data, addr)

    def add_stun_handler(self, handler: DatagramHandler) -> Callable[[], None]:
        """Register `handler` for STUN messages (RFC 8489, told apart by their magic cookie)."""
        self._stun_handlers.append(handler)
        return lambda: self._stun_handlers.remove(handler) if handler in self._stun_handlers else None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class Keepalive:
    """Send something at least every `interval` so a NAT mapping stays open."""

    interval: float
    last_sent: float

    def sent(self, now: float) -> None:
        self.last_sent = now

    def deadline(self) -> float:
        return self.last_sent + self.interval

    def due(self, now: float) -> bool:
        return now >= self.deadline()

"""One BitTorrent peer connection: an asyncio Protocol around the sans-IO `PeerConnection`.

It only moves bytes: reads are fed to the machine and its events handed to the torrent that owns
the connection (or, on an inbound connection before the handshake names an info-hash, to the
session, which picks the torrent). Writes go straight to the transport; `writable` tracks its
flow control so uploads wait when the peer reads slowly. Per-peer transfer state used by the
torrent (rates, its bitfield, queued uploads) lives here, next to the connection it describes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from typing import TYPE_CHECKING, Protocol, cast

from syncer.bt.bitfield import Bitfield
from syncer.bt.wire import Handshake, Message, PeerConnection
from syncer.transfer.rates import RateMeter

if TYPE_CHECKING:
    from syncer.bt.torrent import Torrent

log = logging.getLogger(__name__)

WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10
HANDSHAKE_TIMEOUT = 15.0


class Router(Protocol):
    def route(self, link: PeerLink, hs: Handshake) -> Torrent | None: ...
    def forget(self, link: PeerLink) -> None: ...


class PeerLink(asyncio.Protocol):
    def __init__(self, router: Router, torrent: Torrent | None, address: tuple[str, int], peer_id: bytes, info_hash: bytes | None, outbound: bool, dht: bool = False) -> None:
        now = time.monotonic()
        self.router = router
        self.torrent = torrent
        self.address = address
        self.outbound = outbound
        self.conn = PeerConnection(peer_id, info_hash, now, dht=dht)
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.close_reason = ""
        self.connected_at = now
        self.last_block = now  # last block received (snub detection)
        self.snubbed = False
        self.down = RateMeter()
        self.up = RateMeter()
        self.downloaded = 0
        self.uploaded = 0
        self.bits: Bitfield | None = None  # what the peer has (None: nothing known yet)
        self.seed = False  # have-all
        self.uploads: collections.deque[tuple[int, int, int]] = collections.deque()
        self.serving = False
        self.metadata_served = 0
        self.client = ""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def label(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; uvloop's are not asyncio.Transport subclasses
        transport = self.transport = cast(asyncio.Transport, transport)
        if self.closed:  # refused before the transport existed (too many connections)
            transport.abort()
            return
        if not self.outbound:
            peer = transport.get_extra_info("peername")
            if peer:
                self.address = (str(peer[0]), int(peer[1]))
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.outbound:
            transport.write(self.conn.initiate(time.monotonic()))
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_deadline)

    def _handshake_deadline(self) -> None:
        if self.conn.peer_handshake is None or not self.conn.accepted:
            self.close("no handshake in time")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = time.monotonic()
        events = self.conn.feed(data, now)
        owed = self.conn.data_to_send()
        if owed and self.transport is not None:
            self.transport.write(owed)
        if not events:
            return
        if self.torrent is None:
            hs = events[0]
            if not isinstance(hs, Handshake):  # a ProtocolError before any handshake
                self.close(getattr(hs, "reason", "bad handshake"))
                return
            self.torrent = self.router.route(self, hs)
            if self.torrent is None:
                self.close("unknown info-hash")
                return
        try:
            self.torrent.on_events(self, events)
        except Exception:  # a peer must never be able to kill the torrent
            log.exception("bt: error handling events from %s", self.label)
            self.close("internal error")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.writable.set()
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or (str(exc) if exc else "closed by the peer")
        if self.torrent is not None:
            self.torrent.on_lost(self)
        self.router.forget(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # --- output ----------------------------------------------------------------------------
    def send(self, *msgs: Message) -> None:
        if self.closed or self.transport is None:
            return
        now = time.monotonic()
        self.transport.write(b"".join(self.conn.send(m, now) for m in msgs))

    def write(self, data: bytes) -> None:
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.debug("bt: closing %s: %s", self.label, reason)
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        self.close(reason)
        if self.transport is not None:
            self.transport.abort()


"""The BitTorrent side of a process: one TCP listener (`bt.listen`), our peer id, the torrents,
a disk thread and an HTTP client for trackers.

This listener is separate from the sync protocol's and reaches only the torrents added here, so a
BitTorrent peer can never touch a synced folder or the sync protocol. An inbound connection is
routed by the info-hash of its handshake; one for a torrent we do not have is closed. At most
MAX_CONNECTIONS connections exist at a time and at most MAX_UNROUTED of them before their
handshake (each of those is closed after HANDSHAKE_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import aiohttp

from syncer import __version__
from syncer.bt.peer import PeerLink
from syncer.bt.torrent import Torrent
from syncer.bt.wire import Handshake
from syncer.errors import SyncerError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 400
MAX_UNROUTED = 64
PEER_ID_PREFIX = b"-SY" + "".join(__version__.split(".")).encode()[:4].ljust(4, b"0") + b"-"
_ALNUM = (string.ascii_letters + string.digits).encode()


class PeerFinder(Protocol):
    """A way to find peers of an info-hash and announce ours: the DHT (dht.py)."""

    async def get_peers(self, info_hash: bytes) -> list[tuple[str, int]]: ...
    async def announce(self, info_hash: bytes, port: int) -> int: ...


def new_peer_id() -> bytes:
    rnd = os.urandom(20 - len(PEER_ID_PREFIX))
    return PEER_ID_PREFIX + bytes(_ALNUM[b % len(_ALNUM)] for b in rnd)


class BtSession:
    def __init__(self, host: str = "0.0.0.0", port: int = 6881, dht: Callable[[], PeerFinder | None] | None = None, fallback_port: bool = False) -> None:
        self.host, self.port = host, port
        self.dht: Callable[[], PeerFinder | None] = dht or (lambda: None)
        self.fallback_port = fallback_port
        self.peer_id = new_peer_id()
        self.client = f"syncer {__version__}"
        self.torrents: dict[bytes, Torrent] = {}
        self.http: aiohttp.ClientSession | None = None
        self.disk = ThreadPoolExecutor(1, thread_name_prefix="bt-disk")
        self._server: asyncio.Server | None = None
        self._unrouted: set[PeerLink] = set()

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._inbound, self.host, self.port, reuse_address=True)
        except OSError as e:
            if not self.fallback_port or self.port == 0:
                raise SyncerError(f"cannot listen for BitTorrent on {self.host}:{self.port}: {e.strerror or e}") from None
            log.warning("BitTorrent port %s:%s unavailable (%s); using a free port", self.host, self.port, e.strerror or e)
            self._server = await loop.create_server(self._inbound, self.host, 0, reuse_address=True)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self.http = aiohttp.ClientSession()
        return self.host, self.port

    async def stop(self) -> None:
        await asyncio.gather(*(t.stop() for t in self.torrents.values()), return_exceptions=True)
        self.torrents.clear()
        for link in list(self._unrouted):
            link.close("shutting down")
        if self._server is not None:
            self._server.close()
        if self.http is not None:
            await self.http.close()
        await asyncio.get_running_loop().run_in_executor(None, self.disk.shutdown)

    # --- torrents ------------------------------------------------------------------------
    def add(self, torrent: Torrent) -> Torrent:
        if torrent.info_hash in self.torrents:
            raise SyncerError(f"torrent {torrent.info_hash.hex()} is already active")
        self.torrents[torrent.info_hash] = torrent
        torrent.start()
        return torrent

    async def remove(self, info_hash: bytes) -> None:
        t = self.torrents.pop(info_hash, None)
        if t is not None:
            await t.stop()

    # --- connections ---------------------------------------------------------------------
    def connections(self) -> int:
        return len(self._unrouted) + sum(len(t.links) for t in self.torrents.values())

    def _inbound(self) -> asyncio.Protocol:
        link = PeerLink(self, None, ("?", 0), self.peer_id, None, outbound=False)
        self._unrouted.add(link)
        if len(self._unrouted) > MAX_UNROUTED or self.connections() > MAX_CONNECTIONS:
            asyncio.get_running_loop().call_soon(link.abort, "too many connections")
        return link

    def route(self, link: PeerLink, hs: Handshake) -> Torrent | None:
        self._unrouted.discard(link)
        t = self.torrents.get(hs.info_hash)
        if t is None or not t.accept(link):
            return None
        link.write(link.conn.accept(hs.info_hash, time.monotonic(), t.geometry))
        return t

    def forget(self, link: PeerLink) -> None:
        self._unrouted.discard(link)

    def is_self(self, addr: tuple[str, int]) -> bool:
        return addr[1] == self.port and addr[0] in {self.host, "127.0.0.1", "::1", "0.0.0.0", "::"}

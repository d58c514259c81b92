"""Peers from the Mainline DHT (BEP 5) for torrents: through a DhtNode in this process (the
daemon's, or one of `syncer get`'s own when no daemon runs), or through a running daemon's node
over its control API. Only the DhtNode's public lookups are used (get_peers, announce)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from syncer.api import client
from syncer.discovery.dht.node import DhtNode
from syncer.errors import DaemonError
from syncer.paths import Paths

log = logging.getLogger(__name__)

MAX_PEERS = 200


class NodeFinder:
    """A DhtNode of this process; `node` is re-read each time (the daemon restarts discovery
    when its config changes)."""

    def __init__(self, node: Callable[[], DhtNode | None]) -> None:
        self._node = node

    async def get_peers(self, info_hash: bytes) -> list[tuple[str, int]]:
        node = self._node()
        if node is None:
            return []
        return (await node.get_peers(info_hash))[:MAX_PEERS]

    async def announce(self, info_hash: bytes, port: int) -> int:
        node = self._node()
        if node is None:
            return 0
        return await node.announce(info_hash, port)


class DaemonFinder:
    """The running daemon's DHT node, over the control API."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    async def _call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        try:
            return await asyncio.to_thread(client.call, self.paths, "POST", path, body, 60.0)
        except DaemonError as e:
            log.info("DHT through the daemon: %s", e)
            return {}

    async def get_peers(self, info_hash: bytes) -> list[tuple[str, int]]:
        r = await self._call("/rest/bt/dht/get_peers", {"info_hash": info_hash.hex()})
        out = []
        for p in r.get("peers", [])[:MAX_PEERS]:  # type: ignore[union-attr]
            if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int):
                out.append((p[0], p[1]))
        return out

    async def announce(self, info_hash: bytes, port: int) -> int:
        r = await self._call("/rest/bt/dht/announce", {"info_hash": info_hash.hex(), "port": port})
        n = r.get("nodes", 0)
        return n if isinstance(n, int) else 0


async def own_node(bootstrap: list[tuple[str, int]]) -> DhtNode:
    """A DHT node for `syncer get` without a daemon: a free UDP port, joined through
    `bootstrap` in the background."""
    node = DhtNode("0.0.0.0", 0, bootstrap=bootstrap)
    await node.start()
    return node

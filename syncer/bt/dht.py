"""Peers from the Mainline DHT (BEP 5) for torrents: through a DhtNode in this process (the
daemon's, or one of `syncer get`'s own when no daemon runs; commands/bt.py has the finder that
asks a running daemon's node over its control API). Only the DhtNode's public lookups are used
(get_peers, announce)."""

from __future__ import annotations

from collections.abc import Callable

from syncer.discovery.dht.node import DhtNode

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


async def own_node(bootstrap: list[tuple[str, int]]) -> DhtNode:
    """A DHT node for `syncer get` without a daemon: a free UDP port, joined through
    `bootstrap` in the background."""
    node = DhtNode("0.0.0.0", 0, bootstrap=bootstrap)
    await node.start()
    return node

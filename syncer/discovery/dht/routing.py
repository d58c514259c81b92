"""Kademlia routing table (pure; time injected): k-buckets over the 160-bit id space, splitting
the bucket that holds our own id, bad nodes replaced by fresh ones, bounded by design."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from syncer.discovery.dht.krpc import NodeInfo

K = 8
BAD_FAILURES = 2
REFRESH = 15 * 60.0
REPLACEMENTS = 8


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@dataclass
class Entry:
    node: NodeInfo
    last_seen: float
    failures: int = 0


@dataclass
class Bucket:
    lo: int
    hi: int  # exclusive
    nodes: dict[bytes, Entry] = field(default_factory=dict)
    replacements: dict[bytes, Entry] = field(default_factory=dict)
    changed: float = 0.0

    def covers(self, i: int) -> bool:
        return self.lo <= i < self.hi


class RoutingTable:
    def __init__(self, own_id: bytes, now: float = 0.0) -> None:
        self.own_id = own_id
        self.buckets = [Bucket(0, 1 << 160, changed=now)]

    def _bucket(self, node_id: bytes) -> Bucket:
        i = int.from_bytes(node_id, "big")
        return next(b for b in self.buckets if b.covers(i))

    def add(self, node: NodeInfo, now: float) -> None:
        if node.id == self.own_id or len(node.id) != 20 or not (0 < node.port < 65536):
            return
        b = self._bucket(node.id)
        e = b.nodes.get(node.id)
        if e is not None:
            e.node, e.last_seen, e.failures = node, now, 0
            b.changed = now
            return
        if len(b.nodes) < K:
            b.nodes[node.id] = Entry(node, now)
            b.changed = now
            return
        if b.covers(int.from_bytes(self.own_id, "big")) and b.hi - b.lo > K:
            self._split(b)
            self.add(node, now)
            return
        bad = next((k for k, v in b.nodes.items() if v.failures >= BAD_FAILURES), None)
        if bad is not None:
            del b.nodes[bad]
            b.nodes[node.id] = Entry(node, now)
            b.changed = now
            return
        b.replacements[node.id] = Entry(node, now)
        while len(b.replacements) > REPLACEMENTS:
            b.replacements.pop(next(iter(b.replacements)))

    def _split(self, b: Bucket) -> None:
        mid = (b.lo + b.hi) // 2
        low, high = Bucket(b.lo, mid, changed=b.changed), Bucket(mid, b.hi, changed=b.changed)
        for k, e in list(b.nodes.items()) + list(b.replacements.items()):
            target = low if int.from_bytes(k, "big") < mid else high
            if k in b.nodes:
                target.nodes[k] = e
            else:
                target.replacements[k] = e
        i = self.buckets.index(b)
        self.buckets[i : i + 1] = [low, high]

    def failed(self, node_id: bytes) -> None:
        b = self._bucket(node_id)
        e = b.nodes.get(node_id)
        if e is None:
            return
        e.failures += 1
        if e.failures >= BAD_FAILURES and b.replacements:
            del b.nodes[node_id]
            k, r = b.replacements.popitem()
            b.nodes[k] = r

    def closest(self, target: bytes, n: int = K) -> list[NodeInfo]:
        nodes = [e.node for b in self.buckets for e in b.nodes.values() if e.failures < BAD_FAILURES]
        nodes.sort(key=lambda x: distance(x.id, target))
        return nodes[:n]

    def stale_buckets(self, now: float) -> list[bytes]:
        """A random id in each bucket not touched for REFRESH seconds (to look up)."""
        out = []
        for b in self.buckets:
            if now - b.changed >= REFRESH:
                span = b.hi - b.lo
                out.append((b.lo + int.from_bytes(secrets.token_bytes(20), "big") % span).to_bytes(20, "big"))
                b.changed = now
        return out

    def __len__(self) -> int:
        return sum(len(b.nodes) for b in self.buckets)

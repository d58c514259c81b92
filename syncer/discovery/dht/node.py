"""A DHT node (BEP 5): answers ping / find_node / get_peers / announce_peer, and runs iterative
lookups for the daemon (announce our device key, find paired devices' keys).

Memory is bounded: the routing table by design, stored peers by PeerStore caps (per key, per
source, in total), outstanding queries by MAX_OUTSTANDING, the per-source rate limiter by its own
LRU bound; tokens are stateless. Garbage or oversized datagrams are dropped (or answered with a
BEP 5 error when they carry a transaction id); nothing a peer sends can raise out of here.

Abuse rules: incoming queries are rate limited per source address (QUERY_RATE/QUERY_BURST; over
it they are dropped unanswered and the sender is not added to the routing table). Transaction ids
are random (TID_BYTES), and a response is taken only from the address the query went to: a
forged response from elsewhere is ignored and the real one still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from syncer.discovery.dht import bep42, krpc
from syncer.discovery.dht.krpc import NodeInfo
from syncer.discovery.dht.routing import REFRESH, K, RoutingTable, distance
from syncer.discovery.dht.tokens import Tokens
from syncer.discovery.peerstore import PeerEntry, PeerStore
from syncer.net.admission import KeyedRateLimit, source_key
from syncer.net.backoff import Backoff
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

ALPHA = 3
QUERY_TIMEOUT = 2.0
MAX_OUTSTANDING = 512
PEER_TTL = 30 * 60.0
MAX_KEYS = 20_000
MAX_PEERS_PER_KEY = 100
MAX_PEERS_PER_SOURCE = 8  # entries one source address may hold under one key
MAX_STORED = 100_000  # stored peers altogether
MAX_VALUES = 50
REFRESH_CHECK = 60.0
QUERY_RATE = 20.0  # queries per second and source address, on average
QUERY_BURST = 100.0
MAX_RATE_SOURCES = 10_000
TID_BYTES = 4
THIN = 16  # a routing table smaller than this is "thin": only then are bootstrap nodes asked
BOOTSTRAP_BACKOFF = (60.0, 1800.0)  # while still thin after bootstrapping: retry, doubling
SAVE_INTERVAL = 600.0
SAVED_NODES = 200  # nodes kept in the state file
PING_SAVED = 64  # saved nodes pinged at start
EXTERNAL_VOTES = 2  # BEP 42 "ip" answers that must agree before we believe them


def _compact(addr: tuple[str, int]) -> bytes | None:
    try:
        return krpc.encode_peer(_norm(addr)[0], addr[1])
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> tuple[str, int] | None:
    """A bootstrap node's address (resolved off the event loop, bounded)."""
    try:
        infos = await wait_for(asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM), 5)
    except (OSError, TimeoutError):
        return None
    return (str(infos[0][4][0]), int(infos[0][4][1])) if infos else None


def _norm(addr: tuple[str, int]) -> tuple[str, int]:
    """An address as compared with where we sent a query (IPv4-mapped IPv6 as IPv4)."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, addr[1]


class DhtNode(asyncio.DatagramProtocol):
    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 6881,
        bootstrap: list[tuple[str, int]] | None = None,
        node_id: bytes | None = None,
        clock: Any = time.monotonic,
        query_rate: float = QUERY_RATE,
        query_burst: float = QUERY_BURST,
        state_file: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.state_file = state_file
        saved_id, self.saved_nodes = self._load_state()
        self.id = node_id or saved_id or os.urandom(20)
        self.bootstrap_nodes = list(bootstrap or [])
        self.bootstrap_backoff = Backoff(initial=BOOTSTRAP_BACKOFF[0], maximum=BOOTSTRAP_BACKOFF[1])
        self.bootstraps = 0  # rounds in which bootstrap nodes were asked
        self.external_ip: str | None = None
        self._votes: Counter[str] = Counter()
        self.clock = clock
        now = clock()
        self.table = RoutingTable(self.id, now)
        self.tokens = Tokens(now)
        self.store = PeerStore(
            ttl=PEER_TTL,
            max_swarms=MAX_KEYS,
            max_peers=MAX_PEERS_PER_KEY,
            max_per_source=MAX_PEERS_PER_SOURCE,
            max_entries=MAX_STORED,
        )
        self.query_limit = KeyedRateLimit(query_rate, query_burst, MAX_RATE_SOURCES)
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, tuple[asyncio.Future[dict[bytes, Any]], tuple[str, int]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {
            "queries_in": 0,
            "responses_in": 0,
            "dropped": 0,
            "errors_out": 0,
            "rate_limited": 0,
            "unexpected_responses": 0,
        }

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        self.host, self.port = self.transport.get_extra_info("sockname")[:2]
        self._tasks.append(asyncio.ensure_future(self._maintenance()))
        return self.host, self.port

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.save_state()
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        if self.transport is not None:
            self.transport.close()

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "nodes": len(self.table), "stored_peers": len(self.store), "outstanding": len(self._pending)}

    # --- datagrams -----------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = krpc.parse(data)
        except krpc.KrpcError:
            self.stats["dropped"] += 1
            return
        try:
            kind = msg[b"y"]
            if kind == b"q":
                if not self.query_limit.allow(source_key(addr[0]), self.clock()):
                    self.stats["rate_limited"] += 1
                    return  # unanswered: a flood gets nothing back, not even errors
                self.stats["queries_in"] += 1
                self._on_query(msg, addr)
            else:
                self.stats["responses_in"] += 1
                self._on_response(msg, addr)
        except krpc.KrpcError as e:
            self._send(krpc.error(msg[b"t"], e.code, str(e)), addr)
            self.stats["errors_out"] += 1
        except Exception:  # a peer must never be able to crash the node
            log.exception("DHT: error handling a datagram from %s", addr)
            self.stats["dropped"] += 1

    def error_received(self, exc: Exception) -> None:  # ICMP errors on UDP: nothing to do
        pass

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def _sender(self, args: dict[bytes, Any], addr: tuple[str, int]) -> bytes:
        nid = args.get(b"id")
        if not isinstance(nid, bytes) or len(nid) != 20:
            raise krpc.KrpcError(krpc.ERR_PROTOCOL, "missing or invalid id")
        return nid

    def _on_query(self, msg: dict[bytes, Any], addr: tuple[str, int]) -> None:
        t, method, args = msg[b"t"], msg.get(b"q"), msg.get(b"a")
        if not isinstance(args, dict) or not isinstance(method, bytes):
            raise krpc.KrpcError(krpc.ERR_PROTOCOL, "malformed query")
        sender = self._sender(args, addr)
        now = self.clock()
        if method == b"ping":
            reply: dict[str, Any] = {"id": self.id}
        elif method == b"find_node":
            target = args.get(b"target")
            if not isinstance(target, bytes) or len(target) != 20:
                raise krpc.KrpcError(krpc.ERR_PROTOCOL, "invalid target")
            reply = {"id": self.id, "nodes": krpc.encode_nodes(self.table.closest(target))}
        elif method == b"get_peers":
            ih = args.get(b"info_hash")
            if not isinstance(ih, bytes) or len(ih) != 20:
                raise krpc.KrpcError(krpc.ERR_PROTOCOL, "invalid info_hash")
            reply = {"id": self.id, "token": self.tokens.issue(addr[0], now)}
            peers = self.store.peers(ih, now, MAX_VALUES)
            if peers:
                reply["values"] = [krpc.encode_peer(p.ip, p.port) for p in peers]
            reply["nodes"] = krpc.encode_nodes(self.table.closest(ih))
        elif method == b"announce_peer":
            ih, token = args.get(b"info_hash"), args.get(b"token")
            if not isinstance(ih, bytes) or len(ih) != 20 or not isinstance(token, bytes):
                raise krpc.KrpcError(krpc.ERR_PROTOCOL, "invalid announce_peer")
            if not self.tokens.valid(token, addr[0], now):
                raise krpc.KrpcError(krpc.ERR_PROTOCOL, "bad token")
            port = addr[1] if args.get(b"implied_port") == 1 else args.get(b"port")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise krpc.KrpcError(krpc.ERR_PROTOCOL, "invalid port")
            self.store.announce(ih, PeerEntry(addr[0], port, "", b"", now))
            reply = {"id": self.id}
        else:
            raise krpc.KrpcError(krpc.ERR_METHOD, "method unknown")
        self.table.add(NodeInfo(sender, addr[0], addr[1]), now)
        self._send(krpc.response(t, reply, _compact(addr)), addr)

    def _on_response(self, msg: dict[bytes, Any], addr: tuple[str, int]) -> None:
        pending = self._pending.get(msg[b"t"])
        if pending is None or _norm(pending[1]) != _norm(addr):
            # unknown id, or not from the node we asked: forged (or late); the query stays open
            self.stats["unexpected_responses"] += 1
            return
        del self._pending[msg[b"t"]]
        fut, _ = pending
        if fut.done():
            return
        if msg[b"y"] == b"e":
            fut.set_exception(krpc.KrpcError(krpc.ERR_GENERIC, f"error from {addr}: {msg.get(b'e')}"))
            return
        r = msg.get(b"r")
        if not isinstance(r, dict):
            fut.set_exception(krpc.KrpcError(krpc.ERR_PROTOCOL, "malformed response"))
            return
        nid = r.get(b"id")
        if isinstance(nid, bytes) and len(nid) == 20:
            self.table.add(NodeInfo(nid, addr[0], addr[1]), self.clock())
        self._vote(msg.get(b"ip"))
        fut.set_result(r)

    # --- outgoing queries -----------------------------------------------------------------
    async def query(self, addr: tuple[str, int], method: str, args: dict[str, Any], node_id: bytes | None = None) -> dict[bytes, Any]:
        if len(self._pending) >= MAX_OUTSTANDING:
            raise krpc.KrpcError(krpc.ERR_SERVER, "too many outstanding queries")
        t = os.urandom(TID_BYTES)  # unguessable: an off-path forger has to hit one of 2^32
        while t in self._pending:
            t = os.urandom(TID_BYTES)
        fut: asyncio.Future[dict[bytes, Any]] = asyncio.get_running_loop().create_future()
        self._pending[t] = (fut, addr)
        self._send(krpc.query(t, method, {"id": self.id, **args}), addr)
        try:
            return await wait_for(fut, QUERY_TIMEOUT)
        except (TimeoutError, krpc.KrpcError):
            if node_id is not None:
                self.table.failed(node_id)
            raise
        finally:
            self._pending.pop(t, None)

    async def ping(self, addr: tuple[str, int]) -> bytes:
        r = await self.query(addr, "ping", {})
        return r[b"id"]

    async def bootstrap(self) -> int:
        """Join: first through the nodes saved by the last run, then, only while the routing
        table is still thin, through the bootstrap nodes (with a backoff between such rounds);
        returns the routing table size."""
        if self.saved_nodes:
            saved, self.saved_nodes = self.saved_nodes[:PING_SAVED], []
            await asyncio.gather(*(self._try(n.addr, "find_node", {"target": self.id}) for n in saved))
        now = self.clock()
        if len(self.table) < THIN and self.bootstrap_nodes and self.bootstrap_backoff.due(now):
            self.bootstraps += 1
            for host, port in self.bootstrap_nodes:
                addr = await _resolve(host, port)
                if addr is not None:
                    await self._try(addr, "find_node", {"target": self.id})
        await self._lookup(self.id, "find_node")
        # then fill the far buckets too: a table that only knows our own neighbourhood makes
        # lookups for distant keys get stuck there
        for target in self.table.stale_buckets(self.clock() + REFRESH):
            await self._lookup(target, "find_node")
        if len(self.table) < THIN:
            self.bootstrap_backoff.failed(self.clock())
        else:
            self.bootstrap_backoff.succeeded()
        return len(self.table)

    async def _try(self, addr: tuple[str, int], method: str, args: dict[str, Any]) -> None:
        with contextlib.suppress(TimeoutError, krpc.KrpcError, OSError):
            await self.query(addr, method, args)

    # --- BEP 42 and the external address ------------------------------------------------------
    def _vote(self, raw: Any) -> None:
        if not isinstance(raw, bytes) or len(raw) not in (6, 18):
            return
        ip = str(ipaddress.ip_address(raw[:-2]))
        self._votes[ip] += 1
        if len(self._votes) > 64:  # bounded: keep the leaders
            self._votes = Counter(dict(self._votes.most_common(16)))
        best, n = self._votes.most_common(1)[0]
        if n >= EXTERNAL_VOTES:
            self.set_external(best)

    def set_external(self, ip: str) -> None:
        """Our external address is `ip` (from BEP 42 answers, or the daemon's STUN): take a
        BEP 42 node id for it if ours is not one, keeping the nodes we know."""
        self.external_ip = ip
        if bep42.valid(self.id, ip):
            return
        old = self.table
        self.id = bep42.node_id(ip)
        self.table = RoutingTable(self.id, self.clock())
        for b in old.buckets:
            for e in b.nodes.values():
                self.table.add(e.node, e.last_seen)
        log.info("DHT: external address %s: new BEP 42 node id %s", ip, self.id.hex())

    # --- state between runs ------------------------------------------------------------------------
    def _load_state(self) -> tuple[bytes | None, list[NodeInfo]]:
        if self.state_file is None:
            return None, []
        try:
            data = json.loads(self.state_file.read_text())
            nid = bytes.fromhex(data["id"])
            nodes = [NodeInfo(bytes.fromhex(i), str(ip), int(port)) for i, ip, port in data["nodes"][:SAVED_NODES]]
            return (nid if len(nid) == 20 else None), [n for n in nodes if len(n.id) == 20 and 0 < n.port < 65536]
        except (OSError, ValueError, KeyError, TypeError):
            return None, []  # no or damaged state: bootstrap as on a first run

    def save_state(self) -> None:
        if self.state_file is None:
            return
        nodes = [e for b in self.table.buckets for e in b.nodes.values() if e.failures == 0]
        nodes.sort(key=lambda e: -e.last_seen)
        data = {"version": 1, "id": self.id.hex(), "nodes": [[e.node.id.hex(), e.node.ip, e.node.port] for e in nodes[:SAVED_NODES]]}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.state_file)

    async def _lookup(self, target: bytes, method: str) -> tuple[list[NodeInfo], dict[bytes, bytes], set[tuple[str, int]]]:
        """Iterative Kademlia lookup: (k closest responding nodes, their tokens, peer values)."""
        shortlist: dict[bytes, NodeInfo] = {n.id: n for n in self.table.closest(target, K)}
        queried: set[bytes] = set()
        responded: dict[bytes, NodeInfo] = {}
        tokens: dict[bytes, bytes] = {}
        values: set[tuple[str, int]] = set()
        arg = {"target": target} if method == "find_node" else {"info_hash": target}

        async def ask(n: NodeInfo) -> None:
            try:
                r = await self.query(n.addr, method, arg, n.id)
            except (TimeoutError, krpc.KrpcError, OSError):
                shortlist.pop(n.id, None)  # a silent node must not hold a place among the k best
                return
            responded[n.id] = n
            tok = r.get(b"token")
            if isinstance(tok, bytes):
                tokens[n.id] = tok
            if method == "get_peers" and isinstance(r.get(b"values"), list):
                values.update(krpc.decode_peers(r[b"values"]))
            nodes = r.get(b"nodes")
            if isinstance(nodes, bytes):
                with contextlib.suppress(krpc.KrpcError):
                    for m in krpc.decode_nodes(nodes):
                        if m.id != self.id and 0 < m.port < 65536:
                            shortlist.setdefault(m.id, m)

        while True:
            ordered = sorted(shortlist.values(), key=lambda x: distance(x.id, target))
            best_k = ordered[:K]
            todo = [n for n in best_k if n.id not in queried][:ALPHA]
            if not todo:
                break
            queried.update(n.id for n in todo)
            await asyncio.gather(*(ask(n) for n in todo))
        closest = sorted(responded.values(), key=lambda x: distance(x.id, target))[:K]
        return closest, tokens, values

    async def get_peers(self, key: bytes) -> list[tuple[str, int]]:
        _, _, values = await self._lookup(key, "get_peers")
        local = {(p.ip, p.port) for p in self.store.peers(key, self.clock(), MAX_VALUES)}
        return sorted(values | local)

    async def announce(self, key: bytes, port: int) -> int:
        """Announce that we serve `key` on `port` to the k closest nodes; returns how many took it."""
        closest, tokens, _ = await self._lookup(key, "get_peers")
        ok = 0
        for n in closest:
            tok = tokens.get(n.id)
            if tok is None:
                continue
            with contextlib.suppress(TimeoutError, krpc.KrpcError, OSError):
                await self.query(n.addr, "announce_peer", {"info_hash": key, "port": port, "token": tok, "implied_port": 0}, n.id)
                ok += 1
        if not closest:  # alone in the network: at least we answer for it ourselves
            self.store.announce(key, PeerEntry(self.host, port, "", b"", self.clock()))
        return ok

    async def _maintenance(self) -> None:
        saved = self.clock()
        while True:
            await asyncio.sleep(REFRESH_CHECK)
            now = self.clock()
            self.store.expire(now)
            if len(self.table) < THIN and self.bootstrap_nodes and self.bootstrap_backoff.due(now):
                await self.bootstrap()
            for target in self.table.stale_buckets(now):
                await self._lookup(target, "find_node")
            if now - saved >= SAVE_INTERVAL:
                self.save_state()
                saved = now

"""A deterministic swarm simulation: the real Puller (with its Picker) and the real Choker of
every peer, wired together by a discrete-event queue on simulated time.

Each peer has an upload and a download bandwidth and a one-way latency; what a peer sends takes
latency to arrive, and pieces additionally queue on the server's uplink (one FIFO for all its
requesters, cancellable until sent) and take size / min(up, down) to cross. A peer's index is
the set of complete files it holds; when it completes a file, every other peer learns it (after
latency) as a need change with the new holder. libtorrent tests its transfer policy this way
(its in-process simulator); nothing here opens a socket or reads a clock, so a swarm of eight
peers and hundreds of blocks runs in a fraction of a second and the same seed gives the same run.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.transfer.choker import RECHOKE_INTERVAL, Choker, ChokeStats
from syncer.transfer.puller import (
    KIND_FILE,
    AbortJob,
    Announce,
    ApplyBatch,
    LoadNeed,
    NeedChange,
    PrepareJobs,
    Puller,
    SendCancels,
    SendRequests,
    Wanted,
)
from syncer.transfer.rates import RateMeter
from syncer.wire import Bitfield, Request

MB = 1_000_000


@dataclass
class PeerSpec:
    name: str
    up: float = 10 * MB  # bytes/s
    down: float = 10 * MB
    latency: float = 0.01  # one way, seconds
    seed: bool = False
    corrupt: bool = False  # serves garbage
    join_at: float = 0.0
    leave_at: float | None = None


def make_file(name: str, size: int, block_size: int = 256 << 10) -> FileInfo:
    n = (size + block_size - 1) // block_size
    blocks = tuple(hashlib.sha256(f"{name}/{i}".encode()).digest() for i in range(n))
    return FileInfo(name, FileType.FILE, size, 1, 0o644, block_size, blocks, "", VersionVector(((1, 1),)), 1, False, 1)


@dataclass
class _Serve:
    requester: Node
    req: Request


@dataclass
class Node:
    spec: PeerSpec
    sim: Swarm
    files: dict[str, FileInfo]
    puller: Puller | None = None
    choker: Choker | None = None
    complete: set[str] = field(default_factory=set)
    online: bool = False
    up_free: float = 0.0
    down_free: float = 0.0
    serving: deque[_Serve] = field(default_factory=deque)
    serving_busy: bool = False
    choking: set[str] = field(default_factory=set)
    interested_peers: set[str] = field(default_factory=set)
    told_interest: dict[str, bool] = field(default_factory=dict)
    recv_rate: dict[str, RateMeter] = field(default_factory=dict)
    sent_rate: dict[str, RateMeter] = field(default_factory=dict)
    uploaded: int = 0
    downloaded: int = 0  # useful bytes
    wasted: int = 0  # bytes that arrived for nothing (cancelled duplicates, corrupt)
    bad: int = 0
    done_at: float | None = None
    _drive_due: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    # --- the driver: carry out the puller's actions ------------------------------------
    def drive(self) -> None:
        if self._drive_due or self.puller is None:
            return
        self._drive_due = True
        self.sim.at(0.0, self._drive)

    def _drive(self) -> None:
        self._drive_due = False
        p = self.puller
        if p is None or not self.online:
            return
        now = self.sim.now
        p.fill(now, {n: m.rate(now) for n, m in self.recv_rate.items()})
        for a in p.actions():
            self._carry_out(a)
        peers = self.sim.online_peers(self)
        for other in peers:
            want = other.name in p.interest
            if self.told_interest.get(other.name) != want:
                self.told_interest[other.name] = want
                self.sim.send(self, other, lambda o=other, w=want: o.on_interest(self, w))
        timer = p.get_timer()
        if timer is not None:
            self.sim.at_abs(timer, self._on_timer)

    def _on_timer(self) -> None:
        if self.puller is not None and self.online:
            timer = self.puller.get_timer()
            if timer is not None and self.sim.now >= timer:
                self.puller.handle_timer(self.sim.now)
            self.drive()

    def _carry_out(self, a: object) -> None:
        p = self.puller
        assert p is not None
        if isinstance(a, LoadNeed):
            rows, exhausted = self.sim.need_page(self, a)
            p.need_loaded(rows, exhausted)
            self.drive()
        elif isinstance(a, PrepareJobs):
            for spec in a.jobs:  # nothing partial on disk in these runs: start empty
                p.job_prepared(spec.file.name, spec.gen, set())
            self.drive()
        elif isinstance(a, SendRequests):
            peer = self.sim.nodes[a.peer]  # type: ignore[index]
            for r in a.requests:
                self.sim.send(self, peer, lambda r=r, peer=peer: peer.on_request(self, r))
        elif isinstance(a, SendCancels):
            peer = self.sim.nodes[a.peer]  # type: ignore[index]
            ids = set(a.ids)
            self.sim.send(self, peer, lambda peer=peer: peer.on_cancel(self, ids))
        elif isinstance(a, Announce):
            targets = [self.sim.nodes[a.to]] if a.to is not None else [o for o in self.sim.online_peers(self) if o.name not in a.exclude]  # type: ignore[index]
            for o in targets:
                self.sim.send(self, o, lambda o=o, m=a.message: o.on_announce(self, m))
        elif isinstance(a, AbortJob):
            pass
        elif isinstance(a, ApplyBatch):
            for spec in a.finished:
                self.complete.add(spec.file.name)
                self.sim.completed(self, spec.file.name)
            p.applied(a)
            if self.complete >= set(self.files) and self.done_at is None:
                self.done_at = self.sim.now
            self.drive()

    # --- peer events ---------------------------------------------------------------------
    def on_announce(self, sender: Node, msg: object) -> None:
        if self.puller is None or not self.online:
            return
        if isinstance(msg, Bitfield):
            self.puller.bitfield(sender.name, msg)
        else:
            self.puller.have(sender.name, msg)  # type: ignore[arg-type]
        self.drive()

    def on_interest(self, sender: Node, interested: bool) -> None:
        (self.interested_peers.add if interested else self.interested_peers.discard)(sender.name)
        if interested and self.choker is not None and sender.name in self.choking:
            self.rechoke()

    def on_request(self, requester: Node, req: Request) -> None:
        if not self.online or not requester.online:
            return
        self.serving.append(_Serve(requester, req))
        self._serve_next()

    def on_cancel(self, requester: Node, ids: set[int]) -> None:
        self.serving = deque(s for s in self.serving if not (s.requester is requester and s.req.id in ids))

    def _holds(self, name: str, index: int) -> bool:
        if name in self.complete:
            return True
        if self.puller is not None:
            return self.puller.held_block(name, index) is not None
        return False

    def _serve_next(self) -> None:
        if self.serving_busy or not self.serving or not self.online:
            return
        s = self.serving.popleft()
        r, req = s.requester, s.req
        if not r.online:
            self._serve_next()
            return
        if r.name in self.choking or not self._holds(req.name, req.block_index):
            from syncer.wire import ERR_CHOKED, ERR_NO_SUCH_BLOCK

            code = ERR_CHOKED if r.name in self.choking else ERR_NO_SUCH_BLOCK
            self.sim.send(self, r, lambda: r.on_piece_error(self, req.id, code))
            self._serve_next()
            return
        now = self.sim.now
        start = max(now, self.up_free)
        dur = req.size / min(self.spec.up, r.spec.down)
        self.up_free = start + req.size / self.spec.up
        arrive = max(start + dur, r.down_free + req.size / r.spec.down)
        r.down_free = arrive
        self.serving_busy = True
        self.uploaded += req.size
        self.sent_rate.setdefault(r.name, RateMeter()).add(req.size, now)

        def sent() -> None:
            self.serving_busy = False
            self._serve_next()

        self.sim.at_abs(self.up_free, sent)
        self.sim.at_abs(arrive + self.spec.latency, lambda: r.on_piece(self, req))

    def on_piece(self, server: Node, req: Request) -> None:
        if not self.online or self.puller is None:
            return
        now = self.sim.now
        self.recv_rate.setdefault(server.name, RateMeter()).add(req.size, now)
        exp = self.puller.piece_arrived(server.name, req.id, req.size, now)
        if exp is None:
            self.wasted += req.size
        elif server.spec.corrupt:
            self.wasted += req.size
            self.bad += 1
            self.puller.block_done(server.name, exp, False)
        else:
            self.downloaded += req.size
            self.puller.block_done(server.name, exp, True)
        self.drive()

    def on_piece_error(self, server: Node, rid: int, code: int) -> None:
        from syncer.wire import ERR_CHOKED

        if self.puller is not None and self.online:
            self.puller.piece_error(server.name, rid, code != ERR_CHOKED, code == ERR_CHOKED)
            self.drive()

    # --- choking ---------------------------------------------------------------------------
    def rechoke(self) -> None:
        if self.choker is None or not self.online:
            return
        now = self.sim.now
        stats = {
            o.name: ChokeStats(
                interested=o.name in self.interested_peers,
                download_rate=self.recv_rate.get(o.name, RateMeter()).rate(now),
                upload_rate=self.sent_rate.get(o.name, RateMeter()).rate(now),
                connected_at=0.0,
            )
            for o in self.sim.online_peers(self)
        }
        seeding = self.puller is None or not self.puller.busy()
        unchoked = self.choker.rank(stats, now, seeding=seeding).unchoked
        for o in self.sim.online_peers(self):
            choke = o.name not in unchoked
            if choke != (o.name in self.choking):
                (self.choking.add if choke else self.choking.discard)(o.name)
                self.sim.send(self, o, lambda o=o, c=choke: o.on_choke(self, c))

    def on_choke(self, server: Node, choked: bool) -> None:
        if self.puller is not None and self.online:
            (self.puller.choked if choked else self.puller.unchoked)(server.name)
            self.drive()


@dataclass
class Result:
    nodes: dict[str, Node]
    time: float
    events: int

    def uploaded(self, name: str) -> int:
        return self.nodes[name].uploaded

    @property
    def total_uploaded(self) -> int:
        return sum(n.uploaded for n in self.nodes.values())

    @property
    def wasted(self) -> int:
        return sum(n.wasted for n in self.nodes.values())

    @property
    def useful(self) -> int:
        return sum(n.downloaded for n in self.nodes.values())


class Swarm:
    def __init__(self, specs: list[PeerSpec], files: list[FileInfo], seed: int = 1, choking: bool = False) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.rng = random.Random(seed)
        self.events = 0
        self.nodes: dict[str, Node] = {}
        self.all_files = {f.name: f for f in files}
        for spec in specs:
            node = Node(spec, self, dict(self.all_files))
            if spec.seed:
                node.complete = set(self.all_files)
            else:
                ids = itertools.count(1)
                node.puller = Puller("sim", lambda ids=ids: next(ids), rng=random.Random(self.rng.random()))
            if choking:
                node.choker = Choker(rng=random.Random(self.rng.random()))
            self.nodes[spec.name] = node
        for node in self.nodes.values():
            self.at_abs(node.spec.join_at, lambda n=node: self._join(n))
            if node.spec.leave_at is not None:
                self.at_abs(node.spec.leave_at, lambda n=node: self._leave(n))

    # --- the event queue ---------------------------------------------------------------
    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), fn))

    def at_abs(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(t, self.now), next(self._seq), fn))

    def send(self, src: Node, dst: Node, fn: Callable[[], None]) -> None:
        """Deliver to `dst` after the one-way latency (messages between online peers only)."""
        def deliver() -> None:
            if src.online and dst.online:
                fn()

        self.at(src.spec.latency + dst.spec.latency, deliver)

    def online_peers(self, node: Node) -> list[Node]:
        return [o for o in self.nodes.values() if o is not node and o.online]

    # --- membership and the shared index -------------------------------------------------------
    def _join(self, node: Node) -> None:
        node.online = True
        for other in self.online_peers(node):
            for a, b in ((node, other), (other, node)):
                if a.puller is not None:
                    a.puller.peer_ready(b.name)
                    a.drive()
        if node.puller is not None:
            node.puller.start()
            node.drive()
        if node.choker is not None:
            self._choke_round(node)

    def _choke_round(self, node: Node) -> None:
        node.rechoke()
        if node.online and not self.finished():
            self.at(RECHOKE_INTERVAL, lambda: self._choke_round(node))

    def _leave(self, node: Node) -> None:
        node.online = False
        node.serving.clear()
        for other in self.online_peers(node):
            if other.puller is not None:
                other.puller.peer_gone(node.name)
                other.drive()
            other.serving = deque(s for s in other.serving if s.requester is not node)

    def holders(self, name: str) -> frozenset[str]:
        return frozenset(n.name for n in self.nodes.values() if n.online and name in n.complete)

    def need_page(self, node: Node, a: LoadNeed) -> tuple[list[Wanted], bool]:
        rows = sorted(
            (Wanted(f, KIND_FILE, False, self.holders(f.name) - {node.name}) for f in self.all_files.values() if f.name not in node.complete),
            key=lambda w: w.key,
        )
        if a.after is not None:
            rows = [w for w in rows if w.key > a.after or (a.inclusive and w.key == a.after)]
        page = rows[: a.limit]
        return page, len(page) == len(rows)

    def completed(self, node: Node, name: str) -> None:
        for other in self.online_peers(node):
            if other.puller is not None and name not in other.complete:
                f = self.all_files[name]
                change = NeedChange(name, (KIND_FILE, f.size, name), f.version, self.holders(name) - {other.name})
                self.send(node, other, lambda o=other, c=change: (o.puller.need_changed([c]), o.drive()))  # type: ignore[union-attr]

    # --- running --------------------------------------------------------------------------------
    def finished(self) -> bool:
        return all(n.done_at is not None for n in self.nodes.values() if n.puller is not None and n.spec.leave_at is None)

    def run(self, until: float = 3600.0, max_events: int = 2_000_000) -> Result:
        while self._queue and not self.finished():
            t, _, fn = heapq.heappop(self._queue)
            if t > until or self.events >= max_events:
                break
            self.now = t
            self.events += 1
            fn()
            if self.events % 101 == 0:
                self._check_counters()
        self._check_counters()
        return Result(self.nodes, self.now, self.events)

    def _check_counters(self) -> None:
        for node in self.nodes.values():
            assert node.puller is None or node.puller.counters_consistent(), f"{node.name}: puller counters drifted"

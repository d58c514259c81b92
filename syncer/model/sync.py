"""The sync model: the `SessionHandler` of every peer session. Routes messages to folders and to
the block server, exchanges cluster configs, and runs the choker.

Message handling never awaits (the session's read loop must keep reading): pieces, haves,
bitfields and requests are handled on the spot; cluster configs and indexes go through one
ordered queue per session whose task does the waiting (for a folder still starting, for the
index DB). When that queue holds too much, the session is told to wait before reading on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncer.config import Config, FolderConfig
from syncer.deviceid import DeviceId
from syncer.errors import FolderError
from syncer.events import EventLog
from syncer.index.db import LOCAL, IndexDB
from syncer.index.version import short_id
from syncer.model.folder import FolderRuntime
from syncer.model.server import BlockServer
from syncer.pending import PendingStore
from syncer.runtime.backlog import Backlog
from syncer.runtime.clock import Clock, SystemClock, sleep_until
from syncer.runtime.supervisor import Supervisor
from syncer.transfer.choker import Choker, ChokeStats
from syncer.transfer.ratelimit import TokenBucket
from syncer.wire import (
    Bitfield,
    Cancel,
    Choke,
    ClusterConfig,
    DeviceSummary,
    FolderSummary,
    Have,
    Index,
    IndexUpdate,
    Interested,
    Message,
    NotInterested,
    Piece,
    PieceError,
    Request,
    Unchoke,
)
from syncer.wire.messages import PEER_ASSIST

if TYPE_CHECKING:
    from syncer.peer.session import PeerSession

log = logging.getLogger(__name__)

INTEREST_WINDOW = 30.0  # a peer that requested this recently counts as interested
SESSION_QUEUE_BYTES = 4 << 20  # cluster configs and indexes queued per session before reading pauses (estimated encoded size; one 4 MiB index message always fits)
VERIFY_BACKLOG_BYTES = 16 << 20  # received blocks waiting for the verify pool before reading pauses (up to two 16 MiB blocks: both threads busy)
SLOT_BITS = 40  # request ids: folder slot in the high bits, so answers route without a table
MAX_LABEL = 256


@dataclass
class _Control:
    """Per session: its ordered queue of cluster configs and indexes."""

    queue: asyncio.Queue[tuple[Message, int]] = field(default_factory=asyncio.Queue)
    size: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    serve: asyncio.Task[None] | None = None


class SyncModel:
    LOCAL = LOCAL

    def __init__(
        self, config: Config, device_id: DeviceId, db_path: Any, pending: PendingStore, events: EventLog | None = None, clock: Clock | None = None
    ) -> None:
        self.events = events if events is not None else EventLog()  # the daemon's; folders emit into it
        self.config = config
        self.assist: Any = None  # the daemon's PeerAssist (nat/assist.py), for PEER_ASSIST messages
        self.device_id = device_id
        self.short = short_id(device_id)
        self.db_path = db_path
        self.pending = pending
        self.clock: Clock = clock or SystemClock()
        self.folders: dict[str, FolderRuntime] = {}
        self._slots: dict[int, FolderRuntime] = {}
        self._next_slot = itertools.count(1)
        self.ready: dict[str, asyncio.Event] = {}
        self.sessions: dict[DeviceId, PeerSession] = {}
        self.index_info: dict[tuple[str, DeviceId], tuple[int, int]] = {}
        self.choked_by: set[DeviceId] = set()  # peers that choke us
        self.choking: set[DeviceId] = set()  # peers we choke
        self.peer_interested: set[DeviceId] = set()  # peers that said Interested
        self.told_interest: dict[DeviceId, bool] = {}  # what we told each peer
        self.last_request: dict[DeviceId, float] = {}
        self.connected_at: dict[DeviceId, float] = {}
        self.choker: Choker[DeviceId] = Choker()
        self.supervisor = Supervisor("sync model", self.clock)
        self._local = threading.local()
        self.hasher = ThreadPoolExecutor(2, thread_name_prefix="verify")
        self.verify_backlog = Backlog(VERIFY_BACKLOG_BYTES)  # bytes queued for the hasher
        self.serve_pool = ThreadPoolExecutor(1, thread_name_prefix="serve")
        self._control: dict[DeviceId, _Control] = {}
        self._rechoke_wake = asyncio.Event()
        self.send_bucket = TokenBucket(config.get("limits.max_send_kbps") * 1024)
        self.recv_bucket = TokenBucket(config.get("limits.max_recv_kbps") * 1024)
        self.server = BlockServer(
            self._shared_folder, lambda dev: dev in self.choking, self.db_for_thread, self.serve_pool,
            lambda: self.send_bucket, self.clock.monotonic, self.clock.sleep,
        )

    # --- helpers used by folders ------------------------------------------------------
    def db_for_thread(self) -> IndexDB:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = IndexDB(self.db_path)
        return db

    def request_ids(self, slot: int) -> Callable[[], int]:
        counter = itertools.count(1)
        return lambda: (slot << SLOT_BITS) | (next(counter) & ((1 << SLOT_BITS) - 1))

    def paired_devices(self) -> list[DeviceId]:
        return [d.device_id for d in self.config.devices]

    def devices_sharing(self, cfg: FolderConfig) -> set[DeviceId]:
        paired = self.config.devices
        return {d.device_id for d in paired if cfg.shared_with(d.id, paired)}

    def short_name(self, short: int) -> str:
        for d in [self.device_id, *self.paired_devices()]:
            if short_id(d) == short:
                return d.short
        return ""

    def device_label(self, raw: bytes) -> str:
        """How a device is named to the user: its name, or its short ID."""
        try:
            dev = DeviceId(raw)
        except Exception:  # noqa: BLE001 - a malformed id from storage is shown, not fatal
            return raw.hex()[:14]
        cfg = self.config.device(dev)
        return (cfg.name if cfg is not None and cfg.name else "") or dev.short

    def local_index_id(self, folder: str) -> int:
        return self.index_info[(folder, self.device_id)][0]

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load every folder's state (quick), then let each start (scan) in the background:
        sessions are handled from the moment this returns."""
        for cfg in self.config.folders:
            await self._load_folder(cfg)
        self.supervisor.spawn("choker", self._choke_loop)

    async def _load_folder(self, cfg: FolderConfig) -> None:
        slot = next(self._next_slot)
        f = FolderRuntime(self, cfg, slot)
        self.folders[cfg.id] = f
        self._slots[slot] = f
        self.ready[cfg.id] = asyncio.Event()

        def load_info() -> None:
            db = self.db_for_thread()
            db.add_folder(cfg.id, cfg.path)
            self.index_info[(cfg.id, self.device_id)] = (db.index_id(cfg.id, LOCAL), db.max_sequence(cfg.id, LOCAL))
            for dev in self.paired_devices():
                rid = db.remote_index_id(cfg.id, dev.raw)
                if rid:
                    self.index_info[(cfg.id, dev)] = (rid, db.max_sequence(cfg.id, dev.raw))

        await f.run_in_worker(load_info)
        self.supervisor.spawn(f"start {cfg.id}", lambda: self._start_folder(f))

    async def _start_folder(self, f: FolderRuntime) -> None:
        try:
            await f.start()
        except Exception as e:
            f.state, f.error = "error", f"cannot start: {e}"
            log.exception("folder %s failed to start", f.id)
        finally:
            self.ready[f.id].set()
        for session in list(self.sessions.values()):
            if f.cfg.shared_with(session.device, self.config.devices):
                self._send_cluster_config(session)

    async def stop(self) -> None:
        await self.supervisor.stop()
        for c in self._control.values():
            for t in (c.task, c.serve):
                if t is not None:
                    t.cancel()
        for f in list(self.folders.values()):
            await f.stop()
        self.hasher.shutdown(wait=False, cancel_futures=True)
        self.serve_pool.shutdown(wait=False, cancel_futures=True)

    async def reload(self, config: Config) -> None:
        self.config = config
        self.send_bucket.set_rate(config.get("limits.max_send_kbps") * 1024)
        self.recv_bucket.set_rate(config.get("limits.max_recv_kbps") * 1024)
        wanted = {f.id: f for f in config.folders}
        for fid in list(self.folders):
            if fid not in wanted or wanted[fid].path != self.folders[fid].cfg.path:
                f = self.folders.pop(fid)
                self._slots.pop(f.slot, None)
                await f.stop()
        for fid, cfg in wanted.items():
            if fid in self.folders:
                await self.folders[fid].reconfigured(cfg)
            else:
                await self._load_folder(cfg)
        for session in list(self.sessions.values()):
            self._send_cluster_config(session)

    # --- choking ---------------------------------------------------------------------------
    async def _choke_loop(self) -> None:
        while True:
            self._rechoke_wake.clear()
            await sleep_until(self.clock, self.choker.next_deadline(), self._rechoke_wake)
            self.rechoke(self.clock.monotonic())

    def _interested(self, dev: DeviceId, now: float) -> bool:
        return dev in self.peer_interested or now - self.last_request.get(dev, float("-inf")) < INTEREST_WINDOW

    def rechoke(self, now: float) -> None:
        """Tit-for-tat among connected devices, unless uploads to own devices are unlimited."""
        unlimited = bool(self.config.get("transfer.unlimited_own_devices"))
        stats = {
            dev: ChokeStats(
                interested=self._interested(dev, now),
                download_rate=s.down_rate(),
                upload_rate=s.up_rate(),
                unlimited=unlimited,
                connected_at=self.connected_at.get(dev, now),
            )
            for dev, s in self.sessions.items()
        }
        seeding = not any(f.puller.busy() for f in self.folders.values())
        unchoked = self.choker.rank(stats, now, seeding=seeding).unchoked
        for dev, session in list(self.sessions.items()):
            choke = dev not in unchoked
            if choke != (dev in self.choking):
                (self.choking.add if choke else self.choking.discard)(dev)
                self._send(session, [Choke() if choke else Unchoke()])

    def interest_changed(self) -> None:
        """Some folder's wish list changed: tell peers whether we want anything from them."""
        wanted: set[Hashable] = set()  # the puller names peers by any Hashable (ours: DeviceIds)
        for f in self.folders.values():
            wanted |= f.puller.interest
        for dev, session in self.sessions.items():
            want = dev in wanted
            if self.told_interest.get(dev) != want and session.has_feature("interest"):
                self.told_interest[dev] = want
                self._send(session, [Interested() if want else NotInterested()])

    # --- sessions -------------------------------------------------------------------------
    def on_connected(self, session: PeerSession) -> None:
        old = self.sessions.get(session.device)
        if old is not None and old is not session:
            # a better connection replaced this one: what was asked on the old one will never
            # be answered, so forget it now (its own on_disconnected comes too late to tell)
            self._forget(old)
        dev = session.device
        self.sessions[dev] = session
        self.connected_at[dev] = self.clock.monotonic()
        c = _Control()
        c.room.set()
        c.task = asyncio.ensure_future(self._control_loop(session, c))
        c.serve = asyncio.ensure_future(self.server.serve(session))
        self._control[dev] = c
        if dev in self.choking:
            self._send(session, [Choke()])
        self._send_cluster_config(session)

    def on_disconnected(self, session: PeerSession) -> None:
        if self.sessions.get(session.device) is session:
            self._forget(session)

    def _forget(self, session: PeerSession) -> None:
        dev = session.device
        del self.sessions[dev]
        for f in self.folders.values():
            f.peer_gone(dev)
        c = self._control.pop(dev, None)
        if c is not None:
            c.room.set()
            for t in (c.task, c.serve):
                if t is not None:
                    t.cancel()
        self.choked_by.discard(dev)
        self.choking.discard(dev)
        self.peer_interested.discard(dev)
        self.told_interest.pop(dev, None)
        self.last_request.pop(dev, None)

    def _send(self, session: PeerSession, msgs: list[Message]) -> None:
        try:
            session.send_many(msgs)
        except (ConnectionError, RuntimeError):
            pass

    def _send_cluster_config(self, session: PeerSession) -> None:
        dev = session.device
        folders = []
        db = self.db_for_thread()
        for cfg in self.config.folders:
            ours = self.index_info.get((cfg.id, self.device_id))
            if ours is None or not cfg.shared_with(dev, self.config.devices):
                continue
            theirs = self.index_info.get((cfg.id, dev), (0, 0))
            folders.append(
                FolderSummary(
                    cfg.id,
                    cfg.label[:MAX_LABEL],
                    [DeviceSummary(self.device_id.raw, ours[0], db.max_sequence(cfg.id, LOCAL)), DeviceSummary(dev.raw, theirs[0], theirs[1])],
                )
            )
        self._send(session, [ClusterConfig(folders)])

    # --- messages ---------------------------------------------------------------------------
    def on_message(self, session: PeerSession, msg: Message) -> asyncio.Event | None:
        """Handle one message; returns an event to wait for before reading on (backpressure)."""
        dev = session.device
        if isinstance(msg, PEER_ASSIST):  # addresses, punching, relaying: nat/assist.py
            return self.assist.on_message(session, msg) if self.assist is not None else None
        if isinstance(msg, Piece):
            f = self._slots.get(msg.id >> SLOT_BITS)
            if f is not None:
                return f.on_piece(dev, msg)
        elif isinstance(msg, Request):
            self.last_request[dev] = self.clock.monotonic()
            self.server.request(dev, msg)
        elif isinstance(msg, Cancel):
            self.server.cancel(dev, msg.id)
        elif isinstance(msg, PieceError):
            f = self._slots.get(msg.id >> SLOT_BITS)
            if f is not None:
                f.on_piece_error(dev, msg.id, msg.code)
        elif isinstance(msg, (Index, IndexUpdate, ClusterConfig)):
            return self._queue_control(dev, msg)
        elif isinstance(msg, Bitfield):
            f = self._shared_folder(msg.folder, dev)
            if f is not None:
                f.on_bitfield(dev, msg)
        elif isinstance(msg, Have):
            f = self._shared_folder(msg.folder, dev)
            if f is not None:
                f.on_have(dev, msg)
        elif isinstance(msg, Choke):
            self.choked_by.add(dev)
            for f in self.folders.values():
                f.choked(dev, True)
        elif isinstance(msg, Unchoke):
            self.choked_by.discard(dev)
            for f in self.folders.values():
                f.choked(dev, False)
        elif isinstance(msg, Interested):
            if dev not in self.peer_interested:
                self.peer_interested.add(dev)
                if dev in self.choking:
                    self._rechoke_wake.set()  # a free slot should not wait for the next round
        elif isinstance(msg, NotInterested):
            self.peer_interested.discard(dev)
        return None

    def _queue_control(self, dev: DeviceId, msg: Message) -> asyncio.Event | None:
        c = self._control.get(dev)
        if c is None:
            return None
        size = sum(len(w.name) + 40 * len(w.blocks) + 100 for w in msg.files) if isinstance(msg, (Index, IndexUpdate)) else 1024
        c.queue.put_nowait((msg, size))
        c.size += size
        if c.size > SESSION_QUEUE_BYTES:
            c.room.clear()
            return c.room
        return None

    async def _control_loop(self, session: PeerSession, c: _Control) -> None:
        dev = session.device
        while True:
            msg, size = await c.queue.get()
            try:
                if isinstance(msg, ClusterConfig):
                    await self._on_cluster_config(session, msg)
                elif isinstance(msg, (Index, IndexUpdate)):
                    f = self._shared_folder(msg.folder, dev)
                    if f is not None:
                        wait = f.on_index(dev, msg.files, isinstance(msg, Index), size)
                        if wait is not None:
                            await wait.wait()
            except (ConnectionError, RuntimeError):
                return
            except Exception:
                log.exception("handling %s from %s failed", type(msg).__name__, dev.short)
            finally:
                c.size -= size
                if c.size <= SESSION_QUEUE_BYTES // 2:
                    c.room.set()

    def _shared_folder(self, folder_id: str, dev: DeviceId) -> FolderRuntime | None:
        f = self.folders.get(folder_id)
        if f is None or dev not in f.peers:
            return None
        return f

    async def _on_cluster_config(self, session: PeerSession, msg: ClusterConfig) -> None:
        dev = session.device
        newly_shared = False
        for fs in msg.folders:
            cfg = self.config.folder(fs.id)
            if cfg is None:
                self.pending.add_folder(fs.id, fs.label, str(dev), self.clock.time())
                continue
            if not cfg.shared_with(dev, self.config.devices):
                continue
            await self.ready[fs.id].wait()
            f = self.folders.get(fs.id)
            if f is None or self.sessions.get(dev) is not session:
                continue
            ours = next((d for d in fs.devices if d.device_id == self.device_id.raw), None)
            theirs = next((d for d in fs.devices if d.device_id == dev.raw), None)
            if theirs is not None:
                known = self.index_info.get((fs.id, dev))
                if known is None or known[0] != theirs.index_id:
                    # a new index of theirs (first contact, or their database was reset)
                    self.index_info[(fs.id, dev)] = (theirs.index_id, 0)
                    await f.reset_peer_index(dev, theirs.index_id)
            newly_shared |= dev not in f.peers
            f.peer_ready(session, (ours.index_id, ours.max_sequence) if ours else (0, 0))
            self.pending.forget_folder(fs.id)
        if newly_shared:
            # the peer may have joined a folder after our last ClusterConfig: tell it again, so
            # it starts exchanging too (this stops once both sides have each other as peers)
            self._send_cluster_config(session)

    # --- status -------------------------------------------------------------------------
    def folder_status(self) -> list[dict[str, Any]]:
        return [f.status() for f in self.folders.values()]

    async def scan(self, folder: str | None) -> dict[str, Any]:
        if folder and folder not in self.folders:
            raise FolderError(f"no folder with id {folder!r}")
        targets = [self.folders[folder]] if folder else list(self.folders.values())
        return {"scanned": [await f.scan(None) for f in targets]}

    async def resume(self, folder: str) -> dict[str, Any]:
        """Confirm the deletions a paused folder's scan found, and go on syncing."""
        f = self.folders.get(folder)
        if f is None:
            raise FolderError(f"no folder with id {folder!r}")
        f.confirm_mass_delete = True
        result = await f.scan(None)
        f.puller.start()
        return result

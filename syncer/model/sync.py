"""The sync model: routes peer messages to folders, schedules block requests across peers, and
serves blocks. It is the `SessionHandler` of every peer session."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from syncer.config import Config, FolderConfig
from syncer.deviceid import DeviceId
from syncer.events import EventLog
from syncer.index.db import LOCAL, IndexDB
from syncer.index.version import short_id
from syncer.model.folder import (
    PEER_PIPELINE_BYTES,
    PEER_PIPELINE_REQUESTS,
    FolderRuntime,
    PeerStats,
    PendingRequest,
)
from syncer.pending import PendingStore
from syncer.transfer.choker import RECHOKE_INTERVAL, Choker
from syncer.transfer.choker import PeerStats as ChokeStats
from syncer.transfer.picker import BlockRef
from syncer.transfer.ratelimit import TokenBucket
from syncer.wire import (
    ERR_CHOKED,
    ERR_NO_SUCH_BLOCK,
    ERR_NO_SUCH_FILE,
    Bitfield,
    Cancel,
    Choke,
    ClusterConfig,
    DeviceSummary,
    FolderSummary,
    Have,
    Index,
    IndexUpdate,
    Message,
    Piece,
    PieceError,
    Request,
    Unchoke,
)

if TYPE_CHECKING:
    from syncer.peer.session import PeerSession

log = logging.getLogger(__name__)

HASH_IN_THREAD = 64 << 10  # blocks at least this big are verified off the event loop
MIN_PIPELINE_BYTES = 4 << 20
INTEREST_WINDOW = 30.0
PIPELINE_SECONDS = 1.0


class SyncModel:
    LOCAL = LOCAL

    def __init__(self, config: Config, device_id: DeviceId, db_path: Any, pending: PendingStore, events: EventLog | None = None) -> None:
        self.events = events if events is not None else EventLog()  # the daemon's; folders emit into it
        self.config = config
        self.device_id = device_id
        self.short = short_id(device_id)
        self.db_path = db_path
        self.pending = pending
        self.folders: dict[str, FolderRuntime] = {}
        self.ready: dict[str, asyncio.Event] = {}
        self.sessions: dict[DeviceId, PeerSession] = {}
        self.index_info: dict[tuple[str, DeviceId], tuple[int, int]] = {}
        self.requests: dict[tuple[DeviceId, int], PendingRequest] = {}
        self.by_ref: dict[tuple[DeviceId, str, BlockRef], int] = {}
        self.inflight: dict[DeviceId, list[int]] = {}  # device -> [requests, bytes]
        self.choked_by: set[DeviceId] = set()  # peers that choke us
        self.choking: set[DeviceId] = set()  # peers we choke
        self.last_request: dict[DeviceId, float] = {}
        self.connected_at: dict[DeviceId, float] = {}
        self.choker = Choker()
        self._choke_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._local = threading.local()
        self.hasher = ThreadPoolExecutor(2, thread_name_prefix="verify")
        self._schedule_pending: set[str] = set()  # folders with a schedule() due this loop turn
        self._send_queue: dict[DeviceId, list[Message]] = {}
        self.send_bucket = TokenBucket(config.get("limits.max_send_kbps") * 1024)
        self.recv_bucket = TokenBucket(config.get("limits.max_recv_kbps") * 1024)

    # --- helpers used by folders ------------------------------------------------------
    def db_for_thread(self) -> IndexDB:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = IndexDB(self.db_path)
        return db

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

    def local_index_id(self, folder: str) -> int:
        return self.index_info[(folder, self.device_id)][0]

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        for cfg in self.config.folders:
            await self._start_folder(cfg)
        self._choke_task = asyncio.ensure_future(self._choke_loop())

    async def _choke_loop(self) -> None:
        while True:
            await asyncio.sleep(RECHOKE_INTERVAL)
            self.rechoke(time.monotonic())

    def rechoke(self, now: float) -> None:
        """Tit-for-tat among connected devices, unless uploads to own devices are unlimited."""
        unlimited = bool(self.config.get("transfer.unlimited_own_devices"))
        stats = {
            dev: ChokeStats(
                interested=now - self.last_request.get(dev, float("-inf")) < INTEREST_WINDOW,
                download_rate=s.down_rate(),
                upload_rate=s.up_rate(),
                unlimited=unlimited,
                connected_at=self.connected_at.get(dev, now),
            )
            for dev, s in self.sessions.items()
        }
        seeding = not any(f.needed for f in self.folders.values())
        unchoked = self.choker.rank(stats, now, seeding=seeding).unchoked
        for dev, session in list(self.sessions.items()):
            choke = dev not in unchoked
            if choke != (dev in self.choking):
                (self.choking.add if choke else self.choking.discard)(dev)
                self._enqueue(session, [Choke() if choke else Unchoke()])

    async def _start_folder(self, cfg: FolderConfig) -> None:
        f = FolderRuntime(self, cfg)
        self.folders[cfg.id] = f
        self.ready[cfg.id] = asyncio.Event()

        def load_info() -> None:
            db = self.db_for_thread()
            db.add_folder(cfg.id, cfg.path)
            self.index_info[(cfg.id, self.device_id)] = (
                db.index_id(cfg.id, LOCAL),
                db.max_sequence(cfg.id, LOCAL),
            )
            for dev in self.paired_devices():
                rid = db.remote_index_id(cfg.id, dev.raw)
                if rid:
                    self.index_info[(cfg.id, dev)] = (rid, db.max_sequence(cfg.id, dev.raw))

        await f.run_in_worker(load_info)
        try:
            await f.start()
        except Exception as e:
            f.state, f.error = "error", str(e)
            log.exception("folder %s failed to start", cfg.id)
        self.ready[cfg.id].set()
        for session in list(self.sessions.values()):
            if cfg.shared_with(session.device, self.config.devices):
                await self._send_cluster_config(session)

    async def stop(self) -> None:
        if self._choke_task is not None:
            self._choke_task.cancel()
        for f in list(self.folders.values()):
            await f.stop()
        self.hasher.shutdown(wait=False, cancel_futures=True)

    async def reload(self, config: Config) -> None:
        self.config = config
        self.send_bucket = TokenBucket(config.get("limits.max_send_kbps") * 1024)
        self.recv_bucket = TokenBucket(config.get("limits.max_recv_kbps") * 1024)
        wanted = {f.id: f for f in config.folders}
        for fid in list(self.folders):
            if fid not in wanted or wanted[fid].path != self.folders[fid].cfg.path:
                await self.folders.pop(fid).stop()
        for fid, cfg in wanted.items():
            if fid in self.folders:
                self.folders[fid].cfg = cfg
                self.folders[fid].recompute(None)
                self.folders[fid].wake.set()
            else:
                await self._start_folder(cfg)
        for session in list(self.sessions.values()):
            await self._send_cluster_config(session)

    # --- sessions -------------------------------------------------------------------------
    async def on_connected(self, session: PeerSession) -> None:
        old = self.sessions.get(session.device)
        if old is not None and old is not session:
            # a better connection replaced this one: what was asked on the old one will never
            # be answered, so forget it now (its own on_disconnected comes too late to tell)
            self._forget(old)
        self.sessions[session.device] = session
        self.inflight[session.device] = [0, 0]
        self.connected_at[session.device] = time.monotonic()
        await self._send_cluster_config(session)

    def on_disconnected(self, session: PeerSession) -> None:
        if self.sessions.get(session.device) is session:
            self._forget(session)

    def _forget(self, session: PeerSession) -> None:
        del self.sessions[session.device]
        for f in self.folders.values():
            f.peer_gone(session.device)
        self.inflight.pop(session.device, None)
        self.choked_by.discard(session.device)
        self.choking.discard(session.device)
        self.last_request.pop(session.device, None)

    async def _send_cluster_config(self, session: PeerSession) -> None:
        dev = session.device
        folders = []
        for cfg in self.config.folders:
            if not cfg.shared_with(dev, self.config.devices) or cfg.id not in self.index_info and (cfg.id, self.device_id) not in self.index_info:
                continue
            ours = self.index_info.get((cfg.id, self.device_id))
            if ours is None:
                continue
            f = self.folders.get(cfg.id)
            our_seq = max((x.sequence for x in f.local.values()), default=ours[1]) if f else ours[1]
            theirs = self.index_info.get((cfg.id, dev), (0, 0))
            folders.append(
                FolderSummary(
                    cfg.id,
                    cfg.label,
                    [DeviceSummary(self.device_id.raw, ours[0], our_seq), DeviceSummary(dev.raw, theirs[0], theirs[1])],
                )
            )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await session.send(ClusterConfig(folders))

    async def on_message(self, session: PeerSession, msg: Message) -> None:
        dev = session.device
        if isinstance(msg, Piece):
            await self._on_piece(dev, msg)
        elif isinstance(msg, Request):
            await self._on_request(session, msg)
        elif isinstance(msg, PieceError):
            self._on_piece_error(dev, msg)
        elif isinstance(msg, (Index, IndexUpdate)):
            f = self._shared_folder(msg.folder, dev)
            if f is not None:
                await f.on_index(dev, msg.files, isinstance(msg, Index))
        elif isinstance(msg, ClusterConfig):
            await self._on_cluster_config(session, msg)
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
        elif isinstance(msg, Unchoke):
            self.choked_by.discard(dev)
            for f in self.folders.values():
                self.schedule(f)
        # Cancel needs nothing: answers are sent as soon as a request is read. Interest is taken
        # from requests themselves (a peer that asked for blocks recently is interested).

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
                self.pending.add_folder(fs.id, fs.label, str(dev), time.time())
                continue
            if not cfg.shared_with(dev, self.config.devices):
                continue
            await self.ready[fs.id].wait()
            f = self.folders[fs.id]
            ours = next((d for d in fs.devices if d.device_id == self.device_id.raw), None)
            theirs = next((d for d in fs.devices if d.device_id == dev.raw), None)
            if theirs is not None:
                known = self.index_info.get((fs.id, dev))
                if known is None or known[0] != theirs.index_id:
                    # a new index of theirs (first contact, or their database was reset)
                    self.index_info[(fs.id, dev)] = (theirs.index_id, 0)

                    def reset(fid: str = fs.id, d: DeviceId = dev, idx: int = theirs.index_id) -> None:
                        db = self.db_for_thread()
                        db.reset_device(fid, d.raw)
                        db.set_index_id(fid, d.raw, idx)

                    await f.run_in_worker(reset)
                    f.remote.pop(dev, None)
                    f.recompute(None)
            newly_shared |= dev not in f.peers
            await f.peer_ready(session, (ours.index_id, ours.max_sequence) if ours else (0, 0))
            self.pending.forget_folder(fs.id)
        if newly_shared:
            # the peer may have joined a folder after our last ClusterConfig: tell it again, so
            # it starts exchanging too (this stops once both sides have each other as peers)
            await self._send_cluster_config(session)

    # --- requests -----------------------------------------------------------------------
    def schedule(self, folder: FolderRuntime) -> None:
        """Top up the request pipelines of `folder`, once per event-loop turn however many
        pieces, haves and bitfields arrived in it (one read often carries dozens)."""
        if folder.id in self._schedule_pending:
            return
        self._schedule_pending.add(folder.id)
        asyncio.get_running_loop().call_soon(self._schedule_now, folder)

    def _schedule_now(self, folder: FolderRuntime) -> None:
        self._schedule_pending.discard(folder.id)
        if self.folders.get(folder.id) is not folder:
            return  # removed meanwhile
        now = time.monotonic()
        for dev, session in list(folder.peers.items()):
            if dev in self.choked_by or session.closed:
                continue
            counts = self.inflight.setdefault(dev, [0, 0])
            budget = pipeline_bytes(session.down_rate())
            free = PEER_PIPELINE_REQUESTS - counts[0]
            # refill in batches (below 3/4 of the window), not one pick per arriving piece
            if free <= 0 or (counts[0] and counts[1] * 4 >= budget * 3):
                continue
            refs = folder.picker.pick(dev, free, now)
            if not refs:
                continue
            msgs: list[Message] = []
            used = 0
            for ref in refs:
                used += 1
                job = folder.jobs.get(ref.file)
                if job is None:
                    folder.picker.failed(dev, ref)
                    continue
                g = job.glob
                off = ref.index * g.block_size
                size = min(g.block_size, g.size - off)
                rid = next(self._ids)
                self.requests[(dev, rid)] = PendingRequest(folder, ref, dev, size)
                self.by_ref[(dev, folder.id, ref)] = rid
                counts[0] += 1
                counts[1] += size
                msgs.append(Request(rid, folder.id, ref.file, ref.index, off, size, g.blocks[ref.index]))
                if counts[1] >= budget:
                    break
            for ref in refs[used:]:  # picked beyond the byte budget: hand them back
                folder.picker.failed(dev, ref)
            self._enqueue(session, msgs)

    def _enqueue(self, session: PeerSession, msgs: list[Message]) -> None:
        """Send in order without awaiting here (callers are synchronous)."""
        if not msgs:
            return
        q = self._send_queue.get(session.device)
        if q is not None:
            q.extend(msgs)
            return
        self._send_queue[session.device] = list(msgs)
        asyncio.ensure_future(self._drain_queue(session))

    async def _drain_queue(self, session: PeerSession) -> None:
        dev = session.device
        try:
            while self._send_queue.get(dev):
                batch, self._send_queue[dev] = self._send_queue[dev], []
                await session.send_many(batch)
        except (ConnectionError, RuntimeError, OSError):
            pass
        finally:
            self._send_queue.pop(dev, None)

    def _release(self, dev: DeviceId, rid: int) -> PendingRequest | None:
        req = self.requests.pop((dev, rid), None)
        if req is None:
            return None
        self.by_ref.pop((dev, req.folder.id, req.ref), None)
        counts = self.inflight.get(dev)
        if counts:
            counts[0] -= 1
            counts[1] -= req.size
        return req

    def cancel_request(self, folder: FolderRuntime, dev: DeviceId, ref: BlockRef) -> None:
        rid = self.by_ref.get((dev, folder.id, ref))
        if rid is None:
            return
        self._release(dev, rid)
        session = self.sessions.get(dev)
        if session is not None:
            self._enqueue(session, [Cancel(rid)])

    def drop_requests(self, folder: FolderRuntime, dev: DeviceId) -> None:
        for (d, rid), req in list(self.requests.items()):
            if d == dev and req.folder is folder:
                self._release(d, rid)

    async def _on_piece(self, dev: DeviceId, msg: Piece) -> None:
        wait = self.recv_bucket.take(len(msg.data), time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)  # download rate limit: slows reading from this peer
        req = self._release(dev, msg.id)
        if req is None:
            return
        folder = req.folder
        job = folder.jobs.get(req.ref.file)
        data = msg.data
        if job is None or len(data) != req.size:
            if job is not None:
                folder.block_arrived(dev, req.ref, False, len(data))
            self.schedule(folder)
            return
        expected = job.glob.blocks[req.ref.index]
        offset = req.ref.index * job.glob.block_size
        job.writers += 1
        if len(data) < HASH_IN_THREAD:
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            try:
                fut.set_result(_verify_and_write(job.fd, job.write_lock, data, expected, offset))
            except OSError as e:
                fut.set_exception(e)
            self._piece_written(folder, job, dev, req, len(data), fut)
        else:
            # verified and written by the pool while this session goes on reading: hashing
            # runs on the other core, and one slow block does not stall the pipeline
            fut = asyncio.get_running_loop().run_in_executor(self.hasher, _verify_and_write, job.fd, job.write_lock, data, expected, offset)
            fut.add_done_callback(lambda f: self._piece_written(folder, job, dev, req, len(data), f))

    def _piece_written(self, folder: FolderRuntime, job: Any, dev: DeviceId, req: PendingRequest, n: int, fut: asyncio.Future[bool]) -> None:
        job.writers -= 1
        if job.closing:
            job.release_fd()
        if fut.cancelled():  # shutting down
            return
        try:
            ok = fut.result()
        except OSError as e:
            log.error("folder %s: cannot write %s: %s", folder.id, req.ref.file, e)
            folder.picker.failed(dev, req.ref)
            self.schedule(folder)
            return
        if folder.jobs.get(req.ref.file) is not job:
            self.schedule(folder)  # aborted or finished meanwhile
            return
        if not ok:
            log.warning("folder %s: bad block %s#%d from %s", folder.id, req.ref.file, req.ref.index, dev.short)
        folder.block_arrived(dev, req.ref, ok, n)
        self.schedule(folder)

    def _on_piece_error(self, dev: DeviceId, msg: PieceError) -> None:
        req = self._release(dev, msg.id)
        if req is None:
            return
        folder = req.folder
        folder.picker.failed(dev, req.ref)
        if msg.code in (ERR_NO_SUCH_FILE, ERR_NO_SUCH_BLOCK):
            folder.picker.not_held(dev, req.ref)  # changed there, or our view is stale
        elif msg.code == ERR_CHOKED:
            self.choked_by.add(dev)
        self.schedule(folder)

    async def _on_request(self, session: PeerSession, req: Request) -> None:
        dev = session.device
        self.last_request[dev] = time.monotonic()
        folder = self._shared_folder(req.folder, dev)
        if folder is None:
            await session.send(PieceError(req.id, ERR_NO_SUCH_FILE))
            return
        if dev in self.choking:
            await session.send(PieceError(req.id, ERR_CHOKED))
            return
        result = folder.read_block(req)  # a pread from the page cache: cheap even for 16 MiB
        if isinstance(result, int):
            await session.send(PieceError(req.id, result))
            return
        st = folder.stats.setdefault(dev, PeerStats())
        st.bytes_out += len(result)
        st.blocks_out += 1
        wait = self.send_bucket.take(len(result), time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)  # upload rate limit
        await session.send_piece(req.id, result)

    # --- status -------------------------------------------------------------------------
    def folder_status(self) -> list[dict[str, Any]]:
        return [f.status() for f in self.folders.values()]

    async def scan(self, folder: str | None) -> dict[str, Any]:
        if folder and folder not in self.folders:
            raise _no_folder(folder)
        targets = [self.folders[folder]] if folder else list(self.folders.values())
        return {"scanned": [await f.scan(None) for f in targets]}

    async def resume(self, folder: str) -> dict[str, Any]:
        """Confirm the deletions a paused folder's scan found, and go on syncing."""
        f = self.folders.get(folder)
        if f is None:
            raise _no_folder(folder)
        f.confirm_mass_delete = True
        result = await f.scan(None)
        f.wake.set()
        return result


def _no_folder(folder: str) -> Exception:
    from syncer.errors import FolderError

    return FolderError(f"no folder with id {folder!r}")


def pipeline_bytes(rate: float) -> int:
    """Bytes to keep requested from a peer: about PIPELINE_SECONDS of its observed rate, so a
    slow peer is not handed blocks that faster peers could deliver sooner."""
    return int(min(PEER_PIPELINE_BYTES, max(MIN_PIPELINE_BYTES, rate * PIPELINE_SECONDS)))


def _verify_and_write(fd: int, lock: threading.Lock, data: bytes | memoryview, expected: bytes, offset: int) -> bool:
    """Write the block into the temp file only if it is the block we asked for."""
    if hashlib.sha256(data).digest() != expected:
        return False
    with lock:
        os.pwrite(fd, data, offset)
    return True

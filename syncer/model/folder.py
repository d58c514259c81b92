"""One shared folder at run time: its local and remote indexes, the need list, the puller and the
block server.

Threading: all index-DB access, scanning and filesystem changes run in the folder's single worker
thread (`self.worker`), one at a time, so a scan can never interleave with applying a download.
The asyncio loop only moves messages and block data. Received blocks are verified and written by a
small thread pool (hashlib releases the GIL), so hashing uses the second core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.config import FolderConfig
from syncer.deviceid import DeviceId
from syncer.errors import FolderError
from syncer.fs import layout
from syncer.index.fileinfo import FileInfo, FileType
from syncer.model import apply as applying
from syncer.model import safe_write
from syncer.model.convert import from_wire, to_wire
from syncer.model.globalstate import Need, global_version, need
from syncer.model.validate import bad_file
from syncer.scan.scanner import MassDelete
from syncer.transfer.picker import BlockRef, Picker
from syncer.wire import (
    ERR_NO_SUCH_BLOCK,
    ERR_NO_SUCH_FILE,
    Bitfield,
    Have,
    Index,
    IndexUpdate,
    Request,
    WireFile,
)

if TYPE_CHECKING:
    from syncer.model.sync import SyncModel
    from syncer.peer.session import PeerSession

log = logging.getLogger(__name__)

INDEX_BATCH = 1000
MAX_JOBS = 256  # files downloading at once
MAX_JOB_BYTES = 1 << 30  # bytes of files downloading at once (beyond one file)
PEER_PIPELINE_BYTES = 32 << 20  # bytes requested and not yet received, per peer
PEER_PIPELINE_REQUESTS = 512
REQUEST_TIMEOUT = 60.0
FINISH_BATCH = 500
RETRY_DELAY = 5.0
SERVING_FDS = 64
TEMP_KEEP_S = 24 * 3600  # an unneeded download temp file is removed after this long untouched


@dataclass
class PeerStats:
    bytes_in: int = 0
    bytes_out: int = 0
    blocks_in: int = 0
    blocks_out: int = 0
    bad_blocks: int = 0


@dataclass
class Job:
    glob: FileInfo
    conflict: bool
    fd: int
    have: set[int]
    vkey: tuple[tuple[int, int], ...]
    writers: int = 0  # blocks being verified and written by the thread pool right now
    closing: bool = False
    # buffered writes to one file serialise on the kernel's inode lock, where a waiting thread
    # spins on the CPU; waiting on this lock sleeps instead (hashing still runs in parallel)
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def release_fd(self) -> None:
        """Close the temp file, or have the last pending write close it: an fd closed under a
        writer could be reused by another file and receive its bytes."""
        if self.writers:
            self.closing = True
        elif self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class PendingRequest:
    folder: FolderRuntime
    ref: BlockRef
    peer: DeviceId
    size: int


def vkey(f: FileInfo) -> tuple[tuple[int, int], ...]:
    return tuple((int(d), int(c)) for d, c in f.version.to_list())


@dataclass
class FolderRuntime:
    model: SyncModel
    cfg: FolderConfig
    local: dict[str, FileInfo] = field(default_factory=dict)
    remote: dict[DeviceId, dict[str, FileInfo]] = field(default_factory=dict)
    needed: dict[str, tuple[FileInfo, Need]] = field(default_factory=dict)
    peers: dict[DeviceId, PeerSession] = field(default_factory=dict)
    sent_seq: dict[DeviceId, int] = field(default_factory=dict)
    partial: dict[tuple[str, tuple], dict[DeviceId, set[int]]] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    finishing: dict[str, None] = field(default_factory=dict)  # downloaded, waiting to be applied
    applying: set[str] = field(default_factory=set)  # being renamed into place right now
    retry_at: dict[str, float] = field(default_factory=dict)
    stats: dict[DeviceId, PeerStats] = field(default_factory=dict)
    state: str = "starting"
    error: str = ""
    confirm_mass_delete: bool = False

    def __post_init__(self) -> None:
        self.id = self.cfg.id
        self.root = Path(self.cfg.path)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"folder-{self.id}")
        self.picker = Picker()
        self.wake = asyncio.Event()
        self.finish_wake = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.scanner: Any = None
        self.watcher: Any = None
        self._serving: dict[str, int] = {}  # name -> open fd, least recently used first
        self._need_order: list[str] | None = None  # names in `needed`, in pulling order

    # --- worker thread ---------------------------------------------------------
    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    @property
    def db(self) -> Any:
        return self.model.db_for_thread()

    def marker_ok(self) -> bool:
        return (self.root / layout.MARKER).is_dir()

    # --- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        from syncer.ignore import Ignore
        from syncer.scan import Scanner

        def load() -> None:
            db = self.db
            db.add_folder(self.id, str(self.root))
            self.local = {f.name: f for f in db.all_files(self.id, self.model.LOCAL)}
            for dev in self.model.paired_devices():
                rows = {f.name: f for f in db.all_files(self.id, dev.raw)}
                if rows:
                    self.remote[dev] = rows
            self.scanner = Scanner(self.root, self.id, db, self.model.short, Ignore.load(self.root))

        await self.run_in_worker(load)
        self.recompute(None)
        self.tasks.append(asyncio.ensure_future(self._pull_loop()))
        self.tasks.append(asyncio.ensure_future(self._finish_loop()))
        self.tasks.append(asyncio.ensure_future(self._timer_loop()))
        await self.scan(None)
        if self.model.config.get("watch.enabled"):
            self.tasks.append(asyncio.ensure_future(self._watch_loop()))
        self.tasks.append(asyncio.ensure_future(self._rescan_loop()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                self.watcher.stop()
        for job in self.jobs.values():
            job.release_fd()
        self.jobs.clear()
        for fd in self._serving.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._serving.clear()
        self.worker.shutdown(wait=True, cancel_futures=True)

    # --- scanning ----------------------------------------------------------------
    async def scan(self, paths: set[str] | None) -> dict[str, Any]:
        if not self.marker_ok():
            self._stopped()
            return {"folder": self.id, "state": self.state, "error": self.error}

        def do_scan() -> Any:
            from syncer.ignore import Ignore

            if paths is None or layout.IGNORE_FILE in paths:
                self.scanner.ignore = Ignore.load(self.root)
            return self.scanner.scan(paths, allow_mass_delete=self.confirm_mass_delete)

        prev = self.state
        if self.state in ("idle", "starting"):
            self.state = "scanning"
        try:
            result = await self.run_in_worker(do_scan)
        except MassDelete as e:
            self.state, self.error = "paused", str(e)
            log.error("folder %s: %s", self.id, e)
            return {"folder": self.id, "state": self.state, "error": self.error}
        except FolderError as e:
            self.state, self.error = "stopped", str(e)
            log.error("folder %s: %s", self.id, e)
            return {"folder": self.id, "state": self.state, "error": self.error}
        self.confirm_mass_delete = False
        if self.state == "scanning":
            self.state = prev if prev != "starting" else "idle"
        if self.state in ("stopped", "paused"):
            self.state, self.error = "idle", ""
        changed = list(result.changed) + list(result.deleted)
        for f in changed:
            self.local[f.name] = f
        for name, msg in result.errors:
            log.warning("folder %s: cannot scan %s: %s", self.id, name, msg)
        if result.temp_files:
            self._drop_stale_temps(result.temp_files, time.time())
        if changed:
            self.recompute({f.name for f in changed})
            await self.push_updates()
        return {"folder": self.id, "changed": len(result.changed), "deleted": len(result.deleted), "errors": len(result.errors)}

    def _drop_stale_temps(self, temps: list[tuple[str, float]], now: float) -> None:
        """Remove download temp files left by a crash or an abandoned download: untouched for
        TEMP_KEEP_S and belonging to no file this device still needs (those resume from them)."""
        for tmp, mtime in temps:
            name = layout.final_name(tmp)
            if now - mtime < TEMP_KEEP_S or name in self.needed or name in self.jobs or name in self.applying:
                continue
            try:
                os.unlink(self.root / tmp)
                log.info("folder %s: removed stale temp file %s", self.id, tmp)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("folder %s: cannot remove stale temp file %s: %s", self.id, tmp, e.strerror or e)

    def _stopped(self) -> None:
        self.state = "stopped"
        self.error = f"folder marker {self.root / layout.MARKER} missing: folder stopped (recreate it or re-share the folder)"

    async def _watch_loop(self) -> None:
        from syncer.watch import FolderWatcher

        delay = self.model.config.get("watch.delay_ms") / 1000.0
        try:
            modify = self.model.config.get("watch.modify_events")
            self.watcher = FolderWatcher(self.root, delay, asyncio.get_running_loop(), modify)
            self.watcher.start()
        except Exception as e:  # watchdog can fail on odd filesystems: rescans still work
            log.warning("folder %s: watcher unavailable (%s); relying on periodic rescans", self.id, e)
            return
        while True:
            batch = await self.watcher.next_batch()  # temp files are never reported
            log.debug("folder %s: watcher reports %d changed paths", self.id, len(batch))
            if batch:
                await self.scan(batch)

    async def _rescan_loop(self) -> None:
        from syncer.watch import RescanSchedule

        sched = RescanSchedule(self.model.config.get("scan.interval_s"))
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(1.0, sched.next(now) - now))
            await self.scan(None)

    # --- index exchange ------------------------------------------------------------
    def summary_for(self, peer: DeviceId) -> tuple[int, int]:
        """(index id, max sequence) we hold of `peer`'s index of this folder."""
        return self.model.index_info.get((self.id, peer), (0, 0))

    async def peer_ready(self, session: PeerSession, their_view_of_us: tuple[int, int]) -> None:
        """The peer shares this folder with us: send our index (full, or since what it has)."""
        dev = session.device
        self.peers[dev] = session
        self.stats.setdefault(dev, PeerStats())
        our_index_id = self.model.local_index_id(self.id)
        index_id, seq = their_view_of_us
        self.sent_seq[dev] = seq if index_id == our_index_id else -1
        await self._send_index(dev)
        # what they already hold becomes a source, also for downloads already under way
        # (after a reconnect nothing else would ask this peer for their blocks)
        self._refresh_sources(dev)
        self.model.schedule(self)
        self.wake.set()

    def peer_gone(self, dev: DeviceId) -> None:
        self.peers.pop(dev, None)
        self.sent_seq.pop(dev, None)
        self.picker.remove_peer(dev)
        for holders in self.partial.values():
            holders.pop(dev, None)
        self.model.drop_requests(self, dev)

    async def _send_index(self, dev: DeviceId) -> None:
        session = self.peers.get(dev)
        if session is None:
            return
        since = self.sent_seq.get(dev, -1)
        full = since < 0

        def read() -> list[FileInfo]:
            if full:
                return list(self.db.all_files(self.id, self.model.LOCAL))
            return list(self.db.files_since(self.id, self.model.LOCAL, since))

        files = await self.run_in_worker(read)
        if not files and not full:
            return
        top = max((f.sequence for f in files), default=max(since, 0))
        first = True
        for i in range(0, max(len(files), 1), INDEX_BATCH):
            batch = [to_wire(f) for f in files[i : i + INDEX_BATCH]]
            msg = Index(self.id, batch) if (full and first) else IndexUpdate(self.id, batch)
            first = False
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.send(msg)
        self.sent_seq[dev] = top

    async def push_updates(self) -> None:
        for dev in list(self.peers):
            await self._send_index(dev)

    async def on_index(self, dev: DeviceId, files: list[WireFile], full: bool) -> None:
        good: list[FileInfo] = []
        for w in files:
            err = bad_file(w)
            if err:
                log.warning("folder %s: ignoring %r from %s: %s", self.id, w.name[:200], dev.short, err)
                continue
            good.append(from_wire(w))
        rows = self.remote.setdefault(dev, {})
        if full:
            gone = set(rows)
            rows.clear()
        else:
            gone = set()
        for f in good:
            rows[f.name] = f

        def store() -> None:
            if full:
                self.db.reset_device(self.id, dev.raw)
                self.db.set_index_id(self.id, dev.raw, self.model.index_info.get((self.id, dev), (0, 0))[0])
            if good:
                self.db.update_remote(self.id, dev.raw, good)

        await self.run_in_worker(store)
        if good:
            idx, seq = self.model.index_info.get((self.id, dev), (0, 0))
            self.model.index_info[(self.id, dev)] = (idx, max(seq, max(f.sequence for f in good)))
        self.recompute(gone | {f.name for f in good})
        self._refresh_sources(dev, {f.name for f in good})
        self.model.schedule(self)
        self.wake.set()

    # --- global state and need -------------------------------------------------------
    def recompute(self, names: set[str] | None) -> None:
        if names is None:
            names = set(self.local)
            for rows in self.remote.values():
                names |= set(rows)
        shared = self.model.devices_sharing(self.cfg)
        for name in names:
            cands = [rows[name] for dev, rows in self.remote.items() if dev in shared and name in rows]
            local = self.local.get(name)
            if local is not None:
                cands.append(local)
            glob = global_version(cands)
            n = need(local, glob)
            if n is Need.NOTHING or glob is None:
                if self.needed.pop(name, None) is not None:
                    self._need_order = None
                self._abort_job(name, drop_temp=True)  # nothing to resume: not needed any more
            else:
                if self.needed.get(name, (None,))[0] is not glob:
                    self._need_order = None
                self.needed[name] = (glob, n)
                job = self.jobs.get(name)
                if job is not None and job.vkey != vkey(glob):
                    self._abort_job(name)

    def _abort_job(self, name: str, drop_temp: bool = False) -> None:
        job = self.jobs.pop(name, None)
        if job is None:
            return
        for peer, ref in self.picker.remove_file(name):
            self.model.cancel_request(self, peer, ref)
        job.release_fd()
        if drop_temp:
            with contextlib.suppress(OSError):
                os.unlink(self.root / layout.temp_name(name))

    def _refresh_sources(self, dev: DeviceId, names: set[str] | None = None) -> None:
        rows = self.remote.get(dev, {})
        for name in names if names is not None else list(self.jobs):
            job = self.jobs.get(name)
            f = rows.get(name)
            if job is not None and f is not None and not f.deleted and vkey(f) == job.vkey:
                self.picker.set_full_holder(dev, name)

    def has_source(self, glob: FileInfo) -> bool:
        k = vkey(glob)
        for dev in self.peers:
            f = self.remote.get(dev, {}).get(glob.name)
            if f is not None and vkey(f) == k:
                return True
        return bool(self.partial.get((glob.name, k)))

    # --- pulling ---------------------------------------------------------------------
    async def _pull_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.state == "stopped" and not self.marker_ok():
                continue
            if not self.marker_ok():
                self._stopped()
                log.error("folder %s: %s", self.id, self.error)
                continue
            if self.cfg.paused or self.state == "paused":
                continue
            try:
                await self._pull_round()
            except Exception:
                log.exception("folder %s: pull round failed", self.id)

    async def _pull_round(self) -> None:
        now = time.monotonic()
        others: list[tuple[FileInfo, FileInfo | None]] = []
        to_start: list[tuple[FileInfo, Need]] = []
        job_bytes = sum(j.glob.size for j in self.jobs.values())
        if self._need_order is None:
            # smallest first (many files finish sooner); re-sorted only when the need changed
            self._need_order = sorted(self.needed, key=lambda name: (self.needed[name][0].size, name))
        for name in self._need_order:
            entry = self.needed.get(name)
            if entry is None:
                continue
            glob, n = entry
            if name in self.jobs or name in self.finishing or name in self.applying or self.retry_at.get(name, 0) > now:
                continue
            if glob.deleted or glob.type != FileType.FILE or n is Need.METADATA:
                others.append((glob, self.local.get(name)))  # nothing to download
                continue
            if len(self.jobs) + len(to_start) >= MAX_JOBS:
                continue
            if job_bytes + glob.size > MAX_JOB_BYTES and (self.jobs or to_start):
                continue
            if glob.size and not self.has_source(glob):
                continue
            to_start.append((glob, n))
            job_bytes += glob.size
        # deletions wait until downloads are done: a deleted file may be the local source of
        # blocks for a new one (a rename), so it must still be there while those are pulled
        deletions = [o for o in others if o[0].deleted]
        others = [o for o in others if not o[0].deleted]
        if not to_start and not self.jobs and not self.finishing and not self.applying:
            others += deletions
        elif deletions:
            asyncio.get_running_loop().call_later(0.5, self.wake.set)
        if others:
            await self._apply_others(others)
        if to_start:
            if not self._disk_ok(sum(g.size for g, _ in to_start)):
                return
            self.state = "syncing"
            prepared = await self.run_in_worker(self._prepare_jobs, to_start)
            for glob, n, fd, have in prepared:
                if self.needed.get(glob.name, (None,))[0] is not glob:
                    os.close(fd)
                    continue
                job = Job(glob, n is Need.CONFLICT, fd, have, vkey(glob))
                self.jobs[glob.name] = job
                if len(have) == len(glob.blocks):
                    self._finished(glob.name)
                    continue
                self.picker.add_file(glob.name, len(glob.blocks), have)
                self._refresh_sources_for_job(job)
                if len(glob.blocks) > 1:
                    await self._announce_bitfield(job)
            self.model.schedule(self)
        self._update_idle()

    def _update_idle(self) -> None:
        if self.state in ("syncing", "idle") and not self.jobs and not self.finishing and not self.applying:
            self.state = "idle" if not self.needed else "syncing"
            if self.needed and not any(self.has_source(g) or g.deleted or g.type != FileType.FILE for g, _ in self.needed.values()):
                self.state = "idle"  # what is needed is not available from any connected peer

    def _disk_ok(self, size: int) -> bool:
        reserve = self.model.config.get("limits.min_free_disk_mb") << 20
        free = shutil.disk_usage(self.root).free
        if free - size < reserve:
            self.state = "error"
            self.error = f"not enough free disk space ({free >> 20} MiB free, {reserve >> 20} MiB reserved): pulling paused"
            log.error("folder %s: %s", self.id, self.error)
            asyncio.get_running_loop().call_later(RETRY_DELAY, self.wake.set)
            return False
        if self.state == "error" and self.error.startswith("not enough free disk"):
            self.state, self.error = "syncing", ""
        return True

    def _refresh_sources_for_job(self, job: Job) -> None:
        name = job.glob.name
        for dev in self.peers:
            f = self.remote.get(dev, {}).get(name)
            if f is not None and not f.deleted and vkey(f) == job.vkey:
                self.picker.set_full_holder(dev, name)
        for dev, blocks in self.partial.get((name, job.vkey), {}).items():
            if dev in self.peers:
                self.picker.set_partial(dev, name, blocks)

    def _prepare_jobs(self, items: list[tuple[FileInfo, Need]]) -> list[tuple[FileInfo, Need, int, set[int]]]:
        """Worker thread: open temp files, reuse verified blocks (resume) and identical local
        blocks (renames, copies, unchanged parts of an edited file)."""
        out = []
        known = self.db.known_hashes(self.id, (h for glob, _ in items for h in glob.blocks))
        for glob, n in items:
            tmp = self.root / layout.temp_name(glob.name)
            # the temp file gets the final permissions now (kept owner-writable so a resume can
            # reopen it), which spares most files a chmod when they are applied
            mode = safe_write.temp_mode(glob.permissions)
            try:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT, mode)
                st = os.fstat(fd)
                if st.st_mode & 0o7777 != mode:  # umask, or an older temp file
                    os.fchmod(fd, mode)
            except OSError as e:
                log.warning("folder %s: cannot create %s: %s", self.id, tmp, e)
                self.retry_at[glob.name] = time.monotonic() + RETRY_DELAY
                continue
            have: set[int] = set()
            existing = st.st_size
            bs = glob.block_size
            for i, h in enumerate(glob.blocks):
                off = i * bs
                size = min(bs, glob.size - off)
                if off + size <= existing:
                    data = os.pread(fd, size, off)
                    if hashlib.sha256(data).digest() == h:
                        have.add(i)
                        continue
                data = self._local_block(h, size) if h in known else None
                if data is not None:
                    os.pwrite(fd, data, off)
                    have.add(i)
            os.ftruncate(fd, glob.size)
            out.append((glob, n, fd, have))
        return out

    def _local_block(self, h: bytes, size: int) -> bytes | None:
        found = self.db.find_block(self.id, h)
        if found is None:
            return None
        name, offset, bsize = found
        if bsize != size:
            return None
        try:
            with open(self.root / name, "rb") as f:
                data = os.pread(f.fileno(), size, offset)
        except OSError:
            return None
        return data if hashlib.sha256(data).digest() == h else None

    async def _announce_bitfield(self, job: Job) -> None:
        n = len(job.glob.blocks)
        bits = bytearray((n + 7) // 8)
        for i in job.have:
            bits[i // 8] |= 0x80 >> (i % 8)
        msg = Bitfield(self.id, job.glob.name, list(job.vkey), n, bytes(bits))
        for s in list(self.peers.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await s.send(msg)

    def on_bitfield(self, dev: DeviceId, msg: Bitfield) -> None:
        k = tuple((int(a), int(b)) for a, b in msg.version)
        if msg.block_count > 1 << 24 or len(msg.bits) != (msg.block_count + 7) // 8:
            return
        blocks = {i for i in range(msg.block_count) if msg.bits[i // 8] & (0x80 >> (i % 8))}
        holders = self.partial.setdefault((msg.name, k), {})
        holders[dev] = blocks
        job = self.jobs.get(msg.name)
        if job is not None and job.vkey == k:
            self.picker.set_partial(dev, msg.name, blocks)
            self.model.schedule(self)
        elif msg.name in self.needed:
            self.wake.set()

    def on_have(self, dev: DeviceId, msg: Have) -> None:
        k = tuple((int(a), int(b)) for a, b in msg.version)
        self.partial.setdefault((msg.name, k), {}).setdefault(dev, set()).add(msg.block_index)
        job = self.jobs.get(msg.name)
        if job is not None and job.vkey == k:
            self.picker.have(dev, BlockRef(msg.name, msg.block_index))
            self.model.schedule(self)
        elif msg.name in self.needed and msg.name not in self.jobs:
            self.wake.set()

    def block_arrived(self, dev: DeviceId, ref: BlockRef, ok: bool, nbytes: int) -> None:
        """Called by the model after a piece was verified (ok) or failed verification."""
        st = self.stats.setdefault(dev, PeerStats())
        job = self.jobs.get(ref.file)
        if not ok:
            st.bad_blocks += 1
            self.picker.failed(dev, ref, bad_data=True)
            if self.picker.is_banned(dev):
                log.warning("folder %s: %s sent bad blocks; no more requests to it", self.id, dev.short)
            return
        st.bytes_in += nbytes
        st.blocks_in += 1
        for peer, other in self.picker.received(dev, ref):
            self.model.cancel_request(self, peer, other)
        if job is None:
            return
        job.have.add(ref.index)
        if len(job.glob.blocks) > 1:
            msg = Have(self.id, ref.file, list(job.vkey), ref.index)
            for s in list(self.peers.values()):
                if s.device != dev:
                    asyncio.ensure_future(_send_quiet(s, msg))
        if self.picker.done(ref.file):
            self._finished(ref.file)

    def _finished(self, name: str) -> None:
        self.picker.remove_file(name)
        self.finishing[name] = None
        self.finish_wake.set()

    async def _finish_loop(self) -> None:
        while True:
            await self.finish_wake.wait()
            self.finish_wake.clear()
            while self.finishing:
                names = list(itertools.islice(self.finishing, FINISH_BATCH))
                for name in names:
                    del self.finishing[name]
                # until the batch is applied and the need recomputed, these names are in no
                # job and not finishing: `applying` keeps the puller from starting them again
                self.applying.update(names)
                batch = []
                for name in names:
                    job = self.jobs.pop(name, None)
                    if job is None:
                        continue
                    job.release_fd()
                    local = self.local.get(name)
                    batch.append((job.glob, local, job.conflict, self._loser_short(local)))
                # their job slots are free: wake the puller now, so the next downloads are
                # prepared as soon as the worker is done with this batch (it used to wake only
                # after the batch, and download and apply took turns 256 files at a time)
                self.wake.set()
                try:
                    await self._apply(batch, [])
                except Exception:
                    log.exception("folder %s: applying downloads failed", self.id)
                finally:
                    self.applying.difference_update(names)
            self._update_idle()
            self.wake.set()

    def _loser_short(self, local: FileInfo | None) -> str:
        if local is not None:
            name = self.model.short_name(local.modified_by)
            if name:
                return name
        return self.model.device_id.short

    async def _apply_others(self, others: list[tuple[FileInfo, FileInfo | None]]) -> None:
        await self._apply([], others)

    async def _apply(self, finished: list[Any], others: list[Any]) -> None:
        now = time.time()

        def work() -> tuple[applying.Outcome, list[FileInfo]]:
            outcome = applying.apply_batch(self.root, finished, others, now)
            stored = self.db.update_local(self.id, outcome.applied) if outcome.applied else []
            return outcome, stored

        outcome, stored = await self.run_in_worker(work)
        for f in stored:
            self.local[f.name] = f
        for name in outcome.retry:
            self.retry_at[name] = time.monotonic() + RETRY_DELAY
        for name, err in outcome.errors:
            log.warning("folder %s: cannot apply %s: %s", self.id, name, err)
            self.retry_at[name] = time.monotonic() + RETRY_DELAY
        if outcome.retry or outcome.errors:
            asyncio.get_running_loop().call_later(RETRY_DELAY + 0.1, self.wake.set)
        self.recompute({f.name for f in stored} | {g.name for g, *_ in finished} | {g.name for g, _ in others})
        if outcome.conflicts:
            await self.scan(set(outcome.conflicts))
        if stored:
            await self.push_updates()

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for peer, ref in self.picker.timeouts(now, REQUEST_TIMEOUT):
                self.model.cancel_request(self, peer, ref)
            if self.needed:
                self.wake.set()
            self.model.schedule(self)

    # --- serving ----------------------------------------------------------------------
    def read_block(self, req: Request) -> bytes | int:
        """Block data for a peer's request, or a PieceError code."""
        f = self.local.get(req.name)
        if f is not None and not f.deleted and f.type == FileType.FILE and req.block_index < len(f.blocks):
            if f.blocks[req.block_index] == req.hash:
                off = req.block_index * f.block_size
                size = min(f.block_size, f.size - off)
                if (off, size) != (req.offset, req.size):
                    return ERR_NO_SUCH_BLOCK
                fd = self._open_for_serving(f)
                if fd is None:
                    return ERR_NO_SUCH_BLOCK
                return os.pread(fd, size, off)
        job = self.jobs.get(req.name)
        if job is not None and req.block_index in job.have and req.block_index < len(job.glob.blocks):
            if job.glob.blocks[req.block_index] == req.hash and job.fd >= 0:
                off = req.block_index * job.glob.block_size
                size = min(job.glob.block_size, job.glob.size - off)
                if (off, size) == (req.offset, req.size):
                    return os.pread(job.fd, size, off)
        return ERR_NO_SUCH_FILE if f is None and job is None else ERR_NO_SUCH_BLOCK

    def _open_for_serving(self, f: FileInfo) -> int | None:
        """A cached read-only fd of the file, if the file on disk is still the version `f`
        (opening per block would cost syscalls and a watcher event each time)."""
        fd = self._serving.pop(f.name, None)
        if fd is not None and not _is_version(fd, f):
            os.close(fd)  # replaced since we opened it
            fd = None
        if fd is None:
            try:
                fd = os.open(self.root / f.name, os.O_RDONLY)
            except OSError:
                return None
            if not _is_version(fd, f):
                os.close(fd)
                asyncio.ensure_future(self.scan({f.name}))  # changed since the last scan
                return None
        self._serving[f.name] = fd
        while len(self._serving) > SERVING_FDS:
            os.close(self._serving.pop(next(iter(self._serving))))
        return fd

    # --- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        need_bytes = sum(g.size for g, _ in self.needed.values() if not g.deleted)
        local_files = local_bytes = 0
        for f in self.local.values():
            if not f.deleted:
                local_files += 1
                local_bytes += f.size
        glob_bytes = local_bytes + need_bytes
        completion = 100.0 if glob_bytes == 0 else 100.0 * (glob_bytes - need_bytes) / glob_bytes
        if self.needed and need_bytes == 0:
            completion = min(completion, 99.9)
        return {
            "id": self.id,
            "label": self.cfg.label,
            "path": str(self.root),
            "state": "paused" if self.cfg.paused else self.state,
            "error": self.error,
            "completion": round(completion, 2),
            "need_files": len(self.needed),
            "need_bytes": need_bytes,
            "local_files": local_files,
            "local_bytes": local_bytes,
            "peers": {str(dev): dict(vars(st)) for dev, st in self.stats.items()},
        }


def _is_version(fd: int, f: FileInfo) -> bool:
    st = os.fstat(fd)
    return st.st_size == f.size and st.st_mtime_ns == f.mtime_ns


async def _send_quiet(session: PeerSession, msg: Any) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError, OSError):
        await session.send(msg)


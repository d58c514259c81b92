"""One shared folder at run time: the driver around its sans-IO puller.

The puller (transfer/puller.py) decides what to fetch and when a file is done; this runtime
carries its actions out — need pages and job preparation in the folder's worker thread, block
verification in the verify pool, requests and announcements on peer sessions, applying batches
in the worker — and reports the results back. Index exchange with each peer, scanning, the
watcher and periodic rescans also live here, each as a supervised task.

Threading: all index-DB writes, scans and filesystem changes run in the folder's single worker
thread, one at a time, so a scan can never interleave with applying a download. The event loop
only moves messages and block data and runs the puller.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import stat
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from syncer.config import FolderConfig
from syncer.deviceid import DeviceId
from syncer.errors import FolderError
from syncer.fs import layout
from syncer.fs.confined import FolderFS
from syncer.index.db import LOCAL, IndexDB, NeedRow, encode_version
from syncer.index.fileinfo import LOCAL_CHANGE, FileInfo, FileType
from syncer.model import apply as applying
from syncer.model import foldertype, safe_write
from syncer.model.conflicts import MARKER as CONFLICT_MARKER
from syncer.model.conflicts import kept_name, original_of
from syncer.model.convert import from_wire, to_wire
from syncer.model.need import NeedIndex, Policy, basis_of
from syncer.model.storage import JobFile, Storage, write_block
from syncer.model.validate import bad_file
from syncer.model.why import SKIP_SEND_ONLY, Facts, errno_of, explain
from syncer.runtime.clock import Clock, sleep_until
from syncer.runtime.supervisor import Supervisor, TaskFailure
from syncer.scan.scanner import MassDelete
from syncer.transfer.puller import (
    AbortJob,
    Announce,
    ApplyBatch,
    Expected,
    LoadNeed,
    NeedChange,
    OrderKey,
    PrepareJobs,
    Puller,
    SendCancels,
    SendRequests,
)
from syncer.wire import (
    FEATURE_HAVE_BATCH,
    MAX_HAVE_MORE,
    Bitfield,
    Cancel,
    Have,
    Index,
    IndexUpdate,
    Piece,
    WireFile,
)

if TYPE_CHECKING:
    from syncer.model.sync import SyncModel
    from syncer.peer.session import PeerSession

log = logging.getLogger(__name__)

INDEX_PAGE = 1000  # rows read from the DB per step of sending an index
INDEX_MESSAGE_BYTES = 4 << 20  # an Index/IndexUpdate is cut at about this encoded size
INTAKE_LIMIT_BYTES = 4 << 20  # index data queued for the worker before reading from a peer pauses (estimated encoded size; decoded it is several times that)
HASH_IN_THREAD = 64 << 10  # blocks at least this big are verified off the event loop
TEMP_KEEP_S = 24 * 3600  # an unneeded download temp file is removed after this long untouched
MANY_CHANGES = 5000  # beyond this many need changes at once the puller gets a summary
RETRY_BASE = 5.0
RETRY_SLACK = 0.05  # a retry pass starts this late: the DB compares wall-clock times
RETRY_MAX = 3600.0
DISK_RETRY_MAX = 60.0  # disk full: look again at least this often
PRUNE_INTERVAL = 24 * 3600.0  # the whole trash can is swept daily...
PRUNE_RESUME = 60.0  # ...in runs of bounded work, the next one this soon if there is more
HOUSEKEEPING_S = 5.0  # idle serving and directory fds are closed this often
FILE_ERRORS_SHOWN = 50
OWN_WRITE_S = 5.0  # the watcher ignores events for what apply wrote this recently (if unchanged)
OWN_WRITE_MAX = 20_000


@dataclass
class TransferCounters:
    """Bytes and blocks exchanged with one device in this folder (the choker's inputs are
    transfer.choker's ChokeStats)."""

    bytes_in: int = 0
    bytes_out: int = 0
    blocks_in: int = 0
    blocks_out: int = 0
    bad_blocks: int = 0


@dataclass
class _Intake:
    dev: DeviceId
    files: list[WireFile]
    full: bool
    size: int


@dataclass
class _Changes:
    """Need changes for the puller, condensed once there are many (a first index or scan of a
    big folder): then only the changes of names it is working on are kept, plus a restart of its
    pass from the smallest changed key (the rest it reads from the DB anyway): never a million
    changes in memory at once."""

    changes: list[NeedChange]
    restart: bool = False
    restart_key: OrderKey | None = None

    def add(self, changes: list[NeedChange], jobs: set[str]) -> None:
        if not self.restart and len(self.changes) + len(changes) <= MANY_CHANGES:
            self.changes += changes
            return
        if not self.restart:
            changes = self.changes + changes
            self.changes = []
            self.restart = True
        self.changes += [c for c in changes if c.name in jobs]
        keys = [c.key for c in changes if c.key is not None]
        if keys:
            low = min(keys)
            self.restart_key = low if self.restart_key is None else min(self.restart_key, low)


def retry_delay(failures: int, disk: bool = False) -> float:
    return min(DISK_RETRY_MAX if disk else RETRY_MAX, RETRY_BASE * (2 ** min(failures, 12)))


class FolderRuntime:
    def __init__(self, model: SyncModel, cfg: FolderConfig, slot: int) -> None:
        self.model = model
        self.cfg = cfg
        self.id = cfg.id
        self.slot = slot
        self.root = Path(cfg.path)
        self.clock: Clock = model.clock
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"folder-{self.id}")
        self.need = NeedIndex(self.id)
        self.fs = FolderFS(self.root)  # every filesystem access of this folder goes through it
        self.storage = Storage(self.fs, self.id, lambda: self.model.config.get("limits.min_free_disk_mb") << 20, self.clock.monotonic)
        self.puller = Puller(self.id, model.request_ids(slot))
        self.supervisor = Supervisor(f"folder {self.id}", self.clock, self._task_failed)
        self.peers: dict[DeviceId, PeerSession] = {}
        self.stats: dict[DeviceId, TransferCounters] = {}
        self.jobfiles: dict[str, JobFile] = {}
        self.sent_seq: dict[DeviceId, int] = {}
        self.state = "starting"
        self.error = ""
        self.confirm_mass_delete = False
        self.scanner: Any = None
        self.watcher: Any = None
        self.last_scan: float | None = None
        self._started = asyncio.Event()
        self._intake: asyncio.Queue[_Intake] = asyncio.Queue()
        self._intake_bytes = 0
        self._intake_room = asyncio.Event()
        self._intake_room.set()
        self._sender_wake: dict[DeviceId, asyncio.Event] = {}
        self._sender_tasks: dict[DeviceId, asyncio.Task[None]] = {}
        self._turn_due = False
        self._timer_wake = asyncio.Event()
        self._last_interest: set[Hashable] = set()  # the puller names peers by any Hashable
        self._disk_full = ""
        self._task_error = ""
        self._changed: set[str] = set()
        # name -> (until, type or -1 if deleted, size, mtime_ns, inode) of what apply wrote
        self._own_writes: dict[str, tuple[float, int, int, int, int]] = {}
        self._own_lock = threading.Lock()

    # --- worker thread ---------------------------------------------------------------
    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    @property
    def db(self) -> IndexDB:
        return self.model.db_for_thread()

    def marker_ok(self) -> bool:
        try:
            return self.fs.refresh_root() and self.fs.is_dir(layout.MARKER)
        except OSError:
            return False

    def sharing(self) -> list[DeviceId]:
        return sorted(self.model.devices_sharing(self.cfg), key=lambda d: d.raw)

    def policy(self) -> Policy:
        ignore = self.scanner.ignore if self.scanner is not None else None
        return Policy(
            type=self.cfg.type,
            selected=tuple(self.cfg.selected) if self.cfg.selective else None,
            ignored=ignore.ignored if ignore is not None else None,
            ignore_rules=ignore.fingerprint if ignore is not None else "",
        )

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        from syncer.ignore import Ignore
        from syncer.scan import Scanner

        devices = self.sharing()

        def load() -> None:
            db = self.db
            db.add_folder(self.id, str(self.root))
            self.scanner = Scanner(self.root, self.id, db, self.model.short, Ignore.load(self.fs), fs=self.fs)
            if self.need.ensure_basis(db, devices, self.policy()):
                log.info("folder %s: need recomputed for %d devices", self.id, len(devices))

        await self.run_in_worker(load)
        self.supervisor.spawn("index intake", self._intake_loop)
        self.supervisor.spawn("timers", self._timer_loop)
        self._started.set()
        self.puller.start()
        self._kick()
        await self.scan(None)
        if self.model.config.get("watch.enabled"):
            self.supervisor.spawn("watcher", self._watch_loop)
        self.supervisor.spawn("rescans", self._rescan_loop)
        self.supervisor.spawn("housekeeping", self._housekeeping_loop)

    async def stop(self) -> None:
        for t in self._sender_tasks.values():
            t.cancel()
        await self.supervisor.stop()
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                self.watcher.stop()
        for jf in self.jobfiles.values():
            jf.close()
        self.jobfiles.clear()
        self.worker.shutdown(wait=True, cancel_futures=True)
        self.model.serve_pool.submit(self.storage.close)
        self.model.serve_pool.submit(self.fs.close)  # after the serving thread is done with it

    def _task_failed(self, failure: TaskFailure) -> None:
        self._task_error = f"{failure.task} failed: {failure.error} (restarting)"

    async def reconfigured(self, cfg: FolderConfig) -> None:
        """The folder's config changed (label, sharing, paused)."""
        self.cfg = cfg
        devices = self.sharing()
        policy = self.policy()
        if await self.run_in_worker(lambda: self.need.ensure_basis(self.db, devices, policy)):
            self.puller.start()
        self._kick()

    # --- scanning ----------------------------------------------------------------------
    async def scan(self, paths: set[str] | None) -> dict[str, Any]:
        if not self.marker_ok():
            self._stopped()
            return {"folder": self.id, "state": self.state, "error": self.error}
        devices = self.sharing()
        jobs = set(self.puller.job_names())

        def do_scan() -> Any:
            from syncer.ignore import Ignore

            recomputed = False
            if paths is None or layout.IGNORE_FILE in paths:
                self.scanner.ignore = Ignore.load(self.fs)
                recomputed = self.need.ensure_basis(self.db, devices, self.policy())
                if recomputed:
                    log.info("folder %s: ignore rules changed; need recomputed", self.id)
            progress = self.model.events.progress("FolderScanProgress", folder=self.id)
            condensed = _Changes([])
            policy = self.policy()
            receive_only = self.cfg.type == "receive-only"

            def on_batch(stored: list[FileInfo]) -> None:
                # each batch the scanner records: the need of those names, the serving cache,
                # the event; the scan itself holds no list of the folder's files
                names = [f.name for f in stored]
                if receive_only:
                    foldertype.mark_local_changes(self.db, self.id, devices, names)
                condensed.add(self.need.recompute(self.db, devices, names, policy), jobs)
                self.storage.forget(names)
                self.model.events.changes(self.id, stored)

            result = self.scanner.scan(paths, allow_mass_delete=self.confirm_mass_delete, progress=progress, on_batch=on_batch)
            if recomputed:
                condensed.restart, condensed.restart_key = True, None
            return result, condensed

        started = self.clock.monotonic()
        prev = self.state
        if self.state in ("idle", "starting"):
            self.state = "scanning"
        try:
            result, changes = await self.run_in_worker(do_scan)
        except MassDelete as e:
            self.state, self.error = "paused", str(e)
            log.error("folder %s: %s", self.id, e)
            return {"folder": self.id, "state": self.state, "error": self.error}
        except FolderError as e:
            self.state, self.error = "stopped", str(e)
            log.error("folder %s: %s", self.id, e)
            return {"folder": self.id, "state": self.state, "error": self.error}
        self.last_scan = self.clock.time()
        self.confirm_mass_delete = False
        if self.state == "scanning":
            self.state = prev if prev != "starting" else "idle"
        if self.state in ("stopped", "paused"):
            self.state, self.error = "idle", ""
        self.model.events.emit(
            "FolderScanned", folder=self.id, changed=result.changed_count, deleted=result.deleted_count,
            errors=len(result.errors), duration=self.clock.monotonic() - started,
        )
        for name, msg in result.errors:
            log.warning("folder %s: cannot scan %s: %s", self.id, name, msg)
        if result.temp_files:
            await self._drop_stale_temps(result.temp_files, self.clock.time())
        if result.changed_count or result.deleted_count:
            self._index_changed()
        self._need_changed(changes)
        return {"folder": self.id, "changed": result.changed_count, "deleted": result.deleted_count, "errors": len(result.errors)}

    async def _drop_stale_temps(self, temps: list[tuple[str, float]], now: float) -> None:
        """Remove download temp files left by a crash or an abandoned download: untouched for
        TEMP_KEEP_S and belonging to no file this device still needs (those resume from them)."""
        old = [(tmp, layout.final_name(tmp)) for tmp, mtime in temps if now - mtime >= TEMP_KEEP_S]
        old = [(tmp, name) for tmp, name in old if not self.puller.downloading(name)]
        if not old:
            return

        def drop() -> None:
            needed = self.db.need_rows(self.id, [name for _, name in old])
            for tmp, name in old:
                if name in needed:
                    continue
                try:
                    self.fs.unlink(tmp)
                    log.info("folder %s: removed stale temp file %s", self.id, tmp)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("folder %s: cannot remove stale temp file %s: %s", self.id, tmp, e.strerror or e)

        await self.run_in_worker(drop)

    def _stopped(self) -> None:
        self.state = "stopped"
        self.error = f"folder marker {self.root / layout.MARKER} missing: folder stopped (recreate it or re-share the folder)"

    async def _watch_loop(self) -> None:
        from syncer.watch import FolderWatcher

        delay = self.model.config.get("watch.delay_ms") / 1000.0
        modify = self.model.config.get("watch.modify_events")
        watcher = self.watcher = FolderWatcher(self.root, delay, asyncio.get_running_loop(), modify, own=self._is_own_write)
        try:
            try:
                # off the loop: the watches are added by walking every directory of the tree
                await asyncio.get_running_loop().run_in_executor(None, watcher.start)
            except Exception as e:  # inotify limits, odd filesystems: rescans still work
                log.warning("folder %s: watcher unavailable (%s); relying on periodic rescans", self.id, e)
                return
            while True:
                batch = await watcher.next_batch()  # temp files are never reported
                if batch is None:  # events were lost
                    await self.scan(None)
                elif batch:
                    log.debug("folder %s: watcher reports %d changed paths", self.id, len(batch))
                    await self.scan(batch)
        finally:  # also when this task fails and the supervisor starts another
            watcher.stop()

    async def _rescan_loop(self) -> None:
        from syncer.watch import RescanSchedule

        sched = RescanSchedule(self.model.config.get("scan.interval_s"))
        while True:
            await sleep_until(self.clock, sched.next(self.clock.monotonic()))
            await self.scan(None)

    def _versions_policy(self) -> safe_write.Versions:
        cfg = self.model.config
        return safe_write.Versions(cfg.get("versions.keep"), cfg.get("versions.max_age_days") * 86400.0)

    async def _housekeeping_loop(self) -> None:
        """Sweeps the trash can (at start, then daily, in runs of bounded work) and closes the
        serving and directory fds nobody used lately (a deleted file's space comes back, a disk
        can be unmounted)."""
        next_prune, cursor = 0.0, None
        while True:
            now = self.clock.monotonic()
            if now >= next_prune:
                removed, cursor = await self.run_in_worker(safe_write.prune_tree, self.fs, self._versions_policy(), self.clock.time(), cursor)
                if removed:
                    log.info("folder %s: removed %d old versions from the trash can", self.id, removed)
                next_prune = now + (PRUNE_INTERVAL if cursor is None else PRUNE_RESUME)
            self.model.serve_pool.submit(self.storage.close_idle)
            await self.run_in_worker(self.fs.release_idle, self.clock.monotonic())
            await self.clock.sleep(HOUSEKEEPING_S)

    # --- index exchange ------------------------------------------------------------------
    def summary_for(self, peer: DeviceId) -> tuple[int, int]:
        """(index id, max sequence) we hold of `peer`'s index of this folder."""
        return self.model.index_info.get((self.id, peer), (0, 0))

    def peer_ready(self, session: PeerSession, their_view_of_us: tuple[int, int]) -> None:
        """The peer shares this folder with us: send our index (full, or since what it has)."""
        dev = session.device
        self.peers[dev] = session
        self.stats.setdefault(dev, TransferCounters())
        our_index_id = self.model.local_index_id(self.id)
        index_id, seq = their_view_of_us
        self.sent_seq[dev] = seq if index_id == our_index_id else -1
        old = self._sender_tasks.pop(dev, None)
        if old is not None:
            old.cancel()
        self._sender_wake[dev] = asyncio.Event()
        self._sender_wake[dev].set()
        self._sender_tasks[dev] = asyncio.ensure_future(self._index_sender(session))
        self.puller.peer_ready(dev)
        self._kick()

    def peer_gone(self, dev: DeviceId) -> None:
        self.peers.pop(dev, None)
        self.sent_seq.pop(dev, None)
        task = self._sender_tasks.pop(dev, None)
        if task is not None:
            task.cancel()
        self._sender_wake.pop(dev, None)
        self.puller.peer_gone(dev)
        self._kick()

    def _index_changed(self) -> None:
        for ev in self._sender_wake.values():
            ev.set()

    async def _index_sender(self, session: PeerSession) -> None:
        """Send the peer everything of our index it has not got, then wait for changes. Reads
        the DB page by page and cuts messages by encoded size (a folder of big files has big
        block lists per entry), waiting for room in the session before each."""
        dev = session.device
        wake = self._sender_wake[dev]
        try:
            while True:
                await wake.wait()
                wake.clear()
                since = self.sent_seq.get(dev, -1)
                full = since < 0
                after = max(since, 0)
                first = True
                while True:
                    rows: list[FileInfo] = await self.run_in_worker(lambda a=after: self.db.files_page(self.id, LOCAL, a, INDEX_PAGE))
                    if not rows and not (full and first):
                        break
                    # a receive-only folder's local changes stay here
                    for batch in _cut([r for r in rows if not r.flags & LOCAL_CHANGE]):
                        await session.wait_writable()
                        msg = Index(self.id, batch) if full and first else IndexUpdate(self.id, batch)
                        session.send(msg)
                        first = False
                    if rows:
                        after = rows[-1].sequence
                        self.sent_seq[dev] = after
                    if len(rows) < INDEX_PAGE:
                        break
        except (ConnectionError, RuntimeError):
            return  # the session ended; a new one starts its own sender

    def on_index(self, dev: DeviceId, files: list[WireFile], full: bool, size: int) -> asyncio.Event | None:
        """Queue an index from a peer for the worker; returns an event to wait for before
        reading more from that peer when too much is queued already."""
        if dev not in self.peers:
            return None
        self._intake.put_nowait(_Intake(dev, files, full, size))
        self._intake_bytes += size
        if self._intake_bytes > INTAKE_LIMIT_BYTES:
            self._intake_room.clear()
            return self._intake_room
        return None

    async def _intake_loop(self) -> None:
        while True:
            item = await self._intake.get()
            try:
                await self._take_index(item)
            finally:
                self._intake_bytes -= item.size
                if self._intake_bytes <= INTAKE_LIMIT_BYTES // 2:
                    self._intake_room.set()

    async def _take_index(self, item: _Intake) -> None:
        dev = item.dev
        good: list[FileInfo] = []
        rejected = 0
        for w in item.files:
            err = bad_file(w)
            if err:
                rejected += 1
                if rejected <= 3:
                    log.warning("folder %s: ignoring %r from %s: %s", self.id, w.name[:200], dev.short, err)
                continue
            good.append(from_wire(w))
        if rejected > 3:
            log.warning("folder %s: ignored %d entries from %s in all", self.id, rejected, dev.short)
        devices = self.sharing()
        policy = self.policy()
        jobs = set(self.puller.job_names())
        index_id = self.model.index_info.get((self.id, dev), (0, 0))[0]

        def store() -> tuple[_Changes, int]:
            db = self.db
            names = [f.name for f in good]
            if item.full:  # what the device had: its global state may change now
                names = self._forget_device(db, dev, index_id) + names
            if good:
                db.update_remote(self.id, dev.raw, good)
            changes = self.need.recompute(db, devices, names, policy) if names else []
            return self._condense(changes, jobs), db.max_sequence(self.id, dev.raw)

        if dev not in devices:
            return
        changes, top = await self.run_in_worker(store)
        self.model.events.changes(self.id, good, device=str(dev))
        idx, seq = self.model.index_info.get((self.id, dev), (0, 0))
        self.model.index_info[(self.id, dev)] = (idx, max(seq, top))
        self._need_changed(changes)

    def _forget_device(self, db: IndexDB, dev: DeviceId, index_id: int) -> list[str]:
        """Worker: drop `dev`'s index of this folder; returns the names it had."""
        names: list[str] = []
        after = ""
        while True:
            page = db.names(self.id, dev.raw, after, 5000)
            names += page
            if len(page) < 5000:
                break
            after = page[-1]
        db.reset_device(self.id, dev.raw)
        db.set_index_id(self.id, dev.raw, index_id)
        return names

    async def reset_peer_index(self, dev: DeviceId, index_id: int) -> None:
        """The peer has a new index (first contact, or its database was reset)."""
        devices = self.sharing()
        policy = self.policy()
        jobs = set(self.puller.job_names())

        def work() -> _Changes:
            names = self._forget_device(self.db, dev, index_id)
            return self._condense(self.need.recompute(self.db, devices, names, policy), jobs)

        self._need_changed(await self.run_in_worker(work))

    def file_changed(self, name: str) -> None:
        """Serving found `name` changed on disk since the last scan: scan it soon."""
        if name in self._changed:
            return
        self._changed.add(name)
        if len(self._changed) == 1:
            self._spawn(self._scan_changed())

    async def _scan_changed(self) -> None:
        await asyncio.sleep(0)  # gather what else turns up in this loop turn
        names, self._changed = self._changed, set()
        await self.scan(names)

    @staticmethod
    def _condense(changes: list[NeedChange], jobs: set[str]) -> _Changes:
        out = _Changes([])
        out.add(changes, jobs)
        return out

    def _need_changed(self, changes: _Changes) -> None:
        if changes.changes:
            self.puller.need_changed(changes.changes)
        if changes.restart:
            self.puller.restart_from(changes.restart_key)
        self._kick()

    # --- the puller's actions ----------------------------------------------------------------
    def _kick(self) -> None:
        """Run the puller once this loop turn (however many events arrived in it)."""
        if self._turn_due:
            return
        self._turn_due = True
        asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_due = False
        if self.model.folders.get(self.id) is not self or not self._started.is_set():
            return
        if self.cfg.paused or self.state in ("paused", "stopped"):
            return
        now = self.clock.monotonic()
        self.puller.fill(now, {dev: s.down_rate() for dev, s in self.peers.items()})
        haves: list[Announce] = []
        for action in self.puller.actions():
            if isinstance(action, Announce) and isinstance(action.message, Have) and action.to is None:
                haves.append(action)
            else:
                self._carry_out(action)
        if haves:
            self._announce_haves(haves)
        if self.puller.interest != self._last_interest:
            self._last_interest = set(self.puller.interest)
            self.model.interest_changed()
        self._timer_wake.set()
        self._update_state()

    def _carry_out(self, action: Any) -> None:
        # this driver hands the (peer-type agnostic) puller DeviceIds only, so its actions name those
        if isinstance(action, SendRequests):
            self._send(cast(DeviceId, action.peer), list(action.requests))
        elif isinstance(action, SendCancels):
            self._send(cast(DeviceId, action.peer), [Cancel(i) for i in action.ids])
        elif isinstance(action, Announce):
            self._announce(action)
        elif isinstance(action, LoadNeed):
            self._spawn(self._load(action))
        elif isinstance(action, PrepareJobs):
            self._spawn(self._prepare(action))
        elif isinstance(action, AbortJob):
            self._abort(action)
        elif isinstance(action, ApplyBatch):
            self._spawn(self._apply(action))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._action_done)

    def _action_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # an action that failed must not stall the puller: log it, show it, and look again
            # after a while (the puller's state is consistent: it only sees reported results)
            log.error("folder %s: %s", self.id, exc, exc_info=exc)
            self._task_error = f"internal error: {exc}"
            self.puller.retry_due(self.clock.monotonic() + RETRY_BASE)

    def _send(self, dev: DeviceId, msgs: list[Any]) -> None:
        s = self.peers.get(dev)
        if s is not None and msgs:
            with contextlib.suppress(ConnectionError, RuntimeError):
                s.send_many(msgs)

    def _announce(self, a: Announce) -> None:
        targets = [cast(DeviceId, a.to)] if a.to is not None else [d for d in self.peers if d not in a.exclude]
        for dev in targets:
            s = self.peers.get(dev)
            if s is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    s.send_droppable(a.message)

    def _announce_haves(self, announces: list[Announce]) -> None:
        """The turn's Haves, one message per file to each peer that takes a batch: in a swarm
        they were most of the messages (a 1 -> 7 receiver sent and got 7,800 for 1,024 blocks),
        and a turn finishes several blocks when the loop is busy."""
        first: dict[tuple[str, tuple[tuple[int, int], ...]], Have] = {}
        per_peer: dict[DeviceId, dict[tuple[str, tuple[tuple[int, int], ...]], list[int]]] = {}
        for a in announces:
            m = cast(Have, a.message)
            key = (m.name, tuple(m.version))
            first.setdefault(key, m)
            for dev in self.peers:
                if dev not in a.exclude:
                    per_peer.setdefault(dev, {}).setdefault(key, []).extend(m.indexes())
        for dev, files in per_peer.items():
            s = self.peers.get(dev)
            if s is None:
                continue
            step = MAX_HAVE_MORE + 1 if s.has_feature(FEATURE_HAVE_BATCH) else 1
            for key, idx in files.items():
                m = first[key]
                for i in range(0, len(idx), step):
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        s.send_droppable(Have(m.folder, m.name, m.version, idx[i], idx[i + 1 : i + step]))

    async def _load(self, a: LoadNeed) -> None:
        devices = self.sharing()
        now_wall, now = self.clock.time(), self.clock.monotonic()

        def page() -> tuple[list[Any], bool, float | None]:
            rows, exhausted = self.need.page(self.db, devices, a.after, a.inclusive, a.limit, now_wall)
            # at the end of a pass, when entries wait for a retry: the next pass starts then
            nxt = self.db.next_retry(self.id, now_wall) if exhausted else None
            return rows, exhausted, nxt

        try:
            rows, exhausted, nxt = await self.run_in_worker(page)
        except BaseException:
            self.puller.need_loaded([], True)
            raise
        self.puller.need_loaded(rows, exhausted)
        if nxt is not None:
            self.puller.retry_due(now + (nxt - now_wall) + RETRY_SLACK)
        self._kick()

    async def _prepare(self, a: PrepareJobs) -> None:
        try:
            prepared = await self.run_in_worker(lambda: self.storage.prepare(self.db, list(a.jobs), a.committed_bytes))
        except BaseException:
            for spec in a.jobs:
                self.puller.job_failed(spec.file.name, spec.gen)
            raise
        failures: list[tuple[str, str, bool]] = []
        for p in prepared:
            name = p.spec.file.name
            if p.job is None:
                failures.append((name, p.error, p.disk_full))
                self.puller.job_failed(name, p.spec.gen)
                continue
            if not self.puller.is_current(name, p.spec.gen):
                p.job.close()  # aborted while it was being prepared
                continue
            old = self.jobfiles.pop(name, None)
            if old is not None:
                old.close()
            self.jobfiles[name] = p.job
            self.model.events.emit("ItemStarted", folder=self.id, item=name, action="update")
            self.puller.job_prepared(name, p.spec.gen, p.have)
        if failures:
            await self._record_failures(failures)
        self._kick()

    def _abort(self, a: AbortJob) -> None:
        jf = self.jobfiles.get(a.name)
        if jf is not None and jf.gen == a.gen:
            del self.jobfiles[a.name]
            jf.close()
        if a.drop_temp:
            self.worker.submit(self.storage.drop_temp, a.name)

    async def _apply(self, batch: ApplyBatch) -> None:
        now = self.clock.time()
        versions = self._versions_policy()
        devices = self.sharing()
        policy = self.policy()
        jobs = set(self.puller.job_names())
        if batch.others:
            self.model.events.items_started(self.id, [w.file for w in batch.others])
        for spec in batch.finished:
            jf = self.jobfiles.pop(spec.file.name, None)
            if jf is not None:
                jf.close()

        def work() -> tuple[applying.Outcome, list[FileInfo], _Changes]:
            db = self.db
            names = [s.file.name for s in batch.finished] + [w.name for w in batch.others]
            locals_ = db.get_many(self.id, LOCAL, names)
            finished = [(s.file, locals_.get(s.file.name), s.conflict, self._loser_short(locals_.get(s.file.name))) for s in batch.finished]
            others = [(w.file, locals_.get(w.name)) for w in batch.others]
            # noted before as well as after: the watcher sees the first renames of a batch while
            # the rest is still being applied (at 10,000 files it reported nearly every file,
            # and each was scanned again)
            self._note_own_writes([s.file for s in batch.finished] + [w.file for w in batch.others], expected=True)
            outcome = applying.apply_batch(self.fs, finished, others, now, versions)
            if outcome.conflicts:
                winners = {s.file.name: s.file for s in batch.finished}
                record = []
                for copy in outcome.conflicts:
                    original = original_of(copy)
                    loser, winner = locals_.get(original), winners.get(original)
                    if loser is not None and winner is not None:
                        record.append((copy, original, loser.modified_by, winner.modified_by, encode_version(loser.version), encode_version(winner.version), now))
                db.record_conflicts(self.id, record)
            self._note_own_writes(outcome.applied)
            stored = db.update_local(self.id, outcome.applied) if outcome.applied else []
            changes = self.need.recompute(db, devices, names, policy)
            return outcome, stored, self._condense(changes, jobs)

        try:
            outcome, stored, changes = await self.run_in_worker(work)
        finally:
            self.puller.applied(batch)
        self.storage.forget([s.file.name for s in batch.finished] + [w.name for w in batch.others] + outcome.conflicts)
        self.model.events.items_finished(self.id, stored, outcome.errors)
        self._need_changed(changes)
        failures = [(name, "changed here meanwhile or not empty; trying again later", False) for name in outcome.retry]
        failures += [(name, err, _is_disk_error(err)) for name, err in outcome.errors]
        if failures:
            await self._record_failures(failures)
        if stored:
            self._disk_full = ""
            self._index_changed()
        if outcome.conflicts:
            await self.scan(set(outcome.conflicts))
        self._kick()

    def _note_own_writes(self, rows: list[FileInfo], expected: bool = False) -> None:
        """Worker: what apply just put on disk, so the watcher does not scan it again (the
        watchdog thread compares each event's file with it: a change by someone else after us
        still gets scanned). `expected`: what apply is about to write (the global versions;
        their inode is not known yet, so not compared until the result is noted). Kept small: a
        few ints per name, at most OWN_WRITE_MAX names."""
        if not rows:
            return
        now = self.clock.monotonic()
        expires = now + OWN_WRITE_S
        with self._own_lock:
            own = self._own_writes
            if len(own) + len(rows) > OWN_WRITE_MAX:
                for k in [k for k, v in own.items() if v[0] < now]:
                    del own[k]
                for k in list(itertools.islice(own, max(0, len(own) + len(rows) - OWN_WRITE_MAX))):
                    del own[k]  # the oldest first: their events have long been delivered
            for f in rows:
                kind = -1 if f.deleted else int(f.type)
                own[f.name] = (expires, kind, f.size, f.mtime_ns, 0 if expected else f.inode)

    def _is_own_write(self, name: str) -> bool:
        """Watch thread: is `name` exactly as apply left it a moment ago?"""
        with self._own_lock:
            entry = self._own_writes.get(name)
        if entry is None or entry[0] < self.clock.monotonic():
            return False
        _, kind, size, mtime_ns, inode = entry
        try:
            st = self.fs.lstat_or_none(name)
        except OSError:
            return False
        if kind == -1:
            return st is None
        if st is None:
            return False
        if kind == FileType.DIRECTORY:
            return stat.S_ISDIR(st.st_mode)
        if kind == FileType.SYMLINK:
            return stat.S_ISLNK(st.st_mode)
        return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns and (not inode or st.st_ino == inode)

    def _loser_short(self, local: FileInfo | None) -> str:
        if local is not None:
            name = self.model.short_name(local.modified_by)
            if name:
                return name
        return self.model.device_id.short

    async def _record_failures(self, failures: list[tuple[str, str, bool]]) -> None:
        """Remember why these could not be done and when to try again (backing off per file);
        logged in summary, so a thousand failing files are not a thousand lines per retry."""
        now_wall, now = self.clock.time(), self.clock.monotonic()

        def record() -> float | None:
            db = self.db
            rows = db.need_rows(self.id, [n for n, _, _ in failures])
            db.record_failures(self.id, [
                (name, err, now_wall + retry_delay(rows[name].failures if name in rows else 0, disk))
                for name, err, disk in failures
            ])
            nxt = db.next_retry(self.id, now_wall)
            return None if nxt is None else now + (nxt - now_wall) + RETRY_SLACK

        retry_at = await self.run_in_worker(record)
        self.puller.retry_due(retry_at)
        disk = [name for name, _, d in failures if d]
        if disk:
            first = not self._disk_full
            self._disk_full = next(err for _, err, d in failures if d)
            if first:
                log.error("folder %s: %s (%d files wait for space)", self.id, self._disk_full, len(disk))
        other = [(n, e) for n, e, d in failures if not d]
        if other:
            log.warning("folder %s: %d items not synced now, e.g. %s: %s", self.id, len(other), other[0][0], other[0][1])

    # --- pieces --------------------------------------------------------------------------------
    def on_piece(self, dev: DeviceId, msg: Piece) -> asyncio.Event | None:
        """Verify and write a piece; an event to wait for before reading on when the verify
        pool has too much queued (runtime/backlog.py)."""
        exp = self.puller.piece_arrived(dev, msg.id, len(msg.data), self.clock.monotonic())
        if exp is None:
            st = self.stats.get(dev)
            if st is not None and self.puller.picker.is_banned(dev):
                st.bad_blocks += 1
            self._kick()
            return None
        jf = self.jobfiles.get(exp.name)
        if jf is None or jf.gen != exp.gen:
            self.puller.block_done(dev, exp, False, local_error=True)
            self._kick()
            return None
        data = msg.data
        if len(data) < HASH_IN_THREAD:
            try:
                result = write_block(jf, data, exp.hash, exp.offset)
            except OSError as e:
                self._write_failed(jf, e)
                return None
            self._block_written(dev, exp, result)
        else:
            # verified and written by the pool while the session goes on reading: hashing runs
            # on the other core, and one slow block does not stall the pipeline
            fut = asyncio.get_running_loop().run_in_executor(self.model.hasher, write_block, jf, data, exp.hash, exp.offset)
            fut.add_done_callback(lambda f: self._pool_done(dev, exp, jf, f))
            return self.model.verify_backlog.add(exp.size)
        return None

    def _pool_done(self, dev: DeviceId, exp: Expected, jf: JobFile, fut: asyncio.Future[str]) -> None:
        self.model.verify_backlog.done(exp.size)
        if fut.cancelled():
            return
        try:
            result = fut.result()
        except OSError as e:
            self._write_failed(jf, e)
            return
        self._block_written(dev, exp, result)

    def _block_written(self, dev: DeviceId, exp: Expected, result: str) -> None:
        st = self.stats.setdefault(dev, TransferCounters())
        if result == "ok":
            st.bytes_in += exp.size
            st.blocks_in += 1
            self.puller.block_done(dev, exp, True)
        elif result == "bad":
            st.bad_blocks += 1
            log.warning("folder %s: bad block %s#%d from %s", self.id, exp.name, exp.index, dev.short)
            self.puller.block_done(dev, exp, False)
            if self.puller.picker.is_banned(dev):
                log.warning("folder %s: %s sent bad blocks; no more requests to it", self.id, dev.short)
        self._kick()

    def _write_failed(self, jf: JobFile, e: OSError) -> None:
        disk = e.errno in (errno.ENOSPC, errno.EDQUOT)
        msg = "disk full" if disk else f"cannot write: {e.strerror or e}"
        self.puller.write_failed(jf.name, jf.gen)
        asyncio.ensure_future(self._record_failures([(jf.name, msg, disk)]))
        self._kick()

    def on_piece_error(self, dev: DeviceId, rid: int, code: int) -> None:
        from syncer.wire import ERR_CHOKED, ERR_NO_SUCH_BLOCK, ERR_NO_SUCH_FILE

        self.puller.piece_error(dev, rid, code in (ERR_NO_SUCH_FILE, ERR_NO_SUCH_BLOCK), code == ERR_CHOKED)
        self._kick()

    def on_bitfield(self, dev: DeviceId, msg: Bitfield) -> None:
        if dev in self.peers:
            self.puller.bitfield(dev, msg)
            self._kick()

    def on_have(self, dev: DeviceId, msg: Have) -> None:
        if dev in self.peers:
            self.puller.have(dev, msg)
            self._kick()

    def choked(self, dev: DeviceId, choked: bool) -> None:
        (self.puller.choked if choked else self.puller.unchoked)(dev)
        self._kick()

    # --- serving ---------------------------------------------------------------------------------
    def temp_block(self, name: str, index: int, offset: int, size: int, expected: bytes) -> JobFile | None:
        """The temp file to serve a block we already hold of a download, if that is what is asked."""
        held = self.puller.held_block(name, index)
        jf = self.jobfiles.get(name)
        if held is None or jf is None or jf.gen != held[1] or index >= len(held[0].blocks):
            return None
        f = held[0]
        if f.blocks[index] != expected or (index * f.block_size, min(f.block_size, f.size - index * f.block_size)) != (offset, size):
            return None
        return jf

    # --- user operations: folder types, selective sync -------------------------------------------
    async def override(self, dry_run: bool) -> dict[str, Any]:
        """Send-only: make this device's state win everywhere (versions that dominate)."""
        if self.cfg.type != "send-only":
            raise FolderError(f"folder {self.id} is {self.cfg.type}, not send-only: nothing to override")
        devices, policy, short = self.sharing(), self.policy(), self.model.short

        def work() -> tuple[dict[str, int], _Changes | None]:
            plan = foldertype.override_plan(self.db, self.id, devices, short, SKIP_SEND_ONLY)
            if dry_run or not plan.announce:
                return plan.counts(), None
            stored = self.db.update_local(self.id, plan.announce)
            return plan.counts(), self._condense(self.need.recompute(self.db, devices, [f.name for f in stored], policy), set())

        counts, changes = await self.run_in_worker(work)
        if changes is not None:
            self._need_changed(changes)
            self._index_changed()
        return {"folder": self.id, "dry_run": dry_run, **counts}

    async def revert(self, dry_run: bool) -> dict[str, Any]:
        """Receive-only: drop local changes; the other devices' version comes back."""
        if self.cfg.type != "receive-only":
            raise FolderError(f"folder {self.id} is {self.cfg.type}, not receive-only: nothing to revert")
        devices, policy, now = self.sharing(), self.policy(), self.clock.time()

        def work() -> tuple[dict[str, int], _Changes | None]:
            db = self.db
            plan = foldertype.revert_plan(db, self.id, devices)
            if dry_run:
                return plan.counts(), None
            db.reset_local_versions(self.id, plan.restore)
            removed = applying.remove_local(self.fs, list(db.get_many(self.id, LOCAL, plan.remove).values()), now)
            db.forget_local(self.id, removed)
            changes = self.need.recompute(db, devices, plan.restore + removed, policy)
            return plan.counts(), self._condense(changes, set())

        counts, changes = await self.run_in_worker(work)
        if changes is not None:
            self.storage.forget(set())
            self._need_changed(changes)
        return {"folder": self.id, "dry_run": dry_run, **counts}

    async def reselect(self, cfg: FolderConfig, added: list[str], removed: list[str]) -> dict[str, Any]:
        """Selective sync: `added` paths are fetched from now on; the local copies under
        `removed` (when in sync: a copy is elsewhere) are freed, never announced as deleted."""
        self.cfg = cfg
        devices, policy = self.sharing(), self.policy()
        raws = [LOCAL, *(d.raw for d in devices)]

        def below(prefix: str) -> list[str]:
            names: set[str] = set()
            for raw in raws:
                after = ""
                while True:
                    page = self.db.names_below(self.id, raw, prefix, after, 5000)
                    names.update(page)
                    if len(page) < 5000:
                        break
                    after = page[-1]
            return sorted(names)

        def work() -> tuple[int, int, _Changes]:
            db = self.db
            freed = kept = 0
            names: list[str] = []
            for prefix in added:
                names += below(prefix)
            for prefix in removed:
                under = below(prefix)
                names += under
                free, keep = foldertype.freeable(db, self.id, devices, under)
                gone = applying.remove_local(self.fs, free, None)
                db.forget_local(self.id, gone)
                freed += len(gone)
                kept += len(keep) + len(free) - len(gone)
            changes = self.need.recompute(db, devices, names, policy)
            db.set_need_basis(self.id, basis_of(devices, policy))
            return freed, kept, self._condense(changes, set(self.puller.job_names()))

        freed, kept, changes = await self.run_in_worker(work)
        self.storage.forget(set())
        self._need_changed(changes)
        return {"folder": self.id, "selected": list(cfg.selected), "freed": freed, "kept_changed_here": kept}

    # --- the conflict inbox ---------------------------------------------------------------------
    async def resolve(self, path: str, keep: str) -> dict[str, Any]:
        """Settle the conflict of `path` (the file or one of its copies). keep: 'local' (the
        version made on this device), 'remote' (the other one), 'both' (the copies stay, renamed
        so they are no longer conflict copies) or a copy's name. What is kept is written here as
        a local change, so its version dominates both sides and reaches every device; dropped
        copies are deleted everywhere (they go to the trash cans)."""
        name = path.strip("/")
        original = original_of(name)
        now = self.clock.time()
        me = self.model.device_id.short

        def work() -> tuple[list[str], str]:
            copies = sorted(str(r["copy"]) for r in self.db.conflicts(self.id, 100_000) if original_of(str(r["copy"])) == original)
            if not copies:
                raise FolderError(f"{original}: no conflict copies here (see `syncer conflicts {self.id}`)")
            if keep == "both":
                for c in copies:
                    self.fs.replace(c, kept_name(c, _copy_device(c)))
                return copies + [kept_name(c, _copy_device(c)) for c in copies], f"kept both: {len(copies)} copies renamed"
            if keep in copies or (keep == name and name in copies):
                chosen: str | None = keep
            elif keep in ("local", "remote"):
                mine = [c for c in copies if _copy_device(c) == me]
                theirs = [c for c in copies if c not in mine]
                if keep == "local":
                    chosen = mine[0] if mine else None  # ours is at the original name otherwise
                else:
                    chosen = None if mine else (theirs[0] if len(theirs) == 1 else None)
                    if not mine and len(theirs) > 1:
                        raise FolderError(f"{original} has {len(theirs)} conflict copies: name the one to keep (--keep COPY)")
            else:
                raise FolderError(f"--keep must be local, remote, both or the name of a copy of {original}")
            if chosen is not None:
                safe_write.archive(self.fs, original, now)
                self.fs.replace(chosen, original)
            for c in copies:
                if c != chosen:
                    safe_write.archive(self.fs, c, now)
            self.db.drop_conflicts(self.id, copies)
            kept = "the conflict copy " + chosen if chosen else "the version at " + original
            return [original, *copies], f"kept {kept}; {len(copies) - (1 if chosen else 0)} copies removed"

        touched, summary = await self.run_in_worker(work)
        await self.scan(set(touched))
        self.model.events.emit("ConflictResolved", folder=self.id, item=original, keep=keep)
        return {"folder": self.id, "name": original, "keep": keep, "result": summary}

    # --- why not in sync ----------------------------------------------------------------------
    def explain(self, rows: list[NeedRow]) -> list[dict[str, Any]]:
        """A reason and a sentence for each need row (event loop: reads the runtime's state)."""
        state = "paused" if self.cfg.paused or self.state == "paused" else self.state

        def running(name: str, states: tuple[str, ...]) -> bool:
            return self.puller.state_of(name) in states

        facts = Facts(
            state=state,
            downloading=lambda n: running(n, ("preparing", "downloading")),
            applying=lambda n: running(n, ("finished", "applying")),
            connected={d.raw for d in self.peers},
            choked_by={d.raw for d in self.model.choked_by},
            device_name=self.model.device_label,
            now_wall=self.clock.time(),
        )
        out = []
        for row in rows:
            r = explain(row, facts)
            item: dict[str, Any] = {
                "name": row.name,
                "kind": {0: "directory/symlink", 1: "file", 2: "deletion"}.get(row.kind, "file"),
                "size": row.size,
                "reason": r.code,
                "text": r.text,
            }
            if row.error:
                item["error"] = row.error
                eno = errno_of(row.error)
                if eno is not None:
                    item["errno"] = eno
            if row.holders:
                item["available_from"] = [self.model.device_label(h) for h in row.holders[:5]]
            out.append(item)
        return out

    # --- time ---------------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            self._timer_wake.clear()
            await sleep_until(self.clock, self.puller.get_timer(), self._timer_wake)
            deadline = self.puller.get_timer()
            if deadline is not None and self.clock.monotonic() >= deadline:
                self.puller.handle_timer(self.clock.monotonic())
                self._kick()

    # --- status ---------------------------------------------------------------------------------
    def _update_state(self) -> None:
        if self.state in ("syncing", "idle"):
            self.state = "syncing" if self.puller.busy() else "idle"

    def totals(self, what: str) -> tuple[int, int]:
        """(entries, bytes): 'local' index, 'need' (to fetch), 'skipped' (deliberately not)."""
        return self.db.totals(self.id, what)

    def status(self) -> dict[str, Any]:
        db = self.db
        need_files, need_bytes = db.totals(self.id, "need")
        local_files, local_bytes = db.totals(self.id, "local")
        skipped_files, skipped_bytes = db.totals(self.id, "skipped")
        error_count = db.count_need_errors(self.id)
        glob_bytes = local_bytes + need_bytes
        completion = 100.0 if glob_bytes == 0 else 100.0 * (glob_bytes - need_bytes) / glob_bytes
        if need_files and need_bytes == 0:
            completion = min(completion, 99.9)
        error = self.error or self._disk_full or self._task_error
        if not error and self.supervisor.failures:
            f = next(iter(self.supervisor.failures.values()))
            error = f"{f.task} failed: {f.error} (restarting)"
        return {
            "id": self.id,
            "label": self.cfg.label,
            "path": str(self.root),
            "state": "paused" if self.cfg.paused else ("error" if self._disk_full and self.state in ("idle", "syncing") else self.state),
            "error": error,
            "completion": round(completion, 2),
            "need_files": need_files,
            "need_bytes": need_bytes,
            "local_files": local_files,
            "local_bytes": local_bytes,
            "type": self.cfg.type,
            "selective": self.cfg.selective,
            "selected": list(self.cfg.selected) if self.cfg.selective else None,
            "skipped_files": skipped_files,  # known elsewhere, deliberately not here (why: `syncer why`)
            "skipped_bytes": skipped_bytes,
            "global_bytes": glob_bytes + skipped_bytes,
            "local_changes": db.count_flagged(self.id, LOCAL_CHANGE) if self.cfg.type == "receive-only" else 0,
            "conflicts": db.count_conflicts(self.id),
            "file_error_count": error_count,
            "file_errors": [{"name": n, "error": e} for n, e in db.need_errors(self.id, FILE_ERRORS_SHOWN)] if error_count else [],
            "last_scan": self.last_scan,
            "peers": {str(dev): dict(vars(st)) for dev, st in self.stats.items()},
        }


def _cut(rows: list[FileInfo]) -> list[list[WireFile]]:
    """Index rows as messages of about INDEX_MESSAGE_BYTES encoded each (estimated from what
    dominates an entry: its name and its block hashes)."""
    out: list[list[WireFile]] = []
    batch: list[WireFile] = []
    size = 0
    for f in rows:
        n = 96 + len(f.name.encode()) * 2 + 34 * len(f.blocks) + len(f.symlink_target.encode()) + 20 * len(f.version)
        if batch and size + n > INDEX_MESSAGE_BYTES:
            out.append(batch)
            batch, size = [], 0
        batch.append(to_wire(f))
        size += n
    if batch:
        out.append(batch)
    return out


def _is_disk_error(err: str) -> bool:
    return "No space left" in err or "Disk quota" in err


def _copy_device(copy: str) -> str:
    """The short ID a conflict copy's name carries: the device whose version it holds."""
    rest = copy.rpartition("/")[2].partition(CONFLICT_MARKER)[2]
    return rest.split("-")[2].split(".")[0] if rest.count("-") >= 2 else ""

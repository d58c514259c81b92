"""Events derived from the engine's state instead of emitted inside it: folder state changes and
errors, folder summaries (completion, bytes needed, rates), download progress, device rates,
pending devices and folders, and per-device completion. Keeps the engine free of UI concerns.

Each tick compares cheap signatures (state, error, need count, blocks held by running jobs) with
the previous ones and only builds a full summary when one changed, at most once per
SUMMARY_INTERVAL per folder. Remote completion is computed by SQLite in the API's own thread,
at most once per COMPLETION_INTERVAL per folder and only when an index changed; it is a join over
the folder, so the interval also stretches to COMPLETION_DUTY times the last computation's
duration (at 1,000,000 files one takes about a second: the API then takes ~5 % of a core, not 20 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from syncer import events as ev
from syncer.events import EventLog

log = logging.getLogger(__name__)

TICK = 0.25
SUMMARY_INTERVAL = 1.0
COMPLETION_INTERVAL = 5.0
COMPLETION_DUTY = 20  # wait at least this many times the last computation's duration
MAX_PROGRESS_ITEMS = 100
LOCAL = bytes(32)


class Observer:
    def __init__(self, daemon: Any, events: EventLog, db_pool: ThreadPoolExecutor, db_for_thread: Any) -> None:
        self.daemon = daemon
        self.events = events
        self._pool = db_pool
        self._db = db_for_thread
        self._state: dict[str, tuple[str, str]] = {}
        self._sig: dict[str, tuple[Any, ...]] = {}
        self._summary_at: dict[str, float] = {}
        self._progress_sig: dict[str, int] = {}
        self._bytes: dict[str, tuple[int, int, float]] = {}
        self.rates: dict[str, tuple[float, float]] = {}  # folder -> (down, up) bytes/s
        self.last_scan: dict[str, float] = {}  # folder -> wall time of the last finished scan
        self.completion: dict[str, dict[str, float]] = {}  # folder -> device -> percent
        self._completion_key: dict[str, tuple[Any, ...]] = {}
        self._completion_at: dict[str, float] = {}
        self._completion_cost: dict[str, float] = {}  # seconds the last computation took
        self._completion_busy: set[str] = set()
        self._pending: tuple[frozenset[Any], frozenset[Any]] | None = None
        self._devstats: dict[str, tuple[int, int]] = {}
        events.subscribe(self._on_event)

    def _on_event(self, e: ev.Event) -> None:
        if e.type == ev.FOLDER_SCANNED:
            self.last_scan[e.data["folder"]] = e.time

    async def run(self) -> None:
        while True:
            try:
                self.tick(time.monotonic())
            except Exception:  # a bug here must not end the event stream for good
                log.exception("event observer tick failed")
            await asyncio.sleep(TICK)

    def tick(self, now: float) -> None:
        self._pending_changes()
        model = self.daemon.model
        if model is None:
            return
        for fid, f in list(model.folders.items()):
            self._folder(fid, f, now)
        for fid in list(self._sig):
            if fid not in model.folders:
                for d in (self._sig, self._state, self._summary_at, self._progress_sig, self._bytes, self.rates, self.completion, self._completion_at, self._completion_cost):
                    d.pop(fid, None)
        self._device_stats(now)

    def _pending_changes(self) -> None:
        store = self.daemon.pending_store
        now = (frozenset((k, v.last_seen) for k, v in store.devices.items()), frozenset(store.folders))
        if self._pending is not None:
            data = store.to_json()
            if now[0] != self._pending[0]:
                self.events.emit(ev.PENDING_DEVICES_CHANGED, devices=data["devices"])
            if now[1] != self._pending[1]:
                self.events.emit(ev.PENDING_FOLDERS_CHANGED, folders=data["folders"])
        self._pending = now

    def _folder(self, fid: str, f: Any, now: float) -> None:
        state = "paused" if f.cfg.paused else f.state
        st = (state, f.error)
        old = self._state.get(fid)
        if old != st:
            self._state[fid] = st
            if old is None or old[0] != state:
                self.events.emit(ev.FOLDER_STATE_CHANGED, folder=fid, **{"from": old[0] if old else None}, to=state, error=f.error)
            if f.error and (old is None or old[1] != f.error):
                self.events.emit(ev.FOLDER_ERROR, folder=fid, error=f.error)
        have = f.puller.partial_bytes()
        bin_ = sum(s.bytes_in for s in f.stats.values())
        bout = sum(s.bytes_out for s in f.stats.values())
        prev = self._bytes.get(fid)
        if prev is None or now - prev[2] >= SUMMARY_INTERVAL:
            if prev is not None:
                dt = now - prev[2]
                self.rates[fid] = ((bin_ - prev[0]) / dt, (bout - prev[1]) / dt)
            self._bytes[fid] = (bin_, bout, now)
        sig = (st, f.totals("need"), f.totals("local"), f.puller.statistics().jobs, have, self.rates.get(fid), self.last_scan.get(fid))
        if sig != self._sig.get(fid) and (old != st or now - self._summary_at.get(fid, float("-inf")) >= SUMMARY_INTERVAL):
            self._sig[fid] = sig
            self._summary_at[fid] = now
            self.events.emit(ev.FOLDER_SUMMARY, folder=fid, summary=self.summary(f))
            downloads = f.puller.downloads(MAX_PROGRESS_ITEMS)
            if downloads and self._progress_sig.get(fid) != have:
                self._progress_sig[fid] = have
                items = [{"name": g.name, "blocks": len(g.blocks), "have": n, "size": g.size} for g, n in downloads]
                self.events.emit(ev.DOWNLOAD_PROGRESS, folder=fid, items=items)
        self._maybe_completion(fid, f, now)

    def summary(self, f: Any) -> dict[str, Any]:
        """The folder's status row plus what the observer knows (rates, last scan, devices)."""
        row = f.status()
        # blocks already downloaded into temp files count as done: a single large file then
        # shows its progress instead of 0% until it is renamed into place
        partial = f.puller.partial_bytes()
        total = row["local_bytes"] + row["need_bytes"]
        if partial and total:
            row["completion"] = round(min(99.99, 100.0 * (total - row["need_bytes"] + partial) / total), 2)
        row["downloaded_bytes"] = partial
        down, up = self.rates.get(f.id, (0.0, 0.0))
        row.update(
            down_rate=down,
            up_rate=up,
            last_scan=self.last_scan.get(f.id),
            device_completion=dict(self.completion.get(f.id, {})),
            shared_with=sorted(str(d) for d in f.model.devices_sharing(f.cfg)),
        )
        return row

    def _device_stats(self, now: float) -> None:
        out = {}
        for dev, s in list(self.daemon.sessions.items()):
            key = (s.conn.bytes_in, s.conn.bytes_out)
            if self._devstats.get(str(dev)) != key:
                out[str(dev)] = {
                    "down_rate": s.down_rate(),
                    "up_rate": s.up_rate(),
                    "wire_bytes_in": key[0],
                    "wire_bytes_out": key[1],
                }
                self._devstats[str(dev)] = key
        if out and now - self._summary_at.get("\0devices", float("-inf")) >= SUMMARY_INTERVAL:
            self._summary_at["\0devices"] = now
            self.events.emit(ev.DEVICE_STATISTICS, devices=out)

    # --- per-device completion ------------------------------------------------------------
    def _maybe_completion(self, fid: str, f: Any, now: float) -> None:
        wait = max(COMPLETION_INTERVAL, COMPLETION_DUTY * self._completion_cost.get(fid, 0.0))
        if fid in self._completion_busy or now - self._completion_at.get(fid, float("-inf")) < wait:
            return
        devices = [d for d in f.peers]
        key = tuple(sorted((str(d), f.model.index_info.get((fid, d), (0, 0))) for d in devices)) + (f.model.index_info.get((fid, f.model.device_id)), f.totals("need"))
        if key == self._completion_key.get(fid) or not devices:
            return
        self._completion_key[fid] = key
        self._completion_at[fid] = now
        self._completion_busy.add(fid)
        started = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._compute_completion, fid, [d.raw for d in devices])

        def done(fu: asyncio.Future[dict[bytes, dict[str, Any]]]) -> None:
            self._completion_busy.discard(fid)
            self._completion_cost[fid] = time.monotonic() - started
            with contextlib.suppress(asyncio.CancelledError):
                if fu.exception() is not None:
                    log.warning("completion of %s: %s", fid, fu.exception())
                    return
                for raw, c in fu.result().items():
                    dev = next((str(d) for d in devices if d.raw == raw), "")
                    self.completion.setdefault(fid, {})[dev] = c["completion"]
                    self.events.emit(ev.FOLDER_COMPLETION, folder=fid, device=dev, **c)

        fut.add_done_callback(done)

    def _compute_completion(self, fid: str, devices: list[bytes]) -> dict[bytes, dict[str, Any]]:
        """How much of what this device has (bytes and items) each peer has in the same
        version (worker thread, its own SQLite connection)."""
        db = self._db()
        out = {}
        for raw in devices:
            total, have, n, n_have = db.conn.execute(
                "SELECT COALESCE(SUM(l.size), 0), COALESCE(SUM(CASE WHEN r.version = l.version THEN l.size ELSE 0 END), 0), "
                "COUNT(*), COALESCE(SUM(r.version = l.version), 0) "
                "FROM files l LEFT JOIN files r ON r.folder = l.folder AND r.device = ? AND r.name = l.name "
                "WHERE l.folder = ? AND l.device = ? AND l.deleted = 0",
                (raw, fid, LOCAL),
            ).fetchone()
            pct = 100.0 * have / total if total else (100.0 * n_have / n if n else 100.0)
            if n_have < n:
                pct = min(pct, 99.9)
            out[raw] = {"completion": round(pct, 2), "need_bytes": total - have, "need_items": n - n_have}
        return out

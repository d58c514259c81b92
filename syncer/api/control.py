"""What the REST API does, in terms of the daemon: reads of its live state, configuration
changes (through `actions`, then the daemon's reload), folder contents (need, conflicts,
versions) and the GUI's login links. server.py only translates HTTP to these calls."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from syncer import events as ev
from syncer.api import actions, folderdata
from syncer.api.auth import Sessions
from syncer.api.metrics import ScanDurations, render
from syncer.api.observer import Observer
from syncer.config import SETTINGS
from syncer.deviceid import DeviceId
from syncer.errors import ConfigError, DaemonError, FolderError
from syncer.events import EventLog
from syncer.index.db import IndexDB
from syncer.model.conflicts import original_of

SECRET_KEYS = frozenset({"api.password"})
MAX_EVENT_WAITERS = 64
MAX_EVENTS_PER_REPLY = 1000
MAX_EVENT_TIMEOUT = 300.0


class NotFound(FolderError):
    """Answered with 404."""


class DaemonControl:
    def __init__(self, daemon: Any, events: EventLog) -> None:
        self.daemon = daemon
        self.events = events
        self.sessions = Sessions()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="api-db")
        self.observer = Observer(daemon, events, self._pool, self._db)
        self.scans = ScanDurations(events)
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def paths(self) -> Any:
        return self.daemon.paths

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.observer.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _db(self) -> IndexDB:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = IndexDB(self.paths.index_db)
        return db

    async def _in_db_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- reads ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {**self.daemon.status(lists=False), "folders": self.folders(), "devices": self.devices(), "last_event_id": self.events.last_id}

    def devices(self) -> list[dict[str, Any]]:
        rows = self.daemon.devices()
        for r in rows:
            d = self.daemon.config.device(r["device_id"])
            r["paused"] = bool(d and d.paused)
            r["last_seen"] = self.daemon.last_seen.get(r["device_id"]) if hasattr(self.daemon, "last_seen") else None
        return rows

    def folders(self) -> list[dict[str, Any]]:
        model = self.daemon.model
        if model is None:
            return []
        return [self.observer.summary(f) for f in list(model.folders.values())]

    def pending(self) -> dict[str, Any]:
        return self.daemon.pending()

    def config(self) -> dict[str, Any]:
        cfg = self.daemon.config
        values = {k: cfg.get(k) for k in SETTINGS}
        for k in SECRET_KEYS:
            values[k] = "********" if values[k] else ""
        schema = {
            k: {"type": s.kind.__name__, "default": "" if k in SECRET_KEYS else s.default, "help": s.help}
            for k, s in SETTINGS.items()
        }
        return {"settings": values, "schema": schema}

    def _folder(self, fid: str) -> Any:
        model = self.daemon.model
        f = model.folders.get(fid) if model is not None else None
        if f is None:
            raise NotFound(f"no folder with id {fid!r}")
        return f

    async def need(self, fid: str, page: Any, perpage: Any, prefix: str = "") -> dict[str, Any]:
        f = self._folder(fid)
        offset, limit = folderdata.page_args(page, perpage)
        out = await self._in_db_thread(lambda: folderdata.need_page(self._db(), f, prefix.strip("/"), offset, limit))
        out["items"] = f.explain(out.pop("rows"))
        return out

    async def conflicts(self, fid: str, page: Any, perpage: Any) -> dict[str, Any]:
        f = self._folder(fid)
        offset, limit = folderdata.page_args(page, perpage)
        rows = await self._in_db_thread(lambda: self._db().conflicts(fid, offset + limit + 1))
        items = [
            {**r, "loser": f.model.short_name(int(r["loser"])) if r["loser"] is not None else None,
             "winner": f.model.short_name(int(r["winner"])) if r["winner"] is not None else None,
             "name": r["name"] or original_of(str(r["copy"])),
             "original": r["name"] or original_of(str(r["copy"]))}
            for r in rows[offset : offset + limit]
        ]
        return {"folder": fid, "offset": offset, "items": items, "more": len(rows) > offset + limit}

    async def versions(self, fid: str, page: Any, perpage: Any) -> dict[str, Any]:
        f = self._folder(fid)
        offset, limit = folderdata.page_args(page, perpage)
        out = await self._in_db_thread(folderdata.versions_page, Path(f.cfg.path), offset, limit)
        return {"folder": fid, **out}

    async def restore(self, fid: str, body: Any) -> dict[str, Any]:
        f = self._folder(fid)
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str):
            raise FolderError('give {"version": "NAME~YYYYMMDD-HHMMSS.EXT"} as listed by the versions endpoint')
        # the folder's own worker: never interleaves with a scan or with applying a download
        name = await f.run_in_worker(folderdata.restore_version, Path(f.cfg.path), version, time.time())
        await f.scan({name})
        return {"folder": fid, "restored": name, "from": version}

    async def events_wait(self, since: int, types: frozenset[str] | None, timeout: float, limit: int) -> list[dict[str, Any]]:
        if self._waiters >= MAX_EVENT_WAITERS:
            raise DaemonError(f"too many event clients waiting (at most {MAX_EVENT_WAITERS})")
        self._waiters += 1
        try:
            found = await self.events.wait(since, types, min(max(timeout, 0.0), MAX_EVENT_TIMEOUT), min(max(limit, 1), MAX_EVENTS_PER_REPLY))
        finally:
            self._waiters -= 1
        return [e.to_json() for e in found]

    def metrics(self) -> str:
        return render(self.daemon, self.events, self.scans)

    def qr_svg(self) -> str:
        import segno

        buf = io.BytesIO()
        segno.make(str(self.daemon.device_id), error="m").save(buf, kind="svg", scale=4, border=2, xmldecl=False, dark="#111", light="#fff")
        return buf.getvalue().decode()

    # --- changes ---------------------------------------------------------------------------
    async def _changed(self) -> None:
        await self.daemon.reload()
        self.events.emit(ev.CONFIG_SAVED)

    async def set_config(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ConfigError("give an object of settings")
        actions.set_settings(self.paths.config_file, body)
        await self._changed()
        return self.config()

    async def add_folder(self, body: Any) -> dict[str, Any]:
        from syncer.model import share as folderlib

        b = _obj(body)
        path = b.get("path")
        if not isinstance(path, str) or not path:
            raise FolderError('give "path": the folder to share (an absolute path on the daemon\'s machine)')
        fid = b.get("id") or folderlib.new_folder_id()
        if not isinstance(fid, str):
            raise FolderError("id must be a string")
        devices = b.get("devices")
        if devices is not None and not isinstance(devices, list):
            raise FolderError("devices must be a list of device IDs (or null for all paired)")
        cfg = actions.add_folder(
            self.paths.config_file, Path(path), fid, b.get("label") or "", devices,
            joining=bool(b["join"]) if "join" in b else bool(b.get("id")),
            type=b.get("type"), selective=b.get("selective"),
        )
        self.daemon.pending_store.forget_folder(fid)
        await self._changed()
        f = self._folder(fid)
        return {**self.observer.summary(f), "path": cfg.path}

    async def edit_folder(self, fid: str, body: Any) -> dict[str, Any]:
        b = _obj(body)
        kw = {k: b[k] for k in ("label", "devices", "paused", "type") if k in b}
        actions.edit_folder(self.paths.config_file, fid, **kw)
        await self._changed()
        return self.observer.summary(self._folder(fid))

    async def override(self, fid: str, body: Any) -> dict[str, Any]:
        return await self._folder(fid).override(bool(_obj(body).get("dry_run", False)))

    async def revert(self, fid: str, body: Any) -> dict[str, Any]:
        return await self._folder(fid).revert(bool(_obj(body).get("dry_run", False)))

    async def select(self, fid: str, body: Any, selected: bool) -> dict[str, Any]:
        f = self._folder(fid)
        cfg, changed = actions.set_selection(self.paths.config_file, fid, _obj(body).get("paths") or [], selected)
        result = await f.reselect(cfg, changed if selected else [], [] if selected else changed)
        await self._changed()
        return result

    async def resolve(self, fid: str, body: Any) -> dict[str, Any]:
        b = _obj(body)
        path, keep = b.get("path"), b.get("keep")
        if not isinstance(path, str) or not isinstance(keep, str):
            raise FolderError('give "path" (the file or a copy) and "keep" (local, remote, both or a copy\'s name)')
        return await self._folder(fid).resolve(path, keep)

    async def ignore_test(self, fid: str, path: str) -> dict[str, Any]:
        f = self._folder(fid)
        name = path.strip().strip("/")
        ignored, rule = f.scanner.ignore.explain(name) if f.scanner is not None else (False, None)
        return {"folder": fid, "path": name, "ignored": ignored, "rule": rule}

    async def remove_folder(self, fid: str) -> dict[str, Any]:
        actions.remove_folder(self.paths.config_file, fid)
        await self._changed()
        await self._in_db_thread(lambda: self._db().remove_folder(fid))
        return {"removed": fid}

    async def add_device(self, body: Any) -> dict[str, Any]:
        b = _obj(body)
        dev = actions.pair(self.paths.config_file, self.daemon.device_id, str(b.get("device_id") or ""), b.get("name") or "", b.get("addresses") or [])
        self.daemon.pending_store.forget_device(dev.id)
        await self._changed()
        return self._device(dev.id)

    async def edit_device(self, device: str, body: Any) -> dict[str, Any]:
        b = _obj(body)
        kw = {k: b[k] for k in ("name", "addresses", "paused") if k in b}
        dev = actions.edit_device(self.paths.config_file, device, **kw)
        await self._changed()
        return self._device(dev.id)

    async def remove_device(self, device: str) -> dict[str, Any]:
        dev = actions.unpair(self.paths.config_file, device)
        await self._changed()
        return {"removed": str(dev)}

    def _device(self, device_id: str) -> dict[str, Any]:
        return next(r for r in self.devices() if r["device_id"] == device_id)

    async def accept_device(self, device: str, body: Any) -> dict[str, Any]:
        dev = str(DeviceId.parse(device))
        pending = self.daemon.pending_store.devices.get(dev)
        b = _obj(body or {})
        return await self.add_device({"device_id": dev, "name": b.get("name") or (pending.name if pending else ""), "addresses": b.get("addresses") or []})

    def dismiss_device(self, device: str) -> dict[str, Any]:
        dev = str(DeviceId.parse(device))
        self.daemon.pending_store.forget_device(dev)
        return {"dismissed": dev}

    async def accept_folder(self, fid: str, body: Any) -> dict[str, Any]:
        b = _obj(body)
        offered = [f for (i, _), f in self.daemon.pending_store.folders.items() if i == fid]
        label = b.get("label") or (offered[0].label if offered else "")
        return await self.add_folder({"id": fid, "path": b.get("path"), "label": label, "devices": b.get("devices")})

    def dismiss_folder(self, fid: str) -> dict[str, Any]:
        self.daemon.pending_store.forget_folder(fid)
        return {"dismissed": fid}

    def login_url(self) -> dict[str, Any]:
        token = self.sessions.new_login_token(time.monotonic())
        address = self.daemon.api.address if self.daemon.api else ""
        return {"url": f"{address}/login?token={token}"}


def _obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body

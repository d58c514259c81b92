"""Announcing this device to trackers and looking up paired devices there.

Each tracker gets the device key (derived from our device ID) with our listen port; the JSON
answer lists the other devices announced under the same key... which is nobody, since the key is
ours. To find a paired device, `lookup()` announces under *its* key with `event=null` (we do not
stay in its swarm: a `stopped` follows) and keeps the peers whose device ID is the wanted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

from syncer.deviceid import DeviceId
from syncer.discovery.keys import device_key

log = logging.getLogger(__name__)

MIN_INTERVAL = 10.0
MAX_INTERVAL = 3600.0
FAIL_RETRY = 30.0
TIMEOUT = aiohttp.ClientTimeout(total=10)


class TrackerClient:
    def __init__(self, urls: list[str], device_id: DeviceId, port: int) -> None:
        self.urls = urls
        self.device_id = device_id
        self.port = port
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        self._tasks = [asyncio.ensure_future(self._announce_loop(u)) for u in self.urls]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            for url in self.urls:
                with contextlib.suppress(Exception):
                    await self._announce(url, device_key(self.device_id), "stopped")
            await self._session.close()

    async def _announce(self, url: str, key: bytes, event: str | None) -> dict:
        assert self._session is not None
        body = {"info_hash": key.hex(), "device_id": str(self.device_id), "port": self.port, "event": event}
        async with self._session.post(url, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(data, dict):
                raise ValueError(f"tracker answered {resp.status}: {data}")
            return data

    async def _announce_loop(self, url: str) -> None:
        event: str | None = "started"
        while True:
            try:
                data = await self._announce(url, device_key(self.device_id), event)
                event = None
                interval = float(data.get("interval", 60))
                delay = min(MAX_INTERVAL, max(MIN_INTERVAL, interval))
            except (aiohttp.ClientError, ValueError, TimeoutError, OSError) as e:
                log.info("tracker %s: %s", url, e)
                delay = FAIL_RETRY
            await asyncio.sleep(delay)

    async def lookup(self, device: DeviceId) -> list[tuple[str, int]]:
        """Addresses under which `device` announced itself on any tracker."""
        return [(ip, port) for ip, port, d in await self.lookup_key(device_key(device)) if d == str(device)]

    async def lookup_key(self, key: bytes) -> list[tuple[str, int, str]]:
        """(ip, port, device_id) of everyone announced under `key` on any tracker (a key that
        is not a device key: invites). Works without start(): a session is opened for it."""
        if self._session is None:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as self._session:
                try:
                    return await self.lookup_key(key)
                finally:
                    self._session = None
        found: list[tuple[str, int, str]] = []
        for url in self.urls:
            try:
                data = await self._announce(url, key, None)
                with contextlib.suppress(Exception):
                    await self._announce(url, key, "stopped")
            except (aiohttp.ClientError, ValueError, TimeoutError, OSError) as e:
                log.debug("tracker %s lookup: %s", url, e)
                continue
            for p in data.get("peers", []):
                if isinstance(p, dict) and p.get("device_id") != str(self.device_id):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        found.append((str(p["ip"]), int(p["port"]), str(p.get("device_id") or "")))
        return found

    async def announce_key(self, key: bytes, event: str | None) -> None:
        """Announce (event "started"/None) or withdraw ("stopped") us under an extra `key`."""
        if self._session is None:
            return
        for url in self.urls:
            try:
                await self._announce(url, key, event)
            except (aiohttp.ClientError, ValueError, TimeoutError, OSError) as e:
                log.debug("tracker %s announce: %s", url, e)


OnAddress = Callable[[DeviceId, str, str], None]

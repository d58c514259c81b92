"""Discovery for the daemon: announces this device and finds paired devices through trackers,
the DHT and LAN beacons, reporting each address found with its source."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from syncer.config import Config
from syncer.deviceid import DeviceId
from syncer.discovery.dht.node import DhtNode
from syncer.discovery.keys import device_key
from syncer.discovery.lan import LanDiscovery
from syncer.discovery.tracker_client import TrackerClient

log = logging.getLogger(__name__)

LOOKUP_INTERVAL = 30.0
ANNOUNCE_INTERVAL = 15 * 60.0
FIRST_LOOKUP_DELAY = 0.5

OnAddress = Callable[[DeviceId, str, str], None]


def _hostport(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port)


class DiscoveryService:
    def __init__(self, config: Config, device_id: DeviceId, listen_port: int, on_address: OnAddress) -> None:
        self.config = config
        self.device_id = device_id
        self.listen_port = listen_port
        self.on_address = on_address
        self.wanted: list[DeviceId] = []
        self.tracker: TrackerClient | None = None
        self.dht: DhtNode | None = None
        self.lan: LanDiscovery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.last_announce: float | None = None  # wall clock of the last announce with a taker
        self.last_announce_ok = 0
        self.last_lookup: float | None = None
        self.last_lookup_found = 0
        self.bootstraps = 0

    async def start(self) -> None:
        cfg = self.config
        if cfg.get("discovery.tracker.enabled") and cfg.get("discovery.tracker.urls"):
            self.tracker = TrackerClient(cfg.get("discovery.tracker.urls"), self.device_id, self.listen_port)
            await self.tracker.start()
        if cfg.get("discovery.dht.enabled"):
            port = cfg.get("discovery.dht.port") or self.listen_port
            self.dht = DhtNode("0.0.0.0", port, bootstrap=[_hostport(b) for b in cfg.get("discovery.dht.bootstrap")])
            try:
                await self.dht.start()
            except OSError as e:
                log.info("DHT node cannot use UDP port %s (%s); using a free port", port, e)
                self.dht = DhtNode("0.0.0.0", 0, bootstrap=self.dht.bootstrap_nodes)
                await self.dht.start()
            self._tasks.append(asyncio.ensure_future(self._dht_announce_loop()))
        if cfg.get("discovery.lan.enabled"):
            self.lan = LanDiscovery(
                self.device_id, self.listen_port, cfg.get("discovery.lan.port"), cfg.get("discovery.lan.address"), self._found
            )
            try:
                await self.lan.start()
            except OSError as e:
                log.warning("LAN discovery unavailable: %s", e)
                self.lan = None
        self._tasks.append(asyncio.ensure_future(self._lookup_loop()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for part in (self.tracker, self.dht, self.lan):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()

    def dht_report(self) -> dict[str, object]:
        if self.dht is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "address": f"{self.dht.host}:{self.dht.port}",
            "node_id": self.dht.id.hex(),
            "nodes": len(self.dht.table),
            "last_announce": self.last_announce,
            "last_announce_ok": self.last_announce_ok,
            "last_lookup": self.last_lookup,
            "last_lookup_found": self.last_lookup_found,
            "bootstraps": self.bootstraps,
            "stats": self.dht.statistics(),
        }

    def set_wanted(self, devices: list[DeviceId]) -> None:
        """Paired devices that are not connected: looked up now and then every LOOKUP_INTERVAL."""
        new = [d for d in devices if d not in self.wanted]
        self.wanted = list(devices)
        if new:
            self._wake.set()
            if self.lan is not None:
                self.lan.send_now()  # a new peer may be waiting for our beacon

    def _found(self, device: DeviceId, address: str, source: str) -> None:
        if device != self.device_id:
            self.on_address(device, address, source)

    async def _dht_announce_loop(self) -> None:
        assert self.dht is not None
        await self.dht.bootstrap()
        while True:
            with contextlib.suppress(Exception):
                await self.dht.announce(device_key(self.device_id), self.listen_port)
            await asyncio.sleep(ANNOUNCE_INTERVAL)

    async def _lookup_loop(self) -> None:
        await asyncio.sleep(FIRST_LOOKUP_DELAY)
        while True:
            for device in list(self.wanted):
                if self.tracker is not None:
                    for ip, port in await self.tracker.lookup(device):
                        self._found(device, f"tcp://{ip}:{port}", "tracker")
                if self.dht is not None:
                    with contextlib.suppress(Exception):
                        for ip, port in await self.dht.get_peers(device_key(device)):
                            self._found(device, f"tcp://{ip}:{port}", "dht")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOKUP_INTERVAL)

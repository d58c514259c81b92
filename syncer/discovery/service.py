"""Discovery for the daemon: announces this device and finds paired devices through trackers,
the DHT and LAN beacons, reporting each address found with its source.

Besides our device key, `advertise(key)` announces us under extra keys (invites) on all three
until `withdraw(key)`: trackers every ADVERTISE_INTERVAL, the DHT every DHT_ADVERTISE_INTERVAL,
LAN as keyed beacons (lan.py). Lookups under such keys go through the parts directly
(`tracker.lookup_key`, `dht.get_peers`, `lan.watch` + `lan.query`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from syncer.config import Config
from syncer.deviceid import DeviceId
from syncer.discovery.dht.node import DhtNode
from syncer.discovery.keys import device_key
from syncer.discovery.lan import LanDiscovery
from syncer.discovery.tracker_client import TrackerClient
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

LOOKUP_INTERVAL = 30.0
ANNOUNCE_INTERVAL = 15 * 60.0
FIRST_RETRY = 15.0  # an announce nobody took is retried after this, doubling
FIRST_LOOKUP_DELAY = 0.5
FIRST_LOOKUP_INTERVAL = 2.0
DHT_STATE = "dht-nodes.json"  # the routing table between runs (JSON, 0600)
ADVERTISE_INTERVAL = 60.0
DHT_ADVERTISE_INTERVAL = 10 * 60.0
MAX_EXTRA_KEYS = 64

OnAddress = Callable[[DeviceId, str, str], None]


def _hostport(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port)


class DiscoveryService:
    def __init__(
        self,
        config: Config,
        device_id: DeviceId,
        listen_port: int,
        on_address: OnAddress,
        state_dir: Path | None = None,
        announce_port: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.listen_port = listen_port
        self.state_file = state_dir / DHT_STATE if state_dir is not None else None
        # the port others should dial: a port mapping's external port when there is one
        self.announce_port = announce_port or (lambda: self.listen_port)
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
        self.extra_keys: dict[bytes, float] = {}  # advertised key -> when last announced on the DHT
        self._wake_advertise = asyncio.Event()
        self._dht_ready = asyncio.Event()  # bootstrapped: an announce can reach the closest nodes

    async def start(self) -> None:
        cfg = self.config
        if cfg.get("discovery.tracker.enabled") and cfg.get("discovery.tracker.urls"):
            self.tracker = TrackerClient(cfg.get("discovery.tracker.urls"), self.device_id, self.listen_port)
            await self.tracker.start()
        if cfg.get("discovery.dht.enabled"):
            port = cfg.get("discovery.dht.port") or self.listen_port
            boot = [_hostport(b) for b in cfg.get("discovery.dht.bootstrap")]
            self.dht = DhtNode("0.0.0.0", port, bootstrap=boot, state_file=self.state_file)
            try:
                await self.dht.start()
            except OSError as e:
                log.info("DHT node cannot use UDP port %s (%s); using a free port", port, e)
                self.dht = DhtNode("0.0.0.0", 0, bootstrap=boot, state_file=self.state_file)
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
        self._tasks.append(asyncio.ensure_future(self._advertise_loop()))

    def advertise(self, key: bytes) -> None:
        """Announce this device under `key` too (on every enabled part) until withdrawn."""
        if key in self.extra_keys or len(self.extra_keys) >= MAX_EXTRA_KEYS:
            return
        self.extra_keys[key] = float("-inf")
        if self.lan is not None:
            self.lan.advertise(key)
        self._wake_advertise.set()

    def withdraw(self, key: bytes) -> None:
        if self.extra_keys.pop(key, None) is None:
            return
        if self.lan is not None:
            self.lan.withdraw(key)
        if self.tracker is not None:
            self._tasks.append(asyncio.ensure_future(self.tracker.announce_key(key, "stopped")))

    async def _advertise_loop(self) -> None:
        while True:
            for key, dht_at in list(self.extra_keys.items()):
                if self.tracker is not None:
                    await self.tracker.announce_key(key, None)
                now = asyncio.get_running_loop().time()
                if self.dht is not None and self._dht_ready.is_set() and now - dht_at >= DHT_ADVERTISE_INTERVAL and key in self.extra_keys:
                    with contextlib.suppress(Exception):
                        await self.dht.announce(key, self.listen_port)
                    self.extra_keys[key] = now
            self._wake_advertise.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake_advertise.wait(), ADVERTISE_INTERVAL)

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
        try:
            await self.dht.bootstrap()
        finally:
            self._dht_ready.set()
            self._wake_advertise.set()
        delay = FIRST_RETRY
        while True:
            took = 0
            with contextlib.suppress(Exception):
                took = await self.dht.announce(device_key(self.device_id), self.announce_port())
            self.last_announce_ok = took
            if took:
                self.last_announce = time.time()
                delay = FIRST_RETRY
            # nobody took it (a thin table): retry sooner, backing off; else the usual interval
            await asyncio.sleep(ANNOUNCE_INTERVAL if took else delay)
            delay = min(ANNOUNCE_INTERVAL, delay * 2)

    def external_ip(self, ip: str) -> None:
        """Our external address as observers see it (for BEP 42 node ids)."""
        if self.dht is not None:
            self.dht.set_external(ip)

    def reannounce(self) -> None:
        """Something changed that others should know (e.g. a port mapping appeared)."""
        if self.dht is not None:
            self._tasks.append(asyncio.ensure_future(self._announce_once()))

    async def _announce_once(self) -> None:
        assert self.dht is not None
        with contextlib.suppress(Exception):
            if await self.dht.announce(device_key(self.device_id), self.announce_port()):
                self.last_announce = time.time()

    async def _lookup_loop(self) -> None:
        await asyncio.sleep(FIRST_LOOKUP_DELAY)
        interval = FIRST_LOOKUP_INTERVAL
        while True:
            for device in list(self.wanted):
                if self.tracker is not None:
                    for ip, port in await self.tracker.lookup(device):
                        self._found(device, f"tcp://{ip}:{port}", "tracker")
                if self.dht is not None:
                    with contextlib.suppress(Exception):
                        found = await self.dht.get_peers(device_key(device))
                        self.last_lookup, self.last_lookup_found = time.time(), len(found)
                        for ip, port in found:
                            self._found(device, f"tcp://{ip}:{port}", "dht")
            self._wake.clear()
            # soon after start (or a new wanted device) devices may not have announced yet:
            # look again after 2, 4, 8 ... seconds, then every LOOKUP_INTERVAL
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake.wait(), interval)
            interval = FIRST_LOOKUP_INTERVAL if self._wake.is_set() else min(LOOKUP_INTERVAL, interval * 2)

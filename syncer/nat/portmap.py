"""Port mapping on the home router: UPnP IGD (async-upnp-client) first, NAT-PMP (natpmp.py) if
there is no IGD, for the TCP and UDP (QUIC) listen ports.

- Discovery: an SSDP search for an InternetGatewayDevice (SEARCH_TIMEOUT), else a NAT-PMP request
  to the default gateway. Neither found: retry later (RETRY, doubling to RETRY_MAX).
- Mapping: external port = internal port where the router allows, lease LEASE; renewed at half
  the lease; a failed renewal starts over with discovery. Mapped addresses (external IP and port)
  go to the daemon (announced to the DHT and to paired devices).
- Stop: the mappings are deleted (bounded by STOP_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from syncer.nat import natpmp
from syncer.net.localaddr import local_ip_towards

log = logging.getLogger(__name__)

LEASE = 3600
SEARCH_TIMEOUT = 3
RETRY = 60.0
RETRY_MAX = 3600.0
STOP_TIMEOUT = 3.0
DESCRIPTION = "syncer"
IGD_TYPES = ("urn:schemas-upnp-org:device:InternetGatewayDevice:1", "urn:schemas-upnp-org:device:InternetGatewayDevice:2")


@dataclass
class Mapping:
    method: str  # "upnp" | "natpmp"
    protocol: str  # "TCP" | "UDP"
    internal_ip: str
    internal_port: int
    external_ip: str
    external_port: int
    lease: int

    def as_dict(self, state: str = "active") -> dict[str, Any]:
        scheme = "tcp" if self.protocol == "TCP" else "quic"
        return {
            "method": self.method,
            "protocol": self.protocol,
            "internal": f"{self.internal_ip}:{self.internal_port}",
            "internal_port": self.internal_port,
            "external": f"{self.external_ip}:{self.external_port}",
            "external_port": self.external_port,
            "lease_s": self.lease,
            "state": state,
            "url": f"{scheme}://{self.external_ip}:{self.external_port}",
        }


class _Upnp:
    def __init__(self, location: str) -> None:
        self.location = location
        self.igd: Any = None
        self.requester: Any = None

    async def open(self) -> None:
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory
        from async_upnp_client.profiles.igd import IgdDevice

        self.requester = AiohttpRequester(timeout=5)
        device = await UpnpFactory(self.requester, non_strict=True).async_create_device(self.location)
        self.igd = IgdDevice(device, None)

    async def map(self, protocol: str, internal_ip: str, port: int) -> Mapping:
        external_ip = await self.igd.async_get_external_ip_address() or ""
        await self.igd.async_add_port_mapping(
            ipaddress.IPv4Address("0.0.0.0"), port, protocol, port, ipaddress.IPv4Address(internal_ip), True,
            DESCRIPTION, datetime.timedelta(seconds=LEASE),
        )
        return Mapping("upnp", protocol, internal_ip, port, external_ip, port, LEASE)

    async def unmap(self, m: Mapping) -> None:
        await self.igd.async_delete_port_mapping(ipaddress.IPv4Address("0.0.0.0"), m.external_port, m.protocol)


async def find_igd(timeout: int = SEARCH_TIMEOUT) -> str | None:
    """The description URL of the first Internet Gateway Device answering an SSDP search."""
    from async_upnp_client.search import async_search

    found: list[str] = []

    async def on_response(headers: Any) -> None:
        location = headers.get("location") or headers.get("LOCATION")
        if location and not found:
            found.append(location)

    for st in IGD_TYPES:
        with contextlib.suppress(OSError, TimeoutError):
            await async_search(on_response, timeout=timeout, search_target=st)
        if found:
            return found[0]
    return None


class PortMapper:
    def __init__(self, ports: list[tuple[str, int]], on_change: Callable[[list[dict[str, Any]]], None]) -> None:
        self.ports = ports  # [("TCP", 22000), ("UDP", 22000)]
        self.on_change = on_change
        self.mappings: list[Mapping] = []
        self.last_error = ""
        self._upnp: _Upnp | None = None
        self._pmp: natpmp.NatPmpClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    def _publish(self) -> None:
        self.on_change([m.as_dict() for m in self.mappings])

    async def _map_all(self) -> None:
        upnp_url = await find_igd()
        if upnp_url is not None:
            upnp = _Upnp(upnp_url)
            await upnp.open()
            gw = urlsplit(upnp_url).hostname or ""
            internal = local_ip_towards((gw, 1900))
            self.mappings = [await upnp.map(proto, internal, port) for proto, port in self.ports]
            self._upnp = upnp
            return
        gateway = natpmp.default_gateway()
        if gateway is None:
            raise natpmp.NatPmpError("no UPnP gateway answered and there is no default gateway")
        pmp = natpmp.NatPmpClient(gateway)
        external = await pmp.external_address()
        internal = local_ip_towards((gateway, natpmp.PORT))
        out = []
        for proto, port in self.ports:
            _, ext_port, lifetime = await pmp.map(proto, port, port, LEASE)
            out.append(Mapping("natpmp", proto, internal, port, external, ext_port, lifetime))
        self.mappings = out
        self._pmp = pmp

    async def _loop(self) -> None:
        delay = RETRY
        while True:
            try:
                await self._map_all()
                self.last_error = ""
                log.info("port mappings: %s", ", ".join(f"{m.protocol} {m.internal_port} -> {m.external_ip}:{m.external_port} ({m.method})" for m in self.mappings))
                self._publish()
                delay = RETRY
                await asyncio.sleep(max(30.0, min(m.lease for m in self.mappings) / 2))  # renew at half the lease
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a router answering nonsense must not end the loop
                self.last_error = f"{type(e).__name__}: {e}"
                log.info("port mapping unavailable: %s (retrying in %.0f s)", self.last_error, delay)
                if self.mappings:
                    self.mappings = []
                    self._publish()
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT):
                for m in self.mappings:
                    if m.method == "upnp" and self._upnp is not None:
                        await self._upnp.unmap(m)
                    elif m.method == "natpmp" and self._pmp is not None:
                        await self._pmp.map(m.protocol, m.internal_port, 0, 0)
        self.mappings = []

"""The daemon's view of its own reachability: STUN observations of its QUIC socket, the NAT kind
they imply, addresses paired devices observed, port mappings, global IPv6 addresses, and what it
therefore announces (`external_urls()`); `report()` is what `syncer doctor` shows.

STUN: at start and then every PROBE_INTERVAL, binding requests from the QUIC listen socket to each
`nat.stun_servers` entry and to the QUIC socket of each connected paired device (every daemon
answers STUN there); a round with no answer at all is retried with a backoff (30 s doubling to
PROBE_INTERVAL). Observations are kept per observer (bounded) and classified by natkind.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

from syncer.nat.natkind import DEPENDENT, INDEPENDENT, NO_NAT, Observation, classify, external
from syncer.net import stun
from syncer.net.localaddr import local_ip_towards
from syncer.net.udp import UdpEndpoint
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

PROBE_INTERVAL = 600.0
RETRY_FIRST = 30.0
MAX_OBSERVERS = 16
MAX_PEER_OBSERVED = 32


def global_ipv6_addresses() -> list[str]:
    """Global unicast IPv6 addresses of this host (2000::/3), from /proc (Linux)."""
    out = []
    with contextlib.suppress(OSError):
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw, _, _, scope, flags, _ = line.split()
                if scope != "00" or int(flags, 16) & 0x61:  # global scope; not temporary, deprecated, tentative
                    continue
                ip = ipaddress.IPv6Address(":".join(raw[i : i + 4] for i in range(0, 32, 4)))
                if ip in ipaddress.IPv6Network("2000::/3"):
                    out.append(str(ip))
    return out[:4]


class NatService:
    def __init__(self, setting: Any, clock: Any = time.monotonic) -> None:
        self.setting = setting  # key -> value (the daemon's config.get)
        self.clock = clock
        self.udp: UdpEndpoint | None = None
        self.tcp_port = 0
        self.quic_port = 0
        self.observations: dict[str, Observation] = {}
        self.peer_observed: dict[str, tuple[str, float]] = {}  # device short -> address it saw us at
        self.device_observers: dict[str, tuple[str, int]] = {}  # device short -> its QUIC socket
        self.mappings: list[dict[str, Any]] = []  # set by the port mapper
        self.last_probe = 0.0
        self.last_error = ""
        self.on_external: Any = lambda ip: None  # the external IP, once observers agree (BEP 42)
        self.on_mappings: Any = lambda: None  # port mappings changed: announce again
        self._mapper: Any = None
        self._responder: stun.StunResponder | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.setting("nat.enabled"))

    def start(self, udp: UdpEndpoint | None, tcp_port: int, quic_port: int, map_ports: bool = True) -> None:
        self.udp, self.tcp_port, self.quic_port = udp, tcp_port, quic_port
        if udp is not None and self.enabled:
            self._responder = stun.StunResponder(udp)  # paired devices use us as an observer
            self._task = asyncio.ensure_future(self._probe_loop())
        ports = [("TCP", tcp_port)] * bool(tcp_port) + [("UDP", quic_port)] * bool(quic_port)
        if self.enabled and self.setting("nat.port_mapping") and map_ports and ports:
            from syncer.nat.portmap import PortMapper

            self._mapper = PortMapper(ports, self._mapped)
            self._mapper.start()

    def _mapped(self, mappings: list[dict[str, Any]]) -> None:
        self.mappings = mappings
        self.on_mappings()

    async def stop(self) -> None:
        if self._mapper is not None:
            await self._mapper.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._responder is not None:
            self._responder.close()

    # --- what devices tell us --------------------------------------------------------------------
    def peer_saw(self, device_short: str, observed: str, quic: tuple[str, int] | None) -> None:
        self.peer_observed[device_short] = (observed, self.clock())
        while len(self.peer_observed) > MAX_PEER_OBSERVED:
            self.peer_observed.pop(next(iter(self.peer_observed)))
        if quic is not None and self.enabled:
            new = device_short not in self.device_observers
            self.device_observers[device_short] = quic
            if new:
                self._wake.set()

    def peer_left(self, device_short: str) -> None:
        self.device_observers.pop(device_short, None)

    # --- probing -------------------------------------------------------------------------------------
    async def _targets(self) -> list[tuple[str, tuple[str, int]]]:
        out: list[tuple[str, tuple[str, int]]] = []
        if self.setting("nat.stun"):
            for hp in self.setting("nat.stun_servers"):
                host, _, port = hp.rpartition(":")
                with contextlib.suppress(stun.StunError, ValueError):
                    out.append((f"stun:{hp}", await stun.resolve(host.strip("[]"), int(port))))
        out += [(f"device:{d}", a) for d, a in self.device_observers.items()]
        return out[:MAX_OBSERVERS]

    async def probe(self) -> int:
        """One round of binding requests; returns how many observers answered."""
        assert self.udp is not None
        targets = await self._targets()
        udp = self.udp  # the endpoint as it is now, for the probes below
        assert udp is not None

        async def one(name: str, addr: tuple[str, int]) -> None:
            try:
                mapped = await stun.binding(udp, addr)
            except stun.StunError as e:
                self.last_error = str(e)
                return
            local = (local_ip_towards(addr), udp.local_address[1])
            self.observations[name] = Observation(name, addr, local, mapped, self.clock())

        await asyncio.gather(*(one(n, a) for n, a in targets))
        self.last_probe = self.clock()
        seen = external(list(self.observations.values()))
        if seen:
            self.on_external(seen[0][0])
        while len(self.observations) > MAX_OBSERVERS:
            self.observations.pop(next(iter(self.observations)))
        return sum(1 for o in self.observations.values() if o.at >= self.last_probe - 60)

    async def _probe_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            answered = await self.probe()
            if answered:
                delay, wait = RETRY_FIRST, PROBE_INTERVAL
            else:
                wait, delay = delay, min(PROBE_INTERVAL, delay * 2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake.wait(), wait)

    def announce_port(self) -> int:
        """The TCP port others should dial: a mapping's external port, else the listen port."""
        for mp in self.mappings:
            if mp.get("protocol") == "TCP" and mp.get("internal_port") == self.tcp_port and mp.get("external_port"):
                return int(mp["external_port"])
        return self.tcp_port

    # --- results ---------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return classify(list(self.observations.values()))

    def external_urls(self) -> list[str]:
        """Addresses we believe reach us, to announce: mapped ports, the QUIC mapping when the NAT
        maps independently of the destination (or there is none), global IPv6 addresses."""
        out = [m["url"] for m in self.mappings if m.get("url")]
        kind = self.kind
        if kind in (INDEPENDENT, NO_NAT) and self.quic_port:
            for host, port in external(list(self.observations.values()))[:1]:
                out.append(f"quic://{host if ':' not in host else f'[{host}]'}:{port}")
        for ip in global_ipv6_addresses():
            if self.tcp_port:
                out.append(f"tcp://[{ip}]:{self.tcp_port}")
        return list(dict.fromkeys(out))

    def report(self) -> dict[str, Any]:
        obs = sorted(self.observations.values(), key=lambda o: o.observer)
        kind = self.kind
        return {
            "enabled": self.enabled,
            "nat_type": kind,
            "punching": {INDEPENDENT: "possible", NO_NAT: "not needed", DEPENDENT: "fails: needs a relay"}.get(kind, "unknown"),
            "external_addresses": [
                {"address": f"{o.mapped[0]}:{o.mapped[1]}", "observer": o.observer, "observer_address": f"{o.observer_addr[0]}:{o.observer_addr[1]}", "local": f"{o.local[0]}:{o.local[1]}"}
                for o in obs
            ],
            "observed_by_devices": [{"device": d, "address": a} for d, (a, _) in self.peer_observed.items()],
            "port_mappings": list(self.mappings),
            "port_mapping_error": self._mapper.last_error if self._mapper is not None else "",
            "announced": self.external_urls(),
            "last_stun_error": self.last_error,
        }

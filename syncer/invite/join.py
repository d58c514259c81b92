"""The joiner's side: find the inviting device, connect, run the exchange (I/O driver).

Candidates come from, in order of trust: the link (the inviter's device ID and addresses: a
stream from any other device is dropped before the PAKE), LAN keyed beacons, trackers and the
DHT, all under the code's locator key (code.py). A device known by ID is also tried through
relays (the link's relay:// addresses, then ours). Candidates are tried one at a time, as they
arrive, each address once. A device that has no invite with our number is skipped; a wrong-code
answer or a failed confirmation counts, and after MAX_PAKE_FAILURES the join stops (each one is a
guess someone could have made). Any other refusal (expired, used, revoked) is final.

`Finder` uses the daemon's discovery parts when a daemon runs the join, else it starts its own
for the duration: a LAN socket that only listens and queries, a DHT node that bootstraps and
looks up, tracker lookups. Nothing is announced about this device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from syncer.config import Config
from syncer.deviceid import DeviceId
from syncer.discovery.dht.node import DhtNode
from syncer.discovery.lan import LanDiscovery
from syncer.discovery.service import DiscoveryService, _hostport
from syncer.discovery.tracker_client import TrackerClient
from syncer.errors import SyncerError
from syncer.identity import Identity
from syncer.invite import exchange as ex
from syncer.invite.code import InviteCode, JoinLink
from syncer.nat.attempts import execute
from syncer.nat.policy import Attempt, plan
from syncer.net.transport import Address, Stream
from syncer.relay.client import RelayTransport
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 60.0
EXCHANGE_TIMEOUT = 20.0
MAX_PAKE_FAILURES = 3
WRONG_CODE_GRACE = 3.0  # after a wrong-code answer, how long other candidates may still answer
LOOKUP_EVERY = 3.0
LAN_QUERY_EVERY = 1.0
MAX_CANDIDATES = 64


class JoinError(SyncerError):
    pass


@dataclass(frozen=True)
class JoinResult:
    device: str
    name: str
    address: str
    addresses: list[str]
    folder_id: str
    label: str
    read_only: bool
    source: str

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass(frozen=True)
class Candidate:
    attempt: Attempt
    device: DeviceId | None  # known from the link, a LAN beacon or a tracker; None from the DHT
    source: str


OnCandidate = Callable[[str, DeviceId | None, str], None]


@dataclass
class Finder:
    """Looks the locator key up on every enabled discovery part, reporting addresses."""

    config: Config
    device_id: DeviceId
    discovery: DiscoveryService | None = None  # the daemon's, when it runs the join
    port: int = 22000  # ours, as trackers want one
    _own: list[LanDiscovery | DhtNode] = field(default_factory=list)  # parts started for this join
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _lan: LanDiscovery | None = None

    async def start(self, key: bytes, found: OnCandidate) -> None:
        cfg, disc = self.config, self.discovery
        lan = disc.lan if disc is not None else None
        dht = disc.dht if disc is not None else None
        tracker = disc.tracker if disc is not None else None
        if disc is None and cfg.get("discovery.lan.enabled"):
            lan = LanDiscovery(self.device_id, 0, cfg.get("discovery.lan.port"), cfg.get("discovery.lan.address"), lambda *a: None, beacons=False)
            try:
                await lan.start()
                self._own.append(lan)
            except OSError as e:
                log.info("LAN lookup unavailable: %s", e)
                lan = None
        if disc is None and cfg.get("discovery.dht.enabled"):
            dht = DhtNode("0.0.0.0", 0, bootstrap=[_hostport(b) for b in cfg.get("discovery.dht.bootstrap")])
            try:
                await dht.start()
                self._own.append(dht)
            except OSError as e:
                log.info("DHT lookup unavailable: %s", e)
                dht = None
        if disc is None and cfg.get("discovery.tracker.enabled") and cfg.get("discovery.tracker.urls"):
            tracker = TrackerClient(cfg.get("discovery.tracker.urls"), self.device_id, self.port)
        if lan is not None:
            lan.watch(key, lambda d, a, s: found(a, d, s))
            self._tasks.append(asyncio.ensure_future(self._lan_queries(lan, key)))
            self._lan = lan
        if dht is not None:
            self._tasks.append(asyncio.ensure_future(self._dht_lookups(dht, key, found, bootstrap=disc is None)))
        if tracker is not None:
            self._tasks.append(asyncio.ensure_future(self._tracker_lookups(tracker, key, found)))

    async def stop(self, key: bytes) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lan is not None:
            self._lan.unwatch(key)
        for part in self._own:
            with contextlib.suppress(Exception):
                await part.stop()

    async def _lan_queries(self, lan: LanDiscovery, key: bytes) -> None:
        while True:
            lan.query(key)
            await asyncio.sleep(LAN_QUERY_EVERY)

    async def _dht_lookups(self, dht: DhtNode, key: bytes, found: OnCandidate, bootstrap: bool) -> None:
        if bootstrap:
            with contextlib.suppress(Exception):
                await dht.bootstrap()
        while True:
            with contextlib.suppress(Exception):
                for ip, port in await dht.get_peers(key):
                    found(f"tcp://{ip}:{port}", None, "dht")
            await asyncio.sleep(LOOKUP_EVERY)

    async def _tracker_lookups(self, tracker: TrackerClient, key: bytes, found: OnCandidate) -> None:
        while True:
            for ip, port, device in await tracker.lookup_key(key):
                dev = None
                with contextlib.suppress(SyncerError):
                    dev = DeviceId.parse(device) if device else None
                found(str(Address("tcp", ip, port)), dev, "tracker")
            await asyncio.sleep(LOOKUP_EVERY)


class Joiner:
    def __init__(
        self,
        identity: Identity,
        config: Config,
        code: InviteCode,
        link: JoinLink | None,
        name: str,
        addresses: list[str],
        finder: Finder,
        relays: dict[str, RelayTransport] | None = None,
    ) -> None:
        self.identity, self.config, self.code, self.link = identity, config, code, link
        self.name, self.addresses, self.finder = name, addresses, finder
        self.relays = relays or {}
        self._queue: asyncio.Queue[Candidate] = asyncio.Queue()
        self._seen: set[tuple[str, str, str]] = set()  # (kind, url, device) tried or queued
        self._devices: set[DeviceId] = set()
        self.tried: list[str] = []
        self.pake_failures = 0
        self.last_refusal = ""
        self._refused_by: set[DeviceId] = set()  # said "wrong code": never asked again
        self._deadline: asyncio.Timeout | None = None

    def _offer(self, address: str, device: DeviceId | None, source: str) -> None:
        if device == self.identity.device_id or len(self._seen) >= MAX_CANDIDATES:
            return
        if self.link is not None and device is not None and device != self.link.device:
            return  # the link names the inviter: others under the same key are not it
        attempts = plan([address], [], nat_enabled=False)
        if device is not None and device not in self._devices:
            # a device we know by ID can also be reached through relays
            self._devices.add(device)
            link_relays = [a for a in (self.link.addresses if self.link else ()) if a.startswith("relay://")]
            attempts += plan(link_relays, list(self.relays) + self.config.get("relays"), nat_enabled=False)
        for a in attempts:
            seen = (a.kind, a.url, str(device))
            if seen not in self._seen:
                self._seen.add(seen)
                self._queue.put_nowait(Candidate(a, device, source))

    async def run(self, timeout: float = JOIN_TIMEOUT) -> JoinResult:
        key = self.code.locator_key()
        if self.link is not None:
            for a in self.link.addresses:
                self._offer(a, self.link.device, "link")
        await self.finder.start(key, self._offer)
        try:
            async with asyncio.timeout(timeout) as self._deadline:
                while True:
                    cand = await self._queue.get()
                    result = await self._try(cand)
                    if result is not None:
                        return result
        except TimeoutError:
            raise JoinError(self._not_found(timeout)) from None
        finally:
            await self.finder.stop(key)

    def _not_found(self, timeout: float) -> str:
        if self.last_refusal:
            return self.last_refusal
        where = f"tried {', '.join(self.tried[:6])}" if self.tried else "no address found"
        how = "the link's addresses" if self.link else "LAN, DHT and trackers (as enabled in `syncer config list`)"
        return (
            f"could not reach the inviting device within {timeout:.0f}s via {how} ({where}); "
            "check that its daemon runs (`syncer status` there), or use the invite link, which carries its addresses"
        )

    async def _try(self, cand: Candidate) -> JoinResult | None:
        a = cand.attempt
        self.tried.append(a.url)
        try:
            stream = await execute(a, self.identity, cand.device or self.identity.device_id, self.relays)
        except (SyncerError, OSError) as e:
            log.info("join: %s via %s %s: %s", cand.source, a.kind, a.url, e)
            return None
        try:
            if cand.device is not None and stream.peer != cand.device:
                log.info("join: %s is %s, not the device announced there", a.url, stream.peer.short)
                return None
            if stream.peer == self.identity.device_id or stream.peer in self._refused_by:
                return None
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                return await self._exchange(stream, cand)
        except (TimeoutError, ConnectionError, OSError) as e:
            log.info("join: exchange with %s at %s: %s", stream.peer.short, a.url, e or type(e).__name__)
            return None
        finally:
            with contextlib.suppress(Exception):
                await wait_for(stream.close(), 2)

    async def _exchange(self, stream: Stream, cand: Candidate) -> JoinResult | None:
        x = ex.JoinerExchange(self.code, self.identity.device_id.raw, stream.peer.raw, self.name, self.addresses)
        await stream.write(x.start())
        while not x.finished:
            data = await stream.read(ex.MAX_FRAME)
            if not data:
                log.info("join: %s closed the connection", stream.peer.short)
                if x.state is ex.State.AWAIT_CHALLENGE:
                    self._closed_at_once(cand)
                return None
            for event in x.receive(data):
                if isinstance(event, ex.Welcomed):
                    addresses = [cand.attempt.url] if cand.attempt.kind in ("tcp", "quic") else []
                    if self.link is not None:
                        addresses += [x for x in self.link.addresses if x not in addresses]
                    return JoinResult(
                        str(stream.peer), event.name, cand.attempt.url, addresses,
                        event.folder_id, event.label, event.read_only, cand.source,
                    )
                if isinstance(event, ex.WasRefused):
                    self._refused(stream, event)
                elif isinstance(event, ex.Failed):
                    self._wrong(stream.peer, f"the invite exchange with {stream.peer.short} failed: {event.reason}")
            out = x.data_to_send()
            if out:
                await stream.write(out)
        return None

    def _closed_at_once(self, cand: Candidate) -> None:
        """The device hung up on our Join: its pairing gate treats us as a stranger, which it
        does when it has no active invite at all."""
        why = (
            "the inviting device closed the connection without answering: it has no active invite "
            "now (used, expired, revoked or closed after 3 wrong codes: see `syncer invites` there); "
            "ask for a new invite"
        )
        self.last_refusal = self.last_refusal or why
        if self.link is not None and cand.device == self.link.device:
            raise JoinError(why)

    def _refused(self, stream: Stream, event: ex.WasRefused) -> None:
        if event.code == ex.UNKNOWN and self.link is None:
            # another device under the same locator, or a wrong number
            log.info("join: %s has no invite %d", stream.peer.short, self.code.nameplate)
            self.last_refusal = self.last_refusal or f"the device found has no invite {self.code.nameplate}: check the number"
            return
        if event.code == ex.WRONG_CODE:
            self._wrong(
                stream.peer,
                "the inviting device refused the code: check the words and try again (after 3 wrong "
                "codes the invite is closed); if they are right, someone in the middle tampered with "
                "the connection, and nothing was shared",
            )
            return
        raise JoinError(f"the inviting device refused: {event.reason}")

    def _wrong(self, device: DeviceId, why: str) -> None:
        """A failed PAKE: most likely a typo, else a stranger under the same locator or a man
        in the middle. That device is not asked again; others get a short grace period."""
        self.pake_failures += 1
        self._refused_by.add(device)
        self.last_refusal = why
        if self.link is not None or self.pake_failures >= MAX_PAKE_FAILURES:
            raise JoinError(why)
        if self._deadline is not None:
            loop = asyncio.get_running_loop()
            when = self._deadline.when()
            self._deadline.reschedule(min(when if when is not None else float("inf"), loop.time() + WRONG_CODE_GRACE))

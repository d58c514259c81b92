"""The daemon: assembles config, identity, transports, the connection gate, the dialer and the
control API in one asyncio loop, and runs until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from syncer import __version__
from syncer import events as ev
from syncer.api.control import DaemonControl
from syncer.api.server import ApiServer, check_listen, load_or_create_token
from syncer.bt.service import BtService
from syncer.config import Config, load_config
from syncer.deviceid import DeviceId
from syncer.discovery.service import DiscoveryService
from syncer.errors import DaemonError, SyncerError
from syncer.events import EventLog
from syncer.identity import load_or_create
from syncer.index.db import recover_if_damaged
from syncer.invite.addresses import dialable
from syncer.invite.service import InviteService
from syncer.memtune import tune_malloc
from syncer.model.sync import SyncModel
from syncer.nat.assist import PeerAssist
from syncer.nat.attempts import execute
from syncer.nat.history import DialHistory
from syncer.nat.policy import Attempt, Route, UpgradePolicy, plan
from syncer.nat.rendezvous import PunchResponder
from syncer.nat.service import NatService
from syncer.net.backoff import Backoff
from syncer.net.fdlimit import raise_open_files_limit
from syncer.net.quic import QuicListener, QuicTransport
from syncer.net.tcp import TcpTransport
from syncer.net.transport import Address, Listener, Stream, TransportError
from syncer.paths import Paths
from syncer.peer.connections import ConnInfo, DialTurns, preferred
from syncer.peer.session import PeerSession, SessionClosed
from syncer.pending import PendingStore
from syncer.relay.client import RelayTransport
from syncer.runtime import eventloop
from syncer.runtime.tasks import TaskSet
from syncer.runtime.timeouts import wait_for

log = logging.getLogger("syncer.daemon")

DIAL_TICK = 0.5
MAX_DISCOVERED = 32  # addresses remembered per device (from discovery and the device itself)
HELLO_TIMEOUT = 10.0
GIL_SWITCH_INTERVAL = 0.02  # seconds; see run_daemon


@contextlib.contextmanager
def pid_lock(paths: Paths) -> Iterator[None]:
    """Hold an exclusive lock on the pid file for the daemon's lifetime: a second daemon on the
    same SYNCER_HOME is refused even if a stale pid file was left behind by a crash."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    f = open(paths.pid_file.with_suffix(".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        try:
            other = paths.pid_file.read_text().strip()
        except FileNotFoundError:
            other = "?"
        raise DaemonError(f"another syncer daemon is already running for {paths.state_dir} (pid {other})") from None
    try:
        paths.pid_file.write_text(f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file.unlink()
        f.close()


class Daemon:
    def __init__(self, paths: Paths, listen: list[str] | None = None, api: str | None = None) -> None:
        self.paths = paths
        self.identity = load_or_create(paths.cert_file, paths.key_file)
        self.device_id = self.identity.device_id
        self.config: Config = load_config(paths.config_file)
        self._listen_override = listen
        self._api_override = api
        self.transports: dict[str, TcpTransport | QuicTransport] = {"tcp": TcpTransport(self.identity), "quic": QuicTransport(self.identity)}
        self.relays: dict[str, RelayTransport] = {}
        self.responders: list[PunchResponder] = []
        self.upgrades: dict[DeviceId, UpgradePolicy] = {}
        self.listeners: list[Listener] = []
        self.pending_store = PendingStore(paths.state_dir / "pending.json")
        self.sessions: dict[DeviceId, PeerSession] = {}
        self.backoff: dict[DeviceId, Backoff] = {}
        self.dialing: set[DeviceId] = set()
        self.turns = DialTurns(self.device_id)
        self.discovered: dict[DeviceId, dict[str, str]] = {}  # device -> address -> source
        self.started = time.time()
        self._stop = asyncio.Event()
        self._wake_dialer = asyncio.Event()
        self._tasks = TaskSet(lambda exc: log.error("internal task failed", exc_info=exc))
        self.api: ApiServer | None = None
        self.model: SyncModel | None = None
        self.discovery: DiscoveryService | None = None
        self.events = EventLog()
        self.control = DaemonControl(self, self.events)
        self.last_seen: dict[str, float] = {}  # device id -> wall time its last connection ended
        self.bt: BtService | None = None
        self.notices: list[str] = []  # things the user must know about this run (status)
        # reachability (STUN, port mapping, what devices observe) and help from paired devices
        self.nat = NatService(lambda key: self.config.get(key))
        self.assist = PeerAssist(
            self.identity,
            self.sessions,
            paired=lambda d: self.config.device(d) is not None,
            setting=lambda key: self.config.get(key),
            on_stream=lambda s, route: self._handle_stream(s, None, route),
            names=self._name_of,
        )
        self.history = DialHistory()
        self.invites = InviteService(self)

    # lifecycle -------------------------------------------------------------
    @property
    def listen_urls(self) -> list[str]:
        return self._listen_override or self.config.get("listen")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            log.info("syncer %s running as %s", __version__, self.device_id)
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        api_host, _, api_port = (self._api_override or self.config.get("api.address")).rpartition(":")
        check_listen(api_host, self.config.get("api.password"))
        self.events.emit(ev.STARTING, device_id=str(self.device_id))
        await self._check_index()  # before the model and anything else opens the index
        # the model first: from the moment a listener accepts, every session has its handler
        # (folders finish starting, scans included, in the background)
        self.model = SyncModel(self.config, self.device_id, self.paths.index_db, self.pending_store, events=self.events)
        self.control.start()
        self.model.assist = self.assist
        await self.model.start()
        for url in self.listen_urls:
            scheme = url.partition("://")[0]
            transport = self.transports.get(scheme)
            if transport is None:
                log.warning("no %s transport in this build; not listening on %s", scheme, url)
                continue
            listener = await transport.listen(url, self._on_inbound)
            self.listeners.append(listener)
            log.info("listening on %s", listener.url)
        token = load_or_create_token(self.paths.api_token_file)
        self.api = ApiServer(self.control, token)
        address = await self.api.start(api_host, int(api_port), self.config.get("api.password"))
        tmp = self.paths.api_address_file.with_suffix(".tmp")
        tmp.write_text(address)
        os.replace(tmp, self.paths.api_address_file)
        log.info("control API on %s", address)
        for url in self.config.get("relays"):
            self._tasks.spawn(self._use_relay(url))
        self._start_nat()
        await self._start_discovery()
        if self.config.get("bt.enabled"):
            self.bt = BtService(self.paths.state_dir, self.config.get("bt.listen"), lambda: self.discovery.dht if self.discovery else None)
            try:
                await self.bt.start()
            except (OSError, SyncerError) as e:
                log.warning("BitTorrent unavailable: %s", e)
                self.bt = None
        self._tasks.spawn(self._dial_loop())
        self._tasks.spawn(self.invites.run())

    def _start_nat(self) -> None:
        quic = next((lst for lst in self.listeners if isinstance(lst, QuicListener)), None)
        self.assist.quic = quic.endpoint if quic is not None else None
        self.assist.listen = [lst.url for lst in self.listeners]
        self.assist.external = self.nat.external_urls
        self.assist.on_addresses = self._peer_addresses
        quic_port = Address.parse(quic.url).port if quic is not None else 0
        self.nat.on_external = lambda ip: self.discovery.external_ip(ip) if self.discovery is not None else None
        self.nat.on_mappings = lambda: self.discovery.reannounce() if self.discovery is not None else None
        public = any(not Address.parse(lst.url).host.startswith(("127.", "::1", "localhost")) for lst in self.listeners)
        self.nat.start(quic.endpoint.udp if quic is not None else None, self._listen_port(), quic_port, map_ports=public)

    def _peer_addresses(self, device: DeviceId, info: Any) -> None:
        """A connected device told us what it sees and what reaches it (nat/assist.py)."""
        self.nat.peer_saw(device.short, info.observed, self.assist.quic_addr(device))
        for url in info.external:  # mapped ports, global IPv6: for the next time we dial it
            if url.startswith(("tcp://", "quic://")):
                self._discovered_address(device, url, "announced")

    def _name_of(self, device: DeviceId) -> str:
        dev = self.config.device(device)
        s = self.sessions.get(device)
        return (dev.name if dev else "") or (s.remote_name if s else "") or device.short

    async def _check_index(self) -> None:
        """A damaged index.db is moved aside and rebuilt by rescanning: the files on disk are
        the truth, and peers send their indexes again (their index of ours has a new ID)."""
        recovered = await asyncio.to_thread(recover_if_damaged, self.paths.index_db, time.time())
        if recovered is None:
            return
        moved, reason = recovered
        notice = (
            f"index database was damaged ({reason}); moved aside to {moved.name}, "
            "started a fresh index: every folder is rescanned and re-synced with its peers"
        )
        log.error("%s", notice)
        self.notices.append(notice)

    def _listen_port(self) -> int:
        for listener in self.listeners:
            if listener.url.startswith("tcp://"):
                return Address.parse(listener.url).port
        return 0

    async def _start_discovery(self) -> None:
        port = self._listen_port()
        if not port:
            return
        self.discovery = DiscoveryService(
            self.config, self.device_id, port, self._discovered_address, self.paths.state_dir, self.nat.announce_port
        )
        try:
            await self.discovery.start()
        except (OSError, SyncerError) as e:
            log.warning("discovery unavailable: %s", e)
            self.discovery = None
        self.invites.discovery_restarted()

    def _discovered_address(self, device: DeviceId, address: str, source: str) -> None:
        if self.config.device(device) is None:
            return
        known = self.discovered.setdefault(device, {})
        if source == "announced" and address in known:
            return  # found by discovery first: keep saying how
        if known.get(address) != source:
            known[address] = source
            while len(known) > MAX_DISCOVERED:  # a flood of fake announcements stays bounded
                known.pop(next(iter(known)))
            log.info("found %s at %s via %s", device.short, address, source)
            if device not in self.sessions:
                self.backoff.setdefault(device, Backoff()).reset()
                self._wake_dialer.set()
            elif source != "announced":
                self.upgrades.setdefault(device, UpgradePolicy()).retry_now(time.monotonic())  # maybe better

    async def _use_relay(self, url: str) -> None:
        """Stay registered at a relay (so peers reach us through it) and answer punches
        coordinated by its rendezvous; retries with backoff while the relay is unreachable."""
        backoff = Backoff()
        while True:
            relay = RelayTransport(self.identity, url, accept=self._relay_accepts)
            try:
                await relay.register(lambda s: self._handle_stream(s, None, "relayed"))
            except (TransportError, OSError) as e:
                log.info("relay %s: %s", url, e)
                backoff.failed(time.monotonic())
                await asyncio.sleep(max(0.5, backoff.next_at - time.monotonic()))
                continue
            self.relays[url] = relay
            log.info("registered at relay %s", url)
            if self.config.get("nat.enabled"):
                responder = PunchResponder(
                    self.identity, url, lambda s: self._handle_stream(s, None, "punched"), relay=relay
                )
                try:
                    await responder.start()
                    self.responders.append(responder)
                except (TransportError, OSError) as e:
                    log.warning("relay %s: hole punching unavailable: %s", url, e)
            self._wake_dialer.set()
            return

    def _relay_accepts(self, device: DeviceId) -> bool:
        """Relay invitations are answered for paired devices, and while an invite is active
        for anyone (the pairing gate then admits only the invite exchange)."""
        return self.config.device(device) is not None or self.invites.accepting()

    async def _shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.paths.api_address_file.unlink()
        if self.bt is not None:
            await self.bt.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.nat.stop()
        await self.assist.close()
        for responder in self.responders:
            with contextlib.suppress(Exception):
                await responder.close()
        for relay in self.relays.values():
            with contextlib.suppress(Exception):
                await relay.close()
        self._tasks.cancel()
        # all at once: each close may wait seconds for its peer (flush, TLS close_notify)
        await asyncio.gather(*(s.close("daemon shutting down") for s in list(self.sessions.values())), return_exceptions=True)
        for listener in self.listeners:
            await listener.close()
        if self.model:
            await self.model.stop()
        if self.api:
            await self.api.stop()
        await self.control.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pending_store.flush()
        log.info("stopped")

    # connections -------------------------------------------------------------
    async def _on_inbound(self, stream: Stream) -> None:
        await self._handle_stream(stream, expected=None, route=self.assist.route_of(stream))

    async def _handle_stream(self, stream: Stream, expected: DeviceId | None, route: str = "direct") -> None:
        peer = stream.peer
        if expected is not None and peer != expected:
            log.warning("dialed %s at %s but reached %s; closing", expected.short, stream.remote_address, peer.short)
            stream.abort()
            return
        dev = self.config.device(peer)
        if expected is None and self.invites.accepting():
            # while an invite is active, an inbound device may speak the invite exchange
            # (the only thing an unpaired one may do); else it goes on as before
            screened = await self.invites.handle(stream, paired=dev is not None)
            if screened is None:
                return  # it did: that connection is over; paired now, it connects anew
            stream = screened
        if dev is None:
            log.info("connection from unpaired device %s at %s refused", peer, stream.remote_address)
            self.pending_store.add_device(str(peer), stream.remote_address, "", time.time())
            stream.abort()
            return
        if dev.paused:
            log.info("connection from paused device %s refused", peer.short)
            stream.abort()
            return
        stream.peer_accepted()  # a paired device: out of the transport's pre-auth budget
        recv_limit = self.model.recv_bucket if self.model is not None else None
        session = PeerSession(stream, self.device_id, self.config.device_name, outbound=expected is not None, recv_limit=recv_limit)
        try:
            await wait_for(session.handshake(), HELLO_TIMEOUT)
        except (TimeoutError, SessionClosed, ConnectionError, OSError) as e:
            log.info("hello with %s failed: %s", peer.short, e or type(e).__name__)
            stream.abort()
            self._dial_refused(expected)
            return
        mono, wall = time.monotonic(), time.time()
        info = ConnInfo(peer, stream.transport, stream.remote_address, self.device_id if expected else peer, mono, wall, route)
        session.info = info
        # decide and register with no await in between: two handshakes finishing together must
        # not both replace the same session (the loser would run on, orphaned, and its peer keep
        # a connection we no longer use: a sync that never starts)
        existing = self.sessions.get(peer)
        if existing is not None and existing.info is not None and preferred(existing.info, info) is existing.info:
            await session.close("duplicate connection")
            self._dial_refused(expected)
            return
        self.sessions[peer] = session
        self.turns.connected(peer)
        if existing is not None:
            # in the background: its close waits up to seconds for the peer (flush, TLS
            # close_notify), and the peer may already be sending on this one (crossed dials:
            # it kept this connection and dropped the other), which nobody would read meanwhile
            self._tasks.spawn(existing.close("replaced by a better connection"))
        self.backoff.setdefault(peer, Backoff()).succeeded()
        self.upgrades.setdefault(peer, UpgradePolicy()).connected(Route[route.upper()], time.monotonic())
        log.info("connected to %s (%s) via %s %s", peer.short, session.remote_name, info.label, stream.remote_address)
        self.events.emit(ev.DEVICE_CONNECTED, device=str(peer), name=session.remote_name, transport=info.label, route=route, address=stream.remote_address)
        if self.model is not None:
            session.handler = self.model
            self.model.on_connected(session)
        self.assist.connected(session)
        try:
            await session.run()
        finally:
            if self.model is not None:
                self.model.on_disconnected(session)
            if self.sessions.get(peer) is session:
                del self.sessions[peer]
                self.assist.disconnected(peer)
                self.nat.peer_left(peer.short)
                self.upgrades.setdefault(peer, UpgradePolicy()).disconnected()
                log.info("disconnected from %s: %s", peer.short, session.close_reason)
                self.last_seen[str(peer)] = time.time()
                self.events.emit(ev.DEVICE_DISCONNECTED, device=str(peer), reason=session.close_reason)
                self._wake_dialer.set()

    def _dial_refused(self, expected: DeviceId | None) -> None:
        """Our dial reached the device but gave no session (hello failed, or the device kept
        another connection): back off as after a failed dial, so two sides that disagree
        never redial each other every tick."""
        if expected is not None and expected not in self.sessions:
            self.backoff.setdefault(expected, Backoff()).failed(time.monotonic())

    # dialer ------------------------------------------------------------------
    def addresses_of(self, device: DeviceId) -> list[tuple[str, str]]:
        """(address, source) candidates in dialing order: direct before relayed."""
        dev = self.config.device(device)
        out = [(a, "static") for a in (dev.addresses if dev else [])]
        out += [(a, s) for a, s in self.discovered.get(device, {}).items() if a not in dict(out)]
        return out

    def plan_for(self, device: DeviceId) -> list[Attempt]:
        return plan(
            [a for a, _ in self.addresses_of(device)],
            list(self.relays),
            nat_enabled=bool(self.config.get("nat.enabled")),
            helpers=[str(h) for h in self.assist.helpers(device)],
            relay_via_devices=bool(self.config.get("nat.relay_via_devices")),
        )

    async def _dial_loop(self) -> None:
        while True:
            now = time.monotonic()
            if self.discovery is not None:
                self.discovery.set_wanted([d.device_id for d in self.config.devices if d.device_id not in self.sessions])
            for dev in self.config.devices:
                device = dev.device_id
                if device in self.dialing or dev.paused:
                    continue
                if device in self.sessions:
                    # connected over a punched or relayed route: now and then try better ones
                    up = self.upgrades.setdefault(device, UpgradePolicy())
                    if not up.due(now):
                        continue
                    attempts = up.candidates(self.plan_for(device))
                    if not attempts:
                        up.round_failed(now)
                        continue
                else:
                    backoff = self.backoff.setdefault(device, Backoff())
                    if not backoff.due(now) or not self.turns.may_dial(device, now):
                        continue
                    attempts = self.plan_for(device)
                    if not attempts:
                        continue
                self.dialing.add(device)
                self._tasks.spawn(self._dial(device, attempts))
            self._wake_dialer.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._wake_dialer.wait(), DIAL_TICK)

    async def _dial(self, device: DeviceId, attempts: list[Attempt]) -> None:
        upgrading = device in self.sessions
        try:
            for attempt in attempts:
                try:
                    stream = await execute(attempt, self.identity, device, self.relays, self.assist)
                except (SyncerError, OSError) as e:
                    log.debug("dial %s via %s %s: %s", device.short, attempt.kind, attempt.url, e)
                    self.history.record(device, attempt.kind, attempt.url, attempt.route.name.lower(), str(e) or type(e).__name__, time.time())
                    continue
                self.history.record(device, attempt.kind, attempt.url, attempt.route.name.lower(), None, time.time())
                self.dialing.discard(device)
                await self._handle_stream(stream, expected=device, route=attempt.route.name.lower())
                return
            if upgrading:
                self.upgrades.setdefault(device, UpgradePolicy()).round_failed(time.monotonic())
            else:
                self.backoff.setdefault(device, Backoff()).failed(time.monotonic())
        finally:
            self.dialing.discard(device)

    # control API -----------------------------------------------------------
    def _device_row(self, dev_id: str, name: str) -> dict[str, Any]:
        device = DeviceId.parse(dev_id)
        s = self.sessions.get(device)
        info = s.info if s else None
        return {
            "device_id": dev_id,
            "name": name or (s.remote_name if s else ""),
            "connected": info is not None,
            "transport": info.label if info else None,
            "route": info.route if info else None,
            "address": info.address if info else None,
            "since": info.since if info else None,
            "addresses": [{"address": a, "source": src} for a, src in self.addresses_of(device)],
            "wire_bytes_in": s.conn.bytes_in if s else 0,
            "wire_bytes_out": s.conn.bytes_out if s else 0,
            "down_rate": s.down_rate() if s else 0.0,
            "up_rate": s.up_rate() if s else 0.0,
            "folders": self._transfer_stats(device),
            "attempts": self.history.of(device),
            "why_not_direct": self.history.why_not_direct(
                device, info.route if info else None, any(a.startswith(("tcp://", "quic://")) for a, _ in self.addresses_of(device))
            ),
        }

    def _transfer_stats(self, device: DeviceId) -> dict[str, dict[str, int]]:
        if self.model is None:
            return {}
        return {fid: dict(vars(f.stats[device])) for fid, f in self.model.folders.items() if device in f.stats}

    def devices(self) -> list[dict[str, Any]]:
        return [self._device_row(d.id, d.name) for d in self.config.devices]

    def pending(self) -> dict[str, Any]:
        return self.pending_store.to_json()

    def folders(self) -> list[dict[str, Any]]:
        if self.model is None:
            return []
        return self.model.folder_status()

    def status(self, lists: bool = True) -> dict[str, Any]:
        """Everything `syncer status` shows; without `lists`, not the folders and devices
        (the control API adds its own richer rows of those)."""
        return {
            "device_id": str(self.device_id),
            "name": self.config.device_name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": time.time() - self.started,
            "listen": [listener.url for listener in self.listeners],
            "api": self.api.address if self.api else "",
            **({"folders": self.folders(), "devices": self.devices()} if lists else {}),
            "notices": list(self.notices),
            "nat": self.nat.report(),
            "dht": self.discovery.dht_report() if self.discovery is not None else {"enabled": False},
        }

    async def reload(self) -> None:
        try:
            cfg = load_config(self.paths.config_file)
        except SyncerError as e:
            log.error("config not reloaded: %s", e)
            raise
        self.config = cfg
        dialing_us = {d.device_id for d in cfg.devices if d.id in self.pending_store.devices}
        for d in cfg.devices:
            self.pending_store.forget_device(d.id)
        paired = {d.device_id for d in cfg.devices if not d.paused}
        for device, session in list(self.sessions.items()):
            if device not in paired:
                await session.close("unpaired" if cfg.device(device) is None else "paused")
        if self.model is not None:
            await self.model.reload(cfg)
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
        await self._start_discovery()
        for b in self.backoff.values():
            b.reset()
        self.turns.restart(dialing_us)
        for u in self.upgrades.values():
            u.retry_now(time.monotonic())  # new addresses may allow a better route than today's
        self._wake_dialer.set()

    async def scan(self, folder: str | None) -> dict[str, Any]:
        if self.model is None:
            raise DaemonError("the daemon is still starting")
        return await self.model.scan(folder)

    async def resume(self, folder: str) -> dict[str, Any]:
        if self.model is None:
            raise DaemonError("the daemon is still starting")
        return await self.model.resume(folder)

    def shutdown(self) -> None:
        self._stop.set()

    # BitTorrent publications (syncer/bt/service.py) ---------------------------------------
    def _bt(self) -> BtService:
        if self.bt is None:
            raise DaemonError("BitTorrent is off or unavailable in this daemon (bt.enabled, bt.listen)")
        return self.bt

    def bt_status(self) -> dict[str, Any]:
        return self._bt().status()

    def bt_publications(self) -> list[dict[str, Any]]:
        return self._bt().publications()

    async def bt_publish(self, info_hash: str) -> dict[str, Any]:
        return await self._bt().publish(info_hash)

    async def bt_unpublish(self, info_hash: str) -> dict[str, Any]:
        return await self._bt().unpublish(info_hash)

    async def bt_dht_get_peers(self, info_hash: bytes) -> list[tuple[str, int]]:
        return await self._bt().dht_get_peers(info_hash)

    async def bt_dht_announce(self, info_hash: bytes, port: int) -> int:
        return await self._bt().dht_announce(info_hash, port)

    # invites (syncer/invite/) ----------------------------------------------------------
    def link_addresses(self) -> list[str]:
        """Where a joiner can reach us: listeners as dialable addresses, then our relays."""
        return dialable([listener.url for listener in self.listeners]) + list(self.relays)

    async def join(self, text: str, timeout: float) -> dict[str, Any]:
        """Run the joiner's side of an invite with this daemon's discovery and relays; the
        CLI then writes the configuration (syncer/commands/invite.py)."""
        from syncer.invite.code import parse_code_or_link
        from syncer.invite.join import Finder, Joiner

        code, link = parse_code_or_link(text)
        finder = Finder(self.config, self.device_id, self.discovery, self._listen_port() or 22000)
        joiner = Joiner(
            self.identity, self.config, code, link, self.config.device_name,
            self.link_addresses(), finder, self.relays,
        )
        return (await joiner.run(timeout)).to_json()


class LostConnectionWrites(logging.Filter):
    """Drops asyncio's warning for each write to a connection that was just lost: pieces
    answered in the same loop turn as the loss produce one each, and the session already
    reports the loss itself (once, with its reason)."""

    NOISE = frozenset({"socket.send() raised exception.", "SSL connection is closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.NOISE


def run_daemon(paths: Paths, listen: list[str] | None = None, api: str | None = None) -> None:
    # The daemon's threads (event loop, folder workers, verifiers, watchdog) mostly release
    # the GIL in C calls; a longer forced-switch interval than CPython's 5 ms cuts GIL
    # ping-pong between them (+10-15 % files/s syncing many small files, measured) while a
    # busy worker can still hold up the event loop by at most 20 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    tune_malloc()  # blocks from the heap, not an mmap each (see memtune)
    raise_open_files_limit()  # a descriptor per connection, watch and open file
    logging.basicConfig(
        level=os.environ.get("SYNCER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("watchdog", "asyncio", "aiohttp.access", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("asyncio").addFilter(LostConnectionWrites())
    for url in listen or []:
        Address.parse(url)
    loop_name, factory = eventloop.loop_factory()  # a bad SYNCER_EVENT_LOOP stops us here
    log.debug("event loop: %s", loop_name)
    with pid_lock(paths):
        daemon = Daemon(paths, listen, api)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(daemon.run())

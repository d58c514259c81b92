"""The inviter's side in the daemon: issues invites, advertises them, answers join attempts.

The daemon's pairing gate hands an unpaired device's stream to `handle()` while an invite is
active. Bounds, so that strangers cannot use this to cost us much:
- `HandshakeGate`: at most MAX_CONCURRENT invite handshakes at once, RATE_PER_IP per source
  (bursts BURST_PER_IP) and RATE_TOTAL altogether; over that the device is refused like any
  unpaired one;
- the first bytes must be the invite preamble within PREAMBLE_TIMEOUT, the whole exchange done
  within EXCHANGE_TIMEOUT, each frame at most exchange.MAX_FRAME bytes;
- no wire session exists for the device until the PAKE succeeded and it was paired; then this
  stream is closed and the devices connect anew as paired devices.
A wrong code is counted against the invite before the refusal is sent (three kill it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncer.config import Config, edit_config
from syncer.deviceid import DeviceId
from syncer.discovery.service import DiscoveryService
from syncer.errors import ConfigError
from syncer.invite import exchange as ex
from syncer.invite.code import JoinLink
from syncer.invite.pairing import pair_for_folder
from syncer.invite.store import ACTIVE, Invite, InviteError, InviteStore
from syncer.net.admission import KeyedRateLimit, source_key
from syncer.net.transport import READ_SIZE, Address, Stream, TransportError
from syncer.paths import Paths
from syncer.runtime.timeouts import wait_for

log = logging.getLogger(__name__)

PREAMBLE_TIMEOUT = 5.0
EXCHANGE_TIMEOUT = 20.0
MAX_CONCURRENT = 4
RATE_PER_IP, BURST_PER_IP = 0.5, 5.0
RATE_TOTAL, BURST_TOTAL = 5.0, 20.0
EXPIRY_CHECK_MAX = 60.0


@dataclass
class HandshakeGate:
    """Admission of invite handshakes (pure; time injected). Every admit() that returns True
    is followed by exactly one done()."""

    max_concurrent: int = MAX_CONCURRENT
    active: int = 0
    refused: int = 0
    _per_ip: KeyedRateLimit = field(default_factory=lambda: KeyedRateLimit(RATE_PER_IP, BURST_PER_IP, max_keys=4096))
    _total: KeyedRateLimit = field(default_factory=lambda: KeyedRateLimit(RATE_TOTAL, BURST_TOTAL, max_keys=1))

    def admit(self, ip: str, now: float) -> bool:
        if self.active >= self.max_concurrent or not self._per_ip.allow(source_key(ip), now) or not self._total.allow("all", now):
            self.refused += 1
            return False
        self.active += 1
        return True

    def done(self) -> None:
        self.active = max(0, self.active - 1)


class Host(Protocol):
    """What the service needs from the daemon."""

    paths: Paths
    device_id: DeviceId
    config: Config
    discovery: DiscoveryService | None

    def link_addresses(self) -> list[str]: ...
    async def reload(self) -> None: ...


def _ip(address: str) -> str:
    try:
        return Address.parse(address).host
    except TransportError:
        return address


class _Replay(Stream):
    """A stream whose first bytes were read already: `read()` returns them first."""

    def __init__(self, inner: Stream, prefix: bytes) -> None:
        self.inner, self.prefix = inner, prefix
        self.transport, self.peer, self.remote_address = inner.transport, inner.peer, inner.remote_address

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix[:max_bytes], self.prefix[max_bytes:]
            return out
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.write(data)

    async def writelines(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        await self.inner.writelines(chunks)

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def peer_accepted(self) -> None:
        self.inner.peer_accepted()

    def align_reads(self, limit: int) -> None:
        align = getattr(self.inner, "align_reads", None)
        if align is not None:
            align(limit)


class InviteService:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.store = InviteStore(host.paths.invites_file)
        self.gate = HandshakeGate()
        self._advertised: set[bytes] = set()
        self._wake = asyncio.Event()
        self.joined = 0
        self.wrong = 0

    # the control API -------------------------------------------------------------------
    def accepting(self, now: float | None = None) -> bool:
        """Whether any invite is active (the pairing gate's exception applies)."""
        return bool(self.store.active(time.time() if now is None else now))

    def create(self, folder_id: str, read_only: bool, expires_s: float, uses: int) -> dict[str, Any]:
        cfg = self.host.config
        folder = cfg.folder(folder_id) or next((f for f in cfg.folders if f.label == folder_id), None)
        if folder is None:
            raise InviteError(f"no folder {folder_id!r} here (see `syncer folders`; share one with `syncer share PATH`)")
        now = time.time()
        with self.store.locked() as store:
            inv = store.create(folder.id, read_only, expires_s, uses, now)
        self.sync_advertising()
        log.info("invite %d for folder %s issued (%s, %d use(s))", inv.nameplate, folder.id, "read-only" if read_only else "read-write", uses)
        link = JoinLink(inv.code, self.host.device_id, folder.id, tuple(self.host.link_addresses()))
        return {**inv.public(now), "label": folder.label, "link": str(link)}

    def listing(self) -> list[dict[str, Any]]:
        self.store.reload()
        return self.store.listing(time.time())

    def revoke(self, nameplate: int) -> dict[str, Any]:
        now = time.time()
        with self.store.locked() as store:
            inv = store.revoke(nameplate, now)
        self.sync_advertising()
        return inv.public(now)

    # advertising ------------------------------------------------------------------------
    def sync_advertising(self) -> None:
        """Advertise the locator keys of active invites (and only those) on discovery."""
        disc = self.host.discovery
        keys = {inv.code.locator_key() for inv in self.store.active(time.time())}
        if disc is not None:
            for key in keys - self._advertised:
                disc.advertise(key)
            for key in self._advertised - keys:
                disc.withdraw(key)
        self._advertised = keys if disc is not None else set()
        self._wake.set()

    def discovery_restarted(self) -> None:
        self._advertised = set()
        self.sync_advertising()

    async def run(self) -> None:
        """Withdraws invites from discovery as they expire."""
        while True:
            now = time.time()
            nexts = [inv.expires - now for inv in self.store.active(now)]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake.wait(), min([EXPIRY_CHECK_MAX, *nexts]) + 0.05)
            self.sync_advertising()
            self._wake.clear()

    # the exchange -----------------------------------------------------------------------
    async def handle(self, stream: Stream, paired: bool = False) -> Stream | None:
        """Screen an inbound stream while an invite is active: run the invite exchange if the
        device speaks it (None: handled, closed). Otherwise give back a stream to go on with
        (replaying the bytes read here): for an unpaired device the caller refuses it as any
        stranger; a paired device goes on to its wire session."""
        if not self.accepting():
            return stream
        if not paired and not self.gate.admit(_ip(stream.remote_address), time.monotonic()):
            log.info("invite handshake from %s at %s refused: too many at once", stream.peer.short, stream.remote_address)
            return stream
        admitted = not paired
        try:
            first = await self._read_preamble(stream)
            if not first or not ex.sniff(first):
                return _Replay(stream, first or b"")
            if not admitted:
                if not self.gate.admit(_ip(stream.remote_address), time.monotonic()):
                    stream.abort()
                    return None
                admitted = True
            exchange = ex.InviterExchange(self.host.device_id.raw, stream.peer.raw)
            events = exchange.receive(first)
            log.info("invite attempt from %s at %s", stream.peer.short, stream.remote_address)
            try:
                async with asyncio.timeout(EXCHANGE_TIMEOUT):
                    await self._drive(stream, exchange, events)
            except (TimeoutError, ConnectionError, OSError) as e:
                log.info("invite exchange with %s ended: %s", stream.peer.short, e or type(e).__name__)
            with contextlib.suppress(Exception):
                await wait_for(stream.close(), 2)
            return None
        finally:
            if admitted:
                self.gate.done()

    async def _read_preamble(self, stream: Stream) -> bytes:
        """The first bytes, until they tell whether this is the invite protocol (or the peer
        went quiet for PREAMBLE_TIMEOUT: a paired device sends its Hello at once)."""
        got = b""
        try:
            async with asyncio.timeout(PREAMBLE_TIMEOUT):
                while ex.sniff(got) is None:
                    data = await stream.read(ex.MAX_FRAME)
                    if not data:
                        break
                    got += data
        except TimeoutError:
            pass
        return got

    async def _drive(self, stream: Stream, exchange: ex.InviterExchange, events: list[ex.Event]) -> None:
        invite: Invite | None = None
        while True:
            for event in events:
                if isinstance(event, ex.JoinRequested):
                    invite = self._on_join(exchange, event.nameplate)
                elif isinstance(event, ex.Confirmed) and invite is not None:
                    await self._on_confirmed(stream, exchange, invite, event)
                elif isinstance(event, ex.WrongCode) and invite is not None:
                    self._on_wrong(stream, invite)
                elif isinstance(event, ex.Failed):
                    log.info("invite exchange with %s failed: %s", stream.peer.short, event.reason)
            out = exchange.data_to_send()
            if out:
                await stream.write(out)
            if exchange.finished:
                return
            data = await stream.read(ex.MAX_FRAME)
            if not data:
                return
            events = exchange.receive(data)

    def _on_join(self, exchange: ex.InviterExchange, nameplate: int) -> Invite | None:
        now = time.time()
        self.store.reload()
        invite = self.store.get(nameplate)
        if invite is None:
            exchange.refuse(ex.UNKNOWN, f"no invite {nameplate} on this device (check the number)")
            return None
        refusal = invite.refusal(now)
        if refusal is None and self.host.config.folder(invite.folder_id) is None:
            refusal = (ex.UNKNOWN, "the folder of this invite is no longer shared here")
        if refusal is not None:
            exchange.refuse(*refusal)
            return None
        exchange.accept(invite.code)  # SPAKE2: a few ms of CPU, bounded by the gate
        return invite

    def _on_wrong(self, stream: Stream, invite: Invite) -> None:
        now = time.time()
        self.wrong += 1
        with self.store.locked() as store:
            inv = store.record_failure(invite.nameplate, now)
        log.warning(
            "invite %d: wrong code from %s at %s (%d wrong so far)",
            invite.nameplate, stream.peer.short, stream.remote_address, inv.failures if inv else 0,
        )
        self.sync_advertising()

    async def _on_confirmed(self, stream: Stream, exchange: ex.InviterExchange, invite: Invite, event: ex.Confirmed) -> None:
        now = time.time()
        device = stream.peer
        with self.store.locked() as store:
            used = store.record_use(invite.nameplate, str(device), now)
        if used is None:  # another joiner took the last use meanwhile
            exchange.refuse(ex.USED, "this invite was just used by another device; ask for a new one")
            return
        try:
            with edit_config(self.host.paths.config_file) as cfg:
                pinned = pair_for_folder(cfg, device, event.name, event.addresses, invite.folder_id)
                folder = cfg.folder(invite.folder_id)
        except ConfigError as e:
            log.error("invite %d: cannot pair %s: %s", invite.nameplate, device.short, e)
            exchange.refuse(ex.BUSY, "the inviting device could not save its configuration; try again")
            return
        if pinned:
            log.info("folders %s stay shared with the devices they had (not with %s)", ", ".join(pinned), device.short)
        exchange.welcome(invite.folder_id, folder.label if folder else "", invite.read_only, self.host.config.device_name)
        out = exchange.data_to_send()
        with contextlib.suppress(ConnectionError, OSError):
            await stream.write(out)
        self.joined += 1
        log.info("invite %d: %s (%s) joined folder %s", invite.nameplate, device, event.name, invite.folder_id)
        if used.status(now) != ACTIVE:
            self.sync_advertising()
        await self.host.reload()

    def statistics(self) -> dict[str, int]:
        return {"active_handshakes": self.gate.active, "refused": self.gate.refused, "joined": self.joined, "wrong_codes": self.wrong}

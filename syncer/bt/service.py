"""The daemon's BitTorrent service: seeds the publications on `bt.listen` and lends its DHT
node to `syncer get` processes (control API).

At start, and when `syncer publish` adds one, each publication is checked against its
fingerprint (size and mtime of each file): one whose files changed since it was published is not
seeded (serving pieces that no longer match their hashes only gets us banned); `publications`
shows why. Upload counters are saved into the store when a publication stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncer.bt.create import fingerprint, local_files
from syncer.bt.dht import NodeFinder
from syncer.bt.metainfo import MetainfoError, parse_torrent
from syncer.bt.publications import Publication, PublicationStore
from syncer.bt.session import BtSession
from syncer.bt.torrent import Placement, Torrent
from syncer.discovery.dht.node import DhtNode
from syncer.errors import SyncerError

log = logging.getLogger(__name__)


def parse_listen(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def advertised_addresses(host: str, port: int) -> list[str]:
    """HOST:PORT peers can be given in a magnet's x.pe: the listen host itself, or for a
    wildcard listen the address of the interface that has the default route (if any)."""
    if host not in ("0.0.0.0", "::", ""):
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
            return [f"{s.getsockname()[0]}:{port}"]
    except OSError:
        return []


class BtService:
    def __init__(self, state_dir: Path, listen: str, dht: Callable[[], DhtNode | None]) -> None:
        self.store = PublicationStore(state_dir)
        self.listen = listen
        self._dht = dht
        self.finder = NodeFinder(dht)
        self.session: BtSession | None = None
        self.problems: dict[str, str] = {}  # info-hash -> why it is not seeded
        self._saved_uploaded: dict[str, int] = {}

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        self.session = BtSession(host, port, dht=lambda: self.finder if self._dht() is not None else None, fallback_port=True)
        await self.session.start()
        log.info("BitTorrent listening on %s:%s", self.session.host, self.session.port)
        for pub in self.store.load():
            await self._seed(pub)

    async def stop(self) -> None:
        if self.session is None:
            return
        for ih in list(self.session.torrents):
            self._save_uploaded(ih)
        await self.session.stop()
        with contextlib.suppress(SyncerError, OSError):
            self.store.record_uploaded(self._saved_uploaded)
        self._saved_uploaded.clear()

    def _save_uploaded(self, ih: bytes) -> None:
        assert self.session is not None
        t = self.session.torrents.get(ih)
        if t is not None:
            self._saved_uploaded[ih.hex()] = self._saved_uploaded.get(ih.hex(), 0) + t.uploaded

    async def _seed(self, pub: Publication) -> None:
        assert self.session is not None
        self.problems.pop(pub.info_hash, None)
        path = Path(pub.path)
        try:
            torrent = parse_torrent(self.store.torrent_path(pub.info_hash).read_bytes())
            fp = await asyncio.to_thread(lambda: fingerprint(local_files(path.parent, path.name, torrent.info)))
        except FileNotFoundError as e:
            self.problems[pub.info_hash] = f"missing: {e.filename}"
        except (OSError, MetainfoError) as e:
            self.problems[pub.info_hash] = str(e)
        else:
            if fp != pub.fingerprint:
                self.problems[pub.info_hash] = f"{path} changed since it was published; publish it again"
            else:
                ih = bytes.fromhex(pub.info_hash)
                self._save_uploaded(ih)
                await self.session.remove(ih)
                self.session.add(Torrent(self.session, ih, Placement(path.parent, top=path.name, complete=True), info=torrent.info, trackers=tuple(pub.trackers), use_dht=pub.dht))
                log.info("seeding %s (%s)", pub.name, pub.info_hash)
                return
        log.warning("not seeding %s: %s", pub.name, self.problems[pub.info_hash])

    # --- control API -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        s = self.session
        if s is None:
            return {"listen": None, "addresses": []}
        return {"listen": f"{s.host}:{s.port}", "addresses": advertised_addresses(s.host, s.port)}

    def publications(self) -> list[dict[str, Any]]:
        rows = []
        torrents = self.session.torrents if self.session else {}
        for pub in self.store.load():
            t = torrents.get(bytes.fromhex(pub.info_hash))
            stats = t.statistics() if t else {}
            uploaded = pub.uploaded + self._saved_uploaded.get(pub.info_hash, 0) + stats.get("uploaded", 0)
            rows.append({
                "info_hash": pub.info_hash,
                "name": pub.name,
                "path": pub.path,
                "size": pub.size,
                "state": stats.get("state", "not seeded"),
                "problem": self.problems.get(pub.info_hash) or stats.get("error", ""),
                "peers": stats.get("peers", 0),
                "uploaded": uploaded,
                "ratio": uploaded / pub.size if pub.size else 0.0,
                "up_rate": stats.get("up_rate", 0.0),
                "trackers": pub.trackers,
                "dht": pub.dht,
            })
        return rows

    async def publish(self, info_hash: str) -> dict[str, Any]:
        if self.session is None:
            raise SyncerError("BitTorrent is off in this daemon (bt.enabled)")
        pub = next((p for p in self.store.load() if p.info_hash == info_hash), None)
        if pub is None:
            raise SyncerError(f"no publication {info_hash}")
        await self._seed(pub)
        if info_hash in self.problems:
            raise SyncerError(self.problems[info_hash])
        return self.status()

    async def unpublish(self, info_hash: str) -> dict[str, Any]:
        if self.session is not None:
            ih = bytes.fromhex(info_hash)
            self._save_uploaded(ih)
            await self.session.remove(ih)
        self.problems.pop(info_hash, None)
        self._saved_uploaded.pop(info_hash, None)
        return {"ok": True}

    async def dht_get_peers(self, info_hash: bytes) -> list[tuple[str, int]]:
        return await self.finder.get_peers(info_hash)

    async def dht_announce(self, info_hash: bytes, port: int) -> int:
        return await self.finder.announce(info_hash, port)

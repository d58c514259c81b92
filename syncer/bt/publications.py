"""What this device publishes, persisted in the state dir: `bt/publications.json` (one record
per publication, written atomically under a lock, so the CLI and the daemon can both edit it)
and `bt/torrents/INFOHASH.torrent` (the metainfo, so seeding needs no re-hashing)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from syncer.errors import SyncerError


@dataclass
class Publication:
    info_hash: str  # hex
    name: str
    path: str  # absolute path of the published file or directory
    trackers: list[str] = field(default_factory=list)
    dht: bool = True
    fingerprint: str = ""
    created: float = 0.0
    uploaded: int = 0  # bytes, over all runs of the daemon
    size: int = 0


class PublicationStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "bt"
        self.file = self.dir / "publications.json"

    def torrent_path(self, info_hash: str) -> Path:
        return self.dir / "torrents" / f"{info_hash}.torrent"

    def load(self) -> list[Publication]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise SyncerError(f"{self.file}: unreadable ({e})") from None
        out = []
        for d in data.get("publications", []):
            with contextlib.suppress(TypeError):
                out.append(Publication(**d))
        return out

    @contextlib.contextmanager
    def edit(self) -> Iterator[list[Publication]]:
        """Read-modify-write under an exclusive lock; nothing is written if the body raises."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "publications.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pubs = self.load()
            yield pubs
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"publications": [asdict(p) for p in pubs]}, indent=1))
            os.replace(tmp, self.file)

    def add(self, pub: Publication, torrent: bytes) -> None:
        tp = self.torrent_path(pub.info_hash)
        tp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = tp.with_name(tp.name + ".tmp")
        tmp.write_bytes(torrent)
        os.replace(tmp, tp)
        with self.edit() as pubs:
            pubs[:] = [p for p in pubs if p.info_hash != pub.info_hash]
            pubs.append(pub)

    def find(self, key: str, pubs: list[Publication] | None = None) -> Publication:
        """By info-hash (or a prefix of at least 6 hex digits), magnet link, name or path."""
        pubs = self.load() if pubs is None else pubs
        k = key.strip()
        if k.startswith("magnet:"):
            from syncer.bt.magnet import parse

            k = parse(k).info_hash.hex()
        matches = [p for p in pubs if p.info_hash == k.lower() or p.name == k or p.path == k or p.path == str(Path(k).absolute())]
        if not matches and len(k) >= 6:
            matches = [p for p in pubs if p.info_hash.startswith(k.lower())]
        if not matches:
            raise SyncerError(f"no publication matches {key!r} (see `syncer publications`)")
        if len(matches) > 1:
            raise SyncerError(f"{key!r} matches {len(matches)} publications; give the info-hash")
        return matches[0]

    def remove(self, key: str) -> Publication:
        with self.edit() as pubs:
            pub = self.find(key, pubs)
            pubs[:] = [p for p in pubs if p.info_hash != pub.info_hash]
        with contextlib.suppress(FileNotFoundError):
            self.torrent_path(pub.info_hash).unlink()
        return pub

    def record_uploaded(self, uploaded: dict[str, int]) -> None:
        with self.edit() as pubs:
            for p in pubs:
                p.uploaded += uploaded.get(p.info_hash, 0)

"""Standalone per-file metadata (the ".torrent" of one file): name, size, chunk size and the
SHA-256 of every chunk, as JSON (format in docs/index.md), and verification of a file against it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncer.errors import SyncerError
from syncer.scan.blocksize import block_size_for

FORMAT = "syncer-manifest/1"


class ManifestError(SyncerError):
    pass


def make_manifest(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        bs = block_size_for(size)
        hashes = []
        with open(path, "rb") as f:
            while chunk := f.read(bs):
                hashes.append(hashlib.sha256(chunk).hexdigest())
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror or e}") from None
    return {"format": FORMAT, "name": path.name, "size": size, "chunk_size": bs, "chunks": hashes}


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ManifestError(f"{path} is not a syncer manifest: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a syncer manifest (format {FORMAT})")
    size, bs, chunks = data.get("size"), data.get("chunk_size"), data.get("chunks")
    if not (isinstance(size, int) and isinstance(bs, int) and bs > 0 and isinstance(chunks, list)) or len(chunks) != (size + bs - 1) // bs:
        raise ManifestError(f"{path}: inconsistent size, chunk_size and chunk count")
    return data


@dataclass
class Verification:
    ok: list[int]
    mismatch: list[int]
    missing: list[int]
    size_matches: bool

    @property
    def good(self) -> bool:
        return not self.mismatch and not self.missing and self.size_matches


def verify(manifest: dict[str, Any], path: Path) -> Verification:
    bs = manifest["chunk_size"]
    res = Verification([], [], [], False)
    try:
        size = os.stat(path).st_size
        res.size_matches = size == manifest["size"]
        with open(path, "rb") as f:
            for i, expected in enumerate(manifest["chunks"]):
                data = f.read(min(bs, manifest["size"] - i * bs))
                want = min(bs, manifest["size"] - i * bs)
                if len(data) < want:
                    res.missing.append(i)
                elif hashlib.sha256(data).hexdigest() == expected:
                    res.ok.append(i)
                else:
                    res.mismatch.append(i)
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror or e}") from None
    return res

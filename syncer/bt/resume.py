"""Resume data of a download: an append-only journal of verified pieces.

One file per (info-hash, target directory) in the state dir: an 8-byte magic, the 20-byte
info-hash, then a 4-byte big-endian piece index per verified piece, appended after the piece's
data was written. A kill -9 loses nothing already appended (the page cache keeps both the data and
the journal); after a power cut the data may lag the journal, which is why the download re-hashes
the journal's pieces before trusting them (torrent.py). Indices beyond the piece count and a file
for another info-hash are ignored, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from pathlib import Path

MAGIC = b"SYBTRES1"
_HEADER = len(MAGIC) + 20


def journal_path(state_dir: Path, info_hash: bytes, target: Path) -> Path:
    key = hashlib.sha1(str(target.absolute()).encode()).hexdigest()[:12]
    return state_dir / "bt" / "resume" / f"{info_hash.hex()}-{key}.pieces"


class Journal:
    def __init__(self, path: Path, info_hash: bytes) -> None:
        self.path = path
        self.info_hash = info_hash
        self._fd = -1

    def load(self, num_pieces: int) -> set[int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return set()
        if data[:_HEADER] != MAGIC + self.info_hash:
            return set()
        body = data[_HEADER:]
        body = body[: len(body) - len(body) % 4]
        return {i for (i,) in struct.iter_unpack(">I", body) if i < num_pieces}

    def open(self, verified: set[int]) -> None:
        """Start the journal afresh holding `verified` (written atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + self.info_hash + b"".join(struct.pack(">I", i) for i in sorted(verified)))
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def append(self, piece: int) -> None:
        if self._fd >= 0:
            os.write(self._fd, struct.pack(">I", piece))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

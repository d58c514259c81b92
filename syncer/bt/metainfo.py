"""BitTorrent v1 metainfo (BEP 3): the info dictionary, its info-hash, `.torrent` files.

The info dictionary comes from strangers (a `.torrent` file, or peers over BEP 9), so parsing is
strict and bounded: at most MAX_METADATA bytes, MAX_FILES files, MAX_DEPTH path components, a
piece count that matches the total length. File names are hostile: every path component is
sanitised (no "..", no "/", no NUL or control characters, at most MAX_COMPONENT bytes), and names
that collide after sanitising are made unique, so a file can never land outside the download
directory or on top of another file of the same torrent. Hybrid (v1+v2) info dictionaries are
read through their v1 part; BEP 47 pad files are kept in the piece layout but never written.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from syncer.codec import bencode

MAX_METADATA = 32 << 20  # bytes of a bencoded info dictionary we accept (libtorrent: 30 MiB)
MAX_FILES = 1_000_000
MAX_DEPTH = 64  # path components per file
MAX_COMPONENT = 240  # bytes of one sanitised path component (leaves room for ".part")
MAX_PIECE_LENGTH = 64 << 20  # one piece is held in memory until verified
MAX_TOTAL = 1 << 50
MAX_TRACKERS = 100
HASH_LEN = 20


class MetainfoError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: tuple[str, ...]  # sanitised components below the torrent's top directory
    length: int
    offset: int  # of the file's first byte in the torrent's byte stream
    pad: bool = False  # BEP 47 padding: zeros, never written to disk
    executable: bool = False

    @property
    def name(self) -> str:
        return "/".join(self.path)


@dataclass(frozen=True)
class Info:
    raw: bytes  # the bencoded info dictionary exactly as hashed
    info_hash: bytes
    name: str  # sanitised
    piece_length: int
    pieces: bytes  # concatenated SHA-1 digests
    files: tuple[FileEntry, ...]
    total_length: int
    single_file: bool
    private: bool = False

    @property
    def num_pieces(self) -> int:
        return len(self.pieces) // HASH_LEN

    def piece_hash(self, index: int) -> bytes:
        return self.pieces[index * HASH_LEN : (index + 1) * HASH_LEN]

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    @property
    def hex(self) -> str:
        return self.info_hash.hex()


def sanitize_component(raw: bytes | str) -> str:
    """One path component from a stranger -> a safe single file name, or "" (drop it)."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_COMPONENT * 4:  # cut anyway below; this bounds the work (keeps the extension)
            raw = raw[: MAX_COMPONENT * 2] + raw[-32:]
        s = raw.decode("utf-8", "replace")
    else:
        s = raw
    s = unicodedata.normalize("NFC", s)
    s = "".join("_" if ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in s)
    s = s.strip()
    if s in ("", "."):
        return ""
    if s == "..":
        return "_"
    if len(s.encode()) > MAX_COMPONENT:
        stem, dot, ext = s.rpartition(".")
        if not (dot and stem and 0 < len(ext.encode()) <= 16):
            stem, ext = s, ""
        tail = ("." + ext).encode() if ext else b""
        cut = stem.encode()[: MAX_COMPONENT - len(tail)].decode("utf-8", "ignore")
        s = cut + tail.decode()
    return s


def _sanitize_path(parts: list[Any]) -> tuple[str, ...]:
    out = []
    for p in parts:
        if not isinstance(p, bytes):
            raise MetainfoError("a path component is not a string")
        c = sanitize_component(p)
        if c:
            out.append(c)
    return tuple(out) or ("_",)


class _Names:
    """Makes sanitised paths unique: no file twice, no file where a directory is (or the other
    way round). The first component that collides is renamed NAME~N (before the extension);
    counters per name keep this amortised O(1) per file, whatever a hostile torrent holds."""

    def __init__(self) -> None:
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()
        self._next: dict[tuple[str, ...], int] = {}

    def add(self, path: tuple[str, ...]) -> tuple[str, ...]:
        out: tuple[str, ...] = ()
        for i, c in enumerate(path):
            last = i == len(path) - 1
            cand = (*out, c)
            if cand in self.files or (last and cand in self.dirs):
                cand = self._rename(out, c, last)
            out = cand
            if not last:
                self.dirs.add(out)
        self.files.add(out)
        return out

    def _rename(self, head: tuple[str, ...], c: str, last: bool) -> tuple[str, ...]:
        stem, dot, ext = c.rpartition(".")
        if not dot or not stem:
            stem, ext = c, ""
        key = (*head, c)
        n = self._next.get(key, 1)
        while True:
            cand = (*head, f"{stem}~{n}" + (f".{ext}" if ext else ""))
            n += 1
            if cand not in self.files and not (last and cand in self.dirs):
                self._next[key] = n
                return cand


def _int(d: dict[bytes, Any], key: bytes, lo: int, hi: int) -> int:
    v = d.get(key)
    if not isinstance(v, int) or not lo <= v <= hi:
        raise MetainfoError(f"{key.decode()} missing or out of range")
    return v


def parse_info(raw: bytes, expected_hash: bytes | None = None) -> Info:
    """Validate a bencoded info dictionary (from a .torrent file or from peers)."""
    if len(raw) > MAX_METADATA:
        raise MetainfoError(f"metadata larger than {MAX_METADATA} bytes")
    info_hash = hashlib.sha1(raw).digest()
    if expected_hash is not None and info_hash != expected_hash:
        raise MetainfoError("metadata does not match the info-hash")
    try:
        d = bencode.decode(raw)
    except bencode.BencodeError as e:
        raise MetainfoError(f"info dictionary: {e}") from None
    if not isinstance(d, dict):
        raise MetainfoError("info is not a dictionary")
    name_raw = d.get(b"name.utf-8", d.get(b"name"))
    if not isinstance(name_raw, bytes):
        raise MetainfoError("info has no name")
    name = sanitize_component(name_raw) or info_hash.hex()
    piece_length = _int(d, b"piece length", 1, MAX_PIECE_LENGTH)
    pieces = d.get(b"pieces")
    if not isinstance(pieces, bytes) or len(pieces) % HASH_LEN:
        raise MetainfoError("pieces missing or not a multiple of 20 bytes")
    files: list[FileEntry] = []
    if b"files" in d:
        if b"length" in d:
            raise MetainfoError("info has both length and files")
        flist = d[b"files"]
        if not isinstance(flist, list) or not flist:
            raise MetainfoError("files is not a non-empty list")
        if len(flist) > MAX_FILES:
            raise MetainfoError(f"more than {MAX_FILES} files")
        names = _Names()
        offset = 0
        for f in flist:
            if not isinstance(f, dict):
                raise MetainfoError("a file entry is not a dictionary")
            length = _int(f, b"length", 0, MAX_TOTAL)
            parts = f.get(b"path.utf-8", f.get(b"path"))
            if not isinstance(parts, list) or not parts or len(parts) > MAX_DEPTH:
                raise MetainfoError("a file has no path or too deep a path")
            attr = f.get(b"attr", b"")
            attr = attr if isinstance(attr, bytes) else b""
            pad = b"p" in attr or (len(parts) >= 2 and parts[0] == b".pad")
            path = _sanitize_path(parts)
            if b"l" in attr:  # BEP 47 symlink: never created (a stranger's link could point anywhere)
                pad = True
            if not pad:
                path = names.add(path)
            files.append(FileEntry(path, length, offset, pad, b"x" in attr))
            offset += length
            if offset > MAX_TOTAL:
                raise MetainfoError("total length too large")
        total, single = offset, False
    else:
        total, single = _int(d, b"length", 0, MAX_TOTAL), True
        files.append(FileEntry((name,), total, 0))
    if total == 0:
        raise MetainfoError("the torrent holds no data")
    if len(pieces) // HASH_LEN != -(-total // piece_length):
        raise MetainfoError("piece count does not match the total length")
    return Info(raw, info_hash, name, piece_length, pieces, tuple(files), total, single, d.get(b"private") == 1)


def info_dict(name: str, piece_length: int, pieces: bytes, files: list[tuple[tuple[str, ...], int]], single: bool) -> bytes:
    """The bencoded info dictionary we publish (v1: name, piece length, pieces, length|files)."""
    d: dict[str, Any] = {"name": name, "piece length": piece_length, "pieces": pieces}
    if single:
        d["length"] = files[0][1]
    else:
        d["files"] = [{"length": n, "path": list(p)} for p, n in files]
    return bencode.encode(d)


def torrent_file(info: Info, trackers: list[str], created_by: str = "syncer", now: float | None = None) -> bytes:
    """A .torrent file around the info dictionary, whose raw bytes are kept as hashed."""
    top: dict[str, Any] = {"created by": created_by, "creation date": int(now if now is not None else time.time())}
    if trackers:
        top["announce"] = trackers[0]
        top["announce-list"] = [[t] for t in trackers]
    body = bencode.encode(top)
    # keys sort as: announce, announce-list, created by, creation date, info
    return body[:-1] + b"4:info" + info.raw + b"e"


@dataclass(frozen=True)
class Torrent:
    info: Info
    trackers: tuple[str, ...]


def parse_torrent(data: bytes) -> Torrent:
    """A .torrent file: its info dictionary and trackers. Only canonical bencoding is accepted
    (the info-hash is over the info dictionary's exact bytes, recovered by re-encoding)."""
    if len(data) > MAX_METADATA + (1 << 20):
        raise MetainfoError("torrent file too large")
    try:
        top = bencode.decode(data)
    except bencode.BencodeError as e:
        raise MetainfoError(f"not a torrent file: {e}") from None
    if not isinstance(top, dict) or not isinstance(top.get(b"info"), dict):
        raise MetainfoError("not a torrent file: no info dictionary")
    raw = bencode.encode(top[b"info"])
    if raw not in data:
        raise MetainfoError("the info dictionary is not canonically bencoded")
    trackers: list[str] = []
    announce_list = top.get(b"announce-list")
    if isinstance(announce_list, list):
        for tier in announce_list:
            if isinstance(tier, list):
                trackers += [t.decode("utf-8", "replace") for t in tier if isinstance(t, bytes)]
    if isinstance(top.get(b"announce"), bytes):
        trackers.insert(0, top[b"announce"].decode("utf-8", "replace"))
    seen: dict[str, None] = {}
    for t in trackers:
        if t.isprintable() and len(t) < 1024:
            seen.setdefault(t, None)
    return Torrent(parse_info(raw), tuple(list(seen)[:MAX_TRACKERS]))

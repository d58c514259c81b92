"""Magnet URIs (BEP 9 `xt=urn:btih`, `dn`, `tr`, `x.pe`; BEP 53 `so`).

A magnet link is pasted from anywhere, so parsing is bounded: at most MAX_LENGTH characters,
MAX_TRACKERS trackers, MAX_PEERS peer addresses, MAX_SELECT selected file indices; anything
malformed is one clear MagnetError.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

MAX_LENGTH = 64 << 10
MAX_TRACKERS = 100
MAX_PEERS = 200
MAX_SELECT = 100_000


class MagnetError(ValueError):
    pass


@dataclass(frozen=True)
class Magnet:
    info_hash: bytes
    name: str = ""
    trackers: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    select_only: frozenset[int] | None = field(default=None)  # BEP 53 file indices

    def uri(self) -> str:
        parts = [f"xt=urn:btih:{self.info_hash.hex()}"]
        if self.name:
            parts.append("dn=" + quote(self.name, safe=""))
        parts += ["tr=" + quote(t, safe="") for t in self.trackers]
        parts += ["x.pe=" + quote(format_hostport(h, p), safe=":[]") for h, p in self.peers]
        if self.select_only:
            parts.append("so=" + format_ranges(self.select_only))
        return "magnet:?" + "&".join(parts)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MagnetError(f"bad peer address {v!r}: expected HOST:PORT")
    return host, int(port)


def format_ranges(indices: frozenset[int]) -> str:
    out: list[str] = []
    run: list[int] = []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_ranges(v: str) -> frozenset[int]:
    """BEP 53 `so=0,2,4-6` -> {0, 2, 4, 5, 6}."""
    out: set[int] = set()
    for item in v.split(","):
        a, dash, b = item.partition("-")
        if not a.isdigit() or (dash and not b.isdigit()):
            raise MagnetError(f"bad so= item {item!r}")
        lo, hi = int(a), int(b) if dash else int(a)
        if hi < lo or len(out) + hi - lo + 1 > MAX_SELECT:
            raise MagnetError("so= selects too many or reversed ranges")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def _btih(v: str) -> bytes:
    h = v[len("urn:btih:") :]
    try:
        if len(h) == 40:
            return bytes.fromhex(h)
        if len(h) == 32:
            return base64.b32decode(h.upper())
    except (ValueError, binascii.Error):
        pass
    raise MagnetError("xt=urn:btih: needs 40 hex or 32 base32 characters")


def parse(uri: str) -> Magnet:
    if len(uri) > MAX_LENGTH:
        raise MagnetError("magnet link too long")
    if not uri.startswith("magnet:?"):
        raise MagnetError("not a magnet link (expected magnet:?xt=urn:btih:...)")
    info_hash: bytes | None = None
    name = ""
    trackers: list[str] = []
    peers: list[tuple[str, int]] = []
    select: frozenset[int] | None = None
    for key, value in parse_qsl(uri[len("magnet:?") :], keep_blank_values=True):
        if key == "xt" and value.startswith("urn:btih:"):
            info_hash = info_hash or _btih(value)
        elif key == "dn":
            name = value[:1024]
        elif key == "tr" and len(trackers) < MAX_TRACKERS and value.isprintable():
            trackers.append(value)
        elif key == "x.pe" and len(peers) < MAX_PEERS:
            peers.append(parse_hostport(value))
        elif key == "so":
            select = parse_ranges(value)
    if info_hash is None:
        raise MagnetError("the magnet link has no BitTorrent info-hash (xt=urn:btih:...)")
    return Magnet(info_hash, name, tuple(dict.fromkeys(trackers)), tuple(dict.fromkeys(peers)), select)

"""BitTorrent HTTP tracker client (BEP 3 announce, BEP 23 compact peers, BEP 7 peers6).

A tracker is a stranger too: its answer is read up to MAX_RESPONSE bytes, decoded strictly, at
most MAX_PEERS peers kept, its interval clamped to [MIN_INTERVAL, MAX_INTERVAL]. UDP trackers
(BEP 15) are not spoken (docs/bittorrent.md); their URLs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
from yarl import URL

from syncer.codec import bencode

MAX_RESPONSE = 256 << 10
MAX_PEERS = 200
MIN_INTERVAL = 30.0
MAX_INTERVAL = 3600.0
DEFAULT_INTERVAL = 1800.0
NUMWANT = 50
TIMEOUT = aiohttp.ClientTimeout(total=15)


class TrackerError(Exception):
    pass


@dataclass(frozen=True)
class AnnounceResult:
    interval: float
    peers: list[tuple[str, int]]


def supported(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def announce_url(url: str, info_hash: bytes, peer_id: bytes, port: int, uploaded: int, downloaded: int, left: int, event: str | None, numwant: int = NUMWANT) -> str:
    q = [
        ("info_hash", quote_from_bytes(info_hash, safe="")),
        ("peer_id", quote_from_bytes(peer_id, safe="")),
        ("port", str(port)),
        ("uploaded", str(uploaded)),
        ("downloaded", str(downloaded)),
        ("left", str(left)),
        ("compact", "1"),
        ("numwant", str(numwant)),
    ]
    if event:
        q.append(("event", event))
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in q)


def _compact(data: bytes, size: int) -> list[tuple[str, int]]:
    out = []
    for i in range(0, len(data) - len(data) % size, size):
        ip = str(ipaddress.ip_address(data[i : i + size - 2]))
        (port,) = struct.unpack(">H", data[i + size - 2 : i + size])
        if port:
            out.append((ip, port))
    return out


def parse_response(body: bytes) -> AnnounceResult:
    try:
        d = bencode.decode(body)
    except bencode.BencodeError as e:
        raise TrackerError(f"bad tracker response: {e}") from None
    if not isinstance(d, dict):
        raise TrackerError("bad tracker response: not a dictionary")
    fail = d.get(b"failure reason")
    if isinstance(fail, bytes):
        raise TrackerError("tracker: " + fail[:200].decode("utf-8", "replace"))
    interval = d.get(b"interval")
    interval = float(interval) if isinstance(interval, int) else DEFAULT_INTERVAL
    peers: list[tuple[str, int]] = []
    raw: Any = d.get(b"peers", b"")
    if isinstance(raw, bytes):
        peers += _compact(raw, 6)
    elif isinstance(raw, list):
        for p in raw[:MAX_PEERS]:
            if isinstance(p, dict) and isinstance(p.get(b"ip"), bytes) and isinstance(p.get(b"port"), int):
                try:
                    ip = str(ipaddress.ip_address(p[b"ip"].decode("ascii")))
                except (ValueError, UnicodeDecodeError):
                    continue
                if 0 < p[b"port"] < 65536:
                    peers.append((ip, p[b"port"]))
    raw6 = d.get(b"peers6", b"")
    if isinstance(raw6, bytes):
        peers += _compact(raw6, 18)
    return AnnounceResult(min(MAX_INTERVAL, max(MIN_INTERVAL, interval)), peers[:MAX_PEERS])


async def announce(session: aiohttp.ClientSession, url: str, info_hash: bytes, peer_id: bytes, port: int, uploaded: int, downloaded: int, left: int, event: str | None) -> AnnounceResult:
    full = announce_url(url, info_hash, peer_id, port, uploaded, downloaded, left, event)
    try:
        async with session.get(URL(full, encoded=True), timeout=TIMEOUT, allow_redirects=False) as resp:
            body = await resp.content.read(MAX_RESPONSE + 1)
            if len(body) > MAX_RESPONSE:
                raise TrackerError("tracker response too large")
            if resp.status != 200:
                raise TrackerError(f"tracker answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        raise TrackerError(f"tracker {url}: {e or type(e).__name__}") from None
    return parse_response(body)

"""The tracker server: syncer's JSON `POST /announce` and the BitTorrent HTTP tracker protocol
(BEP 3 `GET /announce`, BEP 23 compact peers, BEP 48 `GET /scrape`) over one peer store.

The source IP is always the connection's; peers are keyed by ip:port. Memory is bounded and fair
per source (peerstore.py: caps on swarms, entries, peers per swarm and per source in a swarm, so
one address cannot evict others), entries expire 2 x interval + 30 s after their last announce,
each source (IPv6: per /64) is rate limited, and malformed requests get a bencoded
`failure reason` (GET) or a JSON error (POST) — never a crash. Many source addresses can still
announce much; what they can cost is bounded by the caps, not by their number.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import struct
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from syncer.codec import bencode
from syncer.deviceid import DeviceId
from syncer.discovery.peerstore import IpRateLimit, PeerEntry, PeerStore
from syncer.errors import InvalidDeviceId, SyncerError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60
MAX_NUMWANT = 200
DEFAULT_NUMWANT = 50
MAX_BODY = 4096
EVENTS = {"started", "stopped", "completed", "null", "", None}


class BadRequest(Exception):
    pass


def parse_query(raw: str) -> dict[str, bytes]:
    """Raw query string -> name -> raw bytes (BEP 3 values are percent-encoded binary)."""
    out: dict[str, bytes] = {}
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.setdefault(k, unquote_to_bytes(v.replace("+", " ")))
    return out


def _int(q: dict[str, bytes], name: str, default: int | None = None) -> int:
    raw = q.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing {name}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"invalid {name}") from None


def _compact(peers: list[PeerEntry]) -> tuple[bytes, bytes]:
    v4, v6 = [], []
    for p in peers:
        ip = ipaddress.ip_address(p.ip)
        if ip.version == 4:
            v4.append(ip.packed + struct.pack(">H", p.port))
        else:
            v6.append(ip.packed + struct.pack(">H", p.port))
    return b"".join(v4), b"".join(v6)


class TrackerServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: int = DEFAULT_INTERVAL,
        max_swarms: int = 100_000,
        max_peers: int = 200,
        max_per_source: int = 8,
        max_entries: int = 200_000,
        rate: float = 50.0,
        burst: float = 200.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.host, self.port, self.interval = host, port, interval
        self.store = PeerStore(
            ttl=2 * interval + 30,
            max_swarms=max_swarms,
            max_peers=max_peers,
            max_per_source=max_per_source,
            max_entries=max_entries,
        )
        self.limiter = IpRateLimit(rate, burst)
        self.clock = clock
        self._runner: web.AppRunner | None = None
        self.announces = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.post("/announce", self.post_announce),
                web.get("/announce", self.get_announce),
                web.get("/scrape", self.scrape),
            ]
        )
        return app

    async def start(self) -> tuple[str, int]:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise SyncerError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self.host, self.port = self._runner.addresses[0][:2]  # the one site's socket
        return self.host, self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _ip(self, request: web.Request) -> str:
        ip = request.remote or "0.0.0.0"
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if addr.version == 6 and addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(addr)

    # --- syncer JSON ---------------------------------------------------------------------
    async def post_announce(self, request: web.Request) -> web.Response:
        now = self.clock()
        ip = self._ip(request)
        if not self.limiter.allow(ip, now):
            return web.json_response({"error": "rate limited, retry later"}, status=429)
        try:
            body = await request.read()
            data = json.loads(body)
            if not isinstance(data, dict):
                raise BadRequest("body must be a JSON object")
            info_hash = bytes.fromhex(str(data.get("info_hash", "")))
            if len(info_hash) != 20:
                raise BadRequest("info_hash must be 40 hex characters")
            device = str(DeviceId.parse(str(data.get("device_id", ""))))
            port = data.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise BadRequest("port must be an integer 1..65535")
            event = data.get("event")
            if event not in EVENTS:
                raise BadRequest("event must be started, stopped, completed or null")
        except (ValueError, BadRequest, InvalidDeviceId) as e:
            return web.json_response({"error": str(e) or "malformed request"}, status=400)
        self.announces += 1
        if event == "stopped":
            self.store.remove(info_hash, ip, port)
        else:
            self.store.announce(info_hash, PeerEntry(ip, port, device, b"", now, event == "completed"))
        peers = self.store.peers(info_hash, now, DEFAULT_NUMWANT, exclude=(ip, port))
        return web.json_response(
            {"interval": self.interval, "peers": [{"ip": p.ip, "port": p.port, "device_id": p.device_id} for p in peers]}
        )

    # --- BitTorrent HTTP tracker -------------------------------------------------------------
    def _fail(self, reason: str) -> web.Response:
        return web.Response(body=bencode.encode({"failure reason": reason}), content_type="text/plain")

    async def get_announce(self, request: web.Request) -> web.Response:
        now = self.clock()
        ip = self._ip(request)
        if not self.limiter.allow(ip, now):
            return self._fail("rate limited, retry later")
        try:
            q = parse_query(request.rel_url.raw_query_string)
            info_hash = q.get("info_hash", b"")
            peer_id = q.get("peer_id", b"")
            if len(info_hash) != 20:
                raise BadRequest("invalid info_hash")
            if len(peer_id) != 20:
                raise BadRequest("invalid peer_id")
            port = _int(q, "port")
            if not 0 < port < 65536:
                raise BadRequest("invalid port")
            event = q.get("event", b"").decode("ascii", "replace")
            if event not in EVENTS:
                raise BadRequest("invalid event")
            numwant = max(0, min(MAX_NUMWANT, _int(q, "numwant", DEFAULT_NUMWANT)))
            compact = q.get("compact", b"1") != b"0"
            left = _int(q, "left", 1)
        except BadRequest as e:
            return self._fail(str(e))
        self.announces += 1
        if event == "stopped":
            self.store.remove(info_hash, ip, port)
        else:
            self.store.announce(info_hash, PeerEntry(ip, port, "", peer_id, now, left == 0))
        peers = self.store.peers(info_hash, now, numwant, exclude=(ip, port))
        complete, incomplete = self.store.counts(info_hash, now)
        resp: dict[str, Any] = {"interval": self.interval, "complete": complete, "incomplete": incomplete}
        if compact:
            v4, v6 = _compact(peers)
            resp["peers"] = v4
            if v6:
                resp["peers6"] = v6
        else:
            resp["peers"] = [{"peer id": p.peer_id, "ip": p.ip, "port": p.port} for p in peers]
        return web.Response(body=bencode.encode(resp), content_type="text/plain")

    async def scrape(self, request: web.Request) -> web.Response:
        now = self.clock()
        if not self.limiter.allow(self._ip(request), now):
            return self._fail("rate limited, retry later")
        hashes = [unquote_to_bytes(v) for k, _, v in (p.partition("=") for p in request.rel_url.raw_query_string.split("&")) if k == "info_hash"]
        files = {}
        for h in hashes[:100]:
            if len(h) == 20:
                complete, incomplete = self.store.counts(h, now)
                files[h] = {"complete": complete, "incomplete": incomplete, "downloaded": 0}
        return web.Response(body=bencode.encode({"files": files}), content_type="text/plain")

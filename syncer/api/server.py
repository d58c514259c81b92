"""The daemon's control API (aiohttp), on loopback, token-authenticated.

The token lives in a 0600 file in the state dir; the CLI reads it (client.py). Every request needs
`Authorization: Bearer TOKEN`. The app only translates HTTP to calls on a `Control` object the
daemon provides, so it holds no state of its own.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from syncer.errors import SyncerError

log = logging.getLogger(__name__)


class Control(Protocol):
    def status(self) -> dict[str, Any]: ...
    def devices(self) -> list[dict[str, Any]]: ...
    def pending(self) -> dict[str, Any]: ...
    def folders(self) -> list[dict[str, Any]]: ...
    async def reload(self) -> None: ...
    async def scan(self, folder: str | None) -> dict[str, Any]: ...
    async def resume(self, folder: str) -> dict[str, Any]: ...
    def shutdown(self) -> None: ...
    def bt_status(self) -> dict[str, Any]: ...
    def bt_publications(self) -> list[dict[str, Any]]: ...
    async def bt_publish(self, info_hash: str) -> dict[str, Any]: ...
    async def bt_unpublish(self, info_hash: str) -> dict[str, Any]: ...
    async def bt_dht_get_peers(self, info_hash: bytes) -> list[tuple[str, int]]: ...
    async def bt_dht_announce(self, info_hash: bytes, port: int) -> int: ...


def load_or_create_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)
    return token


def make_app(control: Control, token: str) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            return web.json_response({"error": "missing or bad API token"}, status=401)
        try:
            return await handler(request)
        except SyncerError as e:
            return web.json_response({"error": str(e)}, status=400)

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({"ping": "pong"})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(control.status())

    async def devices(_: web.Request) -> web.Response:
        return web.json_response(control.devices())

    async def pending(_: web.Request) -> web.Response:
        return web.json_response(control.pending())

    async def folders(_: web.Request) -> web.Response:
        return web.json_response(control.folders())

    async def reload(_: web.Request) -> web.Response:
        await control.reload()
        return web.json_response({"ok": True})

    async def scan(request: web.Request) -> web.Response:
        return web.json_response(await control.scan(request.query.get("folder")))

    async def resume(request: web.Request) -> web.Response:
        return web.json_response(await control.resume(request.query.get("folder", "")))

    async def shutdown(_: web.Request) -> web.Response:
        control.shutdown()
        return web.json_response({"ok": True})

    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise SyncerError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise SyncerError("the request body must be a JSON object")
        return body

    def _info_hash(body: dict[str, Any]) -> str:
        ih = body.get("info_hash")
        if not isinstance(ih, str) or len(ih) != 40:
            raise SyncerError("info_hash must be 40 hex digits")
        try:
            bytes.fromhex(ih)
        except ValueError:
            raise SyncerError("info_hash must be 40 hex digits") from None
        return ih.lower()

    async def bt_status(_: web.Request) -> web.Response:
        return web.json_response(control.bt_status())

    async def bt_publications(_: web.Request) -> web.Response:
        return web.json_response(control.bt_publications())

    async def bt_publish(request: web.Request) -> web.Response:
        return web.json_response(await control.bt_publish(_info_hash(await _json_body(request))))

    async def bt_unpublish(request: web.Request) -> web.Response:
        return web.json_response(await control.bt_unpublish(_info_hash(await _json_body(request))))

    async def bt_dht_get_peers(request: web.Request) -> web.Response:
        ih = bytes.fromhex(_info_hash(await _json_body(request)))
        return web.json_response({"peers": [list(p) for p in await control.bt_dht_get_peers(ih)]})

    async def bt_dht_announce(request: web.Request) -> web.Response:
        body = await _json_body(request)
        ih, port = bytes.fromhex(_info_hash(body)), body.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise SyncerError("port must be 1..65535")
        return web.json_response({"nodes": await control.bt_dht_announce(ih, port)})

    app = web.Application(middlewares=[auth], client_max_size=1 << 20)
    app.add_routes(
        [
            web.get("/rest/ping", ping),
            web.get("/rest/status", status),
            web.get("/rest/devices", devices),
            web.get("/rest/pending", pending),
            web.get("/rest/folders", folders),
            web.post("/rest/reload", reload),
            web.post("/rest/scan", scan),
            web.post("/rest/resume", resume),
            web.post("/rest/shutdown", shutdown),
            web.get("/rest/bt/status", bt_status),
            web.get("/rest/bt/publications", bt_publications),
            web.post("/rest/bt/publish", bt_publish),
            web.post("/rest/bt/unpublish", bt_unpublish),
            web.post("/rest/bt/dht/get_peers", bt_dht_get_peers),
            web.post("/rest/bt/dht/announce", bt_dht_announce),
        ]
    )
    return app


class ApiServer:
    def __init__(self, control: Control, token: str) -> None:
        self._runner = web.AppRunner(make_app(control, token), access_log=None)
        self.address = ""

    async def start(self, host: str, port: int) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise SyncerError(f"cannot listen for the control API on {host}:{port}: {e.strerror or e}") from None
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        h, p = sock.getsockname()[:2]
        self.address = f"http://{h if ':' not in h else f'[{h}]'}:{p}"
        return self.address

    async def stop(self) -> None:
        await self._runner.cleanup()

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
    invites: Any  # syncer.invite.service.InviteService
    async def join(self, text: str, timeout: float) -> dict[str, Any]: ...


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

    async def invites(_: web.Request) -> web.Response:
        return web.json_response(control.invites.listing())

    async def invite(request: web.Request) -> web.Response:
        b = await _json_body(request)
        return web.json_response(
            control.invites.create(
                str(b.get("folder", "")), bool(b.get("read_only", False)),
                _number(b, "expires_s", 86400.0), int(_number(b, "uses", 1)),
            )
        )

    async def revoke(request: web.Request) -> web.Response:
        b = await _json_body(request)
        return web.json_response(control.invites.revoke(int(_number(b, "id", 0))))

    async def join(request: web.Request) -> web.Response:
        b = await _json_body(request)
        return web.json_response(await control.join(str(b.get("text", "")), _number(b, "timeout", 60.0)))

    async def shutdown(_: web.Request) -> web.Response:
        control.shutdown()
        return web.json_response({"ok": True})

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
            web.get("/rest/invites", invites),
            web.post("/rest/invites", invite),
            web.post("/rest/invites/revoke", revoke),
            web.post("/rest/join", join),
        ]
    )
    return app


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise SyncerError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise SyncerError("the request body must be a JSON object")
    return body


def _number(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SyncerError(f"{key} must be a number")
    return float(v)


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

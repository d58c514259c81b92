"""The daemon's control API and web UI (aiohttp, embedded in the daemon's loop).

Who may call it is decided in `guard` (see auth.py): the Host header first (DNS rebinding),
then a bearer token (scripts, the CLI: the token lives in a 0600 file in the state dir) or a
browser session cookie plus, for anything but GET/HEAD, the session's CSRF header. The static
web app and the login endpoints are the only things served without either.

Handlers only translate HTTP to calls on the `DaemonControl` (control.py). To add endpoints,
add a method to `Handlers` and a line to `ROUTES`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from syncer.api import auth
from syncer.errors import DaemonError, SyncerError
from syncer.events import EVENT_TYPES, parse_types

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
WEB_ROOT = Path(str(resources.files("syncer") / "web"))
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/index.html", "/login", "/favicon.ico"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


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


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=status)


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json(loads=json.loads)
    except ValueError:
        raise SyncerError("the request body is not valid JSON") from None


class Handlers:
    """One method per endpoint; `c` is the DaemonControl."""

    def __init__(self, control: Any) -> None:
        self.c = control

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"ping": "pong"})

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.status())

    async def devices(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.devices())

    async def add_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.add_device(await _body(r)))

    async def edit_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_device(r.match_info["id"], await _body(r)))

    async def remove_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.remove_device(r.match_info["id"]))

    async def pause_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_device(r.match_info["id"], {"paused": True}))

    async def resume_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_device(r.match_info["id"], {"paused": False}))

    async def folders(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.folders())

    async def add_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.add_folder(await _body(r)))

    async def edit_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_folder(r.match_info["id"], await _body(r)))

    async def remove_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.remove_folder(r.match_info["id"]))

    async def pause_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_folder(r.match_info["id"], {"paused": True}))

    async def resume_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.edit_folder(r.match_info["id"], {"paused": False}))

    async def need(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.need(r.match_info["id"], r.query.get("page"), r.query.get("perpage"), r.query.get("path", "")))

    async def conflicts(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.conflicts(r.match_info["id"], r.query.get("page"), r.query.get("perpage")))

    async def versions(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.versions(r.match_info["id"], r.query.get("page"), r.query.get("perpage")))

    async def restore(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.restore(r.match_info["id"], await _body(r)))

    async def pending(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.pending())

    async def accept_device(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.accept_device(r.match_info["id"], await _body(r)))

    async def dismiss_device(self, r: web.Request) -> web.Response:
        return web.json_response(self.c.dismiss_device(r.match_info["id"]))

    async def accept_folder(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.accept_folder(r.match_info["id"], await _body(r)))

    async def dismiss_folder(self, r: web.Request) -> web.Response:
        return web.json_response(self.c.dismiss_folder(r.match_info["id"]))

    async def config(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.config())

    async def set_config(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.set_config(await _body(r)))

    async def events(self, r: web.Request) -> web.Response:
        try:
            since = int(r.query.get("since", "0"))
            timeout = float(r.query.get("timeout", "60"))
            limit = int(r.query.get("limit", "1000"))
        except ValueError:
            raise SyncerError("since, timeout and limit must be numbers") from None
        types = parse_types(r.query.get("events", ""))
        if types and not types <= EVENT_TYPES:
            raise SyncerError("unknown event types: " + ", ".join(sorted(types - EVENT_TYPES)))
        return web.json_response(await self.c.events_wait(since, types, timeout, limit))

    async def reload(self, _: web.Request) -> web.Response:
        await self.c.daemon.reload()
        return web.json_response({"ok": True})

    async def scan(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.daemon.scan(r.query.get("folder")))

    async def resume(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.daemon.resume(r.query.get("folder", "")))

    async def shutdown(self, _: web.Request) -> web.Response:
        self.c.daemon.shutdown()
        return web.json_response({"ok": True})

    async def qr(self, _: web.Request) -> web.Response:
        return web.Response(text=self.c.qr_svg(), content_type="image/svg+xml")

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self.c.metrics(), content_type="text/plain", headers={"X-Prometheus-Format": "0.0.4"})

    async def login_url(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.login_url())

    async def session(self, r: web.Request) -> web.Response:
        s: auth.Session | None = r.get("session")
        return web.json_response(
            {"csrf": s.csrf if s else None, "csrf_header": auth.CSRF_HEADER, "device_id": str(self.c.daemon.device_id)}
        )

    async def logout(self, r: web.Request) -> web.Response:
        s: auth.Session | None = r.get("session")
        resp = web.json_response({"ok": True})
        if s is not None:
            self.c.sessions.end(s.id)
            resp.del_cookie(cookie_name(r))
        return resp

    # --- browser login (public) -------------------------------------------------------------
    async def login_link(self, r: web.Request) -> web.StreamResponse:
        token = r.query.get("token", "")
        s = self.c.sessions.redeem(token, time.monotonic()) if token else None
        if s is None:
            return web.Response(
                status=403,
                content_type="text/html",
                text="<!doctype html><meta charset=utf-8><title>syncer</title><p>This login link was already "
                "used or has expired. Run <code>syncer gui</code> for a new one.</p>",
            )
        resp = web.HTTPSeeOther("/")
        _set_cookie(resp, r, s)
        return resp

    async def login_password(self, r: web.Request) -> web.Response:
        body = await _body(r)
        given = body.get("password") if isinstance(body, dict) else None
        password = self.c.daemon.config.get("api.password")
        now = time.monotonic()
        if not password:
            return _error(403, "no password is set: log in with the link `syncer gui` prints")
        if self.c.sessions.locked_out(now):
            return _error(429, "too many failed logins; wait a minute")
        s = self.c.sessions.login_password(given if isinstance(given, str) else "", password, now)
        if s is None:
            return _error(403, "wrong password")
        resp = web.json_response({"ok": True})
        _set_cookie(resp, r, s)
        return resp

    async def index(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ROOT / "index.html")

    # --- folder types, selective sync, ignore rules ------------------------------------------
    async def override(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.override(r.match_info["id"], await _json_object(r)))

    async def revert(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.revert(r.match_info["id"], await _json_object(r)))

    async def select(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.select(r.match_info["id"], await _json_object(r), True))

    async def unselect(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.select(r.match_info["id"], await _json_object(r), False))

    async def resolve(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.resolve(r.match_info["id"], await _json_object(r)))

    async def ignore_test(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.ignore_test(r.match_info["id"], r.query.get("path", "")))

    # --- invites (syncer/invite/) ---------------------------------------------------------
    async def invites(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.daemon.invites.listing())

    async def invite(self, r: web.Request) -> web.Response:
        b = await _json_object(r)
        return web.json_response(
            self.c.daemon.invites.create(
                str(b.get("folder", "")), bool(b.get("read_only", False)),
                _number(b, "expires_s", 86400.0), int(_number(b, "uses", 1)),
            )
        )

    async def revoke_invite(self, r: web.Request) -> web.Response:
        b = await _json_object(r)
        return web.json_response(self.c.daemon.invites.revoke(int(_number(b, "id", 0))))

    async def join(self, r: web.Request) -> web.Response:
        b = await _json_object(r)
        return web.json_response(await self.c.daemon.join(str(b.get("text", "")), _number(b, "timeout", 60.0)))

    # --- BitTorrent publications (the daemon's seeding service) --------------------------------
    async def bt_status(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.daemon.bt_status())

    async def bt_publications(self, _: web.Request) -> web.Response:
        return web.json_response(self.c.daemon.bt_publications())

    async def bt_publish(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.daemon.bt_publish(_info_hash(await _json_object(r))))

    async def bt_unpublish(self, r: web.Request) -> web.Response:
        return web.json_response(await self.c.daemon.bt_unpublish(_info_hash(await _json_object(r))))

    async def bt_dht_get_peers(self, r: web.Request) -> web.Response:
        ih = bytes.fromhex(_info_hash(await _json_object(r)))
        return web.json_response({"peers": [list(p) for p in await self.c.daemon.bt_dht_get_peers(ih)]})

    async def bt_dht_announce(self, r: web.Request) -> web.Response:
        body = await _json_object(r)
        ih, port = bytes.fromhex(_info_hash(body)), body.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise SyncerError("port must be 1..65535")
        return web.json_response({"nodes": await self.c.daemon.bt_dht_announce(ih, port)})


async def _json_object(request: web.Request) -> dict[str, Any]:
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


def _info_hash(body: dict[str, Any]) -> str:
    ih = body.get("info_hash")
    if not isinstance(ih, str) or len(ih) != 40:
        raise SyncerError("info_hash must be 40 hex digits")
    try:
        bytes.fromhex(ih)
    except ValueError:
        raise SyncerError("info_hash must be 40 hex digits") from None
    return ih.lower()


def cookie_name(r: web.Request) -> str:
    # cookies are shared by all ports of a host: one name per daemon (port) keeps two daemons on
    # one machine from logging each other out
    port = r.transport.get_extra_info("sockname")[1] if r.transport is not None else 0
    return f"syncer_session_{port}"


def _set_cookie(resp: web.StreamResponse, r: web.Request, s: auth.Session) -> None:
    resp.set_cookie(cookie_name(r), s.id, httponly=True, samesite="Strict", path="/", max_age=int(auth.SESSION_IDLE_TTL))


# (method, path, handler name, auth): "public" needs nothing, "any" a token or a session
ROUTES: list[tuple[str, str, str, str]] = [
    ("GET", "/", "index", "public"),
    ("GET", "/index.html", "index", "public"),
    ("GET", "/login", "login_link", "public"),
    ("POST", "/login", "login_password", "public"),
    ("GET", "/rest/ping", "ping", "any"),
    ("GET", "/rest/status", "status", "any"),
    ("GET", "/rest/devices", "devices", "any"),
    ("POST", "/rest/devices", "add_device", "any"),
    ("PATCH", "/rest/devices/{id}", "edit_device", "any"),
    ("DELETE", "/rest/devices/{id}", "remove_device", "any"),
    ("POST", "/rest/devices/{id}/pause", "pause_device", "any"),
    ("POST", "/rest/devices/{id}/resume", "resume_device", "any"),
    ("GET", "/rest/folders", "folders", "any"),
    ("POST", "/rest/folders", "add_folder", "any"),
    ("PATCH", "/rest/folders/{id}", "edit_folder", "any"),
    ("DELETE", "/rest/folders/{id}", "remove_folder", "any"),
    ("POST", "/rest/folders/{id}/pause", "pause_folder", "any"),
    ("POST", "/rest/folders/{id}/resume", "resume_folder", "any"),
    ("GET", "/rest/folders/{id}/need", "need", "any"),
    ("POST", "/rest/folders/{id}/override", "override", "any"),
    ("POST", "/rest/folders/{id}/revert", "revert", "any"),
    ("POST", "/rest/folders/{id}/select", "select", "any"),
    ("POST", "/rest/folders/{id}/unselect", "unselect", "any"),
    ("GET", "/rest/folders/{id}/ignore", "ignore_test", "any"),
    ("POST", "/rest/folders/{id}/conflicts/resolve", "resolve", "any"),
    ("GET", "/rest/folders/{id}/conflicts", "conflicts", "any"),
    ("GET", "/rest/folders/{id}/versions", "versions", "any"),
    ("POST", "/rest/folders/{id}/versions/restore", "restore", "any"),
    ("GET", "/rest/pending", "pending", "any"),
    ("POST", "/rest/pending/devices/{id}/accept", "accept_device", "any"),
    ("DELETE", "/rest/pending/devices/{id}", "dismiss_device", "any"),
    ("POST", "/rest/pending/folders/{id}/accept", "accept_folder", "any"),
    ("DELETE", "/rest/pending/folders/{id}", "dismiss_folder", "any"),
    ("GET", "/rest/config", "config", "any"),
    ("PATCH", "/rest/config", "set_config", "any"),
    ("GET", "/rest/events", "events", "any"),
    ("POST", "/rest/reload", "reload", "any"),
    ("POST", "/rest/scan", "scan", "any"),
    ("POST", "/rest/resume", "resume", "any"),
    ("POST", "/rest/shutdown", "shutdown", "any"),
    ("GET", "/rest/qr.svg", "qr", "any"),
    ("GET", "/rest/gui/session", "session", "any"),
    ("POST", "/rest/gui/login-url", "login_url", "any"),
    ("POST", "/rest/gui/logout", "logout", "any"),
    ("GET", "/metrics", "metrics", "any"),
    ("GET", "/rest/invites", "invites", "any"),
    ("POST", "/rest/invites", "invite", "any"),
    ("POST", "/rest/invites/revoke", "revoke_invite", "any"),
    ("POST", "/rest/join", "join", "any"),
    ("GET", "/rest/bt/status", "bt_status", "any"),
    ("GET", "/rest/bt/publications", "bt_publications", "any"),
    ("POST", "/rest/bt/publish", "bt_publish", "any"),
    ("POST", "/rest/bt/unpublish", "bt_unpublish", "any"),
    ("POST", "/rest/bt/dht/get_peers", "bt_dht_get_peers", "any"),
    ("POST", "/rest/bt/dht/announce", "bt_dht_announce", "any"),
]


def make_app(control: Any, token: str) -> web.Application:
    expected = f"Bearer {token}".encode()
    public = {(m, p) for m, p, _, a in ROUTES if a == "public"}

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        allowed = control.daemon.config.get("api.allowed_hosts")
        if not auth.host_allowed(request.headers.get("Host"), allowed):
            resp: web.StreamResponse = _error(403, "Host header not allowed (DNS rebinding guard; see api.allowed_hosts)")
        elif (request.method, request.path) in public or request.path.startswith(PUBLIC_PREFIXES):
            resp = await _call(handler, request)
        else:
            resp = await _authorized(request, handler)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if request.path.startswith("/rest/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    async def _authorized(request: web.Request, handler: Any) -> web.StreamResponse:
        got = request.headers.get("Authorization")
        if got is not None:
            if not hmac.compare_digest(got.encode(), expected):
                return _error(401, "missing or bad API token")
            return await _call(handler, request)
        sid = request.cookies.get(cookie_name(request))
        s = control.sessions.get(sid, time.monotonic()) if sid else None
        if s is None:
            return _error(401, "log in first: run `syncer gui` for a login link, or send the API token")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not auth.csrf_ok(s, request.headers.get(auth.CSRF_HEADER)):
            return _error(403, f"missing or bad {auth.CSRF_HEADER} header")
        request["session"] = s
        return await _call(handler, request)

    async def _call(handler: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason)
        except SyncerError as e:
            from syncer.api.control import NotFound

            return _error(404 if isinstance(e, NotFound) else 400, str(e))

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    h = Handlers(control)
    app.add_routes([web.route(m, p, getattr(h, name)) for m, p, name, _ in ROUTES])
    app.add_routes([web.static("/static", WEB_ROOT / "static", follow_symlinks=False)])
    return app


def check_listen(host: str, password: str) -> None:
    """Beyond loopback the API needs `api.password` (anyone on the network could reach it)."""
    if not auth.is_loopback(host.strip("[]")) and not password:
        raise DaemonError(
            f"refusing to serve the control API on {host}, beyond loopback, without a password: "
            "set one with `syncer config set api.password ...` or use 127.0.0.1"
        )


class ApiServer:
    def __init__(self, control: Any, token: str) -> None:
        self._runner = web.AppRunner(make_app(control, token), access_log=None)
        self.address = ""

    async def start(self, host: str, port: int, password: str = "") -> str:
        check_listen(host, password)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise SyncerError(f"cannot listen for the control API on {host}:{port}: {e.strerror or e}") from None
        h, p = self._runner.addresses[0][:2]  # the one site's socket
        # where this machine's clients and browsers reach it (a wildcard bind means loopback too)
        h = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(h, h)
        self.address = f"http://{h if ':' not in h else f'[{h}]'}:{p}"
        return self.address

    async def stop(self) -> None:
        await self._runner.cleanup()

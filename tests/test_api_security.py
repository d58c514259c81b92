"""Who may use the control API of a real daemon: token, one-time login links, session cookie
with CSRF header, the Host check, and the password required beyond loopback."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from syncer.api import auth
from tests.apihelp import Api
from tests.daemons import cluster, wait_until
from tests.helpers import SYNCER


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster(tmp_path_factory.mktemp("sec"), "a") as (a,):
        a.start()
        yield a


def login(a, api: Api) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Log in like a browser through `syncer gui`'s link: (cookie header, csrf token)."""
    url = a.syncer("gui", check=True).stdout.strip()
    path = url[len(api.address):]
    status, _, headers = api.request("GET", path, token=False)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";")[0]
    session = api.json("GET", "/rest/gui/session", token=False, headers={"Cookie": pair})
    return pair, session["csrf"]


def test_no_token_or_cookie_is_401(node) -> None:  # type: ignore[no-untyped-def]
    api = Api(node)
    for method, path in [("GET", "/rest/status"), ("GET", "/metrics"), ("POST", "/rest/scan"), ("GET", "/rest/events?timeout=0")]:
        assert api.request(method, path, token=False)[0] == 401, path
    assert api.request("GET", "/rest/status", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert api.request("GET", "/rest/status", token=False, headers={"Cookie": "syncer_session_1=forged"})[0] == 401
    # the web app itself is public (it holds nothing); its data is not
    status, body, headers = api.request("GET", "/", token=False)
    assert status == 200 and "<title>syncer</title>" in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_cookie_needs_csrf_header_for_changes(node) -> None:  # type: ignore[no-untyped-def]
    api = Api(node)
    cookie, csrf = login(node, api)
    assert api.json("GET", "/rest/status", token=False, headers={"Cookie": cookie})["device_id"] == node.device_id
    assert api.request("POST", "/rest/scan", token=False, headers={"Cookie": cookie})[0] == 403
    assert api.request("POST", "/rest/scan", token=False, headers={"Cookie": cookie, auth.CSRF_HEADER: "wrong"})[0] == 403
    assert api.request("POST", "/rest/scan", token=False, headers={"Cookie": cookie, auth.CSRF_HEADER: csrf})[0] == 200
    # logging out ends the session
    assert api.request("POST", "/rest/gui/logout", token=False, headers={"Cookie": cookie, auth.CSRF_HEADER: csrf})[0] == 200
    assert api.request("GET", "/rest/status", token=False, headers={"Cookie": cookie})[0] == 401


def test_foreign_host_header_is_403(node) -> None:  # type: ignore[no-untyped-def]
    api = Api(node)
    for host in ("evil.example", "evil.example:8384", "127.0.0.1.evil.example", "192.0.2.1"):
        assert api.request("GET", "/rest/status", headers={"Host": host})[0] == 403, host
        assert api.request("GET", "/", token=False, headers={"Host": host})[0] == 403, host
    for host in ("localhost:1", "127.0.0.1", "[::1]:8384", "app.localhost"):
        assert api.request("GET", "/rest/ping", headers={"Host": host})[0] == 200, host
    # configured names are let in
    node.syncer("config", "set", "api.allowed_hosts", "sync.example.net", check=True)
    try:
        assert api.request("GET", "/rest/ping", headers={"Host": "sync.example.net:8384"})[0] == 200
        assert api.request("GET", "/rest/ping", headers={"Host": "evil.example"})[0] == 403
    finally:
        node.syncer("config", "set", "api.allowed_hosts", "", check=True)


def test_one_time_url_used_twice_is_refused(node) -> None:  # type: ignore[no-untyped-def]
    api = Api(node)
    url = node.syncer("gui", check=True).stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[\w-]+", url)
    path = url[len(api.address):]
    assert api.request("GET", path, token=False)[0] == 303
    status, body, headers = api.request("GET", path, token=False)
    assert status == 403 and "already used" in body and "Set-Cookie" not in headers
    assert api.request("GET", "/login?token=made-up", token=False)[0] == 403


def test_password_login(node) -> None:  # type: ignore[no-untyped-def]
    api = Api(node)
    assert api.request("POST", "/login", {"password": "x"}, token=False)[0] == 403  # none set
    node.syncer("config", "set", "api.password", "correct horse", check=True)
    try:
        assert api.request("POST", "/login", {"password": "wrong"}, token=False)[0] == 403
        status, _, headers = api.request("POST", "/login", {"password": "correct horse"}, token=False)
        assert status == 200
        cookie = headers["Set-Cookie"].split(";")[0]
        assert api.request("GET", "/rest/status", token=False, headers={"Cookie": cookie})[0] == 200
        # the config endpoint never shows it
        assert api.json("GET", "/rest/config")["settings"]["api.password"] == "********"
    finally:
        node.syncer("config", "set", "api.password", "", check=True)


def test_sessions_are_pure_and_bounded() -> None:
    s = auth.Sessions()
    t = s.new_login_token(0.0)
    assert s.redeem(t, auth.LOGIN_TTL + 1) is None  # expired
    t = s.new_login_token(0.0)
    assert s.redeem(t, 1.0) is not None and s.redeem(t, 1.0) is None
    for i in range(auth.PASSWORD_FAILURES):
        assert s.login_password("bad", "good", float(i)) is None
    assert s.login_password("good", "good", 10.0) is None  # locked out for a while
    assert s.login_password("good", "good", 10.0 + auth.FAILURE_WINDOW) is not None
    tokens = [s.new_login_token(0.0) for _ in range(auth.MAX_LOGIN_TOKENS + 5)]
    assert s.redeem(tokens[0], 1.0) is None and s.redeem(tokens[-1], 1.0) is not None


def test_non_loopback_listen_without_password_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with cluster(tmp_path, "b") as (b,):
        t0 = time.monotonic()
        proc = subprocess.run(
            [*_cmd(), "run", "--api", "0.0.0.0:0", "--listen", "tcp://127.0.0.1:0"],
            env=_env(b), capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode != 0
        assert "refusing to serve the control API on 0.0.0.0" in proc.stderr and "api.password" in proc.stderr
        assert time.monotonic() - t0 < 30
        assert not (b.home / "api-address").exists()
        # with a password it starts, and the loopback name still works
        b.syncer("config", "set", "api.password", "s3cret", check=True)
        proc = subprocess.Popen([*_cmd(), "run", "--api", "0.0.0.0:0", "--listen", "tcp://127.0.0.1:0"], env=_env(b),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: (b.home / "api-address").exists(), 30, "daemon with password to start")
            assert Api(b).json("GET", "/rest/ping") == {"ping": "pong"}
        finally:
            proc.terminate()
            proc.wait(30)


def _cmd() -> list[str]:
    assert SYNCER
    return [SYNCER]


def _env(node) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(os.environ, SYNCER_HOME=str(node.home))

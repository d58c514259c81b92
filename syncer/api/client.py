"""The CLI's side of the control API: finds a running daemon through the files in the state
dir (address + token) and calls it with a plain blocking HTTP request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from syncer.errors import DaemonError
from syncer.paths import Paths

TIMEOUT = 30.0


class NotRunning(DaemonError):
    pass


class Refused(DaemonError):
    """The daemon answered with an error; `detail` is its one-line reason."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def api_endpoint(paths: Paths) -> tuple[str, str]:
    try:
        address = paths.api_address_file.read_text().strip()
        token = paths.api_token_file.read_text().strip()
    except FileNotFoundError:
        raise NotRunning("the syncer daemon is not running (start it with `syncer start`)") from None
    return address, token


def call(paths: Paths, method: str, path: str, body: Any = None, timeout: float = TIMEOUT) -> Any:
    address, token = api_endpoint(paths)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        address + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            msg = e.reason
        raise Refused(f"daemon refused {method} {path}: {msg}", str(msg)) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise NotRunning(f"the syncer daemon at {address} does not answer ({getattr(e, 'reason', e)})") from None


def is_running(paths: Paths) -> bool:
    try:
        call(paths, "GET", "/rest/ping", timeout=5)
        return True
    except DaemonError:
        return False


def reload_if_running(paths: Paths) -> None:
    """Tell a running daemon that config.toml changed; quietly nothing when none runs."""
    try:
        call(paths, "POST", "/rest/reload")
    except NotRunning:
        pass

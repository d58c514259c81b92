"""Plain HTTP calls to a daemon's control API for the API tests (urllib, so every header,
including Host and Cookie, is exactly what the test sets)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from syncer.api import client
from syncer.paths import get_paths
from tests.daemons import Node


class Api:
    def __init__(self, node: Node) -> None:
        self.address, self.token = client.api_endpoint(get_paths({"SYNCER_HOME": str(node.home)}))

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, token: bool = True, timeout: float = 60
    ) -> tuple[int, Any, dict[str, str]]:
        h = dict(headers or {})
        if token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.address + path, data=data, method=method, headers=h)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read(), e.headers), dict(e.headers)

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data, _ = self.request(method, path, body, **kw)
        assert status == 200, f"{method} {path}: {status} {data}"
        return data


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _decode(raw: bytes, headers: Any) -> Any:
    if "json" in (headers.get("Content-Type") or ""):
        return json.loads(raw or b"null")
    return raw.decode(errors="replace")

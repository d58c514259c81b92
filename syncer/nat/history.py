"""What the dialer tried per device and how it went (pure, bounded): for `syncer doctor`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from syncer.deviceid import DeviceId

PER_DEVICE = 12
MAX_DEVICES = 1000


@dataclass
class DialHistory:
    entries: dict[DeviceId, deque[dict[str, Any]]] = field(default_factory=dict)

    def record(self, device: DeviceId, kind: str, url: str, route: str, error: str | None, wall: float) -> None:
        q = self.entries.get(device)
        if q is None:
            if len(self.entries) >= MAX_DEVICES:
                self.entries.pop(next(iter(self.entries)))
            q = self.entries[device] = deque(maxlen=PER_DEVICE)
        q.append({"at": wall, "kind": kind, "address": url, "route": route, "result": "ok" if error is None else "failed", "error": (error or "")[:300]})

    def of(self, device: DeviceId) -> list[dict[str, Any]]:
        return list(self.entries.get(device, ()))

    def why_not_direct(self, device: DeviceId, connected_route: str | None, has_direct_addresses: bool) -> str:
        """One sentence for doctor."""
        if connected_route == "direct":
            return "connected directly"
        failed = [e for e in self.of(device) if e["route"] == "direct" and e["result"] == "failed"]
        if not has_direct_addresses:
            return "no direct address known (none configured, discovered, or announced by the device)"
        if failed:
            return f"direct attempts failed: {failed[-1]['error']}"
        return "direct addresses not tried yet"

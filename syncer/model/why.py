"""Why an item is not in sync (pure): one machine-readable reason and one sentence per needed
item, from its need row and what the folder runtime knows right now.

The reasons, first match wins: the folder is paused or stopped; the item is downloading or being
put in place; it is deliberately not fetched (not selected, ignored here, a send-only folder, a
receive-only folder's local change); its last attempt failed (disk reserve, permission, a name
this filesystem cannot hold, anything else: with when it is tried again); no connected device has
its version (and which devices do); the devices that have it choke us; a deletion waiting for
downloads; otherwise it is queued.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from syncer.index.needrow import NEED_DELETE, NEED_FILE, NeedRow

# need.skip: why an entry is deliberately not fetched
SKIP_NONE, SKIP_UNSELECTED, SKIP_IGNORED, SKIP_SEND_ONLY, SKIP_LOCAL_CHANGE = 0, 1, 2, 3, 4

SKIP_REASONS = {
    SKIP_UNSELECTED: ("not-selected", "not selected in this selective folder (`syncer select` fetches it)"),
    SKIP_IGNORED: ("ignored", "ignored here by .syncerignore (`syncer ignore test` names the rule)"),
    SKIP_SEND_ONLY: ("send-only", "this is a send-only folder: changes from other devices are not applied (`syncer override` makes ours win)"),
    SKIP_LOCAL_CHANGE: ("local-change", "changed here in a receive-only folder: kept as it is and not sent (`syncer revert` restores the other devices' version)"),
}


@dataclass(frozen=True)
class Facts:
    """What the runtime knows beyond the need row."""

    state: str  # the folder's state
    downloading: Callable[[str], bool]
    applying: Callable[[str], bool]
    connected: Collection[bytes]  # raw device ids
    choked_by: Collection[bytes]
    device_name: Callable[[bytes], str]
    now_wall: float


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


_ERRNO = re.compile(r"errno (\d+)")


def classify_error(error: str) -> str:
    e = error.lower()
    if "disk space" in e or "disk full" in e or "no space left" in e or "quota" in e:
        return "disk-reserve"
    if "permission denied" in e or "operation not permitted" in e or "read-only file system" in e:
        return "permission-denied"
    if "name too long" in e or "invalid argument" in e or "unsafe path" in e or "symlink" in e or "not a directory" in e or "illegal" in e:
        return "name-invalid"
    return "error"


def explain(row: NeedRow, facts: Facts) -> Reason:
    name = row.name
    if facts.state == "paused":
        return Reason("paused", "the folder is paused")
    if facts.state == "stopped":
        return Reason("stopped", "the folder is stopped (see its error)")
    if facts.downloading(name):
        return Reason("downloading", "downloading now")
    if facts.applying(name):
        return Reason("applying", "downloaded; being put in place")
    if row.skip in SKIP_REASONS:
        code, text = SKIP_REASONS[row.skip]
        return Reason(code, text)
    if row.error:
        code = classify_error(row.error)
        when = ""
        if row.retry_at > facts.now_wall:
            when = f"; trying again in {_duration(row.retry_at - facts.now_wall)}"
        return Reason(code, f"{row.error}{when}")
    holders = list(row.holders)
    if row.kind == NEED_FILE and row.size:
        connected = [h for h in holders if h in facts.connected]
        if not connected:
            who = ", ".join(facts.device_name(h) for h in holders[:5]) or "no known device"
            return Reason("no-source", f"no connected device has this version (it is on: {who})")
        if all(h in facts.choked_by for h in connected):
            return Reason("peer-choking", "the connected devices that have it are not sending to us right now (choked)")
    if row.kind == NEED_DELETE:
        return Reason("queued", "deleted on another device; the deletion follows once downloads are done")
    return Reason("queued", "queued: waiting for a download slot")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def errno_of(error: str) -> int | None:
    m = _ERRNO.search(error)
    return int(m.group(1)) if m else None



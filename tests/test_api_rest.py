"""The REST API of real daemons: folders and devices (add, edit, pause, resume, remove), pending
(accept, dismiss), config get/set, the need list with reasons, conflicts, versions (list,
restore, never through a symlink), /metrics, and the CLI going through the same endpoints."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from syncer.api import folderdata
from syncer.errors import FolderError
from tests.apihelp import Api
from tests.daemons import cluster, pair_all, wait_until
from tests.syncfix import share, wait_same

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("rest")
    with cluster(root, "a", "b") as (a, b):
        a.start()
        b.start()
        pair_all([a, b])
        wait_until(lambda: a.connected_to(b), 30, "a and b connected")
        yield root, a, b


def test_folder_lifecycle_and_need_reasons(pair) -> None:  # type: ignore[no-untyped-def]
    root, a, b = pair
    api_a, api_b = Api(a), Api(b)
    (root / "a1").mkdir()
    (root / "a1" / "one.txt").write_text("1")
    row = api_a.json("POST", "/rest/folders", {"path": str(root / "a1"), "id": "docs", "label": "Docs"})
    assert (row["id"], row["label"]) == ("docs", "Docs")
    # the first scan runs in the background (a big folder must not hold up the request)
    wait_until(lambda: api_a.json("GET", "/rest/folders")[0]["local_files"] == 1, 30, "the first scan")
    assert api_a.request("POST", "/rest/folders", {"path": str(root / "nope")})[0] == 400
    assert "does not exist" in api_a.request("POST", "/rest/folders", {"path": str(root / "nope")})[1]["error"]
    # b was offered the folder: accept it through the pending endpoint, into a new directory
    wait_until(lambda: any(f["folder_id"] == "docs" for f in api_b.json("GET", "/rest/pending")["folders"]), 30, "offer")
    api_b.json("POST", "/rest/pending/folders/docs/accept", {"path": str(root / "b1")})
    wait_same(root / "a1", root / "b1", 30)
    assert api_b.json("GET", "/rest/pending")["folders"] == []
    # pause b: what a adds next is needed, with the reason "paused"
    api_b.json("POST", "/rest/folders/docs/pause")
    (root / "a1" / "two.txt").write_text("2")
    a.syncer("scan", "docs", check=True)
    wait_until(lambda: api_b.json("GET", "/rest/folders/docs/need")["total"] == 1, 30, "need on b")
    need = api_b.json("GET", "/rest/folders/docs/need?page=1&perpage=10")
    assert need["items"][0]["name"] == "two.txt" and need["items"][0]["reason"] == "paused"
    assert api_b.json("GET", "/rest/folders")[0]["state"] == "paused"
    assert api_b.request("GET", "/rest/folders/docs/need?perpage=100000")[0] == 400
    assert api_b.request("GET", "/rest/folders/nope/need")[0] == 404
    api_b.json("POST", "/rest/folders/docs/resume")
    wait_same(root / "a1", root / "b1", 30)
    assert api_b.json("GET", "/rest/folders/docs/need")["total"] == 0
    # edit, then remove (the files stay)
    assert api_a.json("PATCH", "/rest/folders/docs", {"label": "Papers"})["label"] == "Papers"
    assert api_a.request("PATCH", "/rest/folders/docs", {"devices": "nobody"})[0] == 400
    api_b.json("DELETE", "/rest/folders/docs")
    assert [f["id"] for f in api_b.json("GET", "/rest/folders")] == []
    assert (root / "b1" / "two.txt").read_text() == "2"
    assert "docs" not in b.syncer("folders", "--json", check=True).stdout


@pytest.mark.slow
def test_devices_pending_and_pause(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, a, b = pair
    api_a = Api(a)
    with cluster(tmp_path, "c") as (c,):
        c.start()
        c.pair(a)  # c dials a, which does not know it: pending on a
        wait_until(lambda: api_a.json("GET", "/rest/pending")["devices"], 30, "pending device on a")
        assert api_a.json("GET", "/rest/pending")["devices"][0]["device_id"] == c.device_id
        api_a.json("DELETE", f"/rest/pending/devices/{c.device_id}")
        wait_until(lambda: api_a.json("GET", "/rest/pending")["devices"], 30, "c tries again")  # dismissed, it comes back when c retries
        row = api_a.json("POST", f"/rest/pending/devices/{c.device_id}/accept", {"name": "cee"})
        assert row["name"] == "cee"
        wait_until(lambda: a.connected_to(c), 30, "a accepted c")
        # pause: disconnected and not redialled; resume: connected again
        assert api_a.json("POST", f"/rest/devices/{c.device_id}/pause")["paused"] is True
        wait_until(lambda: not a.connected_to(c), 30, "paused device disconnected")
        assert not a.connected_to(c)
        api_a.json("POST", f"/rest/devices/{c.device_id}/resume")
        wait_until(lambda: a.connected_to(c), 30, "resumed device reconnected")
        assert api_a.json("PATCH", f"/rest/devices/{c.device_id}", {"addresses": [c.listen_url()]})["addresses"][0]["address"] == c.listen_url()
        assert api_a.request("PATCH", f"/rest/devices/{c.device_id}", {"addresses": ["ftp://x"]})[0] == 400
        api_a.json("DELETE", f"/rest/devices/{c.device_id}")
        assert c.device_id not in [d["device_id"] for d in api_a.json("GET", "/rest/devices")]
        assert api_a.request("POST", "/rest/devices", {"device_id": "not-an-id"})[0] == 400
        assert api_a.request("POST", "/rest/devices", {"device_id": a.device_id})[0] == 400


def test_config_get_set_and_cli_through_rest(pair) -> None:  # type: ignore[no-untyped-def]
    _, a, _ = pair
    api = Api(a)
    cfg = api.json("GET", "/rest/config")
    assert cfg["schema"]["limits.max_send_kbps"]["type"] == "int"
    out = api.json("PATCH", "/rest/config", {"limits.max_send_kbps": 500, "relays": []})
    assert out["settings"]["limits.max_send_kbps"] == 500
    status, body, _ = api.request("PATCH", "/rest/config", {"limits.max_send_kbps": -1, "watch.enabled": False})
    assert status == 400 and "must be >= 0" in body["error"]
    assert api.json("GET", "/rest/config")["settings"]["watch.enabled"] is True  # nothing of a bad edit is written
    # the CLI's config set goes through the daemon (which saves and reloads, emitting ConfigSaved)
    last = api.json("GET", "/rest/status")["last_event_id"]
    a.syncer("config", "set", "limits.max_send_kbps", "0", check=True)
    assert api.json("GET", "/rest/config")["settings"]["limits.max_send_kbps"] == 0
    assert api.json("GET", f"/rest/events?since={last}&timeout=5&events=ConfigSaved")


def test_conflicts_versions_and_restore(pair) -> None:  # type: ignore[no-untyped-def]
    root, a, b = pair
    api_a = Api(a)
    folder = root / "v"
    share(a, folder, "vers")
    (folder / "notes.txt").write_text("new")
    (folder / "notes.sync-conflict-20250102-030405-ABCDEFG.txt").write_text("theirs")
    versions = folder / ".syncer" / "versions"
    (versions / "sub").mkdir(parents=True)
    (versions / "notes~20250101-101010.txt").write_text("old")
    (versions / "sub" / "deep~20250101-101010-1.txt").write_text("deep old")
    a.syncer("scan", "vers", check=True)
    c = api_a.json("GET", "/rest/folders/vers/conflicts")
    assert [(i["copy"], i["name"], i["original"]) for i in c["items"]] == [("notes.sync-conflict-20250102-030405-ABCDEFG.txt", "notes.txt", "notes.txt")]
    v = api_a.json("GET", "/rest/folders/vers/versions")
    assert [(i["version"], i["name"]) for i in v["items"]] == [("notes~20250101-101010.txt", "notes.txt"), ("sub/deep~20250101-101010-1.txt", "sub/deep.txt")]
    assert v["items"][0]["time"] == 1735726210.0
    last = api_a.json("GET", "/rest/status")["last_event_id"]
    r = api_a.json("POST", "/rest/folders/vers/versions/restore", {"version": "notes~20250101-101010.txt"})
    assert r["restored"] == "notes.txt"
    assert (folder / "notes.txt").read_text() == "old"
    # the replaced file went to the trash can, and the change was scanned (so it syncs)
    assert any(p.read_text() == "new" for p in versions.glob("notes~*.txt"))
    ev = api_a.json("GET", f"/rest/events?since={last}&timeout=10&events=LocalChangeDetected")
    assert any(i["name"] == "notes.txt" for e in ev for i in e["data"]["items"])
    api_a.json("POST", "/rest/folders/vers/versions/restore", {"version": "sub/deep~20250101-101010-1.txt"})
    assert (folder / "sub" / "deep.txt").read_text() == "deep old"
    for bad in ("../../etc/passwd~20250101-101010", "/etc/x~20250101-101010", "nothing~20250101-101010.txt", "plain.txt"):
        assert api_a.request("POST", "/rest/folders/vers/versions/restore", {"version": bad})[0] == 400, bad


def test_restore_never_follows_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "f"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ".syncer" / "versions" / "d").mkdir(parents=True)
    (root / ".syncer" / "versions" / "d" / "x~20250101-101010.txt").write_text("v")
    os.symlink(outside, root / "d")  # a directory of the folder replaced by a link out of it
    with pytest.raises(FolderError, match="symlinks are not followed"):
        folderdata.restore_version(root, "d/x~20250101-101010.txt", 0.0)
    assert list(outside.iterdir()) == []
    (root / "d").unlink()
    os.symlink(outside, root / ".syncer" / "versions" / "e")
    with pytest.raises(FolderError):
        folderdata.restore_version(root, "e/y~20250101-101010.txt", 0.0)
    # the target itself a symlink: refused, the link's target untouched
    (root / "d").mkdir()
    (outside / "t.txt").write_text("keep")
    os.symlink(outside / "t.txt", root / "d" / "x.txt")
    with pytest.raises(FolderError, match="not a regular file"):
        folderdata.restore_version(root, "d/x~20250101-101010.txt", 0.0)
    assert (outside / "t.txt").read_text() == "keep"


def test_metrics(pair) -> None:  # type: ignore[no-untyped-def]
    root, a, b = pair
    # a folder of its own (the module's other tests may run on another xdist worker)
    (root / "met").mkdir(exist_ok=True)
    api = Api(a)
    if not any(f["id"] == "met" for f in api.json("GET", "/rest/folders")):
        api.json("POST", "/rest/folders", {"path": str(root / "met"), "id": "met"})
    wait_until(lambda: re.search(r'syncer_folder_scan_duration_seconds_count\{folder="met"\} [1-9]', api.request("GET", "/metrics")[1]), 30, "a scan counted")
    status, text, headers = api.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert f'syncer_device_connected{{device="{b.device_id}"}} 1' in text
    assert 'syncer_connections{transport="tcp"} 1' in text
    assert re.search(r'syncer_device_bytes_received_total\{device="[^"]+"\} \d+', text)
    assert re.search(r"^syncer_events_total \d+$", text, re.M) and "syncer_events_dropped_total 0" in text
    assert re.search(r'syncer_folder_scan_duration_seconds_count\{folder="met"\} [1-9]', text)
    # the exposition format: every sample follows its own family's TYPE line
    family = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert family and name.startswith(family), line

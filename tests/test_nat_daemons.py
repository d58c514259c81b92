"""Two real daemons on two private networks behind NAT routers, with `syncer relay` on the
"public" network: cone NATs sync over a punched QUIC connection, symmetric NATs through the relay
(asserted from `syncer status`), files byte-identical. Root only (network namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemons import wait_until
from tests.helpers import run_syncer
from tests.natlab.fixtures import natlab  # noqa: F401
from tests.natlab.lab import NatLab
from tests.syncfix import tree

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.timeout(240)]
FID = "natted-folder"
SYNCER = shutil.which("syncer") or sys.executable


def _setup(home: Path, relay: str, folder: Path) -> str:
    run_syncer(home, "id", check=True)
    for key, value in [
        ("discovery.tracker.enabled", "false"),
        ("discovery.dht.enabled", "false"),
        ("discovery.lan.enabled", "false"),
        ("nat.enabled", "true"),
        ("listen", "tcp://0.0.0.0:22000"),
        ("api.address", "127.0.0.1:0"),
    ]:
        run_syncer(home, "config", "set", key, value, check=True)
    run_syncer(home, "config", "set", "relays", relay, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    run_syncer(home, "share", str(folder), "--id", FID, check=True)
    return run_syncer(home, "id", check=True).stdout.strip()


def _status(lab: NatLab, node: str, home: Path) -> dict:
    p = lab.exec(node, [SYNCER, "status", "--json"], env={"SYNCER_HOME": str(home)})
    return json.loads(p.stdout) if p.returncode == 0 else {}


def _sync_behind_nats(lab: NatLab, tmp_path: Path) -> tuple[dict, dict]:
    relay = lab.start_relay(tmp_path / "relay-home")
    ha, hb = tmp_path / "home-a", tmp_path / "home-b"
    fa, fb = tmp_path / "A", tmp_path / "B"
    fa.mkdir()
    (fa / "photo.jpg").write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    (fa / "notes.txt").write_text("behind two NATs")
    ida, idb = _setup(ha, relay, fa), _setup(hb, relay, fb)
    run_syncer(ha, "pair", idb, check=True)  # no addresses: only the relay knows the way
    run_syncer(hb, "pair", ida, check=True)
    lab.popen("h1", [SYNCER, "run"], env={"SYNCER_HOME": str(ha), "SYNCER_LOG_LEVEL": "DEBUG"})
    lab.popen("h2", [SYNCER, "run"], env={"SYNCER_HOME": str(hb), "SYNCER_LOG_LEVEL": "DEBUG"})

    def row(node: str, home: Path, other: str) -> dict | None:
        st = _status(lab, node, home)
        return next((d for d in st.get("devices", []) if d["device_id"] == other and d["connected"]), None)

    wait_until(lambda: tree(fa) == tree(fb), 120, "folders identical across the NATs: " + lab.logs()[-2000:])
    # both sides' view, polled: one `syncer status` can fail or catch a moment between connections
    return wait_until(lambda: (ra := row("h1", ha, idb)) and (rb := row("h2", hb, ida)) and (ra, rb), 60, "both connected")


def test_cone_nats_sync_over_punched_quic(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    lab = natlab("cone")
    ra, rb = _sync_behind_nats(lab, tmp_path)
    assert ra.get("transport") == "quic (punched)" and rb.get("transport") == "quic (punched)", (ra, rb, lab.logs()[-3000:])
    assert ra["route"] == "punched"


def test_symmetric_nats_sync_through_relay(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    lab = natlab("symmetric")
    ra, rb = _sync_behind_nats(lab, tmp_path)
    assert ra.get("transport") == "relay" and rb.get("transport") == "relay", (ra, rb, lab.logs()[-3000:])

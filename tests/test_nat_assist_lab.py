"""Issue 13 in the network-namespace NAT lab, with real daemons and no `syncer relay` anywhere:
C on the lab's public network, A and B behind NAT routers, A and B knowing only C's address and
each other's device ID. Cone NATs: A and B sync directly over a hole C helped to punch. Symmetric
NATs: they sync through C as a relay, and a capture at C shows no plaintext. A STUN server in the
lab (on both public addresses) gives the reflexive address, and `syncer doctor --json` tells the
two NAT kinds apart. Root only (network namespaces)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemons import wait_until
from tests.helpers import run_syncer
from tests.natlab.fixtures import natlab  # noqa: F401
from tests.natlab.homes import make_home, pair
from tests.natlab.lab import LineReader, NatLab
from tests.syncfix import tree

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]
FID = "behind-nats"
SYNCER = shutil.which("syncer") or sys.executable
MARKER = b"PLAINTEXT-MARKER-that-must-never-cross-the-wire-in-clear-" * 4


def _configure(home: Path, listen: str, stun_servers: str) -> str:
    return make_home(home, {"nat.stun_servers": stun_servers, "listen": listen})


def _json(lab: NatLab, node: str, home: Path, *args: str) -> dict:
    p = lab.exec(node, [SYNCER, *args, "--json"], env={"SYNCER_HOME": str(home)})
    return json.loads(p.stdout) if p.returncode == 0 else {}


def _row(lab: NatLab, node: str, home: Path, other: str) -> dict:
    st = _json(lab, node, home, "status")
    return next((d for d in st.get("devices", []) if d["device_id"] == other), {})


def _three_devices(lab: NatLab, tmp: Path, content: bytes) -> tuple:
    pub = lab.addr.pub
    stun = LineReader(lab.popen("pub", [sys.executable, "-m", "syncer.net.stun", pub, lab.addr.pub2, "3478"]))
    stun.wait_for("STUN listening on", 30)
    servers = f"{pub}:3478,{lab.addr.pub2}:3478"
    ha, hb, hc = tmp / "home-a", tmp / "home-b", tmp / "home-c"
    ida = _configure(ha, "tcp://0.0.0.0:22000,quic://0.0.0.0:22000", servers)
    idb = _configure(hb, "tcp://0.0.0.0:22000,quic://0.0.0.0:22000", servers)
    idc = _configure(hc, f"tcp://{pub}:22000,quic://{pub}:22000", servers)
    fa, fb = tmp / "A", tmp / "B"
    fa.mkdir()
    (fa / "secret.txt").write_bytes(content)
    run_syncer(ha, "share", str(fa), "--id", FID, check=True)
    fb.mkdir()
    run_syncer(hb, "share", str(fb), "--id", FID, check=True)
    for home, name in ((ha, "a"), (hb, "b")):
        pair(home, idc, "c", [f"tcp://{pub}:22000"])
        pair(hc, ida if name == "a" else idb, name)
    pair(ha, idb, "b")  # by device ID alone
    pair(hb, ida, "a")
    env = {"SYNCER_LOG_LEVEL": "DEBUG"}
    lab.popen("pub", [SYNCER, "run"], env={"SYNCER_HOME": str(hc), **env})
    lab.popen("h1", [SYNCER, "run"], env={"SYNCER_HOME": str(ha), **env})
    lab.popen("h2", [SYNCER, "run"], env={"SYNCER_HOME": str(hb), **env})
    return (ha, hb, hc), (ida, idb, idc), (fa, fb)


def test_cone_nats_sync_over_a_hole_punched_with_a_paired_devices_help(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    lab = natlab("cone")
    (ha, hb, hc), (ida, idb, idc), (fa, fb) = _three_devices(lab, tmp_path, MARKER * 100)
    wait_until(lambda: tree(fa) == tree(fb), 120, "A and B in sync: " + lab.logs()[-3000:])
    ra, rb = _row(lab, "h1", ha, idb), _row(lab, "h2", hb, ida)
    assert ra.get("transport") == "quic (punched)" and rb.get("transport") == "quic (punched)", (ra, rb)
    assert ra["address"].startswith(f"quic://{lab.addr.r2_wan}:")  # B's NAT mapping, not 10.2.0.2
    # the lab's STUN server (two addresses) says: endpoint-independent mapping on both sides
    for node, home, wan in (("h1", ha, lab.addr.r1_wan), ("h2", hb, lab.addr.r2_wan)):
        doc = wait_until(lambda n=node, h=home: (d := _json(lab, n, h, "doctor"))["nat"]["nat_type"] != "unknown" and d, 30, "doctor")
        assert doc["nat"]["nat_type"] == "endpoint-independent", doc["nat"]
        assert {e["address"].split(":")[0] for e in doc["nat"]["external_addresses"]} == {wan}
        assert {e["observer"] for e in doc["nat"]["external_addresses"]} >= {f"stun:{lab.addr.pub}:3478", f"stun:{lab.addr.pub2}:3478"}


def test_symmetric_nats_sync_through_a_paired_device_and_it_sees_no_plaintext(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (scripts/test installs it)")
    lab = natlab("symmetric")
    pcap = tmp_path / "at-c.pcap"
    dump = lab.popen("pub", ["tcpdump", "-i", "inet", "-U", "-s", "0", "-w", str(pcap), "tcp"])
    err_log = Path(lab._logs[-1])
    wait_until(lambda: "listening on" in err_log.read_text(errors="replace"), 30, "tcpdump capturing")
    (ha, hb, hc), (ida, idb, idc), (fa, fb) = _three_devices(lab, tmp_path, MARKER * 2000)
    started = time.monotonic()
    wait_until(lambda: tree(fa) == tree(fb), 150, "A and B in sync through C: " + lab.logs()[-3000:])
    elapsed = time.monotonic() - started
    ra, rb = _row(lab, "h1", ha, idb), _row(lab, "h2", hb, ida)
    assert ra.get("transport") == "relay (via c)" and rb.get("transport") == "relay (via c)", (ra, rb)
    tried = [(t["kind"], t["result"]) for t in ra["attempts"]]
    assert ("assist-punch", "failed") in tried and ("assist-relay", "ok") in tried, tried
    # C's view of both NATs: endpoint-dependent mapping
    for node, home in (("h1", ha), ("h2", hb)):
        doc = wait_until(lambda n=node, h=home: (d := _json(lab, n, h, "doctor"))["nat"]["nat_type"] != "unknown" and d, 30, "doctor")
        assert doc["nat"]["nat_type"] == "endpoint-dependent", doc["nat"]
        assert doc["nat"]["punching"].startswith("fails")
    dump.terminate()
    dump.wait(10)
    captured = pcap.read_bytes()
    assert len(captured) > len(MARKER) * 2000 * 2, len(captured)  # the file crossed C twice (in, out)
    assert MARKER[:32] not in captured  # ... but never in the clear
    print(f"synced through C in {elapsed:.1f} s; {len(captured)} bytes captured at C, no plaintext")

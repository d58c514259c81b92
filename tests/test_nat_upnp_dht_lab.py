"""Port mapping and the DHT across NATs, in the network-namespace lab with real daemons:
the router in front of A runs miniupnpd (Debian's, UPnP IGD + NAT-PMP); A maps its ports; a
device on the public side connects to A's mapped address directly; with a lab-internal
`syncer dht-node` as the only bootstrap node, B (behind another NAT) and A find each other
through the DHT with no address configured, and B connects to A's mapped address; NAT-PMP maps
and unmaps against the same router. Root only."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemons import wait_until
from tests.helpers import run_syncer
from tests.natlab.fixtures import natlab  # noqa: F401
from tests.natlab.homes import make_home, pair
from tests.natlab.lab import LineReader, NatLab
from tests.natlab.upnp import skip_reason, start_miniupnpd
from tests.syncfix import tree

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]
SYNCER = shutil.which("syncer") or sys.executable
FID = "mapped"


def _json(lab: NatLab, node: str, home: Path, *args: str) -> dict:
    p = lab.exec(node, [SYNCER, *args, "--json"], env={"SYNCER_HOME": str(home)})
    return json.loads(p.stdout) if p.returncode == 0 else {}


def _row(lab: NatLab, node: str, home: Path, other: str) -> dict:
    return next((d for d in _json(lab, node, home, "status").get("devices", []) if d["device_id"] == other), {})


def test_upnp_mapping_public_device_connects_and_dht_across_nats(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    if reason := skip_reason():
        pytest.skip(reason)
    lab = natlab("cone")
    pub, wan1 = lab.addr.pub, lab.addr.r1_wan
    stun = LineReader(lab.popen("pub", [sys.executable, "-m", "syncer.net.stun", pub, lab.addr.pub2, "3478"]))
    stun.wait_for("STUN listening on", 30)
    start_miniupnpd(lab, "r1", tmp_path)
    dht = LineReader(lab.popen("pub", [SYNCER, "dht-node", "--host", pub, "--port", "6881"], env={"SYNCER_HOME": str(tmp_path / "dht")}))
    dht.wait_for("listening on", 30)

    listen = "tcp://0.0.0.0:22000,quic://0.0.0.0:22000"
    dht_on = {"discovery.dht.enabled": "true", "discovery.dht.bootstrap": f"{pub}:6881", "nat.stun_servers": f"{pub}:3478"}
    ha, hb, hp = tmp_path / "home-a", tmp_path / "home-b", tmp_path / "home-p"
    ida = make_home(ha, {**dht_on, "listen": listen, "nat.port_mapping": "true"})
    idb = make_home(hb, {**dht_on, "listen": listen})
    idp = make_home(hp, {"listen": f"tcp://{lab.addr.pub2}:22000", "nat.stun_servers": ""})
    fa, fb = tmp_path / "A", tmp_path / "B"
    fa.mkdir()
    (fa / "mapped.txt").write_text("through a UPnP port mapping, found in the DHT")
    run_syncer(ha, "share", str(fa), "--id", FID, check=True)
    fb.mkdir()
    run_syncer(hb, "share", str(fb), "--id", FID, check=True)
    pair(ha, idb, "b")  # device IDs only: addresses come from the DHT
    pair(hb, ida, "a")
    pair(ha, idp, "p")  # A knows no address of P: only P can dial
    env = {"SYNCER_LOG_LEVEL": "DEBUG"}
    lab.popen("h1", [SYNCER, "run"], env={"SYNCER_HOME": str(ha), **env})

    # A mapped TCP and UDP 22000 on its router, and says so
    doc = wait_until(lambda: (d := _json(lab, "h1", ha, "doctor")) and len(d["nat"]["port_mappings"]) == 2 and d, 60, "port mappings: " + lab.logs()[-2000:])
    maps = {m["protocol"]: m for m in doc["nat"]["port_mappings"]}
    assert maps["TCP"]["method"] == "upnp" and maps["TCP"]["external"] == f"{wan1}:22000", maps
    assert maps["UDP"]["external"] == f"{wan1}:22000"
    assert f"tcp://{wan1}:22000" in doc["nat"]["announced"]

    # a device on the public side connects to the mapped address directly
    pair(hp, ida, "a", [f"tcp://{wan1}:22000"])
    lab.popen("pub", [SYNCER, "run"], env={"SYNCER_HOME": str(hp), **env})
    row = wait_until(lambda: (r := _row(lab, "pub", hp, ida)).get("connected") and r, 60, "P connected to A: " + lab.logs()[-2000:])
    assert row["transport"] == "tcp" and row["address"] == f"tcp://{wan1}:22000" and row["route"] == "direct"

    # B, behind another NAT, finds A through the DHT and dials the mapped address
    lab.popen("h2", [SYNCER, "run"], env={"SYNCER_HOME": str(hb), **env})
    wait_until(lambda: tree(fa) == tree(fb), 90, "A and B in sync: " + lab.logs()[-3000:])
    rb = _row(lab, "h2", hb, ida)
    assert {"address": f"tcp://{wan1}:22000", "source": "dht"} in rb["addresses"], rb
    assert rb["connected"] and rb["transport"] == "tcp" and rb["address"] == f"tcp://{wan1}:22000"
    # both announced themselves under their device keys (A, connected by then, needs no
    # lookup of B; B's own address is behind its NAT, so only B could dial anyway)
    lookup = textwrap.dedent(
        f"""
        import asyncio
        from syncer.deviceid import DeviceId
        from syncer.discovery.dht.node import DhtNode
        from syncer.discovery.keys import device_key
        async def main():
            node = DhtNode("0.0.0.0", 0, bootstrap=[("{pub}", 6881)])
            await node.start()
            await node.bootstrap()
            for d in ({ida!r}, {idb!r}):
                print("PEERS", d[:7], sorted(await node.get_peers(device_key(DeviceId.parse(d)))))
            await node.stop()
        asyncio.run(main())
        """
    )
    r = lab.exec("pub", [sys.executable, "-c", lookup], timeout=60)
    assert f"PEERS {ida[:7]} [('{wan1}', 22000)]" in r.stdout, r.stdout + r.stderr
    assert f"PEERS {idb[:7]} [('{lab.addr.r2_wan}', 22000)]" in r.stdout, r.stdout + r.stderr
    assert _json(lab, "h2", hb, "doctor")["dht"]["nodes"] >= 1

    # NAT-PMP against the same router: map, see the external address, unmap
    script = textwrap.dedent(
        """
        import asyncio
        from syncer.nat.natpmp import NatPmpClient, default_gateway
        async def main():
            c = NatPmpClient(default_gateway())
            print("EXTERNAL", await c.external_address())
            print("MAPPED", await c.map("UDP", 40404, 40404, 60))
            print("UNMAPPED", await c.map("UDP", 40404, 0, 0))
        asyncio.run(main())
        """
    )
    r = lab.exec("h1", [sys.executable, "-c", script], timeout=60)
    assert f"EXTERNAL {wan1}" in r.stdout and "MAPPED (40404, 40404, 60)" in r.stdout, r.stdout + r.stderr
    assert "UNMAPPED (40404, 0, 0)" in r.stdout or "UNMAPPED (40404, 40404, 0)" in r.stdout, r.stdout

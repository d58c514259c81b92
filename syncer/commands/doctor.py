"""`syncer doctor [--json]`: why devices connect the way they do.

With a running daemon: its NAT type and external addresses (and which observer saw them), port
mappings, what it announces, DHT table size and last announce/lookup, and per paired device the
addresses known by source, what was tried with each result, and why the connection is not
direct. Without one: a one-off STUN probe from a fresh UDP socket (NAT type and public address).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer

from syncer.api import client
from syncer.commands import common
from syncer.nat.natkind import Observation, classify
from syncer.net import stun
from syncer.net.localaddr import local_ip_towards
from syncer.net.udp import UdpEndpoint

app = typer.Typer()  # this module's commands; syncer.cli merges them into the main app


def from_status(st: dict[str, Any]) -> dict[str, Any]:
    return {
        "daemon": "running",
        "device_id": st.get("device_id"),
        "listen": st.get("listen", []),
        "nat": st.get("nat", {}),
        "dht": st.get("dht", {}),
        "devices": [
            {
                "device_id": d["device_id"],
                "name": d.get("name", ""),
                "connected": d.get("connected"),
                "transport": d.get("transport"),
                "route": d.get("route"),
                "addresses": d.get("addresses", []),
                "attempts": d.get("attempts", []),
                "why_not_direct": d.get("why_not_direct", ""),
            }
            for d in st.get("devices", [])
        ],
    }


async def probe_without_daemon(servers: list[str]) -> dict[str, Any]:
    udp = await UdpEndpoint.bind("0.0.0.0", 0)
    observations: list[Observation] = []
    errors: list[str] = []
    try:
        for hp in servers:
            host, _, port = hp.rpartition(":")
            try:
                addr = await stun.resolve(host.strip("[]"), int(port))
                mapped = await stun.binding(udp, addr)
            except (stun.StunError, ValueError) as e:
                errors.append(str(e))
                continue
            local = (local_ip_towards(addr), udp.local_address[1])
            observations.append(Observation(f"stun:{hp}", addr, local, mapped, time.monotonic()))
    finally:
        udp.close()
    return {
        "daemon": "not running",
        "nat": {
            "nat_type": classify(observations),
            "external_addresses": [
                {"address": f"{o.mapped[0]}:{o.mapped[1]}", "observer": o.observer, "local": f"{o.local[0]}:{o.local[1]}"}
                for o in observations
            ],
            "stun_errors": errors,
        },
    }


def _print(report: dict[str, Any]) -> None:
    nat = report.get("nat", {})
    typer.echo(f"daemon: {report['daemon']}")
    typer.echo(f"NAT type: {nat.get('nat_type', 'unknown')}" + (f" (hole punching {nat['punching']})" if nat.get("punching") else ""))
    for e in nat.get("external_addresses", []):
        typer.echo(f"  seen at {e['address']} by {e['observer']} (sent from {e['local']})")
    for e in nat.get("observed_by_devices", []):
        typer.echo(f"  seen at {e['address']} by device {e['device']}")
    for mp in nat.get("port_mappings", []):
        typer.echo(f"  port mapping: {mp.get('protocol')} {mp.get('internal')} -> {mp.get('external')} via {mp.get('method')} ({mp.get('state')})")
    if nat.get("announced"):
        typer.echo("announced: " + ", ".join(nat["announced"]))
    dht = report.get("dht")
    if dht:
        if dht.get("enabled"):
            typer.echo(f"DHT: {dht.get('nodes', 0)} nodes; last announce {dht.get('last_announce') or 'never'}, last lookup {dht.get('last_lookup') or 'never'}")
        else:
            typer.echo("DHT: off")
    for d in report.get("devices", []):
        state = f"connected via {d['transport']}" if d.get("connected") else "not connected"
        typer.echo(f"device {d.get('name') or d['device_id'][:7]} ({d['device_id'][:7]}): {state}; {d.get('why_not_direct', '')}")
        for a in d.get("addresses", []):
            typer.echo(f"  address {a['address']} ({a['source']})")
        for t in d.get("attempts", [])[-6:]:
            typer.echo(f"  tried {t['kind']} {t['address']}: {t['result']}" + (f" ({t['error']})" if t.get("error") else ""))


@app.command()
def doctor(json: bool = common.JsonOption) -> None:
    """Diagnose connectivity: NAT type, external addresses, port mappings, DHT, per-device routes."""
    p = common.paths()
    try:
        report = from_status(client.call(p, "GET", "/rest/status", timeout=30))
    except client.NotRunning:
        report = asyncio.run(probe_without_daemon(common.config().get("nat.stun_servers")))
    if json:
        common.print_json(report)
    else:
        _print(report)

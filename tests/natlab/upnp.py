"""miniupnpd (Debian's miniupnpd-nftables) in a lab router: UPnP IGD and NAT-PMP for its LAN.

`start_miniupnpd(lab, "r1", tmp)` creates the nftables chains miniupnpd fills (its own table),
lets port-forwarded (DNAT) traffic through the lab router's forward chain, writes a config and
runs the daemon in the foreground; the lab stops it with everything else it started.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.natlab.lab import NatLab

NFT = """
table inet miniupnpd {
    chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
    chain miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
"""


def skip_reason() -> str | None:
    return None if shutil.which("miniupnpd") else "miniupnpd is not installed (scripts/test installs miniupnpd-nftables)"


def start_miniupnpd(lab: NatLab, router: str, tmp: Path) -> subprocess.Popen[bytes]:
    ns = lab.ns(router)
    site = router[-1]
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NFT.encode(), check=True, capture_output=True)
    # the lab router forwards wan -> lan only for established flows; port forwards too
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "add", "rule", "ip", "natlab", "forward",
         "iifname", "wan", "oifname", "lan", "ct", "status", "dnat", "accept"],
        check=True, capture_output=True,
    )
    conf = tmp / f"miniupnpd-{router}.conf"
    conf.write_text(
        "\n".join([
            "ext_ifname=wan",
            "listening_ip=lan",
            "http_port=0",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            # the lab's "public" addresses are reserved (198.18.0.0/15): miniupnpd maps only once
            # STUN (the lab's server) shows the address is not behind yet another NAT
            "ext_perform_stun=yes",
            f"ext_stun_host={lab.addr.pub}",
            "ext_stun_port=3478",
            "upnp_table_name=miniupnpd",
            "upnp_nat_table_name=miniupnpd",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            "uuid=3b5ae2c4-1111-4f6e-9c9a-00000000000" + site,
            f"allow 1024-65535 10.{site}.0.0/24 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ])
    )
    p = lab.popen(router, ["miniupnpd", "-d", "-f", str(conf)])
    log = Path(lab._logs[-1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # poll its log with a deadline until it listens
        text = log.read_text(errors="replace")
        if "HTTP listening on port" in text or "Listening for NAT-PMP" in text:
            return p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError("miniupnpd did not start:\n" + log.read_text(errors="replace"))

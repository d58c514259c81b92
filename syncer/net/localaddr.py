"""Which local address this host uses towards a destination (port mapping asks the router for
that address; NAT probes pair it with what observers saw)."""

from __future__ import annotations

import socket


def local_ip_towards(addr: tuple[str, int]) -> str:
    """The source address the kernel picks for packets to `addr` (nothing is sent)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            return str(s.getsockname()[0])
        except OSError:
            return ""

"""Addresses to put in an invite link: the listeners as the other device can dial them.

A listener bound to a wildcard (0.0.0.0, ::) is listed once per configured interface address
(IPv4, read with SIOCGIFADDR: no packet is sent), loopback last; a concrete one as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct

from syncer.net.transport import Address, TransportError

SIOCGIFADDR = 0x8915
MAX_ADDRESSES = 8


def interface_ipv4() -> list[str]:
    """Each interface's IPv4 address, loopback last (Linux; elsewhere only what the host name
    resolves to)."""
    found: list[str] = []
    with contextlib.suppress(OSError, AttributeError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                with contextlib.suppress(OSError):
                    req = struct.pack("256s", name.encode()[:15])
                    found.append(socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]))
    if not found:
        with contextlib.suppress(OSError):
            found = [str(ai[4][0]) for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    unique = list(dict.fromkeys(found))
    return [a for a in unique if not a.startswith("127.")] + [a for a in unique if a.startswith("127.")]


def dialable(listen_urls: list[str]) -> list[str]:
    out: list[str] = []
    for url in listen_urls:
        try:
            addr = Address.parse(url)
        except TransportError:
            continue
        if addr.port == 0:
            continue
        if addr.host in ("0.0.0.0", "::", ""):
            out += [str(Address(addr.scheme, ip, addr.port)) for ip in interface_ipv4()]
        else:
            out.append(str(addr))
    return list(dict.fromkeys(out))[:MAX_ADDRESSES]

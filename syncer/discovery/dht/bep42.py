"""BEP 42 node ids (pure): the top 21 bits of a node id derive from its external IP, so a node
cannot choose where in the id space it sits (a defence against Sybil attacks on one key).

    v4: crc32c((ip & 0x030f3fff) | (r << 29));   v6: crc32c((ip[:8] & 0x0103070f1f3f7fff) | (r << 61))
    id[0] = crc >> 24, id[1] = crc >> 16, id[2] = (crc >> 8) & 0xf8 | random 3 bits,
    id[3:19] random, id[19] = r   (r: a random byte; only its low 3 bits enter the hash)
"""

from __future__ import annotations

import ipaddress
import secrets

V4_MASK = 0x030F3FFF
V6_MASK = 0x0103070F1F3F7FFF


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_CRC32C = _table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _hash(ip: str, r: int) -> int:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        v = (int(addr) & V4_MASK) | ((r & 0x07) << 29)
        return crc32c(v.to_bytes(4, "big"))
    v = (int.from_bytes(addr.packed[:8], "big") & V6_MASK) | ((r & 0x07) << 61)
    return crc32c(v.to_bytes(8, "big"))


def node_id(ip: str, r: int | None = None, rand: bytes | None = None) -> bytes:
    """A BEP 42 node id for external address `ip`."""
    r = secrets.token_bytes(1)[0] if r is None else r
    rand = rand if rand is not None else secrets.token_bytes(17)
    crc = _hash(ip, r)
    return bytes([(crc >> 24) & 0xFF, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (rand[0] & 0x07)]) + rand[1:17] + bytes([r])


def valid(nid: bytes, ip: str) -> bool:
    """Whether `nid` is a BEP 42 id for `ip` (local and private addresses are exempt)."""
    addr = ipaddress.ip_address(ip)
    if addr.is_private or addr.is_loopback or addr.is_link_local:
        return True
    if len(nid) != 20:
        return False
    crc = _hash(ip, nid[19])
    return nid[0] == (crc >> 24) & 0xFF and nid[1] == (crc >> 16) & 0xFF and nid[2] & 0xF8 == (crc >> 8) & 0xF8

"""KRPC (BEP 5): bencoded dictionaries over UDP; compact node and peer formats (pure)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from syncer.codec import bencode

MAX_DATAGRAM = 1500
ERR_GENERIC, ERR_SERVER, ERR_PROTOCOL, ERR_METHOD = 201, 202, 203, 204


class KrpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class NodeInfo:
    id: bytes
    ip: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return self.ip, self.port


def encode_nodes(nodes: list[NodeInfo]) -> bytes:
    out = []
    for n in nodes:
        try:
            out.append(n.id + ipaddress.IPv4Address(n.ip).packed + struct.pack(">H", n.port))
        except ValueError:
            continue  # IPv6 nodes go in nodes6 (not used here)
    return b"".join(out)


def decode_nodes(data: bytes) -> list[NodeInfo]:
    if len(data) % 26:
        raise KrpcError(ERR_PROTOCOL, "bad compact node info")
    return [
        NodeInfo(data[i : i + 20], str(ipaddress.IPv4Address(data[i + 20 : i + 24])), struct.unpack(">H", data[i + 24 : i + 26])[0])
        for i in range(0, len(data), 26)
    ]


def encode_peer(ip: str, port: int) -> bytes:
    return ipaddress.ip_address(ip).packed + struct.pack(">H", port)


def decode_peers(values: list[Any]) -> list[tuple[str, int]]:
    out = []
    for v in values:
        if isinstance(v, bytes) and len(v) == 6:
            out.append((str(ipaddress.IPv4Address(v[:4])), struct.unpack(">H", v[4:])[0]))
        elif isinstance(v, bytes) and len(v) == 18:
            out.append((str(ipaddress.ip_address(v[:16])), struct.unpack(">H", v[16:])[0]))
    return out


def query(t: bytes, method: str, args: dict[str, Any]) -> bytes:
    return bencode.encode({"t": t, "y": "q", "q": method, "a": args})


def response(t: bytes, values: dict[str, Any], ip: bytes | None = None) -> bytes:
    """A response; `ip` (BEP 42): the querier's address as we see it, compact."""
    msg: dict[str, Any] = {"t": t, "y": "r", "r": values}
    if ip is not None:
        msg["ip"] = ip
    return bencode.encode(msg)


def error(t: bytes, code: int, message: str) -> bytes:
    return bencode.encode({"t": t, "y": "e", "e": [code, message]})


def parse(data: bytes) -> dict[bytes, Any]:
    """A KRPC message dict, or KrpcError(203) for anything malformed."""
    if len(data) > MAX_DATAGRAM:
        raise KrpcError(ERR_PROTOCOL, "datagram too large")
    try:
        msg = bencode.decode(data)
    except bencode.BencodeError as e:
        raise KrpcError(ERR_PROTOCOL, f"invalid bencoding: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get(b"t"), bytes) or msg.get(b"y") not in (b"q", b"r", b"e"):
        raise KrpcError(ERR_PROTOCOL, "not a KRPC message")
    return msg

"""STUN binding (RFC 8489): our public address as a server sees it, from the socket we use.

    header: type u16 | length u16 | magic cookie 0x2112A442 | transaction id (12 bytes)
    Binding request 0x0001, success response 0x0101; attributes TLV (type u16, length u16, value
    padded to 4 bytes): XOR-MAPPED-ADDRESS 0x0020 (port ^ cookie>>16, address ^ cookie [|| id]),
    MAPPED-ADDRESS 0x0001 (RFC 3489 servers), SOFTWARE 0x8022, FINGERPRINT 0x8028
    (CRC-32 of the message before it, xor 0x5354554E).

Pure parts: `request()`, `parse_response()`, `answer()` (what a responder sends back). I/O:
`binding()` asks a server from a `UdpEndpoint` (retransmitting with doubling intervals, bounded),
`StunResponder` answers binding requests on one (every daemon does, on its QUIC socket, so paired
devices are STUN servers for each other), rate limited per source.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import os
import socket
import struct
from typing import TYPE_CHECKING

from syncer.errors import SyncerError
from syncer.net.admission import KeyedRateLimit, source_key
from syncer.runtime.timeouts import wait_for

if TYPE_CHECKING:
    from syncer.net.udp import UdpEndpoint

Addr = tuple[str, int]

MAGIC = 0x2112A442
_MAGIC = MAGIC.to_bytes(4, "big")
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
MAPPED_ADDRESS = 0x0001
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
_FP_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
SOFTWARE_NAME = b"syncer"
RTO = 0.25  # first retransmission; doubles (RFC 8489 uses 500 ms; servers here are close or fast)
TIMEOUT = 3.0
MAX_MESSAGE = 548
ANSWER_RATE = 10.0  # binding answers per second and source
ANSWER_BURST = 20.0


class StunError(SyncerError):
    pass


def is_stun(data: bytes) -> bool:
    return len(data) >= HEADER.size and data[0] & 0xC0 == 0 and data[4:8] == _MAGIC


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _message(kind: int, txid: bytes, attrs: bytes) -> bytes:
    """A message with FINGERPRINT appended (its length field already counts it)."""
    body = attrs
    head = HEADER.pack(kind, len(body) + 8, MAGIC, txid)
    crc = (binascii.crc32(head + body) ^ _FP_XOR) & 0xFFFFFFFF
    return head + body + _attr(FINGERPRINT, struct.pack("!I", crc))


def request(txid: bytes | None = None) -> tuple[bytes, bytes]:
    """(transaction id, binding request)."""
    txid = txid or os.urandom(12)
    return txid, _message(BINDING_REQUEST, txid, _attr(SOFTWARE, SOFTWARE_NAME))


def _attributes(data: bytes) -> dict[int, bytes]:
    kind, length, _, _ = HEADER.unpack_from(data)
    end = HEADER.size + length
    if length % 4 or end > len(data):
        raise StunError("bad STUN length")
    out: dict[int, bytes] = {}
    pos = HEADER.size
    while pos + 4 <= end:
        t, n = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + n]
        if len(value) != n:
            raise StunError("truncated STUN attribute")
        out.setdefault(t, value)
        pos += 4 + n + (-n % 4)
    return out


def _address(value: bytes, txid: bytes, xor: bool) -> Addr:
    if len(value) < 8:
        raise StunError("short address attribute")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    raw = value[4:]
    if family == 0x01 and len(raw) == 4:
        key = _MAGIC
    elif family == 0x02 and len(raw) == 16:
        key = _MAGIC + txid
    else:
        raise StunError("bad address family")
    if xor:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, key, strict=True))
    return str(ipaddress.ip_address(raw)), port


def parse_response(data: bytes, txid: bytes) -> Addr | None:
    """The mapped address in a success response to `txid`; None for anything else."""
    if not is_stun(data) or len(data) > MAX_MESSAGE:
        return None
    kind, _, _, got = HEADER.unpack_from(data)
    if kind != BINDING_SUCCESS or got != txid:
        return None
    try:
        attrs = _attributes(data)
        if XOR_MAPPED_ADDRESS in attrs:
            return _address(attrs[XOR_MAPPED_ADDRESS], txid, True)
        if MAPPED_ADDRESS in attrs:
            return _address(attrs[MAPPED_ADDRESS], txid, False)
    except (StunError, ValueError):
        return None
    return None


def answer(data: bytes, source: Addr) -> bytes | None:
    """The success response to a binding request from `source`; None if it is not one."""
    if not is_stun(data) or len(data) > MAX_MESSAGE:
        return None
    kind, _, _, txid = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST:
        return None
    try:
        _attributes(data)
        ip = ipaddress.ip_address(source[0])
    except (StunError, ValueError):
        return None
    family, key = (0x01, _MAGIC) if ip.version == 4 else (0x02, _MAGIC + txid)
    xaddr = bytes(a ^ b for a, b in zip(ip.packed, key, strict=False))
    value = struct.pack("!BBH", 0, family, source[1] ^ (MAGIC >> 16)) + xaddr
    return _message(BINDING_SUCCESS, txid, _attr(XOR_MAPPED_ADDRESS, value))


async def resolve(host: str, port: int) -> Addr:
    loop = asyncio.get_running_loop()
    try:
        infos = await wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise StunError(f"cannot resolve {host}: {e or type(e).__name__}") from None
    v4 = [i for i in infos if i[0] == socket.AF_INET]
    sockaddr = (v4 or infos)[0][4]
    return str(sockaddr[0]), int(sockaddr[1])  # (host, port, ...) for both IP families


async def binding(udp: UdpEndpoint, server: Addr, timeout: float = TIMEOUT) -> Addr:
    """Our address as `server` sees it (a binding request from `udp`'s socket)."""
    loop = asyncio.get_running_loop()
    txid, req = request()
    got: asyncio.Future[Addr] = loop.create_future()

    def on_stun(data: bytes, addr: Addr) -> None:
        if addr == server and not got.done():
            mapped = parse_response(data, txid)
            if mapped is not None:
                got.set_result(mapped)

    remove = udp.add_stun_handler(on_stun)
    try:
        async with asyncio.timeout(timeout):
            rto = RTO
            while True:
                udp.sendto(req, server)
                done, _ = await asyncio.wait({got}, timeout=rto)
                if done:
                    return got.result()
                rto *= 2  # retransmission backoff (RFC 8489 7.2.1), bounded by `timeout`
    except TimeoutError:
        raise StunError(f"STUN server {server[0]}:{server[1]} did not answer within {timeout:.0f} s") from None
    finally:
        remove()


class StunResponder:
    """Answers binding requests arriving on `udp` (rate limited per source)."""

    def __init__(self, udp: UdpEndpoint, clock: object = None) -> None:
        self.udp = udp
        self.limit = KeyedRateLimit(ANSWER_RATE, ANSWER_BURST, 10_000)
        self.answered = 0
        self._loop = asyncio.get_running_loop()
        self._remove = udp.add_stun_handler(self._on_stun)

    def _on_stun(self, data: bytes, addr: Addr) -> None:
        reply = answer(data, addr)
        if reply is not None and self.limit.allow(source_key(addr[0]), self._loop.time()):
            self.udp.sendto(reply, addr)
            self.answered += 1

    def close(self) -> None:
        self._remove()


async def _serve(hosts: list[str], port: int) -> None:
    """A minimal standalone STUN server (for network labs): one socket per address, so each
    answer leaves from the address the request went to."""
    from syncer.net.udp import UdpEndpoint

    endpoints = [await UdpEndpoint.bind(h, port) for h in hosts]
    for e in endpoints:
        StunResponder(e)
    print("STUN listening on " + " ".join(f"{e.local_address[0]}:{e.local_address[1]}" for e in endpoints), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    *addrs, last = sys.argv[1:] or ["127.0.0.1", "3478"]
    asyncio.run(_serve(addrs, int(last)))

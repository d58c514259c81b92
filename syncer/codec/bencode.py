"""Bencoding (BEP 3), strict and bounded: used by the BitTorrent tracker protocol and the DHT."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32


class BencodeError(ValueError):
    pass


def encode(obj: Any) -> bytes:
    out: list[bytes] = []
    _enc(obj, out)
    return b"".join(out)


def _enc(obj: Any, out: list[bytes]) -> None:
    if isinstance(obj, bool):
        raise BencodeError("booleans have no bencoding")
    if isinstance(obj, int):
        out.append(b"i%de" % obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(obj, str):
        _enc(obj.encode(), out)
    elif isinstance(obj, (list, tuple)):
        out.append(b"l")
        for x in obj:
            _enc(x, out)
        out.append(b"e")
    elif isinstance(obj, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else k, v) for k, v in obj.items()]
        for k, v in sorted(items):
            if not isinstance(k, bytes):
                raise BencodeError("dictionary keys must be strings")
            _enc(k, out)
            _enc(v, out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(obj).__name__}")


def decode(data: bytes) -> Any:
    """Decode exactly one value; raises BencodeError on anything malformed or trailing."""
    if not isinstance(data, (bytes, bytearray)):
        raise BencodeError("bencoded data must be bytes")
    try:
        value, pos = _dec(bytes(data), 0, 0)
    except (IndexError, ValueError) as e:
        if isinstance(e, BencodeError):
            raise
        raise BencodeError(f"malformed bencoding: {e}") from None
    if pos != len(data):
        raise BencodeError("trailing data after bencoded value")
    return value


def decode_prefix(data: bytes) -> tuple[Any, int]:
    """Decode the one value at the start of `data`; returns it and where it ends (BEP 9
    messages carry raw bytes after their dictionary)."""
    if not isinstance(data, (bytes, bytearray)):
        raise BencodeError("bencoded data must be bytes")
    try:
        return _dec(bytes(data), 0, 0)
    except (IndexError, ValueError) as e:
        if isinstance(e, BencodeError):
            raise
        raise BencodeError(f"malformed bencoding: {e}") from None


def _dec(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise BencodeError("bencoding nested too deeply")
    c = data[pos : pos + 1]
    if c == b"i":
        end = data.index(b"e", pos)
        raw = data[pos + 1 : end]
        digits = raw[1:] if raw.startswith(b"-") else raw
        # bytes.isdigit is ASCII-only; int() alone would also take b" 1" and b"1_0"
        if not digits.isdigit() or raw == b"-0" or (raw.startswith(b"0") and len(raw) > 1) or raw.startswith(b"-0"):
            raise BencodeError("invalid integer")
        return int(raw), end + 1
    if c == b"l":
        pos += 1
        items = []
        while data[pos : pos + 1] != b"e":
            v, pos = _dec(data, pos, depth + 1)
            items.append(v)
        return items, pos + 1
    if c == b"d":
        pos += 1
        d: dict[bytes, Any] = {}
        last: bytes | None = None
        while data[pos : pos + 1] != b"e":
            k, pos = _dec(data, pos, depth + 1)
            if not isinstance(k, bytes):
                raise BencodeError("dictionary key is not a string")
            if last is not None and k <= last:
                raise BencodeError("dictionary keys not sorted or duplicated")
            last = k
            d[k], pos = _dec(data, pos, depth + 1)
        return d, pos + 1
    if c.isdigit():
        colon = data.index(b":", pos)
        raw = data[pos:colon]
        if not raw.isdigit() or (len(raw) > 1 and raw.startswith(b"0")):
            raise BencodeError("invalid string length")
        n = int(raw)
        end = colon + 1 + n
        if end > len(data):
            raise BencodeError("string runs past the end")
        return data[colon + 1 : end], end
    raise BencodeError(f"unexpected byte {c!r} at {pos}")

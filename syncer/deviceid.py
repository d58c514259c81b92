"""Device IDs, written the way Syncthing writes them.

ID = SHA-256 of the device certificate (DER). Text form: base32 without padding (52 chars), cut
into 4 groups of 13, each followed by a Luhn-mod-32 check character (Syncthing's variant: the
factor starts at 1 on the first character and alternates), then re-cut into 8 groups of 7 joined by
'-'. Parsing tolerates lower case, missing dashes and spaces; any other change is rejected.
Pure logic, no I/O.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass

from syncer.errors import InvalidDeviceId

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
ID_LEN = 32
SHORT_LEN = 7
MAX_CACHED_TEXT = 80


def luhn32(s: str) -> str:
    """Check character of Syncthing's Luhn-mod-32 over a base32 string."""
    factor = 1
    total = 0
    for ch in s:
        try:
            addend = factor * _VALUE[ch]
        except KeyError:
            raise InvalidDeviceId(f"invalid character {ch!r} in device ID") from None
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return ALPHABET[(32 - total % 32) % 32]


@functools.lru_cache(maxsize=1024)
def _text(raw: bytes) -> str:
    """The ID's text form; cached: the same few devices are named per applied file (the short
    name a conflict copy would get), per dial tick and in every status."""
    s = base64.b32encode(raw).decode().rstrip("=")
    with_check = "".join(s[i : i + 13] + luhn32(s[i : i + 13]) for i in range(0, 52, 13))
    return "-".join(with_check[i : i + 7] for i in range(0, 56, 7))


@dataclass(frozen=True, order=True)
class DeviceId:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != ID_LEN:
            raise InvalidDeviceId(f"device ID must be {ID_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def from_cert_der(cls, der: bytes) -> DeviceId:
        return cls(hashlib.sha256(der).digest())

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        # only text of an ID's length is cached: a key padded to megabytes must not be kept
        return cls(_parse_cached(text) if len(text) <= MAX_CACHED_TEXT else _parse(text))

    def __str__(self) -> str:
        return _text(self.raw)

    def __repr__(self) -> str:
        return f"DeviceId({self.short})"

    @property
    def short(self) -> str:
        """First 7 characters: names the device in conflict copies."""
        return str(self)[:SHORT_LEN]


def _parse(text: str) -> bytes:
    """The raw ID of a text form."""
    s = text.strip().upper().replace("-", "").replace(" ", "")
    if len(s) == 56:
        groups = [s[i : i + 14] for i in range(0, 56, 14)]
        for g in groups:
            if luhn32(g[:13]) != g[13]:
                raise InvalidDeviceId(
                    f"invalid device ID {text.strip()!r}: check character mismatch"
                )
        s = "".join(g[:13] for g in groups)
    elif len(s) != 52:
        raise InvalidDeviceId(
            f"invalid device ID {text.strip()!r}: expected 56 characters (8 groups of 7), got {len(s)}"
        )
    bad = [c for c in s if c not in _VALUE]
    if bad:
        raise InvalidDeviceId(f"invalid device ID {text.strip()!r}: bad character {bad[0]!r}")
    try:
        raw = base64.b32decode(s + "====")
    except ValueError as e:
        raise InvalidDeviceId(f"invalid device ID {text.strip()!r}: {e}") from None
    return raw


# bounded, errors not cached: the config names devices as text, and every dial tick, status
# row and folder's device list parses them (1,066 times in a 6 s sync with 7 peers)
_parse_cached = functools.lru_cache(maxsize=1024)(_parse)

"""Invite codes and join links (pure; no I/O beyond reading the shipped wordlist once).

A code is `NAMEPLATE-WORD-WORD-WORD`, e.g. `7-orbit-velvet-canyon`: the nameplate (a small number)
names the invite among the inviter's active ones, the words come from the BIP-39 English wordlist
(2048 words, 11 bits each, unique in their first four letters, so a code may be typed with
four-letter prefixes; words.txt, MIT-licensed via python-mnemonic).

The code splits into a *locator* (`7-orbit`: nameplate and first word) and a *secret* (the last
two words). Discovery keys (DHT, tracker, LAN beacon) are derived from the locator only, so
whoever watches them learns at most the locator; the whole code is the PAKE password, and the
secret part (22 bits) can only be guessed online, three tries per invite (docs/security.md).

A link `syncer://join?v=1&device=ID&folder=FID&addr=URL&addr=URL&code=CODE` carries the same
code plus the inviter's device ID, the folder id and the inviter's addresses, so the joiner can
dial at once and check the inviter's certificate before the PAKE.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from functools import cache
from importlib import resources
from urllib.parse import parse_qs, quote, urlsplit

from syncer.deviceid import DeviceId
from syncer.errors import InvalidDeviceId, SyncerError

WORDS = 3
MAX_NAMEPLATE = 9999
MAX_LINK_ADDRESSES = 16
MAX_LINK_LENGTH = 4096
LINK_SCHEME = "syncer"
LINK_VERSION = "1"


class InvalidCode(SyncerError):
    pass


@cache
def wordlist() -> tuple[str, ...]:
    text = resources.files("syncer.invite").joinpath("words.txt").read_text(encoding="utf-8")
    words = tuple(w.strip() for w in text.split() if w.strip())
    assert len(words) == 2048 and len({w[:4] for w in words}) == 2048
    return words


@cache
def _by_prefix() -> dict[str, str]:  # four-letter prefix -> word
    return {w[:4]: w for w in wordlist()}


@cache
def _word_set() -> frozenset[str]:
    return frozenset(wordlist())


def _word(text: str) -> str:
    w = text.strip().lower()
    if w in _word_set():
        return w
    full = _by_prefix().get(w[:4]) if len(w) >= 4 else None
    if full is None or not full.startswith(w):
        raise InvalidCode(f"{text!r} is not a word of invite codes (check the spelling)")
    return full


@dataclass(frozen=True)
class InviteCode:
    nameplate: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return "-".join([str(self.nameplate), *self.words])

    @property
    def locator(self) -> str:
        """The part discovery keys come from (may become public); not the secret."""
        return f"{self.nameplate}-{self.words[0]}"

    @property
    def password(self) -> bytes:
        return str(self).encode()

    def locator_key(self) -> bytes:
        """20 bytes (a valid info-hash / DHT key) under which the inviter is announced."""
        return locator_key(self.locator)

    @classmethod
    def generate(cls, nameplate: int) -> InviteCode:
        words = wordlist()
        return cls(nameplate, tuple(secrets.choice(words) for _ in range(WORDS)))

    @classmethod
    def parse(cls, text: str) -> InviteCode:
        parts = [p for p in text.strip().replace(" ", "-").split("-") if p]
        if len(parts) != WORDS + 1 or not parts[0].isdigit():
            raise InvalidCode(
                f"{text.strip()!r} is not an invite code: expected a number and {WORDS} words, like 7-orbit-velvet-canyon"
            )
        nameplate = int(parts[0])
        if not 0 < nameplate <= MAX_NAMEPLATE:
            raise InvalidCode(f"invite number {parts[0]} is out of range (1..{MAX_NAMEPLATE})")
        return cls(nameplate, tuple(_word(w) for w in parts[1:]))


def locator_key(locator: str) -> bytes:
    return hashlib.sha1(b"syncer-invite-locator:" + locator.encode()).digest()


@dataclass(frozen=True)
class JoinLink:
    code: InviteCode
    device: DeviceId
    folder: str
    addresses: tuple[str, ...]

    def __str__(self) -> str:
        q = [("v", LINK_VERSION), ("device", str(self.device)), ("folder", self.folder)]
        q += [("addr", a) for a in self.addresses[:MAX_LINK_ADDRESSES]]
        q.append(("code", str(self.code)))
        return f"{LINK_SCHEME}://join?" + "&".join(f"{k}={quote(v, safe=':/[]-._~?=')}" for k, v in q)

    @classmethod
    def parse(cls, text: str) -> JoinLink:
        text = text.strip()
        if len(text) > MAX_LINK_LENGTH:
            raise InvalidCode("the link is too long to be a syncer invite")
        parts = urlsplit(text)
        if parts.scheme != LINK_SCHEME or parts.netloc != "join":
            raise InvalidCode(f"{text[:60]!r} is not a syncer://join link")
        q = parse_qs(parts.query, keep_blank_values=True)
        if q.get("v", [""])[0] != LINK_VERSION:
            raise InvalidCode("this invite link is from a newer syncer version: update syncer, or use the code")
        try:
            device = DeviceId.parse(q.get("device", [""])[0])
            code = InviteCode.parse(q.get("code", [""])[0])
        except InvalidDeviceId as e:
            raise InvalidCode(f"the link's device ID is damaged ({e}); copy the whole link again") from None
        addresses = tuple(a for a in q.get("addr", []) if _plausible_address(a))[:MAX_LINK_ADDRESSES]
        return cls(code, device, q.get("folder", [""])[0][:64], addresses)


def _plausible_address(a: str) -> bool:
    scheme, sep, rest = a.partition("://")
    return bool(sep) and scheme in ("tcp", "quic", "relay") and 0 < len(rest) <= 200


def parse_code_or_link(text: str) -> tuple[InviteCode, JoinLink | None]:
    """What the user gave `syncer join`: a code, or a link (which holds the code)."""
    if text.strip().startswith(f"{LINK_SCHEME}://"):
        link = JoinLink.parse(text)
        return link.code, link
    return InviteCode.parse(text), None

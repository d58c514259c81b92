"""Invite codes and links (pure)."""

from __future__ import annotations

import pytest

from syncer.deviceid import DeviceId
from syncer.invite.code import InvalidCode, InviteCode, JoinLink, parse_code_or_link, wordlist

DEV = DeviceId(b"\x05" * 32)


def test_codes_parse_tolerantly_and_print_canonically():
    c = InviteCode.parse("  7 ORBIT-velv canyon ")
    assert str(c) == "7-orbit-velvet-canyon"
    assert c.locator == "7-orbit" and len(c.locator_key()) == 20
    assert InviteCode.parse(str(c)) == c


@pytest.mark.parametrize(
    "text,what",
    [
        ("orbit-velvet-canyon", "expected a number"),
        ("7-orbit-velvet", "expected a number"),
        ("0-orbit-velvet-canyon", "out of range"),
        ("7-orbit-velvet-xyzzy", "not a word"),
        ("7-orb-velvet-canyon", "not a word"),  # three letters are not enough
    ],
)
def test_bad_codes_say_what_is_wrong(text, what):
    with pytest.raises(InvalidCode, match=what):
        InviteCode.parse(text)


def test_generated_codes_use_the_wordlist_and_differ():
    codes = {str(InviteCode.generate(3)) for _ in range(20)}
    assert len(codes) == 20
    assert all(w in wordlist() for c in codes for w in c.split("-")[1:])


def test_the_locator_key_depends_only_on_number_and_first_word():
    a, b = InviteCode(7, ("orbit", "velvet", "canyon")), InviteCode(7, ("orbit", "zoo", "able"))
    assert a.locator_key() == b.locator_key()
    assert a.locator_key() != InviteCode(8, ("orbit", "velvet", "canyon")).locator_key()


def test_links_round_trip_and_carry_the_code():
    link = JoinLink(InviteCode(7, ("orbit", "velvet", "canyon")), DEV, "ph-1", ("tcp://192.0.2.1:22000", "relay://r.example:22067?id=X"))
    text = str(link)
    assert text.startswith("syncer://join?v=1&device=")
    assert JoinLink.parse(text) == link
    code, parsed = parse_code_or_link(text)
    assert parsed == link and code == link.code


@pytest.mark.parametrize(
    "text,what",
    [
        ("syncer://join?v=9&device=x&code=7-orbit-velvet-canyon", "newer syncer"),
        ("syncer://join?v=1&device=AAAA&code=7-orbit-velvet-canyon", "device ID is damaged"),
        ("https://join?v=1", "not a syncer://join link"),
        ("syncer://join?" + "x" * 5000, "too long"),
    ],
)
def test_bad_links(text, what):
    with pytest.raises(InvalidCode, match=what):
        JoinLink.parse(text)


def test_link_addresses_are_filtered():
    text = str(JoinLink(InviteCode(7, ("orbit", "velvet", "canyon")), DEV, "f", ("tcp://h:1",))) + "&addr=file:///etc/passwd"
    assert JoinLink.parse(text).addresses == ("tcp://h:1",)

"""The invite exchange state machine (sans-IO): literal messages in, literal messages out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.invite import exchange as ex
from syncer.invite.code import InviteCode

INVITER, JOINER, MIDDLE = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
CODE = InviteCode(7, ("orbit", "velvet", "canyon"))


def entropy(seed: int):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


def joiner(code: InviteCode = CODE, local: bytes = JOINER, peer: bytes = INVITER) -> ex.JoinerExchange:
    return ex.JoinerExchange(code, local, peer, "laptop", ["tcp://192.0.2.7:22000"], entropy(2))


def inviter(local: bytes = INVITER, peer: bytes = JOINER) -> ex.InviterExchange:
    return ex.InviterExchange(local, peer, entropy(1))


def run(j: ex.JoinerExchange, i: ex.InviterExchange, code: InviteCode = CODE) -> tuple[list, list]:
    """Drive both halves; the inviter accepts `code` and welcomes whoever confirms."""
    i_events, j_events = [], []
    to_inviter = j.start()
    while to_inviter:
        evs = i.receive(to_inviter)
        i_events += evs
        for e in evs:
            if isinstance(e, ex.JoinRequested):
                i.accept(code)
            elif isinstance(e, ex.Confirmed):
                i.welcome("ph-1", "Photos", True, "desk")
        evs = j.receive(i.data_to_send())
        j_events += evs
        to_inviter = j.data_to_send()
    return i_events, j_events


def test_right_code_welcomes_with_the_folder():
    i_events, j_events = run(joiner(), inviter())
    assert i_events == [ex.JoinRequested(7), ex.Confirmed("laptop", ["tcp://192.0.2.7:22000"])]
    assert j_events == [ex.Welcomed("ph-1", "Photos", True, "desk")]


def test_wrong_code_is_refused_and_reported_to_both():
    wrong = InviteCode(7, ("orbit", "velvet", "cactus"))
    i_events, j_events = run(joiner(wrong), inviter())
    assert i_events == [ex.JoinRequested(7), ex.WrongCode()]
    assert j_events == [ex.WasRefused(ex.WRONG_CODE, "wrong code")]


def test_a_man_in_the_middle_with_its_own_certificate_fails_confirmation():
    # the middle relays every byte; the joiner saw MIDDLE's certificate, the inviter too
    j = joiner(peer=MIDDLE)
    i = inviter(peer=MIDDLE)
    i_events, j_events = run(j, i)
    assert ex.WrongCode() in i_events and not any(isinstance(e, ex.Confirmed) for e in i_events)
    assert j_events == [ex.WasRefused(ex.WRONG_CODE, "wrong code")]


def test_a_forged_welcome_fails_at_the_joiner():
    j = joiner()
    i = inviter()
    i.receive(j.start())
    i.accept(CODE)
    j.receive(i.data_to_send())
    assert j.data_to_send()  # the confirmation
    forged = ex.encode(ex.Welcome(b"\x00" * 32, "ph-1", "Photos", False, "desk"))
    [event] = j.receive(forged)
    assert isinstance(event, ex.Failed) and "prove" in event.reason
    assert j.state is ex.State.FAILED


def test_literal_join_then_refusal_bytes():
    i = inviter()
    # preamble, then a Join frame: msgpack ["join", 1, 7, <33 bytes>]
    body = b"\x94\xa4join\x01\x07\xc4\x21" + bytes(33)
    frame = b"SYNI\x01" + len(body).to_bytes(2, "big") + body
    assert i.receive(frame) == [ex.JoinRequested(7)]
    i.refuse(ex.EXPIRED, "gone")
    assert i.data_to_send() == b"\x00\x16\x93\xa7refused\xa7expired\xa4gone"
    assert i.finished and i.receive(b"more") == []


def test_preamble_and_frames_may_arrive_byte_by_byte():
    j, i = joiner(), inviter()
    data = j.start()
    events = []
    for k in range(len(data)):
        events += i.receive(data[k : k + 1])
    assert events == [ex.JoinRequested(7)]


def test_a_wire_hello_is_not_an_invite():
    assert ex.sniff(b"\x00\x00\x00\x30\x01") is False
    assert ex.sniff(b"SY") is None and ex.sniff(b"SYNI\x01rest") is True
    i = inviter()
    [event] = i.receive(b"\x00\x00\x00\x30\x01hello")
    assert isinstance(event, ex.Failed) and i.data_to_send() == b""  # nothing said to a stranger


@pytest.mark.parametrize(
    "frame,reason",
    [
        (b"\xff\xff" + b"x" * 10, "over the limit"),
        (b"\x00\x03\x93\x01\x02", "malformed"),
        (ex.encode(ex.Welcome(b"", "f", "l", False, "n")), "unexpected Welcome"),
        (ex.encode(ex.Join(1, 7, b"short")), "bad PAKE"),
    ],
)
def test_protocol_errors_close_with_a_reason(frame, reason):
    i = inviter()
    [event] = i.receive(b"SYNI\x01" + frame)
    assert isinstance(event, ex.Failed) and reason in event.reason
    out = i.data_to_send()
    assert out[2:].startswith(b"\x93\xa7refused\xa8protocol")
    assert i.state is ex.State.FAILED


def test_other_versions_are_told_to_update():
    i = inviter()
    [event] = i.receive(b"SYNI\x01" + ex.encode(ex.Join(2, 7, bytes(33))))
    assert isinstance(event, ex.Failed)
    assert b"update syncer" in i.data_to_send()


def test_names_and_addresses_from_the_peer_are_bounded():
    j = ex.JoinerExchange(CODE, JOINER, INVITER, "n\x1b[31m" + "x" * 500, [f"tcp://h{k}:1" for k in range(50)], entropy(3))
    i = inviter()
    i_events, _ = run(j, i)
    confirmed = next(e for e in i_events if isinstance(e, ex.Confirmed))
    assert len(confirmed.name) <= ex.MAX_NAME and "\x1b" not in confirmed.name
    assert len(confirmed.addresses) == ex.MAX_ADDRESSES


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data):
    i = inviter()
    i.receive(b"SYNI\x01" + data)
    i.data_to_send()
    j = joiner()
    j.start()
    j.receive(data)

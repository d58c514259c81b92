"""One connection per device: which of two to keep, and who dials first (pure)."""

from __future__ import annotations

import os

from syncer.deviceid import DeviceId
from syncer.peer.connections import DIAL_YIELD, DialTurns, dials_first


def _pair() -> tuple[DeviceId, DeviceId]:
    a, b = DeviceId(os.urandom(32)), DeviceId(os.urandom(32))
    return (a, b) if a.raw < b.raw else (b, a)


def test_exactly_one_of_two_devices_dials_first():
    low, high = _pair()
    assert dials_first(low, high) and not dials_first(high, low)


def test_the_lower_id_dials_at_once_and_the_higher_after_its_yield():
    low, high = _pair()
    assert DialTurns(low).may_dial(high, 100.0)
    turns = DialTurns(high)
    assert not turns.may_dial(low, 100.0)  # the wait starts at the first time it could dial
    assert not turns.may_dial(low, 100.0 + DIAL_YIELD - 0.01)
    assert turns.may_dial(low, 100.0 + DIAL_YIELD)


def test_a_lost_connection_means_a_new_wait_and_a_config_change_too():
    low, high = _pair()
    turns = DialTurns(high)
    turns.may_dial(low, 0.0)
    assert turns.may_dial(low, 5.0)
    turns.connected(low)  # and later lost: both sides redial at once
    assert not turns.may_dial(low, 50.0)
    assert turns.may_dial(low, 50.0 + DIAL_YIELD)
    turns.restart(set())
    assert not turns.may_dial(low, 60.0)


def test_a_device_that_was_refused_as_unknown_is_dialed_at_once_after_pairing():
    """It dialed us before we paired it, and backs off: waiting for it would add its back-off."""
    low, high = _pair()
    turns = DialTurns(high)
    turns.restart({low})
    assert turns.may_dial(low, 0.0)

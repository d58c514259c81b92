"""PeerAssist's rules with fake sessions (the end-to-end versions are test_assist_e2e.py and the
NAT-lab tests): a helper forwards only between connected devices and names the source as it
authenticated it; an end refuses offers and channels from devices it did not pair, bad punch
addresses, and bursts beyond its caps; a channel whose peer overruns the window is closed."""

from __future__ import annotations

import asyncio
from typing import Any

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.nat import assist as a
from syncer.nat.channel import WINDOW
from syncer.wire import messages as m

A, B, C, EVIL = (DeviceId(bytes([i]) * 32) for i in (1, 2, 3, 9))


class FakeStream:
    remote_address = "tcp://198.51.100.3:22000"


class FakeSession:
    def __init__(self, device: DeviceId) -> None:
        self.device = device
        self.stream = FakeStream()
        self.sent: list[m.Message] = []

    def has_feature(self, name: str) -> bool:
        return name == a.FEATURE

    def send(self, msg: m.Message) -> None:
        self.sent.append(msg)

    def writable(self) -> bool:
        return True


def make(tmp_path, sessions: dict[DeviceId, Any], paired: set[DeviceId]) -> a.PeerAssist:
    ident = load_or_create(tmp_path / "c.pem", tmp_path / "k.pem")
    settings = {"nat.assist": True, "nat.relay_via_devices": True}
    return a.PeerAssist(ident, sessions, lambda d: d in paired, settings.get, lambda s, r: None, lambda d: d.short)


def test_helper_forwards_punches_only_between_connected_devices_as_authenticated(tmp_path):
    sa, sb = FakeSession(A), FakeSession(B)
    helper = make(tmp_path, {A: sa, B: sb}, {A, B})
    # A asks for B; the offer B gets names A (the session's device), whatever A claims
    helper.on_message(sa, m.PunchVia(m.PUNCH_REQUEST, b"p" * 16, B.raw, "203.0.113.1", 40000))
    assert sb.sent == [m.PunchVia(m.PUNCH_OFFER, b"p" * 16, A.raw, "203.0.113.1", 40000)]
    # B's answer goes back to A, naming B
    helper.on_message(sb, m.PunchVia(m.PUNCH_ANSWER, b"p" * 16, A.raw, "203.0.113.2", 41000))
    assert sa.sent[-1] == m.PunchVia(m.PUNCH_ANSWER, b"p" * 16, B.raw, "203.0.113.2", 41000)
    # an answer for a punch nobody asked for is dropped; a target not connected here: an error
    helper.on_message(sb, m.PunchVia(m.PUNCH_ANSWER, b"q" * 16, A.raw, "203.0.113.2", 41000))
    assert len(sa.sent) == 1
    helper.on_message(sa, m.PunchVia(m.PUNCH_REQUEST, b"r" * 16, EVIL.raw, "203.0.113.1", 40000))
    assert sa.sent[-1].op == m.PUNCH_ERROR and "not connected" in sa.sent[-1].reason


def test_helper_caps_pending_punches_and_channels(tmp_path):
    sa, sb = FakeSession(A), FakeSession(B)
    helper = make(tmp_path, {A: sa, B: sb}, {A, B})
    for i in range(a.PENDING_PUNCHES + 3):
        helper.on_message(sa, m.PunchVia(m.PUNCH_REQUEST, i.to_bytes(16, "big"), B.raw, "203.0.113.1", 40000))
    assert len(sb.sent) == a.PENDING_PUNCHES
    assert [x.reason for x in sa.sent if x.op == m.PUNCH_ERROR] == ["too many punches at once"] * 3
    for ch in range(a.MAX_CHANNELS_PER_DEVICE + 2):
        helper.on_message(sa, m.RelayVia(m.RELAY_OPEN, ch, B.raw))
    incoming = [x for x in sb.sent if isinstance(x, m.RelayVia) and x.op == m.RELAY_INCOMING]
    assert len(incoming) == a.MAX_CHANNELS_PER_DEVICE
    assert sum(1 for x in sa.sent if isinstance(x, m.RelayVia) and x.op == m.RELAY_CLOSE) == 2


def test_end_refuses_strangers_bad_addresses_and_bursts(tmp_path):
    async def main() -> None:
        sc = FakeSession(C)
        end = make(tmp_path, {C: sc}, {A, C})
        end.quic = None  # no QUIC socket: an accepted offer still fails later, the checks come first
        end.on_message(sc, m.RelayVia(m.RELAY_INCOMING, 5, EVIL.raw))  # not paired with us
        assert sc.sent[-1] == m.RelayVia(m.RELAY_CLOSE, 5, reason="refused") and not end._ends
        end.on_message(sc, m.PunchVia(m.PUNCH_OFFER, b"p" * 16, A.raw, "evil.example.org", 40000))
        assert sc.sent[-1].op == m.PUNCH_ERROR  # a name, not an address: never resolved
        for i in range(a.MAX_ANSWERING + 2):
            end.on_message(sc, m.PunchVia(m.PUNCH_OFFER, i.to_bytes(16, "big"), A.raw, "203.0.113.1", 40000))
        busy = [x for x in sc.sent if isinstance(x, m.PunchVia) and x.reason == "busy or bad address"]
        assert len(busy) == 1 + 2  # the name, and the two beyond the cap
        await asyncio.sleep(0)  # let the answering tasks run (they fail: no QUIC socket)
        await end.close()

    asyncio.run(main())


def test_channel_overrunning_its_window_is_closed(tmp_path):
    async def main() -> None:
        sc = FakeSession(C)
        end = make(tmp_path, {C: sc}, {A, C})
        end.on_message(sc, m.RelayVia(m.RELAY_INCOMING, 7, A.raw))
        assert sc.sent[-1] == m.RelayVia(m.RELAY_ACCEPT, 7)
        stream = end._ends[(C, 7)]
        chunk = b"x" * m.RELAY_CHUNK
        for _ in range(WINDOW // m.RELAY_CHUNK + 1):
            end.on_message(sc, m.RelayData(7, chunk))  # nothing was credited back
        assert (C, 7) not in end._ends and stream._closed
        assert sc.sent[-1] == m.RelayVia(m.RELAY_CLOSE, 7)
        await end.close()

    asyncio.run(main())

"""The sync model's use of the choker: with unlimited uploads off, only the best-giving
interested peers (plus one optimistic) are unchoked; choked peers' requests are refused; a
choked peer that says it wants data is unchoked within one round (choker liveness)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tomlkit

from syncer.config import Config
from syncer.deviceid import DeviceId
from syncer.model.sync import SyncModel
from syncer.pending import PendingStore
from syncer.runtime.clock import FakeClock
from syncer.transfer.choker import RECHOKE_INTERVAL
from syncer.wire import Choke, Interested, Unchoke


class FakeSession:
    def __init__(self, i: int, rate: float) -> None:
        self.device = DeviceId(bytes([i]) * 32)
        self.rate = rate
        self.sent: list = []
        self.closed = False

    def down_rate(self) -> float:
        return self.rate

    def up_rate(self) -> float:
        return self.rate

    def has_feature(self, name: str) -> bool:
        return True

    def send(self, msg) -> None:
        self.sent.append(msg)

    def send_many(self, msgs) -> None:
        self.sent.extend(msgs)


def model(tmp_path: Path, unlimited: bool, clock: FakeClock | None = None) -> SyncModel:
    cfg = Config(tomlkit.document(), tmp_path / "config.toml")
    cfg.set("transfer.unlimited_own_devices", unlimited)
    return SyncModel(cfg, DeviceId(b"\xee" * 32), tmp_path / "i.db", PendingStore(tmp_path / "p.json"), clock=clock)


def run_rechoke(m: SyncModel, sessions: list[FakeSession], now: float) -> None:
    for s in sessions:
        m.sessions[s.device] = s  # type: ignore[assignment]
        m.last_request[s.device] = now
    m.rechoke(now)


def test_tit_for_tat_when_uploads_are_limited(tmp_path):
    m = model(tmp_path, unlimited=False)
    sessions = [FakeSession(i, rate) for i, rate in enumerate([10, 500, 300, 400, 1, 2], start=1)]
    # No folder needs anything here, so the model is seeding and ranks peers by how fast
    # they take from us (up_rate); the optimistic slot goes to one of the three slow ones.
    run_rechoke(m, sessions, now=100.0)
    choked = {s.device for s in sessions if s.sent and isinstance(s.sent[-1], Choke)}
    assert len(choked) == 2 and m.choking == choked
    best = {s.device for s in sessions if s.rate >= 300}
    assert not (best & choked)  # the three best givers keep their slots


def test_unlimited_between_own_devices_never_chokes(tmp_path):
    m = model(tmp_path, unlimited=True)
    sessions = [FakeSession(i, 1.0) for i in range(1, 8)]
    run_rechoke(m, sessions, now=100.0)
    assert m.choking == set() and all(not s.sent for s in sessions)
    m.choking = {sessions[0].device}  # e.g. left over from before the setting changed
    run_rechoke(m, sessions, now=110.0)
    assert m.choking == set() and isinstance(sessions[0].sent[-1], Unchoke)


def test_choked_peer_that_wants_data_is_unchoked_within_one_round(tmp_path):
    """A choked peer never requests (so request-based interest never sees it): it says
    Interested, and the next round (on simulated time) unchokes it."""
    clock = FakeClock()

    async def main() -> None:
        m = model(tmp_path, unlimited=False, clock=clock)
        peer = FakeSession(1, 0.0)
        m.sessions[peer.device] = peer  # type: ignore[assignment]
        m.choking.add(peer.device)  # choked, e.g. from an earlier round when it wanted nothing
        m.supervisor.spawn("choker", m._choke_loop)
        await asyncio.sleep(0)
        clock.advance(RECHOKE_INTERVAL)
        for _ in range(5):
            await asyncio.sleep(0)
        assert peer.device in m.choking  # not interested, never requested: stays choked
        m.on_message(peer, Interested())  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(RECHOKE_INTERVAL)  # at most one round later
        for _ in range(5):
            await asyncio.sleep(0)
        assert peer.device not in m.choking and isinstance(peer.sent[-1], Unchoke)
        await m.supervisor.stop()

    asyncio.run(main())

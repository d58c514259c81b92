"""The sync model's use of the choker: with unlimited uploads off, only the best-giving
interested peers (plus one optimistic) are unchoked; choked peers' requests are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tomlkit

from syncer.config import Config
from syncer.deviceid import DeviceId
from syncer.model.sync import SyncModel
from syncer.pending import PendingStore
from syncer.wire import Choke, Unchoke


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

    async def send(self, msg) -> None:
        self.sent.append(msg)

    async def send_many(self, msgs) -> None:
        self.sent.extend(msgs)


def model(tmp_path: Path, unlimited: bool) -> SyncModel:
    cfg = Config(tomlkit.document(), tmp_path / "config.toml")
    cfg.set("transfer.unlimited_own_devices", unlimited)
    return SyncModel(cfg, DeviceId(b"\xee" * 32), tmp_path / "i.db", PendingStore(tmp_path / "p.json"))


def run_rechoke(m: SyncModel, sessions: list[FakeSession], now: float) -> None:
    async def main() -> None:
        for s in sessions:
            m.sessions[s.device] = s  # type: ignore[assignment]
            m.last_request[s.device] = now
        m.rechoke(now)
        for _ in range(5):
            await asyncio.sleep(0)  # let the ordered send queue drain

    asyncio.run(main())


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

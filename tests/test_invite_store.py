"""Invite rules (time injected), the invite file, the handshake gate, the pairing rules."""

from __future__ import annotations

import json
import os
import stat

import pytest

from syncer.config import DeviceConfig, FolderConfig, load_config
from syncer.deviceid import DeviceId
from syncer.invite.pairing import pair_for_folder
from syncer.invite.service import HandshakeGate
from syncer.invite.store import ACTIVE, DEAD, EXPIRED, REVOKED, USED, InviteError, InviteStore

T0 = 1_800_000_000.0


def test_an_invite_ends_by_expiry_use_revocation_or_three_wrong_codes(tmp_path):
    s = InviteStore(tmp_path / "invites.json")
    with s.locked():
        a = s.create("f", False, 60, 1, T0)
        b = s.create("f", True, 3600, 2, T0)
        c = s.create("f", False, 3600, 1, T0)
        d = s.create("f", False, 3600, 1, T0)
    assert len({a.nameplate, b.nameplate, c.nameplate, d.nameplate}) == 4
    assert a.status(T0 + 59) == ACTIVE and a.status(T0 + 60) == EXPIRED
    assert a.refusal(T0 + 61)[0] == "expired"
    with s.locked():
        assert s.record_use(b.nameplate, "D1", T0) is not None
        assert s.get(b.nameplate).status(T0) == ACTIVE
        assert s.record_use(b.nameplate, "D2", T0) is not None
        assert s.record_use(b.nameplate, "D3", T0) is None  # no use left
        s.revoke(c.nameplate, T0)
        for _ in range(3):
            s.record_failure(d.nameplate, T0)
    s2 = InviteStore(tmp_path / "invites.json")  # what was written
    assert s2.get(b.nameplate).status(T0) == USED and s2.get(b.nameplate).joined == ["D1", "D2"]
    assert s2.get(c.nameplate).status(T0) == REVOKED
    assert s2.get(d.nameplate).status(T0) == DEAD and "3 wrong codes" in s2.get(d.nameplate).refusal(T0)[1]
    assert [i.nameplate for i in s2.active(T0)] == [a.nameplate] and s2.active(T0 + 61) == []


def test_the_file_is_private_and_damage_loses_only_the_damaged_entry(tmp_path):
    path = tmp_path / "invites.json"
    s = InviteStore(path)
    with s.locked():
        good = s.create("f", False, 60, 1, T0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    data["invites"].append({"nameplate": 5, "words": ["not", "real", "words"]})
    path.write_text(json.dumps(data))
    assert list(InviteStore(path).invites) == [good.nameplate]
    path.write_text("{broken")
    assert InviteStore(path).invites == {}


def test_limits_and_pruning(tmp_path):
    s = InviteStore(tmp_path / "invites.json")
    with pytest.raises(InviteError, match="--expires"):
        s.create("f", False, 0, 1, T0)
    with pytest.raises(InviteError, match="--uses"):
        s.create("f", False, 60, 0, T0)
    inv = s.create("f", False, 60, 1, T0)
    s.revoke(inv.nameplate, T0)
    s.prune(T0 + 8 * 86400)
    assert s.get(inv.nameplate) is None
    with pytest.raises(InviteError, match="no invite with ID"):
        s.revoke(4242, T0)


def test_handshake_gate_caps_concurrency_and_rate():
    g = HandshakeGate(max_concurrent=2)
    assert g.admit("192.0.2.1", 0) and g.admit("192.0.2.2", 0)
    assert not g.admit("192.0.2.3", 0)  # two at once already
    g.done()
    g.done()
    results = [g.admit("192.0.2.9", 0.0) and (g.done() or True) for _ in range(10)]
    assert results.count(True) == 5  # the per-source burst, then refused until tokens refill
    assert g.admit("192.0.2.9", 4.0)  # 0.5/s: two more after 4 s


def test_pairing_for_one_folder_pins_folders_shared_with_everyone(tmp_path):
    cfg = load_config(tmp_path / "config.toml")
    old, new = DeviceId(b"\x01" * 32), DeviceId(b"\x02" * 32)
    cfg.upsert_device(DeviceConfig(str(old)))
    cfg.upsert_folder(FolderConfig("open", str(tmp_path / "o")))
    cfg.upsert_folder(FolderConfig("invited", str(tmp_path / "i"), devices=[str(old)]))
    pinned = pair_for_folder(cfg, new, "phone", ["tcp://192.0.2.5:22000", "http://bad", "tcp://x"], "invited")
    assert pinned == ["open"]
    assert cfg.folder("open").devices == [str(old)]
    assert cfg.folder("invited").devices == [str(old), str(new)]
    assert cfg.device(new).name == "phone" and cfg.device(new).addresses == ["tcp://192.0.2.5:22000"]
    assert not cfg.folder("open").shared_with(new, cfg.devices)

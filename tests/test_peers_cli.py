import json

from tests.helpers import run_syncer

OTHER = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"


def err(p) -> str:
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_pair_list_unpair(home):
    run_syncer(home, "pair", OTHER.lower().replace("-", ""), "--address", "tcp://127.0.0.1:22001", "--name", "desk", check=True)
    rows = json.loads(run_syncer(home, "devices", "--json", check=True).stdout)
    assert rows == [{"device_id": OTHER, "name": "desk", "addresses": [{"address": "tcp://127.0.0.1:22001", "source": "static"}],
                     "connected": False, "address": None, "transport": None, "since": None}]
    run_syncer(home, "unpair", OTHER, check=True)
    assert json.loads(run_syncer(home, "devices", "--json", check=True).stdout) == []


def test_bad_pairing_input_is_one_clear_line_and_changes_nothing(home):
    run_syncer(home, "config", "set", "watch.delay_ms", "100", check=True)
    before = (home / "config.toml").read_bytes()
    assert "invalid device ID" in err(run_syncer(home, "pair", "NOT-AN-ID"))
    assert "check character" in err(run_syncer(home, "pair", OTHER[:-1] + "B"))
    own = run_syncer(home, "id", check=True).stdout.strip()
    assert "own ID" in err(run_syncer(home, "pair", own))
    assert "bad address" in err(run_syncer(home, "pair", OTHER, "--address", "ftp://x"))
    assert "not paired" in err(run_syncer(home, "unpair", OTHER))
    assert (home / "config.toml").read_bytes() == before


def test_pending_without_daemon(home):
    assert run_syncer(home, "pending", check=True).stdout.strip() == "nothing pending"
    assert json.loads(run_syncer(home, "pending", "--json", check=True).stdout) == {"devices": [], "folders": []}


def test_example_config_is_valid():
    from pathlib import Path

    from syncer.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "config-examples" / "config.toml")
    assert cfg.folders and cfg.devices and cfg.get("watch.delay_ms") == 100

import os
import stat

from syncer.config import load_config
from syncer.deviceid import DeviceId
from tests.helpers import run_syncer


def test_id_creates_identity_once_with_private_key_mode_0600(home):
    first = run_syncer(home, "id", check=True).stdout.strip()
    DeviceId.parse(first)
    assert stat.S_IMODE(os.stat(home / "key.pem").st_mode) == 0o600
    assert run_syncer(home, "id", check=True).stdout.strip() == first
    js = run_syncer(home, "id", "--json", check=True).stdout
    assert first in js


def test_two_homes_have_different_ids(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_syncer(a, "id", check=True).stdout != run_syncer(b, "id", check=True).stdout


def test_config_set_get_round_trip(home):
    run_syncer(
        home,
        "config",
        "set",
        "listen",
        "tcp://127.0.0.1:22001",
        "quic://127.0.0.1:22001",
        check=True,
    )
    out = run_syncer(home, "config", "get", "listen", check=True).stdout.split()
    assert out == ["tcp://127.0.0.1:22001", "quic://127.0.0.1:22001"]
    run_syncer(home, "config", "set", "discovery.dht.enabled", "off", check=True)
    assert (
        run_syncer(home, "config", "get", "discovery.dht.enabled", check=True).stdout.strip()
        == "false"
    )
    assert load_config(home / "config.toml").get("discovery.dht.enabled") is False


def test_config_bad_input_is_one_clear_line_and_file_untouched(home):
    run_syncer(home, "config", "set", "watch.delay_ms", "250", check=True)
    before = (home / "config.toml").read_bytes()
    for args in (
        ("config", "set", "no.such.key", "1"),
        ("config", "set", "watch.delay_ms", "soon"),
        ("config", "set", "listen", "ftp://x"),
        ("config", "set", "discovery.lan.port", "70000"),
        ("config", "get", "bogus"),
    ):
        p = run_syncer(home, *args)
        assert p.returncode != 0, args
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr
    assert (home / "config.toml").read_bytes() == before


def test_config_keeps_user_comments(home):
    (home / "config.toml").write_text('# my comment\nlisten = ["tcp://127.0.0.1:1"]\n')
    run_syncer(home, "config", "set", "watch.delay_ms", "50", check=True)
    text = (home / "config.toml").read_text()
    assert "# my comment" in text and "delay_ms = 50" in text


def test_broken_config_file_gives_clear_error(home):
    (home / "config.toml").write_text("listen = [\n")
    p = run_syncer(home, "config", "get", "listen")
    assert p.returncode != 0 and "invalid TOML" in p.stderr and "Traceback" not in p.stderr

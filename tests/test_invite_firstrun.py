"""First run as a new user meets it (issue 15 item 7): what `syncer share` says next, an
offered folder keeps its label, human output shows dates and durations (not epoch floats)."""

from __future__ import annotations

import re
import time

from syncer.commands.common import format_duration, format_time, format_when, parse_duration
from syncer.paths import get_paths
from syncer.pending import PendingStore
from tests.helpers import run_syncer

DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")


def test_share_says_what_happens_next_without_a_daemon(tmp_path):
    home, d = tmp_path / "h", tmp_path / "docs"
    d.mkdir()
    r = run_syncer(home, "share", str(d), "--id", "docs-1", check=True)
    assert r.stdout.strip() == "docs-1"  # stdout stays the folder id alone
    assert "the daemon is not running: start it with `syncer start`" in r.stderr
    assert "`syncer invite docs-1` here, then `syncer join CODE` there" in r.stderr


def test_a_folder_joined_from_an_offer_keeps_the_offered_label(tmp_path):
    home = tmp_path / "h"
    run_syncer(home, "id", check=True)
    store = PendingStore(get_paths({"SYNCER_HOME": str(home)}).state_dir / "pending.json")
    store.add_folder("hol-1", "Holiday 2026", "SOMEDEVICE", time.time())
    store.flush()
    assert "Holiday 2026" in run_syncer(home, "pending", check=True).stdout
    run_syncer(home, "share", str(tmp_path / "somewhere"), "--id", "hol-1", check=True)
    r = run_syncer(home, "folders", check=True)
    assert "Holiday 2026" in r.stdout


def test_errors_name_the_fix(tmp_path):
    home = tmp_path / "h"
    r = run_syncer(home, "scan", "nope")
    assert r.returncode == 1 and "(see `syncer folders`)" in r.stderr
    r = run_syncer(home, "invite", "nope")
    assert r.returncode == 1 and "start it with `syncer start`" in r.stderr
    r = run_syncer(home, "join", "7-orbit-velvet-xyzzy")
    assert r.returncode == 1 and "check the spelling" in r.stderr
    r = run_syncer(home, "invite")
    assert r.returncode == 1 and "`syncer invite FOLDER`" in r.stderr
    r = run_syncer(home, "invite", "x", "--expires", "soon")
    assert r.returncode == 1 and "use e.g. 90s, 30m, 24h" in r.stderr


def test_human_times():
    assert [format_duration(s) for s in (0, 59, 61, 3600, 3725, 90000)] == ["0s", "59s", "1m 1s", "1h", "1h 2m", "1d 1h"]
    assert parse_duration("1h30m") == 5400 and parse_duration("24h") == 86400 and parse_duration("90") == 90
    now = 1_800_000_000.0
    assert DATE.fullmatch(format_time(now))
    assert format_when(now + 300, now).endswith("(in 5m)") and format_when(now - 90, now).endswith("(1m 30s ago)")
    assert format_when(None) == ""

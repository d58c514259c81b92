"""`syncer service`: the login unit's content and placement under a temporary HOME.

`systemctl --user` is not available in the test namespace (no user session bus), so enabling
is only checked to fail softly, with the command to run instead; the unit file itself is real."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from pathlib import Path

from syncer.commands.service import plist_text, unit_text
from tests.helpers import SYNCER


def run(home: Path, syncer_home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    e.update(HOME=str(home), SYNCER_HOME=str(syncer_home), **env)
    return subprocess.run([SYNCER, *args], env=e, capture_output=True, text=True, timeout=60)


def test_install_writes_a_user_unit_that_status_reports_and_uninstall_removes(tmp_path):
    home, sh = tmp_path / "home", tmp_path / "syncer home"
    home.mkdir()
    r = run(home, sh, "status")
    assert r.returncode == 3 and "login service: not installed (`syncer service install`" in r.stdout
    r = run(home, sh, "service", "install")
    assert r.returncode == 0, r.stderr
    unit = home / ".config" / "systemd" / "user" / "syncer.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m syncer run" in text
    assert f'Environment="SYNCER_HOME={sh}"' in text
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    # no user session here: enabling fails softly and says what to run
    assert "syncer now starts at login" in r.stdout or "systemctl --user daemon-reload && systemctl --user enable --now syncer.service" in r.stdout
    st = run(home, sh, "status", "--json")
    assert st.returncode == 3 and json.loads(st.stdout)["service"] == {"installed": True, "path": str(unit), "kind": "systemd"}
    assert f"login service: installed ({unit})" in run(home, sh, "status").stdout
    r = run(home, sh, "service", "uninstall")
    assert r.returncode == 0 and not unit.exists()
    r = run(home, sh, "service", "uninstall")
    assert r.returncode == 1 and "no login service is installed" in r.stderr


def test_xdg_config_home_is_honoured(tmp_path):
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    r = run(home, tmp_path / "sh", "service", "install", "--no-start", XDG_CONFIG_HOME=str(xdg))
    assert r.returncode == 0, r.stderr
    assert (xdg / "systemd" / "user" / "syncer.service").is_file()
    assert "not installed" in run(home, tmp_path / "sh", "service", "status", XDG_CONFIG_HOME=str(tmp_path / "other")).stdout


def test_unit_without_syncer_home_and_a_valid_launchd_plist(tmp_path):
    assert "SYNCER_HOME" not in unit_text("/usr/bin/python3", None)
    plist = plistlib.loads(plist_text("/opt/py & co/python", "/h<1>", tmp_path / "syncer.log").encode())
    assert plist["ProgramArguments"] == ["/opt/py & co/python", "-m", "syncer", "run"]
    assert plist["EnvironmentVariables"] == {"SYNCER_HOME": "/h<1>"}
    assert plist["RunAtLoad"] is True and plist["Label"] == "io.syncer.daemon"

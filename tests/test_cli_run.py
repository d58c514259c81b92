"""`syncer run` starts the daemon without the CLI's libraries (commands/run.py) and still takes,
documents and refuses options as the other commands do."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import run_syncer

LEAN = """
import sys
sys.argv = ["syncer", "run", "--listen", "bad://x"]
from syncer import cli
try:
    cli.main()
except SystemExit as e:
    print(e.code, sorted(m for m in ("typer", "rich", "click", "pydantic") if m in sys.modules))
"""


def test_daemon_process_loads_no_cli_libraries(home):
    out = subprocess.run(
        [sys.executable, "-c", LEAN], env=dict(os.environ, SYNCER_HOME=str(home)),
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.split("\n")[0] == "1 []", out
    assert "syncer: bad address 'bad://x'" in out.stderr  # refused before the daemon starts


def test_run_help_and_bad_options(home):
    helped = run_syncer(home, "run", "--help", check=True).stdout
    assert "--listen" in helped and "--api" in helped
    bad = run_syncer(home, "run", "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr

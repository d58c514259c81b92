from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SYNCER = shutil.which("syncer")


def run_syncer(
    home: Path, *args: str, check: bool = False, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `syncer` command with its own SYNCER_HOME."""
    assert SYNCER, "the `syncer` command is not installed (scripts/test installs it)"
    env = dict(os.environ, SYNCER_HOME=str(home))
    proc = subprocess.run(
        [SYNCER, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"syncer {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc

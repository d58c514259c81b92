"""End-to-end harness: real `syncer run` daemons as subprocesses, each with its own SYNCER_HOME,
listening on loopback with OS-chosen ports and discovery off unless a test turns it on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import SYNCER, run_syncer

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0


def wait_until(pred: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> T:
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    last_exc: BaseException | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except (AssertionError, OSError, ValueError, KeyError) as e:
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(delay)  # polling interval, bounded by the deadline
        delay = min(delay * 1.5, 0.25)


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.home = root / f"home-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.bound: list[str] = []
        self.device_id = self.syncer("id", check=True).stdout.strip()
        self.configure(
            {
                "discovery.tracker.enabled": "false",
                "discovery.dht.enabled": "false",
                "discovery.lan.enabled": "false",
                "nat.enabled": "false",
                "bt.enabled": "false",  # BitTorrent tests turn it on
                "device.name": name,
            }
        )

    def configure(self, settings: dict[str, str]) -> None:
        """What `syncer config set KEY VALUE` does for each, in this process: one CLI start costs
        about a second on a loaded 2-core box, and a node needs several. Only while the daemon
        is stopped (a running one is not told to reload)."""
        from syncer.config import SETTINGS, edit_config, parse_value
        from syncer.paths import get_paths

        assert self.proc is None, "configure() is for a stopped daemon; use `syncer config set`"
        with edit_config(get_paths({"SYNCER_HOME": str(self.home)}).config_file) as cfg:
            for key, value in settings.items():
                cfg.set(key, parse_value(SETTINGS[key], [value]))

    def syncer(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_syncer(self.home, *args, check=check, timeout=timeout)

    def start(
        self, listen: list[str] | None = None, extra_env: dict[str, str] | None = None, wrap: list[str] | None = None,
        wait: bool = True,
    ) -> Node:
        """`wrap`: argv the daemon's command line is appended to (it must exec it, so the pid
        stays the daemon's), e.g. to run it in a mount namespace of its own. `wait=False`
        returns once the process is started, before its control API is up."""
        assert self.proc is None
        args = [*(wrap or []), SYNCER or "syncer", "run", "--api", "127.0.0.1:0"]
        for url in listen or ["tcp://127.0.0.1:0"]:
            args += ["--listen", url]
        # tests read DEBUG logs on failure; benchmarks set SYNCER_NODE_LOG_LEVEL=INFO (the default)
        env = dict(os.environ, SYNCER_HOME=str(self.home), SYNCER_LOG_LEVEL=os.environ.get("SYNCER_NODE_LOG_LEVEL", "DEBUG"))
        env.update(extra_env or {})
        self.log = open(self.home / "daemon.log", "ab")
        with contextlib.suppress(FileNotFoundError):
            (self.home / "api-address").unlink()  # left by a daemon that was killed
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(self._ready, timeout, f"daemon {self.name} to start")
        self.bound = self.status()["listen"]

    def restart(self, **kwargs: Any) -> Node:
        """Start again on the addresses the last run was bound to (peers have them as static
        addresses: a new OS-chosen port would leave them dialing the old one)."""
        return self.start(listen=self.bound, **kwargs)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon {self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return (self.home / "api-address").exists() and self.status().get("running", True)

    def status(self) -> dict[str, Any]:
        """The daemon's status through its control API (what `syncer status --json` prints;
        the API is called directly so that polling does not start a Python process each time)."""
        from syncer.api import client

        try:
            return self.get("/rest/status")
        except client.NotRunning:
            return {"running": False}

    def get(self, path: str) -> Any:
        """GET `path` from the daemon's control API."""
        from syncer.api import client
        from syncer.paths import get_paths

        return client.call(get_paths({"SYNCER_HOME": str(self.home)}), "GET", path, timeout=30)

    def folders(self) -> list[dict[str, Any]]:
        """The folders' status rows, as in `status()` (without the device rows and the rest: a
        cheaper poll)."""
        return self.get("/rest/folders")

    def listen_url(self, scheme: str = "tcp") -> str:
        return next(u for u in self.status()["listen"] if u.startswith(scheme + "://"))

    def device(self, other: Node) -> dict[str, Any]:
        return next(d for d in self.status()["devices"] if d["device_id"] == other.device_id)

    def device_by_id(self, device_id: str) -> dict[str, Any]:
        return next(d for d in self.status()["devices"] if d["device_id"] == device_id)

    def connected_to(self, other: Node) -> bool:
        return bool(self.device(other)["connected"])

    def pair(self, other: Node, address: bool = True) -> None:
        args = ["pair", other.device_id, "--name", other.name]
        if address:
            args += ["--address", other.listen_url()]
        self.syncer(*args, check=True)

    def log_text(self) -> str:
        try:
            return (self.home / "daemon.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.log.close()
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@contextlib.contextmanager
def cluster(root: Path, *names: str) -> Iterator[list[Node]]:
    nodes = [Node(root, n) for n in names]
    try:
        yield nodes
    except BaseException:
        for n in nodes:
            sys.stderr.write(f"\n----- log of {n.name} -----\n{n.log_text()[-6000:]}\n")
        raise
    finally:
        for n in nodes:
            n.stop()


def pair_all(nodes: list[Node]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.pair(b)

"""Python side of the network-namespace NAT lab (natlab.sh), reusable by any NAT test.

    [h1 10.1.0.2]--[r1 NAT, wan 198.18.0.1]--+
                                             +-- pub: 198.18.0.10, .11 (servers), no forwarding
    [h2 10.2.0.2]--[r2 NAT, wan 198.18.0.2]--+

`NatLab.up()` builds it under a unique prefix; `popen(node, argv)` / `exec(node, argv)` run
commands inside a node's namespace (cwd = the repository, which is on PYTHONPATH, so drivers run
as `python -m tests.natlab.peer`); `down()` kills what it started (by PID) and deletes the
namespaces. Nothing touches the host's network namespace.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NATLAB = HERE / "natlab.sh"
NODES = ("pub", "r1", "h1", "r2", "h2")
_counter = itertools.count()


@dataclass(frozen=True)
class LabAddresses:
    pub: str = "198.18.0.10"  # rendezvous / relay / tracker address in the "internet"
    pub2: str = "198.18.0.11"
    r1_wan: str = "198.18.0.1"  # h1's public (NAT) address
    r2_wan: str = "198.18.0.2"
    h1: str = "10.1.0.2"
    h2: str = "10.2.0.2"


def skip_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "NAT lab needs root (ip netns)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"NAT lab needs `{tool}` (scripts/test installs nftables and iproute2)"
    return None


def unique_prefix() -> str:
    return f"sy{os.getpid() % 100000}x{next(_counter)}"


class LineReader:
    """Lines from a process's stdout with a deadline (never blocks past it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self.lines: list[str] = []

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first line starting with `prefix` (rest of it), or AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self.readline(left)
            if line is None:
                break
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        raise AssertionError(f"no {prefix!r} line within {timeout} s; got {self.lines}")

    def json(self, prefix: str, timeout: float) -> dict:
        return json.loads(self.wait_for(prefix, timeout))


@dataclass
class NatLab:
    tmp: Path
    nat1: str = "cone"
    nat2: str = "cone"
    udp_timeout: float | None = None
    prefix: str = field(default_factory=unique_prefix)
    addr: LabAddresses = field(default_factory=LabAddresses)

    def __post_init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self.is_up = False

    def _natlab(self, *args: str) -> None:
        subprocess.run(
            [str(NATLAB), *args, "--prefix", self.prefix],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def up(self) -> NatLab:
        args = ["up", "--nat1", self.nat1, "--nat2", self.nat2]
        if self.udp_timeout is not None:
            args += ["--udp-timeout", str(int(self.udp_timeout))]
        self.is_up = True  # natlab.sh tears itself down if `up` fails half way; down is idempotent
        self._natlab(*args)
        return self

    def down(self) -> None:
        for p in self._procs:  # only what this lab started, by PID
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()
        self._procs.clear()
        if self.is_up:
            self._natlab("down")
            self.is_up = False

    def ns(self, node: str) -> str:
        assert node in NODES, node
        return f"{self.prefix}-{node}"

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        base = dict(os.environ)
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
        base["PYTHONUNBUFFERED"] = "1"
        base.update(env or {})
        return base

    def popen(self, node: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in `node`'s namespace; stdout is a pipe, stderr goes to a log file."""
        log = self.tmp / f"{self.prefix}-{node}-{len(self._logs)}.log"
        self._logs.append(log)
        with open(log, "wb") as err:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *argv],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
                env=self._env(env),
            )
        self._procs.append(p)
        return p

    def exec(
        self, node: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self._env(env),
            timeout=timeout,
        )

    def logs(self) -> str:
        """Everything the lab's processes wrote to stderr (for assertion messages)."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self._logs if p.exists())

    def start_relay(self, home: Path, port: int = 3478) -> str:
        """`syncer relay` on the pub address; returns its pinned relay:// URL."""
        syncer = shutil.which("syncer")
        argv = [syncer] if syncer else [sys.executable, "-m", "syncer"]
        p = self.popen("pub", [*argv, "relay", "--host", self.addr.pub, "--port", str(port)], env={"SYNCER_HOME": str(home)})
        out = LineReader(p)
        out.wait_for("listening on", 30)
        return out.wait_for("", 10)

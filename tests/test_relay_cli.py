"""`syncer relay` as a process: prints its address, relays between two devices, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from syncer.identity import load_or_create
from syncer.net.transport import Stream
from syncer.relay.client import RelayTransport
from syncer.relay.protocol import RelayUrl
from tests.helpers import SYNCER, run_syncer
from tests.natlab.lab import LineReader
from tests.transport_conformance import read_exactly

pytestmark = pytest.mark.skipif(SYNCER is None, reason="the `syncer` command is not installed")


def test_relay_command_serves_until_sigterm(tmp_path: Path, home: Path) -> None:
    assert SYNCER
    proc = subprocess.Popen(
        [SYNCER, "relay", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, SYNCER_HOME=str(home)),
    )
    try:
        out = LineReader(proc)
        host_port = out.wait_for("listening on ", 30)
        url = out.wait_for("", 5)
        relay = RelayUrl.parse(url)
        assert host_port == f"127.0.0.1:{relay.port}" and relay.port > 0
        assert relay.device_id is not None
        # the relay's identity is persistent and its own (not the device's in SYNCER_HOME)
        assert (home / "relay" / "cert.pem").exists() and not (home / "cert.pem").exists()

        a = load_or_create(tmp_path / "a.pem", tmp_path / "a.key")
        b = load_or_create(tmp_path / "b.pem", tmp_path / "b.key")

        async def main() -> None:
            got: asyncio.Queue[Stream] = asyncio.Queue()
            tb = RelayTransport(b, url)
            await tb.register(got.put)
            sa = await RelayTransport(a, url).connect(b.device_id)
            sb = await asyncio.wait_for(got.get(), 10)
            await sb.write(b"through another process")
            assert await read_exactly(sa, 23) == b"through another process"
            assert (sa.peer, sb.peer) == (b.device_id, a.device_id)
            sa.abort()
            sb.abort()
            await tb.close()

        asyncio.run(asyncio.wait_for(main(), 30))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout and proc.stderr
        proc.stdout.close()
        proc.stderr.close()


def test_relay_command_port_in_use_is_one_line_error(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_syncer(home, "relay", "--host", "127.0.0.1", "--port", str(port), timeout=30)
    assert r.returncode != 0
    assert r.stderr.startswith("syncer: cannot listen on 127.0.0.1:") and r.stderr.count("\n") == 1

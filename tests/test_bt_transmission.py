"""Interop with Debian's Transmission 3.00 (transmission-daemon + transmission-remote, installed
by scripts/test), both ways, loopback only:

- `syncer get` downloads a torrent made by transmission-create and seeded by Transmission
  (in the background meanwhile: Transmission unchokes new peers at its 10 s rechoke).
- Transmission downloads a `syncer publish`ed directory from its magnet. Transmission 3.00
  ignores a magnet's x.pe and never dials 127.0.0.0/8 peers it hears of from trackers, so here it
  is syncer that dials: the publication is made while no daemon runs, Transmission announces
  the magnet to a `syncer tracker`, then the daemon starts, announces, learns Transmission's
  address and connects; Transmission fetches the metadata (ut_metadata) and the files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.daemons import Node, wait_until
from tests.helpers import SYNCER
from tests.test_bt_interop import make_tree, server, syncer_home, tree

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("transmission-daemon") is None or shutil.which("transmission-remote") is None, reason="Transmission is not installed (scripts/test installs it as root)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Transmission:
    def __init__(self, root: Path) -> None:
        self.conf = root / "tr-conf"
        self.downloads = root / "tr-downloads"
        self.conf.mkdir()
        self.downloads.mkdir()
        self.rpc, self.peer_port = free_port(), free_port()
        settings = {
            "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False, "utp-enabled": False,
            "port-forwarding-enabled": False, "peer-port": self.peer_port, "rpc-port": self.rpc,
            "rpc-bind-address": "127.0.0.1", "rpc-whitelist-enabled": False, "rpc-authentication-required": False,
            "download-dir": str(self.downloads), "incomplete-dir-enabled": False, "message-level": 2,
        }
        (self.conf / "settings.json").write_text(json.dumps(settings))
        self.log = open(root / "transmission.log", "wb")
        self.proc = subprocess.Popen(["transmission-daemon", "-f", "-g", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.remote("-l").returncode == 0, 20, "transmission-daemon to answer")

    def remote(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["transmission-remote", f"127.0.0.1:{self.rpc}", *args], capture_output=True, text=True, timeout=20)

    def done(self, torrent_id: str = "1") -> bool:
        return "Percent Done: 100%" in self.remote("-t", torrent_id, "-i").stdout

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.mark.slow
def test_transmission_interop_both_ways(tmp_path):
    tr = Transmission(tmp_path)
    node = Node(tmp_path, "pub")
    getter: subprocess.Popen[str] | None = None
    try:
        # Transmission seeds a torrent it made; `syncer get` fetches it (in the background: the
        # first unchoke waits for Transmission's 10 s rechoke)
        theirs = make_tree(tmp_path / "theirs" / "pack", {"one.bin": 700_000, "two/three.txt": 5000}, seed=3)
        tfile = tmp_path / "pack.torrent"
        subprocess.run(["transmission-create", "-o", str(tfile), str(theirs)], check=True, capture_output=True, timeout=60)
        assert tr.remote("-a", str(tfile), "-w", str(theirs.parent)).returncode == 0
        wait_until(lambda: tr.done("1"), 30, "Transmission to verify its seed")
        magnet = subprocess.run(["transmission-show", "-m", str(tfile)], capture_output=True, text=True, check=True).stdout.strip()
        home = syncer_home(tmp_path)
        got = tmp_path / "got"
        got.mkdir()
        getter = subprocess.Popen([SYNCER, "get", magnet + f"&x.pe=127.0.0.1:{tr.peer_port}", "--to", str(got), "--json"], env=dict(os.environ, SYNCER_HOME=str(home)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # Transmission downloads a publication made while no daemon ran
        src = make_tree(tmp_path / "pub", {"song.ogg": 900_000, "art/cover.jpg": 120_000, "readme": 99})
        node.syncer("config", "set", "bt.enabled", "true", check=True)
        node.syncer("config", "set", "bt.listen", "127.0.0.1:0", check=True)
        with server("tracker", "--interval", "30") as tport:
            out = node.syncer("publish", str(src), "--tracker", f"http://127.0.0.1:{tport}/announce", "--json", check=True)
            pub = json.loads(out.stdout)
            assert pub["seeding"] is False  # no daemon yet: seeded once it starts
            assert tr.remote("-a", pub["magnet"]).returncode == 0
            node.start()
            wait_until(lambda: (tr.downloads / src.name).is_dir() and tree(tr.downloads / src.name) == tree(src), 60, "Transmission to download the publication")

        out, err = getter.communicate(timeout=60)
        assert getter.returncode == 0, err
        assert json.loads(out)["state"] == "done"
        assert tree(got / "pack") == tree(theirs)
    except BaseException:
        print(node.log_text()[-4000:])
        print((tmp_path / "transmission.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if getter is not None and getter.poll() is None:
            getter.kill()
            getter.wait(10)
        node.stop()
        tr.stop()

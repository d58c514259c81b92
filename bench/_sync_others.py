"""rsync and Syncthing sides of the sync benchmark, on loopback only."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from syncer.deviceid import DeviceId


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- rsync ------------------------------------------------------------------------------------
class RsyncDaemon:
    def __init__(self, root: Path, module_path: Path) -> None:
        self.port = free_port()
        self.conf = root / "rsyncd.conf"
        self.conf.write_text(
            f"port = {self.port}\naddress = 127.0.0.1\nuse chroot = no\npid file = {root}/rsyncd.pid\n"
            f"[m]\npath = {module_path}\nread only = yes\nuid = root\ngid = root\n"
        )
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={self.conf}"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsync daemon did not start")

    def pull(self, dst: Path) -> tuple[float, int]:
        """(seconds, bytes received) of one `rsync -a` pull."""
        dst.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        out = subprocess.run(["rsync", "-a", "--stats", f"rsync://127.0.0.1:{self.port}/m/", f"{dst}/"],
                             check=True, capture_output=True, text=True).stdout
        dt = time.perf_counter() - t
        m = re.search(r"Total bytes received: ([\d,.]+)", out)
        return dt, int(m.group(1).replace(",", "").replace(".", "")) if m else -1

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- Syncthing ---------------------------------------------------------------------------------
class Syncthing:
    def __init__(self, home: Path, name: str, watcher_delay: int = 1) -> None:
        self.home, self.name = home, name
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"],
                       check=True, capture_output=True)
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = x509.load_pem_x509_certificate((home / "cert.pem").read_bytes())
        self.device_id = str(DeviceId.from_cert_der(cert.public_bytes(Encoding.DER)))
        self.gui_port, self.port = free_port(), free_port()
        self.apikey = secrets.token_hex(16)
        self.watcher_delay = watcher_delay
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, peer: Syncthing, folder: Path) -> None:
        """Edit config.xml before the first start: loopback only, nothing phoning home."""
        path = self.home / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        gui = root.find("gui")
        gui.find("address").text = f"127.0.0.1:{self.gui_port}"  # type: ignore[union-attr]
        gui.find("apikey").text = self.apikey  # type: ignore[union-attr]
        opts = root.find("options")
        settings = {
            "listenAddress": f"tcp://127.0.0.1:{self.port}",
            "globalAnnounceEnabled": "false",
            "localAnnounceEnabled": "false",
            "relaysEnabled": "false",
            "natEnabled": "false",
            "urAccepted": "-1",
            "autoUpgradeIntervalH": "0",
            "crashReportingEnabled": "false",
            "startBrowser": "false",
        }
        for k, v in settings.items():
            el = opts.find(k)  # type: ignore[union-attr]
            if el is None:
                el = ET.SubElement(opts, k)  # type: ignore[arg-type]
            el.text = v
        for d in root.findall("device"):
            if d.get("id") == "":
                root.remove(d)
        dev = ET.SubElement(root, "device", {"id": peer.device_id, "name": peer.name, "compression": "metadata",
                                             "introducer": "false", "skipIntroductionRemovals": "false", "introducedBy": ""})
        ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{peer.port}"
        ET.SubElement(dev, "paused").text = "false"
        folder.mkdir(parents=True, exist_ok=True)
        f = ET.SubElement(root, "folder", {"id": "bench", "label": "bench", "path": str(folder), "type": "sendreceive",
                                           "rescanIntervalS": "3600", "fsWatcherEnabled": "true",
                                           "fsWatcherDelayS": str(self.watcher_delay), "ignorePerms": "false", "autoNormalize": "true"})
        ET.SubElement(f, "device", {"id": self.device_id, "introducedBy": ""})
        ET.SubElement(f, "device", {"id": peer.device_id, "introducedBy": ""})
        tree.write(path)

    def start(self) -> None:
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1")
        self.log = open(self.home / "syncthing.log", "wb")
        self.proc = subprocess.Popen(["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart", "--no-upgrade"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("/rest/system/ping")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("syncthing did not start")

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui_port}{path}", headers={"X-API-Key": self.apikey})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def status(self) -> dict:
        return self.api("/rest/db/status?folder=bench")

    def connected(self, peer: Syncthing) -> bool:
        c = self.api("/rest/system/connections")["connections"]
        return bool(c.get(peer.device_id, {}).get("connected"))

    def bytes_in_total(self) -> int:
        return int(self.api("/rest/system/connections")["total"]["inBytesTotal"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()
            self.proc = None


def edit_poll(src: Path, dst: Path, edits: int) -> list[float]:
    """Seconds until each of `edits` 4 KiB rewrites of src/edit.bin shows up in dst (polled)."""
    out = []
    for _ in range(edits):
        content = os.urandom(4096)
        t = time.perf_counter()
        (src / "edit.bin").write_bytes(content)
        deadline = t + 60
        while time.perf_counter() < deadline:
            try:
                if (dst / "edit.bin").read_bytes() == content:
                    break
            except (FileNotFoundError, PermissionError):
                pass
            time.sleep(0.005)
        out.append(time.perf_counter() - t)
        time.sleep(0.3)  # let both sides settle between edits (not part of the measurement)
    return out


def syncthing_available() -> bool:
    return shutil.which("syncthing") is not None

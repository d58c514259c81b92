"""BitTorrent interop with libtorrent (real sessions, real sockets, loopback only), both ways:

- libtorrent downloads a directory `syncer publish`ed by a daemon from the magnet alone (metadata
  over ut_metadata), finding the daemon only through a `syncer tracker`, then only through a
  `syncer dht-node` bootstrap; `syncer get` finds the same publication through the DHT, once
  beside the running daemon (the daemon's node) and once without one (a node of its own);
- `syncer get` downloads a libtorrent-seeded multi-file (hybrid, padded) torrent from its
  magnet; `--files` and BEP 53 `so=` fetch a subset and write nothing else; a rerun over complete
  files fetches nothing; `get --seed` then serves a fresh libtorrent session alone;
- kill -9 of `syncer get`, then a rerun resumes without fetching verified pieces again (counted
  by what the libtorrent seed uploaded);
- a hand-written peer that answers every request with garbage is detected, banned and dropped,
  and its pieces come from the honest seed.
libtorrent's LSD, UPnP, NAT-PMP, uTP and default DHT bootstrap nodes are off."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest

from syncer.bt.resume import journal_path
from tests.daemons import Node, wait_until
from tests.helpers import SYNCER, run_syncer

lt = pytest.importorskip("libtorrent", reason="libtorrent (the test extra) is not installed")
pytestmark = pytest.mark.e2e

LT_SETTINGS = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "dht_bootstrap_nodes": "",
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_enforce_node_id": False,
    "dht_prefer_verified_node_ids": False,
    "allow_multiple_connections_per_ip": True,
    "announce_to_all_trackers": True,
    "alert_mask": lt.alert.category_t.all_categories,
}


def lt_session(**extra) -> lt.session:
    return lt.session({**LT_SETTINGS, **extra})


def make_tree(root: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    rnd = __import__("random").Random(seed)
    for name, size in sizes.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(size))
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def strip(magnet: str, *keys: str) -> str:
    q = [(k, v) for k, v in parse_qsl(magnet[len("magnet:?") :]) if k not in keys]
    return "magnet:?" + urlencode(q, safe=":/")


def wait_lt_done(ses: lt.session, h: lt.torrent_handle, timeout: float, what: str) -> None:
    def done():
        ses.pop_alerts()
        return h.status().is_seeding

    wait_until(done, timeout, what)


@contextlib.contextmanager
def server(*args: str) -> Iterator[int]:
    p = subprocess.Popen([SYNCER, *args, "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        p.terminate()
        p.wait(20)


@contextlib.contextmanager
def publisher(tmp_path: Path, **config: str) -> Iterator[Node]:
    node = Node(tmp_path, "pub")
    node.syncer("config", "set", "bt.enabled", "true", check=True)
    node.syncer("config", "set", "bt.listen", "127.0.0.1:0", check=True)
    for k, v in config.items():
        node.syncer("config", "set", k.replace("__", "."), v, check=True)
    try:
        yield node.start()
    except BaseException:
        print(node.log_text()[-6000:])
        raise
    finally:
        node.stop()


def publish(node: Node, path: Path, *args: str) -> str:
    out = node.syncer("publish", str(path), "--json", *args, check=True)
    return json.loads(out.stdout)["magnet"]


def fetch_with_libtorrent(magnet: str, save: Path, timeout: float = 30, **extra) -> lt.session:
    ses = lt_session(**extra)
    atp = lt.parse_magnet_uri(magnet)
    atp.save_path = str(save)
    h = ses.add_torrent(atp)
    wait_lt_done(ses, h, timeout, "libtorrent to download the publication")
    return ses


# --- syncer publishes, libtorrent downloads -------------------------------------------------
@pytest.mark.slow
def test_libtorrent_fetches_publications_through_the_tracker_only_and_the_dht_only(tmp_path):
    """One daemon, two publications: A announced only to a `syncer tracker` (--no-dht), B only
    into the DHT through a `syncer dht-node` (no tracker); each fetched by a libtorrent session
    that can only find it that way (no x.pe, and DHT off for A / no tracker for B)."""
    from syncer.api import client
    from syncer.discovery.dht import krpc
    from syncer.paths import get_paths

    a = make_tree(tmp_path / "photos", {"a.jpg": 700_000, "sub/b.raw": 1_500_000, "sub/deep/c.txt": 10, "empty.txt": 0})
    b = make_tree(tmp_path / "data", {"x.bin": 300_000, "y/z.bin": 200_000}, seed=2)
    with server("tracker", "--interval", "30") as tport, server("dht-node") as dport, publisher(tmp_path, discovery__dht__enabled="true", discovery__dht__bootstrap=f"127.0.0.1:{dport}") as node:
        url = f"http://127.0.0.1:{tport}/announce"
        magnet_a = publish(node, a, "--tracker", url, "--no-dht", "--name", "holiday")
        magnet_b = publish(node, b)
        assert "x.pe=127.0.0.1:" in magnet_a and "tr=http" in magnet_a and "tr=" not in magnet_b
        fetch_with_libtorrent(strip(magnet_a, "x.pe"), tmp_path / "lt-a")
        assert tree(tmp_path / "lt-a" / "holiday") == tree(a)

        ih_b = bytes.fromhex(dict(parse_qsl(magnet_b[8:]))["xt"].rsplit(":", 1)[1])

        def announced() -> bool:  # ask the bootstrap node, over KRPC, for B's peers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(krpc.query(b"t1", "get_peers", {"id": os.urandom(20), "info_hash": ih_b}), ("127.0.0.1", dport))
                r = krpc.parse(s.recv(4096))
                return bool(r.get(b"r", {}).get(b"values"))

        wait_until(announced, 30, "the daemon to announce B into the DHT")
        # kept alive below: a vanished DHT node would cost the later lookups query timeouts
        lt_b = fetch_with_libtorrent(strip(magnet_b, "x.pe"), tmp_path / "lt-b", 40, enable_dht=True, dht_bootstrap_nodes=f"127.0.0.1:{dport}", dht_announce_interval=2)
        assert tree(tmp_path / "lt-b" / "data") == tree(b)

        # `syncer get` next to the running daemon looks B up through the daemon's DHT node (its
        # own listener is another port) and fetches it from the daemon's seed
        got = tmp_path / "got-b"
        got.mkdir()
        proc = node.syncer("get", strip(magnet_b, "x.pe"), "--to", str(got), "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state"] == "done" and tree(got / "data") == tree(b)
        # and without a daemon, through a DHT node of its own joined via the bootstrap node
        lone = syncer_home(tmp_path, "lone", dht_bootstrap=f"127.0.0.1:{dport}")
        got = tmp_path / "got-lone"
        got.mkdir()
        s = get(lone, strip(magnet_b, "x.pe"), "--to", str(got))
        assert s["state"] == "done" and tree(got / "data") == tree(b)
        del lt_b

        # the publications show their uploads
        rows = {r["name"]: r for r in json.loads(node.syncer("publications", "--json", check=True).stdout)}
        assert rows["holiday"]["state"] == "seeding" and rows["holiday"]["uploaded"] >= 2_200_010 and rows["holiday"]["ratio"] >= 1.0
        assert rows["data"]["uploaded"] >= 500_000
        # the BitTorrent port is not the sync port, and reaches nothing but publications
        listen = client.call(get_paths({"SYNCER_HOME": str(node.home)}), "GET", "/rest/bt/status")["listen"]
        port = int(listen.rsplit(":", 1)[1])
        assert port != int(node.listen_url().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(b"\x13BitTorrent protocol" + bytes(8) + os.urandom(20) + b"-XX0000-" + os.urandom(12))
            s.settimeout(5)
            assert s.recv(100) == b""  # unknown info-hash: closed without a handshake
        node.syncer("unpublish", "holiday", check=True)
        assert [r["name"] for r in json.loads(node.syncer("publications", "--json", check=True).stdout)] == ["data"]
        with socket.create_connection(("127.0.0.1", port), 5) as s:  # and A is no longer served
            ih_a = bytes.fromhex(dict(parse_qsl(magnet_a[8:]))["xt"].rsplit(":", 1)[1])
            s.sendall(b"\x13BitTorrent protocol" + bytes(8) + ih_a + b"-XX0000-" + os.urandom(12))
            s.settimeout(5)
            assert s.recv(100) == b""


# --- libtorrent seeds, syncer gets ----------------------------------------------------------
class LtSeed:
    """A libtorrent session seeding a (hybrid, so padded) multi-file torrent of `root`."""

    def __init__(self, root: Path, piece_size: int = 0, **settings) -> None:
        ct = lt.create_torrent(sorted(lt.list_files(str(root)), key=lambda f: f.filename.split("/")), piece_size)
        lt.set_piece_hashes(ct, str(root.parent))
        self.data = lt.bencode(ct.generate())
        self.ti = lt.torrent_info(self.data)
        self.ses = lt_session(**settings)
        # libtorrent exempts local peers from rate limits; loopback peers join the global class
        everyone = lt.ip_filter()
        everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        self.ses.set_peer_class_filter(everyone)
        atp = lt.add_torrent_params()
        atp.ti = self.ti
        atp.save_path = str(root.parent)
        self.h = self.ses.add_torrent(atp)
        wait_until(lambda: self.h.status().is_seeding, 30, "libtorrent to check its seed")
        self.port = self.ses.listen_port()
        self.magnet = lt.make_magnet_uri(self.h) + f"&x.pe=127.0.0.1:{self.port}"

    def uploaded(self) -> int:
        self.ses.pop_alerts()
        return self.h.status().total_payload_upload


def get(home: Path, *args: str, timeout: float = 60) -> dict:
    proc = run_syncer(home, "get", *args, "--json", timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def syncer_home(tmp_path: Path, name: str = "getter", dht_bootstrap: str = "") -> Path:
    """A SYNCER_HOME for `syncer get`: BitTorrent on loopback, DHT off unless a bootstrap node is
    given (config.toml written directly: the CLI's `config set` costs a process start each)."""
    home = tmp_path / name
    home.mkdir(parents=True)
    dht = f'enabled = true\nbootstrap = ["{dht_bootstrap}"]' if dht_bootstrap else "enabled = false"
    (home / "config.toml").write_text(f'[discovery.dht]\n{dht}\n\n[bt]\nlisten = "127.0.0.1:0"\n')
    return home


def test_get_downloads_a_libtorrent_seed_and_a_subset_of_it(tmp_path):
    src = make_tree(tmp_path / "seed" / "album", {"cover.png": 50_000, "cd1/t1.flac": 900_000, "cd1/t2.flac": 1_100_000, "cd2/t3.flac": 600_000, "notes.txt": 777})
    seed = LtSeed(src, 64 << 10)
    home = syncer_home(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    s = get(home, seed.magnet, "--to", str(full))
    assert s["state"] == "done" and s["banned"] == []
    assert tree(full / "album") == tree(src)
    assert sorted(p.name for p in full.iterdir()) == ["album"]
    # a subset: only the matching files are written, nothing else (no part files, no pads)
    part = tmp_path / "part"
    part.mkdir()
    s = get(home, seed.magnet, "--to", str(part), "--files", "cd1/*", "--files", "notes.txt")
    assert s["state"] == "done"
    got = tree(part)
    assert sorted(got) == ["album/cd1/t1.flac", "album/cd1/t2.flac", "album/notes.txt"]
    assert all(got[k] == (src.parent / k).read_bytes() for k in got)
    assert sorted(str(p.relative_to(part)) for p in part.rglob("*")) == ["album", "album/cd1", "album/cd1/t1.flac", "album/cd1/t2.flac", "album/notes.txt"]
    # BEP 53: the magnet's so= selects by file index (pad files count, as in the file list)
    from syncer.bt.metainfo import parse_torrent

    index = next(i for i, f in enumerate(parse_torrent(seed.data).info.files) if f.name == "cd2/t3.flac")
    so = tmp_path / "so"
    so.mkdir()
    assert get(home, seed.magnet + f"&so={index}", "--to", str(so))["state"] == "done"
    assert sorted(tree(so)) == ["album/cd2/t3.flac"]
    proc = run_syncer(home, "get", str(tmp_path / "missing.torrent"), "--to", str(part))
    assert proc.returncode != 0 and "cannot read" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # a rerun over complete files verifies them and fetches nothing; with --seed (and a .torrent
    # file this time) it then keeps seeding: with libtorrent's seed gone, a fresh libtorrent
    # session fetches the torrent, pad files included, from the syncer process alone
    tfile = tmp_path / "album.torrent"
    tfile.write_bytes(seed.data)
    env = dict(os.environ, SYNCER_HOME=str(home))
    s = get(home, seed.magnet, "--to", str(full))  # complete already: verified, nothing fetched
    assert s["state"] == "done" and s["downloaded"] == 0 and s["resumed_pieces"] == seed.ti.num_pieces()
    proc = subprocess.Popen([SYNCER, "get", str(tfile), "--to", str(full), "--seed"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "complete; seeding on 127.0.0.1:" in line, line
        port = int(line.split("seeding on 127.0.0.1:")[1].split()[0])
        seed.ses.remove_torrent(seed.h)
        fetch_with_libtorrent(strip(seed.magnet, "x.pe") + f"&x.pe=127.0.0.1:{port}", tmp_path / "from-syncer")
        assert tree(tmp_path / "from-syncer" / "album") == tree(src)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def _verified_on_disk(part_file: Path, ti: lt.torrent_info) -> int:
    """Pieces of a single-file torrent whose data in the part file matches their hash."""
    data = part_file.read_bytes() if part_file.exists() else b""
    plen = ti.piece_length()
    return sum(1 for i in range(ti.num_pieces()) if hashlib.sha1(data[i * plen : (i + 1) * plen]).digest() == ti.hash_for_piece(i))


@pytest.mark.slow
def test_get_resumes_after_kill_9_without_refetching_verified_pieces(tmp_path):
    src = tmp_path / "seed" / "movie.mkv"
    src.parent.mkdir()
    src.write_bytes(os.urandom(8 << 20))
    seed = LtSeed(src, 64 << 10, upload_rate_limit=2 << 20)
    n = seed.ti.num_pieces()
    home = syncer_home(tmp_path)
    dl = tmp_path / "dl"
    dl.mkdir()
    env = dict(os.environ, SYNCER_HOME=str(home))
    proc = subprocess.Popen([SYNCER, "get", seed.magnet, "--to", str(dl)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ih = bytes.fromhex(str(seed.ti.info_hashes().v1))
    journal = journal_path(home, ih, dl)
    try:
        wait_until(lambda: journal.exists() and (journal.stat().st_size - 28) // 4 >= n // 3, 30, "a third of the pieces")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    verified = _verified_on_disk(dl / "movie.mkv.part", seed.ti)
    assert n // 3 <= verified < n
    before = seed.uploaded()
    seed.ses.apply_settings({"upload_rate_limit": 0})
    s = get(home, seed.magnet, "--to", str(dl))
    assert s["state"] == "done"
    assert (dl / "movie.mkv").read_bytes() == src.read_bytes() and not (dl / "movie.mkv.part").exists()
    assert s["resumed_pieces"] >= verified
    plen = seed.ti.piece_length()
    assert s["downloaded"] <= (n - verified) * plen
    wait_until(lambda: seed.uploaded() - before >= s["downloaded"], 10, "the seed's counters")
    assert seed.uploaded() - before <= (n - verified) * plen + plen  # one piece of slack: a request in flight at the kill


class GarbagePeer:
    """A peer that claims every piece and answers every request with random bytes."""

    def __init__(self, info_hash: bytes, num_pieces: int) -> None:
        self.info_hash = info_hash
        self.num_pieces = num_pieces
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.blocks_sent = 0
        self.connections = 0
        self.closed_by_peer = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv(self, c: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def _run(self) -> None:
        self.sock.settimeout(60)
        with contextlib.suppress(OSError):
            while True:
                c, _ = self.sock.accept()
                self.connections += 1
                threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            hs = self._recv(c, 68)
            assert hs[28:48] == self.info_hash
            c.sendall(b"\x13BitTorrent protocol" + bytes(8) + self.info_hash + b"-GP0001-" + os.urandom(12))
            bits = bytearray(b"\xff" * -(-self.num_pieces // 8))
            if self.num_pieces % 8:
                bits[-1] = (0xFF << (8 - self.num_pieces % 8)) & 0xFF
            c.sendall(struct.pack(">IB", 1 + len(bits), 5) + bits + struct.pack(">IB", 1, 1))  # bitfield, unchoke
            while True:
                (length,) = struct.unpack(">I", self._recv(c, 4))
                msg = self._recv(c, length) if length else b""
                if msg[:1] == b"\x06":
                    index, begin, n = struct.unpack(">III", msg[1:13])
                    c.sendall(struct.pack(">IBII", 9 + n, 7, index, begin) + os.urandom(n))
                    self.blocks_sent += 1
        except (ConnectionError, OSError, AssertionError):
            self.closed_by_peer.set()
        finally:
            c.close()


def test_a_peer_sending_corrupt_pieces_is_banned_and_its_pieces_fetched_elsewhere(tmp_path):
    src = tmp_path / "seed" / "disk.img"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 << 20))
    seed = LtSeed(src, 64 << 10, upload_rate_limit=1 << 20)
    ih = bytes.fromhex(str(seed.ti.info_hashes().v1))
    bad = GarbagePeer(ih, seed.ti.num_pieces())
    magnet = seed.magnet.replace(f"x.pe=127.0.0.1:{seed.port}", f"x.pe=127.0.0.1:{bad.port}&x.pe=127.0.0.1:{seed.port}")
    home = syncer_home(tmp_path)
    dl = tmp_path / "dl"
    dl.mkdir()
    s = get(home, magnet, "--to", str(dl))
    assert s["state"] == "done"
    assert (dl / "disk.img").read_bytes() == src.read_bytes()
    assert [b["peer"] for b in s["banned"]] == [f"127.0.0.1:{bad.port}"], s["banned"]
    assert bad.blocks_sent > 0 and s["wasted"] > 0
    assert bad.closed_by_peer.wait(10)
    assert bad.connections == 1  # banned: never dialled again

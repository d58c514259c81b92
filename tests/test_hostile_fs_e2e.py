"""A hostile paired device against a real daemon (real TLS, real protocol, real files): it tries
every way through a symlinked parent out of the shared folder, plants setuid bits and pushes a
`.syncerignore`. Each test puts a secret tree outside the folder and checks it byte for byte and
mode for mode afterwards, and that the peer never received any of it; each also waits for a
positive sign that the victim processed the attack (a control file arrived, the refused names
are listed as per-file errors in `syncer status`), so that "nothing happened" means something."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from syncer.deviceid import DeviceId
from syncer.index.version import short_id
from syncer.wire import (
    ERR_NO_SUCH_BLOCK,
    ERR_NO_SUCH_FILE,
    Index,
    IndexUpdate,
    Piece,
    PieceError,
    Request,
    WireFile,
)
from tests.daemons import Node, cluster, wait_until
from tests.hostile import HostilePeer, deleted_entry, dir_entry, file_entry, symlink_entry
from tests.syncfix import folder_status, share, snapshot

pytestmark = pytest.mark.e2e
FID = "hostile-fs"
SECRET = b"-----BEGIN PRIVATE KEY----- not for peers"
MTIME = 1_700_000_000_000_000_000


def make_outside(tmp_path: Path) -> Path:
    """The secret tree a peer must never touch: a private key, a directory of them, more files."""
    out = tmp_path / "outside"
    (out / "secretdir").mkdir(parents=True)
    (out / "secret").write_bytes(SECRET)
    (out / "secretdir" / "id_rsa").write_bytes(SECRET + b" 2")
    os.chmod(out / "secretdir", 0o700)
    os.chmod(out / "secret", 0o600)
    return out


def entries_from_victim(peer: HostilePeer) -> list[WireFile]:
    return [f for m in peer.received_of(Index) + peer.received_of(IndexUpdate) for f in m.files]


def assert_nothing_leaked(peer: HostilePeer, outside: Path) -> None:
    """The peer got no byte of anything outside: no Piece at all, no index entry describing an
    outside file (by name or by block hash)."""
    secret_hashes = set()
    for p in outside.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            secret_hashes.add(hashlib.sha256(data).digest())
    assert peer.received_of(Piece) == []
    for f in entries_from_victim(peer):
        assert not secret_hashes & set(f.blocks), f.name
        assert "secret" not in f.name and "id_rsa" not in f.name, f.name


def file_error_names(b: Node) -> set[str]:
    return {e["name"] for e in folder_status(b, FID).get("file_errors", [])}


@contextmanager
def victim(tmp_path: Path, *, watch: bool = True, setup: dict[str, bytes] | None = None, config: dict[str, str] | None = None) -> Iterator[tuple[Node, Path, HostilePeer]]:
    """A real daemon sharing FID at tmp_path/B (pre-filled with `setup`), paired with a hostile
    peer that is connected and shares FID too."""
    peer = HostilePeer(tmp_path)
    try:
        with cluster(tmp_path, "b") as (b,):
            dest = tmp_path / "B"
            for name, data in (setup or {}).items():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                (dest / name).write_bytes(data)
                os.utime(dest / name, ns=(MTIME, MTIME))
            share(b, dest, FID)
            if not watch:
                b.syncer("config", "set", "watch.enabled", "false", check=True)
            for key, value in (config or {}).items():
                b.syncer("config", "set", key, value, check=True)
            b.syncer("pair", peer.device_id, "--name", "evil", check=True)
            b.start()
            with peer.connect(b.listen_url()):
                peer.share(FID, b.device_id)
                yield b, dest, peer
    finally:
        peer.shutdown()


def arrived(path: Path, content: bytes) -> bool:
    return path.is_file() and path.read_bytes() == content


@pytest.mark.slow
def test_symlinked_parents_never_reach_outside(tmp_path):
    """Symlinks `abs -> /…/outside` and `rel -> ../outside`, then files, directories and
    overwrites through them, and a file announced over an outside directory: the links are
    synced as links, everything through them is refused per file, the rest syncs. Then a
    directory `d` that a later update turns into a symlink to the outside, and the update after
    that writes, overwrites and chmods through it: refused too."""
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    with victim(tmp_path) as (b, dest, peer):
        v = [(peer.short, 1)]
        contents = {n: os.urandom(2000) for n in ("abs/new.txt", "rel/new.txt", "abs/secret", "rel/secret", "abs/secretdir", "control.txt")}
        peer.serve(contents)
        # the links first (so that they, not real directories, are on disk), then through them
        peer.send(Index(FID, [symlink_entry("abs", str(outside), v), symlink_entry("rel", "../outside", v)]))
        wait_until(lambda: (dest / "abs").is_symlink() and (dest / "rel").is_symlink(), 60, "the symlinks")
        peer.send(IndexUpdate(FID, [
            *[file_entry(n, c, v, sequence=3 + i) for i, (n, c) in enumerate(contents.items())],
            dir_entry("abs/newdir", v, sequence=20),
            dir_entry("rel/secretdir", v, sequence=21, permissions=0o777),  # an outside directory's mode
        ]))
        refused = {"abs/new.txt", "rel/new.txt", "abs/secret", "rel/secret", "abs/secretdir", "abs/newdir", "rel/secretdir"}
        wait_until(lambda: arrived(dest / "control.txt", contents["control.txt"]), 60, "the control file")
        wait_until(lambda: refused <= file_error_names(b), 60, f"per-file errors for {sorted(refused)}")
        assert os.readlink(dest / "abs") == str(outside) and os.readlink(dest / "rel") == "../outside"
        errors = {e["name"]: e["error"] for e in folder_status(b, FID)["file_errors"]}
        assert "symlink" in errors["abs/new.txt"] and "symlink" in errors["rel/secretdir"]
        assert folder_status(b, FID)["state"] != "stopped"
        assert snapshot(outside) == before
        assert_nothing_leaked(peer, outside)
        names = {f.name for f in entries_from_victim(peer)}
        assert {"abs", "rel", "control.txt"} <= names and not any(n.startswith(("abs/", "rel/")) for n in names)

        # a directory replaced by a symlink in a later update
        a1, a2, sec, c2 = os.urandom(500), os.urandom(600), os.urandom(700), os.urandom(100)
        peer.serve({"d/a": a1})
        peer.send(IndexUpdate(FID, [dir_entry("d", [(peer.short, 1)], sequence=30), file_entry("d/a", a1, [(peer.short, 1)], sequence=31)]))
        wait_until(lambda: arrived(dest / "d" / "a", a1), 60, "d/a")
        peer.send(IndexUpdate(FID, [deleted_entry("d/a", 0, [(peer.short, 2)], sequence=32)]))
        wait_until(lambda: not (dest / "d" / "a").exists(), 60, "d/a deleted")
        peer.send(IndexUpdate(FID, [symlink_entry("d", str(outside), [(peer.short, 2)], sequence=33)]))
        wait_until(lambda: (dest / "d").is_symlink(), 60, "d replaced by a symlink")
        peer.serve({"d/a": a2, "d/secret": sec, "control2.txt": c2})
        peer.send(IndexUpdate(FID, [
            file_entry("d/a", a2, [(peer.short, 3)], sequence=34),
            file_entry("d/secret", sec, [(peer.short, 1)], sequence=35),
            dir_entry("d/secretdir", [(peer.short, 1)], sequence=36, permissions=0o777),
            file_entry("control2.txt", c2, [(peer.short, 1)], sequence=37),
        ]))
        wait_until(lambda: arrived(dest / "control2.txt", c2), 60, "the second control file")
        wait_until(lambda: {"d/a", "d/secret", "d/secretdir"} <= file_error_names(b), 60, "per-file errors below d")
        assert snapshot(outside) == before
        assert_nothing_leaked(peer, outside)


def test_victims_own_symlink_is_never_traversed_to_serve_archive_conflict_or_delete(tmp_path):
    """The victim's user replaces directory `d` by a symlink to the outside (same names, sizes
    and mtimes there) and no rescan has happened yet, so the index still lists d/f, d/h, d/k as
    files. The peer then requests d/f's blocks (the old code served the outside file), replaces
    d/f (archiving would move the outside file into the trash can), sends a concurrent d/h (a
    conflict copy would rename it), deletes d/k: all refused. After a rescan d is announced as
    a symlink and nothing behind it is ever served, even when asked for by name."""
    outside = make_outside(tmp_path)
    originals = {n: os.urandom(len(SECRET)) for n in ("d/f", "d/h", "d/k")}
    for n in ("f", "h", "k"):  # outside twins: same size and mtime as the indexed files
        (outside / n).write_bytes(SECRET)
        os.utime(outside / n, ns=(MTIME, MTIME))
    before = snapshot(outside)
    with victim(tmp_path, watch=False, setup=originals) as (b, dest, peer):
        b_short = short_id(DeviceId.parse(b.device_id))
        wait_until(lambda: {"d/f", "d/h", "d/k"} <= {f.name for f in entries_from_victim(peer)}, 60, "the victim's index")
        os.rename(dest / "d", tmp_path / "d.away")
        os.symlink(outside, dest / "d")
        peer.send(Request(1, FID, "d/f", 0, 0, len(SECRET), hashlib.sha256(originals["d/f"]).digest()))
        peer.send(Request(2, FID, "d/secret", 0, 0, len(SECRET), hashlib.sha256(SECRET).digest()))
        answers = wait_until(lambda: len(peer.received_of(PieceError)) >= 2 and peer.received_of(PieceError), 60, "answers")
        assert {a.code for a in answers} <= {ERR_NO_SUCH_BLOCK, ERR_NO_SUCH_FILE}
        new_f, new_h, c = os.urandom(900), os.urandom(901), os.urandom(50)
        peer.serve({"d/f": new_f, "d/h": new_h, "control.txt": c})
        # the victim's counters are its clock in seconds: dominate what it announced
        ours = max(c for f in entries_from_victim(peer) if f.name.startswith("d/") for d, c in f.version if d == b_short)
        dominating = sorted([(b_short, ours), (peer.short, 1)])
        later = MTIME + 10**12
        peer.send(Index(FID, [
            file_entry("d/f", new_f, dominating),
            file_entry("d/h", new_h, [(peer.short, 1)], mtime_ns=later),  # concurrent and newer
            deleted_entry("d/k", 0, dominating),
            file_entry("control.txt", c, [(peer.short, 1)]),
        ]))
        wait_until(lambda: arrived(dest / "control.txt", c), 60, "the control file")
        wait_until(lambda: {"d/f", "d/h", "d/k"} <= file_error_names(b), 60, "per-file errors for d/f, d/h, d/k")
        assert snapshot(outside) == before
        assert not list((dest / ".syncer").rglob("*~*"))  # nothing archived from outside
        # a rescan announces d as what it now is, a symlink; nothing behind it, ever
        b.syncer("scan", FID, check=True)
        wait_until(lambda: any(f.name == "d" and f.type == 2 for f in entries_from_victim(peer)), 60, "d announced as a symlink")
        peer.send(Request(3, FID, "d/secret", 0, 0, len(SECRET), hashlib.sha256(SECRET).digest()),
                  Request(4, FID, "d/f", 0, 0, len(SECRET), hashlib.sha256(SECRET).digest()))
        wait_until(lambda: len(peer.received_of(PieceError)) >= 4, 60, "answers to the requests by name")
        assert snapshot(outside) == before
        assert_nothing_leaked(peer, outside)
        names = {f.name for f in entries_from_victim(peer)}
        assert names & {"d/secret", "d/secretdir", "d/secretdir/id_rsa"} == set()


def test_peer_metadata_masked_or_refused_and_syncerignore_stays_local(tmp_path):
    """setuid/setgid/sticky bits are masked, bad permission values and too deep names refused;
    a `.syncerignore` from the peer is refused and the victim's own never announced."""
    own = b"*.log\n"
    with victim(tmp_path, setup={".syncerignore": own, "a.log": b"log", "keep.txt": b"keep"}) as (b, dest, peer):
        v = [(peer.short, 1)]
        tool, minus, c = b"#!/bin/sh\necho pwned\n", os.urandom(10), os.urandom(10)
        deep = "/".join(["d"] * 300)
        peer.serve({"tool": tool, "minus": minus, "control.txt": c, deep: c})
        peer.send(Index(FID, [
            file_entry("tool", tool, v, permissions=0o6755),
            dir_entry("shared", v, permissions=0o1777),
            dir_entry("gdir", v, permissions=0o2775),
            file_entry("minus", minus, v, permissions=-1),
            file_entry("huge", minus, v, permissions=0o17777),
            file_entry(deep, c, v),
            file_entry("control.txt", c, v),
        ]))
        wait_until(lambda: arrived(dest / "control.txt", c) and arrived(dest / "tool", tool), 60, "tool and the control file")
        wait_until(lambda: (dest / "gdir").is_dir() and (dest / "shared").is_dir(), 60, "the directories")
        assert stat.S_IMODE(os.lstat(dest / "tool").st_mode) == 0o755
        assert stat.S_IMODE(os.lstat(dest / "shared").st_mode) == 0o777
        assert stat.S_IMODE(os.lstat(dest / "gdir").st_mode) == 0o775
        assert not (dest / "minus").exists() and not (dest / "huge").exists() and not (dest / "d").exists()
        # what the victim records (and announces) is what is on disk: no rescan ping-pong
        announced = wait_until(lambda: {f.name: f for f in entries_from_victim(peer) if f.name in ("tool", "shared")}
                               if len({f.name for f in entries_from_victim(peer)} & {"tool", "shared"}) == 2 else None, 60, "the victim's index")
        assert announced["tool"].permissions == 0o755 and announced["shared"].permissions == 0o777
        assert "permissions -1 out of range" in b.log_text() and "deeper than 255" in b.log_text()

        # .syncerignore
        c = os.urandom(20)
        peer.serve({".syncerignore": b"*\n", "control2.txt": c})
        peer.send(IndexUpdate(FID, [file_entry(".syncerignore", b"*\n", v, sequence=20), file_entry("control2.txt", c, v, sequence=21)]))
        wait_until(lambda: arrived(dest / "control2.txt", c), 60, "the control file")
        assert (dest / ".syncerignore").read_bytes() == own
        # the victim keeps announcing its own changes (a pushed `*` would have silenced it)
        (dest / "later.txt").write_text("mine")
        wait_until(lambda: "later.txt" in {f.name for f in entries_from_victim(peer)}, 60, "the victim's own new file")
        names = {f.name for f in entries_from_victim(peer)}
        assert ".syncerignore" not in names and "a.log" not in names and "keep.txt" in names
        assert "local to each device" in b.log_text()


def _open_paths(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_trash_can_pruned_and_served_files_never_pinned(tmp_path):
    """versions.keep=2: a file replaced four times leaves two old versions; an expired version
    planted before the start is swept by the periodic prune; a file the peer downloaded from the
    victim and the victim's user then deleted is not held open (its disk space comes back)."""
    served = os.urandom(300_000)
    ancient = ".syncer/versions/ancient~20200101-000000.txt"  # mtime MTIME: long expired
    setup = {"served.bin": served, ancient: b"expired"}
    with victim(tmp_path, setup=setup, config={"versions.keep": "2", "versions.max_age_days": "30"}) as (b, dest, peer):
        old = dest / ancient
        for i in range(1, 5):
            body = f"version {i}".encode()
            peer.serve({"doc.txt": body})
            peer.send(IndexUpdate(FID, [file_entry("doc.txt", body, [(peer.short, i)], sequence=i, mtime_ns=MTIME + i)]))
            wait_until(lambda body=body: arrived(dest / "doc.txt", body), 60, f"doc.txt version {i}")
        # pruned right after the batch that archived the third version (after the rename)
        def two_versions() -> list[Path] | None:
            found = list((dest / ".syncer" / "versions").glob("doc~*"))
            return found if len(found) == 2 else None

        kept = wait_until(two_versions, 30, "two versions")
        assert sorted(p.read_bytes() for p in kept) == [b"version 2", b"version 3"]
        wait_until(lambda: not old.exists(), 30, "the periodic prune of an expired version")
        # serving: the peer downloads a block, the user deletes the file
        wait_until(lambda: "served.bin" in {f.name for f in entries_from_victim(peer)}, 60, "the victim's index")
        f = next(f for f in entries_from_victim(peer) if f.name == "served.bin")
        peer.send(Request(7, FID, "served.bin", 0, 0, f.block_size, f.blocks[0]))
        wait_until(lambda: peer.received_of(Piece), 60, "a served block")
        assert peer.received_of(Piece)[0].data == served[: f.block_size]
        assert b.proc is not None
        assert str(dest / "served.bin") in _open_paths(b.proc.pid)  # cached for more requests
        (dest / "served.bin").unlink()
        wait_until(lambda: not any("served.bin" in p for p in _open_paths(b.proc.pid)), 30, "the deleted file's fd closed")

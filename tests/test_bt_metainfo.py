"""Metainfo (info dictionaries, info-hashes, .torrent files), magnet links and the torrent
builder: info-hashes equal libtorrent's for the same files, hostile names are sanitised, hostile
dictionaries are refused with one MetainfoError, never anything else (Hypothesis)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.bt import magnet
from syncer.bt.create import CreateError, build, piece_length_for
from syncer.bt.metainfo import (
    MAX_COMPONENT,
    MetainfoError,
    parse_info,
    parse_torrent,
    sanitize_component,
    torrent_file,
)
from syncer.codec import bencode


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


FILES = {"a.txt": b"hello\n" * 5000, "sub/b.bin": bytes(range(256)) * 300, "sub/c/d": b"x" * 16384, "zero": b""}


def test_info_hash_equals_libtorrents_for_the_same_files(tmp_path):
    lt = pytest.importorskip("libtorrent")
    root = write(tmp_path / "pub", FILES)
    for plen in (16384, 32768):
        files = sorted(lt.list_files(str(root)), key=lambda f: f.filename.split("/"))
        ct = lt.create_torrent(files, plen, lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, str(tmp_path))
        ti = lt.torrent_info(lt.bencode(ct.generate()))
        info, _ = build(root, piece_length=plen)
        assert info.info_hash.hex() == str(ti.info_hashes().v1)
        assert info.raw == lt.bencode(ct.generate()[b"info"])
    # a single file
    one = write(tmp_path / "one", {"movie.mkv": b"m" * 100_000}) / "movie.mkv"
    ct = lt.create_torrent([f for f in lt.list_files(str(one))], 16384, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(one.parent))
    info, _ = build(one, piece_length=16384)
    assert info.single_file and info.info_hash.hex() == str(lt.torrent_info(lt.bencode(ct.generate())).info_hashes().v1)


def test_libtorrent_hybrid_torrents_parse_with_their_pad_files(tmp_path):
    lt = pytest.importorskip("libtorrent")
    root = write(tmp_path / "pub", FILES)
    ct = lt.create_torrent(sorted(lt.list_files(str(root)), key=lambda f: f.filename.split("/")), 16384)  # v1+v2
    lt.set_piece_hashes(ct, str(tmp_path))
    data = lt.bencode(ct.generate())
    t = parse_torrent(data)
    ti = lt.torrent_info(data)
    assert t.info.info_hash.hex() == str(ti.info_hashes().v1)
    pads = [f for f in t.info.files if f.pad]
    assert pads and all(f.path[0] == ".pad" for f in pads)
    real = {f.name: f.length for f in t.info.files if not f.pad}
    assert real == {k: len(v) for k, v in FILES.items()}
    assert t.info.total_length == ti.total_size() and t.info.num_pieces == ti.num_pieces()


def test_torrent_file_round_trip_and_trackers(tmp_path):
    info, fp = build(write(tmp_path / "pub", FILES))
    data = torrent_file(info, ["http://t1/announce", "http://t2/announce"], now=1_700_000_000)
    t = parse_torrent(data)
    assert t.info.info_hash == info.info_hash == hashlib.sha1(info.raw).digest()
    assert t.trackers == ("http://t1/announce", "http://t2/announce")
    assert bencode.decode(data)[b"creation date"] == 1_700_000_000
    assert len(fp) == 40
    # the info-hash is over the exact bytes: a non-canonical dictionary is refused, not re-hashed
    with pytest.raises(MetainfoError, match="not a torrent file: dictionary keys not sorted"):
        parse_torrent(b"d4:infod4:name1:a12:piece lengthi1e6:pieces0:6:lengthi0eee")


def test_piece_length_choice():
    assert piece_length_for(1) == 16384
    assert piece_length_for(256 << 20) == 128 << 10
    assert piece_length_for(16 << 30) == 16 << 20 or piece_length_for(16 << 30) == 8 << 20
    assert piece_length_for(1 << 50) == 16 << 20


def test_builder_skips_links_and_syncers_own_entries(tmp_path):
    root = write(tmp_path / "pub", {"keep.txt": b"k", ".syncer/versions/old": b"o", "sub/.syncer.x.tmp": b"t", "sub/y": b"y"})
    (root / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("secret")
    info, _ = build(root)
    assert sorted(f.name for f in info.files) == ["keep.txt", "sub/y"]
    with pytest.raises(CreateError, match="no files"):
        build(write(tmp_path / "empty", {}) if (tmp_path / "empty").mkdir() is None else tmp_path)
    bad = write(tmp_path / "bad", {"a\\b": b"x"})
    with pytest.raises(CreateError, match="rename it"):
        build(bad)


# --- hostile info dictionaries ---------------------------------------------------------------
def info_of(files: list[dict], name: bytes = b"t", plen: int = 16384) -> bytes:
    total = sum(f.get("length", 0) for f in files)
    return bencode.encode({"name": name, "piece length": plen, "pieces": b"h" * 20 * -(-total // plen), "files": files})


def test_hostile_names_are_sanitised_and_kept_inside():
    raw = info_of([
        {"length": 1, "path": [b"..", b"..", b"etc", b"passwd"]},
        {"length": 1, "path": [b"/abs", b"x\x00y"]},
        {"length": 1, "path": [b"a\\b", b"."]},
        {"length": 1, "path": [b"", b"."]},
        {"length": 1, "path": [b"dup"]},
        {"length": 1, "path": [b"dup"]},
        {"length": 1, "path": [b"dup", b"inner"]},  # a directory where a file is
        {"length": 1, "path": [b"\xff\xfe bad utf-8"]},
        {"length": 1, "path": [b"n" * 1000 + b".txt"]},
    ], name=b"../evil")
    info = parse_info(raw)
    names = [f.path for f in info.files]
    assert info.name == ".._evil"  # one harmless component
    assert names[0] == ("_", "_", "etc", "passwd")
    assert names[1] == ("_abs", "x_y") and names[2] == ("a_b",) and names[3] == ("_~1",)  # "_" is a directory
    assert names[4] == ("dup",) and names[5] == ("dup~1",) and names[6] == ("dup~2", "inner")
    assert names[7][0].endswith(" bad utf-8") and "\ufffd" in names[7][0]
    assert len(names[8][0].encode()) <= MAX_COMPONENT and names[8][0].endswith(".txt")
    for p in names:
        assert all(c not in ("", ".", "..") and "/" not in c and "\0" not in c for c in p)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"le", "not a dictionary"),
        (bencode.encode({"name": "x", "piece length": 0, "pieces": b"", "length": 1}), "piece length"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 21, "length": 1}), "multiple of 20"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 40, "length": 1}), "piece count"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"", "length": 0}), "no data"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 20, "length": -1}), "length"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 20, "files": []}), "files"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 20, "files": [{"length": 1, "path": []}]}), "path"),
        (bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 20, "files": [{"length": 1, "path": [b"a"] * 65}]}), "path"),
        (bencode.encode({"piece length": 16384, "pieces": b"h" * 20, "length": 1}), "name"),
    ],
)
def test_hostile_info_dictionaries_are_refused(raw, match):
    with pytest.raises(MetainfoError, match=match):
        parse_info(raw)


def test_many_colliding_names_cost_linear_time():
    n = 5_000
    raw = info_of([{"length": 1, "path": [b"same"]} for _ in range(n)] + [{"length": 1, "path": [b"same", b"x"]}])
    info = parse_info(raw)
    assert len({f.path for f in info.files}) == n + 1
    assert info.files[-1].path == (f"same~{n}", "x")


def test_info_must_match_the_info_hash():
    raw = bencode.encode({"name": "x", "piece length": 16384, "pieces": b"h" * 20, "length": 1})
    assert parse_info(raw, hashlib.sha1(raw).digest()).total_length == 1
    with pytest.raises(MetainfoError, match="does not match"):
        parse_info(raw, bytes(20))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_info_bytes(data):
    try:
        parse_info(data)
    except MetainfoError:
        pass


_leaf = st.one_of(st.integers(-5, 10**6), st.binary(max_size=30))
_tree = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.sampled_from([b"name", b"length", b"path", b"files", b"piece length", b"pieces", b"attr", b"x"]), kids, max_size=6)), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_tree)
def test_fuzz_info_structures(value):
    try:
        info = parse_info(bencode.encode(value))
    except MetainfoError:
        return
    assert info.total_length > 0 and all(c not in ("", ".", "..") and "/" not in c for f in info.files for c in f.path)


def test_sanitize_component():
    assert sanitize_component(b"..") == "_" and sanitize_component(b".") == "" and sanitize_component(b"") == ""
    assert sanitize_component(b"  spaced  ") == "spaced"
    assert sanitize_component(b"tab\there") == "tab_here"
    assert sanitize_component("e\u0301") == "\u00e9"  # NFC


# --- magnet links ----------------------------------------------------------------------------
def test_magnet_round_trip():
    m = magnet.Magnet(bytes(range(20)), "my files", ("http://t/announce?x=1",), (("127.0.0.1", 6881), ("::1", 51413)), frozenset({0, 2, 3, 4, 9}))
    uri = m.uri()
    assert uri.startswith("magnet:?xt=urn:btih:000102030405060708090a0b0c0d0e0f10111213&dn=my%20files")
    assert "x.pe=127.0.0.1:6881" in uri and "x.pe=[::1]:51413" in uri and "so=0,2-4,9" in uri
    assert magnet.parse(uri) == m


def test_magnet_parsing():
    b32 = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT"  # base32 of bytes 0..19
    m = magnet.parse(f"magnet:?xt=urn:btih:{b32}&tr=udp%3A%2F%2Fx%3A1&xt=urn:btmh:1220aa&so=1-2")
    assert m.info_hash == bytes(range(20)) and m.trackers == ("udp://x:1",) and m.select_only == frozenset({1, 2})
    for bad, match in [
        ("http://x", "not a magnet"),
        ("magnet:?dn=x", "no BitTorrent info-hash"),
        ("magnet:?xt=urn:btih:zz", "40 hex"),
        ("magnet:?xt=urn:btih:" + "0" * 40 + "&x.pe=nohost", "HOST:PORT"),
        ("magnet:?xt=urn:btih:" + "0" * 40 + "&so=5-1", "reversed"),
        ("magnet:?xt=urn:btih:" + "0" * 40 + "&so=0-999999999", "too many"),
        ("magnet:?" + "a" * (magnet.MAX_LENGTH + 1), "too long"),
    ]:
        with pytest.raises(magnet.MagnetError, match=match):
            magnet.parse(bad)
    many = "magnet:?xt=urn:btih:" + "0" * 40 + "".join(f"&tr=http://t{i}/a" for i in range(300))
    assert len(magnet.parse(many).trackers) == magnet.MAX_TRACKERS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_magnets(s):
    try:
        magnet.parse("magnet:?" + s)
    except magnet.MagnetError:
        pass

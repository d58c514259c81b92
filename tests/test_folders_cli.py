import json
import os

from tests.helpers import run_syncer


def one_line_error(p) -> str:
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_share_prints_id_creates_marker_and_lists(home, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(os.urandom(1000))
    p = run_syncer(home, "share", str(d), "--label", "Photos", check=True)
    fid = p.stdout.strip()
    assert len(fid) == 11 and fid[5] == "-"
    assert (d / ".syncer").is_dir()
    rows = json.loads(run_syncer(home, "folders", "--json", check=True).stdout)
    assert rows == [{"id": fid, "label": "Photos", "path": str(d.resolve()), "state": "ok", "files": 1, "bytes": 1000, "devices": "all paired"}]


def test_share_with_explicit_id_and_devices(home, tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    dev = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"
    assert run_syncer(home, "share", str(d), "--id", "my-folder", "--with", dev.lower(), check=True).stdout.strip() == "my-folder"
    rows = json.loads(run_syncer(home, "folders", "--json", check=True).stdout)
    assert rows[0]["devices"] == [dev]


def test_share_bad_input_changes_nothing(home, tmp_path):
    d = tmp_path / "root"
    (d / "inner").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    run_syncer(home, "share", str(d), "--id", "root", check=True)
    before = (home / "config.toml").read_bytes()
    assert "does not exist" in one_line_error(run_syncer(home, "share", str(tmp_path / "nope")))
    assert "not a directory" in one_line_error(run_syncer(home, "share", str(tmp_path / "afile")))
    assert "inside shared folder" in one_line_error(run_syncer(home, "share", str(d / "inner")))
    assert "contains shared folder" in one_line_error(run_syncer(home, "share", str(tmp_path)))
    other = tmp_path / "other"
    other.mkdir()
    assert "already used" in one_line_error(run_syncer(home, "share", str(other), "--id", "root"))
    assert "invalid folder id" in one_line_error(run_syncer(home, "share", str(other), "--id", "bad id!"))
    assert "invalid device ID" in one_line_error(run_syncer(home, "share", str(other), "--with", "XYZ"))
    assert (home / "config.toml").read_bytes() == before
    assert not (other / ".syncer").exists()


def test_scan_and_stopped_folder(home, tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    fid = run_syncer(home, "share", str(d), check=True).stdout.strip()
    (d / "n.txt").write_text("new")
    out = json.loads(run_syncer(home, "scan", fid, "--json", check=True).stdout)
    assert out["scanned"][0]["files"] == 1
    (d / ".syncer" / "README").unlink()
    (d / ".syncer").rmdir()
    assert json.loads(run_syncer(home, "folders", "--json", check=True).stdout)[0]["state"] == "stopped: marker missing"
    assert "marker missing" in one_line_error(run_syncer(home, "scan", fid))
    assert "no folder" in one_line_error(run_syncer(home, "scan", "nope"))


def test_offline_scan_holds_back_mass_delete_until_resume(home, tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    for i in range(20):
        (d / f"{i}.txt").write_text(str(i))
    fid = run_syncer(home, "share", str(d), check=True).stdout.strip()
    for i in range(15):
        (d / f"{i}.txt").unlink()
    assert "would delete 15 of 20 files" in one_line_error(run_syncer(home, "scan", fid))
    rows = json.loads(run_syncer(home, "folders", "--json", check=True).stdout)
    assert rows[0]["files"] == 20  # nothing recorded
    assert "deletions recorded, 5 files remain" in run_syncer(home, "resume", fid, check=True).stdout
    rows = json.loads(run_syncer(home, "folders", "--json", check=True).stdout)
    assert rows[0]["files"] == 5


def test_manifest_and_verify(home, tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(os.urandom(300_000))
    m = tmp_path / "file.manifest"
    run_syncer(home, "manifest", str(f), "-o", str(m), check=True)
    data = json.loads(m.read_text())
    assert data["format"] == "syncer-manifest/1" and data["size"] == 300_000
    assert data["chunk_size"] == 131072 and len(data["chunks"]) == 3
    assert run_syncer(home, "manifest", str(f), check=True).stdout == m.read_text()
    ok = run_syncer(home, "verify", str(m), str(f))
    assert ok.returncode == 0 and "3/3 chunks ok" in ok.stdout
    raw = bytearray(f.read_bytes())
    raw[140_000] ^= 1
    f.write_bytes(bytes(raw))
    bad = run_syncer(home, "verify", str(m), str(f), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["mismatch"] == [1]
    f.write_bytes(bytes(raw[:200_000]))
    short = run_syncer(home, "verify", str(m), str(f), "--json")
    assert short.returncode == 1 and json.loads(short.stdout)["missing"] == [1, 2]  # chunk 1 is cut short
    (tmp_path / "junk").write_text("{}")
    assert "not a syncer manifest" in one_line_error(run_syncer(home, "verify", str(tmp_path / "junk"), str(f)))

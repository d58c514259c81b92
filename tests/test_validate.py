import pytest

from syncer.model.validate import bad_file, bad_name
from syncer.wire import WireFile


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", ".syncer/versions/x", ".syncer",
     "dir/.syncer.f.tmp", "a\\b", "a\x00b", "cafe\u0301", ".syncerignore", "/".join(["d"] * 256)],
)
def test_bad_names_rejected(name):
    assert bad_name(name)


@pytest.mark.parametrize("name", ["a", "dir/sub/file.txt", ".hidden", "caf\u00e9", "sub/.syncerignore", "x/.syncer", "/".join(["d"] * 255)])
def test_good_names_accepted(name):
    assert bad_name(name) is None


def wf(**kw):
    base = dict(name="f", type=0, size=5, mtime_ns=1, permissions=0o644, block_size=131072,
                blocks=[b"x" * 32], symlink_target="", version=[(1, 1)], sequence=1, deleted=False, modified_by=1)
    base.update(kw)
    return WireFile(**base)


def test_bad_files():
    assert bad_file(wf()) is None
    assert bad_file(wf(type=7))
    assert bad_file(wf(block_size=1000))
    assert bad_file(wf(blocks=[]))
    assert bad_file(wf(blocks=[b"short"]))
    assert bad_file(wf(version=[]))
    assert bad_file(wf(size=-1))
    assert bad_file(wf(type=2, symlink_target="", size=0, blocks=[]))
    assert bad_file(wf(deleted=True, blocks=[], size=0)) is None
    assert bad_file(wf(permissions=0o6755)) is None  # accepted, applied masked to 0o755
    assert bad_file(wf(permissions=-1))
    assert bad_file(wf(permissions=0o10000))


@pytest.mark.parametrize("field,value", [
    ("mtime_ns", 1 << 63), ("mtime_ns", -(1 << 63) - 1), ("size", 1 << 63), ("sequence", 1 << 63),
    ("permissions", -1), ("permissions", 0o10000), ("modified_by", 1 << 64), ("modified_by", -1),
    ("version", [(1, 1 << 63)]), ("version", [(1 << 64, 1)]), ("version", [(1, 0)]), ("version", [(1, 1)] * 1001),
    ("symlink_target", "x" * 5000),
])
def test_numbers_out_of_sqlite_range_are_refused(field, value):
    assert bad_file(wf(**{field: value}))


def test_extreme_but_valid_numbers_pass():
    assert bad_file(wf(mtime_ns=-(1 << 63))) is None  # before 1970 is fine
    assert bad_file(wf(modified_by=(1 << 64) - 1, version=[((1 << 64) - 1, (1 << 63) - 1)])) is None


def test_temp_mode_keeps_owner_write_and_modes_drop_special_bits():
    from syncer.model.safe_write import dir_mode, final_mode, temp_mode

    assert temp_mode(0o644) == final_mode(0o644) == 0o644  # no chmod needed when applied
    assert temp_mode(0o755) == 0o755
    assert (temp_mode(0o444), final_mode(0o444)) == (0o644, 0o444)
    assert (temp_mode(0o4755), final_mode(0o4755)) == (0o755, 0o755)  # setuid never applied
    assert final_mode(0o6755) == 0o755 and dir_mode(0o1777) == 0o777 and dir_mode(0o3755) == 0o755
    assert final_mode(0) == temp_mode(0) == 0o644 and dir_mode(0) == 0o755

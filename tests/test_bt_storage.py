"""Pieces on disk: the piece <-> file layout, confinement of a stranger's file names to the
target directory (no symlink is followed, nothing lands outside), part files and their rename,
and the resume journal."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from syncer.bt.layout import Layout, Span
from syncer.bt.resume import MAGIC, Journal, journal_path
from syncer.bt.storage import Storage, StorageError


def test_layout_spans_cross_files_and_skip_empty_ones():
    lay = Layout([5, 0, 0, 7, 4], piece_length=4)
    assert lay.num_pieces == 4 and lay.piece_size(3) == 4
    assert lay.spans(0) == [Span(0, 0, 4, 0)]
    assert lay.spans(1) == [Span(0, 4, 1, 0), Span(3, 0, 3, 1)]
    assert lay.spans(2) == [Span(3, 3, 4, 0)]
    assert lay.spans(1, 2, 2) == [Span(3, 1, 2, 0)]
    assert [lay.pieces_of_file(i) for i in range(5)] == [range(0, 2), range(0), range(0), range(1, 3), range(3, 4)]
    assert lay.files_of_piece(1) == [0, 3]


def storage(root: Path, paths: list, lengths: list[int], plen: int = 4) -> Storage:
    return Storage(root, paths, Layout(lengths, plen))


def test_writes_go_to_part_files_then_the_final_names(tmp_path):
    st = storage(tmp_path, [("t", "a"), ("t", "d", "b")], [5, 3])
    st.write_piece(0, b"AAAA")
    st.write_piece(1, b"ABBB")
    assert (tmp_path / "t" / "a.part").read_bytes() == b"AAAAA" and (tmp_path / "t" / "d" / "b.part").read_bytes() == b"BBB"
    assert st.read(1) == b"ABBB" and st.read(0, 1, 2) == b"AA"
    st.finish_file(0)
    st.finish_file(1)
    assert (tmp_path / "t" / "a").read_bytes() == b"AAAAA" and not (tmp_path / "t" / "a.part").exists()
    assert oct((tmp_path / "t" / "d" / "b").stat().st_mode & 0o777) == "0o644"
    assert st.read(1) == b"ABBB"  # now from the final files
    st.close()


def test_files_not_kept_are_never_written_and_pads_read_as_zeros(tmp_path):
    st = Storage(tmp_path, [("t", "a"), None, None], Layout([3, 2, 3], 4), pads=[False, True, False])
    st.write_piece(0, b"aaaPP")  # piece 0: a (3) + pad (1)
    st.write_piece(1, b"PBBB")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["t", "t/a.part"]
    assert not st.readable(1) and st.readable(0)
    assert st.read(0) == b"aaa\0"
    with pytest.raises(StorageError):
        st.read(1)


def test_a_part_name_that_is_also_a_file_of_the_torrent_gets_another_suffix(tmp_path):
    st = storage(tmp_path, [("t", "x"), ("t", "x.part")], [4, 4])
    assert st.part_paths == [("t", "x.part~1"), ("t", "x.part.part")]


def test_symlinks_in_the_target_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "dl"
    root.mkdir()
    (root / "t").symlink_to(outside)  # a directory component planted as a link
    st = storage(root, [("t", "a")], [4])
    with pytest.raises(StorageError, match="symlink"):
        st.write_piece(0, b"evil")
    assert list(outside.iterdir()) == []
    (root / "t").unlink()
    (root / "t").mkdir()
    (root / "t" / "a.part").symlink_to(outside / "victim")  # the file itself
    with pytest.raises(StorageError, match="symlink"):
        storage(root, [("t", "a")], [4]).write_piece(0, b"evil")
    assert not (outside / "victim").exists()
    # and a final name that is a link or a directory is reported, not followed
    (root / "t" / "a").symlink_to(outside / "victim")
    with pytest.raises(StorageError, match="not a regular file"):
        storage(root, [("t", "a")], [4]).exists(0, final=True)


def test_a_file_where_a_directory_should_be(tmp_path):
    (tmp_path / "t").write_text("a file")
    with pytest.raises(StorageError) as e:
        storage(tmp_path, [("t", "a")], [4]).write_piece(0, b"xxxx")
    assert e.value.errno in (errno.ENOTDIR, errno.ELOOP)


def test_journal_round_trip_and_foreign_files(tmp_path):
    ih = bytes(range(20))
    path = journal_path(tmp_path, ih, tmp_path / "dl")
    j = Journal(path, ih)
    assert j.load(10) == set()
    j.open({1, 2})
    j.append(5)
    j.append(99)  # beyond the piece count: ignored on load
    j.close()
    assert Journal(path, ih).load(10) == {1, 2, 5}
    assert Journal(path, bytes(20)).load(10) == set()  # another torrent's journal is not trusted
    path.write_bytes(MAGIC + ih + struct.pack(">I", 3) + b"\x00\x00")  # torn append
    assert Journal(path, ih).load(10) == {3}
    Journal(path, ih).remove()
    assert not path.exists()
    assert journal_path(tmp_path, ih, tmp_path / "a") != journal_path(tmp_path, ih, tmp_path / "b")


@pytest.mark.parametrize("bad", [("..", "x"), ("a", ".", "b"), ("",), ("a/b",), ("nul\0",), ()])
def test_unsafe_components_are_refused_even_if_they_got_this_far(tmp_path, bad):
    with pytest.raises(StorageError, match="unsafe path"):
        storage(tmp_path, [bad], [4])
    assert list(tmp_path.iterdir()) == []

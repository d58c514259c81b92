"""sha256_at: the same digest as hashing the bytes whole, at any size and offset; None past the end."""

from __future__ import annotations

import hashlib
import os

import pytest

from syncer.fs.blockhash import SMALL, STEP, sha256_at


@pytest.mark.parametrize("size", [0, 1, SMALL, SMALL + 1, STEP - 1, STEP, STEP + 1, 3 * STEP + 5])
def test_digest_of_a_range(tmp_path, size):
    data = os.urandom(5 * STEP)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        for off in (0, 7, STEP):
            assert sha256_at(fd, off, size) == hashlib.sha256(data[off : off + size]).digest()
        if size > 1:  # runs past the end of the file
            assert sha256_at(fd, len(data) - size + 1, size) is None
    finally:
        os.close(fd)

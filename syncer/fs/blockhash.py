"""SHA-256 of a range of an open file, read in 1 MiB steps into a per-thread buffer.

Blocks are up to 16 MiB. Read whole, each would be a fresh 16 MiB allocation per block, per
hashing thread; glibc keeps such memory in the thread's arena (see memtune), so a scan of big
files left the daemon 50 MiB larger than it needs to be. Read in steps, a thread holds 1 MiB.
"""

from __future__ import annotations

import hashlib
import os
import threading

STEP = 1 << 20
SMALL = 64 << 10  # read in one go: a small allocation costs less than the buffer's bookkeeping
_local = threading.local()


def sha256_at(fd: int, offset: int, size: int) -> bytes | None:
    """The digest of `size` bytes at `offset`, or None when the file ends before them."""
    if size <= SMALL:
        data = os.pread(fd, size, offset)
        return hashlib.sha256(data).digest() if len(data) == size else None
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(STEP))
    h = hashlib.sha256()
    pos, end = offset, offset + size
    while pos < end:
        n = os.preadv(fd, [buf[: min(STEP, end - pos)]], pos)
        if n <= 0:
            return None
        h.update(buf[:n])
        pos += n
    return h.digest()

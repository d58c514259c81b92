"""Making a v1 torrent of a local file or directory (for `syncer publish`).

Files are taken in sorted order of their path components; symlinks and special files are skipped
(a link could reach outside what the user chose to publish), and so are syncer's own entries in a
synced folder (`.syncer/`, download temp files). Pieces are hashed in parallel, one range of
pieces per worker thread (hashlib releases the GIL). The fingerprint (path, size, mtime of every
file) lets the daemon notice that published files changed, instead of serving pieces that no
longer match their hashes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from syncer.bt.layout import Layout
from syncer.bt.metainfo import MAX_FILES, Info, info_dict, parse_info, sanitize_component
from syncer.bt.storage import Storage
from syncer.errors import SyncerError
from syncer.fs.layout import MARKER, is_temp_name

MIN_PIECE = 16 << 10
MAX_PIECE = 16 << 20
TARGET_PIECES = 2048
PIECES_PER_TASK = 64


class CreateError(SyncerError):
    pass


@dataclass(frozen=True)
class LocalFile:
    parts: tuple[str, ...]  # below the published directory ((name,) for a single file)
    size: int
    mtime_ns: int


def piece_length_for(total: int) -> int:
    """The smallest power of two from 16 KiB to 16 MiB giving at most ~TARGET_PIECES pieces."""
    p = MIN_PIECE
    while p < MAX_PIECE and -(-total // p) > TARGET_PIECES:
        p *= 2
    return p


def collect(path: Path) -> tuple[bool, list[LocalFile]]:
    """(single file?, files in torrent order)."""
    st = os.stat(path, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode):
        return True, [LocalFile((path.name,), st.st_size, st.st_mtime_ns)]
    if not stat.S_ISDIR(st.st_mode):
        raise CreateError(f"{path} is neither a regular file nor a directory")
    out: list[LocalFile] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(path, ())]  # explicit: no recursion limit on depth
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            if not rel and e.name == MARKER or is_temp_name(e.name):
                continue
            try:
                usable = sanitize_component(e.name) == e.name
            except UnicodeEncodeError:  # not valid UTF-8 on disk
                usable = False
            if not usable:
                raise CreateError(f"{d / e.name!r}: a name BitTorrent clients would change; rename it to publish")
            est = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(est.st_mode):
                subdirs.append((Path(e.path), (*rel, e.name)))
            elif stat.S_ISREG(est.st_mode):
                out.append(LocalFile((*rel, e.name), est.st_size, est.st_mtime_ns))
                if len(out) > MAX_FILES:
                    raise CreateError(f"more than {MAX_FILES} files to publish")
        stack.extend(reversed(subdirs))
    out.sort(key=lambda f: f.parts)
    if not out:
        raise CreateError(f"{path} holds no files to publish")
    return False, out


def fingerprint(files: list[LocalFile]) -> str:
    h = hashlib.sha1()
    for f in files:
        h.update(repr((f.parts, f.size, f.mtime_ns)).encode())
    return h.hexdigest()


def local_files(root: Path, top: str, info: Info) -> list[LocalFile]:
    """Stat the files of a published torrent where they are now (for the fingerprint)."""
    out = []
    for f in info.files:
        if f.pad:
            continue
        parts = (top,) if info.single_file else (top, *f.path)
        st = os.stat(root.joinpath(*parts), follow_symlinks=False)
        out.append(LocalFile(parts[1:] or (top,), st.st_size, st.st_mtime_ns))
    return out


def build(path: Path, name: str | None = None, piece_length: int | None = None, progress: Callable[[int], None] | None = None, workers: int | None = None) -> tuple[Info, str]:
    """The torrent of `path` and its fingerprint. `progress(n)` is called with bytes hashed."""
    path = path.absolute()
    single, files = collect(path)
    total = sum(f.size for f in files)
    if total == 0:
        raise CreateError(f"{path}: nothing to publish (every file is empty)")
    plen = piece_length or piece_length_for(total)
    layout = Layout([f.size for f in files], plen)
    disk_paths: list[tuple[str, ...] | None] = [(path.name,) if single else (path.name, *f.parts) for f in files]

    def hash_range(start: int) -> bytes:
        storage = Storage(path.parent, disk_paths, layout, complete=True)
        try:
            out = []
            for p in range(start, min(start + PIECES_PER_TASK, layout.num_pieces)):
                data = storage.read(p)
                out.append(hashlib.sha1(data).digest())
                if progress is not None:
                    progress(len(data))
            return b"".join(out)
        finally:
            storage.close()

    with ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
        try:
            pieces = b"".join(pool.map(hash_range, range(0, layout.num_pieces, PIECES_PER_TASK)))
        except OSError as e:
            raise CreateError(f"cannot read {path}: {e}") from None
    torrent_name = sanitize_component(name or path.name) or "publication"
    raw = info_dict(torrent_name, plen, pieces, [(f.parts, f.size) for f in files], single)
    after = collect(path)[1]
    if fingerprint(after) != fingerprint(files):
        raise CreateError(f"{path} changed while it was being hashed; publish it again when it is stable")
    return parse_info(raw), fingerprint(files)

"""A torrent's files on disk, confined to one directory.

The file names come from a stranger's metainfo (sanitised by metainfo.py, and still treated as
hostile here): every path is opened one component at a time relative to the root's directory
descriptor with O_NOFOLLOW, so neither a symlink planted in the target directory nor a name like
".." can make a write land outside it. Directories are created 0o755, files 0o644 (0o755 for
BEP 47 executables); nothing else from the metainfo reaches the filesystem.

While downloading, a file is written as `NAME.part` (another suffix if the torrent itself has a
file of that name) and renamed to NAME once all its pieces are verified. Pad files and files not
selected are never written: `write_piece` drops their bytes. A bounded cache keeps recently used
file descriptors open. All methods block: the drivers call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import OrderedDict
from pathlib import Path

from syncer.bt.layout import Layout

PART_SUFFIX = ".part"
MAX_OPEN_FILES = 64
DIR_MODE = 0o755
FILE_MODE = 0o644
EXEC_MODE = 0o755
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class StorageError(OSError):
    pass


class Storage:
    def __init__(
        self,
        root: Path,
        paths: list[tuple[str, ...] | None],
        layout: Layout,
        executable: list[bool] | None = None,
        pads: list[bool] | None = None,
        complete: bool = False,
    ) -> None:
        """`paths[i]`: file i's path below root, or None if it is never written (pad files,
        files not selected). `pads[i]`: file i is BEP 47 padding (reads as zeros).
        `complete`: seeding files already in place (no part files)."""
        for p in paths:  # metainfo.py sanitised them; a second line of defence costs nothing
            if p is not None and (not p or any(c in ("", ".", "..") or "/" in c or "\0" in c for c in p)):
                raise StorageError(errno.EINVAL, f"unsafe path {p!r}")
        self.root = root
        self.paths = paths
        self.layout = layout
        self.executable = executable or [False] * len(paths)
        self.pads = pads or [False] * len(paths)
        finals = {p for p in paths if p is not None}
        self.part_paths: list[tuple[str, ...] | None] = []
        for p in paths:
            if p is None:
                self.part_paths.append(None)
                continue
            suffix, n = PART_SUFFIX, 1
            while p[:-1] + (p[-1] + suffix,) in finals:
                suffix, n = f"{PART_SUFFIX}~{n}", n + 1
            self.part_paths.append(p[:-1] + (p[-1] + suffix,))
        self.final = [complete] * len(paths)  # file i is under its final name
        self._fds: OrderedDict[tuple[int, bool], int] = OrderedDict()
        self._root_fd = -1

    # --- confined opening ----------------------------------------------------------------
    def _root(self) -> int:
        if self._root_fd < 0:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._root_fd

    def _dir(self, parts: tuple[str, ...], create: bool) -> int:
        """A descriptor of directory root/parts..., walked without following symlinks."""
        fd = os.dup(self._root())
        try:
            for c in parts:
                try:
                    nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(c, DIR_MODE, dir_fd=fd)
                    nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StorageError(e.errno, f"{'/'.join(parts)}: not a directory (or a symlink); refusing") from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _path_of(self, i: int) -> tuple[str, ...]:
        p = self.paths[i] if self.final[i] else self.part_paths[i]
        assert p is not None
        return p

    def _fd(self, i: int, write: bool) -> int:
        key = (i, write)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        p = self._path_of(i)
        dfd = self._dir(p[:-1], create=write)
        try:
            flags = (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY
            try:
                fd = os.open(p[-1], flags | _NOFOLLOW, FILE_MODE, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StorageError(e.errno, f"{'/'.join(p)} is a symlink; refusing") from None
                raise
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(errno.EINVAL, f"{'/'.join(p)} is not a regular file")
        self._fds[key] = fd
        while len(self._fds) > MAX_OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _forget(self, i: int) -> None:
        for key in ((i, True), (i, False)):
            fd = self._fds.pop(key, None)
            if fd is not None:
                os.close(fd)

    # --- data ----------------------------------------------------------------------------
    def readable(self, piece: int) -> bool:
        """Every byte of the piece is in a file we write (not dropped)."""
        return all(self.paths[s.file] is not None or self.pads[s.file] for s in self.layout.spans(piece))

    def read(self, piece: int, begin: int = 0, length: int | None = None) -> bytes:
        out = bytearray()
        for s in self.layout.spans(piece, begin, length):
            if self.paths[s.file] is None:
                if self.pads[s.file]:
                    out += bytes(s.length)
                    continue
                raise StorageError(errno.ENOENT, "piece has bytes of a file not downloaded")
            data = os.pread(self._fd(s.file, self._writing(s.file)), s.length, s.file_offset)
            if len(data) != s.length:
                raise StorageError(errno.EIO, f"{'/'.join(self._path_of(s.file))}: short read (file changed?)")
            out += data
        return bytes(out)

    def _writing(self, i: int) -> bool:
        # a part file is kept open read-write (it is being written); final files read-only
        return not self.final[i]

    def write_piece(self, piece: int, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        for s in self.layout.spans(piece):
            if self.paths[s.file] is None:
                continue
            fd = self._fd(s.file, True)
            chunk = mv[s.piece_offset : s.piece_offset + s.length]
            written = 0
            while written < len(chunk):
                written += os.pwrite(fd, chunk[written:], s.file_offset + written)

    def exists(self, i: int, final: bool) -> int | None:
        """Size of file i under its final (or part) name, None if absent; never follows a
        symlink (one there is an error)."""
        p = self.paths[i] if final else self.part_paths[i]
        if p is None:
            return None
        try:
            dfd = self._dir(p[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.stat(p[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(errno.EEXIST, f"{'/'.join(p)} exists and is not a regular file")
        return st.st_size

    def use_final(self, i: int, final: bool) -> None:
        self._forget(i)
        self.final[i] = final

    def finish_file(self, i: int) -> None:
        """All pieces of file i are verified: fsync, size, mode, rename part -> final."""
        if self.final[i] or self.paths[i] is None:
            return
        length = self.layout.lengths[i]
        fd = self._fd(i, True)
        if os.fstat(fd).st_size != length:
            os.ftruncate(fd, length)
        os.fsync(fd)
        os.fchmod(fd, EXEC_MODE if self.executable[i] else FILE_MODE)
        self._forget(i)
        final, part = self.paths[i], self.part_paths[i]
        assert final is not None and part is not None
        dfd = self._dir(final[:-1], create=True)
        try:
            os.rename(part[-1], final[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            with contextlib.suppress(OSError):
                os.fsync(dfd)
        finally:
            os.close(dfd)
        self.final[i] = True

    def create_empty(self, i: int) -> None:
        """A zero-length file: created directly under its final name."""
        final = self.paths[i]
        if final is None:
            return
        dfd = self._dir(final[:-1], create=True)
        try:
            fd = os.open(final[-1], os.O_WRONLY | os.O_CREAT | _NOFOLLOW, EXEC_MODE if self.executable[i] else FILE_MODE, dir_fd=dfd)
            os.close(fd)
        finally:
            os.close(dfd)
        self.final[i] = True

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

"""What Linux inotify events mean for a watched tree (pure: bytes in, names and watch changes out).

inotify watches directories one by one and reports names relative to a watch. `WatchTree` keeps
the watched directories as a tree (each node: its watch descriptor, its name, its parent), so a
directory renamed inside the folder is one re-link, O(1), however many directories lie below it,
and an event's folder-relative name is its node's path plus the event's name (O(depth)).

`WatchTree.handle(events)` returns `Effects`: the names that changed (for a scoped scan; a new
or moved-in directory is reported by its own name, and the scan walks it), the directories that
need watches now (created or moved in from outside, or renamed onto a watched one; their
subdirectories too, found by walking), the watch descriptors to drop (directories moved out of
the folder), and whether the kernel lost events (queue overflow) or the root itself went, so
only a full scan (and watches set up afresh) can tell what changed.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_MOVE = IN_MOVED_FROM | IN_MOVED_TO
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: bytes  # b"" for an event about the watched directory itself


def parse(buf: bytes) -> list[Event]:
    """The events in one read(2) of an inotify fd (the kernel returns whole events only)."""
    out: list[Event] = []
    pos, end = 0, len(buf)
    unpack = HEADER.unpack_from
    while pos + HEADER.size <= end:
        wd, mask, cookie, n = unpack(buf, pos)
        pos += HEADER.size
        out.append(Event(wd, mask, cookie, buf[pos : pos + n].rstrip(b"\0")))
        pos += n
    return out


class WatchedDir:
    """A directory with a watch: its descriptor, its name in its parent (the root: "", no parent)."""

    __slots__ = ("wd", "name", "parent", "children")

    def __init__(self, wd: int, name: str, parent: WatchedDir | None) -> None:
        self.wd = wd
        self.name = name
        self.parent = parent
        self.children: dict[str, WatchedDir] = {}


@dataclass
class Effects:
    changed: list[str] = field(default_factory=list)  # folder-relative, '/'-separated, as on disk
    # directories to watch (and walk): (the watched parent, the name in it), resolved only after
    # the whole burst is handled, so a rename later in the burst is already applied
    watch: list[tuple[WatchedDir, str]] = field(default_factory=list)
    unwatch: list[int] = field(default_factory=list)  # watch descriptors to remove
    rescan: bool = False  # events were lost (or the root went): only a full scan can tell


class WatchTree:
    def __init__(self) -> None:
        self._by_wd: dict[int, WatchedDir] = {}
        self.root: WatchedDir | None = None

    def __len__(self) -> int:
        return len(self._by_wd)

    def path_of(self, wd: int) -> str | None:
        node = self._by_wd.get(wd)
        return None if node is None else path(node)

    def alive(self, node: WatchedDir) -> bool:
        """Still in the tree (not removed, moved out or replaced)?"""
        while node.parent is not None:
            if node.parent.children.get(node.name) is not node:
                return False
            node = node.parent
        return node is self.root

    def add(self, wd: int, parent: WatchedDir | None, name: str = "") -> WatchedDir:
        """A watch on directory `name` of `parent` (the root: parent None) returned `wd`. A
        watch added to a directory already watched returns its descriptor again: re-linked."""
        node = self._by_wd.get(wd)
        if node is None:
            node = self._by_wd[wd] = WatchedDir(wd, name, parent)
        else:
            self._unlink(node)
            node.name, node.parent = name, parent
        if parent is None:
            self.root = node
            return node
        old = parent.children.get(name)
        if old is not None and old is not node:
            self._forget(old)
        parent.children[name] = node
        return node

    def handle(self, events: list[Event]) -> Effects:
        fx = Effects()
        moved_out: dict[int, WatchedDir] = {}  # cookie -> directory renamed away, not (yet) seen arriving
        for ev in events:
            if ev.mask & IN_Q_OVERFLOW:
                fx.rescan = True
                continue
            node = self._by_wd.get(ev.wd)
            if node is None:
                continue  # a watch already forgotten (its IN_IGNORED, late events)
            if ev.mask & IN_IGNORED:
                self._forget(node)
                continue
            if not ev.name:
                if node is self.root and ev.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                    fx.rescan = True  # the folder root went: its watches no longer say where
                continue  # a directory's own events: its parent reported its name
            name = ev.name.decode(_FS_ENCODING, _FS_ERRORS)  # what os.fsdecode does
            base = path(node)
            fx.changed.append(f"{base}/{name}" if base else name)
            if not ev.mask & IN_ISDIR:
                continue
            if ev.mask & IN_MOVED_FROM:
                child = node.children.pop(name, None)
                if child is not None:
                    moved_out[ev.cookie] = child
            elif ev.mask & IN_MOVED_TO:
                child = moved_out.pop(ev.cookie, None)
                old = node.children.get(name)
                if old is not None:
                    # onto a watched directory: replaced (it was empty) or exchanged with the
                    # arriving one (renameat2 RENAME_EXCHANGE, whose second half follows). Which,
                    # the events do not say in order: both are watched afresh by walking
                    fx.unwatch.extend(self._forget(old))
                    if child is not None:
                        fx.unwatch.extend(self._forget(child))
                    fx.watch.append((node, name))
                elif child is None:
                    fx.watch.append((node, name))  # from outside the folder (or its departure was not seen)
                else:
                    child.name, child.parent = name, node
                    node.children[name] = child
            elif ev.mask & IN_CREATE:
                fx.watch.append((node, name))
            elif ev.mask & IN_DELETE:
                child = node.children.pop(name, None)
                if child is not None:
                    self._forget(child)
        for gone in moved_out.values():  # moved out of the folder: its watches must not report
            fx.unwatch.extend(self._forget(gone))
        return fx

    def _unlink(self, node: WatchedDir) -> None:
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]

    def _forget(self, node: WatchedDir) -> list[int]:
        """Drop `node` and everything below it; returns their watch descriptors."""
        self._unlink(node)
        wds: list[int] = []
        stack = [node]
        while stack:
            n = stack.pop()
            if self._by_wd.get(n.wd) is n:
                del self._by_wd[n.wd]
                wds.append(n.wd)
            stack.extend(n.children.values())
            n.children = {}
        if node is self.root:
            self.root = None
        return wds


def path(node: WatchedDir) -> str:
    """`node`'s folder-relative name ("" for the root), O(depth)."""
    parts: list[str] = []
    n: WatchedDir | None = node
    while n is not None and n.parent is not None:
        parts.append(n.name)
        n = n.parent
    parts.reverse()
    return "/".join(parts)

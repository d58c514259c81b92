"""Files kept open for serving blocks to peers (opening per block would cost syscalls, and a
watcher event each time).

An open fd pins its file: a deleted or replaced file's disk space only comes back once the fd
is closed. So the folder drops the fds of every name an apply or a scan touched, and fds unused
for `idle_s` are closed by its housekeeping. Used from the event loop thread only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable

SERVING_FDS = 64
SERVING_IDLE_S = 10.0


class ServingFiles:
    def __init__(self, max_fds: int = SERVING_FDS, idle_s: float = SERVING_IDLE_S) -> None:
        self.max_fds = max_fds
        self.idle_s = idle_s
        self._fds: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> (fd, last use)

    def __len__(self) -> int:
        return len(self._fds)

    def __contains__(self, name: str) -> bool:
        return name in self._fds

    def take(self, name: str) -> int | None:
        """The cached fd of `name`, removed from the cache (`put` it back to keep it)."""
        entry = self._fds.pop(name, None)
        return None if entry is None else entry[0]

    def put(self, name: str, fd: int, now: float) -> None:
        old = self._fds.pop(name, None)
        if old is not None and old[0] != fd:
            _close(old[0])
        self._fds[name] = (fd, now)
        while len(self._fds) > self.max_fds:
            _close(self._fds.popitem(last=False)[1][0])

    def drop(self, names: Iterable[str]) -> None:
        """Close the fds of these names (changed, replaced or deleted on disk)."""
        if not self._fds:
            return
        for name in names:
            entry = self._fds.pop(name, None)
            if entry is not None:
                _close(entry[0])

    def close_idle(self, now: float) -> int:
        """Close fds not used for `idle_s`; how many were closed."""
        idle = [name for name, (_, used) in self._fds.items() if now - used >= self.idle_s]
        self.drop(idle)
        return len(idle)

    def close_all(self) -> None:
        self.drop(list(self._fds))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass

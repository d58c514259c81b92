"""Per-file errors of a folder (pure): a file that cannot be applied or scanned is reported on
its own in `syncer status` while the rest of the folder keeps syncing. Bounded: beyond `cap`
names the oldest entries make room (a folder full of refused names must not grow memory).
Thread-safe: the worker thread records errors of job preparation, the event loop the rest."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

MAX_FILE_ERRORS = 300
MAX_ERROR_CHARS = 300

APPLY = "apply"
SCAN = "scan"


class FileErrors:
    def __init__(self, cap: int = MAX_FILE_ERRORS) -> None:
        self.cap = cap
        self._errors: dict[str, tuple[str, str]] = {}  # name -> (source, error), oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._errors)

    def get(self, name: str) -> str | None:
        entry = self._errors.get(name)
        return None if entry is None else entry[1]

    def set(self, name: str, error: str, source: str = APPLY) -> bool:
        """Record `error` for `name`; True if it is new (worth a log line), False if repeated."""
        name, error = name[:MAX_ERROR_CHARS], error[:MAX_ERROR_CHARS]
        with self._lock:
            if self._errors.get(name) == (source, error):
                return False
            self._errors.pop(name, None)
            self._errors[name] = (source, error)
            while len(self._errors) > self.cap:
                del self._errors[next(iter(self._errors))]
            return True

    def clear(self, names: Iterable[str]) -> None:
        if not self._errors:
            return
        with self._lock:
            for name in names:
                self._errors.pop(name, None)

    def retain(self, keep: Callable[[str, str], bool]) -> None:
        """Keep only the entries for which keep(name, source) holds."""
        with self._lock:
            self._errors = {n: e for n, e in self._errors.items() if keep(n, e[0])}

    def as_list(self, keep: Callable[[str, str], bool] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._errors.items())
        return [{"name": n, "error": e, "source": s} for n, (s, e) in items if keep is None or keep(n, s)]

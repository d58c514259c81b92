"""Names of syncer's own entries inside a shared folder (pure, a leaf: imported by the scanner,
the engine and the checks on peer input alike).

- `.syncer/` marks the folder root; a folder whose marker is missing stops instead of announcing
  every file deleted (an unmounted disk). It also holds the trash can, `.syncer/versions/`.
- `.syncer.NAME.tmp` is the download temp file of NAME, in NAME's directory; never synced.
- `.syncerignore` (at the root) holds this device's ignore patterns; local to each device, never
  announced, and refused when a peer announces it (like Syncthing's `.stignore`).
- Names have at most MAX_DEPTH components: deeper ones are refused from peers and reported by
  the scanner (a path a thousand levels deep must not cost a RecursionError).
"""

from __future__ import annotations

import posixpath

MARKER = ".syncer"
VERSIONS_DIR = ".syncer/versions"
IGNORE_FILE = ".syncerignore"
TEMP_PREFIX = ".syncer."
TEMP_SUFFIX = ".tmp"
MAX_DEPTH = 255


def temp_name(name: str) -> str:
    head, base = posixpath.split(name)
    t = f"{TEMP_PREFIX}{base}{TEMP_SUFFIX}"
    return posixpath.join(head, t) if head else t


def final_name(temp: str) -> str:
    """The file a temp file (as made by temp_name) is the download of."""
    head, base = posixpath.split(temp)
    base = base[len(TEMP_PREFIX) : len(base) - len(TEMP_SUFFIX)]
    return posixpath.join(head, base) if head else base


def is_temp_name(name: str) -> bool:
    base = posixpath.basename(name)
    return base.startswith(TEMP_PREFIX) and base.endswith(TEMP_SUFFIX)


def is_local_only(name: str) -> bool:
    """Entries that stay on this device: the root `.syncerignore`."""
    return name == IGNORE_FILE


def is_internal(name: str) -> bool:
    """`.syncer/` itself or anything inside it."""
    return name == MARKER or name.startswith(MARKER + "/")

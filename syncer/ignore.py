"""What a folder does not sync: `.syncerignore` (gitignore syntax, via pathspec), plus fixed
rules for syncer's own files and OS junk. The root `.syncerignore` itself is local to each
device, like Syncthing's `.stignore`: never announced (and refused from peers, see
model/validate.py), so a peer cannot make a device stop announcing its own changes."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

import pathspec

from syncer.fs.confined import FolderFS
from syncer.fs.layout import IGNORE_FILE, TEMP_PREFIX, TEMP_SUFFIX, is_internal, is_local_only

MAX_IGNORE_BYTES = 1 << 20
log = logging.getLogger(__name__)

# pathspec >= 1.0 calls git's exact semantics "gitignore" and deprecates "gitwildmatch"
_STYLE = "gitignore" if "gitignore" in pathspec.util._registered_patterns else "gitwildmatch"
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", ".Spotlight-V100", ".Trashes", "$RECYCLE.BIN"}


def always_ignored(name: str, base: str | None = None) -> bool:
    """syncer's own marker dir and temp files, and OS junk; `name` is '/'-separated, `base` its
    last component if the caller has it (the scanner, once per entry)."""
    if is_internal(name):
        return True
    if base is None:
        base = posixpath.basename(name)
    if base.startswith(TEMP_PREFIX) and base.endswith(TEMP_SUFFIX):
        return True
    return base in JUNK or base.startswith("._")


class Ignore:
    def __init__(self, patterns: list[str] | None = None) -> None:
        self.patterns = [p for p in (patterns or []) if p.strip() and not p.lstrip().startswith("#")]
        self.spec = pathspec.PathSpec.from_lines(_STYLE, self.patterns) if self.patterns else None

    @property
    def fingerprint(self) -> str:
        """Changes whenever the rules do (what the need was computed with)."""
        return "\n".join(self.patterns)

    @classmethod
    def load(cls, root: Path | FolderFS) -> Ignore:
        """The root `.syncerignore`, read through the confined layer: a regular file only (not a
        symlink, FIFO or directory), at most MAX_IGNORE_BYTES."""
        fs = root if isinstance(root, FolderFS) else FolderFS(root)
        try:
            text = fs.read_bytes(IGNORE_FILE, MAX_IGNORE_BYTES).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return cls()
        except OSError as e:
            log.warning("%s: cannot read %s: %s (no ignore patterns)", fs.root, IGNORE_FILE, e.strerror or e)
            return cls()
        finally:
            if fs is not root:
                fs.close()
        return cls(text.splitlines())

    def ignored(self, name: str, is_dir: bool = False, base: str | None = None) -> bool:
        if always_ignored(name, base) or is_local_only(name):
            return True
        if self.spec is None:
            return False
        return self.spec.match_file(name + "/" if is_dir else name)

    def explain(self, name: str, is_dir: bool = False) -> tuple[bool, str | None]:
        """(ignored?, the rule that decided it): a line of .syncerignore (the last that matches,
        as in git), the built-in rule for syncer's own files and OS junk, or None."""
        if always_ignored(name):
            return True, "built-in: syncer's own files and OS junk are never synced"
        if self.spec is None:
            return False, None
        r = self.spec.check_file(name + "/" if is_dir else name)
        if r.index is None:
            return False, None
        return bool(r.include), self.patterns[r.index]

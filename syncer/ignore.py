"""What a folder does not sync: `.syncerignore` (gitignore syntax, via pathspec), plus fixed
rules for syncer's own files and OS junk."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pathspec

from syncer.fs.layout import IGNORE_FILE, is_internal, is_temp_name

# pathspec >= 1.0 calls git's exact semantics "gitignore" and deprecates "gitwildmatch"
_STYLE = "gitignore" if "gitignore" in pathspec.util._registered_patterns else "gitwildmatch"
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", ".Spotlight-V100", ".Trashes", "$RECYCLE.BIN"}


def always_ignored(name: str) -> bool:
    """syncer's own marker dir and temp files, and OS junk; `name` is '/'-separated."""
    if is_internal(name):
        return True
    base = posixpath.basename(name)
    if is_temp_name(base):
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
    def load(cls, root: Path) -> Ignore:
        try:
            text = (root / IGNORE_FILE).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return cls()
        return cls(text.splitlines())

    def ignored(self, name: str, is_dir: bool = False) -> bool:
        if always_ignored(name):
            return True
        if self.spec is None:
            return False
        return self.spec.match_file(name + "/" if is_dir else name)

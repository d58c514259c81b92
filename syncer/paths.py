"""Where syncer keeps its state.

`SYNCER_HOME` overrides everything (tests and multiple instances on one machine use it); without
it, platformdirs locations: config in the user config dir, index and identity in the data dir,
logs and the daemon's pid/port/token files in the state dir.

Permissions: the directories are 0700 and the files that hold secrets or private data
(`SECRET_FILES`: key, certificate, config, index database with its -wal/-shm, API token,
pending.json) 0600. They are created so, and `ensure()` tightens them if they already exist
with looser modes (a SYNCER_HOME made by hand, files from an older version).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "syncer"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) if missing; make it 0700 either way."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _tighten(path, PRIVATE_DIR)


def private_file(path: Path, *suffixes: str) -> None:
    """Create `path` empty with mode 0600 if missing, else tighten it to 0600; also tighten
    `path + suffix` for each suffix that exists (e.g. SQLite's -wal and -shm)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE)
    os.close(fd)
    _tighten(path, PRIVATE_FILE)
    for suffix in suffixes:
        _tighten(path.with_name(path.name + suffix), PRIVATE_FILE)


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(os.stat(path).st_mode) & ~mode:
            os.chmod(path, mode)


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    state_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def cert_file(self) -> Path:
        return self.config_dir / "cert.pem"

    @property
    def key_file(self) -> Path:
        return self.config_dir / "key.pem"

    @property
    def index_db(self) -> Path:
        return self.data_dir / "index.db"

    @property
    def api_token_file(self) -> Path:
        return self.state_dir / "api-token"

    @property
    def api_address_file(self) -> Path:
        """Written by a running daemon: `http://HOST:PORT` of its control API."""
        return self.state_dir / "api-address"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "syncer.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "syncer.log"

    @property
    def pending_file(self) -> Path:
        return self.state_dir / "pending.json"

    @property
    def invites_file(self) -> Path:
        """Invites issued here, with their codes (syncer/invite/store.py)."""
        return self.state_dir / "invites.json"

    @property
    def secret_files(self) -> list[Path]:
        db = self.index_db
        return [
            self.config_file,
            self.cert_file,
            self.key_file,
            db,
            db.with_name(db.name + "-wal"),
            db.with_name(db.name + "-shm"),
            self.api_token_file,
            self.pending_file,
            self.invites_file,
        ]

    def ensure(self) -> Paths:
        """The directories exist and are 0700; existing secret files are tightened to 0600."""
        for d in (self.config_dir, self.data_dir, self.state_dir):
            private_dir(d)
        for f in self.secret_files:
            _tighten(f, PRIVATE_FILE)
        return self


def get_paths(env: Mapping[str, str] | None = None) -> Paths:
    if env is None:
        env = os.environ
    home = env.get("SYNCER_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths(root, root, root)
    return Paths(
        Path(platformdirs.user_config_dir(APP_NAME)),
        Path(platformdirs.user_data_dir(APP_NAME)),
        Path(platformdirs.user_state_dir(APP_NAME)),
    )

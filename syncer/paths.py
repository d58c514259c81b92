"""Where syncer keeps its state.

`SYNCER_HOME` overrides everything (tests and multiple instances on one machine use it); without
it, platformdirs locations: config in the user config dir, index and identity in the data dir,
logs and the daemon's pid/port/token files in the state dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "syncer"


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

    def ensure(self) -> Paths:
        for d in (self.config_dir, self.data_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def get_paths(env: dict[str, str] | None = None) -> Paths:
    env = os.environ if env is None else env
    home = env.get("SYNCER_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths(root, root, root)
    return Paths(
        Path(platformdirs.user_config_dir(APP_NAME)),
        Path(platformdirs.user_data_dir(APP_NAME)),
        Path(platformdirs.user_state_dir(APP_NAME)),
    )

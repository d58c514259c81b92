"""Invites this device has issued: the pure rules (`Invite.status(now)`) and their file.

Rules: an invite is *active* until it expires (`expires`), has been used `uses` times, was
revoked, or saw MAX_FAILURES wrong codes ("dead"). Whichever comes first ends it for good.
Nameplates are unique among the stored invites (so an ID names one invite); ended invites are
kept KEEP_ENDED for `syncer invites`, then pruned; at most MAX_ACTIVE active ones.

The file (`invites.json` in the state dir) holds the codes, so it is 0600, written atomically
(temp file, fsync, rename). One owner at a time: the daemon while it runs (the CLI goes through
its API), else the CLI; an exclusive lock file serialises writers anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from syncer.errors import SyncerError
from syncer.invite.code import WORDS, InviteCode, wordlist
from syncer.paths import PRIVATE_FILE

log = logging.getLogger(__name__)

MAX_FAILURES = 3
MAX_ACTIVE = 32
MAX_RECORDS = 200
MAX_USES = 100
KEEP_ENDED = 7 * 86400.0
MAX_EXPIRY = 30 * 86400.0
NAMEPLATE_RANGES = ((1, 99), (100, 999), (1000, 9999))

ACTIVE, EXPIRED, USED, REVOKED, DEAD = "active", "expired", "used", "revoked", "dead"


class InviteError(SyncerError):
    pass


@dataclass
class Invite:
    nameplate: int
    words: list[str]
    folder_id: str
    read_only: bool
    created: float
    expires: float
    uses: int  # how many devices may join with it
    used: int = 0
    failures: int = 0
    revoked: bool = False
    ended: float = 0.0  # when it stopped being active (0: still active or never recorded)
    joined: list[str] = field(default_factory=list)  # device IDs that joined

    @property
    def code(self) -> InviteCode:
        return InviteCode(self.nameplate, tuple(self.words))

    def status(self, now: float) -> str:
        if self.revoked:
            return REVOKED
        if self.failures >= MAX_FAILURES:
            return DEAD
        if self.used >= self.uses:
            return USED
        if now >= self.expires:
            return EXPIRED
        return ACTIVE

    def refusal(self, now: float) -> tuple[str, str] | None:
        """(code, sentence) why a join is refused now, or None if it may proceed."""
        s = self.status(now)
        return {
            REVOKED: (REVOKED, "this invite was revoked; ask for a new one"),
            DEAD: (DEAD, f"this invite saw {MAX_FAILURES} wrong codes and is closed; ask for a new one"),
            USED: (USED, "this invite was already used; ask for a new one (or one with --uses N)"),
            EXPIRED: (EXPIRED, "this invite has expired; ask for a new one (--expires sets how long one lasts)"),
        }.get(s)

    def public(self, now: float) -> dict[str, Any]:
        """What `syncer invites --json` shows (with the code: the user asked for it)."""
        d = asdict(self)
        d.pop("words")
        d["id"] = self.nameplate
        d["code"] = str(self.code)
        d["status"] = self.status(now)
        return d


def _from_json(d: dict[str, Any]) -> Invite:
    words = [str(w) for w in d["words"]]
    if len(words) != WORDS or any(w not in wordlist() for w in words):
        raise ValueError("bad words")
    return Invite(
        nameplate=int(d["nameplate"]),
        words=words,
        folder_id=str(d["folder_id"]),
        read_only=bool(d["read_only"]),
        created=float(d["created"]),
        expires=float(d["expires"]),
        uses=int(d["uses"]),
        used=int(d.get("used", 0)),
        failures=int(d.get("failures", 0)),
        revoked=bool(d.get("revoked", False)),
        ended=float(d.get("ended", 0.0)),
        joined=[str(x) for x in d.get("joined", [])][:MAX_USES],
    )


class InviteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.invites: dict[int, Invite] = {}
        self.reload()

    def reload(self) -> None:
        self.invites = {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("%s is unreadable (%s); starting without invites", self.path, e)
            return
        for d in data.get("invites", []) if isinstance(data, dict) else []:
            try:
                inv = _from_json(d)
            except (KeyError, TypeError, ValueError):
                continue  # one damaged entry only loses that invite
            self.invites[inv.nameplate] = inv

    @contextlib.contextmanager
    def locked(self) -> Iterator[InviteStore]:
        """Re-read, let the body change things, write: under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            yield self
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with open(fd, "w") as f:
            json.dump({"invites": [asdict(i) for i in sorted(self.invites.values(), key=lambda i: i.created)]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # queries (pure over the loaded state) -------------------------------------------------
    def get(self, nameplate: int) -> Invite | None:
        return self.invites.get(nameplate)

    def active(self, now: float) -> list[Invite]:
        return [i for i in self.invites.values() if i.status(now) == ACTIVE]

    def listing(self, now: float) -> list[dict[str, Any]]:
        return [i.public(now) for i in sorted(self.invites.values(), key=lambda i: -i.created)]

    # changes (callers hold `locked()`) ---------------------------------------------------
    def create(self, folder_id: str, read_only: bool, expires_in: float, uses: int, now: float) -> Invite:
        self.prune(now)
        if not 0 < expires_in <= MAX_EXPIRY:
            raise InviteError(f"--expires must be between 1s and {MAX_EXPIRY / 86400:.0f}d")
        if not 0 < uses <= MAX_USES:
            raise InviteError(f"--uses must be between 1 and {MAX_USES}")
        if len(self.active(now)) >= MAX_ACTIVE:
            raise InviteError(f"{MAX_ACTIVE} invites are active already; revoke some with `syncer invite --revoke ID`")
        if len(self.invites) >= MAX_RECORDS:
            raise InviteError("too many invites are stored; wait a few days or remove invites.json from the state dir")
        nameplate = self._free_nameplate()
        inv = Invite(nameplate, list(InviteCode.generate(nameplate).words), folder_id, read_only, now, now + expires_in, uses)
        self.invites[nameplate] = inv
        return inv

    def _free_nameplate(self) -> int:
        for lo, hi in NAMEPLATE_RANGES:
            free = [n for n in range(lo, hi + 1) if n not in self.invites]
            if free:
                return secrets.choice(free)  # random: fewer collisions of locators between users
        raise InviteError("no invite number is free")

    def revoke(self, nameplate: int, now: float) -> Invite:
        inv = self.invites.get(nameplate)
        if inv is None:
            raise InviteError(f"no invite with ID {nameplate} (see `syncer invites`)")
        if inv.status(now) == ACTIVE:
            inv.revoked = True
            inv.ended = now
        return inv

    def record_failure(self, nameplate: int, now: float) -> Invite | None:
        inv = self.invites.get(nameplate)
        if inv is not None:
            inv.failures += 1
            self._mark_end(inv, now)
        return inv

    def record_use(self, nameplate: int, device: str, now: float) -> Invite | None:
        """Consume one use for `device`; None if the invite is no longer active (a concurrent
        joiner took the last use)."""
        inv = self.invites.get(nameplate)
        if inv is None or inv.status(now) != ACTIVE:
            return None
        inv.used += 1
        inv.joined.append(device)
        self._mark_end(inv, now)
        return inv

    def _mark_end(self, inv: Invite, now: float) -> None:
        if inv.status(now) != ACTIVE and not inv.ended:
            inv.ended = now

    def prune(self, now: float) -> None:
        for n, inv in list(self.invites.items()):
            end = inv.ended or (inv.expires if inv.status(now) == EXPIRED else 0.0)
            if inv.status(now) != ACTIVE and end and now - end > KEEP_ENDED:
                del self.invites[n]

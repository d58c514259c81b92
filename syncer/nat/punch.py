"""Simultaneous UDP hole punching and NAT keepalives.

`PunchSession` is the pure state machine of one punch; `punch()` drives a
session over a `UdpEndpoint`. Rules (see docs/nat.md and the NAT lab's pitfalls):

- From the start time until `duration` later, send `Punch(punch_id, heard)` to the peer every
  `interval`. Early packets are expected to be dropped by the peer's NAT; we keep going.
- A Punch carrying our punch_id from *any* address makes that address the peer (peer-reflexive:
  always answer where a punch actually came from) and sets heard=True in what we send; the first
  one is answered at once rather than at the next interval.
- Done when the peer says heard=True: both directions work. We then send one last punch with
  heard=True so the peer completes too, even if it only ever sees this one.
- Failed when the duration ends first. Punch ids are random and relay-assigned, so stray or
  spoofed punches of other sessions are ignored.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from syncer.errors import SyncerError
from syncer.net.udp import Addr, UdpEndpoint
from syncer.net.udp_messages import Control, Punch
from syncer.runtime.timeouts import wait_for

PUNCH_INTERVAL = 0.05
PUNCH_DURATION = 5.0


class PunchFailed(SyncerError):
    pass


class PunchState(enum.Enum):
    WAITING = "waiting"  # before the start time
    PUNCHING = "punching"
    DONE = "done"
    FAILED = "failed"


@dataclass
class PunchSession:
    punch_id: bytes
    peer: Addr
    start: float
    interval: float = PUNCH_INTERVAL
    duration: float = PUNCH_DURATION

    def __post_init__(self) -> None:
        self.state = PunchState.WAITING
        self.heard = False  # we received a punch from the peer
        self.sent = 0
        self.done_at: float | None = None
        self._next_send = self.start
        self._farewell = False

    @property
    def finished(self) -> bool:
        return self.state in (PunchState.DONE, PunchState.FAILED)

    def receive(self, msg: Punch, addr: Addr, now: float) -> None:
        if msg.punch_id != self.punch_id or self.finished:
            return
        if addr != self.peer:
            self.peer = addr  # peer-reflexive: the NAT mapped the peer elsewhere than announced
        if not self.heard:
            self.heard = True
            self._next_send = now  # answer at once: the path is open right now
        if msg.heard:
            self.state = PunchState.DONE
            self.done_at = now
            self._farewell = True

    def poll(self, now: float) -> list[tuple[Punch, Addr]]:
        """Datagrams to send at `now`; also advances the state on timeouts."""
        out: list[tuple[Punch, Addr]] = []
        if self._farewell:
            self._farewell = False
            out.append((Punch(self.punch_id, True), self.peer))
        if self.finished:
            return out
        if now >= self.start + self.duration:
            self.state = PunchState.FAILED
            return out
        if now >= self.start:
            self.state = PunchState.PUNCHING
        if now >= self._next_send:
            out.append((Punch(self.punch_id, self.heard), self.peer))
            self.sent += 1
            self._next_send += self.interval
            if self._next_send <= now:  # woke up late: no burst to catch up
                self._next_send = now + self.interval
        return out

    def next_deadline(self) -> float | None:
        if self.finished:
            return None if not self._farewell else self.done_at
        return min(self._next_send, self.start + self.duration)


async def punch(
    endpoint: UdpEndpoint,
    punch_id: bytes,
    peer: Addr,
    *,
    delay: float = 0.0,
    duration: float = PUNCH_DURATION,
    interval: float = PUNCH_INTERVAL,
) -> Addr:
    """Punch towards `peer` from `endpoint`'s socket; returns the peer address that answered.

    Raises PunchFailed after `delay + duration` seconds without a two-way exchange."""
    loop = asyncio.get_running_loop()
    session = PunchSession(punch_id, peer, loop.time() + delay, interval, duration)
    wake = asyncio.Event()

    def on_control(msg: Control, addr: Addr) -> None:
        if isinstance(msg, Punch):
            session.receive(msg, addr, loop.time())
            wake.set()

    remove = endpoint.add_control_handler(on_control)
    try:
        while True:
            for msg, addr in session.poll(loop.time()):
                endpoint.send_control(msg, addr)
            if session.state is PunchState.DONE:
                return session.peer
            if session.state is PunchState.FAILED:
                raise PunchFailed(
                    f"hole punching to {peer[0]}:{peer[1]} failed: no answer in {duration:.1f} s "
                    f"({session.sent} punches sent, heard peer: {session.heard})"
                )
            deadline = session.next_deadline()
            wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass
    finally:
        remove()

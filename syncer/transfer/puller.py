"""The puller of one folder: what to fetch next, from whom, and when a file is done (sans-IO).

Events go in as method calls (need loaded or changed, a job prepared, peers coming and going,
bitfields, haves, pieces verified or not, a batch applied, `handle_timer(now)`); what to do comes
out as actions from `actions()`: load the next page of the need, prepare jobs (temp files), send
requests / cancels / bitfields / haves, abort a job, apply a batch. The driver (the folder
runtime) carries them out on worker threads and peer sessions and reports back. `get_timer()`
is the next deadline (request timeouts, retries); nothing here reads a clock or does I/O.

Rules:
- The need lives in the index DB in pulling order (directories and symlinks, then files smallest
  first, then deletions). The puller walks it with a cursor, one page per LoadNeed, starting
  jobs while there are slots (MAX_JOBS files, MAX_JOB_BYTES bytes beyond the first file). Only
  the current page and the jobs are in memory. A pass ends at the end of the need; a new pass
  starts (from the start, or from the smallest changed key) when something could start that
  could not before: a peer connected, the need changed for an entry a connected peer holds, a
  retry came due.
- Deletions wait until no download is under way (a deleted file may be the local source of the
  blocks of a new one: a rename).
- Blocks are picked by `Picker` (rarest first, files already started first, endgame); each
  peer keeps at most MAX_REQUESTS requests and about `budget` bytes in flight, refilled once
  below 3/4 of it. This object is the one request table: request ids (for answers), blocks in
  flight (the picker's view) and per-peer pipelines are updated together, here only.
- A job has a generation; everything the driver reports carries it, so results of an aborted
  job are ignored (and the driver fences its writes with it).
- Bitfields and haves count only for files being downloaded, for exactly their version and
  block count; the first one from a peer for a job is answered with our own bitfield (so two
  peers that started the same file at different times learn each other's blocks).
- Interest: `interest` is the set of peers that hold blocks of our jobs; the driver signals
  Interested / NotInterested from it (a choking peer unchokes interested peers).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.transfer.picker import BlockRef, Picker
from syncer.wire import Bitfield, Have, Request

Peer = Hashable
OrderKey = tuple[int, int, str]  # (kind, size, name): the need's pulling order

KIND_OTHER, KIND_FILE, KIND_DELETE = 0, 1, 2  # as the index DB stores them

MAX_JOBS = 256  # files downloading at once
MAX_JOB_BYTES = 1 << 30  # bytes of files downloading at once (beyond one file)
MAX_REQUESTS = 512  # requests in flight per peer
MIN_BUDGET = 1 << 20  # bytes in flight per peer, at least (more queues at a busy seed, see the swarm simulation)
MAX_BUDGET = 32 << 20
PIPELINE_SECONDS = 1.0  # keep about this much of a peer's observed rate in flight
REQUEST_TIMEOUT = 60.0
APPLY_BATCH = 500
PAGE = 512  # need rows per LoadNeed, at most
PAGE_SLACK = 32  # rows read beyond those there is room to start (some are passed over: under way, nobody connected has them)
# A full holder of a file that SEED_SWARM or more others are fetching too (a seed in a swarm)
# gets a pipeline of two round trips of its rate instead of a second of it: what is queued there
# was picked before the swarm's Haves arrived, and with a second of a fast seed's rate queued
# (32 MiB on a LAN) seven receivers would each ask it for most of the file at once, overlapping
# at random, instead of fetching from each other what it already sent out (measured on loopback,
# 1 -> 7: the seed uploaded 32-39 % of all bytes, 19 % with this). With one or two others the
# overlap costs little and a long path needs the deeper pipeline (swarm simulation, 1 -> 2 at
# 100 MB/s and 100 ms: 23 % slower with two round trips), so they keep the usual one.
SEED_SWARM = 3
SEED_ROUND_TRIPS = 2.0
LATENCY_WINDOW = 32  # request -> piece samples per peer; the smallest is its round trip
SPARE_BLOCKS = 2  # blocks others hold that a full holder is asked for when it has nothing else for us
ENDGAME_MIN_WAIT = 0.05  # seconds a request waits before endgame may duplicate it


def budget_for(rate: float) -> int:
    """Bytes to keep requested from a peer: about PIPELINE_SECONDS of its rate, so a slow peer is
    not handed blocks that faster peers would deliver sooner."""
    return int(min(MAX_BUDGET, max(MIN_BUDGET, rate * PIPELINE_SECONDS)))


# --- inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Wanted:
    """A need entry as loaded: the global version, and which devices hold exactly it."""

    file: FileInfo
    kind: int
    conflict: bool
    holders: frozenset[Peer]

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def key(self) -> OrderKey:
        return (self.kind, self.file.size if self.kind == KIND_FILE else 0, self.file.name)


@dataclass(frozen=True)
class NeedChange:
    """The need of `name` was recomputed: its new key, version and holders, or key None when
    nothing is needed any more."""

    name: str
    key: OrderKey | None
    version: VersionVector | None = None
    holders: frozenset[Peer] = frozenset()


@dataclass(frozen=True)
class Expected:
    """What an arriving piece must be (the driver verifies and writes it, then reports)."""

    name: str
    gen: int
    index: int
    offset: int
    size: int
    hash: bytes


# --- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadNeed:
    after: OrderKey | None  # None: from the start
    inclusive: bool
    limit: int


@dataclass(frozen=True)
class JobSpec:
    file: FileInfo
    gen: int
    conflict: bool


@dataclass(frozen=True)
class PrepareJobs:
    jobs: tuple[JobSpec, ...]
    committed_bytes: int  # bytes of the other jobs still to be written (for the free-space check)


@dataclass(frozen=True)
class SendRequests:
    peer: Peer
    requests: tuple[Request, ...]


@dataclass(frozen=True)
class SendCancels:
    peer: Peer
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Announce:
    """Send `message` to `to`, or to every peer of the folder except those in `exclude`."""

    message: Bitfield | Have
    to: Peer | None = None
    exclude: frozenset[Peer] = frozenset()


@dataclass(frozen=True)
class AbortJob:
    name: str
    gen: int
    drop_temp: bool  # nothing to resume: not needed any more


@dataclass(frozen=True)
class ApplyBatch:
    finished: tuple[JobSpec, ...]  # complete temp files to rename into place
    others: tuple[Wanted, ...]  # directories, symlinks, deletions


Action = LoadNeed | PrepareJobs | SendRequests | SendCancels | Announce | AbortJob | ApplyBatch


@dataclass(frozen=True)
class PullerStats:
    jobs: int
    downloading: int
    finished: int
    applying: int
    requests: int
    bytes_in_flight: int
    passing: bool


# --- state -------------------------------------------------------------------------------
PREPARING, DOWNLOADING, FINISHED, APPLYING = "preparing", "downloading", "finished", "applying"


@dataclass
class _Job:
    wanted: Wanted
    gen: int
    state: str = PREPARING
    have: set[int] = field(default_factory=set)
    told: set[Peer] = field(default_factory=set)  # peers that have our bitfield of it

    @property
    def file(self) -> FileInfo:
        return self.wanted.file


@dataclass
class _Req:
    peer: Peer
    ref: BlockRef
    gen: int
    size: int
    sent_at: float


class Puller:
    def __init__(
        self,
        folder: str,
        next_request_id: Callable[[], int],
        *,
        rng: random.Random | None = None,
        max_jobs: int = MAX_JOBS,
        max_job_bytes: int = MAX_JOB_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
        page: int = PAGE,
    ) -> None:
        self.folder = folder
        self._next_id = next_request_id
        self.picker = Picker(rng or random.Random())
        self.max_jobs = max_jobs
        self.max_job_bytes = max_job_bytes
        self.request_timeout = request_timeout
        self.page = page
        self._actions: list[Action] = []
        self._jobs: dict[str, _Job] = {}
        self._others: dict[str, Wanted] = {}  # directories, symlinks, deletions to apply
        self._applying_others: set[str] = set()
        self._apply_in_flight = False
        self._gen = 0
        # the need cursor: load rows after (or from) this key
        self._cursor: tuple[OrderKey, bool] | None = None
        self._passing = False
        self._loading = False
        self._waiting_for_downloads = False  # the pass stopped at the deletions
        self._rewind: tuple[OrderKey, bool] | None = None  # where the next pass starts
        self._rewind_pending = False
        self._connected: set[Peer] = set()
        self._latency: dict[Peer, deque[float]] = {}  # recent request -> piece times
        self._reqs: dict[int, _Req] = {}  # request id -> request, oldest first
        self._rid_of: dict[tuple[Peer, BlockRef], int] = {}
        self._pipeline: dict[Peer, list[int]] = {}  # peer -> [requests, bytes] in flight
        self._retry_at: float | None = None
        self._rates: Mapping[Peer, float] = {}
        self._interest: set[Peer] = set()
        self._interest_dirty = False
        self.bytes_received = 0
        # kept with every job state change (_set_state): read per need row, so never summed
        self._active = 0  # jobs not yet applying (they hold a slot)
        self._committed = 0  # bytes of jobs preparing or downloading

    # --- plumbing ------------------------------------------------------------------
    def actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def statistics(self) -> PullerStats:
        states = [j.state for j in self._jobs.values()]
        return PullerStats(
            jobs=len(states),
            downloading=states.count(DOWNLOADING),
            finished=states.count(FINISHED),
            applying=states.count(APPLYING),
            requests=len(self._reqs),
            bytes_in_flight=sum(p[1] for p in self._pipeline.values()),
            passing=self._passing,
        )

    def busy(self) -> bool:
        """Anything under way (jobs, loading, applying)?"""
        return bool(self._jobs or self._others or self._applying_others or self._loading or self._apply_in_flight)

    def downloading(self, name: str) -> bool:
        return name in self._jobs

    def state_of(self, name: str) -> str | None:
        """preparing / downloading / finished / applying, or None when not under way."""
        job = self._jobs.get(name)
        if job is not None:
            return job.state
        if name in self._others or name in self._applying_others:
            return APPLYING
        return None

    def downloads(self, limit: int) -> list[tuple[FileInfo, int]]:
        """Files being downloaded and how many of their blocks are here."""
        return [(j.file, len(j.have)) for j in list(self._jobs.values())[:limit] if j.state == DOWNLOADING]

    def partial_bytes(self) -> int:
        """Bytes of downloads already here (in temp files)."""
        return sum(min(len(j.have) * j.file.block_size, j.file.size) for j in self._jobs.values() if j.state == DOWNLOADING)

    def is_current(self, name: str, gen: int) -> bool:
        job = self._jobs.get(name)
        return job is not None and job.gen == gen

    def held_block(self, name: str, index: int) -> tuple[FileInfo, int] | None:
        """(file, generation) if block `index` of the download of `name` is already here (to
        serve it to other peers)."""
        job = self._jobs.get(name)
        if job is None or job.state != DOWNLOADING or index not in job.have:
            return None
        return job.file, job.gen

    def job_names(self) -> list[str]:
        return list(self._jobs)

    # --- the need -----------------------------------------------------------------------
    def start(self) -> None:
        """Begin a pass from the start of the need (at start-up, after a reload)."""
        self._restart_from(None)

    def restart_from(self, key: OrderKey | None) -> None:
        """Walk the need again from `key` (None: the start): many entries changed at once."""
        self._restart_from(key)
        self._update_interest()

    def _restart_from(self, key: OrderKey | None) -> None:
        target = None if key is None else (key, True)
        if self._loading:
            self._rewind = _earlier(self._rewind, target) if self._rewind_pending else target
            self._rewind_pending = True
            return
        self._cursor = target if not self._passing else _earlier(self._cursor, target)
        self._passing = True
        self._waiting_for_downloads = False
        self._maybe_load()

    def _room(self) -> int:
        """How many need rows the next page can start: counted for the part of the need the
        cursor is in. Among the files that is the free job slots, and none while the job
        table is full. A file finishing, or applied, frees slots a few at a time, and each
        used to read a page of 512 rows to start those few: at 1,000,000 files the receiver's
        worker spent a quarter of its time reading need pages."""
        bytes_left = self._committed < self.max_job_bytes or not self._slots_used()
        files = max(0, self.max_jobs - self._slots_used()) if bytes_left else 0
        if self._cursor is not None and self._cursor[0][0] == KIND_FILE:
            return files
        return files + APPLY_BATCH - len(self._others)

    def _slots_used(self) -> int:
        return self._active

    def _set_state(self, job: _Job, new: str | None, *, fresh: bool = False) -> None:
        """`job` (just created if `fresh`) goes from its state to `new` (None: it is gone); the
        slot and byte counters follow."""
        size = job.file.size
        for state, sign in ((None if fresh else job.state, -1), (new, 1)):
            if state is None:
                continue
            if state != APPLYING:
                self._active += sign
            if state in (PREPARING, DOWNLOADING):
                self._committed += sign * size
        if new is not None:
            job.state = new

    def counters_consistent(self) -> bool:
        """The kept counters equal what they count (for tests and the simulator)."""
        jobs = self._jobs.values()
        return self._active == sum(j.state != APPLYING for j in jobs) and self._committed == sum(
            j.file.size for j in jobs if j.state in (PREPARING, DOWNLOADING)
        )

    def _maybe_load(self) -> None:
        if self._waiting_for_downloads and not self._active:
            self._waiting_for_downloads = False
        if self._passing and not self._loading and not self._waiting_for_downloads:
            room = self._room()
            if not room:
                return
            self._loading = True
            after, inclusive = self._cursor if self._cursor is not None else (None, True)
            self._emit(LoadNeed(after, inclusive, min(self.page, room + PAGE_SLACK)))

    def need_loaded(self, rows: list[Wanted], exhausted: bool) -> None:
        """A page of the need, in order (from a LoadNeed)."""
        self._loading = False
        specs: list[JobSpec] = []
        stopped = False
        for w in rows:
            if not self._consume(w, specs):
                stopped = True
                break
            self._cursor = (w.key, False)
        if specs:
            self._emit(PrepareJobs(tuple(specs), self._committed - sum(sp.file.size for sp in specs)))
        if not stopped and exhausted:
            self._passing = False
            self._cursor = None
        if self._rewind_pending:
            self._rewind_pending = False
            target, self._rewind = self._rewind, None
            self._cursor = target if not self._passing else _earlier(self._cursor, target)
            self._passing = True
            self._waiting_for_downloads = False
        self._flush_apply()
        self._update_interest()
        if not stopped:
            self._maybe_load()

    def _consume(self, w: Wanted, specs: list[JobSpec]) -> bool:
        """Take one need row; False: no room for it now (the pass continues from it later)."""
        name = w.name
        if name in self._jobs or name in self._others or name in self._applying_others:
            return True  # under way (a change of version aborts the job and re-loads it)
        if w.kind == KIND_DELETE:
            if self._active:
                self._waiting_for_downloads = True
                return False
            return self._take_other(w)
        if w.kind == KIND_OTHER:
            return self._take_other(w)
        if w.file.size and not (w.holders & self._connected):
            return True  # nobody connected has it: skipped this pass
        if self._slots_used() >= self.max_jobs:
            return False
        size = w.file.size
        if self._slots_used() and self._committed + size > self.max_job_bytes:
            return False
        self._gen += 1
        job = self._jobs[name] = _Job(w, self._gen)
        self._set_state(job, PREPARING, fresh=True)
        specs.append(JobSpec(w.file, self._gen, w.conflict))
        return True

    def _take_other(self, w: Wanted) -> bool:
        if len(self._others) >= APPLY_BATCH:
            return False
        self._others[w.name] = w
        return True

    def need_changed(self, changes: list[NeedChange]) -> None:
        """The need of these names was recomputed (index received, scan, apply)."""
        restart: OrderKey | None = None
        restart_any = False
        for c in changes:
            job = self._jobs.get(c.name)
            if job is not None:
                if c.key is None:
                    if job.state != APPLYING:
                        self._abort(c.name, drop_temp=True)
                    continue
                if c.version != job.file.version:
                    if job.state != APPLYING:
                        self._abort(c.name, drop_temp=False)  # the temp's blocks may be reused
                elif job.state == DOWNLOADING:
                    for p in c.holders & self._connected:
                        self.picker.set_full_holder(p, c.name)
                    continue
                else:
                    continue
            other = self._others.get(c.name)
            if other is not None and (c.key is None or c.version != other.file.version):
                del self._others[c.name]
            if c.key is None:
                continue
            if c.key[0] != KIND_FILE or (c.holders & self._connected) or c.key[1] == 0:
                restart = c.key if restart is None or c.key < restart else restart
                restart_any = True
        if restart_any:
            self._restart_from(restart)
        else:
            self._maybe_load()  # an aborted job's slot may let the pass go on
        self._update_interest()

    def retry_due(self, at: float | None) -> None:
        """The earliest time (monotonic) a failed entry may be tried again."""
        if at is not None and (self._retry_at is None or at < self._retry_at):
            self._retry_at = at

    # --- jobs ----------------------------------------------------------------------------
    def job_prepared(self, name: str, gen: int, have: set[int]) -> None:
        job = self._jobs.get(name)
        if job is None or job.gen != gen or job.state != PREPARING:
            return  # aborted meanwhile (the driver closes the temp file)
        job.have = set(have)
        n = len(job.file.blocks)
        if len(job.have) >= n:
            self._finish(job)
            return
        self._set_state(job, DOWNLOADING)
        self.picker.add_file(name, n, job.have)
        for p in job.wanted.holders & self._connected:
            self.picker.set_full_holder(p, name)
        if job.have and n > 1:
            self._emit(Announce(self._bitfield(job)))
            job.told.update(self._connected)
        self._update_interest()

    def job_failed(self, name: str, gen: int) -> None:
        """Preparing failed (the driver recorded the error and when to retry)."""
        job = self._jobs.get(name)
        if job is not None and job.gen == gen:
            self._abort(name, drop_temp=False, emit=False)
            self._maybe_load()

    def _abort(self, name: str, drop_temp: bool, emit: bool = True) -> None:
        job = self._jobs.pop(name, None)
        if job is None:
            return
        self._set_state(job, None)
        by_peer: dict[Peer, list[int]] = {}
        for peer, ref in self.picker.remove_file(name):
            rid = self._rid_of.pop((peer, ref), None)
            if rid is not None:
                self._release(rid)
                by_peer.setdefault(peer, []).append(rid)
        for peer, ids in by_peer.items():
            self._emit(SendCancels(peer, tuple(ids)))
        if emit:
            self._emit(AbortJob(name, job.gen, drop_temp))

    def _finish(self, job: _Job) -> None:
        self._set_state(job, FINISHED)
        self.picker.remove_file(job.file.name)
        self._flush_apply()

    # --- applying --------------------------------------------------------------------------
    def _flush_apply(self) -> None:
        if self._apply_in_flight:
            return
        finished = [j for j in self._jobs.values() if j.state == FINISHED][:APPLY_BATCH]
        others = list(self._others.values())[: APPLY_BATCH - len(finished)]
        if not finished and not others:
            return
        for j in finished:
            self._set_state(j, APPLYING)
        for w in others:
            del self._others[w.name]
            self._applying_others.add(w.name)
        self._apply_in_flight = True
        self._emit(ApplyBatch(tuple(JobSpec(j.file, j.gen, j.wanted.conflict) for j in finished), tuple(others)))

    def applied(self, batch: ApplyBatch) -> None:
        """The batch was carried out (successes and failures alike: the need is recomputed and
        failures recorded by the driver, and arrive as need changes / retries)."""
        self._apply_in_flight = False
        for spec in batch.finished:
            job = self._jobs.get(spec.file.name)
            if job is not None and job.gen == spec.gen:
                del self._jobs[spec.file.name]
                self._set_state(job, None)
        for w in batch.others:
            self._applying_others.discard(w.name)
        self._flush_apply()
        self._maybe_load()
        self._update_interest()

    # --- peers ------------------------------------------------------------------------------
    def peer_ready(self, peer: Peer) -> None:
        self._connected.add(peer)
        for job in self._jobs.values():
            if job.state == DOWNLOADING and peer in job.wanted.holders:
                self.picker.set_full_holder(peer, job.file.name)
        self._restart_from(None)  # what it holds may start now

    def peer_gone(self, peer: Peer) -> None:
        self._connected.discard(peer)
        self._latency.pop(peer, None)
        self.picker.remove_peer(peer)
        for rid in [rid for rid, r in self._reqs.items() if r.peer == peer]:
            req = self._reqs[rid]
            self._rid_of.pop((peer, req.ref), None)
            self._release(rid)
        self._pipeline.pop(peer, None)
        for job in self._jobs.values():
            job.told.discard(peer)
        self._update_interest()

    def choked(self, peer: Peer) -> None:
        self.picker.set_choking(peer, True)

    def unchoked(self, peer: Peer) -> None:
        self.picker.set_choking(peer, False)

    def _update_interest(self) -> None:
        self._interest_dirty = True  # computed when asked (once per loop turn), not per event

    @property
    def interest(self) -> set[Peer]:
        """The connected peers that hold blocks of our downloads."""
        if self._interest_dirty:
            self._interest_dirty = False
            want: set[Peer] = set()
            for job in self._jobs.values():
                if job.state == DOWNLOADING:
                    want |= self.picker.holders(job.file.name)
            self._interest = want & self._connected
        return self._interest

    # --- availability from peers -----------------------------------------------------------
    def _job_for(self, name: str, version: list[tuple[int, int]], count: int | None = None) -> _Job | None:
        job = self._jobs.get(name)
        if job is None or job.state != DOWNLOADING:
            return None
        if count is not None and count != len(job.file.blocks):
            return None
        try:
            v = VersionVector.from_list(version)
        except (TypeError, ValueError):
            return None
        return job if v == job.file.version else None

    def bitfield(self, peer: Peer, msg: Bitfield) -> None:
        job = self._job_for(msg.name, msg.version, msg.block_count)
        if job is None or peer not in self._connected or len(msg.bits) != (msg.block_count + 7) // 8:
            return
        bits = msg.bits
        held = {i for i in range(msg.block_count) if bits[i >> 3] & (0x80 >> (i & 7))}
        self.picker.set_partial(peer, msg.name, held)
        self._answer_availability(peer, job)
        self._update_interest()

    def have(self, peer: Peer, msg: Have) -> None:
        job = self._job_for(msg.name, msg.version)
        if job is None or peer not in self._connected:
            return
        self.picker.have_many(peer, msg.name, msg.indexes())
        self._answer_availability(peer, job)
        self._update_interest()

    def _answer_availability(self, peer: Peer, job: _Job) -> None:
        if peer not in job.told:
            job.told.add(peer)
            if job.have:
                self._emit(Announce(self._bitfield(job), to=peer))

    def _bitfield(self, job: _Job) -> Bitfield:
        n = len(job.file.blocks)
        bits = bytearray((n + 7) // 8)
        for i in job.have:
            bits[i >> 3] |= 0x80 >> (i & 7)
        return Bitfield(self.folder, job.file.name, list(job.file.version), n, bytes(bits))

    # --- requests ---------------------------------------------------------------------------
    def _stuck(self, reqs: dict[Peer, float], now: float) -> bool:
        """Endgame: have these requests waited clearly longer than their peers' queues take?"""
        for p, sent in reqs.items():
            pipe = self._pipeline.get(p)
            queued = pipe[1] if pipe else 0
            patience = max(ENDGAME_MIN_WAIT, 2.0 * queued / max(self._rates.get(p, 0.0), 1.0))
            if now - sent < patience:
                return False
        return True

    def fill(self, now: float, rates: Mapping[Peer, float]) -> None:
        """Top up every peer's pipeline (call once per loop turn, not per event)."""
        self._rates = rates
        for peer in self._connected:
            if peer in self.picker.choking_us:
                continue
            pipe = self._pipeline.setdefault(peer, [0, 0])
            budget = budget_for(rates.get(peer, 0.0))
            if budget > MIN_BUDGET and self.picker.swarm_at(peer) >= SEED_SWARM:
                budget = self._seed_budget(peer, rates.get(peer, 0.0))
            free = MAX_REQUESTS - pipe[0]
            if free <= 0 or (pipe[0] and pipe[1] * 4 >= budget * 3):
                continue
            # from a full holder, what others could serve only while its pipeline is empty
            refs = self.picker.pick(
                peer, free, now, self._stuck, spare=SPARE_BLOCKS if pipe[0] == 0 else 0,
                bytes_left=budget - pipe[1], block_bytes=self._block_bytes,
            )
            if not refs:
                continue
            out: list[Request] = []
            used = 0
            for ref in refs:
                used += 1
                job = self._jobs.get(ref.file)
                if job is None or job.state != DOWNLOADING:
                    self.picker.failed(peer, ref)
                    continue
                f = job.file
                off = ref.index * f.block_size
                size = min(f.block_size, f.size - off)
                rid = self._next_id()
                self._reqs[rid] = _Req(peer, ref, job.gen, size, now)
                self._rid_of[(peer, ref)] = rid
                pipe[0] += 1
                pipe[1] += size
                out.append(Request(rid, self.folder, f.name, ref.index, off, size, f.blocks[ref.index]))
                if pipe[1] >= budget:
                    break
            for ref in refs[used:]:  # picked beyond the byte budget: hand them back
                self.picker.failed(peer, ref)
            if out:
                self._emit(SendRequests(peer, tuple(out)))

    def _block_bytes(self, name: str) -> int:
        """Bytes a request for a block of `name` asks for (a small file's one block is the file)."""
        job = self._jobs.get(name)
        return min(job.file.block_size, job.file.size) if job is not None else 0

    def _release(self, rid: int) -> _Req | None:
        req = self._reqs.pop(rid, None)
        if req is not None:
            pipe = self._pipeline.get(req.peer)
            if pipe is not None:
                pipe[0] -= 1
                pipe[1] -= req.size
        return req

    def owns(self, rid: int) -> bool:
        return rid in self._reqs

    def _seed_budget(self, peer: Peer, rate: float) -> int:
        """SEED_ROUND_TRIPS of the peer's rate, the round trip being the quickest answer among
        its recent ones (a LAN's is milliseconds, so MIN_BUDGET), and at most the usual second."""
        samples = self._latency.get(peer)
        rtt = min(samples) if samples else PIPELINE_SECONDS
        return budget_for(rate * min(PIPELINE_SECONDS, SEED_ROUND_TRIPS * rtt))

    def piece_arrived(self, peer: Peer, rid: int, size: int, now: float | None = None) -> Expected | None:
        """A piece for request `rid` arrived (at `now`, for the peer's round-trip estimate);
        what it must be, or None (not ours, cancelled, from the wrong peer, or of the wrong
        size: then it counts as failed)."""
        req = self._reqs.get(rid)
        if req is None or req.peer != peer:
            return None
        if now is not None:
            samples = self._latency.setdefault(peer, deque(maxlen=LATENCY_WINDOW))
            samples.append(max(0.0, now - req.sent_at))
        self._release(rid)
        self._rid_of.pop((peer, req.ref), None)
        job = self._jobs.get(req.ref.file)
        if job is None or job.gen != req.gen or job.state != DOWNLOADING:
            self.picker.failed(peer, req.ref)
            return None
        if size != req.size:
            self.picker.failed(peer, req.ref, bad_data=True)
            return None
        return Expected(job.file.name, job.gen, req.ref.index, req.ref.index * job.file.block_size, req.size, job.file.blocks[req.ref.index])

    def block_done(self, peer: Peer, exp: Expected, ok: bool, local_error: bool = False) -> None:
        """The piece was verified and written (ok), failed verification (not ok), or could not
        be written here (local_error: not the peer's fault)."""
        job = self._jobs.get(exp.name)
        ref = BlockRef(exp.name, exp.index)
        if job is None or job.gen != exp.gen or job.state != DOWNLOADING:
            return
        if not ok:
            self.picker.failed(peer, ref, bad_data=not local_error)
            if self.picker.is_banned(peer):
                self._cancel_all(peer)  # whatever else it sends is garbage too
            return
        self.bytes_received += exp.size
        by_peer: dict[Peer, list[int]] = {}
        for other, r in self.picker.received(peer, ref):
            rid = self._rid_of.pop((other, r), None)
            if rid is not None:
                self._release(rid)
                by_peer.setdefault(other, []).append(rid)
        for other, ids in by_peer.items():
            self._emit(SendCancels(other, tuple(ids)))
        job.have.add(exp.index)
        if len(job.file.blocks) > 1:
            # not to the peers that hold this block already (the sender, seeds, partial holders
            # that said so): they never ask anyone for it. In a swarm that is a good part of
            # the Haves (each block is announced to every other peer), each one a message to
            # encode, send, decode and account for; a peer whose download restarts sends its
            # new bitfield and gets ours in reply, so it learns of this block anyway
            holders = self.picker.block_holders(exp.name, exp.index) | {peer}
            self._emit(Announce(Have(self.folder, job.file.name, list(job.file.version), exp.index), exclude=frozenset(holders)))
        if self.picker.done(exp.name):
            self._finish(job)
            self._update_interest()
            self._maybe_load()

    def _cancel_all(self, peer: Peer) -> None:
        ids = [rid for rid, r in self._reqs.items() if r.peer == peer]
        for rid in ids:
            req = self._reqs[rid]
            self._rid_of.pop((peer, req.ref), None)
            self._release(rid)
            self.picker.failed(peer, req.ref)
        if ids:
            self._emit(SendCancels(peer, tuple(ids)))

    def piece_error(self, peer: Peer, rid: int, not_held: bool, choked: bool) -> None:
        req = self._reqs.get(rid)
        if req is None or req.peer != peer:
            return
        self._release(rid)
        self._rid_of.pop((peer, req.ref), None)
        self.picker.failed(peer, req.ref)
        if not_held:
            self.picker.not_held(peer, req.ref)  # changed there, or our view is stale
        if choked:
            self.picker.set_choking(peer, True)

    def write_failed(self, name: str, gen: int) -> None:
        """The temp file of a job could not be written (disk full, I/O error): the job stops;
        the driver records the error and when to retry."""
        job = self._jobs.get(name)
        if job is not None and job.gen == gen and job.state == DOWNLOADING:
            self._abort(name, drop_temp=False)
            self._maybe_load()

    # --- time ---------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        deadlines = []
        if self._reqs:
            oldest = next(iter(self._reqs.values()))
            deadlines.append(oldest.sent_at + self.request_timeout)
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        expired = [rid for rid, r in self._reqs.items() if now - r.sent_at >= self.request_timeout]
        by_peer: dict[Peer, list[int]] = {}
        for rid in expired:
            req = self._release(rid)
            if req is None:
                continue
            self._rid_of.pop((req.peer, req.ref), None)
            self.picker.failed(req.peer, req.ref)
            self.picker.snub(req.peer, now)
            by_peer.setdefault(req.peer, []).append(rid)
        for peer, ids in by_peer.items():
            self._emit(SendCancels(peer, tuple(ids)))
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._restart_from(None)


def _earlier(a: tuple[OrderKey, bool] | None, b: tuple[OrderKey, bool] | None) -> tuple[OrderKey, bool] | None:
    """The cursor that loads more: None (the start) beats everything; inclusive beats exclusive."""
    if a is None or b is None:
        return None
    if a[0] != b[0]:
        return a if a[0] < b[0] else b
    return (a[0], a[1] or b[1])


def is_download(f: FileInfo) -> bool:
    return f.type == FileType.FILE and not f.deleted

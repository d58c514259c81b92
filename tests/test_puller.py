"""The sans-IO puller, driven by hand: events in, actions out, time injected."""

from __future__ import annotations

import hashlib
import itertools
import os
import random

import pytest

from syncer.index.fileinfo import FileInfo, FileType
from syncer.index.version import VersionVector
from syncer.model.storage import JobFile
from syncer.transfer.puller import (
    KIND_DELETE,
    KIND_FILE,
    KIND_OTHER,
    AbortJob,
    Announce,
    ApplyBatch,
    LoadNeed,
    NeedChange,
    PrepareJobs,
    Puller,
    SendCancels,
    SendRequests,
    Wanted,
)
from syncer.wire import Bitfield, Have

BS = 128 << 10
V1 = VersionVector(((1, 1),))
V2 = VersionVector(((1, 2),))


def fi(name: str, blocks: int = 1, version: VersionVector = V1, type_: FileType = FileType.FILE, deleted: bool = False) -> FileInfo:
    size = blocks * BS if type_ == FileType.FILE and not deleted else 0
    hashes = tuple(hashlib.sha256(f"{name}{i}".encode()).digest() for i in range(blocks if size else 0))
    return FileInfo(name, type_, size, 1, 0o644, BS if size else 0, hashes, "", version, 1, deleted, 1)


def wanted(f: FileInfo, holders=("A",)) -> Wanted:
    kind = KIND_DELETE if f.deleted else (KIND_FILE if f.type == FileType.FILE else KIND_OTHER)
    return Wanted(f, kind, False, frozenset(holders))


_made: list[Puller] = []


@pytest.fixture(autouse=True)
def _counters_stay_consistent():
    """Every test's pullers end with their slot and byte counters equal to what they count."""
    _made.clear()
    yield
    assert all(p.counters_consistent() for p in _made)


def new_puller(**kw) -> Puller:
    ids = itertools.count(1)
    p = Puller("F", lambda: next(ids), rng=random.Random(0), **kw)
    _made.append(p)
    return p


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def start_with(p: Puller, rows: list[Wanted], peers=("A",)) -> list:
    for peer in peers:
        p.peer_ready(peer)
    acts = p.actions()
    (load,) = of(acts, LoadNeed)
    assert load.after is None and load.inclusive and 0 < load.limit <= p.page
    p.need_loaded(rows, exhausted=True)
    return p.actions()


def test_haves_go_only_to_peers_that_lack_the_block():
    p = new_puller()
    f = fi("a.bin", blocks=3)
    acts = start_with(p, [wanted(f, holders=("A", "B"))], peers=("A", "B", "C", "D"))
    (prep,) = of(acts, PrepareJobs)
    p.job_prepared("a.bin", prep.jobs[0].gen, set())
    p.have("D", Have("F", "a.bin", list(f.version), 1))  # D holds block 1 only
    p.actions()
    p.fill(0.0, {})
    requests = [(a.peer, r) for a in of(p.actions(), SendRequests) for r in a.requests]
    assert sorted(r.block_index for _, r in requests) == [0, 1, 2]
    for peer, r in requests:
        exp = p.piece_arrived(peer, r.id, r.size)
        assert exp is not None
        p.block_done(peer, exp, True)
        (ann,) = of(p.actions(), Announce)
        assert isinstance(ann.message, Have) and ann.message.block_index == r.block_index
        # the seeds and the sender never; D only for the blocks it lacks; C always
        assert {"A", "B", peer} <= ann.exclude and "C" not in ann.exclude
        assert ("D" in ann.exclude) == (r.block_index == 1)


def test_a_file_goes_from_need_to_applied():
    p = new_puller()
    f = fi("a.bin", blocks=3)
    acts = start_with(p, [wanted(f)])
    (prep,) = of(acts, PrepareJobs)
    gen = prep.jobs[0].gen
    p.job_prepared("a.bin", gen, set())
    p.fill(0.0, {})
    (reqs,) = of(p.actions(), SendRequests)
    assert reqs.peer == "A" and sorted(r.block_index for r in reqs.requests) == [0, 1, 2]
    assert p.interest == {"A"}
    for r in reqs.requests:
        exp = p.piece_arrived("A", r.id, r.size)
        assert exp is not None and exp.hash == f.blocks[r.block_index] and exp.offset == r.offset
        p.block_done("A", exp, True)
    acts = p.actions()
    assert len(of(acts, Announce)) == 3  # a Have per block (file has more than one block)
    (batch,) = of(acts, ApplyBatch)
    assert [s.file.name for s in batch.finished] == ["a.bin"]
    p.applied(batch)
    assert not p.busy() and p.interest == set()


def test_results_of_an_aborted_job_are_ignored():
    p = new_puller()
    f = fi("a.bin", blocks=2)
    (prep,) = of(start_with(p, [wanted(f)]), PrepareJobs)
    old = prep.jobs[0].gen
    p.job_prepared("a.bin", old, set())
    p.fill(0.0, {})
    (reqs,) = of(p.actions(), SendRequests)
    p.need_changed([NeedChange("a.bin", (KIND_FILE, f.size, "a.bin"), V2, frozenset({"A"}))])
    acts = p.actions()
    assert of(acts, AbortJob) == [AbortJob("a.bin", old, False)]  # temp kept: blocks may be reused
    assert {i for c in of(acts, SendCancels) for i in c.ids} == {r.id for r in reqs.requests}
    assert p.piece_arrived("A", reqs.requests[0].id, BS) is None  # cancelled: not ours any more
    assert not p.is_current("a.bin", old)
    p.job_prepared("a.bin", old, set())  # a late report of the old generation changes nothing
    assert p.held_block("a.bin", 0) is None


def test_deletions_wait_for_downloads():
    p = new_puller()
    f = fi("new.bin")
    gone = fi("old.bin", deleted=True)
    acts = start_with(p, [wanted(f), wanted(gone, holders=())])
    (prep,) = of(acts, PrepareJobs)
    assert not of(acts, ApplyBatch)  # the deletion is held back
    p.job_prepared("new.bin", prep.jobs[0].gen, {0})  # all blocks local: done at once
    (batch,) = of(p.actions(), ApplyBatch)
    assert [s.file.name for s in batch.finished] == ["new.bin"] and batch.others == ()
    p.applied(batch)
    (load,) = of(p.actions(), LoadNeed)  # the pass goes on from the deletion
    assert load.after == (KIND_FILE, f.size, "new.bin") and not load.inclusive
    p.need_loaded([wanted(gone, holders=())], exhausted=True)
    (batch,) = of(p.actions(), ApplyBatch)
    assert [w.name for w in batch.others] == ["old.bin"]


def test_slots_limit_jobs_and_the_pass_resumes_after_apply():
    p = new_puller(max_jobs=2)
    files = [fi(f"f{i}") for i in range(3)]
    (prep,) = of(start_with(p, [wanted(f) for f in files]), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f0", "f1"]
    for s in prep.jobs:
        p.job_prepared(s.file.name, s.gen, {0})
    (batch,) = of(p.actions(), ApplyBatch)
    p.applied(batch)
    (load,) = of(p.actions(), LoadNeed)
    assert load.after[2] == "f1"
    p.need_loaded([wanted(files[2])], exhausted=True)
    (prep,) = of(p.actions(), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f2"]


def test_need_pages_are_as_big_as_the_room_to_start_files():
    """Among the files, a full job table loads no page, and a freed slot or two load a small
    one: each finished file used to read 512 rows to start one or two."""
    from syncer.transfer.puller import PAGE_SLACK

    p = new_puller(max_jobs=4)
    files = [fi(f"f{i:02}") for i in range(10)]
    (prep,) = of(start_with(p, [wanted(f) for f in files[:6]]), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f00", "f01", "f02", "f03"]
    for s in prep.jobs:
        p.job_prepared(s.file.name, s.gen, set())
    assert not of(p.actions(), LoadNeed)  # four of four slots in use
    p.restart_from((1, BS, "f09"))  # a need change further on: still nothing to start
    assert not of(p.actions(), LoadNeed)
    first = prep.jobs[0]
    p.write_failed(first.file.name, first.gen)  # one slot free
    (load,) = of(p.actions(), LoadNeed)
    assert load.after == (1, BS, "f03") and not load.inclusive and load.limit == 1 + PAGE_SLACK
    p.need_loaded([wanted(f) for f in files[4:]], exhausted=True)
    (prep,) = of(p.actions(), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f04"]


def test_a_job_dropped_by_a_need_change_lets_the_pass_go_on():
    """A full job table stops the pass; a job whose file is no longer needed (or whose new
    version nobody connected holds) frees its slot, and the pass continues from where it
    stopped without waiting for another file to finish."""
    p = new_puller(max_jobs=2)
    files = [fi(f"f{i:02}") for i in range(4)]
    (prep,) = of(start_with(p, [wanted(f) for f in files]), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f00", "f01"]
    for s in prep.jobs:
        p.job_prepared(s.file.name, s.gen, set())
    p.actions()
    p.need_changed([NeedChange("f00", None)])  # not needed any more
    acts = p.actions()
    (abort,) = of(acts, AbortJob)
    assert abort.name == "f00" and abort.drop_temp
    (load,) = of(acts, LoadNeed)
    assert load.after == (KIND_FILE, BS, "f01") and not load.inclusive
    p.need_loaded([wanted(f) for f in files[2:]], exhausted=True)
    (prep,) = of(p.actions(), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f02"]
    p.job_prepared("f02", prep.jobs[0].gen, set())
    p.actions()
    # a new version only B holds, B not connected: the job goes, the pass goes on to f03
    p.need_changed([NeedChange("f01", (KIND_FILE, BS, "f01"), V2, frozenset({"B"}))])
    (load,) = of(p.actions(), LoadNeed)
    p.need_loaded([wanted(files[3])], exhausted=True)
    (prep,) = of(p.actions(), PrepareJobs)
    assert [s.file.name for s in prep.jobs] == ["f03"]


def test_entries_nobody_connected_holds_are_skipped_until_a_holder_connects():
    p = new_puller()
    f = fi("a.bin")
    acts = start_with(p, [wanted(f, holders=("B",))])
    assert not of(acts, PrepareJobs)
    p.peer_ready("B")
    (load,) = of(p.actions(), LoadNeed)
    assert load.after is None  # a new pass from the start
    p.need_loaded([wanted(f, holders=("B",))], exhausted=True)
    assert of(p.actions(), PrepareJobs)


def test_availability_only_for_jobs_with_the_exact_version_and_count():
    p = new_puller()
    f = fi("a.bin", blocks=4)
    (prep,) = of(start_with(p, [wanted(f, holders=("A",))]), PrepareJobs)
    p.job_prepared("a.bin", prep.jobs[0].gen, {0})
    p.peer_ready("B")  # connects after the job started: it never got our bitfield
    p.actions()
    p.bitfield("B", Bitfield("F", "nope.bin", [(1, 1)], 4, b"\xf0"))  # not downloading: dropped
    p.bitfield("B", Bitfield("F", "a.bin", [(1, 1)], 5, b"\xf8"))  # wrong block count
    p.bitfield("B", Bitfield("F", "a.bin", [(1, 2)], 4, b"\xf0"))  # another version
    assert "B" not in p.picker.holders("a.bin")
    p.have("B", Have("F", "a.bin", [(1, 1)], 3))
    assert "B" in p.picker.holders("a.bin")
    # B started later and never got our blocks: its first message is answered with our bitfield
    (ann,) = of(p.actions(), Announce)
    assert ann.to == "B" and isinstance(ann.message, Bitfield) and ann.message.bits == b"\x80"
    p.have("B", Have("F", "a.bin", [(1, 1)], 2))
    assert not of(p.actions(), Announce)  # only once


def test_request_timeout_cancels_and_snubs():
    p = new_puller(request_timeout=60)
    f = fi("a.bin", blocks=8)
    (prep,) = of(start_with(p, [wanted(f)]), PrepareJobs)
    p.job_prepared("a.bin", prep.jobs[0].gen, set())
    p.fill(0.0, {})
    (reqs,) = of(p.actions(), SendRequests)
    assert p.get_timer() == 60.0
    p.handle_timer(61.0)
    (cancel,) = of(p.actions(), SendCancels)
    assert set(cancel.ids) == {r.id for r in reqs.requests}
    p.fill(62.0, {})
    (again,) = of(p.actions(), SendRequests)
    assert len(again.requests) == 1  # snubbed: one at a time


def test_bad_pieces_get_a_peer_banned_and_the_block_comes_from_another():
    p = new_puller()
    f = fi("a.bin", blocks=1)
    (prep,) = of(start_with(p, [wanted(f, holders=("B",))], peers=("A", "B")), PrepareJobs)
    p.job_prepared("a.bin", prep.jobs[0].gen, set())
    for _ in range(3):  # B is the only holder: it gets the request, and answers garbage
        p.fill(0.0, {})
        ((r,),) = [a.requests for a in of(p.actions(), SendRequests)]
        exp = p.piece_arrived("B", r.id, r.size)
        p.block_done("B", exp, False)
    assert p.picker.is_banned("B")
    p.fill(0.0, {})
    assert not of(p.actions(), SendRequests)  # nobody else has it yet
    p.need_changed([NeedChange("a.bin", (KIND_FILE, f.size, "a.bin"), V1, frozenset({"A", "B"}))])
    p.fill(0.0, {})
    ((peer, (r,)),) = [(a.peer, a.requests) for a in of(p.actions(), SendRequests)]
    assert peer == "A"
    p.block_done("A", p.piece_arrived("A", r.id, r.size), True)
    assert of(p.actions(), ApplyBatch)


def test_job_file_fences_writes_of_an_aborted_job(tmp_path):
    path = tmp_path / "t"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    job = JobFile("t", 1, fd)
    assert job.write(b"new", 0)
    job.close()
    assert not job.write(b"stale", 0)  # a pool thread finishing late writes nothing
    assert job.read(3, 0) is None
    assert path.read_bytes() == b"new"


def _bytes_requested(p: Puller, peer: str) -> int:
    return sum(r.size for a in of(p.actions(), SendRequests) if a.peer == peer for r in a.requests)


@pytest.mark.parametrize("others, deep", [(2, True), (3, False)])
def test_a_fast_seed_of_a_swarm_gets_a_pipeline_of_round_trips_not_a_second(others, deep):
    """At 16 MB/s a second is 16 MB in flight; a seed that SEED_SWARM others fetch from too, and
    that answers in 10 ms, is asked for two round trips of that (MIN_BUDGET here)."""
    from syncer.transfer.puller import MIN_BUDGET

    p = new_puller()
    f = fi("big.bin", blocks=512)  # 64 MiB
    peers = ["S"] + [f"R{i}" for i in range(others)]
    (prep,) = of(start_with(p, [wanted(f, holders=("S",))], peers=peers), PrepareJobs)
    p.job_prepared("big.bin", prep.jobs[0].gen, set())
    for i, r in enumerate(peers[1:]):  # each other receiver has some blocks
        p.have(r, Have("F", "big.bin", [(1, 1)], 500 - i))
    p.actions()
    rates = {"S": 16e6}
    p.fill(0.0, rates)
    (first,) = [a for a in of(p.actions(), SendRequests) if a.peer == "S"]
    for r in first.requests:  # all answered within 10 ms
        p.block_done("S", p.piece_arrived("S", r.id, r.size, 0.01), True)
    p.actions()
    p.fill(0.02, rates)
    sent = _bytes_requested(p, "S")
    if deep:
        assert sent >= 8 * MIN_BUDGET
    else:
        assert sent <= MIN_BUDGET + BS


def test_a_batched_have_counts_every_block_it_names_and_drops_the_out_of_range():
    p = new_puller()
    f = fi("a.bin", blocks=4)
    acts = start_with(p, [wanted(f, holders=("A",))], peers=("A", "B"))
    (prep,) = of(acts, PrepareJobs)
    p.job_prepared("a.bin", prep.jobs[0].gen, set())
    p.have("B", Have("F", "a.bin", list(f.version), 1, [3, 9]))  # 9: no such block
    assert p.picker.block_holders("a.bin", 1) == {"A", "B"}
    assert p.picker.block_holders("a.bin", 3) == {"A", "B"}
    assert p.picker.block_holders("a.bin", 0) == {"A"}
    assert "B" in p.interest


def test_a_fill_picks_only_what_the_byte_budget_sends():
    """With 128 KiB blocks and MIN_BUDGET in flight, a fill holds as many blocks in the picker
    as it requests: it used to pick up to MAX_REQUESTS and hand most of them back."""
    from syncer.transfer.puller import MIN_BUDGET

    p = new_puller()
    f = fi("big.bin", blocks=512)
    (prep,) = of(start_with(p, [wanted(f, holders=("S",))], peers=("S", "R")), PrepareJobs)
    p.job_prepared("big.bin", prep.jobs[0].gen, set())
    p.have("R", Have("F", "big.bin", [(1, 1)], 7))  # a partial holder: the rarest-first path
    p.actions()
    picks = []
    real = p.picker.pick
    p.picker.pick = lambda *a, **kw: picks.append(real(*a, **kw)) or picks[-1]  # type: ignore[method-assign]
    p.fill(0.0, {})
    sent = [r for a in of(p.actions(), SendRequests) for r in a.requests]
    assert sum(r.size for r in sent) == MIN_BUDGET + BS  # S: its budget (8 blocks); R: the one block it has
    assert sum(len(x) for x in picks) == len(sent) == len(p.picker.in_flight)


def test_a_fill_of_small_files_is_bounded_by_their_real_size():
    """A 4 KiB file's one block asks for 4 KiB, not the block size: MIN_BUDGET of them go out
    in one fill (as many as MAX_REQUESTS allows), not MIN_BUDGET / block size."""
    from syncer.transfer.puller import MAX_REQUESTS, MIN_BUDGET

    p = new_puller()
    small = [FileInfo(f"s{i}", FileType.FILE, 4096, 1, 0o644, BS, (hashlib.sha256(b"%d" % i).digest(),), "", V1, 1, False, 1) for i in range(200)]
    (prep,) = of(start_with(p, [wanted(f) for f in small]), PrepareJobs)
    for spec in prep.jobs:
        p.job_prepared(spec.file.name, spec.gen, set())
    p.fill(0.0, {})
    sent = [r for a in of(p.actions(), SendRequests) for r in a.requests]
    assert len(sent) == min(200, MAX_REQUESTS, MIN_BUDGET // 4096) == 200

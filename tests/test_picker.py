import random

from syncer.transfer.picker import MAX_BAD, BlockRef, Picker


def avail_picker(avail: str) -> Picker:
    """One file whose block i is held by int(avail[i]) peers p0..p9; peer 'me' holds all."""
    p = Picker(random.Random(1))
    p.add_file("f", len(avail))
    p.set_full_holder("me", "f")
    for i, c in enumerate(avail):
        for k in range(int(c)):
            p.have_many(f"p{k}", "f", (i,))
    return p


def test_rarest_first():
    p = avail_picker("4179253")
    picked = [r.index for r in p.pick("me", 7, now=0)]
    # availability including 'me': 5,2,8,10,3,6,4 -> rarest first
    assert picked == [1, 4, 6, 0, 5, 2, 3]


def test_random_tie_break_is_deterministic_per_seed_and_varies():
    orders = set()
    for seed in range(10):
        p = Picker(random.Random(seed))
        p.add_file("f", 8)
        p.set_full_holder("a", "f")
        p.set_full_holder("b", "f")
        orders.add(tuple(r.index for r in p.pick("a", 8, 0)))
    assert len(orders) > 1


def test_started_files_first():
    p = Picker(random.Random(0))
    p.add_file("a", 3)
    p.add_file("b", 3, have={0})  # resumed: started
    p.set_full_holder("x", "a")
    p.set_full_holder("x", "b")
    picked = p.pick("x", 4, 0)
    assert sorted(picked[:2]) == [BlockRef("b", 1), BlockRef("b", 2)]
    assert {r.file for r in picked[2:]} == {"a"}


def test_two_leechers_of_one_seed_pick_different_blocks():
    p1, p2 = Picker(random.Random(1)), Picker(random.Random(2))
    for p in (p1, p2):
        p.add_file("f", 64)
        p.set_full_holder("seed", "f")
    a = {r.index for r in p1.pick("seed", 8, 0)}
    b = {r.index for r in p2.pick("seed", 8, 0)}
    assert a != b


def test_peer_only_gets_blocks_it_holds():
    p = Picker(random.Random(0))
    p.add_file("f", 4)
    p.set_partial("half", "f", {2, 3})
    assert sorted(r.index for r in p.pick("half", 10, 0)) == [2, 3]
    assert p.pick("nobody", 10, 0) == []


def test_endgame_duplicates_and_cancels():
    p = Picker(random.Random(0))
    p.add_file("f", 2)
    p.set_full_holder("a", "f")
    p.set_full_holder("b", "f")
    assert len(p.pick("a", 2, 0)) == 2
    dup = p.pick("b", 2, 0)  # everything requested: endgame
    assert sorted(r.index for r in dup) == [0, 1]
    assert p.received("b", BlockRef("f", 0)) == [("a", BlockRef("f", 0))]
    assert p.received("a", BlockRef("f", 1)) == [("b", BlockRef("f", 1))]
    assert p.done("f")


def test_bad_data_bans_peer_and_block_is_picked_again():
    p = Picker(random.Random(0))
    p.add_file("f", 1)
    p.set_full_holder("evil", "f")
    p.set_full_holder("good", "f")
    for _ in range(MAX_BAD):
        [ref] = p.pick("evil", 1, 0)
        p.failed("evil", ref, bad_data=True)
    assert p.is_banned("evil") and p.pick("evil", 1, 0) == []
    assert p.pick("good", 1, 0) == [BlockRef("f", 0)]


def test_snubbed_peer_gets_one_request_at_a_time():
    p = Picker(random.Random(0))
    p.add_file("f", 10)
    p.set_full_holder("slow", "f")
    refs = p.pick("slow", 5, now=0)
    assert len(refs) == 5
    for ref in refs:  # what the puller does when these time out
        p.failed("slow", ref)
    p.snub("slow", now=100)
    assert p.statistics().in_flight == 0
    assert len(p.pick("slow", 5, now=101)) == 1  # snubbed: one at a time
    assert p.pick("slow", 5, now=102) == []  # ...while that one is in flight
    assert len(p.pick("slow", 5, now=131)) == 5  # snub over


def test_remove_peer_and_file():
    p = Picker(random.Random(0))
    p.add_file("f", 3)
    p.set_full_holder("a", "f")
    p.pick("a", 3, 0)
    p.remove_peer("a")
    assert p.statistics().in_flight == 0 and p.holders("f") == set()
    p.set_full_holder("b", "f")
    [ref] = p.pick("b", 1, 0)
    assert p.remove_file("f") == [("b", ref)]
    assert p.statistics().files == 0


def swarm_picker() -> Picker:
    """Blocks 0-3 of "f" are held by the full holder 'seed' only, 4-7 also by peer 'p'."""
    p = Picker(random.Random(1))
    p.add_file("f", 8)
    p.set_full_holder("seed", "f")
    p.set_partial("p", "f", {4, 5, 6, 7})
    return p


def test_a_seed_is_asked_for_what_nobody_else_has_and_spares_only_as_many_others():
    p = swarm_picker()
    assert sorted(r.index for r in p.pick("seed", 8, 0, spare=0)) == [0, 1, 2, 3]
    p = swarm_picker()
    picked = sorted(r.index for r in p.pick("seed", 8, 0, spare=1))
    assert picked[:4] == [0, 1, 2, 3] and len(picked) == 5 and picked[4] in {4, 5, 6, 7}
    p = swarm_picker()
    assert len(p.pick("seed", 8, 0)) == 8  # no spare given: no limit (a lone seed, BitTorrent)
    # what the seed was not asked for stays free for the partial holder
    p = swarm_picker()
    p.pick("seed", 8, 0, spare=0)
    assert sorted(r.index for r in p.pick("p", 8, 0)) == [4, 5, 6, 7]


def test_blocks_of_a_peer_that_chokes_us_count_as_nowhere_else():
    p = swarm_picker()
    p.set_choking("p", True)
    assert len(p.pick("seed", 8, 0, spare=0)) == 8
    p = swarm_picker()
    p.snub("p", now=0)  # slow to answer: no better
    assert len(p.pick("seed", 8, 1, spare=0)) == 8
    p = swarm_picker()
    p.set_choking("p", True)
    p.set_choking("p", False)
    assert len(p.pick("seed", 8, 0, spare=0)) == 4


def test_swarm_at_counts_the_partial_holders_of_files_a_peer_seeds():
    p = swarm_picker()
    assert p.swarm_at("seed") == 1 and p.swarm_at("p") == 0
    p.set_partial("q", "f", {1})
    assert p.swarm_at("seed") == 2
    p.remove_peer("q")
    assert p.swarm_at("seed") == 1


def test_a_byte_budget_bounds_the_pick_across_files():
    p = avail_picker("4179253")
    sizes = {"f": 100, "g": 10}
    # 250 bytes of 100-byte blocks: three (the last one may pass the budget), rarest first
    assert [r.index for r in p.pick("me", 7, 0, bytes_left=250, block_bytes=sizes.__getitem__)] == [1, 4, 6]
    assert len(p.in_flight) == 3
    p.add_file("g", 20)
    p.set_full_holder("me", "g")
    # what is left of the budget after the started file's last four blocks goes to the next file
    got = p.pick("me", 20, 0, bytes_left=430, block_bytes=sizes.__getitem__)
    assert [r.file for r in got] == ["f"] * 4 + ["g"] * 3
    # without the budget: the count alone
    assert len(p.pick("me", 5, 0)) == 5

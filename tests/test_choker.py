import random

from syncer.transfer.choker import Choker, ChokeStats


def stats(rates: dict[str, float], interested: bool = True, **kw) -> dict[str, ChokeStats]:
    return {p: ChokeStats(interested, r, 0.0, **kw) for p, r in rates.items()}


def test_tit_for_tat_regular_slots_go_to_best_uploaders():
    c = Choker(slots=4, rng=random.Random(0))
    peers = stats({"a": 100, "b": 500, "c": 300, "d": 50, "e": 10, "f": 400})
    d = c.rank(peers, now=0)
    assert {"b", "f", "c"} <= d.unchoked  # 3 regular slots
    assert len(d.unchoked) == 4 and d.optimistic in {"a", "d", "e"}


def test_uninterested_peers_stay_choked():
    c = Choker(slots=4, rng=random.Random(0))
    peers = stats({"a": 1000}, interested=False) | stats({"b": 1})
    assert c.rank(peers, 0).unchoked == frozenset({"b"})


def test_optimistic_slot_rotates_over_time():
    c = Choker(slots=2, optimistic_interval=30, rng=random.Random(3))
    peers = stats({"top": 1000, "x": 1, "y": 1, "z": 1})
    seen = set()
    first = c.rank(peers, 0).optimistic
    assert c.rank(peers, 10).optimistic == first  # not yet time to rotate
    for t in range(30, 30 * 40, 30):
        seen.add(c.rank(peers, t).optimistic)
    assert seen == {"x", "y", "z"}


def test_unlimited_peers_always_unchoked_without_a_slot():
    c = Choker(slots=1, rng=random.Random(0))
    peers = stats({"own1": 0, "own2": 0}, unlimited=True) | stats({"s": 5})
    d = c.rank(peers, 0)
    assert {"own1", "own2", "s"} == d.unchoked


def test_seeding_ranks_by_upload_rate():
    c = Choker(slots=2, rng=random.Random(0))
    peers = {
        "fast": ChokeStats(True, 0, 900),
        "slow": ChokeStats(True, 0, 10),
        "mid": ChokeStats(True, 0, 100),
    }
    d = c.rank(peers, 0, seeding=True)
    assert "fast" in d.unchoked and len(d.unchoked) == 2
    assert c.next_deadline() == 10.0

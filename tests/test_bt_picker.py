"""The piece picker and the BEP 9 metadata fetcher (pure): rarest first from compact
availability strings, started pieces first, the in-progress bound, endgame with cancels,
failures and smart-ban inputs, and a deterministic simulated swarm."""

from __future__ import annotations

import hashlib
import random

from syncer.bt.bitfield import Bitfield
from syncer.bt.metadata import MetadataFetcher, serve_piece
from syncer.bt.picker import PiecePicker
from syncer.bt.wire import BLOCK, METADATA_PIECE, Geometry


def geometry(n: int, blocks: int = 2) -> Geometry:
    return Geometry(n, blocks * BLOCK, n * blocks * BLOCK)


def picker(n: int, blocks: int = 2, max_partial: int = 100, have: set[int] = frozenset(), seed: int = 0) -> PiecePicker:
    want = Bitfield.full(n)
    return PiecePicker(geometry(n, blocks), Bitfield(n, None) if not have else _bits(n, have), want, max_partial, random.Random(seed))


def _bits(n: int, pieces) -> Bitfield:
    b = Bitfield(n)
    b.update(pieces)
    return b


def with_availability(p: PiecePicker, avail: str) -> None:
    """avail[i] = how many (partial) peers have piece i, e.g. "4179253"."""
    n = len(avail)
    for k in range(max(int(c) for c in avail)):
        p.add_peer(f"holder{k}", _bits(n, [i for i, c in enumerate(avail) if int(c) > k]))


def test_rarest_first_from_availability():
    p = picker(7)
    with_availability(p, "4179253")
    p.add_peer("me", None)  # a seed: has everything, adds the same to every piece
    order = []
    for _ in range(7):
        reqs = p.pick("me", 2, 0.0)
        order.append(reqs[0][0])
        for piece, begin, _ in reqs:
            p.received("me", piece, begin)
        p.piece_passed(reqs[0][0])
    assert order == [1, 4, 6, 0, 5, 2, 3]


def test_ties_break_randomly_and_peers_of_one_seed_take_different_pieces():
    firsts = set()
    for seed in range(20):
        p = picker(50, seed=seed)
        p.add_peer("seed", None)
        firsts.add(p.pick("seed", 1, 0.0)[0][0])
    assert len(firsts) > 5


def test_started_pieces_come_first_and_blocks_are_16k():
    p = picker(4, blocks=4)
    p.add_peer("a", None)
    p.add_peer("b", None)
    first = p.pick("a", 2, 0.0)
    assert [r[1:] for r in first] == [(0, BLOCK), (BLOCK, BLOCK)] and first[0][0] == first[1][0]
    second = p.pick("b", 2, 0.0)  # b continues a's piece before starting one
    assert {r[0] for r in second} == {first[0][0]} and [r[1] for r in second] == [2 * BLOCK, 3 * BLOCK]


def test_last_piece_blocks_are_short():
    g = Geometry(2, 2 * BLOCK, 2 * BLOCK + 100)
    p = PiecePicker(g, Bitfield(2), Bitfield.full(2), 10, random.Random(1))
    p.add_peer("s", None)
    reqs = sorted(p.pick("s", 10, 0.0))
    assert reqs == [(0, 0, BLOCK), (0, BLOCK, BLOCK), (1, 0, 100)]


def test_only_pieces_the_peer_has_and_we_want():
    n = 6
    want = _bits(n, [1, 2, 3])
    p = PiecePicker(geometry(n), _bits(n, [2]), want, 10, random.Random(0))
    p.add_peer("x", _bits(n, [0, 2, 3, 5]))
    assert {r[0] for r in p.pick("x", 10, 0.0)} == {3}
    assert p.interesting("x")
    p.add_peer("y", _bits(n, [0, 2, 5]))
    assert not p.interesting("y") and p.pick("y", 10, 0.0) == []


def test_in_progress_pieces_are_bounded():
    p = picker(20, blocks=2, max_partial=3)
    for k in range(5):
        p.add_peer(k, None)
    got = [r for k in range(5) for r in p.pick(k, 1, 0.0)]
    assert len({r[0] for r in got}) == 3 and len(got) == 5  # five peers share three pieces
    assert len(p.partial) == 3


def test_endgame_duplicates_and_cancels():
    p = picker(1, blocks=2)
    p.add_peer("a", None)
    p.add_peer("b", None)
    a = p.pick("a", 10, 0.0)
    assert len(a) == 2 and p.endgame is not False
    b = p.pick("b", 10, 0.0)
    assert sorted(b) == sorted(a)  # everything is requested: b asks for the same blocks
    done, cancels = p.received("b", 0, 0)
    assert not done and cancels == [("a", (0, 0, BLOCK))]
    assert p.received("a", 0, 0) is None  # the loser's copy, if it comes anyway, is ignored
    done, cancels = p.received("a", 0, BLOCK)
    assert done and cancels == [("b", (0, BLOCK, BLOCK))]


def test_failed_piece_is_retried_and_its_senders_reported():
    p = picker(2, blocks=2)
    p.add_peer("bad", None)
    p.add_peer("good", None)
    reqs = p.pick("bad", 1, 0.0) + p.pick("good", 1, 0.0)
    piece = reqs[0][0]
    assert {r[0] for r in reqs} == {piece}
    for who, r in zip(("bad", "good"), reqs, strict=True):
        p.received(who, r[0], r[1])
    assert p.piece_failed(piece) == {"bad", "good"}
    p.remove_peer("bad")
    again = p.pick("good", 10, 0.0)
    assert piece in {r[0] for r in again}  # retried first


def test_released_requests_go_back():
    p = picker(3, blocks=2)
    p.add_peer("a", None)
    reqs = p.pick("a", 2, 0.0)
    assert p.requests_of("a") == 2
    assert sorted(p.release_peer("a")) == sorted(reqs)
    assert p.requests_of("a") == 0 and p.partial == {}
    p.add_peer("b", None)
    assert sorted(p.pick("b", 2, 0.0)) == sorted(reqs)  # the same piece, retried first


def test_seeds_count_apart_and_disconnects_undo_availability():
    p = picker(4)
    p.add_peer("s", None)
    p.add_peer("x", _bits(4, [0, 1]))
    assert p.avail == [1, 1, 0, 0] and p.seeds == 1
    for i in (2, 3):
        p.peer_has("x", i)
    assert p.seeds == 2 and p.avail == [0, 0, 0, 0]  # x became a seed
    p.remove_peer("x")
    p.remove_peer("s")
    assert p.seeds == 0 and p.avail == [0, 0, 0, 0]


def test_simulated_swarm_completes_and_spreads_pieces():
    """A seed with one upload slot and three leechers trading by rarest first: everyone
    completes, and the leechers get most pieces from each other rather than from the seed."""
    rng = random.Random(7)
    n = 40
    g = geometry(n, blocks=1)
    leechers = {name: PiecePicker(g, Bitfield(n), Bitfield.full(n), 8, random.Random(rng.random())) for name in "abc"}
    have = {name: Bitfield(n) for name in "abc"}
    from_seed = 0
    for _ in range(400):
        if all(h.complete for h in have.values()):
            break
        for name, pk in leechers.items():
            for other in "abc":
                if other != name:
                    pk.add_peer(other, have[other] if have[other].count else Bitfield(n))
            pk.add_peer("seed", None)
            # the seed uploads one block per round, to a random leecher
            sources = [o for o in "abc" if o != name] + (["seed"] if rng.random() < 1 / 3 else [])
            for src in sources:
                for piece, begin, _ in pk.pick(src, 1, 0.0):
                    pk.received(src, piece, begin)
                    pk.piece_passed(piece)
                    have[name].add(piece)
                    from_seed += src == "seed"
            for src in ["seed", *"abc"]:
                pk.release_peer(src)
    assert all(h.complete for h in have.values())
    assert from_seed < 1.5 * n  # far less than 3 * n: the leechers traded


# --- metadata (BEP 9) --------------------------------------------------------------------------
def meta(size: int) -> tuple[bytes, bytes]:
    raw = bytes(random.Random(size).randbytes(size))
    return raw, hashlib.sha1(raw).digest()


def test_metadata_fetch_from_several_peers():
    raw, ih = meta(40_000)
    f = MetadataFetcher(ih)
    f.offered("a", len(raw))
    f.offered("b", len(raw))
    assert f.next_request("a", 0) == 0 and f.next_request("b", 0) == 1 and f.next_request("a", 0) == 2
    assert f.next_request("a", 0) is None
    assert f.received("a", 0, len(raw), serve_piece(raw, 0)) is None
    assert f.received("b", 1, len(raw), serve_piece(raw, 1)) is None
    res = f.received("a", 2, len(raw), serve_piece(raw, 2))
    assert res is not None and res.raw == raw and not res.bad_peers
    assert serve_piece(raw, 3) is None


def test_metadata_majority_size_wrong_lengths_and_liars():
    raw, ih = meta(20_000)
    f = MetadataFetcher(ih)
    f.offered("liar", 999_999)
    f.offered("a", len(raw))
    f.offered("b", len(raw))
    assert f.size == len(raw) and f.next_request("liar", 0) is None
    # a piece of the wrong length marks its sender bad
    i = f.next_request("a", 0)
    assert f.received("a", i, len(raw), b"short").bad_peers == frozenset({"a"})
    # a whole wrong copy from one source: that source is bad
    g = MetadataFetcher(ih)
    g.offered("x", len(raw))
    fake = bytes(len(raw))
    for _ in range(2):
        j = g.next_request("x", 0)
        res = g.received("x", j, len(raw), fake[j * METADATA_PIECE : (j + 1) * METADATA_PIECE])
    assert res.raw is None and res.bad_peers == frozenset({"x"})
    # mixed sources: culprit unknown, so later attempts take everything from one peer
    h = MetadataFetcher(ih)
    h.offered("good", len(raw))
    h.offered("evil", len(raw))
    assert h.next_request("good", 0) == 0 and h.next_request("evil", 0) == 1
    h.received("good", 0, len(raw), serve_piece(raw, 0))
    res = h.received("evil", 1, len(raw), bytes(len(serve_piece(raw, 1))))
    assert res.raw is None and res.bad_peers == frozenset() and h.single_source
    k = h.next_request("good", 0)
    assert h.next_request("evil", 0) is None  # only the chosen source is asked
    h.received("good", k, len(raw), serve_piece(raw, k))
    res = h.received("good", h.next_request("good", 0), len(raw), serve_piece(raw, 1))
    assert res.raw == raw

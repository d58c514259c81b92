import pytest

from syncer.transfer.ratelimit import TokenBucket
from syncer.transfer.rates import RateMeter


def test_rate_meter_window():
    m = RateMeter(window=5.0)
    for t in range(10):
        m.add(1000, now=float(t))
    assert m.total == 10_000
    assert 800 <= m.rate(9.0) <= 1200
    assert m.rate(100.0) == 0.0


def test_a_young_meter_knows_its_rate_within_a_second():
    m = RateMeter(window=5.0)
    for i in range(10):
        m.add(100_000, now=i * 0.1)  # 1 MB/s for one second
    assert 0.9e6 <= m.rate(1.0) <= 1.1e6  # not a fifth of it
    m2 = RateMeter(window=5.0)
    m2.add(1_000_000, now=0.0)
    assert m2.rate(0.01) <= 1_000_000  # one burst is not taken for 100 MB/s


def test_token_bucket_limits_average_rate():
    b = TokenBucket(rate=1000.0, burst=1000.0)
    now = 0.0
    sent = 0
    while now < 10.0:
        wait = b.take(100, now)
        now += wait
        sent += 100
    assert 9_000 <= sent <= 11_100


def test_unlimited_bucket_never_waits():
    b = TokenBucket(rate=0)
    assert all(b.take(10**9, float(t)) == 0 for t in range(5))


def test_token_bucket_allows_a_burst_then_the_rate():
    """The relay's pipe cap (relay/server.py) is this bucket with an explicit burst."""
    b = TokenBucket(rate=1000, burst=500)
    assert b.take(500, now=0) == 0
    assert b.take(100, now=0) == pytest.approx(0.1)
    assert b.take(100, now=1.0) == 0  # refilled (capped at the burst)

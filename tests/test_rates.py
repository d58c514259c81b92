from syncer.transfer.ratelimit import TokenBucket
from syncer.transfer.rates import RateMeter


def test_rate_meter_window():
    m = RateMeter(window=5.0)
    for t in range(10):
        m.add(1000, now=float(t))
    assert m.total == 10_000
    assert 800 <= m.rate(9.0) <= 1200
    assert m.rate(100.0) == 0.0


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

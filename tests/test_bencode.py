import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.codec.bencode import BencodeError, decode, encode


def test_known_values():
    assert encode({"b": 1, "a": [b"x", "y", -3]}) == b"d1:al1:x1:yi-3ee1:bi1ee"
    assert decode(b"d1:al1:x1:yi-3ee1:bi1ee") == {b"a": [b"x", b"y", -3], b"b": 1}
    assert decode(b"0:") == b""


@pytest.mark.parametrize(
    "bad",
    [b"", b"i", b"i-0e", b"i03e", b"ie", b"5:ab", b"l", b"d1:a", b"d1:bi1e1:ai1ee", b"di1ei1ee",
     b"i1ei2e", b"x", b"03:abc", b"l" * 100 + b"e" * 100],
)
def test_malformed_rejected(bad):
    with pytest.raises(BencodeError):
        decode(bad)


values = st.recursive(
    st.integers() | st.binary(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.binary(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(v):
    assert decode(encode(v)) == v


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_never_crashes(data):
    try:
        decode(data)
    except BencodeError:
        pass

"""The sans-IO peer wire (syncer/bt/wire.py): literal bytes in and out, the rules it enforces,
and Hypothesis feeding it arbitrary bytes and message sequences."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.bt import wire
from syncer.bt.wire import (
    BLOCK,
    AllowedFast,
    BitfieldMsg,
    Cancel,
    Choke,
    ExtendedHandshake,
    Geometry,
    Handshake,
    Have,
    HaveAll,
    Interested,
    MetadataData,
    MetadataRequest,
    PeerConnection,
    Piece,
    ProtocolError,
    Reject,
    Request,
    Unchoke,
)

IH = bytes(range(20))
PID_A = b"-SY0100-aaaaaaaaaaaa"
PID_B = b"-LT2110-bbbbbbbbbbbb"
G = Geometry(num_pieces=10, piece_length=4 * BLOCK, total_length=9 * 4 * BLOCK + 100)
HS_B = b"\x13BitTorrent protocol" + b"\x00\x00\x00\x00\x00\x10\x00\x04" + IH + PID_B


def opened(fast: bool = True, ext: bool = True, geometry: Geometry | None = G) -> PeerConnection:
    """Our outbound connection after both handshakes (the peer's as literal bytes)."""
    c = PeerConnection(PID_A, IH, 0.0, geometry=geometry)
    assert c.initiate(0.0) == b"\x13BitTorrent protocol" + b"\x00\x00\x00\x00\x00\x10\x00\x04" + IH + PID_A
    reserved = bytearray(8)
    if ext:
        reserved[5] |= 0x10
    if fast:
        reserved[7] |= 0x04
    evs = c.feed(b"\x13BitTorrent protocol" + bytes(reserved) + IH + PID_B, 0.0)
    assert evs == [Handshake(IH, PID_B, ext, fast, False)]
    return c


def frame(mid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def test_handshake_bytes_and_a_pair_of_machines():
    a = PeerConnection(PID_A, IH, 0.0)
    b = PeerConnection(PID_B, None, 0.0)  # inbound: learns the info-hash from the handshake
    evs = b.feed(a.initiate(0.0), 0.0)
    assert evs == [Handshake(IH, PID_A, True, True, False)] and not b.accepted
    assert a.feed(b.accept(IH, 0.0), 0.0) == [Handshake(IH, PID_B, True, True, False)]
    assert a.fast and a.extensions and b.fast and b.extensions
    # handshake split across reads
    c = PeerConnection(PID_A, IH, 0.0)
    assert c.feed(HS_B[:10], 0.0) == [] and c.feed(HS_B[10:30], 0.0) == []
    assert c.feed(HS_B[30:] + frame(1), 0.0) == [Handshake(IH, PID_B, True, True, False), Unchoke()]


def test_bad_handshakes():
    c = PeerConnection(PID_A, IH, 0.0)
    assert c.feed(b"GET / HTTP/1.1\r\n", 0.0) == [ProtocolError("not a BitTorrent handshake")]
    assert c.feed(HS_B, 0.0) == []  # closed: nothing more
    c = PeerConnection(PID_A, IH, 0.0)
    assert c.feed(HS_B.replace(IH, bytes(20)), 0.0) == [ProtocolError("the peer answered for another info-hash")]
    c = PeerConnection(PID_A, IH, 0.0)
    assert c.feed(HS_B.replace(PID_B, PID_A), 0.0) == [ProtocolError("connected to ourselves")]


def test_messages_out_are_literal():
    c = opened()
    assert c.send(Interested(), 0) == b"\x00\x00\x00\x01\x02"
    assert c.send(Request(1, 16384, 16384), 0) == b"\x00\x00\x00\x0d\x06\x00\x00\x00\x01\x00\x00\x40\x00\x00\x00\x40\x00"
    assert c.send(Have(7), 0) == b"\x00\x00\x00\x05\x04\x00\x00\x00\x07"
    assert c.send(Piece(2, 0, b"xy"), 0) == b"\x00\x00\x00\x0b\x07\x00\x00\x00\x02\x00\x00\x00\x00xy"
    assert c.send(BitfieldMsg(b"\xff\xc0"), 0) == b"\x00\x00\x00\x03\x05\xff\xc0"
    assert c.send(HaveAll(), 0) == b"\x00\x00\x00\x01\x0e"
    assert wire.encode(wire.KeepAlive()) == b"\x00\x00\x00\x00"
    hs = c.send(ExtendedHandshake(metadata_size=1234, listen_port=6881, client="syncer"), 0)
    assert hs == frame(20, b"\x00" + b"d1:md11:ut_metadatai2ee13:metadata_sizei1234e1:pi6881e4:reqqi250e1:v6:syncere")


def test_messages_in_and_request_bookkeeping():
    c = opened()
    c.send(Request(3, 0, BLOCK), 0)
    block = bytes(BLOCK)
    evs = c.feed(frame(1) + frame(5, b"\xff\xc0") + frame(4, struct.pack(">I", 9)) + frame(7, struct.pack(">II", 3, 0) + block), 1.0)
    assert evs == [Unchoke(), BitfieldMsg(b"\xff\xc0"), Have(9), Piece(3, 0, block)]
    assert not c.peer_choking and c.our_requests == set()
    # a piece never requested is dropped (and counted); a cancelled one is dropped silently
    c.send(Request(4, 0, BLOCK), 0)
    c.send(Cancel(4, 0, BLOCK), 0)
    assert c.feed(frame(7, struct.pack(">II", 4, 0) + block), 1.0) == []
    assert c.unrequested == 0
    assert c.feed(frame(7, struct.pack(">II", 5, 0) + block), 1.0) == [] and c.unrequested == 1


def test_too_many_unrequested_blocks_end_the_connection():
    c = opened()
    data = b"".join(frame(7, struct.pack(">II", 0, i * 16) + b"x" * 16) for i in range(wire.MAX_UNREQUESTED + 1))
    assert c.feed(data, 0)[-1] == ProtocolError("too many blocks we did not request")


def test_length_and_range_rules():
    assert opened().feed(struct.pack(">I", wire.MAX_MESSAGE + 1), 0) == [ProtocolError(f"message of {wire.MAX_MESSAGE + 1} bytes")]
    assert opened().feed(frame(4, b"\x00\x00\x00"), 0) == [ProtocolError("message 4 of wrong length 4")]
    assert opened().feed(frame(4, struct.pack(">I", 10)), 0) == [ProtocolError("piece index 10 out of range")]
    assert opened().feed(frame(7, struct.pack(">II", 0, 0) + bytes(BLOCK + 1)), 0)[0].reason.startswith("piece message of")
    c = opened()
    c.send(Unchoke(), 0)
    assert c.feed(frame(6, struct.pack(">III", 0, 0, BLOCK + 1)), 0) == [ProtocolError(f"request of {BLOCK + 1} bytes")]
    c = opened()
    c.send(Unchoke(), 0)
    assert c.feed(frame(6, struct.pack(">III", 9, 0, 200)), 0) == [ProtocolError("request outside the piece")]  # last piece: 100 bytes
    # a bitfield: its exact size, no spare bits, once, and not after a have
    assert opened().feed(frame(5, b"\xff"), 0)[0].reason.startswith("bad bitfield")
    assert opened().feed(frame(5, b"\xff\xe0"), 0)[0].reason == "bad bitfield: bitfield has spare bits set"
    assert opened().feed(frame(5, b"\xff\xc0") + frame(5, b"\xff\xc0"), 0)[-1] == ProtocolError("a second bitfield, or one after a have")
    assert opened().feed(frame(4, b"\x00\x00\x00\x01") + frame(14), 0)[-1] == ProtocolError("a second bitfield, or one after a have")
    # unknown ids are ignored
    assert opened().feed(frame(99, b"whatever"), 0) == []


def test_fast_and_extension_messages_need_their_bits():
    assert opened(fast=False).feed(frame(14), 0) == [ProtocolError("fast-extension message 14 without the fast extension")]
    assert opened(ext=False).feed(frame(20, b"\x00de"), 0) == [ProtocolError("extended message without the extension protocol")]
    c = opened()
    assert c.feed(frame(17, struct.pack(">I", 3)) + frame(16, struct.pack(">III", 1, 0, BLOCK)), 0) == [AllowedFast(3), Reject(1, 0, BLOCK)]
    assert c.allowed_fast == {3}


def test_requests_while_choked_are_dropped_or_rejected():
    c = opened(fast=False)
    assert c.feed(frame(6, struct.pack(">III", 0, 0, BLOCK)), 0) == [] and c.data_to_send() == b""
    c = opened(fast=True)
    assert c.feed(frame(6, struct.pack(">III", 0, 0, BLOCK)), 0) == []
    assert c.data_to_send() == frame(16, struct.pack(">III", 0, 0, BLOCK))
    # unchoked: requests are kept; choking a fast peer rejects each pending one
    c.send(Unchoke(), 0)
    assert c.feed(frame(6, struct.pack(">III", 1, 0, BLOCK)) + frame(6, struct.pack(">III", 1, BLOCK, BLOCK)), 0) == [Request(1, 0, BLOCK), Request(1, BLOCK, BLOCK)]
    assert c.send(Choke(), 0) == frame(0) + frame(16, struct.pack(">III", 1, 0, BLOCK)) + frame(16, struct.pack(">III", 1, BLOCK, BLOCK))
    assert c.peer_requests == set()
    # a cancel removes one; serving it removes it too
    c.send(Unchoke(), 0)
    c.feed(frame(6, struct.pack(">III", 2, 0, BLOCK)) + frame(6, struct.pack(">III", 2, BLOCK, BLOCK)) + frame(8, struct.pack(">III", 2, 0, BLOCK)), 0)
    assert c.peer_requests == {(2, BLOCK, BLOCK)}
    c.send(Piece(2, BLOCK, bytes(BLOCK)), 0)
    assert c.peer_requests == set()


def test_being_choked_drops_our_requests_only_without_the_fast_extension():
    for fast, left in ((False, set()), (True, {(0, 0, BLOCK)})):
        c = opened(fast=fast)
        c.send(Request(0, 0, BLOCK), 0)
        assert c.feed(frame(0), 0) == [Choke()]
        assert c.our_requests == left


def test_pending_requests_are_bounded():
    c = opened()
    c.send(Unchoke(), 0)
    assert c.feed(frame(6, struct.pack(">III", 0, 0, 16)), 0) == [Request(0, 0, 16)]
    many = b"".join(frame(6, struct.pack(">III", i % 9, (i // 9) * 16, 16)) for i in range(1, wire.MAX_PEER_REQUESTS + 1))
    evs = c.feed(many, 0)
    assert evs[-1] == ProtocolError(f"more than {wire.MAX_PEER_REQUESTS} requests pending") and len(evs) == wire.MAX_PEER_REQUESTS


def test_extension_handshake_and_ut_metadata():
    c = opened()
    evs = c.feed(frame(20, b"\x00d1:md11:ut_metadatai3ee13:metadata_sizei40000e1:pi51413e4:reqqi2000e1:v13:libtorrent/2.e"), 0)
    assert evs == [ExtendedHandshake(3, 40000, 51413, "libtorrent/2.", 2000)]
    assert c.peer_ut_metadata == 3 and c.peer_reqq == 2000
    assert c.send(MetadataRequest(1), 0) == frame(20, b"\x03d8:msg_typei0e5:piecei1ee")
    # messages to us use our id (2); the data follows the dictionary
    data = b"d8:msg_typei1e5:piecei2e10:total_sizei40000ee" + b"z" * 7232
    assert c.feed(frame(20, b"\x02" + data), 0) == [MetadataData(2, 40000, b"z" * 7232)]
    assert c.feed(frame(20, b"\x02d8:msg_typei0e5:piecei0ee"), 0) == [MetadataRequest(0)]
    assert c.feed(frame(20, b"\x07anything"), 0) == []  # an extension we did not offer
    # hostile sizes are ignored or refused
    c2 = opened()
    assert c2.feed(frame(20, b"\x00d1:md11:ut_metadatai3ee13:metadata_sizei999999999999ee"), 0) == [ExtendedHandshake(3, 0, 0, "", 0)]
    assert c2.feed(frame(20, b"\x02d8:msg_typei1e5:piecei0e10:total_sizei5ee" + bytes(wire.METADATA_PIECE + 1)), 0) == [ProtocolError("bad ut_metadata data")]
    assert opened().feed(frame(20, b"\x02d8:msg_typei0e5:piecei99999ee"), 0) == [ProtocolError("bad ut_metadata message")]
    assert opened().feed(frame(20, b"\x00l"), 0)[0].reason.startswith("bad extension handshake")


def test_early_bitfield_is_checked_when_the_geometry_arrives():
    c = opened(geometry=None)
    assert c.feed(frame(5, b"\xff\xff\xff") + frame(4, struct.pack(">I", 500)), 0) == [BitfieldMsg(b"\xff\xff\xff"), Have(500)]
    assert c.set_geometry(G)[0].reason.startswith("bad bitfield")
    c = opened(geometry=None)
    c.feed(frame(4, struct.pack(">I", 3)) + frame(4, struct.pack(">I", 12)), 0)
    assert c.early_haves() == [3, 12]
    assert c.set_geometry(G) == [ProtocolError("have index out of range")]


def test_keepalives_and_idle_timeout():
    c = opened()
    assert c.tick(10.0) == (b"", None)
    assert c.tick(wire.KEEPALIVE_INTERVAL) == (b"\x00\x00\x00\x00", None)
    assert c.tick(wire.KEEPALIVE_INTERVAL + 1) == (b"", None)
    c.feed(b"\x00\x00\x00\x00", 100.0)  # a keepalive from the peer: no event, but it is alive
    assert c.tick(100.0 + wire.IDLE_TIMEOUT - 1)[1] is None
    assert c.tick(100.0 + wire.IDLE_TIMEOUT + 1)[1] == f"nothing received for {wire.IDLE_TIMEOUT:.0f} s"


# --- Hypothesis: arbitrary input never raises, and a closed machine stays closed --------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_fuzz_arbitrary_bytes_from_the_start(data, cut):
    c = PeerConnection(PID_A, IH, 0.0)
    evs = c.feed(data[:cut], 0) + c.feed(data[cut:], 0)
    assert all(isinstance(e, (Handshake, ProtocolError)) or e is not None for e in evs)
    assert len(c._buf) <= len(data)


def _msg() -> st.SearchStrategy[bytes]:
    u32 = st.integers(0, 2**32 - 1)
    small = st.integers(0, 20)
    return st.one_of(
        st.builds(lambda m: frame(m), st.integers(0, 25)),
        st.builds(lambda m, i: frame(m, struct.pack(">I", i)), st.sampled_from([4, 13, 17]), st.one_of(small, u32)),
        st.builds(lambda m, i, b, n: frame(m, struct.pack(">III", i, b, n)), st.sampled_from([6, 8, 16]), small, st.integers(0, 70000), st.integers(0, 20000)),
        st.builds(lambda i, b, d: frame(7, struct.pack(">II", i, b) + d), small, st.integers(0, 70000), st.binary(max_size=64)),
        st.builds(lambda d: frame(5, d), st.binary(max_size=4)),
        st.builds(lambda e, d: frame(20, bytes([e]) + d), st.integers(0, 3), st.binary(max_size=80)),
        st.binary(max_size=12),
    )


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.booleans(), st.booleans(), st.lists(_msg(), max_size=25), st.lists(st.sampled_from([Unchoke(), Choke(), Interested(), Request(0, 0, BLOCK)]), max_size=4))
def test_fuzz_message_sequences_in_any_state(fast, ext, geometry, msgs, ours):
    c = opened(fast=fast, ext=ext, geometry=G if geometry else None)
    for m in ours:
        c.send(m, 0)
    stream = b"".join(msgs)
    evs = []
    for i in range(0, len(stream), 7):
        evs += c.feed(stream[i : i + 7], 1.0)
        c.data_to_send()
    errors = [e for e in evs if isinstance(e, ProtocolError)]
    assert len(errors) <= 1 and (not errors or evs[-1] is errors[0])
    assert len(c.peer_requests) <= wire.MAX_PEER_REQUESTS and len(c.allowed_fast) <= wire.MAX_ALLOWED_FAST
    if c.closed:
        assert c.feed(b"\x00\x00\x00\x01\x01", 2.0) == []

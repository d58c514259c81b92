"""Wire protocol: literal bytes, a pair helper, every error path, split/coalesced input, fuzz."""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.wire import (
    MAX_HAVE_MORE,
    TYPES,
    U63,
    U64,
    Bitfield,
    BlockIndex,
    Cancel,
    Choke,
    Close,
    ClusterConfig,
    Connection,
    ConnectionClosed,
    DeviceSummary,
    FolderId,
    FolderSummary,
    FrameDecoder,
    Have,
    Hello,
    Index,
    IndexUpdate,
    Interested,
    Message,
    MessageReceived,
    NotInterested,
    PeerAddresses,
    Piece,
    PieceError,
    Ping,
    ProtocolError,
    PunchVia,
    RelayData,
    RelayVia,
    Request,
    ShortText,
    State,
    Unchoke,
    WireFile,
    encode,
    frames,
)
from syncer.wire import connection as wconn

HELLO = Hello("a", "syncer", "0.1", [])
WF = WireFile("dir/f.txt", 0, 5, 1_700_000_000_000_000_000, 0o644, 131072, [b"\x11" * 32], "", [(7, 3)], 9, False, 7)


def pair() -> tuple[Connection, Connection]:
    a, b = Connection(), Connection()
    assert b.receive_data(a.send(HELLO)) == [MessageReceived(HELLO)]
    hb = Hello("b", "syncer", "0.1", ["x"])
    assert a.receive_data(b.send(hb)) == [MessageReceived(hb)]
    return a, b


def test_hello_literal_bytes():
    data = encode(HELLO)
    # length 16 = type byte + 15 body bytes; type 0x01; msgpack fixarray of 4
    assert data == bytes.fromhex("00000010" "01" "94" "a161" "a6" + b"syncer".hex() + "a3" + b"0.1".hex() + "90")
    assert FrameDecoder().feed(data) == [HELLO]


def test_piece_literal_bytes_payload_raw():
    data = encode(Piece(5, b"abc"))
    assert data == b"\x00\x00\x00\x0c\x08" + (5).to_bytes(8, "big") + b"abc"
    assert FrameDecoder().feed(data) == [Piece(5, b"abc")]


def test_ping_and_close_literal_bytes():
    assert encode(Ping()) == b"\x00\x00\x00\x02\x0f\x90"
    assert encode(Close("bye")) == b"\x00\x00\x00\x06\x10\x91\xa3bye"


ALL = [
    HELLO,
    ClusterConfig([FolderSummary("f1", "Photos", [DeviceSummary(b"\x01" * 32, 42, 7)])]),
    Index("f1", [WF]),
    IndexUpdate("f1", [WF, WF]),
    Bitfield("f1", "dir/f.txt", [(7, 3)], 10, b"\xff\xc0"),
    Have("f1", "dir/f.txt", [(7, 3)], 4),
    Request(1, "f1", "dir/f.txt", 0, 0, 5, b"\x11" * 32),
    Piece(1, b"hello"),
    PieceError(2, 1),
    Cancel(3),
    Choke(),
    Unchoke(),
    Interested(),
    NotInterested(),
    Ping(),
    Close("done"),
    PeerAddresses("tcp://198.51.100.1:40000", ["quic://0.0.0.0:22000"], ["tcp://203.0.113.5:22000"]),
    PunchVia(1, b"p" * 16, b"\x02" * 32, "203.0.113.5", 22000),
    RelayVia(6, 7, credit=65536),
    RelayData(7, b"ciphertext"),
]


def test_every_message_type_round_trips():
    assert {type(m) for m in ALL} == set(TYPES.values())
    for m in ALL:
        assert FrameDecoder().feed(encode(m)) == [m]


def test_split_at_every_byte_and_coalesced():
    stream = b"".join(encode(m) for m in ALL)
    assert FrameDecoder().feed(stream) == ALL
    for cut in range(len(stream) + 1):
        d = FrameDecoder()
        assert d.feed(stream[:cut]) + d.feed(stream[cut:]) == ALL
    d = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += d.feed(stream[i : i + 1])
    assert out == ALL and d.buffered == 0


def test_request_piece_cancel_flow():
    a, b = pair()
    req = Request(1, "f", "x", 0, 0, 3, b"h" * 32)
    assert b.receive_data(a.send(req)) == [MessageReceived(req)]
    assert b.incoming == {1}
    data = b"".join(bytes(p) for p in b.send_piece(1, b"xyz"))
    assert a.receive_data(data) == [MessageReceived(Piece(1, b"xyz"))]
    assert a.outgoing == set() and b.incoming == set()
    # a piece nobody asked for (e.g. after a cancel) is dropped silently
    assert a.receive_data(b"".join(bytes(p) for p in b.send_piece(99, b"late"))) == []
    req2 = Request(2, "f", "x", 0, 0, 3, b"h" * 32)
    b.receive_data(a.send(req2))
    b.receive_data(a.send(Cancel(2)))
    assert b.incoming == set() and a.outgoing == set()


def test_close_received_and_nothing_after():
    a, b = pair()
    assert b.receive_data(a.send(Close("bye"))) == [ConnectionClosed("bye")]
    assert b.state is State.CLOSED and a.state is State.CLOSED
    assert b.receive_data(encode(Ping())) == []
    with pytest.raises(RuntimeError):
        a.send(Ping())


def _expect_protocol_error(conn: Connection, data: bytes, fragment: str) -> None:
    events = conn.receive_data(data)
    assert isinstance(events[-1], ProtocolError), events
    assert fragment in events[-1].reason
    assert conn.state is State.CLOSED
    out = conn.data_to_send()
    assert FrameDecoder().feed(out)[0].reason.startswith("protocol error")


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"\x00\x00\x00\x02\x99\x90", "unknown message type"),
        (b"\x00\x00\x00\x00", "empty frame"),
        (b"\x00\x00\x00\x02\x0f\xc1", "malformed Ping"),
        (b"\x00\x00\x00\x03\x01\x91\x05", "malformed Hello"),
        (struct.pack(">IB", 50 << 20, 0x08), "exceeds the limit"),
        (struct.pack(">IB", 2 << 20, 0x01), "exceeds the limit"),
        (b"\x00\x00\x00\x05\x08\x00\x00\x00\x00", "truncated piece"),
    ],
)
def test_bad_frames_close_with_reason(data, fragment):
    _, b = pair()
    _expect_protocol_error(b, data, fragment)


def test_message_before_hello_is_an_error():
    _expect_protocol_error(Connection(), encode(Ping()), "expected Hello first")


def test_duplicate_hello_is_an_error():
    a, b = pair()
    _expect_protocol_error(b, encode(HELLO), "duplicate Hello")


def test_duplicate_request_id_is_an_error():
    _, b = pair()
    req = encode(Request(1, "f", "x", 0, 0, 3, b"h" * 32))
    b.receive_data(req)
    _expect_protocol_error(b, req, "duplicate request id")


def test_too_many_outstanding_requests(monkeypatch):
    monkeypatch.setattr(wconn, "MAX_INCOMING_REQUESTS", 3)
    _, b = pair()
    data = b"".join(encode(Request(i, "f", "x", 0, 0, 3, b"h" * 32)) for i in range(4))
    _expect_protocol_error(b, data, "outstanding requests")


@pytest.mark.parametrize("msg", [
    Request(1, "f", "x", 0, -1, 3, b"h"),
    Request(1, "f", "x", 0, 1 << 63, 3, b"h"),  # would overflow pread / SQLite
    Request(1, "f", "x", 1 << 31, 0, 3, b"h"),
    Request(1, "f", "x", 0, 0, (16 << 20) + 1, b"h"),
    ClusterConfig([FolderSummary("f", "", [DeviceSummary(b"d" * 32, 1 << 63, 0)])]),
    ClusterConfig([FolderSummary("f" * 65, "", [])]),
    Have("f", "x", [(1, 1)], -1),
    Bitfield("f", "x", [(1, 1)], (1 << 24) + 1, b""),
])
def test_numbers_out_of_range_are_protocol_errors(msg):
    _, b = pair()
    _expect_protocol_error(b, encode(msg), "malformed")


def test_caller_misuse_raises():
    c = Connection()
    with pytest.raises(RuntimeError):
        c.send(Ping())
    a, _ = pair()
    a.send(Request(1, "f", "x", 0, 0, 1, b""))
    with pytest.raises(RuntimeError):
        a.send(Request(1, "f", "x", 0, 0, 1, b""))


def test_keepalive_and_dead_peer_with_injected_time():
    a = Connection(now=0.0)
    b = Connection(now=0.0)
    b.receive_data(a.send(HELLO, now=0.0), now=0.0)
    a.receive_data(b.send(HELLO, now=0.0), now=0.0)
    assert a.get_timer() == wconn.PING_INTERVAL
    out, events = a.handle_timer(wconn.PING_INTERVAL - 1)
    assert out == b"" and events == []
    out, events = a.handle_timer(wconn.PING_INTERVAL)
    assert out == encode(Ping()) and events == []
    assert b.receive_data(out, now=wconn.PING_INTERVAL) == []  # pings are absorbed
    assert a.get_timer() == min(2 * wconn.PING_INTERVAL, wconn.DEAD_TIMEOUT)
    out, events = a.handle_timer(wconn.DEAD_TIMEOUT)
    assert events and isinstance(events[0], ConnectionClosed) and a.state is State.CLOSED
    assert a.get_timer() is None


def test_index_frames_allow_large_batches_control_frames_do_not():
    big = Index("f", [WF] * 20000)
    assert len(encode(big)) > frames.MAX_CONTROL_FRAME
    assert FrameDecoder().feed(encode(big)) == [big]
    with pytest.raises(ValueError):
        encode(Close("x" * (2 << 20)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 64), st.integers(64 << 10, 1 << 20)), min_size=1, max_size=12).filter(lambda s: max(s) >= 64 << 10))
def test_big_pieces_are_assembled_once_whatever_the_reads(steps):
    # blocks of 1-3 MiB with small frames between them, read in arbitrary pieces: every message
    # comes out whole, and a big frame is held once (buffered never exceeds the frame + a header)
    blocks = [bytes([i]) * (frames.ASSEMBLE_FROM + i * 777_777) for i in range(3)]
    msgs = [Piece(1, blocks[0]), Have("f", "n", [(1, 2)], 3), Piece(2, blocks[1]), Ping(), Piece(3, blocks[2])]
    stream = b"".join(encode(m) for m in msgs)
    d, out, pos, i = FrameDecoder(), [], 0, 0
    while pos < len(stream):
        n = steps[i % len(steps)]
        out += d.feed(memoryview(stream)[pos : pos + n])
        assert d.buffered <= max(len(b) for b in blocks) + 32
        pos, i = pos + n, i + 1
    assert out == msgs and d.buffered == 0
    assert [bytes(m.data) for m in out if isinstance(m, Piece)] == blocks


def test_a_big_frame_over_the_limit_is_refused_from_its_header():
    head = frames.HEADER.pack(1 + 8 + frames.MAX_PIECE_DATA + 1, frames.TYPE_OF[Piece])
    with pytest.raises(frames.FrameError):
        FrameDecoder().feed(head + b"\0" * 100)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_decoder_never_raises(data):
    for conn in (Connection(), pair()[1]):
        events = conn.receive_data(data)
        assert all(isinstance(e, (MessageReceived, ProtocolError, ConnectionClosed)) for e in events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALL), max_size=10), st.binary(max_size=64))
def test_fuzz_valid_prefix_then_garbage(msgs, garbage):
    a, b = pair()
    msgs = [m for m in msgs if not isinstance(m, (Hello, Close, Request, Cancel, Piece, PieceError))]
    data = b"".join(encode(m) for m in msgs) + garbage
    events = b.receive_data(data)
    got = [e.message for e in events if isinstance(e, MessageReceived)]
    assert got == [m for m in msgs if not isinstance(m, Ping)][: len(got)]


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        WireFile,
        st.text(max_size=40),
        st.integers(0, 2),
        st.integers(0, 2**63 - 1),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(0, 0o7777),
        st.integers(0, 2**31),
        st.lists(st.binary(min_size=32, max_size=32), max_size=5),
        st.text(max_size=20),
        st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=3),
        st.integers(0, 2**63 - 1),
        st.booleans(),
        st.integers(0, 2**64 - 1),
    )
)
def test_round_trip_random_files(wf):
    m = IndexUpdate("folder", [wf])
    assert FrameDecoder().feed(encode(m)) == [m]


def test_the_package_exports_every_message_and_limit():
    """syncer.wire's __all__ is a literal (so type checkers see the exports): it must name every
    public name of messages.py, or a new message would be missing from `from syncer.wire import`."""
    import types

    import syncer.wire
    import syncer.wire.messages as messages

    public = {n for n, v in vars(messages).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    public -= {"annotations", "Annotated"}  # what messages.py itself imports
    assert public <= set(syncer.wire.__all__)
    assert all(hasattr(syncer.wire, n) for n in syncer.wire.__all__)



class OldHave(Message, frozen=True):
    """Have as it was before `more` was appended (what an older peer decodes)."""

    folder: FolderId
    name: ShortText
    version: Annotated[list[tuple[U64, U63]], msgspec.Meta(max_length=1000)]
    block_index: BlockIndex


def test_a_batched_have_round_trips_and_an_older_decoder_reads_its_first_block():
    msg = Have("F", "a.bin", [(1, 2)], 4, [5, 9])
    (back,) = FrameDecoder().feed(encode(msg))
    assert back == msg and back.indexes() == [4, 5, 9]
    body = msgspec.msgpack.encode(msg)
    assert msgspec.msgpack.decode(body, type=OldHave) == OldHave("F", "a.bin", [(1, 2)], 4)
    too_many = msgspec.msgpack.encode(Have("F", "a.bin", [], 0, list(range(MAX_HAVE_MORE + 1))))
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(too_many, type=Have)

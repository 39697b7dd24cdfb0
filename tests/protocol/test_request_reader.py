"""RequestReader, the server's frame reader: hot requests come out split, the rest as frames.

Its layouts must agree with `decode_request` (the one definition of each body):
whatever it splits on the hot path means what the dataclass path says it means,
and whatever it passes on as OTHER the dataclass path refuses.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dbqueue.errors import ErrorCode, InvalidRequest
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    Confirm,
    CreateQueue,
    Enqueue,
    FrameReader,
    Hello,
    Op,
    Read,
    decode_request,
    encode,
)
from dbqueue.protocol.codecs import OTHER, RequestReader
from dbqueue.protocol.messages import EnqueueDelayed, ReadBatch

MAX_BODY = 300


def raw_frame(opcode: int, body: bytes, request_id: int, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, opcode, flags, request_id, len(body)) + body


STREAM = b"".join(
    [
        encode(1, Enqueue("jobs", b"payload")),
        encode(2, Read("jobs", 250)),
        encode(11, Read("jobs", 0xFFFFFFFF, 1500)),
        encode(3, Confirm(2**64 - 1)),
        encode(4, Hello()),
        encode(5, CreateQueue("jobs", 3)),
        raw_frame(Op.ENQUEUE, b"\x01qx", 6, flags=1),  # flags: off the hot path
        raw_frame(Op.ENQUEUE, b"\x00x", 7),  # empty name
        raw_frame(Op.READ, bytes(8) + b"\x03ab", 8),  # name past the end
        raw_frame(Op.READ, b"\x00\x00\x00\x01\x02ab", 12),  # the old layout, without wait_ms
        raw_frame(Op.READ, bytes(8) + b"\x01ab", 13),  # trailing bytes
        raw_frame(Op.CONFIRM, bytes(9), 9),
        encode(10, Enqueue("q", b"")),
        encode(14, ReadBatch("jobs", 5, 250, 1500)),  # the new requests all go the dataclass way
        encode(15, EnqueueDelayed("jobs", b"later", 100)),
        encode(16, Read("j", 0, 0xFFFFFFFF)),
    ]
)
EXPECTED = [
    (Op.ENQUEUE, 1, b"jobs", b"payload"),
    (Op.READ, 2, b"jobs", (250, 0)),
    (Op.READ, 11, b"jobs", (0xFFFFFFFF, 1500)),
    (Op.CONFIRM, 3, 2**64 - 1, None),
    (OTHER, 4, (Op.HELLO, 0, 4, Hello().body()), None),
    (OTHER, 5, (Op.CREATE_QUEUE, 0, 5, CreateQueue("jobs", 3).body()), None),
    (OTHER, 6, (Op.ENQUEUE, 1, 6, b"\x01qx"), None),
    (OTHER, 7, (Op.ENQUEUE, 0, 7, b"\x00x"), None),
    (OTHER, 8, (Op.READ, 0, 8, bytes(8) + b"\x03ab"), None),
    (OTHER, 12, (Op.READ, 0, 12, b"\x00\x00\x00\x01\x02ab"), None),
    (OTHER, 13, (Op.READ, 0, 13, bytes(8) + b"\x01ab"), None),
    (OTHER, 9, (Op.CONFIRM, 0, 9, bytes(9)), None),
    (Op.ENQUEUE, 10, b"q", b""),
    (OTHER, 14, (Op.READ_BATCH, 0, 14, ReadBatch("jobs", 5, 250, 1500).body()), None),
    (OTHER, 15, (Op.ENQUEUE_DELAYED, 0, 15, EnqueueDelayed("jobs", b"later", 100).body()), None),
    (Op.READ, 16, b"j", (0, 0xFFFFFFFF)),
]


def test_whole_stream() -> None:
    reader = RequestReader(MAX_BODY)
    assert reader.feed(STREAM) == EXPECTED
    assert reader.failure is None and reader.buffered == 0


def test_one_byte_at_a_time() -> None:
    reader = RequestReader(MAX_BODY)
    got = [item for i in range(len(STREAM)) for item in reader.feed(STREAM[i : i + 1])]
    assert got == EXPECTED
    assert reader.buffered == 0


def test_random_chunkings() -> None:
    rng = random.Random(7)
    for _ in range(50):
        reader = RequestReader(MAX_BODY)
        got, pos = [], 0
        while pos < len(STREAM):
            size = rng.randrange(0, 40)
            got.extend(reader.feed(STREAM[pos : pos + size]))
            pos += size
        assert got == EXPECTED


def test_failures_match_frame_reader() -> None:
    data = encode(1, Read("q")) + HEADER.pack(MAGIC, Op.ENQUEUE, 0, 42, MAX_BODY + 1)
    reader = RequestReader(MAX_BODY)
    assert reader.feed(data) == [(Op.READ, 1, b"q", (0, 0))]
    assert reader.failure is not None
    assert (reader.failure.code, reader.failure.request_id) == (ErrorCode.MESSAGE_TOO_LARGE, 42)
    assert reader.feed(encode(2, Read("q"))) == []
    reader = RequestReader(MAX_BODY)
    assert reader.feed(encode(1, Confirm(5)) + b"\x00" * 12) == [(Op.CONFIRM, 1, 5, None)]
    assert reader.failure is not None and reader.failure.code == ErrorCode.BAD_FRAME


hot_bodies = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda n, rest: bytes([n]) + rest, st.integers(0, 40), st.binary(max_size=40)),
    # READ's layout: timeout_ms and wait_ms (8 bytes), a name length, then mostly a name of about that length.
    st.builds(
        lambda t, n, rest: t + bytes([n]) + rest,
        st.binary(min_size=8, max_size=8),
        st.integers(0, 8),
        st.binary(max_size=8),
    ),
)
frames = st.builds(
    raw_frame,
    st.sampled_from(
        [Op.ENQUEUE, Op.READ, Op.CONFIRM, Op.HELLO, Op.CREATE_QUEUE, Op.DELETE_QUEUE, Op.READ_BATCH, Op.TOUCH, 0x7F]
    ),
    hot_bodies,
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, 0, 0, 1]),
)


@settings(max_examples=300, deadline=None)
@given(stream=st.lists(frames, max_size=8).map(b"".join), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_agrees_with_frame_reader_and_decode_request(stream: bytes, cuts: list[int]) -> None:
    plain = FrameReader(MAX_BODY).feed(stream)
    reader = RequestReader(MAX_BODY)
    points = sorted({min(c, len(stream)) for c in cuts})
    items = []
    for a, b in zip([0, *points], [*points, len(stream)]):
        items.extend(reader.feed(stream[a:b]))
    assert reader.failure is None
    assert len(items) == len(plain)
    for (tag, request_id, a, b), frame in zip(items, plain):
        opcode, flags, frame_id, body = frame
        assert request_id == frame_id
        if tag == OTHER:
            assert a == frame and b is None
            if not flags and opcode in (Op.ENQUEUE, Op.READ, Op.CONFIRM):
                # Passed on only because the body is malformed: the dataclass path must refuse it too.
                try:
                    decode_request(opcode, body)
                except InvalidRequest:
                    pass
                else:
                    raise AssertionError(f"RequestReader refused a valid {opcode!r} body {body!r}")
            continue
        assert (tag, flags) == (opcode, 0)
        if tag == Op.CONFIRM:
            assert decode_request(opcode, body) == Confirm(a)
            continue
        try:
            name = a.decode("utf-8")
        except UnicodeDecodeError:
            continue  # the hot path does not check UTF-8 (see test_raw_wire.py)
        expected = Enqueue(name, b) if tag == Op.ENQUEUE else Read(name, *b)
        assert decode_request(opcode, body) == expected

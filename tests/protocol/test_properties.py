"""Property tests: no byte string, in any chunking, makes the protocol raise anything but its own errors."""

from __future__ import annotations

import contextlib
import json
import os

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dbqueue.errors import InvalidRequest, ProtocolError
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    RESPONSE_TYPES,
    Cancel,
    Cancelled,
    ClientConnection,
    Confirm,
    Confirmed,
    ConfirmResults,
    CreateQueue,
    DeleteQueue,
    Empty,
    Enqueue,
    Error,
    FrameReader,
    Full,
    Hello,
    HelloOk,
    MembersReply,
    Message,
    Messages,
    ObjectQueued,
    ObjectsQueued,
    Op,
    Purged,
    QueueCreated,
    QueueDeleted,
    Read,
    Released,
    Requeued,
    StatsReply,
    Touched,
    decode_request,
    decode_response,
    encode,
)
from dbqueue.protocol.codecs import OTHER, RequestReader
from dbqueue.protocol.frames import BODY_OVERHEAD, FrameFailure
from dbqueue.protocol.messages import (
    ConfirmBatch,
    EnqueueBatch,
    EnqueueDelayed,
    ListQueues,
    Purge,
    ReadBatch,
    Release,
    Stats,
    Touch,
)

MAX_BODY = 64

# DBQUEUE_PROPERTY_EXAMPLES raises the count for a long run (see RELIABILITY.md).
FUZZ = settings(max_examples=int(os.environ.get("DBQUEUE_PROPERTY_EXAMPLES", "300")), deadline=None)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run_reader(chunks: list[bytes]) -> tuple[list[tuple[int, int, int, bytes]], FrameFailure | None, int]:
    reader = FrameReader(MAX_BODY)
    frames = []
    for chunk in chunks:
        frames.extend(reader.feed(chunk))
    return frames, reader.failure, reader.buffered


# Mostly-valid streams find the interesting paths more often than uniform noise.
frame_bytes = st.builds(
    lambda magic, opcode, flags, rid, body, lie: HEADER.pack(magic, opcode, flags, rid, max(0, len(body) + lie)) + body,
    st.sampled_from([MAGIC, MAGIC, MAGIC, 0x00, 0xDA]),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=MAX_BODY + 8),
    st.sampled_from([0, 0, 0, 1, -1, 1000]),  # announced length minus real length
)
streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(frame_bytes, st.binary(max_size=5)), max_size=8).map(b"".join),
)


@FUZZ
@given(data=streams, cuts=st.lists(st.integers(0, 500), max_size=30))
def test_any_bytes_in_any_chunking_give_frames_or_a_failure(data: bytes, cuts: list[int]) -> None:
    frames, failure, buffered = run_reader(chunked(data, cuts))
    whole_frames, whole_failure, whole_buffered = run_reader([data])
    # Chunking changes nothing: same frames, same verdict.
    assert frames == whole_frames
    assert failure == whole_failure
    consumed = sum(12 + len(body) for *_, body in frames)
    assert consumed <= len(data)
    for _, _, _, body in frames:
        assert len(body) <= MAX_BODY
    if failure is None:
        # Whatever was not cut into frames is held as the one partial frame.
        assert buffered == whole_buffered == len(data) - consumed
        assert buffered < 12 or HEADER.unpack_from(data, consumed)[4] + 12 > buffered


@FUZZ
@given(opcode=st.integers(0, 255), body=st.binary(max_size=300))
def test_decode_request_raises_only_invalid_request(opcode: int, body: bytes) -> None:
    try:
        request = decode_request(opcode, body)
    except InvalidRequest:
        return
    # Whatever parsed re-encodes to the very same body.
    assert opcode == type(request).OPCODE
    assert request.body() == body


@FUZZ
@given(opcode=st.integers(0, 255), body=st.binary(max_size=300))
def test_decode_response_raises_only_invalid_request(opcode: int, body: bytes) -> None:
    try:
        response = decode_response(opcode, body)
    except InvalidRequest:
        return
    assert opcode == type(response).OPCODE


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
u32s = st.integers(0, 0xFFFFFFFF)
u64s = st.integers(0, 2**64 - 1)
requests = st.one_of(
    st.builds(Hello, st.integers(0, 0xFFFF)),
    st.builds(CreateQueue, names, u64s, u32s, st.one_of(st.just(""), names)),
    st.builds(DeleteQueue, names),
    st.builds(Enqueue, names, st.binary(max_size=200)),
    st.builds(Read, names, u32s, u32s),
    st.builds(Confirm, u64s),
    st.builds(Purge, names),
    st.builds(Stats, names),
    st.just(ListQueues()),
    st.builds(EnqueueDelayed, names, st.binary(max_size=100), u32s),
    st.builds(EnqueueBatch, names, st.lists(st.binary(max_size=40), min_size=1, max_size=5).map(tuple)),
    st.builds(ReadBatch, names, st.integers(1, 0xFFFF), u32s, u32s),
    st.builds(ConfirmBatch, st.lists(u64s, min_size=1, max_size=5).map(tuple)),
    st.builds(Touch, u64s, u32s),
    st.builds(Release, u64s, u32s),
    st.builds(Cancel, u32s),
)


@FUZZ
@given(batch=st.lists(requests, min_size=1, max_size=10), cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_requests_round_trip_in_any_chunking(batch: list, cuts: list[int]) -> None:
    stream = b"".join(encode(i + 1, request) for i, request in enumerate(batch))
    reader = FrameReader(1024)
    frames = []
    for chunk in chunked(stream, cuts):
        frames.extend(reader.feed(chunk))
    assert reader.failure is None
    assert [rid for _, _, rid, _ in frames] == list(range(1, len(batch) + 1))
    assert [decode_request(opcode, body) for opcode, _, _, body in frames] == batch


# --- hostile input, continued: the server's reader, the client's receive path, mutated bodies ---------


@FUZZ
@given(data=streams, cuts=st.lists(st.integers(0, 500), max_size=30))
def test_request_reader_takes_any_bytes_in_any_chunking(data: bytes, cuts: list[int]) -> None:
    """The server's reader on hostile bytes: items or a failure, the same in any chunking, cut as FrameReader cuts."""
    reader = RequestReader(MAX_BODY)
    items = []
    for chunk in chunked(data, cuts):
        items.extend(reader.feed(chunk))
    whole = RequestReader(MAX_BODY)
    assert items == whole.feed(data)
    frames, failure, buffered = run_reader([data])
    assert (reader.failure, reader.buffered) == (whole.failure, whole.buffered) == (failure, buffered)
    assert len(items) == len(frames)
    for (tag, request_id, a, _), frame in zip(items, frames):
        opcode, flags, frame_id, body = frame
        assert request_id == frame_id
        if tag == OTHER:
            assert a == frame
        else:
            assert (tag, flags) == (opcode, 0)  # only flag-less ENQUEUE, READ and CONFIRM take the hot path


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip a byte, cut the tail, insert a byte, drop a byte."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and out:
            out[at % len(out)] ^= value or 1
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out.insert(at, value)
        elif out:
            del out[at % len(out)]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(request=requests, changes=edits)
def test_mutated_request_bodies_raise_only_invalid_request(request: object, changes: list) -> None:
    body = mutate(request.body(), changes)  # type: ignore[attr-defined]
    try:
        decoded = decode_request(request.OPCODE, body)  # type: ignore[attr-defined]
    except InvalidRequest:
        return
    assert decoded.body() == body  # whatever still parses is exactly what the bytes say


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
responses = st.one_of(
    st.builds(HelloOk, st.integers(0, 0xFFFF), u32s, st.text(max_size=20)),
    st.builds(ObjectQueued, u64s),
    st.builds(Message, u64s, st.binary(max_size=60), u32s),
    st.builds(Error, st.integers(0, 0xFFFF), st.text(max_size=40)),
    st.builds(Purged, u64s),
    st.builds(StatsReply, st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    st.builds(MembersReply, st.lists(st.text(max_size=20), max_size=4).map(tuple), st.integers(0, 255)),
    st.builds(ObjectsQueued, st.lists(u64s, max_size=5).map(tuple)),
    st.builds(Messages, st.lists(st.builds(Message, u64s, st.binary(max_size=30), u32s), max_size=4).map(tuple)),
    st.builds(ConfirmResults, st.lists(st.integers(0, 2), max_size=6).map(tuple)),
    st.sampled_from(
        [QueueCreated(), QueueDeleted(), Confirmed(), Requeued(), Full(), Empty(), Touched(), Released(), Cancelled()]
    ),
)


@FUZZ
@given(response=responses, changes=edits)
def test_mutated_response_bodies_raise_only_invalid_request(response: object, changes: list) -> None:
    body = mutate(response.body(), changes)  # type: ignore[attr-defined]
    with contextlib.suppress(InvalidRequest):
        decode_response(response.OPCODE, body)  # type: ignore[attr-defined]


# JSON the way a hostile server could write it: Python's json reads Infinity, NaN and 1e999 as floats.
json_numbers = st.sampled_from(
    ["Infinity", "-Infinity", "NaN", "1e999", "-1e999", "1e308", "0.5", "-1", "9" * 5000, "1"]
)


@FUZZ
@given(values=st.lists(st.one_of(json_numbers, json_values.map(json.dumps)), max_size=3))
def test_stats_reply_json_of_any_shape_raises_only_invalid_request(values: list[str]) -> None:
    for shaped in (f'{{"queues": [{", ".join(values)}]}}', f"[{', '.join(values)}]", values[0] if values else ""):
        with contextlib.suppress(InvalidRequest):
            decode_response(Op.STATS_REPLY, shaped.encode())


@FUZZ
@example(index="Infinity", members='["a:1"]')
@given(
    index=st.one_of(json_numbers, json_values.map(json.dumps)),
    members=st.sampled_from(['["a:1"]', "[]", '"ab"', "{}", "3"]),
)
def test_members_reply_json_of_any_shape_raises_only_invalid_request(index: str, members: str) -> None:
    """Regression: an index of Infinity or 1e999 used to raise OverflowError (through ClientConnection.receive_data
    into the AsyncClient's data_received)."""
    with contextlib.suppress(InvalidRequest):
        decode_response(Op.MEMBERS_REPLY, f'{{"members": {members}, "index": {index}}}'.encode())


response_frames = st.one_of(
    st.builds(lambda rid, response: encode(rid, response), u32s, responses),
    st.builds(lambda rid, response, changes: mutate(encode(rid, response), changes), u32s, responses, edits),
    st.binary(max_size=40),
)


@FUZZ
@given(
    data=st.lists(response_frames, max_size=6).map(b"".join),
    cuts=st.lists(st.integers(0, 600), max_size=20),
    abandoned=st.sets(u32s | st.integers(0, 4), max_size=4),
)
def test_client_connection_takes_any_bytes_in_any_chunking(data: bytes, cuts: list[int], abandoned: set[int]) -> None:
    """What a hostile server can send a client: responses, or ProtocolError, never another exception."""

    def receive(chunks: list[bytes]) -> tuple[list, bool, bytes]:
        connection = ClientConnection(max_message_size=1024)
        for request_id in abandoned:
            connection.abandon(request_id)
        got = []
        try:
            for chunk in chunks:
                got.extend(connection.receive_data(chunk))
        except ProtocolError:
            return got, True, connection.data_to_send()
        return got, False, connection.data_to_send()

    got, failed, releases = receive(chunked(data, cuts))
    whole, whole_failed, _ = receive([data])
    assert failed == whole_failed
    if not failed:
        assert got == whole
    assert all(type(response) in RESPONSE_TYPES for _, response in got)
    # The Releases an abandoned read triggers are well-formed requests.
    reader = FrameReader(64 + BODY_OVERHEAD)
    for opcode, _, _, body in reader.feed(releases):
        assert isinstance(decode_request(opcode, body), Release)
    assert reader.failure is None and reader.buffered == 0

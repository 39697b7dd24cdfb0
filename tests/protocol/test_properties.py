"""Property tests: no byte string, in any chunking, makes the protocol raise anything but its own errors."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbqueue.errors import InvalidRequest
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    Confirm,
    CreateQueue,
    DeleteQueue,
    Enqueue,
    FrameReader,
    Hello,
    Read,
    decode_request,
    decode_response,
    encode,
)
from dbqueue.protocol.frames import FrameFailure
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

FUZZ = settings(max_examples=300, deadline=None)


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
    assert type(request).OPCODE == opcode
    assert request.body() == body


@FUZZ
@given(opcode=st.integers(0, 255), body=st.binary(max_size=300))
def test_decode_response_raises_only_invalid_request(opcode: int, body: bytes) -> None:
    try:
        response = decode_response(opcode, body)
    except InvalidRequest:
        return
    assert type(response).OPCODE == opcode


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

"""FrameReader: bytes in any chunking give the same frames; broken framing stops it for good."""

from __future__ import annotations

import random

import pytest

from dbqueue.errors import ErrorCode
from dbqueue.protocol import HEADER, HEADER_SIZE, MAGIC, FrameReader, Op

MAX_BODY = 1000


def raw_frame(opcode: int, body: bytes, request_id: int, flags: int = 0, length: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, opcode, flags, request_id, len(body) if length is None else length) + body


FRAMES = [
    (Op.HELLO, 0, 1, b"\x00\x01"),
    (Op.ENQUEUE, 0, 2, b"\x03abc" + b"payload"),
    (Op.READ, 0, 3, b""),  # an empty body is still a frame
    (Op.CONFIRM, 7, 0xFFFFFFFF, bytes(range(8))),
    (0x42, 0xFFFF, 5, b"x" * MAX_BODY),  # exactly at the limit
    (Op.ERROR, 0, 6, bytes(range(256)) * 2),
]
STREAM = b"".join(raw_frame(opcode, body, request_id, flags) for opcode, flags, request_id, body in FRAMES)


def feed_in_chunks(reader: FrameReader, data: bytes, sizes: list[int]) -> list[tuple[int, int, int, bytes]]:
    frames = []
    pos = 0
    for size in sizes:
        frames.extend(reader.feed(data[pos : pos + size]))
        pos += size
    frames.extend(reader.feed(data[pos:]))
    return frames


def test_whole_stream_in_one_feed() -> None:
    reader = FrameReader(MAX_BODY)
    assert reader.feed(STREAM) == FRAMES
    assert reader.failure is None
    assert reader.buffered == 0


def test_one_byte_at_a_time() -> None:
    reader = FrameReader(MAX_BODY)
    frames = []
    ends = set()
    for i in range(len(STREAM)):
        got = reader.feed(STREAM[i : i + 1])
        if got:
            ends.add(i + 1)
        frames.extend(got)
    assert frames == FRAMES
    assert reader.failure is None
    assert reader.buffered == 0
    # Each frame comes out exactly when its last byte arrives, not later.
    expected_ends, pos = set(), 0
    for _, _, _, body in FRAMES:
        pos += HEADER_SIZE + len(body)
        expected_ends.add(pos)
    assert ends == expected_ends


@pytest.mark.parametrize("seed", range(30))
def test_random_chunkings(seed: int) -> None:
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(STREAM):
        sizes.append(rng.choice([0, 1, 2, 3, 11, 12, 13, rng.randrange(1, 3000)]))
    reader = FrameReader(MAX_BODY)
    assert feed_in_chunks(reader, STREAM, sizes) == FRAMES
    assert reader.failure is None
    assert reader.buffered == 0


def test_buffered_counts_a_partial_frame() -> None:
    reader = FrameReader(MAX_BODY)
    data = raw_frame(Op.ENQUEUE, b"\x01q" + b"z" * 50, 9)
    assert reader.feed(data[:5]) == []
    assert reader.buffered == 5
    assert reader.feed(data[5:30]) == []
    assert reader.buffered == 30
    assert reader.feed(data[30:]) == [(Op.ENQUEUE, 0, 9, b"\x01q" + b"z" * 50)]
    assert reader.buffered == 0


def test_bad_magic_fails_and_returns_the_frames_before_it() -> None:
    good = raw_frame(Op.HELLO, b"\x00\x01", 1) + raw_frame(Op.CONFIRM, bytes(8), 2)
    after = raw_frame(Op.HELLO, b"\x00\x01", 4)
    data = good + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + after
    reader = FrameReader(MAX_BODY)
    assert reader.feed(data) == [(Op.HELLO, 0, 1, b"\x00\x01"), (Op.CONFIRM, 0, 2, bytes(8))]
    failure = reader.failure
    assert failure is not None
    assert failure.code == ErrorCode.BAD_FRAME
    assert failure.request_id == 0
    assert "magic" in failure.message
    # The reader has stopped for good: later bytes, even valid frames, give nothing.
    assert reader.feed(after) == []
    assert reader.failure == failure


def test_bad_magic_one_byte_at_a_time() -> None:
    good = raw_frame(Op.HELLO, b"\x00\x01", 1)
    data = good + bytes([0xDC]) + bytes(40)
    reader = FrameReader(MAX_BODY)
    frames = [f for i in range(len(data)) for f in reader.feed(data[i : i + 1])]
    assert frames == [(Op.HELLO, 0, 1, b"\x00\x01")]
    assert reader.failure is not None and reader.failure.code == ErrorCode.BAD_FRAME


def test_oversized_length_is_refused_at_the_header() -> None:
    good = raw_frame(Op.HELLO, b"\x00\x01", 1)
    # Announce 4 GiB - 1 and send only the header: the reader must not wait for the body.
    oversized = HEADER.pack(MAGIC, Op.ENQUEUE, 0, 77, 0xFFFFFFFF)
    reader = FrameReader(MAX_BODY)
    assert reader.feed(good + oversized) == [(Op.HELLO, 0, 1, b"\x00\x01")]
    failure = reader.failure
    assert failure is not None
    assert failure.code == ErrorCode.MESSAGE_TOO_LARGE
    assert failure.request_id == 77
    assert str(0xFFFFFFFF) in failure.message
    assert reader.feed(b"x" * 100) == []


def test_one_past_the_limit_fails_one_byte_at_a_time() -> None:
    data = raw_frame(Op.HELLO, b"\x00\x01", 1) + raw_frame(Op.ENQUEUE, b"y" * (MAX_BODY + 1), 123)
    reader = FrameReader(MAX_BODY)
    frames = []
    for i in range(HEADER_SIZE * 2 + 2):  # up to the end of the second header, no further
        frames.extend(reader.feed(data[i : i + 1]))
    assert frames == [(Op.HELLO, 0, 1, b"\x00\x01")]
    assert reader.failure is not None
    assert reader.failure.code == ErrorCode.MESSAGE_TOO_LARGE
    assert reader.failure.request_id == 123


def test_partial_header_then_more_frames_in_one_feed() -> None:
    reader = FrameReader(MAX_BODY)
    assert reader.feed(STREAM[:7]) == []
    # The rest arrives with a whole second copy of the stream behind it.
    assert reader.feed(STREAM[7:] + STREAM) == FRAMES + FRAMES
    assert reader.buffered == 0


def test_large_frame_in_many_small_reads() -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    data = raw_frame(Op.ENQUEUE, body, 3)
    reader = FrameReader(len(body))
    frames = []
    for pos in range(0, len(data), 997):
        frames.extend(reader.feed(data[pos : pos + 997]))
    assert frames == [(Op.ENQUEUE, 0, 3, body)]
    assert reader.buffered == 0

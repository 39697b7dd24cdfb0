"""Slabs: a sent batch kept in its columns, with no id column of its own.

A slab keeps its batch's u32 lengths and payloads and only its first id; the
u64 id column that the send's reply, a batch read's reply and a batch confirm
carry is built when needed (`codecs.id_column`). These tests check that
column against ids packed one by one, that every slice a read takes carries
the ids its members were given, and that a queued message costs the memory
of its payload and its length and nothing more of note.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from holders import held_by

from dbqueue.core import Block, Broker, Holding, Queue
from dbqueue.core.segments import Slab
from dbqueue.protocol import codecs
from dbqueue.protocol.codecs import id_column


def make() -> tuple[Broker, Queue]:
    broker = Broker()
    return broker, broker.create_queue(b"q", 0)


def send_columns(broker: Broker, queue: Queue, payloads: list[bytes]) -> bytes:
    lengths = struct.pack(f">{len(payloads)}I", *map(len, payloads))
    ids = broker.enqueue_columns(queue, lengths, b"".join(payloads), 0.0)
    assert ids is not None
    return ids


@pytest.mark.parametrize(
    ("first", "count"),
    [
        (0, 0),
        (1, 1),
        (7, 3),
        (1_000_000, 1000),
        ((1 << 32) - 5, 10),
        ((1 << 40) + 3, 257),
        ((1 << 64) - 100, 100),
        (5, 2048),
        (5, 2049),
        (1 << 33, 65536),
    ],
)
def test_an_id_column_is_the_ids_packed_one_by_one(first: int, count: int) -> None:
    expected = struct.pack(f">{count}Q", *range(first, first + count))
    assert id_column(first, count) == expected
    assert id_column(first, count) == expected  # from the cached patterns too (up to a length)


def test_the_id_patterns_held_stay_bounded() -> None:
    for count in range(1, 3000):
        id_column(count, count)
    assert len(codecs._ID_PATTERNS) <= codecs._MAX_ID_PATTERNS
    assert max(codecs._ID_PATTERNS) <= codecs._MAX_PATTERN_IDS


def test_a_slab_keeps_no_id_column() -> None:
    broker, queue = make()
    send_columns(broker, queue, [b"a", b"bb"])
    assert "ids" not in Slab.__slots__
    (slab,) = queue._segments
    assert isinstance(slab, Slab) and slab.lengths == struct.pack(">2I", 1, 2) and slab.data == b"abb"


def test_each_slice_read_from_a_slab_carries_its_members_ids_and_is_confirmed_by_them() -> None:
    broker, queue = make()
    payloads = [bytes([65 + i]) * i for i in range(10)]
    column = send_columns(broker, queue, payloads)
    ids = list(struct.unpack(">10Q", column))
    held = Holding()
    start = 0
    for count in (3, 3, 4):
        (block,) = broker.deliver_many(queue, count, 100, held, 0.0)
        assert isinstance(block, Block) and block.slab is not None
        assert block.slab[0] == column[8 * start : 8 * (start + count)]
        assert block.payloads == payloads[start : start + count]
        assert (block.first_id, block.end) == (ids[start], ids[start] + count)
        assert broker.confirm_column(block.slab[0], held_by(broker, block.slab[0])) is True
        start += count
    assert queue.count == 0 and queue.payload_bytes == 0


def test_a_queued_message_of_a_slab_costs_its_payload_and_its_length() -> None:
    broker, queue = make()
    batches, size, payload = 100, 1000, 128
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(batches):
            lengths = struct.pack(f">{size}I", *[payload] * size)
            broker.enqueue_columns(queue, lengths, bytes(payload * size), 0.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert queue.ready == batches * size
    # The payload and its u32 length, plus the slab's own object and headers shared by a thousand.
    assert grown / (batches * size) < payload + 4 + 1

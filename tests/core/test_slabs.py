"""Slabs: a sent batch kept in its columns, with no id column of its own.

A slab keeps its batch's u32 lengths and payloads and only its first id; the
u64 id column that the send's reply, a batch read's reply and a batch confirm
carry is built when needed (`codecs.id_column`). These tests check that
column against ids packed one by one, that every slice a read takes carries
the ids its members were given, and that a queued message costs the memory
of its payload and its length and nothing more of note. Single sends are
sealed into slabs as their run ends (`segments.seal`): the same ids and
payloads come out, in order, one by one or in batches, at a slab's cost;
behind a short backlog, a run stays a run (`segments.SEAL_BACKLOG`).
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from holders import held_by

from dbqueue.core import Block, Broker, Holding, Outcome, Queue
from dbqueue.core.segments import RUN_LIMIT, SEAL_BACKLOG, Run, Slab
from dbqueue.protocol import codecs
from dbqueue.protocol.codecs import id_column


def make(seal_backlog: int = 0) -> tuple[Broker, Queue]:
    """A broker and its queue ``q``, whose runs are sealed past ``seal_backlog`` ready messages."""
    broker = Broker()
    queue = broker.create_queue(b"q", 0)
    queue.seal_backlog = seal_backlog
    return broker, queue


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


# --- single sends sealed into slabs ---------------------------------------------------------------


def test_single_sends_past_a_run_are_sealed_into_slabs_with_their_ids() -> None:
    broker, queue = make()
    count = 3 * RUN_LIMIT + 7
    payloads = [b"m%d" % number for number in range(count)]
    ids = [broker.enqueue(queue, payload, 0.0) for payload in payloads]
    assert ids == list(range(ids[0], ids[0] + count))
    kinds = [type(segment) for segment in queue._segments]
    assert kinds == [Slab, Slab, Slab, Run]  # the tail run is open: it is sealed when the next one starts
    assert queue.ready == count and queue.payload_bytes == sum(map(len, payloads))
    held = Holding()
    seen: list[tuple[int, bytes]] = []
    while queue.ready:  # one by one and in batches, across the slabs' and the run's bounds
        if len(seen) % 3:
            record = broker.deliver(queue, 100, held, 0.0)
            assert record is not None
            seen.append((record.id, record.data))
        else:
            for entry in broker.deliver_many(queue, 100, 100, held, 0.0):
                if isinstance(entry, Block):
                    seen += zip(range(entry.first_id, entry.end), entry.payloads)
                else:
                    seen.append((entry.id, entry.data))
    assert seen == list(zip(ids, payloads))
    assert {broker.confirm(id_, held) for id_ in ids} == {Outcome.DONE}
    assert queue.count == 0 and queue.payload_bytes == 0


def test_a_run_partly_read_is_sealed_with_what_it_still_holds() -> None:
    broker, queue = make()
    first = broker.enqueue(queue, b"a", 0.0)
    held = Holding()
    for number in range(1, RUN_LIMIT):
        broker.enqueue(queue, b"x%d" % number, 0.0)
    for _ in range(RUN_LIMIT - 2):  # all but the last two leave before the run ends
        assert broker.deliver(queue, 100, held, 0.0) is not None
    after = broker.enqueue(queue, b"next", 0.0)  # the run is full: this starts the next one
    slab, run = queue._segments
    assert isinstance(slab, Slab) and isinstance(run, Run)
    assert slab.first_id == first + RUN_LIMIT - 2 and slab.count == 2
    assert slab.data == b"x%dx%d" % (RUN_LIMIT - 2, RUN_LIMIT - 1)
    taken = [broker.deliver(queue, 100, held, 0.0) for _ in range(3)]
    assert [(record.id, record.data) for record in taken if record is not None] == [
        (first + RUN_LIMIT - 2, b"x%d" % (RUN_LIMIT - 2)),
        (first + RUN_LIMIT - 1, b"x%d" % (RUN_LIMIT - 1)),
        (after, b"next"),
    ]


def test_a_run_read_to_its_end_leaves_no_segment_behind() -> None:
    broker, queue = make()
    held = Holding()
    for _ in range(2 * RUN_LIMIT + 1):  # what a queue kept nearly empty sees: each message read at once
        broker.enqueue(queue, b"m", 0.0)
        record = broker.deliver(queue, 100, held, 0.0)
        assert record is not None and broker.confirm(record.id, held) == Outcome.DONE
    assert [type(segment) for segment in queue._segments] == [Run]


def test_a_single_send_queued_long_costs_about_its_payload_and_its_length() -> None:
    broker, queue = make()
    count, payload = 50 * RUN_LIMIT, 128
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(count):
            broker.enqueue(queue, number.to_bytes(8, "big") * (payload // 8), 0.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert queue.ready == count
    # The payload and its u32 length, the slabs' objects and headers, and one run left open (the last
    # RUN_LIMIT messages as bytes objects, about 1/50 of them: a few bytes a message).
    assert grown / count < payload + 4 + 6


def test_a_run_behind_a_short_backlog_is_left_a_run() -> None:
    broker, queue = make(seal_backlog=RUN_LIMIT + 10)
    assert Broker().create_queue(b"other", 0).seal_backlog == SEAL_BACKLOG  # the default
    payloads = [b"m%d" % number for number in range(3 * RUN_LIMIT + 1)]
    for payload in payloads:
        broker.enqueue(queue, payload, 0.0)
    # The first run ended with RUN_LIMIT ready (not past the backlog): left as it is; the next two
    # ended behind more and were sealed; the last is open.
    assert [type(segment) for segment in queue._segments] == [Run, Slab, Slab, Run]
    held = Holding()
    read = [broker.deliver(queue, 100, held, 0.0) for _ in payloads]
    assert [record.data for record in read if record is not None] == payloads

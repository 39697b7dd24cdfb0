"""Protocol 3's queue logic with a fake clock: peek changes nothing, move is one step that keeps ids,
dead letters keep their origin (through a restore too), enqueue times and the queues' visibility timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from holders import held_by

from dbqueue.core import Broker, Holding, Origin, Outcome, Snapshot, StoredQueue, now_ms
from dbqueue.errors import InvalidRequest
from dbqueue.protocol import NEVER_MS


class FakeJournal:
    """Records every call the broker makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, (args, kwargs)))

        return record

    def create_queue(self, name: bytes, *args: Any) -> None:
        self.calls.append(("create_queue", (name, *args)))

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None:
        self.calls.append(("purge", (name, sorted(keep))))

    def add(self, queue: bytes, id_: int, data: bytes, **kwargs: Any) -> None:
        self.calls.append(("add", (queue, id_, data, kwargs)))

    def remove(self, id_: int) -> None:
        self.calls.append(("remove", id_))

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes], enqueued_ms: int = 0) -> None:
        self.calls.append(("add_many", (queue, list(ids))))


def figures(broker: Broker, name: bytes) -> dict[str, Any]:
    return broker.queues[name].stats(now=0.0)


def test_peek_changes_no_count_and_lists_every_state_in_order() -> None:
    broker = Broker()
    queue = broker.create_queue(b"q")
    ids = [broker.enqueue(queue, data, 1.0) for data in (b"a", b"b", b"c", b"d", b"e")]
    late = broker.enqueue_delayed(queue, b"later", 5_000, 1.0)
    held = Holding()
    block = broker.deliver_many(queue, 2, 1_000, held, 2.0)  # a block of a and b
    record = broker.deliver(queue, 1_000, held, 2.0)  # c alone
    assert record is not None and len(block) == 1
    before, entries = figures(broker, b"q"), broker.entries()
    seen = broker.peek(queue, 10, 3.0)
    assert [(p.id, p.data, p.state, p.deliveries) for p in seen] == [
        (ids[3], b"d", "ready", 0),
        (ids[4], b"e", "ready", 0),
    ]
    every = broker.peek(queue, 10, 3.0, delayed=True, in_flight=True)
    assert [(p.id, p.state, p.deliveries) for p in every] == [
        (ids[3], "ready", 0),
        (ids[4], "ready", 0),
        (ids[0], "in_flight", 1),
        (ids[1], "in_flight", 1),
        (ids[2], "in_flight", 1),
        (late, "delayed", 0),
    ]
    # Enqueue times: every message was sent at 1.0 of the broker's clock, which maps to Unix time.
    assert {p.enqueued_ms for p in every} == {broker.wall_ms(1.0)}
    assert abs(broker.wall_ms(time.monotonic()) - now_ms()) < 50
    assert figures(broker, b"q") == before and broker.entries() == entries  # nothing changed
    assert [p.id for p in broker.peek(queue, 3, 3.0, in_flight=True)] == [ids[3], ids[4], ids[0]]
    assert [p.id for p in broker.peek(queue, 10, 3.0, max_bytes=1)] == [ids[3]]  # the first always goes


def test_peek_of_a_slab() -> None:
    broker = Broker()
    queue = broker.create_queue(b"q")
    column = broker.enqueue_columns(queue, b"\x00\x00\x00\x01\x00\x00\x00\x02", b"abc", 1.0)
    assert column is not None
    assert [(p.data, p.state) for p in broker.peek(queue, 5, 1.5)] == [(b"a", "ready"), (b"bc", "ready")]


def test_move_keeps_ids_order_counts_and_journals_a_remove_and_an_add() -> None:
    broker = Broker()
    journal = FakeJournal()
    broker.attach(journal)  # type: ignore[arg-type]  # a recording stand-in
    source, destination = broker.create_queue(b"dead"), broker.create_queue(b"jobs")
    ids = broker.enqueue_batch(source, [b"1", b"2", b"3", b"4"], 1.0)
    assert ids is not None
    broker.enqueue(destination, b"there", 1.0)
    journal.calls.clear()
    assert broker.move(source, destination, 3, 2.0) == 3
    assert [call for call in journal.calls if call[0] == "remove"] == [("remove", id_) for id_ in ids[:3]]
    adds = [call[1] for call in journal.calls if call[0] == "add"]
    assert [(name, id_, data) for name, id_, data, _ in adds] == [(b"jobs", id_, b"%d" % (i + 1)) for i, id_ in
                                                                   enumerate(ids[:3])]  # fmt: skip
    assert [call[0] for call in journal.calls] == ["remove", "add"] * 3  # each remove before its add
    assert (source.ready, source.count, source.moved) == (1, 1, 3)
    assert (destination.ready, destination.count, destination.enqueued) == (4, 4, 4)
    assert source.payload_bytes == 1 and destination.payload_bytes == 8
    held = Holding()
    read = [broker.deliver(destination, 0, held, 3.0) for _ in range(4)]
    assert [(r.id, r.data) for r in read if r is not None][1:] == [(ids[i], b"%d" % (i + 1)) for i in range(3)]
    assert broker.confirm(ids[0], held) == Outcome.DONE
    assert broker.move(source, destination, None, 4.0) == 1  # None: all
    assert broker.move(source, destination, None, 4.0) == 0
    with pytest.raises(InvalidRequest):
        broker.move(source, source, None, 4.0)


def test_move_respects_the_destination_capacity_and_wakes_its_reads() -> None:
    broker = Broker()
    source, destination = broker.create_queue(b"a"), broker.create_queue(b"b", capacity=2)
    for data in (b"x", b"y", b"z"):
        broker.enqueue(source, data, 0.0)
    woken: list[Any] = []
    broker.wait(destination, Holding(), 0, 1, 5_000, 0.0, woken.append)
    assert broker.move(source, destination, None, 1.0) == 2  # partial: what fits
    assert [[entry.data for entry in entries] for entries in woken] == [[b"x"]]
    assert (source.ready, destination.ready, destination.in_flight) == (1, 1, 1)
    assert broker.move(source, destination, None, 1.0) == 0  # full


def test_dead_letters_keep_their_first_origin() -> None:
    broker = Broker()
    journal = FakeJournal()
    broker.attach(journal)  # type: ignore[arg-type]  # a recording stand-in
    final = broker.create_queue(b"final")
    middle = broker.create_queue(b"middle", max_deliveries=1, dead_letter=b"final")
    jobs = broker.create_queue(b"jobs", max_deliveries=2, dead_letter=b"middle")
    sent = broker.enqueue(jobs, b"poison", 10.0)
    for now in (11.0, 12.0):
        held = Holding()
        assert broker.deliver(jobs, 0, held, now) is not None
        broker.release_all(held, now)
    (letter,) = broker.peek(middle, 5, 13.0)
    origin = letter.origin
    assert origin is not None and (origin.queue, origin.id, origin.deliveries) == (b"jobs", sent, 2)
    assert origin.enqueued_ms == broker.wall_ms(10.0)  # sent at 10.0, dead-lettered at 12.0
    assert letter.id != sent and letter.deliveries == 0
    added = [call[1] for call in journal.calls if call[0] == "add" and call[1][0] == b"middle"]
    assert [(id_, data, extra["origin"]) for _, id_, data, extra in added] == [(letter.id, b"poison", origin)]
    assert added[0][3]["enqueued_ms"] == broker.wall_ms(12.0)  # its enqueue into the dead-letter queue
    # Through a second dead-letter queue: the first origin stays.
    held = Holding()
    record = broker.deliver(middle, 0, held, 14.0)
    assert record is not None and middle.origins == {record.id: origin}
    broker.release_all(held, 14.0)
    (last,) = broker.peek(final, 5, 15.0)
    assert last.origin == origin and middle.origins == {}
    # Confirmed: the origin goes with it.
    held = Holding()
    again = broker.deliver(final, 0, held, 16.0)
    assert again is not None and broker.confirm(again.id, held_by(broker, again.id)) == Outcome.DONE
    assert final.origins == {}


def test_a_dead_letter_moved_back_keeps_its_origin() -> None:
    broker = Broker()
    dead = broker.create_queue(b"dead")
    jobs = broker.create_queue(b"jobs", max_deliveries=1, dead_letter=b"dead")
    broker.enqueue(jobs, b"m", 0.0)
    held = Holding()
    broker.deliver(jobs, 0, held, 0.0)
    broker.release_all(held, 0.0)
    (letter,) = broker.peek(dead, 1, 0.0)
    assert broker.move(dead, jobs, None, 1.0) == 1
    (back,) = broker.peek(jobs, 1, 1.0)
    assert (back.id, back.origin) == (letter.id, letter.origin) and jobs.has_origins and dead.origins == {}


def test_a_restore_brings_origins_enqueue_times_and_visibility_back() -> None:
    wall = now_ms()
    origin = Origin(b"jobs", 5, wall - 60_000, 3)
    snapshot = Snapshot(
        [
            StoredQueue(b"jobs", 0, 3, b"dead", [], 250),
            StoredQueue(b"dead", 0, 0, None, [(9, b"p", 0, 0), (10, b"q", 0, 0)], 0, [wall - 5_000, wall], {9: origin}),
        ],
        11,
    )
    broker = Broker()
    broker.restore(snapshot, 100.0)
    dead, jobs = broker.queues[b"dead"], broker.queues[b"jobs"]
    assert (jobs.visibility_ms, dead.visibility_ms) == (250, 30_000)
    seen = broker.peek(dead, 5, 100.0)
    assert [(p.id, p.origin) for p in seen] == [(9, origin), (10, None)]
    assert abs(seen[0].enqueued_ms - (wall - 5_000)) < 50
    assert 4_900 <= dead.stats(now=100.0)["oldest_ready_age_ms"] <= 5_100
    assert dead.has_origins


def test_oldest_ready_age_follows_the_front_of_the_queue() -> None:
    broker = Broker()
    queue = broker.create_queue(b"q")
    assert queue.stats(now=5.0)["oldest_ready_age_ms"] == 0
    broker.enqueue(queue, b"a", 1.0)
    broker.enqueue(queue, b"b", 1.0005)  # the same millisecond mark
    broker.enqueue(queue, b"c", 3.0)
    assert queue.stats(now=5.0)["oldest_ready_age_ms"] == 4_000
    held = Holding()
    broker.deliver(queue, 0, held, 5.0)
    broker.deliver(queue, 0, held, 5.0)
    assert queue.stats(now=5.0)["oldest_ready_age_ms"] == 2_000  # c, sent at 3.0
    broker.release_all(held, 6.0)  # a and b back at the front: their first enqueue counts
    assert queue.stats(now=6.0)["oldest_ready_age_ms"] == 5_000
    block = broker.deliver_many(queue, 3, 1_000, Holding(), 7.0)
    assert len(block) == 3 and queue.stats(now=7.0)["oldest_ready_age_ms"] == 0


def test_block_members_split_off_keep_their_own_enqueue_times() -> None:
    broker = Broker()
    queue = broker.create_queue(b"q")
    broker.enqueue_batch(queue, [b"a", b"b"], 1.0)
    broker.enqueue_batch(queue, [b"c", b"d"], 2.0)
    held = Holding()
    (block,) = broker.deliver_many(queue, 4, 1_000, held, 3.0)
    broker.release_all(held, 3.0)  # split into records, back at the front
    times = [p.enqueued_ms for p in broker.peek(queue, 4, 3.0)]
    assert times == [broker.wall_ms(1.0)] * 2 + [broker.wall_ms(2.0)] * 2


def test_visibility_timeouts_of_queues_and_touch_to_the_default() -> None:
    broker = Broker(default_visibility_ms=1_000)
    plain, short, never = (
        broker.create_queue(b"plain"),
        broker.create_queue(b"short", visibility_timeout_ms=100),
        broker.create_queue(b"never", visibility_timeout_ms=NEVER_MS),
    )
    assert (plain.visibility_ms, short.visibility_ms, never.visibility_ms) == (1_000, 100, NEVER_MS)
    broker.default_visibility_ms = 2_000  # a queue created without one follows the server's
    assert plain.visibility_ms == 2_000 and plain.stats(now=0.0)["visibility_timeout_ms"] == 2_000
    broker.enqueue(short, b"m", 0.0)
    held = Holding()
    record = broker.deliver(short, 0, held, 0.0)  # no deadline yet
    assert record is not None
    assert broker.touch(record.id, None, 0.0, held) == Outcome.DONE  # None: the queue's 100 ms
    assert broker.expire(0.05) == 0 and broker.expire(0.11) == 1

"""Broker logic with a fake clock: ``now`` is a plain float the test chooses."""

from __future__ import annotations

import pytest
from holders import held_by

from dbqueue.core import ID_BLOCK, Broker, Holding, Outcome, Queue, Record
from dbqueue.core import queue as queue_module


def make(capacity: int = 0, **broker_kwargs: int) -> tuple[Broker, Queue]:
    broker = Broker(**broker_kwargs)
    return broker, broker.create_queue(b"q", capacity)


def drain(broker: Broker, queue: Queue, now: float = 0.0, timeout_ms: int = 0) -> list[Record]:
    """Read every ready message (holding them on a throwaway connection)."""
    held = Holding()
    out = []
    while (record := broker.deliver(queue, timeout_ms, held, now)) is not None:
        out.append(record)
    return out


def assert_consistent(broker: Broker, *held_dicts: dict[int, Record], timed: int = 0) -> None:
    """Every record is either held by one connection or waiting in its queue's ``returned``,
    and ``timed`` of the held ones have a deadline."""
    held_ids = [id_ for held in held_dicts for id_ in held]
    returned_ids = [r.id for q in broker.queues.values() for r in q.returned]
    assert sorted(broker.entries()) == sorted(held_ids + returned_ids)
    assert broker._timed == timed


# --- FIFO, ids ------------------------------------------------------------------------


def test_fifo_order_and_ids() -> None:
    broker, queue = make()
    ids = [queue.push(b"m%d" % i) for i in range(10)]
    assert ids == list(range(1, 11))
    assert queue.ready == 10 and queue.count == 10
    held = Holding()
    records = [broker.deliver(queue, 0, held, 0.0) for _ in range(10)]
    assert [r.data for r in records] == [b"m%d" % i for i in range(10)]  # type: ignore[union-attr]
    assert [r.id for r in records] == ids  # type: ignore[union-attr]
    assert all(r.deliveries == 1 for r in records)  # type: ignore[union-attr]
    assert held.ids() == ids
    assert broker.deliver(queue, 0, held, 0.0) is None
    assert queue.ready == 0 and queue.count == 10  # in flight still counts
    assert_consistent(broker, held)


def test_empty_queue_delivers_none_and_interleaving_keeps_order() -> None:
    broker, queue = make()
    held = Holding()
    assert broker.deliver(queue, 0, held, 0.0) is None
    queue.push(b"a")
    assert broker.deliver(queue, 0, held, 0.0).data == b"a"  # type: ignore[union-attr]
    assert broker.deliver(queue, 0, held, 0.0) is None
    queue.push(b"b")
    queue.push(b"c")
    assert broker.deliver(queue, 0, held, 0.0).data == b"b"  # type: ignore[union-attr]
    queue.push(b"d")
    assert [r.data for r in drain(broker, queue)] == [b"c", b"d"]


def test_ids_unique_across_queues_and_block_boundaries() -> None:
    """More than two blocks through one queue, with another queue taking blocks in between."""
    broker = Broker()
    a = broker.create_queue(b"a")
    b = broker.create_queue(b"b")
    a_ids = [a.push(b"%d" % i) for i in range(ID_BLOCK + 5)]
    b_ids = [b.push(b"b")]  # b takes its block after a's first one
    a_ids += [a.push(b"%d" % i) for i in range(ID_BLOCK + 5, 2 * ID_BLOCK + 10)]
    b_ids += [b.push(b"b") for _ in range(3)]
    all_ids = a_ids + b_ids
    assert len(set(all_ids)) == len(all_ids)
    # The test really crossed blocks: b's block sits between two of a's, so a's ids jump over it.
    jumps = [i for i in range(1, len(a_ids)) if a_ids[i] != a_ids[i - 1] + 1]
    assert jumps == [2 * ID_BLOCK]
    assert a_ids[2 * ID_BLOCK - 1] < b_ids[0] < a_ids[2 * ID_BLOCK]
    # Reading back crosses every run boundary and hands out exactly the ids push returned.
    records = drain(broker, a)
    assert [r.id for r in records] == a_ids
    assert [r.data for r in records] == [b"%d" % i for i in range(2 * ID_BLOCK + 10)]
    assert [r.id for r in drain(broker, b)] == b_ids


def test_ids_unique_across_many_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "ID_BLOCK", 3)
    broker = Broker()
    queues = [broker.create_queue(b"q%d" % i) for i in range(4)]
    pushed: dict[bytes, list[tuple[int, bytes]]] = {q.name: [] for q in queues}
    seen = set()
    for step in range(200):
        queue = queues[(step * 7 + step // 5) % 4]  # irregular interleaving
        data = b"%d" % step
        id_ = queue.push(data)
        assert id_ not in seen
        seen.add(id_)
        pushed[queue.name].append((id_, data))
        if step % 3 == 0:  # read some while pushing, so runs empty and refill
            record = broker.deliver(queue, 0, Holding(), 0.0)
            assert record is not None
            assert (record.id, record.data) == pushed[queue.name].pop(0)
    for queue in queues:
        assert [(r.id, r.data) for r in drain(broker, queue)] == pushed[queue.name]
    # The patch took effect: the queues shared the first ID_BLOCK ids, in blocks of 3.
    assert max(seen) < ID_BLOCK


def test_ids_unique_after_a_run_empties_at_a_block_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "ID_BLOCK", 2)
    broker, queue = make()
    other = broker.create_queue(b"other")
    ids = []
    for _ in range(5):
        ids.append(queue.push(b"x"))
        ids.append(other.push(b"y"))
        ids.append(queue.push(b"x"))
        assert broker.deliver(queue, 0, Holding(), 0.0) is not None
        assert broker.deliver(queue, 0, Holding(), 0.0) is not None
    assert len(set(ids)) == len(ids)
    assert queue.ready == 0
    assert len(queue._segments) <= 1  # drained runs are let go (at most the empty tail stays)
    # The patch took effect: both queues took their ids among the first ID_BLOCK, in blocks of 2.
    assert max(ids) < ID_BLOCK


# --- capacity -------------------------------------------------------------------------


def test_capacity_counts_ready_and_in_flight() -> None:
    broker, queue = make(capacity=2)
    assert queue.push(b"a") > 0
    assert queue.push(b"b") > 0
    assert queue.push(b"c") == -1
    held = Holding()
    record = broker.deliver(queue, 0, held, 0.0)
    assert record is not None
    assert queue.push(b"c") == -1  # the read message is still the queue's
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.DONE
    assert queue.count == 1
    assert queue.push(b"c") > 0
    assert queue.push(b"d") == -1
    assert [r.data for r in drain(broker, queue)] == [b"b", b"c"]


def test_capacity_holds_through_expiry_and_late_confirm() -> None:
    broker, queue = make(capacity=1)
    queue.push(b"a")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert broker.expire(1.0) == 1
    assert queue.push(b"b") == -1  # back in the queue, still counted
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.REQUEUED  # type: ignore[union-attr]
    assert queue.count == 1 and queue.push(b"b") == -1


def test_default_capacity_and_idempotent_create() -> None:
    broker = Broker(default_capacity=1)
    queue = broker.create_queue(b"q")
    assert queue.capacity == 1
    assert broker.create_queue(b"q", 50) is queue
    assert queue.capacity == 1  # an existing queue is kept as is
    assert broker.create_queue(b"big", 3).capacity == 3
    queue.push(b"a")
    assert queue.push(b"b") == -1


# --- deliver / confirm ----------------------------------------------------------------


def test_confirm_outcomes() -> None:
    broker, queue = make()
    queue.push(b"a")
    held = Holding()
    record = broker.deliver(queue, 100, held, 0.0)
    assert record is not None and broker.next_deadline() == pytest.approx(0.1)
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.DONE
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.NO_SUCH_MESSAGE  # already confirmed
    assert broker.confirm(12345, held_by(broker, 12345)) == Outcome.NO_SUCH_MESSAGE  # never existed
    assert broker.confirm(queue.push(b"b"), Holding()) == Outcome.NO_SUCH_MESSAGE  # never read
    assert held == {}
    assert queue.count == 1
    assert broker.expire(10.0) == 0  # the confirmed message's deadline is ignored
    assert_consistent(broker, held)


def test_confirm_works_from_any_connection() -> None:
    broker, queue = make()
    queue.push(b"a")
    held = Holding()
    record = broker.deliver(queue, 0, held, 0.0)
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.DONE  # type: ignore[union-attr]
    assert held == {}


# --- expiry ---------------------------------------------------------------------------


def test_expire_requeues_to_the_front_in_read_order() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c", b"d", b"e"):
        queue.push(data)
    held = Holding()
    a = broker.deliver(queue, 10, held, 0.000)
    b = broker.deliver(queue, 10, held, 0.001)
    c = broker.deliver(queue, 0, held, 0.002)  # no timeout: never expires
    d = broker.deliver(queue, 10, held, 0.003)
    assert broker.next_deadline() == pytest.approx(0.010)
    assert broker.expire(0.0099) == 0
    assert broker.expire(0.0115) == 2  # a and b
    assert held.ids() == [c.id, d.id]  # type: ignore[union-attr]
    assert [r.id for r in queue.returned] == [a.id, b.id]  # type: ignore[union-attr]
    assert broker.expire(5.0) == 1  # d, ahead of the earlier returns
    assert held.ids() == [c.id]  # type: ignore[union-attr]
    assert [r.id for r in queue.returned] == [d.id, a.id, b.id]  # type: ignore[union-attr]
    assert broker.confirm(a.id, held_by(broker, a.id)) == Outcome.REQUEUED  # type: ignore[union-attr]
    assert broker.confirm(d.id, held_by(broker, d.id)) == Outcome.REQUEUED  # type: ignore[union-attr]
    assert broker.confirm(c.id, held_by(broker, c.id)) == Outcome.DONE  # type: ignore[union-attr]
    later = Holding()
    again = [broker.deliver(queue, 0, later, 6.0) for _ in range(4)]
    assert [r.data for r in again] == [b"d", b"a", b"b", b"e"]  # type: ignore[union-attr]
    assert [r.deliveries for r in again] == [2, 2, 2, 1]  # type: ignore[union-attr]
    assert again[1] is a  # the record itself came back, same id
    assert broker.confirm(a.id, held_by(broker, a.id)) == Outcome.DONE  # type: ignore[union-attr]
    assert queue.count == 3
    assert_consistent(broker, held, later)


def test_expired_messages_go_ahead_of_earlier_returns() -> None:
    """The newest returns are the front: a second expiry sweep lands ahead of the first's."""
    broker, queue = make()
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    held = Holding()
    broker.deliver(queue, 10, held, 0.0)  # a
    broker.deliver(queue, 20, held, 0.0)  # b
    assert broker.expire(0.015) == 1
    assert broker.expire(0.025) == 1
    assert [r.data for r in drain(broker, queue)] == [b"b", b"a", b"c"]


def test_expire_is_exact_at_the_deadline() -> None:
    broker, queue = make()
    queue.push(b"a")
    broker.deliver(queue, 250, Holding(), 1.0)
    assert broker.expire(1.2499) == 0
    assert broker.expire(1.25) == 1


def test_redelivered_message_gets_a_fresh_deadline() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert broker.expire(0.02) == 1
    held = Holding()
    assert broker.deliver(queue, 100, held, 0.03) is record
    assert broker.expire(0.05) == 0  # the old deadline does not fire again
    assert record.held is held  # type: ignore[union-attr]
    assert broker.expire(0.2) == 1
    assert record.deliveries == 2  # type: ignore[union-attr]


def test_release_then_redeliver_with_the_same_deadline_expires_once() -> None:
    broker, queue = make()
    queue.push(b"a")
    queue.push(b"b")
    first = Holding()
    broker.deliver(queue, 20, first, 0.0)  # a, deadline 0.02
    second = Holding()
    b_record = broker.deliver(queue, 15, second, 0.0)  # b, deadline 0.015
    broker.release_all(first, 0.0)  # a back at the front; its (0.02, a) heap entry stays behind
    third = Holding()
    record = broker.deliver(queue, 10, third, 0.01)  # a again: 0.01 + 0.01 == 0.02 exactly
    assert record is not None and record.data == b"a"
    assert 0.01 + 10 / 1000 == 0.02  # the new deadline equals the stale entry's exactly
    assert sorted(deadline for deadline, _, _ in broker._deadlines) == [0.015, 0.02, 0.02]
    assert b_record is not None
    # Today: expire collects a twice and requeue raises TypeError on the second copy,
    # after which b (earlier in the due list) is never requeued: stuck in flight for good.
    assert broker.expire(1.0) == 2
    assert [r.data for r in queue.returned] == [b"b", b"a"]
    assert second == {} and third == {}
    assert_consistent(broker, second, third)


def test_equal_deadlines_come_back_in_read_order() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    one = Holding()
    two = Holding()
    broker.deliver(queue, 0, one, 0.0)  # a
    broker.deliver(queue, 0, two, 0.0)  # b
    broker.release_all(one, 0.0)  # queue: a c
    broker.release_all(two, 0.0)  # queue: b a c (the newest return is the front)
    reader = Holding()
    # One batch (one `now`), one timeout: b then a are read, with equal deadlines.
    got = [broker.deliver(queue, 50, reader, 1.0) for _ in range(2)]
    assert [r.data for r in got] == [b"b", b"a"]  # type: ignore[union-attr]
    assert broker.expire(2.0) == 2
    assert [r.data for r in drain(broker, queue)] == [b"b", b"a", b"c"]


# --- release on disconnect ------------------------------------------------------------


def test_release_all_requeues_at_the_front_in_read_order() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c", b"d"):
        queue.push(data)
    held = Holding()
    a = broker.deliver(queue, 0, held, 0.0)
    b = broker.deliver(queue, 5000, held, 0.0)  # timed and untimed alike
    c = broker.deliver(queue, 0, held, 0.0)
    assert broker.confirm(b.id, held_by(broker, b.id)) == Outcome.DONE  # type: ignore[union-attr]
    assert broker.release_all(held, 0.0) == 2
    assert held == {}
    assert broker._timed == 0
    assert broker.confirm(a.id, held_by(broker, a.id)) == Outcome.REQUEUED  # type: ignore[union-attr]
    again = drain(broker, queue, now=1.0)
    assert [r.data for r in again] == [b"a", b"c", b"d"]
    assert [r.deliveries for r in again] == [2, 2, 1]
    assert again[1] is c
    assert broker.expire(100.0) == 0  # b's and the released messages' deadlines are all stale


def test_release_all_across_queues_and_empty() -> None:
    broker = Broker()
    x = broker.create_queue(b"x")
    y = broker.create_queue(b"y")
    x.push(b"x1")
    y.push(b"y1")
    x.push(b"x2")
    held = Holding()
    assert broker.release_all(held, 0.0) == 0
    for queue in (x, y, x):
        broker.deliver(queue, 0, held, 0.0)
    assert broker.release_all(held, 0.0) == 3
    assert [r.data for r in x.returned] == [b"x1", b"x2"]
    assert [r.data for r in y.returned] == [b"y1"]
    assert x.count == 2 and y.count == 1


# --- delete_queue ---------------------------------------------------------------------


def test_delete_queue_with_messages_in_flight_does_not_leak() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c", b"d", b"e"):
        queue.push(data)
    timed = Holding()
    untimed = Holding()
    gone = Holding()
    a = broker.deliver(queue, 10, timed, 0.0)
    b = broker.deliver(queue, 0, untimed, 0.0)
    c = broker.deliver(queue, 0, untimed, 0.0)
    d = broker.deliver(queue, 0, gone, 0.0)
    broker.release_all(gone, 0.0)  # d waits in `returned`
    assert len(broker.entries()) == 4

    assert broker.delete_queue(b"q") is True
    assert b"q" not in broker.queues
    assert broker.delete_queue(b"q") is False
    assert d.id not in broker.entries()  # type: ignore[union-attr]  # a returned record goes at once

    assert broker.confirm(b.id, held_by(broker, b.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]
    assert broker.confirm(b.id, held_by(broker, b.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]
    assert broker.confirm(d.id, held_by(broker, d.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]
    assert broker.expire(1.0) == 0  # a's expiry drops it instead of requeueing
    assert broker.release_all(untimed, 0.0) == 0  # c's release drops it too
    assert broker.entries() == {}
    assert timed == {} and untimed == {}
    assert broker._timed == 0
    assert broker.confirm(a.id, held_by(broker, a.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]
    assert broker.confirm(c.id, held_by(broker, c.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]


def test_recreated_queue_starts_empty_and_old_records_stay_dead() -> None:
    broker, queue = make()
    queue.push(b"old")
    queue.push(b"old2")
    held = Holding()
    old = broker.deliver(queue, 0, held, 0.0)
    broker.delete_queue(b"q")
    fresh = broker.create_queue(b"q")
    assert fresh is not queue
    assert fresh.count == 0 and fresh.ready == 0
    assert broker.confirm(old.id, held_by(broker, old.id)) == Outcome.NO_SUCH_MESSAGE  # type: ignore[union-attr]
    assert fresh.count == 0
    fresh.push(b"new")
    assert broker.release_all(held, 0.0) == 0
    assert [r.data for r in drain(broker, fresh)] == [b"new"]


# --- the deadline heap ----------------------------------------------------------------


def test_deadline_heap_stays_bounded() -> None:
    broker, queue = make()
    in_flight: list[Record] = []
    held = Holding()
    worst = 0
    now = 0.0
    for i in range(100_000):
        now += 0.0001
        queue.push(b"x")
        in_flight.append(broker.deliver(queue, 1000 + i % 7, held, now))  # type: ignore[arg-type]
        if len(in_flight) > 100:
            assert broker.confirm(in_flight.pop(0).id, held) == Outcome.DONE
        worst = max(worst, len(broker._deadlines) - 2 * len(in_flight))
    assert worst <= 1024 + 2
    assert len(broker._deadlines) <= 2 * len(in_flight) + 1024 + 2
    assert broker._timed == len(in_flight) == len(held)
    assert queue.count == len(in_flight)


def test_deadline_heap_compacts_after_disconnects() -> None:
    broker, queue = make()
    for round_ in range(50):
        held = Holding()
        for _ in range(100):
            queue.push(b"x")
            broker.deliver(queue, 60_000, held, float(round_))
        broker.release_all(held, float(round_))
        drain(broker, queue)  # untimed reads: nothing new in the heap
        for record in list(broker.entries().values()):
            broker.confirm(record.id, held_by(broker, record.id))
    assert broker.entries() == {}
    assert broker._timed == 0
    assert len(broker._deadlines) <= 1024 + 100

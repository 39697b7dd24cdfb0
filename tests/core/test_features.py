"""Broker features with a fake clock: waiting reads, batches, delays, touch/release,
dead-letter queues, purge and the stats counters.

``now`` is a plain float the test chooses; nothing here sleeps. A waiting read's
answer is whatever the broker hands its ``wake`` callback: a list of records
(empty when the wait ran out) or None when its queue was deleted.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from holders import held_by

from dbqueue.core import Broker, Entry, Holding, Outcome, Queue, Record, columns
from dbqueue.errors import InvalidRequest, NoSuchQueue


class Wakes:
    """A ``wake`` callback that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[list[Record] | None] = []

    def __call__(self, records: list[Record] | None) -> None:
        self.calls.append(records)

    @property
    def data(self) -> list[list[bytes] | None]:
        return [None if call is None else columns(call)[2] for call in self.calls]


def make(capacity: int = 0, **broker_kwargs: Any) -> tuple[Broker, Queue]:
    broker = Broker(**broker_kwargs)
    return broker, broker.create_queue(b"q", capacity)


def read_all(broker: Broker, queue: Queue, now: float, timeout_ms: int = 0) -> list[Record]:
    held = Holding()
    out = []
    while (record := broker.deliver(queue, timeout_ms, held, now)) is not None:
        out.append(record)
    return out


def ids_of(entries: list[Entry]) -> list[int]:
    return columns(entries)[0]


def payloads_of(entries: list[Entry]) -> list[bytes]:
    return columns(entries)[2]


def assert_counts(queue: Queue, ready: int, in_flight: int, delayed: int) -> None:
    assert (queue.ready, queue.in_flight, queue.delayed) == (ready, in_flight, delayed)
    assert queue.count == ready + in_flight + delayed


# --- waiting reads ----------------------------------------------------------------------


def test_a_waiting_read_wakes_on_enqueue_with_its_timeout() -> None:
    broker, queue = make()
    held = Holding()
    wakes = Wakes()
    waiter = broker.wait(queue, held, 5_000, 1, 1_000, 1.0, wakes)
    assert (queue.waiting, broker._waiting, waiter.active) == (1, 1, True)
    assert wakes.calls == []
    id_ = broker.enqueue(queue, b"a", 1.5)
    assert wakes.data == [[b"a"]]
    (record,) = wakes.calls[0]  # type: ignore[misc]
    assert (record.id, record.deliveries) == (id_, 1)
    assert held == {id_: record} and record.held is held
    assert (queue.waiting, broker._waiting, waiter.active) == (0, 0, False)
    assert_counts(queue, ready=0, in_flight=1, delayed=0)
    assert broker.expire(2.0) == 0  # the wait's own end passes: no second answer
    assert len(wakes.calls) == 1
    assert broker.expire(6.499) == 0  # its timeout runs from the wake, not from the wait
    assert broker.expire(6.5) == 1
    assert_counts(queue, ready=1, in_flight=0, delayed=0)


def test_waiters_are_served_oldest_first_and_each_takes_up_to_its_batch() -> None:
    broker, queue = make()
    first, second, third = Wakes(), Wakes(), Wakes()
    broker.wait(queue, Holding(), 0, 2, 1_000, 0.0, first)
    broker.wait(queue, Holding(), 0, 1, 1_000, 0.0, second)
    broker.wait(queue, Holding(), 0, 5, 1_000, 0.0, third)
    assert broker.enqueue(queue, b"a", 0.1) > 0
    assert (first.data, second.data, third.data) == ([[b"a"]], [], [])  # one ready message: one waiter
    ids = broker.enqueue_batch(queue, [b"b", b"c", b"d"], 0.2)
    assert ids is not None
    # One batch: the second waiter takes one, the third the rest.
    assert (second.data, third.data) == ([[b"b"]], [[b"c", b"d"]])
    assert queue.waiting == 0 and queue.ready == 0
    assert broker.enqueue(queue, b"e", 0.3) > 0
    assert queue.ready == 1  # nobody waits any more
    assert [len(w.calls) for w in (first, second, third)] == [1, 1, 1]


def test_a_waiting_read_wakes_when_a_timed_out_message_comes_back() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert record is not None
    wakes = Wakes()
    reader = Holding()
    broker.wait(queue, reader, 0, 1, 1_000, 0.001, wakes)
    assert broker.expire(0.005) == 0 and wakes.calls == []
    assert broker.expire(0.010) == 1
    assert wakes.calls == [[record]]
    assert record.deliveries == 2 and record.held is reader
    assert_counts(queue, ready=0, in_flight=1, delayed=0)


def test_a_waiting_read_wakes_when_a_delay_ends() -> None:
    broker, queue = make()
    id_ = broker.enqueue_delayed(queue, b"later", 100, 1.0)
    wakes = Wakes()
    broker.wait(queue, Holding(), 0, 1, 1_000, 1.0, wakes)
    assert broker.next_deadline() == pytest.approx(1.1)
    broker.expire(1.099)
    assert wakes.calls == []
    broker.expire(1.1)
    assert wakes.data == [[b"later"]]
    assert wakes.calls[0][0].id == id_  # type: ignore[index]
    assert_counts(queue, ready=0, in_flight=1, delayed=0)


def test_a_waiting_read_wakes_on_release_and_on_a_disconnect() -> None:
    broker, queue = make()
    queue.push(b"a")
    queue.push(b"b")
    holder = Holding()
    a = broker.deliver(queue, 0, holder, 0.0)
    b = broker.deliver(queue, 0, holder, 0.0)
    assert a is not None and b is not None
    released, disconnected = Wakes(), Wakes()
    broker.wait(queue, Holding(), 0, 1, 1_000, 0.0, released)
    broker.wait(queue, Holding(), 0, 5, 1_000, 0.0, disconnected)
    assert broker.release(b.id, 0, 0.1, held_by(broker, b.id)) == Outcome.DONE
    assert released.calls == [[b]] and disconnected.calls == []
    assert broker.release_all(holder, 0.2) == 1
    assert disconnected.calls == [[a]]
    assert (a.deliveries, b.deliveries) == (2, 2)


def test_a_waiting_read_wakes_after_a_delayed_release() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 0, Holding(), 0.0)
    assert record is not None
    wakes = Wakes()
    broker.wait(queue, Holding(), 0, 1, 1_000, 0.0, wakes)
    assert broker.release(record.id, 50, 0.0, held_by(broker, record.id)) == Outcome.DONE
    assert wakes.calls == []  # not before its delay
    assert_counts(queue, ready=0, in_flight=0, delayed=1)
    broker.expire(0.049)
    assert wakes.calls == []
    broker.expire(0.05)
    assert wakes.calls == [[record]]


def test_a_wait_that_runs_out_wakes_with_an_empty_list() -> None:
    broker, queue = make()
    wakes = Wakes()
    waiter = broker.wait(queue, Holding(), 0, 1, 50, 1.0, wakes)
    assert broker.next_deadline() == pytest.approx(1.05)
    broker.expire(1.049)
    assert wakes.calls == []
    broker.expire(1.05)
    assert wakes.calls == [[]]
    assert not waiter.active and queue.waiting == 0 and broker._waiting == 0
    broker.enqueue(queue, b"a", 1.1)  # the retired waiter takes nothing
    assert wakes.calls == [[]]
    assert queue.ready == 1
    broker.expire(10.0)
    assert wakes.calls == [[]]


def test_deleting_a_queue_wakes_its_waiters_with_none() -> None:
    broker, queue = make()
    one, two = Wakes(), Wakes()
    broker.wait(queue, Holding(), 0, 1, 1_000, 0.0, one)
    broker.wait(queue, Holding(), 0, 3, 1_000, 0.0, two)
    other = broker.create_queue(b"other")
    bystander = Wakes()
    broker.wait(other, Holding(), 0, 1, 1_000, 0.0, bystander)
    assert broker.delete_queue(b"q") is True
    assert (one.calls, two.calls, bystander.calls) == ([None], [None], [])
    assert queue.waiting == 0 and broker._waiting == 1
    broker.expire(2.0)  # their wait ends pass: nothing more
    assert (one.calls, two.calls, bystander.calls) == ([None], [None], [[]])
    assert broker._waiting == 0


def test_cancel_wait_retires_a_waiter_once() -> None:
    broker, queue = make()
    wakes = Wakes()
    waiter = broker.wait(queue, Holding(), 0, 1, 1_000, 0.0, wakes)
    broker.cancel_wait(waiter)
    broker.cancel_wait(waiter)  # twice is harmless: the counts do not go negative
    assert (queue.waiting, broker._waiting, waiter.active) == (0, 0, False)
    assert broker.enqueue(queue, b"a", 0.1) > 0
    assert queue.ready == 1
    broker.expire(5.0)
    assert wakes.calls == []


def test_retired_waiters_do_not_pile_up_after_many_wait_and_expire_cycles() -> None:
    broker, queue = make()
    steady = Wakes()
    for _ in range(3):  # a few long waits stay live throughout
        broker.wait(queue, Holding(), 0, 1, 10**9, 0.0, steady)
    now = 0.0
    worst_waiters = worst_waits = 0
    for _ in range(5_000):
        broker.wait(queue, Holding(), 0, 1, 10, now, Wakes())
        now += 0.01
        broker.expire(now)
        worst_waiters = max(worst_waiters, len(queue.waiters))
        worst_waits = max(worst_waits, len(broker._waits))
    assert queue.waiting == broker._waiting == 3
    assert worst_waiters <= 2 * 3 + 16 + 1
    assert worst_waits <= 3 + 2
    assert steady.calls == []


def test_cancelled_waiters_do_not_pile_up() -> None:
    """Connections that close while waiting: their long waits never expire, yet the heap stays bounded."""
    broker, queue = make()
    worst_waiters = worst_waits = 0
    for i in range(5_000):
        waiter = broker.wait(queue, Holding(), 0, 1, 60_000, i * 0.001, Wakes())
        broker.cancel_wait(waiter)
        worst_waiters = max(worst_waiters, len(queue.waiters))
        worst_waits = max(worst_waits, len(broker._waits))
    assert queue.waiting == broker._waiting == 0
    assert worst_waiters <= 16 + 1
    assert worst_waits <= 1024 + 1
    assert broker.enqueue(queue, b"a", 5.0) > 0
    assert queue.ready == 1  # none of the retired waiters took it


# --- batches ----------------------------------------------------------------------------


def test_enqueue_batch_is_all_or_nothing_against_capacity() -> None:
    broker, queue = make(capacity=4)
    queue.push(b"a")
    broker.enqueue_delayed(queue, b"d", 1_000, 0.0)  # delayed messages count too
    assert broker.deliver(queue, 0, Holding(), 0.0) is not None  # and so do in-flight ones
    assert broker.enqueue_batch(queue, [b"x", b"y", b"z"], 0.0) is None
    assert (queue.count, queue.enqueued) == (2, 2)  # none of them went in
    ids = broker.enqueue_batch(queue, [b"x", b"y"], 0.0)
    assert ids is not None and len(set(ids)) == 2
    assert (queue.count, queue.enqueued) == (4, 4)
    assert broker.enqueue_batch(queue, [b"w"], 0.0) is None
    assert [(r.id, r.data) for r in read_all(broker, queue, 0.0)] == list(zip(ids, [b"x", b"y"]))


def test_deliver_many_takes_at_most_max_messages_in_order() -> None:
    broker, queue = make()
    ids = broker.enqueue_batch(queue, [b"%d" % i for i in range(10)], 0.0)
    held = Holding()
    got = broker.deliver_many(queue, 4, 100, held, 0.0)
    assert ids_of(got) == ids[:4]  # type: ignore[index]
    assert held.ids() == ids[:4]  # type: ignore[index]
    assert ids_of(broker.deliver_many(queue, 100, 0, held, 0.0)) == ids[4:]  # type: ignore[index]
    assert broker.deliver_many(queue, 5, 0, held, 0.0) == []
    assert broker.expire(0.0999) == 0
    assert broker.expire(0.1) == 4  # the timed four, not the untimed six
    assert [r.id for r in read_all(broker, queue, 0.2)] == ids[:4]  # type: ignore[index]


def test_deliver_many_always_takes_one_message_even_past_the_byte_limit() -> None:
    broker, queue = make(max_batch_bytes=10)
    queue.push(b"x" * 25)
    queue.push(b"y")
    got = broker.deliver_many(queue, 10, 0, Holding(), 0.0)
    assert payloads_of(got) == [b"x" * 25]
    assert payloads_of(broker.deliver_many(queue, 10, 0, Holding(), 0.0)) == [b"y"]


def test_deliver_many_stops_when_the_bytes_reach_the_limit() -> None:
    # Each entry costs its payload plus 16 bytes (id, deliveries, length) of the reply.
    broker, queue = make(max_batch_bytes=52)
    for data in (b"aaaa", b"bbbbbb", b"c", b"d"):
        queue.push(data)
    got = broker.deliver_many(queue, 10, 0, Holding(), 0.0)
    assert payloads_of(got) == [b"aaaa", b"bbbbbb"]  # 20 + 22 bytes; b"c" would make 59
    assert payloads_of(broker.deliver_many(queue, 10, 0, Holding(), 0.0)) == [b"c", b"d"]


def test_deliver_many_never_passes_the_byte_limit_with_more_than_one_message() -> None:
    broker, queue = make(max_batch_bytes=10)
    queue.push(b"a" * 9)
    queue.push(b"b" * 10)
    got = payloads_of(broker.deliver_many(queue, 10, 0, Holding(), 0.0))
    assert sum(map(len, got)) <= 10
    assert got == [b"a" * 9]


# --- delays ------------------------------------------------------------------------------


def test_a_delayed_message_is_ready_only_after_its_delay_and_joins_the_back() -> None:
    broker, queue = make()
    queue.push(b"a")
    id_ = broker.enqueue_delayed(queue, b"later", 100, 1.0)
    queue.push(b"b")
    assert_counts(queue, ready=2, in_flight=0, delayed=1)
    assert queue.enqueued == 3
    assert [r.data for r in read_all(broker, queue, 1.05)] == [b"a", b"b"]
    broker.expire(1.099)
    assert broker.deliver(queue, 0, Holding(), 1.099) is None
    queue.push(b"c")  # sent before the delay ends: ahead of it
    broker.expire(1.1)
    assert_counts(queue, ready=2, in_flight=2, delayed=0)
    queue.push(b"d")  # sent after: behind it
    got = read_all(broker, queue, 1.2)
    assert [r.data for r in got] == [b"c", b"later", b"d"]
    assert got[1].id == id_ and got[1].deliveries == 1


def test_a_requeued_message_goes_ahead_of_a_delayed_one_that_became_ready() -> None:
    broker, queue = make()
    queue.push(b"a")
    broker.enqueue_delayed(queue, b"later", 10, 0.0)
    a = broker.deliver(queue, 20, Holding(), 0.0)
    assert a is not None
    broker.expire(0.01)  # "later" becomes ready
    broker.expire(0.02)  # a times out: to the front
    assert [r.data for r in read_all(broker, queue, 0.03)] == [b"a", b"later"]


def test_ids_of_delayed_messages_are_unique() -> None:
    broker, queue = make()
    other = broker.create_queue(b"other")
    ids = [queue.push(b"x"), broker.enqueue_delayed(queue, b"d", 5, 0.0), other.push(b"y")]
    ids += [broker.enqueue_delayed(other, b"e", 5, 0.0), queue.push(b"z")]
    assert len(set(ids)) == len(ids)


def test_enqueue_delayed_respects_capacity() -> None:
    broker, queue = make(capacity=1)
    assert broker.enqueue_delayed(queue, b"d", 5, 0.0) > 0
    assert broker.enqueue_delayed(queue, b"e", 5, 0.0) == -1
    assert queue.push(b"x") == -1  # the delayed one holds the only place
    assert queue.count == 1 and queue.enqueued == 1


# --- touch and release -----------------------------------------------------------------


def test_touch_moves_the_deadline_from_now() -> None:
    broker, queue = make()
    queue.push(b"a")
    held = Holding()
    record = broker.deliver(queue, 100, held, 0.0)
    assert record is not None
    assert broker.touch(record.id, 500, 0.05, held_by(broker, record.id)) == Outcome.DONE
    assert broker._timed == 1
    assert broker.expire(0.1) == 0  # the old deadline is stale
    assert record.held is held
    assert broker.expire(0.549) == 0
    assert broker.expire(0.55) == 1
    assert record.held is None and broker._timed == 0


def test_touch_with_zero_removes_the_timeout_and_a_later_touch_restores_one() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 100, Holding(), 0.0)
    assert record is not None
    assert broker.touch(record.id, 0, 0.05, held_by(broker, record.id)) == Outcome.DONE
    assert broker._timed == 0
    assert broker.expire(100.0) == 0
    assert broker.touch(record.id, 10, 200.0, held_by(broker, record.id)) == Outcome.DONE
    assert broker._timed == 1
    assert broker.expire(200.01) == 1


def test_touch_outcomes() -> None:
    broker, queue = make()
    queue.push(b"a")
    unread = queue.push(b"b")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert record is not None
    assert broker.expire(0.01) == 1
    assert (
        broker.touch(record.id, 1_000, 0.02, held_by(broker, record.id)) == Outcome.REQUEUED
    )  # it came back: too late
    assert broker.touch(10**9, 1_000, 0.02, held_by(broker, 10**9)) == Outcome.NO_SUCH_MESSAGE
    assert broker.touch(unread, 1_000, 0.02, held_by(broker, unread)) == Outcome.NO_SUCH_MESSAGE  # queued, never read
    assert broker.deliver(queue, 0, Holding(), 0.02) is record
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.DONE
    assert broker.touch(record.id, 1_000, 0.03, held_by(broker, record.id)) == Outcome.NO_SUCH_MESSAGE  # confirmed
    assert broker._timed == 0


@pytest.mark.parametrize("after_delay", [False, True], ids=["delayed", "ready-after-delay"])
def test_settling_a_delayed_message_that_was_never_read_is_no_such_message(after_delay: bool) -> None:
    broker, queue = make()
    fresh = queue.push(b"fresh")
    delayed = broker.enqueue_delayed(queue, b"later", 10, 1.0)
    if after_delay:
        broker.expire(1.01)
        assert queue.ready == 2
    assert broker.confirm(fresh, held_by(broker, fresh)) == Outcome.NO_SUCH_MESSAGE
    assert broker.touch(fresh, 10, 1.02, held_by(broker, fresh)) == Outcome.NO_SUCH_MESSAGE
    assert broker.release(fresh, 0, 1.02, held_by(broker, fresh)) == Outcome.NO_SUCH_MESSAGE
    assert broker.confirm(delayed, held_by(broker, delayed)) == Outcome.NO_SUCH_MESSAGE
    assert broker.touch(delayed, 10, 1.02, held_by(broker, delayed)) == Outcome.NO_SUCH_MESSAGE
    assert broker.release(delayed, 0, 1.02, held_by(broker, delayed)) == Outcome.NO_SUCH_MESSAGE


def test_release_now_goes_to_the_front() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    held = Holding()
    a = broker.deliver(queue, 50, held, 0.0)
    b = broker.deliver(queue, 50, held, 0.0)
    assert a is not None and b is not None
    assert broker.release(b.id, 0, 0.01, held_by(broker, b.id)) == Outcome.DONE
    assert held == {a.id: a} and b.held is None
    assert broker._timed == 1 and queue.requeued == 1
    assert broker.expire(0.05) == 1  # only a's deadline fires; b's is stale
    got = read_all(broker, queue, 0.06)
    assert [(r.data, r.deliveries) for r in got] == [(b"a", 2), (b"b", 2), (b"c", 1)]


def test_release_with_a_delay_goes_to_the_back_after_it() -> None:
    broker, queue = make()
    for data in (b"a", b"b"):
        queue.push(data)
    a = broker.deliver(queue, 0, Holding(), 0.0)
    assert a is not None
    assert broker.release(a.id, 100, 1.0, held_by(broker, a.id)) == Outcome.DONE
    assert_counts(queue, ready=1, in_flight=0, delayed=1)
    assert broker.confirm(a.id, held_by(broker, a.id)) == Outcome.REQUEUED  # not in flight any more
    queue.push(b"c")
    assert broker.expire(1.099) == 0
    assert [r.data for r in read_all(broker, queue, 1.099)] == [b"b", b"c"]
    broker.expire(1.1)
    queue.push(b"d")
    got = read_all(broker, queue, 1.2)
    assert [(r.data, r.deliveries) for r in got] == [(b"a", 2), (b"d", 1)]


def test_release_outcomes() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert record is not None
    assert broker.release(10**9, 0, 0.0, held_by(broker, 10**9)) == Outcome.NO_SUCH_MESSAGE
    broker.expire(0.01)
    assert broker.release(record.id, 0, 0.02, held_by(broker, record.id)) == Outcome.REQUEUED
    assert broker.release(record.id, 50, 0.02, held_by(broker, record.id)) == Outcome.REQUEUED
    assert_counts(queue, ready=1, in_flight=0, delayed=0)
    again = broker.deliver(queue, 0, Holding(), 0.03)
    assert again is record
    assert broker.confirm(record.id, held_by(broker, record.id)) == Outcome.DONE
    assert broker.release(record.id, 0, 0.04, held_by(broker, record.id)) == Outcome.NO_SUCH_MESSAGE


def test_touch_and_release_of_a_deleted_queues_message() -> None:
    broker, queue = make()
    queue.push(b"a")
    record = broker.deliver(queue, 0, Holding(), 0.0)
    assert record is not None
    broker.delete_queue(b"q")
    assert broker.touch(record.id, 10, 0.0, held_by(broker, record.id)) == Outcome.NO_SUCH_MESSAGE
    assert broker.release(record.id, 0, 0.0, held_by(broker, record.id)) == Outcome.NO_SUCH_MESSAGE


# --- dead-letter queues ---------------------------------------------------------------


def test_max_deliveries_moves_a_message_to_its_dead_letter_queue() -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 2, b"dlq")
    id_ = queue.push(b"payload")
    first = broker.deliver(queue, 10, Holding(), 0.0)
    assert broker.expire(0.01) == 1  # the first failure: back to the front
    second = broker.deliver(queue, 10, Holding(), 0.02)
    assert first is second and second is not None and second.deliveries == 2
    assert broker.expire(0.03) == 0  # the second: to the dead-letter queue, not back
    assert_counts(queue, ready=0, in_flight=0, delayed=0)
    assert (queue.dead_lettered, queue.requeued, dlq.enqueued) == (1, 1, 1)
    assert id_ not in broker.entries()
    assert broker.confirm(id_, held_by(broker, id_)) == Outcome.NO_SUCH_MESSAGE
    (moved,) = read_all(broker, dlq, 0.04)
    assert moved.data == b"payload" and moved.deliveries == 1
    assert moved.id != id_


@pytest.mark.parametrize("how", ["release", "delayed release", "disconnect", "timeout"])
def test_every_way_back_counts_towards_max_deliveries(how: str) -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    queue.push(b"x")
    held = Holding()
    record = broker.deliver(queue, 10, held, 0.0)
    assert record is not None
    if how == "release":
        assert broker.release(record.id, 0, 0.001, held_by(broker, record.id)) == Outcome.DONE
    elif how == "delayed release":
        assert broker.release(record.id, 500, 0.001, held_by(broker, record.id)) == Outcome.DONE
    elif how == "disconnect":
        assert broker.release_all(held, 0.001) == 0  # none went back to q
    else:
        assert broker.expire(0.01) == 0
    assert held == {}
    assert_counts(queue, ready=0, in_flight=0, delayed=0)
    assert [r.data for r in read_all(broker, dlq, 0.02)] == [b"x"]
    broker.expire(1.0)
    assert queue.count == 0 and broker.deliver(queue, 0, Holding(), 1.0) is None


@pytest.mark.parametrize("how", ["timeout", "disconnect"])
def test_messages_that_fail_together_reach_the_dead_letter_queue_in_order(how: str) -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    held = Holding()
    for _ in range(3):
        broker.deliver(queue, 10, held, 0.0)  # equal deadlines: they expire in read order
    if how == "timeout":
        broker.expire(0.01)
    else:
        broker.release_all(held, 0.001)
    assert [r.data for r in read_all(broker, dlq, 0.02)] == [b"a", b"b", b"c"]


def test_a_dead_lettered_message_wakes_a_read_waiting_on_the_dead_letter_queue() -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    queue.push(b"x")
    record = broker.deliver(queue, 0, Holding(), 0.0)
    assert record is not None
    wakes = Wakes()
    broker.wait(dlq, Holding(), 0, 1, 1_000, 0.0, wakes)
    broker.release(record.id, 0, 0.1, held_by(broker, record.id))
    assert wakes.data == [[b"x"]]


def test_without_a_dead_letter_queue_the_message_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    broker, queue = make()
    queue.max_deliveries = 1
    queue.push(b"x")
    queue.push(b"y")
    record = broker.deliver(queue, 10, Holding(), 0.0)
    assert record is not None
    with caplog.at_level(logging.WARNING, logger="dbqueue.server"):
        assert broker.expire(0.01) == 0
    assert "dropped" in caplog.text and str(record.id) in caplog.text
    assert queue.dead_lettered == 1 and record.id not in broker.entries()
    assert [r.data for r in read_all(broker, queue, 0.02)] == [b"y"]
    assert queue.count == 1


def test_a_full_dead_letter_queue_drops_the_message(caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq", 1)
    dlq.push(b"already")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    queue.push(b"x")
    record = broker.deliver(queue, 0, Holding(), 0.0)
    assert record is not None
    with caplog.at_level(logging.WARNING, logger="dbqueue.server"):
        assert broker.release(record.id, 0, 0.0, held_by(broker, record.id)) == Outcome.DONE
    assert "full" in caplog.text
    assert queue.count == 0 and queue.dead_lettered == 1 and record.id not in broker.entries()
    assert [r.data for r in read_all(broker, dlq, 0.0)] == [b"already"]


def test_a_deleted_dead_letter_queue_drops_the_message() -> None:
    broker = Broker()
    broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    queue.push(b"x")
    record = broker.deliver(queue, 0, Holding(), 0.0)
    assert record is not None
    broker.delete_queue(b"dlq")
    broker.release(record.id, 0, 0.0, held_by(broker, record.id))
    assert queue.count == 0 and queue.dead_lettered == 1 and broker.entries() == {}


def test_dead_letter_loops_are_refused() -> None:
    broker = Broker()
    with pytest.raises(InvalidRequest):
        broker.create_queue(b"a", 0, 1, b"a")  # itself
    assert b"a" not in broker.queues
    broker.create_queue(b"b")
    broker.create_queue(b"a", 0, 1, b"b")
    assert broker.delete_queue(b"b")
    with pytest.raises(InvalidRequest) as info:
        broker.create_queue(b"b", 0, 1, b"a")  # b -> a -> b
    assert "loop" in str(info.value)
    assert b"b" not in broker.queues
    broker.create_queue(b"c")
    broker.create_queue(b"b", 0, 1, b"c")
    assert broker.delete_queue(b"c")
    with pytest.raises(InvalidRequest):
        broker.create_queue(b"c", 0, 1, b"a")  # c -> a -> b -> c
    assert b"c" not in broker.queues
    assert broker.create_queue(b"c").dead_letter is None  # the refused options left nothing behind


def test_a_missing_dead_letter_queue_is_refused() -> None:
    broker = Broker()
    with pytest.raises(NoSuchQueue) as info:
        broker.create_queue(b"q", 0, 1, b"nowhere")
    assert "nowhere" in str(info.value)
    assert b"q" not in broker.queues


def test_a_dead_letter_chain_with_a_deleted_link_further_down_is_accepted() -> None:
    broker = Broker()
    broker.create_queue(b"b")
    broker.create_queue(b"a", 0, 1, b"b")
    broker.delete_queue(b"b")
    queue = broker.create_queue(b"c", 0, 1, b"a")  # c's own dead-letter queue exists
    assert queue.dead_letter == b"a"


def test_create_keeps_the_first_options() -> None:
    broker = Broker()
    broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 5, 2, b"dlq")
    assert broker.create_queue(b"q", 9, 7, None) is queue
    assert (queue.capacity, queue.max_deliveries, queue.dead_letter) == (5, 2, b"dlq")
    # An existing queue is returned as is, even when the new options would be refused.
    assert broker.create_queue(b"q", 0, 1, b"q") is queue


# --- purge --------------------------------------------------------------------------------


def test_purge_drops_ready_and_delayed_but_not_in_flight() -> None:
    broker, queue = make()
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    held = Holding()
    a = broker.deliver(queue, 100, held, 0.0)
    b = broker.deliver(queue, 0, held, 0.0)
    assert a is not None and b is not None
    broker.release(b.id, 0, 0.0, held_by(broker, b.id))  # b: ready again, as a record
    delayed = broker.enqueue_delayed(queue, b"d", 50, 0.0)
    c2 = broker.deliver(queue, 0, Holding(), 0.0)  # b
    assert c2 is b
    broker.release(b.id, 30, 0.0, held_by(broker, b.id))  # b: delayed by a release
    assert_counts(queue, ready=1, in_flight=1, delayed=2)
    assert broker.purge(queue) == 3
    assert_counts(queue, ready=0, in_flight=1, delayed=0)
    assert set(broker.entries()) == {a.id}
    assert broker.confirm(b.id, held_by(broker, b.id)) == Outcome.NO_SUCH_MESSAGE
    assert broker.confirm(delayed, held_by(broker, delayed)) == Outcome.NO_SUCH_MESSAGE
    broker.expire(0.06)  # the purged delays end: nothing comes back
    assert queue.ready == 0 and queue.count == 1
    assert broker.expire(0.1) == 1  # the in-flight one still times out
    assert_counts(queue, ready=1, in_flight=0, delayed=0)
    assert broker.purge(queue) == 1 and broker.entries() == {}
    assert broker.purge(queue) == 0
    new = queue.push(b"after")
    assert [r.id for r in read_all(broker, queue, 0.2)] == [new]


def test_purge_leaves_other_queues_alone() -> None:
    broker, queue = make()
    other = broker.create_queue(b"other")
    queue.push(b"a")
    other.push(b"b")
    broker.enqueue_delayed(other, b"c", 10, 0.0)
    assert broker.purge(queue) == 1
    broker.expire(0.01)
    assert [r.data for r in read_all(broker, other, 0.02)] == [b"b", b"c"]


# --- stats --------------------------------------------------------------------------------


def _without_protocol_3(stats: dict[str, object]) -> dict[str, object]:
    # The figures protocol 3 added (their own tests: tests/core/test_peek_move.py).
    return {key: value for key, value in stats.items() if key not in PROTOCOL_3_STATS}


PROTOCOL_3_STATS = {"moved", "visibility_timeout_ms", "oldest_ready_age_ms"}


def test_stats_counters_are_exact() -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 10, 2, b"dlq")
    for data in (b"a", b"b", b"c"):
        queue.push(data)
    broker.enqueue_batch(queue, [b"d", b"e"], 0.0)
    broker.enqueue_delayed(queue, b"f", 1_000, 0.0)
    held = Holding()
    a = broker.deliver(queue, 10, held, 0.0)
    b = broker.deliver(queue, 0, held, 0.0)
    assert a is not None and b is not None
    assert broker.confirm(b.id, held_by(broker, b.id)) == Outcome.DONE
    broker.expire(0.01)  # a: requeued once
    a = broker.deliver(queue, 0, held, 0.02)
    assert a is not None and a.deliveries == 2
    broker.release(a.id, 0, 0.03, held_by(broker, a.id))  # a: its second delivery is its last, to the dead-letter queue
    c = broker.deliver(queue, 0, held, 0.04)
    assert c is not None and c.data == b"c"
    waiting = broker.create_queue(b"w")
    broker.wait(waiting, Holding(), 0, 1, 1_000, 0.05, Wakes())
    broker.wait(waiting, Holding(), 0, 1, 1_000, 0.05, Wakes())
    assert _without_protocol_3(queue.stats()) == {
        "name": "q",
        "ready": 2,  # d, e
        "in_flight": 1,  # c
        "delayed": 1,  # f
        "capacity": 10,
        "max_deliveries": 2,
        "dead_letter_queue": "dlq",
        "enqueued": 6,
        "confirmed": 1,
        "requeued": 1,
        "dead_lettered": 1,
        "dropped": 0,
        "purged": 0,
        "consumers": 0,  # counted by the sessions, see the end-to-end tests
        "waiting": 0,
    }
    assert _without_protocol_3(dlq.stats()) == {
        "name": "dlq",
        "ready": 1,
        "in_flight": 0,
        "delayed": 0,
        "capacity": 0,
        "max_deliveries": 0,
        "dead_letter_queue": None,
        "enqueued": 1,
        "confirmed": 0,
        "requeued": 0,
        "dead_lettered": 0,
        "dropped": 0,
        "purged": 0,
        "consumers": 0,
        "waiting": 0,
    }
    assert waiting.stats()["waiting"] == 2
    broker.expire(1.05)  # the waits end, f becomes ready
    assert waiting.stats()["waiting"] == 0
    assert (queue.stats()["ready"], queue.stats()["delayed"]) == (3, 0)

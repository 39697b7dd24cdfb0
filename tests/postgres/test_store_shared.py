"""The store contract, run against both stores (SQLite and PostgreSQL): what `load` gives back after a
reopen, the buffer's cancellation rules, queue deletions and purges, delays and delivery counts, ids.

Each test is parametrized by `conftest.harness`: the same calls, the same assertions, two implementations.
"""

from __future__ import annotations

import random

import pg_fixtures
from pg_harness import Harness

from dbqueue.core import Snapshot, now_ms
from dbqueue.core.journal import Origin, StoredMessage

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
harness = pg_fixtures.harness
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url


def fields(messages: list[StoredMessage]) -> list[tuple[int, bytes, int, int]]:
    """(id, data, deliveries, due_ms) of each stored message."""
    return [message[:4] for message in messages]


def contents(snapshot: Snapshot) -> dict[bytes, list[int]]:
    """Queue name -> message ids, in order."""
    return {q.name: [m[0] for m in q.messages] for q in snapshot.queues}


def test_round_trip_of_queues_messages_and_order(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"jobs", capacity=10, max_deliveries=3, dead_letter=b"dead")
    store.create_queue(b"dead")
    store.create_queue(b"\x00\xffbinary")
    due = now_ms() + 60_000
    store.add(b"jobs", 70000, b"first")
    store.add(b"dead", 5, b"early id, added second")
    store.add(b"jobs", 3, b"low id, added third", due_ms=due)
    store.add(b"\x00\xffbinary", 9, b"")
    store.reserve_ids(1 << 17)
    store.commit()
    store.add(b"jobs", 70001, b"x" * 100_000)
    store.set_deliveries(70000, 2)
    store.commit()
    store.remove(70000)  # moved to the dead-letter queue: same id, at the end there
    store.add(b"dead", 70000, b"first", deliveries=3)
    store.commit()

    store = harness.reopen(store)
    snapshot = store.load()
    assert [(q.name, q.capacity, q.max_deliveries, q.dead_letter) for q in snapshot.queues] == [
        (b"jobs", 10, 3, b"dead"),
        (b"dead", 0, 0, None),
        (b"\x00\xffbinary", 0, 0, None),
    ]
    jobs, dead, binary = snapshot.queues
    assert fields(jobs.messages) == [(3, b"low id, added third", 0, due), (70001, b"x" * 100_000, 0, 0)]
    assert fields(dead.messages) == [(5, b"early id, added second", 0, 0), (70000, b"first", 3, 0)]
    assert fields(binary.messages) == [(9, b"", 0, 0)]
    assert snapshot.next_id >= 1 << 17
    store.close()


def test_uncommitted_changes_are_not_stored(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"q")
    store.add(b"q", 1, b"kept")
    store.commit()
    store.add(b"q", 2, b"never committed")
    assert store.pending() and not store.committed(2) and store.committed(1)
    store.discard()
    assert not store.pending()
    store = harness.reopen(store)
    assert contents(store.load()) == {b"q": [1]}
    store.close()


def test_add_and_remove_in_one_batch_cancel(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"q")
    store.commit()
    store.add(b"q", 1, b"a")
    store.remove(1)
    store.add_many(b"q", [2, 3, 4], [b"b", b"c", b"d"])
    store.remove_many([2, 3])
    store.commit()
    store.add_columns(b"q", 10, (1).to_bytes(4, "big") + (2).to_bytes(4, "big"), b"xyz")
    store.set_due(10, 123)
    store.set_deliveries(11, 4)
    store.commit()
    store = harness.reopen(store)
    assert fields(store.load().queues[0].messages) == [(4, b"d", 0, 0), (10, b"x", 0, 123), (11, b"yz", 4, 0)]
    store.close()


def test_delete_and_purge(harness: Harness) -> None:
    store = harness.open()
    for name in (b"a", b"b", b"c"):
        store.create_queue(name)
    store.add_many(b"a", [1, 2, 3], [b"1", b"2", b"3"])
    store.add_many(b"b", [4, 5, 6], [b"4", b"5", b"6"])
    store.add(b"c", 7, b"7")
    store.commit()
    store.add(b"a", 8, b"8")
    store.purge(b"a", keep=[2])  # the one in flight stays
    store.delete_queue(b"b")
    store.add(b"c", 9, b"9")
    store.commit()
    store.create_queue(b"b")  # a new queue of the same name starts empty
    store.commit()
    store = harness.reopen(store)
    assert contents(store.load()) == {b"a": [2], b"c": [7, 9], b"b": []}
    store.close()


def test_random_churn_matches_a_model(harness: Harness) -> None:
    rng = random.Random(7)
    store = harness.open()
    model: dict[bytes, list[int]] = {b"q0": [], b"q1": []}
    for name in model:
        store.create_queue(name)
    next_id = 1
    for _ in range(60):
        for _ in range(rng.randrange(1, 20)):
            action = rng.random()
            queue = rng.choice([b"q0", b"q1"])
            if action < 0.5:
                store.add(queue, next_id, next_id.to_bytes(8, "little"))
                model[queue].append(next_id)
                next_id += 1
            elif model[queue]:
                victim = rng.choice(model[queue])
                store.remove(victim)
                model[queue].remove(victim)
        store.commit()
    store = harness.reopen(store)
    assert contents(store.load()) == model
    store.close()


def test_ids_are_reserved_across_reopens(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"q")
    store.reserve_ids(5000)
    store.add(b"q", 1, b"x")
    store.commit()
    store.remove(1)
    store.commit()
    store = harness.reopen(store)
    assert store.load().next_id >= 5000
    store.close()


def test_enqueue_times_origins_visibility_timeouts_and_moves(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"jobs", 0, 2, b"dead", visibility_timeout_ms=45_000)
    store.create_queue(b"dead", visibility_timeout_ms=0xFFFFFFFF)
    store.create_queue(b"other")
    before = now_ms()
    store.add(b"jobs", 1, b"stamped by the store")
    store.add(b"jobs", 2, b"given", enqueued_ms=1_700_000_000_000)
    store.add_many(b"jobs", [3, 4], [b"a", b"b"], enqueued_ms=1_700_000_000_001)
    store.commit()
    after = now_ms()
    origin = Origin(b"jobs", 2, 1_700_000_000_000, 2)
    store.remove(2)
    store.add(b"dead", 100, b"given", deliveries=0, enqueued_ms=1_700_000_000_500, origin=origin)
    store.remove(3)  # moved: the same id, everything it carries, at the back of its new queue
    store.add(b"other", 3, b"a", enqueued_ms=1_700_000_000_001)
    store.commit()
    store = harness.reopen(store)
    jobs, dead, other = store.load().queues
    assert (jobs.visibility_timeout_ms, dead.visibility_timeout_ms, other.visibility_timeout_ms) == (
        45_000,
        0xFFFFFFFF,
        0,
    )
    assert [m[0] for m in jobs.messages] == [1, 4]
    # A message added without a time gets the store's stamp for its batch, a wall-clock reading of its own:
    # within the 10 ms to which enqueue times are kept (a CI run saw it 1 ms past this test's `after`).
    assert before - 10 <= jobs.enqueued_ms[0] <= after + 10 and jobs.enqueued_ms[1] == 1_700_000_000_001
    assert jobs.origins == {} and other.origins == {}
    assert dead.messages == [(100, b"given", 0, 0)]
    assert dead.enqueued_ms == [1_700_000_000_500] and dead.origins == {100: origin}
    assert other.messages == [(3, b"a", 0, 0)] and other.enqueued_ms == [1_700_000_000_001]
    store.close()

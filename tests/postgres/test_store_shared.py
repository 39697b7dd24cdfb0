"""The store contract, run against both stores (SQLite and PostgreSQL): what `load` gives back after a
reopen, the buffer's cancellation rules, queue deletions and purges, delays and delivery counts, ids, a
queue's settings changed while it lives and its annotations (`Journal.alter_queue`).

Each test is parametrized by `conftest.harness`: the same calls, the same assertions, two implementations.
"""

from __future__ import annotations

import random
from typing import Any

import pg_fixtures
import psycopg
from pg_harness import Harness

from dbqueue.core import Snapshot, now_ms
from dbqueue.core.journal import Origin, StoredMessage
from dbqueue.store.postgres import SCHEMA_VERSION, PostgresStore

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


def settings(store: Any) -> dict[bytes, tuple[int, int, bytes | None, int, bytes]]:
    """Queue name -> (capacity, max_deliveries, dead_letter, visibility_timeout_ms, annotations), as loaded."""
    return {
        q.name: (q.capacity, q.max_deliveries, q.dead_letter, q.visibility_timeout_ms, q.annotations)
        for q in store.load().queues
    }


def test_a_queue_changed_while_it_lives_is_restored_with_its_annotations(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"dead")
    store.create_queue(b"work", capacity=10, visibility_timeout_ms=5_000)
    store.add(b"work", 1, b"kept")
    store.commit()
    store.alter_queue(b"work", 3, b"dead", 0xFFFFFFFF, b'{"sqs":{}}')
    store.create_queue(b"new")  # created and changed twice in one batch: the last change holds
    store.alter_queue(b"new", 1, None, 100, b"first")
    store.alter_queue(b"new", 2, None, 200, b"second")
    store.commit()
    store = harness.reopen(store)
    assert settings(store) == {
        b"dead": (0, 0, None, 0, b""),
        b"work": (10, 3, b"dead", 0xFFFFFFFF, b'{"sqs":{}}'),  # the capacity stays as created
        b"new": (0, 2, None, 200, b"second"),
    }
    assert fields(store.load().queues[1].messages) == [(1, b"kept", 0, 0)]
    store.alter_queue(b"work", 0, None, 0, b"")  # taken away again
    store.commit()
    store = harness.reopen(store)
    assert settings(store)[b"work"] == (10, 0, None, 0, b"")
    store.close()


def test_a_deleted_queue_takes_its_settings_and_annotations_along(harness: Harness) -> None:
    store = harness.open()
    store.create_queue(b"a")
    store.create_queue(b"b")
    store.alter_queue(b"a", 2, None, 0, b"of a")
    store.alter_queue(b"b", 3, None, 0, b"of b")
    store.add(b"b", 1, b"m")
    store.commit()
    store.delete_queue(b"a")
    store.purge(b"b")  # a purge keeps them
    store.create_queue(b"gone")
    store.alter_queue(b"gone", 1, None, 0, b"never seen")
    store.delete_queue(b"gone")
    store.commit()
    store.create_queue(b"a")  # the same name again: a new queue, with nothing
    store.commit()
    store = harness.reopen(store)
    assert settings(store) == {b"b": (0, 3, None, 0, b"of b"), b"a": (0, 0, None, 0, b"")}
    assert contents(store.load()) == {b"b": [], b"a": []}
    store.close()


def test_a_database_of_the_previous_schema_is_upgraded_keeping_every_message(pg_url: str) -> None:
    # The previous version's tables: the current ones without the annotations column (all that version adds).
    store = PostgresStore.open(pg_url, part=0, address="127.0.0.1:1")
    store.create_queue(b"jobs", 10, 3, b"dead", 2_500)
    store.create_queue(b"dead")
    store.add(b"jobs", 7, b"seven", due_ms=99, deliveries=2, enqueued_ms=1_000)
    store.add_many(b"dead", [20, 21], [b"20", b"21"], enqueued_ms=2_000)
    store.commit()
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("ALTER TABLE dbqueue_queues DROP COLUMN annotations")
        con.execute("UPDATE dbqueue_meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION - 1,))
    store = PostgresStore.open(pg_url, part=0, address="127.0.0.1:1")
    snapshot = store.load()
    assert contents(snapshot) == {b"jobs": [7], b"dead": [20, 21]}
    assert fields(snapshot.queues[0].messages) == [(7, b"seven", 2, 99)]
    assert settings(store) == {b"jobs": (10, 3, b"dead", 2_500, b""), b"dead": (0, 0, None, 0, b"")}
    store.alter_queue(b"jobs", 1, None, 0, b"new")  # the upgraded tables take the new change
    store.commit()
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        row = con.execute("SELECT value FROM dbqueue_meta WHERE key = 'schema_version'").fetchone()
        assert row is not None and row[0] == SCHEMA_VERSION
    store = PostgresStore.open(pg_url, part=0, address="127.0.0.1:1")
    assert settings(store)[b"jobs"] == (10, 1, None, 0, b"new")
    store.close()

"""A live queue's settings changed (`Broker.alter_queue`) and its annotations kept (`Broker.annotate`), with a
fake clock: what changes at once, what the checks refuse, what the journal is told, what a restore gives back."""

from __future__ import annotations

from typing import Any

import pytest

from dbqueue.core import Broker, Holding, Snapshot, StoredQueue
from dbqueue.errors import InvalidRequest, NoSuchQueue
from dbqueue.protocol.frames import NEVER_MS


class Recorder:
    """A journal that keeps the calls it is told of, by method name (every other call is accepted and dropped)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args))

        return call

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]


def test_a_new_dead_letter_queue_and_limit_apply_to_the_next_return() -> None:
    broker = Broker()
    work = broker.create_queue(b"work")
    dead = broker.create_queue(b"dead")
    work.push(b"job")
    held = Holding()
    record = broker.deliver(work, 0, held, 0.0)
    assert record is not None
    broker.alter_queue(b"work", 1, b"dead", 0)
    assert (work.max_deliveries, work.dead_letter) == (1, b"dead")
    broker.release(record.id, 0, 0.0, held)  # delivered once, the new limit: dead-lettered
    assert (work.ready, dead.ready) == (0, 1)
    broker.alter_queue(b"work", 0, None, 0)  # and taken away again
    work.push(b"next")
    again = broker.deliver(work, 0, held, 0.0)
    assert again is not None
    broker.release(again.id, 0, 0.0, held)
    assert (work.ready, dead.ready, work.dead_letter) == (1, 1, None)


def test_a_default_visibility_timeout_changes_what_reads_that_name_none_get() -> None:
    broker = Broker(default_visibility_ms=30_000)
    queue = broker.create_queue(b"q", visibility_timeout_ms=5_000)
    assert queue.visibility_ms == 5_000
    broker.alter_queue(b"q", 0, None, NEVER_MS)
    assert queue.visibility_ms == NEVER_MS
    broker.alter_queue(b"q", 0, None, 0)  # the server's default again, and it follows the server's
    broker.default_visibility_ms = 45_000
    assert queue.visibility_ms == 45_000


def test_a_change_is_refused_as_a_creation_is_and_then_nothing_changes() -> None:
    broker = Broker()
    broker.create_queue(b"a")
    broker.create_queue(b"b", max_deliveries=2, dead_letter=b"a")
    with pytest.raises(NoSuchQueue):
        broker.alter_queue(b"missing", 1, None, 0)
    with pytest.raises(NoSuchQueue):
        broker.alter_queue(b"a", 1, b"missing", 0)
    with pytest.raises(InvalidRequest, match="loop"):
        broker.alter_queue(b"a", 3, b"b", 0)  # b -> a already: a -> b closes the loop
    with pytest.raises(InvalidRequest, match="loop"):
        broker.alter_queue(b"a", 3, b"a", 0)  # into itself
    a = broker.queues[b"a"]
    assert (a.max_deliveries, a.dead_letter) == (0, None)
    with pytest.raises(NoSuchQueue):
        broker.annotate(b"missing", b"x")


def test_annotations_are_kept_replaced_and_dropped_with_the_queue() -> None:
    broker = Broker()
    broker.create_queue(b"q")
    assert broker.annotations.get(b"q", b"") == b""
    broker.annotate(b"q", b'{"DelaySeconds":"5"}')
    broker.annotate(b"q", b'{"DelaySeconds":"6"}')
    assert broker.annotations[b"q"] == b'{"DelaySeconds":"6"}'
    broker.annotate(b"q", b"")
    assert b"q" not in broker.annotations
    broker.annotate(b"q", b"kept")
    broker.delete_queue(b"q")
    broker.create_queue(b"q")  # the same name again: a new queue, with nothing
    assert b"q" not in broker.annotations


def test_the_journal_is_told_every_setting_and_the_annotations_at_each_change() -> None:
    broker = Broker()
    journal = Recorder()
    broker.attach(journal)  # type: ignore[arg-type]  # records what a store would be told
    broker.create_queue(b"dead")
    broker.create_queue(b"q", visibility_timeout_ms=7_000)
    broker.annotate(b"q", b"notes")
    broker.alter_queue(b"q", 4, b"dead", 9_000)
    broker.annotate(b"q", b"")
    assert journal.named("alter_queue") == [
        (b"q", 0, None, 7_000, b"notes"),
        (b"q", 4, b"dead", 9_000, b"notes"),
        (b"q", 4, b"dead", 9_000, b""),
    ]


def test_a_limit_given_later_stores_the_delivery_counts_so_far() -> None:
    # Without a limit, delivery counts are not journaled; once a queue has one, a restart must see
    # the counts of messages delivered before it was given.
    broker = Broker()
    journal = Recorder()
    broker.attach(journal)  # type: ignore[arg-type]
    queue = broker.create_queue(b"q")
    queue.push(b"a")
    queue.push(b"b")
    held = Holding()
    first = broker.deliver(queue, 0, held, 0.0)
    assert first is not None
    broker.release(first.id, 0, 0.0, held)
    assert journal.named("set_deliveries") == []
    broker.alter_queue(b"q", 5, None, 0)
    assert journal.named("set_deliveries") == [(first.id, 1)]


def test_a_restore_gives_back_the_settings_and_annotations_stored() -> None:
    snapshot = Snapshot(
        queues=[
            StoredQueue(b"dead", 0, 0, None, []),
            StoredQueue(b"q", 0, 3, b"dead", [(1, b"m", 0, 0)], 2_000, annotations=b"attrs"),
        ],
        next_id=2,
    )
    broker = Broker()
    assert broker.restore(snapshot, 0.0) == 1
    q = broker.queues[b"q"]
    assert (q.max_deliveries, q.dead_letter, q.visibility_ms) == (3, b"dead", 2_000)
    assert broker.annotations == {b"q": b"attrs"}

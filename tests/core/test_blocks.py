"""Blocks: the one entry a batch read of fresh messages leaves in flight, with a fake clock.

A batch read hands two or more fresh consecutive messages out as one `Block`,
held under itself in the holder's `Holding`, found from any member id through
`Broker.blocks`, on one deadline. These tests settle members one at a time, several at
once, through touch, release, timeout and disconnect, and check that every
member is settled exactly once, in order, and that the block is forgotten
(counts, deadlines, records, journal) once its last member leaves.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from holders import held_by

from dbqueue.core import ID_BLOCK, Block, Broker, Entry, Holding, Outcome, Queue, Record, columns
from dbqueue.store.sqlite import Store

NO_SUCH = Outcome.NO_SUCH_MESSAGE


def make(capacity: int = 0, **broker_kwargs: Any) -> tuple[Broker, Queue]:
    broker = Broker(**broker_kwargs)
    return broker, broker.create_queue(b"q", capacity)


def ids_of(entries: list[Entry]) -> list[int]:
    return columns(entries)[0]


def payloads_of(entries: list[Entry]) -> list[bytes]:
    return columns(entries)[2]


def read_back(broker: Broker, queue: Queue, now: float) -> list[tuple[bytes, int]]:
    """Read every ready message in one batch (untimed, on a throwaway holder): (payload, deliveries) each."""
    _, deliveries, payloads = columns(broker.deliver_many(queue, 1_000, 0, Holding(), now))
    return list(zip(payloads, deliveries))


def assert_counts(queue: Queue, ready: int, in_flight: int, delayed: int) -> None:
    assert (queue.ready, queue.in_flight, queue.delayed) == (ready, in_flight, delayed)
    assert queue.count == ready + in_flight + delayed


def read_block(
    broker: Broker, queue: Queue, payloads: list[bytes], timeout_ms: int = 100, now: float = 0.0
) -> tuple[list[int], Block, Holding]:
    """Enqueue ``payloads`` and read them in one batch: (their ids, the block, its holder's dict)."""
    ids = broker.enqueue_batch(queue, payloads, now)
    assert ids is not None
    held = Holding()
    (block,) = broker.deliver_many(queue, len(payloads), timeout_ms, held, now)
    assert isinstance(block, Block)
    return ids, block, held


def assert_retired(block: Block) -> None:
    assert (block.live, block.lease, block.held, block.payloads) == (0, 0, None, [])


# --- reading --------------------------------------------------------------------------


def test_blocks_are_found_by_any_member_across_buckets() -> None:
    broker, queue = make()
    sizes = [2, 61, 64, 65, 3, 130, 2, 2]  # blocks that share a bucket of 64 ids, straddle one, span several
    blocks = [read_block(broker, queue, [b"x"] * size)[1] for size in sizes]
    for block in blocks:
        assert all(broker.blocks.find(id_) is block for id_ in range(block.first_id, block.end))
    assert list(broker.blocks) == blocks
    for block in blocks[::2]:
        assert broker.confirm_many(
            tuple(range(block.first_id, block.end)), held_by(broker, tuple(range(block.first_id, block.end)))
        ) == bytes(block.end - block.first_id)
    for block in blocks:
        expected = block if block.held is not None else None
        assert all(broker.blocks.find(id_) is expected for id_ in range(block.first_id, block.end))
    assert list(broker.blocks) == blocks[1::2]


def test_a_batch_of_fresh_messages_is_one_block_found_by_each_id() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b", b"c", b"d"])
    assert (block.first_id, block.payloads, block.live, block.deliveries) == (ids[0], [b"a", b"b", b"c", b"d"], 4, 1)
    assert block.held is held and block.queue is queue
    assert held.ids() == ids and list(held) == [block] and held.count == 4
    assert broker.entries() == dict.fromkeys(ids, block) and broker.records == {}
    found = [broker.blocks.find(id_) for id_ in (ids[0] - 1, *ids, ids[-1] + 1)]
    assert found == [None, block, block, block, block, None]
    assert columns([block]) == (ids, [1, 1, 1, 1], [b"a", b"b", b"c", b"d"])
    assert_counts(queue, ready=0, in_flight=4, delayed=0)
    assert broker._timed == 1 and block.lease != 0  # one deadline for the whole block


def test_an_untimed_block_has_no_deadline() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b"], timeout_ms=0)
    assert block.lease == 0 and broker._timed == 0
    assert broker.expire(1e9) == 0 and held.ids() == ids
    assert broker.confirm_many(tuple(ids), held_by(broker, tuple(ids))) == bytes(2)
    assert_retired(block)
    assert broker._timed == 0


@pytest.mark.parametrize("how", ["one ready", "max_messages 1", "byte limit"])
def test_a_batch_of_exactly_one_fresh_message_is_a_record(how: str) -> None:
    broker, queue = make(max_batch_bytes=40)
    queue.push(b"a" * 20)
    if how != "one ready":
        queue.push(b"b" * 20)  # 2 x (20 + 16) bytes do not fit in 40
    held = Holding()
    (record,) = broker.deliver_many(queue, 1 if how == "max_messages 1" else 10, 100, held, 0.0)
    assert record.__class__ is Record
    assert (record.data, record.deliveries, record.held) == (b"a" * 20, 1, held)  # type: ignore[union-attr]
    assert held == {record.id: record} and broker.entries() == {record.id: record}  # type: ignore[union-attr]
    assert broker._timed == 1
    assert broker.expire(0.1) == 1
    assert read_back(broker, queue, 0.2)[0] == (b"a" * 20, 2)


def test_redelivered_records_come_first_then_the_fresh_ones_as_a_block() -> None:
    broker, queue = make()
    a, b, c, d, e = ids = broker.enqueue_batch(queue, [b"a", b"b", b"c", b"d", b"e"], 0.0)  # type: ignore[misc]
    first = Holding()
    ra = broker.deliver(queue, 0, first, 0.0)
    rb = broker.deliver(queue, 0, first, 0.0)
    assert ra is not None and rb is not None
    broker.release(a, 0, 0.0, held_by(broker, a))
    broker.release(b, 0, 0.0, held_by(broker, b))  # each release goes to the front: b is now ahead of a
    held = Holding()
    got = broker.deliver_many(queue, 10, 100, held, 0.1)
    assert [entry.__class__ for entry in got] == [Record, Record, Block]
    assert got[:2] == [rb, ra]
    assert columns(got) == ([b, a, c, d, e], [2, 2, 1, 1, 1], [b"b", b"a", b"c", b"d", b"e"])
    assert held.ids() == [b, a, c, d, e] and sorted(broker.entries()) == ids
    assert broker._timed == 3  # two records and one block, all on the same lease
    assert broker.expire(0.2) == 5
    assert [data for data, _ in read_back(broker, queue, 0.3)] == [b"b", b"a", b"c", b"d", b"e"]  # read order


def test_a_waiting_read_is_woken_with_a_block() -> None:
    broker, queue = make()
    held = Holding()
    woken: list[list[Entry] | None] = []
    broker.wait(queue, held, 100, 5, 1_000, 0.0, woken.append)
    ids = broker.enqueue_batch(queue, [b"a", b"b", b"c"], 0.5)
    ((block,),) = woken  # type: ignore[misc]
    assert block.__class__ is Block and held.ids() == ids
    assert broker.expire(0.599) == 0
    assert broker.expire(0.6) == 3  # its deadline runs from the wake
    assert held == {} and broker._timed == 0


# --- confirming -----------------------------------------------------------------------


def test_confirm_many_of_the_whole_block_retires_it() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    assert broker.confirm_many(tuple(ids), held_by(broker, tuple(ids))) == bytes(3)  # all CONFIRMED
    assert broker.entries() == {} and held == {}
    assert_retired(block)
    assert queue.confirmed == 3 and broker._timed == 0
    assert_counts(queue, ready=0, in_flight=0, delayed=0)
    assert broker.expire(0.1) == 0 and queue.ready == 0  # its stale deadline brings nothing back
    assert broker.confirm_many(tuple(ids), held_by(broker, tuple(ids))) == bytes([NO_SUCH] * 3)
    assert queue.confirmed == 3


def test_confirming_every_member_one_by_one_retires_the_block_once() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    for left, id_ in zip((2, 1), ids):
        assert broker.confirm(id_, held_by(broker, id_)) == Outcome.DONE
        assert block.live == left and broker._timed == 1
    assert broker.confirm(ids[2], held_by(broker, ids[2])) == Outcome.DONE
    assert_retired(block)
    assert broker._timed == 0 and broker.entries() == {} and held == {}
    assert broker.confirm(ids[2], held_by(broker, ids[2])) == NO_SUCH
    assert queue.confirmed == 3 and queue.count == 0


@pytest.mark.parametrize("how", ["confirm", "confirm_many"])
def test_after_a_partial_confirm_expiry_requeues_exactly_the_rest_at_the_front_in_id_order(how: str) -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b", b"c", b"d", b"e"])
    queue.push(b"fresh")
    settled = (ids[3], ids[1])  # not in id order
    if how == "confirm":
        assert [broker.confirm(id_, held_by(broker, id_)) for id_ in settled] == [Outcome.DONE] * 2
    else:
        assert broker.confirm_many(settled, held_by(broker, settled)) == bytes(2)
    left = [ids[0], ids[2], ids[4]]
    assert held.ids() == left and list(broker.entries()) == left
    assert block.live == 3 and broker._timed == 1
    assert queue.confirmed == 2
    assert_counts(queue, ready=1, in_flight=3, delayed=0)
    assert broker.expire(0.0999) == 0
    assert broker.expire(0.1) == 3
    assert held == {} and broker._timed == 0 and queue.requeued == 3
    assert_retired(block)
    assert sorted(broker.entries()) == left and all(broker.entries()[id_].held is None for id_ in left)
    got = broker.deliver_many(queue, 10, 0, Holding(), 0.2)
    assert columns(got) == (left + [ids[4] + 1], [2, 2, 2, 1], [b"a", b"c", b"e", b"fresh"])
    assert broker.confirm(ids[1], held_by(broker, ids[1])) == NO_SUCH  # confirmed before the timeout: not brought back


def test_confirm_many_with_a_duplicate_id_confirms_it_once() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    assert broker.confirm_many((ids[0], ids[0]), held_by(broker, (ids[0], ids[0]))) == bytes([Outcome.DONE, NO_SUCH])
    assert block.live == 2 and held.ids() == ids[1:] and queue.confirmed == 1
    assert broker.confirm_many((ids[1], ids[2], ids[1]), held_by(broker, (ids[1], ids[2], ids[1]))) == bytes(
        [Outcome.DONE, Outcome.DONE, NO_SUCH]
    )
    assert_retired(block)
    assert queue.confirmed == 3 and broker.entries() == {} and broker._timed == 0


@pytest.mark.parametrize("how", ["confirmed", "touched", "released"])
def test_confirm_many_of_every_id_of_a_block_after_one_member_left_it(how: str) -> None:
    broker, queue = make()
    (a, b, c), block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    if how == "confirmed":
        assert broker.confirm(b, held_by(broker, b)) == Outcome.DONE
    elif how == "touched":
        assert broker.touch(b, 1_000, 0.0, held_by(broker, b)) == Outcome.DONE
    else:
        assert broker.release(b, 0, 0.0, held_by(broker, b)) == Outcome.DONE
    expected = {"confirmed": NO_SUCH, "touched": Outcome.DONE, "released": Outcome.REQUEUED}[how]
    assert broker.confirm_many((a, b, c), held_by(broker, (a, b, c))) == bytes([Outcome.DONE, expected, Outcome.DONE])
    assert_retired(block)
    assert held == {} and broker._timed == 0
    assert queue.confirmed == (2 if how == "released" else 3)
    assert_counts(queue, ready=1 if how == "released" else 0, in_flight=0, delayed=0)
    assert broker.expire(1.0) == 0


def test_confirm_many_spanning_two_blocks() -> None:
    broker, queue = make()
    first_ids, first, held = read_block(broker, queue, [b"a", b"b"])
    second_ids = broker.enqueue_batch(queue, [b"c", b"d", b"e"], 0.0)
    assert second_ids is not None
    (second,) = broker.deliver_many(queue, 3, 100, held, 0.0)
    assert second.__class__ is Block and broker._timed == 2
    ids = (first_ids[0], second_ids[0], first_ids[1], second_ids[2])
    assert broker.confirm_many(ids, held_by(broker, ids)) == bytes(4)
    assert_retired(first)
    assert second.live == 1 and held.ids() == [second_ids[1]] and broker._timed == 1
    assert queue.confirmed == 4
    assert broker.expire(0.1) == 1
    assert read_back(broker, queue, 0.2) == [(b"d", 2)]


def test_confirm_many_with_unknown_and_already_settled_ids() -> None:
    broker, queue = make()
    (a, b, c, d), block, held = read_block(broker, queue, [b"a", b"b", b"c", b"d"])
    unread = queue.push(b"unread")  # ready, never read
    assert broker.confirm_many((a, 10**9, b), held_by(broker, (a, 10**9, b))) == bytes(
        [Outcome.DONE, NO_SUCH, Outcome.DONE]
    )
    assert broker.confirm_many((10**9, c), held_by(broker, (10**9, c))) == bytes([NO_SUCH, Outcome.DONE])
    assert broker.release(d, 0, 0.0, held_by(broker, d)) == Outcome.DONE
    assert broker.confirm_many((d, a, unread), held_by(broker, (d, a, unread))) == bytes(
        [Outcome.REQUEUED, NO_SUCH, NO_SUCH]
    )
    assert_retired(block)
    assert held == {} and queue.confirmed == 3 and broker._timed == 0
    assert_counts(queue, ready=2, in_flight=0, delayed=0)


def test_confirm_many_of_block_members_mixed_with_single_read_records() -> None:
    broker, queue = make()
    broker.enqueue_batch(queue, [b"r", b"a", b"b", b"s"], 0.0)
    held = Holding()
    r = broker.deliver(queue, 100, held, 0.0)
    (block,) = broker.deliver_many(queue, 2, 100, held, 0.0)
    s = broker.deliver(queue, 100, held, 0.0)
    assert r is not None and s is not None and block.__class__ is Block
    a, b = ids_of([block])
    assert broker._timed == 3
    assert broker.confirm_many((a, r.id, b, s.id), held_by(broker, (a, r.id, b, s.id))) == bytes(4)
    assert_retired(block)  # type: ignore[arg-type]
    assert (r.held, s.held, r.lease, s.lease) == (None, None, 0, 0)
    assert held == {} and broker.entries() == {} and broker._timed == 0 and queue.confirmed == 4
    assert broker.expire(1.0) == 0 and queue.count == 0


# --- touch and release ----------------------------------------------------------------


def test_touching_one_member_moves_only_its_deadline() -> None:
    broker, queue = make()
    (a, b, c), block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    assert broker.touch(b, 500, 0.05, held_by(broker, b)) == Outcome.DONE
    touched = held[b]
    assert touched.__class__ is Record and broker.entries()[b] is touched
    assert (touched.id, touched.data, touched.deliveries, touched.held) == (b, b"b", 1, held)  # type: ignore[union-attr]
    assert broker.entries()[a] is block and broker.entries()[c] is block and block.live == 2
    assert held.ids() == [a, b, c]  # the split member keeps its place
    assert broker._timed == 2
    assert broker.expire(0.0999) == 0
    assert broker.expire(0.1) == 2  # a and c, at the block's deadline
    assert held.ids() == [b] and held[b] is touched
    assert_retired(block)
    assert broker.expire(0.549) == 0
    assert broker.expire(0.55) == 1
    assert held == {} and broker._timed == 0
    assert read_back(broker, queue, 0.6) == [(b"b", 2), (b"a", 2), (b"c", 2)]


def test_touching_one_member_with_zero_takes_it_off_the_clock() -> None:
    broker, queue = make()
    (a, b), block, held = read_block(broker, queue, [b"a", b"b"])
    assert broker.touch(a, 0, 0.05, held_by(broker, a)) == Outcome.DONE
    assert block.live == 1 and held[a].__class__ is Record
    assert broker._timed == 1  # the block's, for b
    assert broker.expire(0.1) == 1
    assert held.ids() == [a] and broker._timed == 0
    assert broker.expire(1e9) == 0
    assert broker.confirm(a, held_by(broker, a)) == Outcome.DONE
    assert list(broker.entries()) == [b] and broker.entries()[b].held is None  # b: ready again
    assert_counts(queue, ready=1, in_flight=0, delayed=0)


def test_touching_every_member_retires_the_block() -> None:
    broker, queue = make()
    ids, block, held = read_block(broker, queue, [b"a", b"b"])
    for id_ in ids:
        assert broker.touch(id_, 1_000, 0.05, held_by(broker, id_)) == Outcome.DONE
    assert_retired(block)
    assert broker._timed == 2 and all(held[id_].__class__ is Record for id_ in ids)
    assert broker.expire(1.0) == 0  # the block's old deadline is stale
    assert broker.expire(1.05) == 2
    assert broker._timed == 0


def test_releasing_one_member_gives_it_back_now_and_leaves_the_others_in_flight() -> None:
    broker, queue = make()
    (a, b, c), block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    queue.push(b"d")
    assert broker.release(b, 0, 0.01, held_by(broker, b)) == Outcome.DONE
    assert held.ids() == [a, c] and block.live == 2 and broker._timed == 1
    released = broker.entries()[b]
    assert released.__class__ is Record and released.held is None
    assert_counts(queue, ready=2, in_flight=2, delayed=0)
    assert queue.requeued == 1
    assert (
        broker.confirm(b, held_by(broker, b)) == Outcome.REQUEUED
        and broker.touch(b, 10, 0.01, held_by(broker, b)) == Outcome.REQUEUED
    )
    other = Holding()
    assert broker.deliver(queue, 0, other, 0.02) is released and released.deliveries == 2  # ahead of d
    assert broker.expire(0.1) == 2
    assert held == {} and other.ids() == [b]
    assert read_back(broker, queue, 0.2) == [(b"a", 2), (b"c", 2), (b"d", 1)]


def test_releasing_one_member_with_a_delay_sends_it_to_the_back_later() -> None:
    broker, queue = make()
    (a, b, c), block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    assert broker.release(b, 50, 0.01, held_by(broker, b)) == Outcome.DONE
    assert held.ids() == [a, c] and block.live == 2
    assert_counts(queue, ready=0, in_flight=2, delayed=1)
    assert broker.confirm(b, held_by(broker, b)) == Outcome.REQUEUED
    queue.push(b"d")
    assert broker.expire(0.059) == 0 and queue.delayed == 1
    assert broker.expire(0.061) == 0  # a delay end is not a requeue
    assert_counts(queue, ready=2, in_flight=2, delayed=0)
    assert broker.expire(0.1) == 2
    assert read_back(broker, queue, 0.2) == [(b"a", 2), (b"c", 2), (b"d", 1), (b"b", 2)]


def test_settling_a_member_that_already_left_its_block() -> None:
    broker, queue = make()
    (a, b), block, held = read_block(broker, queue, [b"a", b"b"])
    assert broker.confirm(a, held_by(broker, a)) == Outcome.DONE
    assert broker.touch(a, 10, 0.0, held_by(broker, a)) == NO_SUCH
    assert broker.release(a, 0, 0.0, held_by(broker, a)) == NO_SUCH
    assert block.live == 1 and held.ids() == [b]
    assert broker.expire(0.1) == 1
    assert broker.touch(b, 10, 0.2, held_by(broker, b)) == Outcome.REQUEUED
    assert broker.release(b, 0, 0.2, held_by(broker, b)) == Outcome.REQUEUED
    assert_counts(queue, ready=1, in_flight=0, delayed=0)


# --- disconnect -----------------------------------------------------------------------


@pytest.mark.parametrize("touched", ["", "b", "cba"], ids=["plain", "after a touch", "after the block dissolved"])
def test_a_disconnect_requeues_every_live_member_once_in_read_order(touched: str) -> None:
    broker, queue = make()
    a, b, c, d, e, f, g = broker.enqueue_batch(queue, [b"a", b"b", b"c", b"d", b"e", b"f", b"g"], 0.0)  # type: ignore[misc]
    held = Holding()
    (first,) = broker.deliver_many(queue, 3, 100, held, 0.0)  # a b c
    assert broker.deliver(queue, 100, held, 0.0) is not None  # d
    (second,) = broker.deliver_many(queue, 3, 100, held, 0.0)  # e f g
    assert broker.confirm(f, held_by(broker, f)) == Outcome.DONE
    ids = dict(zip("abc", (a, b, c)))
    for name in touched:  # each touched member is split off (out of read order); then the block dissolves
        assert broker.touch(ids[name], 1_000, 0.01, held_by(broker, ids[name])) == Outcome.DONE
    assert (first.held is None) == (len(touched) == 3)  # type: ignore[union-attr]
    assert held.ids() == [a, b, c, d, e, g]
    assert broker.release_all(held, 0.02) == 6
    assert held == {} and broker._timed == 0
    assert_retired(first)  # type: ignore[arg-type]
    assert_retired(second)  # type: ignore[arg-type]
    assert_counts(queue, ready=6, in_flight=0, delayed=0)
    assert broker.release_all(held, 0.03) == 0
    assert broker.expire(2.0) == 0  # no deadline of theirs is left to fire
    assert read_back(broker, queue, 2.0) == [(b"a", 2), (b"b", 2), (b"c", 2), (b"d", 2), (b"e", 2), (b"g", 2)]


# --- deleted queues -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["expiry", "disconnect"])
def test_deleting_a_queue_with_a_block_in_flight(how: str) -> None:
    broker, queue = make()
    (a, b, c, d), block, held = read_block(broker, queue, [b"a", b"b", b"c", b"d"])
    assert broker.delete_queue(b"q")
    assert broker.confirm(a, held_by(broker, a)) == NO_SUCH
    assert a not in broker.entries() and held.ids() == [b, c, d]  # the confirm frees it
    assert broker.confirm(a, held_by(broker, a)) == NO_SUCH
    assert broker.confirm_many((b, c), held_by(broker, (b, c))) == bytes(
        [NO_SUCH, NO_SUCH]
    )  # not the fast path: nothing to confirm
    assert held.ids() == [d] and block.live == 1
    assert (
        broker.touch(d, 1_000, 0.0, held_by(broker, d)) == NO_SUCH
        and broker.release(d, 0, 0.0, held_by(broker, d)) == NO_SUCH
    )
    assert broker.entries()[d] is block and block.live == 1  # touch and release split nothing off
    assert queue.confirmed == 0
    new = broker.create_queue(b"q")
    if how == "expiry":
        assert broker.expire(0.1) == 0
    else:
        assert broker.release_all(held, 0.05) == 0
    assert broker.entries() == {} and held == {} and broker._timed == 0
    assert_retired(block)
    assert broker.confirm(d, held_by(broker, d)) == NO_SUCH
    assert new.count == 0 and broker.deliver_many(new, 10, 0, Holding(), 0.2) == []


# --- purge ----------------------------------------------------------------------------


def test_purge_leaves_the_members_of_a_block_in_flight_alone() -> None:
    broker, queue = make()
    (a, b, c), block, held = read_block(broker, queue, [b"a", b"b", b"c"])
    broker.enqueue_batch(queue, [b"d", b"e"], 0.0)
    broker.enqueue_delayed(queue, b"f", 50, 0.0)
    assert broker.purge(queue) == 3
    assert_counts(queue, ready=0, in_flight=3, delayed=0)
    assert held.ids() == [a, b, c] and list(broker.entries()) == [a, b, c] and block.live == 3
    assert broker.confirm_many((a, b), held_by(broker, (a, b))) == bytes(2)
    assert broker.expire(0.1) == 1
    assert read_back(broker, queue, 0.2) == [(b"c", 2)]


class RecordingStore(Store):
    """A real store that also remembers what each purge was told to keep."""

    kept: list[list[int]]

    def purge(self, name: bytes, keep: Any = ()) -> None:
        keep = list(keep)
        self.__dict__.setdefault("kept", []).append(sorted(keep))
        super().purge(name, keep)


def stored_ids(directory: Path) -> dict[bytes, list[int]]:
    with Store.open(directory) as store:
        return {q.name: [m[0] for m in q.messages] for q in store.load().queues}


def test_purge_with_a_journal_keeps_the_block_members_in_flight(tmp_path: Path) -> None:
    store = RecordingStore.open(tmp_path)
    broker = Broker()
    broker.attach(store)
    queue = broker.create_queue(b"q")
    committed = broker.enqueue_batch(queue, [b"a", b"b", b"c", b"d", b"e"], 0.0)
    store.commit()
    pending = broker.enqueue_batch(queue, [b"f", b"g", b"h"], 0.0)  # added, not committed
    assert committed is not None and pending is not None
    held = Holding()
    first = broker.deliver_many(queue, 3, 100, held, 0.0)  # a b c: committed
    second = broker.deliver_many(queue, 3, 100, held, 0.0)  # d e f: f only pending
    assert [e.__class__ for e in first + second] == [Block, Block]
    broker.enqueue_delayed(queue, b"i", 50, 0.0)
    in_flight = committed + pending[:1]
    assert broker.purge(queue) == 3  # g, h and the delayed i
    assert store.kept == [in_flight]
    store.close()
    assert stored_ids(tmp_path) == {b"q": in_flight}


# --- dead-letter queues ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["timeout", "disconnect", "release"])
def test_members_past_max_deliveries_move_to_the_dead_letter_queue_in_order(how: str) -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 1, b"dlq")
    (a, b, c, d), block, held = read_block(broker, queue, [b"a", b"b", b"c", b"d"], timeout_ms=10)
    assert broker.confirm(b, held_by(broker, b)) == Outcome.DONE
    if how == "timeout":
        assert broker.expire(0.01) == 0  # none goes back to q
    elif how == "disconnect":
        assert broker.release_all(held, 0.001) == 0
    else:
        for id_ in (a, c, d):
            assert broker.release(id_, 0, 0.001, held_by(broker, id_)) == Outcome.DONE
    assert held == {} and broker.entries() == {} and broker._timed == 0
    assert_retired(block)
    assert_counts(queue, ready=0, in_flight=0, delayed=0)
    assert (queue.dead_lettered, queue.confirmed, queue.requeued) == (3, 1, 0)
    assert read_back(broker, dlq, 0.02) == [(b"a", 1), (b"c", 1), (b"d", 1)]


def test_block_members_reach_the_dead_letter_queue_after_their_second_delivery() -> None:
    broker = Broker()
    dlq = broker.create_queue(b"dlq")
    queue = broker.create_queue(b"q", 0, 2, b"dlq")
    (a, b, c), _, held = read_block(broker, queue, [b"a", b"b", b"c"], timeout_ms=10)
    assert broker.confirm(b, held_by(broker, b)) == Outcome.DONE
    assert broker.expire(0.01) == 2  # the first failure: back to the front
    again = broker.deliver_many(queue, 10, 10, held, 0.02)
    assert [e.__class__ for e in again] == [Record, Record]  # read before: records, not a block
    assert columns(again) == ([a, c], [2, 2], [b"a", b"c"])
    assert broker.expire(0.03) == 0
    assert queue.count == 0 and queue.dead_lettered == 2
    assert read_back(broker, dlq, 0.04) == [(b"a", 1), (b"c", 1)]


# --- deadlines ------------------------------------------------------------------------


def test_retired_blocks_do_not_pile_up_in_the_deadlines() -> None:
    broker, queue = make()
    held = Holding()
    for i in range(3_000):
        broker.enqueue_batch(queue, [b"x", b"y"], 0.0)
        (block,) = broker.deliver_many(queue, 2, 60_000, held, 0.0)
        assert broker.confirm_many(tuple(ids_of([block])), held_by(broker, tuple(ids_of([block])))) == bytes(2)
        assert len(broker._deadlines) <= 1026, i  # stale entries are dropped, not kept
    assert broker._timed == 0 and held == {} and broker.entries() == {}


# --- the journal ----------------------------------------------------------------------


def test_remove_many_of_committed_messages(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    for id_ in range(1, 6):
        store.add(b"q", id_, b"m")
    store.commit()
    store.remove_many((4, 2))
    assert store.pending()
    store.close()
    assert stored_ids(tmp_path) == {b"q": [1, 3, 5]}


def test_remove_many_cancels_pending_adds_of_the_same_ids(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add(b"q", 1, b"committed")
    store.commit()
    for id_ in (2, 3, 4):
        store.add(b"q", id_, b"pending")
    store.remove_many((2, 3))
    store.remove_many((4,))
    store.add(b"q", 5, b"kept")
    store.remove_many((1, 5))  # a committed id and a pending one
    assert store._adds == {} and store._removes == [1]  # every pending add cancelled out
    store.add(b"q", 6, b"kept")
    store.close()
    assert stored_ids(tmp_path) == {b"q": [6]}


@pytest.mark.parametrize("commit_first", [True, False], ids=["committed", "pending"])
def test_confirm_many_of_a_block_reaches_the_journal(tmp_path: Path, commit_first: bool) -> None:
    store = Store.open(tmp_path)
    broker = Broker()
    broker.attach(store)
    queue = broker.create_queue(b"q")
    store.commit()
    ids = broker.enqueue_batch(queue, [b"a", b"b", b"c", b"d"], 0.0)
    assert ids is not None
    if commit_first:
        store.commit()
    (block,) = broker.deliver_many(queue, 4, 100, Holding(), 0.0)
    assert block.__class__ is Block
    assert broker.confirm_many((ids[2], ids[0]), held_by(broker, (ids[2], ids[0]))) == bytes(2)  # the fast path
    if not commit_first:
        assert store._removes == [] and store._new_packs[ids[0]].live == 2  # add and remove cancel out
    store.commit()
    assert broker.confirm_many((ids[3],), held_by(broker, (ids[3],))) == bytes(1)
    store.close()
    assert stored_ids(tmp_path) == {b"q": [ids[1]]}


# --- slabs: batches kept in the columns they were sent in ----------------------------


def send_columns(broker: Broker, queue: Queue, payloads: list[bytes]) -> bytes:
    """Send ``payloads`` as the server keeps a sent ENQUEUE_BATCH; return their ids column."""
    lengths = struct.pack(f">{len(payloads)}I", *map(len, payloads))
    ids = broker.enqueue_columns(queue, lengths, b"".join(payloads), 0.0)
    assert ids is not None
    return ids


def unpack_ids(column: bytes) -> list[int]:
    return list(struct.unpack(f">{len(column) // 8}Q", column))


def test_a_slab_read_whole_is_answered_and_confirmed_from_its_columns() -> None:
    broker, queue = make()
    payloads = [b"a", b"", b"ccc", b"dd" * 300]
    column = send_columns(broker, queue, payloads)
    ids = unpack_ids(column)
    assert ids == list(range(ids[0], ids[0] + 4)) and queue.ready == 4 and queue.count == 4
    held = Holding()
    (block,) = broker.deliver_many(queue, 10, 100, held, 0.0)
    assert block.__class__ is Block and block.slab is not None  # type: ignore[union-attr]
    sent_ids, lengths, data = block.slab  # type: ignore[union-attr,misc]
    # The slab as sent: its payloads not copied; its id column built again for the read (a slab keeps none).
    assert sent_ids == column and data == b"".join(payloads)
    assert columns([block]) == (ids, [1, 1, 1, 1], payloads)
    assert held.count == 4 and queue.ready == 0
    assert broker.confirm_column(column, held_by(broker, column)) is True
    assert_retired(block)
    assert held == {} and held.count == 0 and queue.confirmed == 4 and broker._timed == 0
    assert broker.confirm_column(column, held_by(broker, column)) is False and broker.confirm_many(
        tuple(ids), held_by(broker, tuple(ids))
    ) == bytes([NO_SUCH] * 4)


def test_a_slab_is_read_in_pieces_in_order() -> None:
    broker, queue = make()
    payloads = [b"m%d" % (10**i) for i in range(7)]  # sizes 2..8
    ids = unpack_ids(send_columns(broker, queue, payloads))
    held = Holding()
    one = broker.deliver(queue, 0, held, 0.0)
    assert one is not None and (one.id, one.data) == (ids[0], payloads[0])
    (two,) = broker.deliver_many(queue, 3, 0, held, 0.0)
    assert columns([two]) == (ids[1:4], [1, 1, 1], payloads[1:4])
    assert two.slab[1] == struct.pack(">3I", *map(len, payloads[1:4]))  # type: ignore[union-attr,index]
    rest = broker.deliver_many(queue, 10, 0, held, 0.0)
    assert columns(rest) == (ids[4:], [1, 1, 1], payloads[4:])
    assert queue.ready == 0 and broker.deliver(queue, 0, held, 0.0) is None and not queue._segments
    assert held.ids() == ids and held.count == 7


def test_a_slab_cut_by_the_byte_limit() -> None:
    broker, queue = make(max_batch_bytes=3 * (10 + 16))  # three 10-byte payloads per batch reply
    payloads = [b"%010d" % i for i in range(5)]
    ids = unpack_ids(send_columns(broker, queue, payloads))
    held = Holding()
    first = broker.deliver_many(queue, 10, 0, held, 0.0)
    second = broker.deliver_many(queue, 10, 0, held, 0.0)
    assert columns(first) == (ids[:3], [1, 1, 1], payloads[:3])
    assert columns(second) == (ids[3:], [1, 1], payloads[3:])


def test_slabs_and_single_sends_keep_their_order() -> None:
    broker, queue = make()
    queue.push(b"before")
    send_columns(broker, queue, [b"s1", b"s2"])
    queue.push(b"after")
    send_columns(broker, queue, [b"t1"])
    broker.enqueue_batch(queue, [b"u1", b"u2"], 0.0)
    got = broker.deliver_many(queue, 10, 0, Holding(), 0.0)
    assert columns(got)[2] == [b"before", b"s1", b"s2", b"after", b"t1", b"u1", b"u2"]
    assert len(set(columns(got)[0])) == 7


def test_a_slab_across_the_end_of_its_queues_id_block_takes_the_ids_push_many_would() -> None:
    broker, queue = make(max_batch_bytes=1 << 30)
    twin, other = make(max_batch_bytes=1 << 30)
    for q in (queue, other):
        q.push(b"first")  # the queue takes a block of ID_BLOCK ids
        for _ in range(ID_BLOCK - 3):
            q.push(b"x")
    payloads = [b"a", b"bb", b"ccc"]
    column = send_columns(broker, queue, payloads)  # two ids left in the block: the third starts another
    assert unpack_ids(column) == twin.enqueue_batch(other, payloads, 0.0)
    queue.push(b"last")
    got = columns(broker.deliver_many(queue, ID_BLOCK + 10, 0, Holding(), 0.0))
    assert len(got[0]) == len(set(got[0])) == ID_BLOCK + 2
    assert got[2][-4:] == [b"a", b"bb", b"ccc", b"last"]
    assert got[0][-4:] == [*unpack_ids(column), unpack_ids(column)[-1] + 1]


@pytest.mark.parametrize("how", ["one confirmed first", "out of order", "a prefix", "queue deleted", "read one by one"])
def test_confirm_column_takes_only_a_whole_block_as_it_was_read(how: str) -> None:
    broker, queue = make()
    column = send_columns(broker, queue, [b"a", b"b", b"c"])
    ids = unpack_ids(column)
    held = Holding()
    if how == "read one by one":
        for _ in ids:
            broker.deliver(queue, 0, held, 0.0)
    else:
        broker.deliver_many(queue, 3, 0, held, 0.0)
    sent = column
    if how == "one confirmed first":
        assert broker.confirm(ids[1], held_by(broker, ids[1])) == Outcome.DONE
    elif how == "out of order":
        sent = struct.pack(">3Q", ids[1], ids[0], ids[2])
    elif how == "a prefix":
        sent = column[:16]
    elif how == "queue deleted":
        assert broker.delete_queue(b"q")
    before = (held.ids(), held.count, queue.confirmed)
    assert broker.confirm_column(sent, held_by(broker, sent)) is False
    assert (held.ids(), held.count, queue.confirmed) == before  # declined, nothing changed
    outcomes = broker.confirm_many(tuple(unpack_ids(sent)), held_by(broker, tuple(unpack_ids(sent))))
    if how == "queue deleted":
        assert outcomes == bytes([NO_SUCH] * 3)
    elif how == "one confirmed first":
        assert outcomes == bytes([0, NO_SUCH, 0]) and queue.confirmed == 3
    else:
        assert outcomes == bytes(len(sent) // 8) and queue.confirmed == before[2] + len(sent) // 8


@pytest.mark.parametrize("how", ["touch", "release", "expiry", "disconnect"])
def test_members_of_a_slab_block_settle_one_by_one(how: str) -> None:
    broker, queue = make()
    payloads = [b"a", b"bb", b"ccc", b"dddd"]
    ids = unpack_ids(send_columns(broker, queue, payloads))
    held = Holding()
    (block,) = broker.deliver_many(queue, 4, 100, held, 0.0)
    assert broker.confirm(ids[0], held_by(broker, ids[0])) == Outcome.DONE
    if how == "touch":
        assert broker.touch(ids[2], 1_000, 0.0, held_by(broker, ids[2])) == Outcome.DONE
        assert broker.entries()[ids[2]].__class__ is Record and broker.entries()[ids[2]].data == b"ccc"  # type: ignore[union-attr]
        assert broker.expire(0.1) == 2  # b and d
        assert columns(broker.deliver_many(queue, 10, 0, Holding(), 0.2))[2] == [b"bb", b"dddd"]
    elif how == "release":
        assert broker.release(ids[3], 0, 0.0, held_by(broker, ids[3])) == Outcome.DONE
        assert broker.deliver(queue, 0, Holding(), 0.0).data == b"dddd"  # type: ignore[union-attr]
        assert broker.confirm_many((ids[1], ids[2]), held_by(broker, (ids[1], ids[2]))) == bytes(2)
    elif how == "expiry":
        assert broker.expire(0.1) == 3
        assert columns(broker.deliver_many(queue, 10, 0, Holding(), 0.2)) == (ids[1:], [2, 2, 2], payloads[1:])
    else:
        assert broker.release_all(held, 0.0) == 3
        assert columns(broker.deliver_many(queue, 10, 0, Holding(), 0.2)) == (ids[1:], [2, 2, 2], payloads[1:])
    assert block.held is None and held.count == (1 if how == "touch" else 0)


def test_a_slab_reaches_the_journal_as_one_pack(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    broker = Broker()
    broker.attach(store)
    queue = broker.create_queue(b"q")
    column = send_columns(broker, queue, [b"a", b"bb", b"ccc"])
    lone = send_columns(broker, queue, [b"lone"])
    assert len(store._new_packs) == 1 and list(store._adds) == unpack_ids(lone)
    store.commit()
    ids = unpack_ids(column)
    broker.deliver_many(queue, 3, 0, Holding(), 0.0)
    assert broker.confirm_column(struct.pack(">2Q", *ids[:2]), held_by(broker, struct.pack(">2Q", *ids[:2]))) is False
    assert broker.confirm_many((ids[1],), held_by(broker, (ids[1],))) == bytes(1)
    store.close()
    assert stored_ids(tmp_path) == {b"q": [ids[0], ids[2], *unpack_ids(lone)]}

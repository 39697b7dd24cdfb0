"""Payload bytes: what each queue holds, and the grants that admit a send with one comparison (`Broker.make_room`)."""

from __future__ import annotations

import struct

from dbqueue.core import Broker, Holding, Outcome

BIG = 1 << 40


def test_grants_stay_within_the_budget_and_shrink_to_what_queues_hold() -> None:
    broker = Broker()
    a, b = broker.create_queue(b"a"), broker.create_queue(b"b")
    assert broker.make_room(a, 60, 100, BIG) is None
    a.push(bytes(60))
    assert (a.payload_bytes, a.grant, broker.granted) == (60, 100, 100)  # with spare room up to the budget
    assert broker.make_room(b, 30, 100, BIG) is None  # a's spare is taken back for b
    b.push(bytes(30))
    assert (a.grant, b.grant, broker.granted) == (60, 40, 100)
    assert broker.make_room(b, 20, 100, BIG) == "budget"  # 60 + 30 + 20 > 100
    assert (a.grant, b.grant, broker.granted) == (60, 30, 90)  # shrunk to what each holds, nothing granted
    held = Holding()
    record = broker.deliver(a, 0, held, 0.0)
    assert record is not None and broker.payload_bytes == 90  # in flight still counts
    assert broker.confirm(record.id, held) == Outcome.DONE
    assert broker.payload_bytes == 30 and broker.make_room(b, 20, 100, BIG) is None
    assert broker.make_room(a, 10, 100, 5) == "capacity"


def test_every_way_out_frees_the_bytes() -> None:
    broker = Broker()
    q = broker.create_queue(b"q", max_deliveries=1, dead_letter=None)
    dead = broker.create_queue(b"dead")
    q.dead_letter = b"dead"
    q.push_many([b"aa", b"bbb"], 5)
    q.push_columns(struct.pack(">2I", 1, 4), b"cdddd")
    broker.enqueue_delayed(q, b"eeeeee", 1000, 0.0)
    assert q.payload_bytes == 16
    held = Holding()
    block, slab = broker.deliver_many(q, 10, 0, held, 0.0)
    assert broker.confirm_many((block.first_id,), held) == bytes(1)  # one member of a block
    assert q.payload_bytes == 14
    record = broker.deliver(dead, 0, held, 0.0)
    assert record is None
    assert broker.release(block.first_id + 1, 0, 0.0, held) == Outcome.DONE  # out of deliveries: dead-lettered
    assert (q.payload_bytes, dead.payload_bytes) == (11, 3)
    assert broker.confirm_column(slab.slab[0], held)  # type: ignore[union-attr]  # a block from the slab
    assert q.payload_bytes == 6
    assert broker.purge(q) == 1 and q.payload_bytes == 0  # the delayed one
    assert broker.delete_queue(b"dead") and broker.payload_bytes == 0

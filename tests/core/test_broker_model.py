"""The Broker against a plain reference model, driven by hypothesis with a fake clock.

The model keeps each queue as a list of message ids (front first) and each
connection's holdings in read order; every rule checks the Broker's answer
against it, and the invariants check counts, the order of the messages that came
back, records (blocks included) and the deadline lanes. Rules that pick a queue,
a connection or an id lean towards ones with something to act on.

Messages are sent one at a time or in batches, and read one at a time or in
batches; a batch read hands its fresh messages out as one `Block` when there are
two or more (each queue here is a single run of fresh messages behind the ones
that came back, since nothing is delayed or purged). The model knows which
held messages are still in their block (not touched, released or settled since
the read), so it knows which entry each id maps to and how many deadline entries
the broker should count: one per timed block, one per other timed message.

Confirms, touches and releases come from one connection each (since protocol version 2 they
settle only what that connection holds): mostly the holder's, sometimes another's, which gets
Requeued when the message was handed out before the delivery it is in, else NoSuchMessage. The
payload bytes each queue holds, and all of them together, are checked after every step.

The clock moves by one second per step, a read's timeout is 0 or 1.5 s and a
touch's 0, 1.5 or 2.5 s, so a deadline may be shared by the messages of one
batch read, or by a touch and a read a second later. Messages due together come
back in the order their deadlines were set, and a batch's in read order: the
model sorts them by deadline, then by the order of the reads and touches.
"""

from __future__ import annotations

import struct
from itertools import groupby

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dbqueue.core import Block, Broker, Entry, Holding, Outcome, Record, columns

NAMES = [b"a", b"b"]
CONNECTIONS = 3
UNKNOWN = 10**9


class BrokerModel(RuleBasedStateMachine):
    @initialize(
        capacities=st.lists(st.sampled_from([0, 1, 3, 8]), min_size=2, max_size=2),
        fills=st.lists(st.integers(0, 8), min_size=2, max_size=2),
    )
    def setup(self, capacities: list[int], fills: list[int]) -> None:
        self.broker = Broker()
        self.now = 0.0
        self.capacity = dict(zip(NAMES, capacities))
        self.ready: dict[bytes, list[int]] = {}  # queue -> ids, front first
        self.held = [Holding() for _ in range(CONNECTIONS)]
        self.model_held: list[list[int]] = [[] for _ in range(CONNECTIONS)]  # read order
        self.deadline: dict[int, float] = {}  # timed held id -> deadline
        self.order: dict[int, tuple[int, int]] = {}  # timed held id -> (step that set its deadline, place in its read)
        self.block_of: dict[int, tuple[int, int]] = {}  # held id still in a block -> (the batch read's step, block)
        self.segment_of: dict[
            int, int
        ] = {}  # fresh id -> the run or slab it waits in (a batch read's blocks follow them)
        self.run: dict[bytes, int] = {}  # queue -> the run its next fresh message joins
        self.queue_of: dict[int, bytes] = {}
        self.data: dict[int, bytes] = {}
        self.deliveries: dict[int, int] = {}
        self.dead: set[int] = set()  # confirmed, or dropped with their queue
        self.counter = 0
        self.steps = 0  # numbers reads and touches
        self.batches: list[list[int]] = []  # the ids of each batch read, as read (a client confirms them so)
        for name, fill in zip(NAMES, fills):
            self._create(name)
            if fill:  # a head start of fresh messages, so that batch reads often make blocks
                self._enqueue_batch(name, fill)

    def _create(self, name: bytes) -> None:
        self.broker.create_queue(name, self.capacity[name])
        self.ready[name] = []
        self.run[name] = self._new_segment()

    def _new_segment(self) -> int:
        self.counter += 1
        return self.counter

    def _tick(self) -> None:
        self.now += 1.0

    def _count(self, name: bytes) -> int:
        held = sum(1 for ids in self.model_held for id_ in ids if self.queue_of[id_] == name)
        return len(self.ready[name]) + held

    def _holder(self, id_: int) -> int | None:
        return next((i for i, ids in enumerate(self.model_held) if id_ in ids), None)

    def _not_held(self, id_: int, conn: int) -> Outcome:
        """What confirm, touch and release from ``conn`` answer for an id ``conn`` does not hold."""
        if id_ not in self.data or id_ in self.dead:
            return Outcome.NO_SUCH_MESSAGE
        earlier = self.deliveries[id_] - (self._holder(id_) is not None)  # deliveries before the current one
        # Waiting again after a timeout, a release or a disconnect, or handed out again since:
        return Outcome.REQUEUED if earlier > 0 else Outcome.NO_SUCH_MESSAGE

    def _draw_conn(self, data: st.DataObject, id_: int) -> int:
        """Mostly the connection that holds ``id_``; otherwise any."""
        holder = self._holder(id_)
        if holder is not None and data.draw(st.integers(0, 3)):
            return holder
        return data.draw(st.integers(0, CONNECTIONS - 1))

    def _draw_id(self, data: st.DataObject) -> int:
        """Mostly a held id, often one still in a block; otherwise any id ever sent, or one never sent."""
        held = [id_ for ids in self.model_held for id_ in ids]
        how = data.draw(st.integers(0, 3))
        if how == 1 and self.block_of:
            return data.draw(st.sampled_from(sorted(self.block_of)))
        if held and how:
            return data.draw(st.sampled_from(held))
        known = sorted(self.data)
        return data.draw(st.sampled_from(known)) if known and data.draw(st.booleans()) else UNKNOWN

    def _add(self, name: bytes, id_: int, payload: bytes, segment: int) -> None:
        assert id_ > 0 and id_ not in self.data
        self.segment_of[id_] = segment
        self.data[id_] = payload
        self.queue_of[id_] = name
        self.deliveries[id_] = 0
        self.ready[name].append(id_)

    def _unhold(self, id_: int) -> None:
        self.deadline.pop(id_, None)
        self.order.pop(id_, None)
        self.block_of.pop(id_, None)

    def _time(self, id_: int, timeout_ms: int, place: int = 0) -> None:
        """Give a held id the deadline set by the current step (none if ``timeout_ms`` is 0)."""
        if timeout_ms:
            self.deadline[id_] = self.now + timeout_ms / 1000
            self.order[id_] = (self.steps, place)
        else:
            self.deadline.pop(id_, None)
            self.order.pop(id_, None)

    # --- rules -------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def push(self, name: bytes) -> None:
        self._tick()
        self.counter += 1
        payload = b"m%d" % self.counter
        id_ = self.broker.queues[name].push(payload)
        capacity = self.capacity[name]
        if capacity and self._count(name) >= capacity:
            assert id_ == -1
            return
        self._add(name, id_, payload, self.run[name])

    @rule(name=st.sampled_from(NAMES), size=st.integers(1, 6), in_columns=st.booleans())
    def enqueue_batch(self, name: bytes, size: int, in_columns: bool) -> None:
        self._tick()
        self._enqueue_batch(name, size, in_columns)

    def _enqueue_batch(self, name: bytes, size: int, in_columns: bool = False) -> None:
        payloads = [b"m%d" % (self.counter + i + 1) for i in range(size)]
        self.counter += size
        queue = self.broker.queues[name]
        if in_columns:  # kept whole as a slab, as the server keeps a sent ENQUEUE_BATCH
            lengths = struct.pack(f">{size}I", *map(len, payloads))
            column = self.broker.enqueue_columns(queue, lengths, b"".join(payloads), self.now)
            ids = None if column is None else list(struct.unpack(f">{size}Q", column))
        else:
            ids = self.broker.enqueue_batch(queue, payloads, self.now)
        capacity = self.capacity[name]
        if capacity and self._count(name) + size > capacity:
            assert ids is None  # all or nothing
            return
        assert ids is not None and len(ids) == size
        assert ids == list(range(ids[0], ids[0] + size))
        segment = self._new_segment() if in_columns else self.run[name]
        for id_, payload in zip(ids, payloads):
            self._add(name, id_, payload, segment)
        if in_columns:
            self.run[name] = self._new_segment()  # fresh messages sent next wait behind the slab

    @rule(name=st.sampled_from(NAMES), conn=st.integers(0, CONNECTIONS - 1), timeout_ms=st.sampled_from([0, 1500]))
    def deliver(self, name: bytes, conn: int, timeout_ms: int) -> None:
        self._tick()
        record = self.broker.deliver(self.broker.queues[name], timeout_ms, self.held[conn], self.now)
        if not self.ready[name]:
            assert record is None
            return
        expected = self.ready[name].pop(0)
        assert record is not None
        assert record.id == expected
        assert record.data == self.data[expected]
        self.deliveries[expected] += 1
        assert record.deliveries == self.deliveries[expected]
        self.model_held[conn].append(expected)
        self.steps += 1
        self._time(expected, timeout_ms)

    @rule(
        data=st.data(),
        conn=st.integers(0, CONNECTIONS - 1),
        max_messages=st.integers(1, 5),
        timeout_ms=st.sampled_from([0, 1500]),
    )
    def deliver_many(self, data: st.DataObject, conn: int, max_messages: int, timeout_ms: int) -> None:
        self._tick()
        name = data.draw(st.sampled_from([n for n in NAMES if self.ready[n]] or NAMES))  # mostly not empty
        queue = self.broker.queues[name]
        entries = self.broker.deliver_many(queue, max_messages, timeout_ms, self.held[conn], self.now)
        taken = self.ready[name][:max_messages]
        del self.ready[name][:max_messages]
        returned = [id_ for id_ in taken if self.deliveries[id_]]
        fresh = taken[len(returned) :]
        assert all(self.deliveries[id_] == 0 for id_ in fresh)  # the ones that came back are ahead
        groups = [list(group) for _, group in groupby(fresh, key=self.segment_of.get)]  # a block each, from two
        kinds = [Record] * len(returned) + [Block if len(group) > 1 else Record for group in groups]
        assert [entry.__class__ for entry in entries] == kinds
        for id_ in taken:
            self.deliveries[id_] += 1
        ids, deliveries, payloads = columns(entries)
        assert ids == taken
        assert deliveries == [self.deliveries[id_] for id_ in taken]
        assert payloads == [self.data[id_] for id_ in taken]
        self.model_held[conn] += taken
        self.batches += [batch for batch in (taken, *groups) if len(batch) > 1]  # the read, and each of its blocks
        self.steps += 1
        for number, group in enumerate(groups):
            if len(group) > 1:
                self.block_of.update(dict.fromkeys(group, (self.steps, number)))
        for place, id_ in enumerate(taken):  # one deadline, in read order
            self._time(id_, timeout_ms, place)

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        self._tick()
        known = sorted(self.data)
        id_ = data.draw(st.sampled_from(known)) if known and data.draw(st.booleans()) else UNKNOWN
        conn = self._draw_conn(data, id_)
        outcome = self.broker.confirm(id_, self.held[conn])
        assert outcome == self._settle(id_, conn)

    def _settle(self, id_: int, conn: int) -> Outcome:
        holder = self._holder(id_)
        if holder != conn:
            return self._not_held(id_, conn)
        self.model_held[holder].remove(id_)
        self._unhold(id_)
        self.dead.add(id_)
        return Outcome.DONE

    @rule(data=st.data())
    def confirm_many(self, data: st.DataObject) -> None:
        self._tick()
        conn = data.draw(st.integers(0, CONNECTIONS - 1))
        mine = self.model_held[conn]
        how = data.draw(st.integers(0, 3))
        if how == 0 and self.batches:  # one whole batch read, even if some of it has been settled since
            ids = list(data.draw(st.sampled_from(self.batches)))
            # As its ids column, as a client confirms a batch it read (half the time):
            column = struct.pack(f">{len(ids)}Q", *ids)
            if data.draw(st.booleans()) and self.broker.confirm_column(column, self.held[conn]):
                assert [self._settle(id_, conn) for id_ in ids] == [Outcome.DONE] * len(ids)
                return
        elif how == 3 and self.block_of:  # some of those still in one block, in read order
            step = data.draw(st.sampled_from(sorted(set(self.block_of.values()))))
            members = [id_ for id_, s in self.block_of.items() if s == step]
            ids = data.draw(st.lists(st.sampled_from(members), min_size=1, unique=True).map(sorted))
        elif how == 1 and mine:  # some read together, in any order: often members of one block
            start = data.draw(st.integers(0, len(mine) - 1))
            ids = mine[start : start + data.draw(st.integers(1, len(mine) - start))]
            ids = data.draw(st.permutations(ids))
        else:
            pool = sorted({id_ for held in self.model_held for id_ in held} | set(self.data))
            ids = data.draw(st.lists(st.sampled_from(pool), max_size=4, unique=True)) if pool else []
        if not ids or data.draw(st.integers(0, 4)) == 0:
            ids.insert(data.draw(st.integers(0, len(ids))), UNKNOWN)
        if data.draw(st.integers(0, 4)) == 0:
            ids.insert(data.draw(st.integers(0, len(ids))), data.draw(st.sampled_from(ids)))
        outcomes = self.broker.confirm_many(tuple(ids), self.held[conn])
        assert list(outcomes) == [self._settle(id_, conn) for id_ in ids]

    @rule(data=st.data(), timeout_ms=st.sampled_from([0, 1500, 2500]))
    def touch(self, data: st.DataObject, timeout_ms: int) -> None:
        self._tick()
        id_ = self._draw_id(data)
        conn = self._draw_conn(data, id_)
        outcome = self.broker.touch(id_, timeout_ms, self.now, self.held[conn])
        if self._holder(id_) != conn:
            assert outcome == self._not_held(id_, conn)
            return
        assert outcome == Outcome.DONE
        self.block_of.pop(id_, None)  # a deadline of its own from now on
        self.steps += 1
        self._time(id_, timeout_ms)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self._tick()
        id_ = self._draw_id(data)
        conn = self._draw_conn(data, id_)
        outcome = self.broker.release(id_, 0, self.now, self.held[conn])
        holder = self._holder(id_)
        if holder != conn:
            assert outcome == self._not_held(id_, conn)
            return
        assert outcome == Outcome.DONE
        self.model_held[holder].remove(id_)
        self._return([id_])

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        self._tick()
        holders = [conn for conn in range(CONNECTIONS) if self.model_held[conn]]
        conn = data.draw(st.sampled_from(holders or [0]))  # mostly one that holds something
        ids = self.model_held[conn]
        assert self.broker.release_all(self.held[conn], self.now) == len(ids)
        self._return(ids)
        self.model_held[conn] = []

    @rule(advance=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def expire(self, advance: float) -> None:
        self.now += advance
        due = sorted((d, self.order[id_], id_) for id_, d in self.deadline.items() if d <= self.now)
        ids = [id_ for _, _, id_ in due]
        assert self.broker.expire(self.now) == len(ids)
        for held in self.model_held:
            held[:] = [id_ for id_ in held if id_ not in ids]
        self._return(ids)

    def _return(self, ids: list[int]) -> None:
        """Put ``ids`` back at the front of their queues, keeping their order."""
        for id_ in reversed(ids):
            self._unhold(id_)
            self.ready[self.queue_of[id_]].insert(0, id_)

    @precondition(lambda self: not any(self.model_held))
    @rule(name=st.sampled_from(NAMES))
    def delete_and_recreate(self, name: bytes) -> None:
        # Deleting with messages in flight is covered in test_queues.py and test_blocks.py; here only the clean case.
        self._tick()
        assert self.broker.delete_queue(name) is True
        self.dead.update(self.ready[name])
        self._create(name)

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        for name in NAMES:
            queue = self.broker.queues[name]
            assert queue.ready == len(self.ready[name])
            # Those read before wait at the front, in order (the rest are fresh, in id order).
            assert [record.id for record in queue.returned] == [id_ for id_ in self.ready[name] if self.deliveries[id_]]
            assert queue.count == self._count(name)
            if self.capacity[name]:
                assert queue.count <= self.capacity[name]

    @invariant()
    def payload_bytes_are_counted(self) -> None:
        total = 0
        for name in NAMES:
            alive = self.ready[name] + [id_ for ids in self.model_held for id_ in ids if self.queue_of[id_] == name]
            size = sum(len(self.data[id_]) for id_ in alive)
            assert self.broker.queues[name].payload_bytes == size
            total += size
        assert self.broker.payload_bytes == total

    @invariant()
    def records_are_exactly_the_read_messages_still_alive(self) -> None:
        expected = {id_ for id_ in self.data if id_ not in self.dead and self.deliveries[id_] > 0}
        records = self.broker.entries()
        assert set(records) == expected
        for conn in range(CONNECTIONS):
            assert self.held[conn].ids() == self.model_held[conn]
            assert self.held[conn].count == len(self.model_held[conn])
            for id_ in self.model_held[conn]:
                assert records[id_].held is self.held[conn]
        blocks: dict[int, Entry] = {}  # the step of a batch read -> its block
        for id_ in expected:
            entry = records[id_]
            assert entry.queue is self.broker.queues[self.queue_of[id_]]
            if id_ in self.block_of:
                assert entry.__class__ is Block
                assert blocks.setdefault(self.block_of[id_], entry) is entry
                assert entry.first_id <= id_ < entry.first_id + len(entry.payloads)  # type: ignore[union-attr]
                assert entry.payloads[id_ - entry.first_id] == self.data[id_]  # type: ignore[union-attr]
                assert self.deliveries[id_] == 1
            else:
                assert entry.__class__ is Record
                assert (entry.id, entry.data, entry.deliveries) == (id_, self.data[id_], self.deliveries[id_])  # type: ignore[union-attr]
                if self._holder(id_) is None:
                    assert entry.held is None
        assert len({id(block) for block in blocks.values()}) == len(blocks)  # one block per batch read
        for step, block in blocks.items():
            assert block.live == list(self.block_of.values()).count(step)  # type: ignore[union-attr]

    @invariant()
    def deadlines_are_counted_and_bounded(self) -> None:
        entries = {("block", self.block_of[id_]) if id_ in self.block_of else ("own", id_) for id_ in self.deadline}
        assert self.broker._timed == len(entries)
        assert len(self.broker._deadlines) <= 2 * self.broker._timed + 1025


BrokerModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBrokerModel = BrokerModel.TestCase

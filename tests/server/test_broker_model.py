"""The Broker against a plain reference model, driven by hypothesis with a fake clock.

The model keeps each queue as a list of message ids (front first) and each
connection's holdings in read order; every rule checks the Broker's answer
against it, and the invariants check counts, records and the deadline heap.

The clock moves by one second per step and a read's timeout is 0 or 1.5 s, so no
two deliveries share a deadline (equal deadlines have their own tests in
test_queues.py).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dbqueue.server.queues import Broker, Outcome, Record

NAMES = [b"a", b"b"]
CONNECTIONS = 3


class BrokerModel(RuleBasedStateMachine):
    @initialize(capacities=st.lists(st.sampled_from([0, 1, 3]), min_size=2, max_size=2))
    def setup(self, capacities: list[int]) -> None:
        self.broker = Broker()
        self.now = 0.0
        self.capacity = dict(zip(NAMES, capacities))
        self.ready: dict[bytes, list[int]] = {}  # queue -> ids, front first
        self.held: list[dict[int, Record]] = [{} for _ in range(CONNECTIONS)]
        self.model_held: list[list[int]] = [[] for _ in range(CONNECTIONS)]  # read order
        self.deadline: dict[int, float] = {}  # timed held id -> deadline
        self.queue_of: dict[int, bytes] = {}
        self.data: dict[int, bytes] = {}
        self.deliveries: dict[int, int] = {}
        self.dead: set[int] = set()  # confirmed, or dropped with their queue
        self.counter = 0
        for name in NAMES:
            self._create(name)

    def _create(self, name: bytes) -> None:
        self.broker.create_queue(name, self.capacity[name])
        self.ready[name] = []

    def _tick(self) -> None:
        self.now += 1.0

    def _count(self, name: bytes) -> int:
        held = sum(1 for ids in self.model_held for id_ in ids if self.queue_of[id_] == name)
        return len(self.ready[name]) + held

    # --- rules -------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def push(self, name: bytes) -> None:
        self._tick()
        self.counter += 1
        data = b"m%d" % self.counter
        id_ = self.broker.queues[name].push(data)
        capacity = self.capacity[name]
        if capacity and self._count(name) >= capacity:
            assert id_ == -1
            return
        assert id_ > 0 and id_ not in self.data
        self.data[id_] = data
        self.queue_of[id_] = name
        self.deliveries[id_] = 0
        self.ready[name].append(id_)

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
        if timeout_ms:
            self.deadline[expected] = self.now + timeout_ms / 1000
        else:
            self.deadline.pop(expected, None)

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        self._tick()
        known = sorted(self.data)
        id_ = data.draw(st.sampled_from(known)) if known and data.draw(st.booleans()) else 10**9
        outcome = self.broker.confirm(id_)
        holder = next((i for i, ids in enumerate(self.model_held) if id_ in ids), None)
        if holder is not None:
            assert outcome == Outcome.CONFIRMED
            self.model_held[holder].remove(id_)
            self.deadline.pop(id_, None)
            self.dead.add(id_)
        elif id_ in self.data and id_ not in self.dead and self.deliveries[id_] > 0:
            assert outcome == Outcome.REQUEUED  # waiting again after a timeout or a disconnect
        else:
            assert outcome == Outcome.NO_SUCH_MESSAGE

    @rule(conn=st.integers(0, CONNECTIONS - 1))
    def disconnect(self, conn: int) -> None:
        self._tick()
        ids = self.model_held[conn]
        assert self.broker.release_all(self.held[conn], self.now) == len(ids)
        self._return(ids)
        self.model_held[conn] = []

    @rule(advance=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def expire(self, advance: float) -> None:
        self.now += advance
        due = sorted((d, id_) for id_, d in self.deadline.items() if d <= self.now)
        ids = [id_ for _, id_ in due]
        assert self.broker.expire(self.now) == len(ids)
        for held in self.model_held:
            held[:] = [id_ for id_ in held if id_ not in ids]
        self._return(ids)

    def _return(self, ids: list[int]) -> None:
        """Put ``ids`` back at the front of their queues, keeping their order."""
        for id_ in reversed(ids):
            self.deadline.pop(id_, None)
            self.ready[self.queue_of[id_]].insert(0, id_)

    @precondition(lambda self: not any(self.model_held))
    @rule(name=st.sampled_from(NAMES))
    def delete_and_recreate(self, name: bytes) -> None:
        # Deleting with messages in flight is covered in test_queues.py; here only the clean case.
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
            assert queue.count == self._count(name)
            if self.capacity[name]:
                assert queue.count <= self.capacity[name]

    @invariant()
    def records_are_exactly_the_read_messages_still_alive(self) -> None:
        expected = {id_ for id_ in self.data if id_ not in self.dead and self.deliveries[id_] > 0}
        assert set(self.broker.records) == expected
        for conn in range(CONNECTIONS):
            assert list(self.held[conn]) == self.model_held[conn]

    @invariant()
    def deadline_heap_is_bounded(self) -> None:
        assert self.broker._timed == len(self.deadline)
        assert len(self.broker._deadlines) <= 2 * self.broker._timed + 1025


BrokerModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBrokerModel = BrokerModel.TestCase

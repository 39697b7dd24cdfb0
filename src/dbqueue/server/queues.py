"""Queues, in-flight messages and their deadlines: the server's logic, with no I/O.

Theory of operation
-------------------
A message is *ready* (in its queue, waiting for a read) or *in flight* (read,
waiting for its confirm). Ready messages that were never read are stored as
bare ``bytes`` in *runs* of consecutive ids, so a queued message costs its
payload plus one deque slot: the id is implied by its position in the run.
Ids come from one server-wide counter, handed to queues in blocks of
`ID_BLOCK`, so they stay unique for the server's lifetime across all queues.

A read turns a message into an `InFlight` record, kept in `Broker.records`
(by id) and in its holder's ``held`` dict (one per connection, in read order).
A message that comes back (timeout, or its connection closed) keeps its record
and goes to the front of its queue's ``returned`` deque, ahead of every fresh
message; its record stays in `Broker.records` with no holder, so a late
confirm can answer Requeued.

Deadlines live in one heap of ``(deadline, lease, record)``, swept by
`Broker.expire`; there is never a timer per message. Each timed delivery takes
a new *lease* number: it breaks ties in read order, and an entry is live only
while its record still holds that lease. A confirm leaves its heap entry behind
(removing from the middle of a heap is O(n)); `expire` skips entries whose
lease is over, and the heap is rebuilt whenever stale
entries outnumber live ones, so its size stays within about twice the
in-flight count.

Every method takes ``now`` (seconds, monotonic) from the caller, so tests drive
a fake clock.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque

__all__ = ["Broker", "Queue", "InFlight", "Outcome", "ID_BLOCK"]

ID_BLOCK = 1 << 16


class Outcome(enum.IntEnum):
    """What a confirm did."""

    CONFIRMED = 0
    REQUEUED = 1
    NO_SUCH_MESSAGE = 2


class InFlight:
    """A message that has been read at least once. ``held`` is None while it waits in its queue."""

    __slots__ = ("id", "queue", "data", "deliveries", "deadline", "lease", "held")

    def __init__(self, id_: int, queue: Queue, data: bytes) -> None:
        self.id = id_
        self.queue = queue
        self.data = data
        self.deliveries = 0
        self.deadline = 0.0  # 0: no timeout
        self.lease = 0  # which heap entry is this delivery's, while it has a deadline
        self.held: dict[int, InFlight] | None = None


class _Run:
    """Fresh messages with consecutive ids, the first being ``next_id``."""

    __slots__ = ("next_id", "items")

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id
        self.items: deque[bytes] = deque()


class Queue:
    """One named queue. ``count`` is every message it holds: ready plus in flight."""

    __slots__ = ("name", "capacity", "count", "deleted", "returned", "_runs", "_tail", "_block_end", "_broker")

    def __init__(self, broker: Broker, name: bytes, capacity: int) -> None:
        self.name = name
        self.capacity = capacity  # 0: unbounded
        self.count = 0
        self.deleted = False
        self.returned: deque[InFlight] = deque()
        self._broker = broker
        self._runs: deque[_Run] = deque()
        self._tail: _Run | None = None
        self._block_end = 0

    def push(self, data: bytes) -> int:
        """Append a message; return its id, or -1 if the queue is full."""
        if self.count == self.capacity and self.capacity:
            return -1
        tail = self._tail
        if tail is None or tail.next_id + len(tail.items) == self._block_end:
            tail = self._new_run()
        self.count += 1
        tail.items.append(data)
        return tail.next_id + len(tail.items) - 1

    def pop(self) -> InFlight | None:
        """Take the first ready message as a record, or None when none is ready."""
        if self.returned:
            return self.returned.popleft()
        runs = self._runs
        while runs:
            run = runs[0]
            if run.items:
                id_ = run.next_id
                run.next_id = id_ + 1
                return InFlight(id_, self, run.items.popleft())
            if run is self._tail:
                return None
            runs.popleft()
        return None

    @property
    def ready(self) -> int:
        """Messages waiting for a read."""
        return len(self.returned) + sum(len(run.items) for run in self._runs)

    def _new_run(self) -> _Run:
        first = self._broker.allocate_ids(ID_BLOCK)
        self._block_end = first + ID_BLOCK
        run = self._tail = _Run(first)
        self._runs.append(run)
        return run


class Broker:
    """Every queue and every in-flight message of one server."""

    def __init__(self, default_capacity: int = 0, first_id: int = 1) -> None:
        self.default_capacity = default_capacity
        self.queues: dict[bytes, Queue] = {}
        self.records: dict[int, InFlight] = {}
        self._deadlines: list[tuple[float, int, InFlight]] = []
        self._timed = 0  # records in flight with a deadline (live heap entries)
        self._leases = 0
        self._next_id = first_id

    # --- ids -------------------------------------------------------------------------

    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive ids; return the first."""
        first = self._next_id
        self._next_id = first + count
        return first

    # --- queues ----------------------------------------------------------------------

    def create_queue(self, name: bytes, capacity: int = 0) -> Queue:
        """Return the queue called ``name``, creating it if needed (an existing one is kept as is)."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(self, name, capacity or self.default_capacity)
        return queue

    def delete_queue(self, name: bytes) -> bool:
        """Drop a queue and every message it holds; return False if there was none.

        Its in-flight records are dropped lazily: a confirm of one answers
        no-such-message, and its timeout or its holder's disconnect discards it.
        """
        queue = self.queues.pop(name, None)
        if queue is None:
            return False
        queue.deleted = True
        for record in queue.returned:
            del self.records[record.id]
        return True

    # --- messages --------------------------------------------------------------------

    def deliver(self, queue: Queue, timeout_ms: int, held: dict[int, InFlight], now: float) -> InFlight | None:
        """Read the next message of ``queue`` on behalf of ``held``; None when none is ready."""
        record = queue.pop()
        if record is None:
            return None
        id_ = record.id
        record.deliveries += 1
        record.held = held
        held[id_] = record
        self.records[id_] = record
        if timeout_ms:  # else the deadline is already 0: fresh, or reset by `requeue`
            record.deadline = deadline = now + timeout_ms / 1000.0
            record.lease = lease = self._leases = self._leases + 1
            heap = self._deadlines
            heapq.heappush(heap, (deadline, lease, record))
            self._timed += 1
            if len(heap) > 2 * self._timed + 1024:
                self._compact()
        return record

    def confirm(self, id_: int) -> Outcome:
        """Acknowledge a message by id."""
        record = self.records.get(id_)
        if record is None:
            return Outcome.NO_SUCH_MESSAGE
        held = record.held
        if held is None:
            return Outcome.REQUEUED
        del self.records[id_]
        del held[id_]
        record.held = None  # ends the lease: its heap entry is now stale
        if record.deadline:
            self._timed -= 1
        if record.queue.deleted:
            return Outcome.NO_SUCH_MESSAGE
        record.queue.count -= 1
        return Outcome.CONFIRMED

    def requeue(self, records: list[InFlight]) -> int:
        """Put in-flight records back at the front of their queues, keeping their order; return how many."""
        returned = 0
        for record in reversed(records):
            del record.held[record.id]  # type: ignore[union-attr]
            record.held = None
            if record.deadline:
                self._timed -= 1
                record.deadline = 0.0
            if record.queue.deleted:
                del self.records[record.id]
                continue
            record.queue.returned.appendleft(record)
            returned += 1
        return returned

    def release_all(self, held: dict[int, InFlight]) -> int:
        """Requeue everything a closing connection holds; return how many went back."""
        return self.requeue(list(held.values()))

    # --- deadlines -------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Requeue every in-flight message whose deadline has passed; return how many."""
        heap = self._deadlines
        due: list[InFlight] = []
        while heap and heap[0][0] <= now:
            _, lease, record = heapq.heappop(heap)
            if record.lease == lease and record.held is not None and record.deadline:
                due.append(record)
        # Expired in deadline order (read order on ties); `requeue` keeps that order.
        return self.requeue(due)

    def next_deadline(self) -> float | None:
        """The earliest deadline in the heap (it may be stale), or None."""
        return self._deadlines[0][0] if self._deadlines else None

    def _compact(self) -> None:
        # O(heap), not O(records): untimed in-flight messages cost nothing here.
        live = []
        for entry in self._deadlines:
            record = entry[2]
            if record.lease == entry[1] and record.held is not None and record.deadline:
                live.append(entry)
        heapq.heapify(live)
        self._deadlines = live

"""The broker: every queue and every message record of one server, and the requests that move them.

Theory of operation
-------------------
`Broker` owns the queues (`queue.Queue`) and everything that outlives a
message's place in one: the records of messages in flight, returned or delayed
(`Broker.records`), the blocks in flight (`Broker.blocks`, see `queue`), and
the server-wide id counter. Sessions call it for every request: send, read,
confirm, touch, release, and the return of everything a closing connection
holds.

A confirm, touch or release names its holder (the `Holding` of the connection
that sends it, or any other holder such as the SQS listener's): it settles the
message only if that holder has it in flight. Otherwise nothing changes and
the answer is REQUEUED when the message was handed out before the delivery it
is in now (it is ready or delayed again, or another holder read it since: the
sender may be settling that earlier delivery), else NO_SUCH_MESSAGE (`elsewhere`).

Each queue counts the payload bytes it holds, ready, in flight and delayed
(`Queue.payload_bytes`: one add per message sent, one subtraction per message
confirmed, purged, dropped or moved; a block knows its members' bytes). Sends
are admitted against the server's memory budget through per-queue *grants*
(`make_room`), so that the common send costs one comparison.

A message that comes back (timeout, release, or its connection closed) goes
to the front of its queue, ahead of every fresh message, unless it has been
delivered ``max_deliveries`` times: then it moves to the queue's dead-letter
queue (or is dropped and logged when there is none). A delayed message joins
the back of its queue when its delay ends.

Three structures hold every time-driven event: in-flight deadlines (a
`deadlines.DeadlineLanes`), delay ends and the ends of waiting reads (heaps,
see `queue.Waiter`). `Broker.expire` sweeps all three; the server runs it from one
timer, never a timer per message.

With a data directory, a *journal* (`journal.Journal`, the store's) is told of every change
that must survive a restart: messages added and removed, queues created,
deleted and purged, id blocks reserved, delays and delivery counts. It only
buffers; the server commits it once per loop iteration, before it sends the
replies. In memory the journal is None and costs one test per change.

Every method takes ``now`` (seconds, monotonic) from the caller, so tests drive
a fake clock. Enqueue times are kept in that clock too (see `queue`); they are
turned into Unix milliseconds only where they leave: the journal, a peek, an
origin. The mapping is one offset (`Broker.wall_offset_ms`), taken from a wall
reading on each side of a reading of the clock (`wall_offset`), so that one
message's time reads the same each time it leaves. A monotonic clock and the
wall clock run at one rate (NTP slews both), but the wall clock can step (NTP's
step, a VM resumed, ``settimeofday``): a fixed mapping would then put every
later time off by the step, for the life of the process. `Broker.follow_wall`
takes the mapping again when the wall clock moved away from it by more than
`WALL_STEP_MS`; the server calls it once a second.

Looking and moving. `Broker.peek` lists a queue's messages without touching
them: ready ones in queue order, then (if asked) in-flight ones in read order
and delayed ones, bounded in count and in bytes; it scans the server's records
for the in-flight and delayed ones (an operator's request, not a hot one).
`Broker.move` takes ready messages from the front of one queue to the back of
another in one step: they keep their ids (ids are unique server-wide), their
delivery counts, enqueue times and origins. A destination with a capacity
takes what fits; the rest stay where they were. The journal sees each as a
removal and an addition of the same id, committed together. The server asks
for a long move a step at a time, serving others between (`server.mover`).

Settings. A queue's capacity is fixed at its creation; its other settings
(max deliveries, dead-letter queue, default visibility timeout) may change
while it lives (`Broker.alter_queue`, with the checks its creation makes). A
layer above the broker (the SQS listener) may keep opaque bytes with a queue,
its *annotations* (`Broker.annotate`), which the broker never reads: they are
kept and restored with the queue and go with it. Either change is journaled as
one `Journal.alter_queue` that carries every setting and the annotations.

Dead letters. A message that has used up its deliveries goes to the back of
its queue's dead-letter queue with a new id, carrying its `journal.Origin`
(its source queue, its id there, its first enqueue time and delivery count);
a dead letter of a dead letter keeps the first origin.
"""

from __future__ import annotations

import enum
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..errors import InvalidQueueName, InvalidRequest, LimitExceeded, NoSuchQueue, QueueFull
from ..protocol.frames import NEVER_MS
from ..protocol.layouts import NAME_SIZE, ORIGIN_HEAD, PEEKED_ENTRY
from .deadlines import DeadlineLanes
from .journal import Journal, Origin, Snapshot, now_ms
from .queue import ID_BLOCK, Block, BlockIndex, Entry, Holding, Queue, Record, Waiter, read_order

__all__ = ["Broker", "Outcome", "Peeked", "DEFAULT_VISIBILITY_MS", "WALL_STEP_MS", "wall_offset"]

log = logging.getLogger("dbqueue.server")

GRANT_SPARE = 1 << 20  # bytes a queue's grant grows by beyond what a send needs (`Broker.make_room`)
IDS_RESERVED_AHEAD = 16 * ID_BLOCK  # how far `Broker.allocate_ids` reserves ids in the journal ahead of its counter
DEFAULT_VISIBILITY_MS = 30_000  # a queue's visibility timeout when neither it nor the server names one


WALL_STEP_MS = 5.0
"""How far the wall clock may move from a broker's mapping before `Broker.follow_wall` takes it again: above
the mapping's own noise (the readings' millisecond steps), below the millisecond figures people compare."""


def wall_offset(clock: Callable[[], float]) -> float:
    """How far Unix time (ms) is from ``clock``'s readings (s, times 1000): ``wall - clock() * 1000``.

    The clock is read between two readings of the wall clock, and the mapping is taken at their
    middle; if the thread was held up between them (preempted, on a busy machine) for over a
    millisecond, the three readings are taken again, a few times at most.
    """
    for _ in range(4):
        before = time.time()
        reading = clock()
        after = time.time()
        if after - before < 0.001:
            break
    return (before + after) * 500.0 - reading * 1000.0


class Peeked(NamedTuple):
    """A message seen by `Broker.peek`: ``state`` "ready", "in_flight" or "delayed"; ``enqueued_ms``
    its first enqueue time in Unix ms; ``origin`` where a dead letter came from (else None)."""

    id: int
    data: bytes
    deliveries: int
    state: str
    enqueued_ms: int
    origin: Origin | None


class Outcome(enum.IntEnum):
    """What a confirm, touch or release did (also the CONFIRM_RESULTS byte).

    DONE: the message was in flight and the request was done (confirmed, touched or released).
    """

    DONE = 0
    REQUEUED = 1
    NO_SUCH_MESSAGE = 2


# The members as globals: an enum member looked up on its class costs several times a global's load, on
# every lone confirm.
_DONE, _REQUEUED, _NO_SUCH_MESSAGE = Outcome.DONE, Outcome.REQUEUED, Outcome.NO_SUCH_MESSAGE


def elsewhere(record: Record) -> Outcome:
    """What a confirm, touch or release of ``record`` answers when its sender does not hold it in
    flight: REQUEUED when the message was handed out before the delivery it is in now, so that the
    sender may be settling that earlier delivery (it is ready or delayed again, or in another
    holder's hands since a later read); NO_SUCH_MESSAGE when it never was (its sender cannot have
    held it) or its queue was deleted."""
    if record.queue.deleted:
        return _NO_SUCH_MESSAGE
    earlier = record.deliveries if record.held is None else record.deliveries - 1
    return _REQUEUED if earlier > 0 else _NO_SUCH_MESSAGE


class Broker:
    """Every queue and every message record of one server."""

    def __init__(
        self,
        default_capacity: int = 0,
        first_id: int = 1,
        max_batch_bytes: int = 1 << 20,
        max_queues: int = 10_000,
        max_queue_name: int = 255,
        max_in_flight: int = 1 << 62,
        default_visibility_ms: int = DEFAULT_VISIBILITY_MS,
    ) -> None:
        self.default_capacity = default_capacity
        # What a queue created without a visibility timeout gets (NEVER_MS: never); may change while
        # running (the server sets it from its limits), and such queues follow it.
        self.default_visibility_ms = default_visibility_ms
        # The clock its callers pass as ``now``, read only for figures asked for without it (a
        # server sets its own, `set_clock`; tests that drive a fake clock set theirs), and how far its
        # readings are from Unix time: times leave the broker as `wall_ms` of them, one fixed mapping,
        # so that two readings of the wall clock never disagree about one message.
        self.clock: Callable[[], float] = time.monotonic
        self.wall_offset_ms = wall_offset(time.monotonic)
        self.max_in_flight = max_in_flight  # per holder: waiting reads are woken with no more than this
        self.max_queues = max_queues
        self.max_queue_name = max_queue_name
        self.max_batch_bytes = max_batch_bytes
        self.queues: dict[bytes, Queue] = {}
        self.records: dict[int, Record] = {}  # every message with a record: in flight, returned or delayed
        self.blocks = BlockIndex()  # every block in flight
        self._deadlines = DeadlineLanes()
        self._delays: list[tuple[float, int, Record]] = []
        self._waits: list[tuple[float, int, Waiter]] = []
        self._timed = 0  # records in flight with a deadline (live entries of `_deadlines`)
        self._waiting = 0  # active waiters (live entries of `_waits`)
        self.granted = 0  # the bytes granted to every live queue, which hold at most that much between them
        self._leases = 0
        self._next_id = first_id
        self._reserved = first_id  # ids below this are reserved in the journal
        self.journal: Journal | None = None
        # What a layer above the broker keeps with a queue, by queue name (absent: b""): see `annotate`.
        self.annotations: dict[bytes, bytes] = {}

    def entries(self) -> dict[int, Entry]:
        """Every message with a record or held in a block, by id, to what holds it (for inspection: O(n))."""
        entries: dict[int, Entry] = dict(self.records)
        for block in self.blocks:
            entries.update(dict.fromkeys(block.members(), block))
        return entries

    # --- ids -------------------------------------------------------------------------

    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive ids; return the first."""
        first = self._next_id
        self._next_id = first + count
        if self._next_id > self._reserved and self.journal is not None:
            # Reserve well ahead: one journal entry per 16 blocks, not per id.
            self._reserved = self._next_id + IDS_RESERVED_AHEAD
            self.journal.reserve_ids(self._reserved)
        return first

    def attach(self, journal: Journal) -> None:
        """From now on, tell ``journal`` of every change that must survive a restart."""
        self.journal = journal
        self._reserved = self._next_id
        for queue in self.queues.values():
            queue.journal = journal

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Take ``clock`` as the clock of the ``now`` every caller passes, mapped to Unix time from now on."""
        self.clock = clock
        self.wall_offset_ms = wall_offset(clock)

    def follow_wall(self) -> float:
        """Take the mapping to Unix time again if the wall clock stepped away from it by more than
        `WALL_STEP_MS`; return by how much it had (ms, later positive), or 0.0 if it had not.

        Times already handed out (an origin, the journal) keep their value; every time that
        leaves from now on, of old messages too, is mapped anew, so that ages read against the
        wall clock stay right.
        """
        offset = wall_offset(self.clock)
        moved = offset - self.wall_offset_ms
        if -WALL_STEP_MS <= moved <= WALL_STEP_MS:
            return 0.0
        self.wall_offset_ms = offset
        return moved

    def wall_ms(self, when: float) -> int:
        """A time of the broker's clock in Unix ms."""
        return round(when * 1000.0 + self.wall_offset_ms)

    def restore(self, snapshot: Snapshot, now: float) -> int:
        """Rebuild queues and messages from a store's snapshot; return how many messages came back.

        Every message comes back ready (or delayed, if its delay has not ended),
        in the order it was added. Call before `attach`.
        """
        wall = now_ms()
        self.wall_offset_ms = time.time() * 1000.0 - now * 1000.0  # the mapping of ``now``'s clock, from now on
        restored = 0
        for stored in snapshot.queues:
            self.queues[stored.name] = Queue(
                self, stored.name, stored.capacity, stored.max_deliveries, stored.dead_letter,
                stored.visibility_timeout_ms,
            )  # fmt: skip
        for stored in snapshot.queues:
            queue = self.queues[stored.name]
            times = stored.enqueued_ms or [wall] * len(stored.messages)
            for (id_, data, deliveries, due_ms), enqueued_ms in zip(stored.messages, times, strict=True):
                record = self.records[id_] = Record(id_, queue, data, None, now - (wall - enqueued_ms) / 1000.0)
                record.deliveries = deliveries
                queue.enqueued += 1
                queue.payload_bytes += len(data)
                if due_ms > wall:
                    self._delay(record, due_ms - wall, now)
                else:
                    queue.push_back(record)
                restored += 1
            if stored.origins:
                queue.origins.update(stored.origins)
                queue.has_origins = True
            if stored.annotations:
                self.annotations[stored.name] = stored.annotations
        self._next_id = max(self._next_id, snapshot.next_id)
        self._reclaim()  # each queue granted what it holds (a store may hold more than the budget)
        return restored

    # --- queues ----------------------------------------------------------------------

    def create_queue(
        self,
        name: bytes,
        capacity: int = 0,
        max_deliveries: int = 0,
        dead_letter: bytes | None = None,
        visibility_timeout_ms: int = 0,
    ) -> Queue:
        """Return the queue called ``name``, creating it if needed (an existing one keeps its options).

        ``visibility_timeout_ms`` is the queue's default visibility timeout, which the wire's reads
        and touches that name none get: 0 for the broker's (`default_visibility_ms`), `NEVER_MS`
        for none.

        Raises `NoSuchQueue` if ``dead_letter`` names no queue, `InvalidRequest`
        if it would close a loop of dead-letter queues.
        """
        queue = self.queues.get(name)
        if queue is not None:
            return queue
        if len(name) > self.max_queue_name:
            raise InvalidQueueName(f"queue names on this server are at most {self.max_queue_name} bytes")
        if len(self.queues) >= self.max_queues:
            raise LimitExceeded(f"the server holds its limit of {self.max_queues} queues")
        if dead_letter:
            self._check_dead_letter(name, dead_letter)
        queue = self.queues[name] = Queue(
            self, name, capacity or self.default_capacity, max_deliveries, dead_letter, visibility_timeout_ms
        )
        if self.journal is not None:
            self.journal.create_queue(name, queue.capacity, max_deliveries, dead_letter, visibility_timeout_ms)
        return queue

    def alter_queue(
        self, name: bytes, max_deliveries: int, dead_letter: bytes | None, visibility_timeout_ms: int
    ) -> Queue:
        """Give the live queue called ``name`` these settings, as `create_queue` takes them (its capacity
        stays as created); return it.

        What changes applies from now on: a message in flight keeps the deadline it has, and is
        dead-lettered, when it comes back, by the settings it then finds; a message already returned
        the new ``max_deliveries`` times or more goes on its next return. Journaled with the queue's
        annotations (`Journal.alter_queue`).

        Raises `NoSuchQueue` if there is no queue ``name`` or ``dead_letter`` names no queue,
        `InvalidRequest` if ``dead_letter`` would close a loop of dead-letter queues; nothing changes then.
        """
        queue = self.queues.get(name)
        if queue is None:
            raise NoSuchQueue(f"no queue named {name.decode('utf-8', 'replace')!r}")
        dead_letter = dead_letter or None
        if dead_letter and dead_letter != queue.dead_letter:
            self._check_dead_letter(name, dead_letter)
        counted = queue.max_deliveries
        queue.max_deliveries = max_deliveries
        queue.dead_letter = dead_letter
        queue.visibility_asked = visibility_timeout_ms
        self._journal_settings(queue)
        if max_deliveries and not counted and self.journal is not None:
            # Delivery counts are journaled only for a queue with a limit (`requeue`): from now on they
            # count, so those of its messages delivered before are stored too.
            for record in self.records.values():
                if record.queue is queue and record.deliveries:
                    self.journal.set_deliveries(record.id, record.deliveries)
        return queue

    def annotate(self, name: bytes, annotations: bytes) -> None:
        """Keep ``annotations`` with the live queue called ``name`` in place of what it had (b"": nothing).

        They are the business of a layer above the broker (the SQS listener keeps its queue attributes
        there), which the broker never reads: kept and journaled (`Journal.alter_queue`), given back by
        `annotations` (after a restart too), dropped with the queue. Raises `NoSuchQueue` if there is no
        queue ``name``.
        """
        queue = self.queues.get(name)
        if queue is None:
            raise NoSuchQueue(f"no queue named {name.decode('utf-8', 'replace')!r}")
        if annotations:
            self.annotations[name] = annotations
        else:
            self.annotations.pop(name, None)
        self._journal_settings(queue)

    def _journal_settings(self, queue: Queue) -> None:
        if self.journal is not None:
            self.journal.alter_queue(
                queue.name,
                queue.max_deliveries,
                queue.dead_letter,
                queue.visibility_asked,
                self.annotations.get(queue.name, b""),
            )

    def _check_dead_letter(self, name: bytes, dead_letter: bytes) -> None:
        seen = {name}
        hop: bytes | None = dead_letter
        while hop:
            if hop in seen:
                raise InvalidRequest(
                    f"dead-letter queue {dead_letter.decode()!r} would close a loop back to {name.decode()!r}"
                )
            seen.add(hop)
            target = self.queues.get(hop)
            hop = target.dead_letter if target is not None else None  # a chain may end at a queue deleted since
        if dead_letter not in self.queues:
            raise NoSuchQueue(f"no queue named {dead_letter.decode()!r} to use as a dead-letter queue")

    def delete_queue(self, name: bytes) -> bool:
        """Drop a queue and every message it holds; return False if there was none.

        Its in-flight and delayed records are dropped lazily: a confirm of one
        answers no-such-message, and its timeout, delay end or holder's
        disconnect discards it. Its waiting reads are woken with None.
        """
        queue = self.queues.pop(name, None)
        if queue is None:
            return False
        queue.deleted = True
        self.annotations.pop(name, None)
        self.granted -= queue.grant  # its records are not counted again as they go
        if self.journal is not None:
            self.journal.delete_queue(name)
        for record in queue.drop_ready():
            del self.records[record.id]
        if queue.delayed:  # free them now, not when their delays end (maybe weeks away)
            for _, lease, record in self._delays:
                if record.queue is queue and record.lease == lease:
                    record.lease = 0
                    record.data = b""
                    del self.records[record.id]
        waiters, queue.waiters = queue.waiters, deque()
        for waiter in waiters:
            if waiter.active:
                self.cancel_wait(waiter)
                waiter.wake(None)
        return True

    def purge(self, queue: Queue) -> int:
        """Drop every ready and delayed message of ``queue``; return how many."""
        dropped = queue.ready + queue.delayed
        if self.journal is not None or queue.origins:
            records = self.records.values()
            in_flight = [record.id for record in records if record.queue is queue and record.held is not None]
            in_flight += [id_ for block in self.blocks if block.queue is queue for id_ in block.members()]
            if self.journal is not None:
                self.journal.purge(queue.name, keep=in_flight)
            origins = queue.origins
            queue.origins = {id_: origins[id_] for id_ in in_flight if id_ in origins}
        for record in queue.drop_ready():
            del self.records[record.id]
        if queue.delayed:
            for _, lease, record in self._delays:
                if record.queue is queue and record.lease == lease:
                    record.lease = 0  # its heap entry goes stale
                    queue.payload_bytes -= len(record.data)
                    record.data = b""  # and holds no payload until it is swept
                    del self.records[record.id]
            queue.purged += queue.delayed
            queue.delayed = 0
        return dropped

    # --- payload bytes ----------------------------------------------------------------

    @property
    def payload_bytes(self) -> int:
        """The payload bytes every live queue holds: ready, in flight and delayed (O(queues))."""
        return sum(queue.payload_bytes for queue in self.queues.values())

    def make_room(self, queue: Queue, size: int, budget: int, capacity: int) -> str | None:
        """Grant ``queue`` room for ``size`` more payload bytes, within its ``capacity`` and within
        ``budget`` over every queue: None when granted, else what refused it ("capacity", "budget").

        Each queue holds a grant of bytes, and the grants together stay within the budget, so
        that a send within its queue's grant is admitted with one comparison, the queue's bytes
        against its grant (`admission`). Past it, the grant grows by what is missing and some
        spare, taken from the budget's unused part; when that is not enough, every queue's grant
        shrinks to what it holds (O(queues), only near the budget), and the send is refused if
        the queues then hold too much to take it. A dead-letter move is never refused: its bytes
        leave one queue as they join another (its queue may then hold more than its grant,
        which its next send's check sees).
        """
        need = queue.payload_bytes + size
        if need > capacity:
            return "capacity"
        extra = need - queue.grant
        if self.granted + extra > budget:
            self._reclaim()
            extra = need - queue.grant
            if self.granted + extra > budget:
                return "budget"
        extra += max(0, min(GRANT_SPARE, capacity - need, budget - self.granted - extra))
        queue.grant += extra
        self.granted += extra
        return None

    def _reclaim(self) -> None:
        """Shrink every queue's grant to the bytes it holds."""
        granted = 0
        for queue in self.queues.values():
            queue.grant = queue.payload_bytes
            granted += queue.payload_bytes
        self.granted = granted

    # --- sending ---------------------------------------------------------------------

    def enqueue(self, queue: Queue, data: bytes, now: float) -> int:
        """Append a message and hand it to a waiting read if there is one; return its id or -1 (full)."""
        id_ = queue.push(data, now)
        if id_ >= 0 and queue.waiters:
            self.feed_waiters(queue, now)
        return id_

    def enqueue_batch(self, queue: Queue, items: list[bytes], now: float, size: int = -1) -> list[int] | None:
        """Append every message or none (``size``: their payload bytes, if known); return their ids,
        or None if they do not all fit."""
        if not queue.has_room(len(items)):
            return None
        ids = queue.push_many(items, size, now)
        if queue.waiters:
            self.feed_waiters(queue, now)
        return ids

    def enqueue_columns(self, queue: Queue, lengths: bytes, data: bytes, now: float) -> bytes | None:
        """`enqueue_batch` for a batch in its columns (u32 lengths, payloads back to back), kept as
        they are; return the ids as a u64 column, or None if they do not all fit."""
        if not queue.has_room(len(lengths) // 4):
            return None
        ids = queue.push_columns(lengths, data, now)
        if queue.waiters:
            self.feed_waiters(queue, now)
        return ids

    def enqueue_delayed(self, queue: Queue, data: bytes, delay_ms: int, now: float) -> int:
        """Add a message that becomes ready after ``delay_ms``; return its id or -1 (full)."""
        if not queue.has_room():
            return -1
        record = Record(self.allocate_ids(1), queue, data, None, now)
        self.records[record.id] = record
        queue.enqueued += 1
        queue.payload_bytes += len(data)
        self._delay(record, delay_ms, now)
        if self.journal is not None:
            self.journal.add(queue.name, record.id, data, due_ms=now_ms() + delay_ms, enqueued_ms=self.wall_ms(now))
        return record.id

    def _delay(self, record: Record, delay_ms: int, now: float) -> None:
        record.queue.delayed += 1
        record.lease = self._leases = self._leases + 1
        heapq.heappush(self._delays, (now + delay_ms / 1000.0, record.lease, record))

    # --- reading ---------------------------------------------------------------------

    def deliver(self, queue: Queue, timeout_ms: int, held: Holding, now: float) -> Record | None:
        """Read the next message of ``queue`` on behalf of ``held``; None when none is ready."""
        record = queue.take(held)
        if record is not None and timeout_ms:
            self.set_deadline(record, timeout_ms, now)
        return record

    def set_deadline(self, record: Record, timeout_ms: int, now: float) -> float:
        """Give an in-flight record, without a deadline yet, one ``timeout_ms`` from now; return it."""
        record.lease = lease = self._leases = self._leases + 1
        deadlines = self._deadlines
        deadline = now + timeout_ms / 1000.0
        lane = deadlines.lanes.get(timeout_ms)
        if lane is None:  # a timeout no record in flight has: its lane is made
            deadlines.push(timeout_ms, deadline, lease, record)
        else:  # (`DeadlineLanes.push`'s usual case, inlined: a read's deadline costs one call, not two)
            lane.append((deadline, lease, record))
            deadlines.size += 1
        timed = self._timed = self._timed + 1
        if deadlines.size > 2 * timed + 1024:
            deadlines.keep_live()
        return deadline

    def deliver_many(self, queue: Queue, max_messages: int, timeout_ms: int, held: Holding, now: float) -> list[Entry]:
        """Read up to ``max_messages`` messages of ``queue``, stopping once their payloads
        pass ``max_batch_bytes`` so that any client can take the reply in (see `columns`)."""
        entries = queue.take_many(held, max_messages, self.max_batch_bytes)
        if entries and timeout_ms:
            self.set_deadlines(entries, timeout_ms, now)
        return entries

    def set_deadlines(self, entries: list[Entry], timeout_ms: int, now: float) -> float:
        """`set_deadline` for a batch: one lease number, one lane entry each, in read order."""
        lease = self._leases = self._leases + 1
        for entry in entries:
            entry.lease = lease
        deadlines = self._deadlines
        deadline = now + timeout_ms / 1000.0
        deadlines.push_many(timeout_ms, deadline, lease, entries)
        self._timed += len(entries)
        if deadlines.size > 2 * self._timed + 1024:
            deadlines.keep_live()
        return deadline

    def wait(
        self,
        queue: Queue,
        held: Holding,
        timeout_ms: int,
        max_messages: int,
        wait_ms: int,
        now: float,
        wake: Callable[[list[Entry] | None], None],
    ) -> Waiter:
        """Park a read on an empty queue: ``wake`` gets its messages, or [] once ``wait_ms`` passes."""
        # Retired waiters are dropped lazily; rebuild before they pile up.
        if len(queue.waiters) > 2 * queue.waiting + 16:
            queue.waiters = deque(w for w in queue.waiters if w.active)
        if len(self._waits) > 2 * self._waiting + 1024:
            self._waits = [entry for entry in self._waits if entry[2].active]
            heapq.heapify(self._waits)
        waiter = Waiter(queue, held, timeout_ms, max_messages, now + wait_ms / 1000.0, wake)
        queue.waiters.append(waiter)
        queue.waiting += 1
        self._waiting += 1
        self._leases += 1
        heapq.heappush(self._waits, (waiter.deadline, self._leases, waiter))
        return waiter

    def cancel_wait(self, waiter: Waiter) -> None:
        """Retire a waiting read (answered, timed out, or its connection closed)."""
        if not waiter.active:
            return
        waiter.active = False
        waiter.queue.waiting -= 1
        self._waiting -= 1

    def feed_waiters(self, queue: Queue, now: float) -> None:
        """Hand ready messages to the queue's waiting reads, oldest first."""
        while queue.waiters and queue.ready:
            waiter = queue.waiters.popleft()
            if waiter.active:
                self.cancel_wait(waiter)
                room = min(waiter.max_messages, self.max_in_flight - waiter.held.count)
                waiter.wake(self.deliver_many(queue, room, waiter.timeout_ms, waiter.held, now) if room > 0 else [])

    # --- settling --------------------------------------------------------------------

    def confirm(self, id_: int, held: Holding) -> Outcome:
        """Acknowledge message ``id_`` on behalf of ``held``, which must hold it in flight: a
        message in anyone else's hands, or ready again, is not settled (`elsewhere` says why)."""
        record = self.records.get(id_)
        if record is None:
            block = self.blocks.find(id_)
            if block is None or block.held is not held or not block.holds(id_):
                return _NO_SUCH_MESSAGE  # a block's member is a first delivery: never requeued
            self._settle(block, (id_,))
            return _NO_SUCH_MESSAGE if block.queue.deleted else _DONE
        if record.held is not held:
            return elsewhere(record)
        del self.records[id_]
        del held[id_]
        record.held = None
        queue = record.queue
        if record.lease:
            self._timed -= 1
            record.lease = 0  # its lane entry goes stale
        if queue.deleted:
            record.data = b""
            return _NO_SUCH_MESSAGE
        queue.payload_bytes -= len(record.data)
        record.data = b""  # a stale lane entry may keep the record a while
        queue.confirmed += 1
        if queue.has_origins:
            queue.origins.pop(id_, None)
        if self.journal is not None:
            self.journal.remove(id_)
        return _DONE

    def confirm_many(self, ids: tuple[int, ...], held: Holding) -> bytes:
        """Acknowledge messages by id on behalf of ``held``; return one `Outcome` byte each.

        The usual case, a confirm of messages read together (distinct members of one block
        ``held`` holds, of a live queue), settles them at once; any other goes id by id.
        """
        block = self.blocks.find(ids[0]) if ids else None
        if block is not None and block.held is held and not block.queue.deleted:
            first, end = block.first_id, block.end
            if block.live == end - first == len(ids) and ids == tuple(range(first, end)):  # whole: no set needed
                self._settle(block, ids)
                return bytes(len(ids))  # zeros: DONE
            members = set(ids)
            if (
                len(members) == len(ids)
                and first <= min(ids) and max(ids) < end
                and (block.gone is None or block.gone.isdisjoint(members))
            ):  # fmt: skip
                self._settle(block, ids)
                return bytes(len(ids))
        return bytes([self.confirm(id_, held) for id_ in ids])

    def confirm_column(self, ids: bytes, held: Holding) -> bool:
        """Confirm a whole block ``held`` holds, its ids given as the u64 column it was read with (what a
        consumer that confirms a batch as it read it sends): True if they were that, else False, having
        done nothing (`confirm_many` then settles them id by id)."""
        block = self.blocks.find(int.from_bytes(ids[:8], "big"))
        if (
            block is None
            or block.held is not held
            or block.slab is None
            or block.slab[0] != ids
            or block.live != block.end - block.first_id
            or block.queue.deleted
        ):
            return False
        self._settle(block, range(block.first_id, block.end))
        return True

    def _settle(self, block: Block, ids: tuple[int, ...] | range) -> None:
        """Confirm distinct held members of a block (none of them confirmed, if its queue was deleted)."""
        queue = block.queue
        if not queue.deleted:
            size = block.size  # (`Block.bytes_of`, inlined for the usual case: every member, size known)
            queue.payload_bytes -= size if size >= 0 and len(ids) == block.live else block.bytes_of(ids)
            queue.confirmed += len(ids)
            if self.journal is not None:
                self.journal.remove_many(ids)
            if queue.has_origins:
                for id_ in ids:
                    queue.origins.pop(id_, None)
        self._depart(block, ids)

    def _depart(self, block: Block, ids: tuple[int, ...] | list[int] | range) -> None:
        """Mark distinct held members as gone from their block; retire it when none is left."""
        if len(ids) == block.live:  # the last ones: nothing left to mark
            block.held.extra -= block.live - 1  # (and its entry goes)
            self._retire(block)
            return
        block.held.extra -= len(ids)
        if block.gone is None:
            block.gone = set(ids)
        else:
            block.gone.update(ids)
        block.live -= len(ids)

    def _retire(self, block: Block) -> None:
        """Forget a block none of whose members is held any more."""
        if block.lease:
            self._timed -= 1
            block.lease = 0  # its lane entry goes stale
        del block.held[block]
        self.blocks.remove(block)
        block.live = 0
        block.items = []
        block.slab = None
        block.held = None  # type: ignore[assignment]  # the retired mark (see `Block`)

    def _split(self, block: Block, ids: list[int]) -> list[Record]:
        """Give these held members of a block records of their own (in flight, no deadline yet)."""
        records = self.records
        held = block.held
        first = block.first_id
        block.bytes_of(ids)  # they leave the block's size, not their queue's bytes
        split = [Record(id_, block.queue, block.payloads[id_ - first], held, block.enqueued(id_)) for id_ in ids]
        for record in split:
            records[record.id] = held[record.id] = record
            record.read = block.read
        self._depart(block, ids)
        return split

    def records_of(self, entries: Iterable[Entry]) -> list[Record]:
        """The in-flight records of these entries, in order, a block's held members split off."""
        records: list[Record] = []
        for entry in entries:
            if isinstance(entry, Block):
                if entry.held is not None:
                    records += self._split(entry, entry.members())
            else:
                records.append(entry)
        return records

    def touch(self, id_: int, timeout_ms: int | None, now: float, held: Holding) -> Outcome:
        """Move the deadline of message ``id_``, which ``held`` holds in flight, to ``now + timeout_ms``
        (0: no timeout; None: its queue's visibility timeout)."""
        record = self._in_flight(id_, held)
        if not isinstance(record, Record):
            return record
        if timeout_ms is None:
            timeout_ms = record.queue.visibility_ms % NEVER_MS
        if record.lease:
            self._timed -= 1
            record.lease = 0  # the old heap entry goes stale
        if timeout_ms:
            self.set_deadline(record, timeout_ms, now)
        return _DONE

    def release(self, id_: int, delay_ms: int, now: float, held: Holding) -> Outcome:
        """Give message ``id_``, which ``held`` holds in flight, back now (to the front of its queue)
        or after ``delay_ms`` (to the back)."""
        record = self._in_flight(id_, held)
        if not isinstance(record, Record):
            return record
        self.requeue([record], now, delay_ms)
        return _DONE

    def dead_letter(self, id_: int, now: float, held: Holding) -> Outcome:
        """Move message ``id_``, which ``held`` holds in flight, to the back of its queue's dead-letter
        queue now, whatever its delivery count: the move `_dead_letter` makes when the deliveries are
        spent (a new id there, its origin kept), answered like a release otherwise (`_in_flight`).

        Raises `InvalidRequest` if its queue has no dead-letter queue, `NoSuchQueue` if that queue
        was deleted since, `QueueFull` if it has no room: a refused message stays as it was, in
        flight with ``held`` (checked before `_in_flight` splits it off a block, which drops its deadline).
        """
        entry = self.records.get(id_) or self.blocks.find(id_)
        if (
            entry is not None
            and entry.held is held
            and not entry.queue.deleted
            and (isinstance(entry, Record) or entry.holds(id_))
        ):
            queue = entry.queue
            name = queue.name.decode("utf-8", "replace")
            if not queue.dead_letter:
                raise InvalidRequest(f"queue {name!r} has no dead-letter queue: message {id_} stays in flight")
            target = self.queues.get(queue.dead_letter)
            if target is None:
                raise NoSuchQueue(
                    f"the dead-letter queue {queue.dead_letter.decode('utf-8', 'replace')!r} of {name!r} "
                    f"was deleted: message {id_} stays in flight"
                )
            if not target.has_room():
                raise QueueFull(f"the dead-letter queue of {name!r} is full: message {id_} stays in flight")
        record = self._in_flight(id_, held)
        if not isinstance(record, Record):
            return record
        del held[id_]
        record.held = None
        if record.lease:
            self._timed -= 1
            record.lease = 0  # its lane entry goes stale
        self._dead_letter(record, now)
        return _DONE

    def _in_flight(self, id_: int, held: Holding) -> Record | Outcome:
        """The record of message ``id_`` that ``held`` holds in flight (split off its block), or the
        outcome that says why there is none."""
        record = self.records.get(id_)
        if record is None:
            block = self.blocks.find(id_)
            if block is None or block.held is not held or block.queue.deleted or not block.holds(id_):
                return _NO_SUCH_MESSAGE
            return self._split(block, [id_])[0]
        if record.held is not held:
            return elsewhere(record)
        if record.queue.deleted:
            return _NO_SUCH_MESSAGE
        return record

    def requeue(self, entries: Iterable[Entry], now: float, delay_ms: int = 0) -> int:
        """Take in-flight messages back, keeping their order at the front of their queues; return how many."""
        records = self.records_of(entries)
        returned = 0
        touched: set[Queue] = set()
        spent: list[Record] = []  # out of deliveries, in reverse order
        for record in reversed(records):
            del record.held[record.id]  # type: ignore[union-attr]  # records_of gives records in flight
            record.held = None
            if record.lease:
                self._timed -= 1
                record.lease = 0
            queue = record.queue
            if queue.deleted:
                del self.records[record.id]
            elif queue.max_deliveries and record.deliveries >= queue.max_deliveries:
                spent.append(record)
            elif delay_ms:
                self._delay(record, delay_ms, now)
                queue.requeued += 1
                if self.journal is not None:
                    self.journal.set_due(record.id, now_ms() + delay_ms)
            else:
                queue.push_front(record)
                queue.requeued += 1
                returned += 1
                touched.add(queue)
            if queue.max_deliveries and self.journal is not None and not queue.deleted:
                # Counted where it matters: after a restart, dead-lettering picks up from here.
                self.journal.set_deliveries(record.id, record.deliveries)
        for record in reversed(spent):  # dead letters keep their order
            self._dead_letter(record, now)
        for queue in touched:
            if queue.waiters:
                self.feed_waiters(queue, now)
        return returned

    def release_all(self, held: Holding, now: float) -> int:
        """Requeue everything a closing connection holds, in its read order; return how many went back."""
        records = self.records_of(list(held.values()))
        records.sort(key=read_order)
        return self.requeue(records, now)

    def _dead_letter(self, record: Record, now: float) -> None:
        # Its bytes leave its queue and, unless the dead-letter queue is full, join that one: a move
        # that leaves the server's total as it was is never refused for the memory budget.
        queue = record.queue
        del self.records[record.id]
        queue.dead_lettered += 1
        queue.payload_bytes -= len(record.data)
        if self.journal is not None:
            self.journal.remove(record.id)
        target = self.queues.get(queue.dead_letter) if queue.dead_letter else None
        if target is None or not target.has_room():
            # Dropped, and counted where Stats shows it (``dropped``), besides this line of the log.
            queue.dropped += 1
            why = (
                "it has no dead-letter queue"
                if not queue.dead_letter
                else f"its dead-letter queue {queue.dead_letter.decode('utf-8', 'replace')!r} "
                + ("was deleted" if target is None else "is full")
            )
            log.warning(
                "message %d of %r dropped after %d deliveries: %s",
                record.id,
                queue.name.decode("utf-8", "replace"),
                record.deliveries,
                why,
            )
        else:
            first = queue.origins.pop(record.id, None) if queue.has_origins else None
            origin = first or Origin(queue.name, record.id, self.wall_ms(record.enqueued), record.deliveries)
            target.push_letter(record.data, now, origin, self.wall_ms(now))
            if target.waiters:
                self.feed_waiters(target, now)
            return
        if queue.has_origins:
            queue.origins.pop(record.id, None)

    # --- looking and moving -------------------------------------------------------------

    def peek(
        self,
        queue: Queue,
        count: int,
        now: float,
        *,
        delayed: bool = False,
        in_flight: bool = False,
        max_bytes: int | None = None,
    ) -> list[Peeked]:
        """Up to ``count`` messages of ``queue``, left as they are (no count changes, nothing is
        delivered): the ready ones in queue order, then with ``in_flight`` those in flight (in read
        order), then with ``delayed`` the delayed ones (soonest first). The list stops before the
        entry that would take the reply's entries (payloads, fixed fields and origins, as PEEKED
        lays them out) past ``max_bytes`` (`max_batch_bytes` if not given); the first one always goes."""
        limit = self.max_batch_bytes if max_bytes is None else max_bytes
        seen: list[Peeked] = []
        size = 0

        def add(id_: int, data: bytes, deliveries: int, state: str, when: float, origin: Origin | None) -> bool:
            nonlocal size
            size += len(data) + PEEKED_ENTRY.size
            if origin is not None:
                size += ORIGIN_HEAD.size + NAME_SIZE + len(origin.queue)
            if seen and size > limit:
                return False
            seen.append(Peeked(id_, data, deliveries, state, self.wall_ms(when), origin))
            return len(seen) < count

        origins = queue.origins
        for id_, data, deliveries, when, origin in queue.ready_view(count):
            if not add(id_, data, deliveries, "ready", when, origin):
                return seen
        if in_flight and len(seen) < count:
            flying: list[tuple[int, int, bytes, int, float, Origin | None]] = [
                (record.read, record.id, record.data, record.deliveries, record.enqueued, origins.get(record.id))
                for record in self.records.values()
                if record.queue is queue and record.held is not None
            ]
            for block in self.blocks:
                if block.queue is queue:
                    payloads, first = block.payloads, block.first_id
                    flying += [
                        (block.read, id_, payloads[id_ - first], 1, block.enqueued(id_), origins.get(id_))
                        for id_ in block.members()
                    ]
            flying.sort(key=lambda entry: entry[:2])
            for _, id_, data, deliveries, when, origin in flying:
                if not add(id_, data, deliveries, "in_flight", when, origin):
                    return seen
        if delayed and len(seen) < count and queue.delayed:
            waiting = sorted(
                (due, record.id, record)
                for due, lease, record in self._delays
                if record.queue is queue and record.lease == lease
            )
            for _, _, record in waiting:
                origin = origins.get(record.id)
                if not add(record.id, record.data, record.deliveries, "delayed", record.enqueued, origin):
                    return seen
        return seen

    def move(self, source: Queue, destination: Queue, count: int | None, now: float) -> int:
        """Move up to ``count`` ready messages (None: every one) from the front of ``source`` to the
        back of ``destination``, in order, in one step; return how many moved. They keep their ids,
        delivery counts, enqueue times and origins. A destination with a capacity takes what fits
        (the rest stay in ``source``); the memory budget is not checked (the bytes only change queue).

        Raises `InvalidRequest` when ``source`` is ``destination``.
        """
        if source is destination:
            raise InvalidRequest("a queue cannot be moved into itself")
        wanted = source.ready if count is None else min(count, source.ready)
        if destination.capacity:
            wanted = min(wanted, max(0, destination.capacity - destination.count))
        if wanted <= 0:
            return 0
        records = source.take_ready(wanted)
        size = sum([len(record.data) for record in records])
        source.moved += len(records)
        source.payload_bytes -= size
        destination.enqueued += len(records)
        destination.payload_bytes += size
        journal = self.journal
        for record in records:
            record.queue = destination
            self.records[record.id] = record
            destination.push_back(record)
            origin = source.origins.pop(record.id, None) if source.has_origins else None
            if origin is not None:
                destination.origins[record.id] = origin
                destination.has_origins = True
            if journal is not None:
                journal.remove(record.id)
                journal.add(
                    destination.name,
                    record.id,
                    record.data,
                    deliveries=record.deliveries,
                    enqueued_ms=self.wall_ms(record.enqueued),
                    origin=origin,
                )
        if destination.waiters:
            self.feed_waiters(destination, now)
        return len(records)

    # --- time ------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Run every event now due: timeouts, delay ends, waits. Return how many messages came back."""
        due = [entry for _, lease, entry in self._deadlines.pop_due(now) if entry.lease == lease]
        # Expired in deadline order (read order on ties); `requeue` keeps that order.
        count = self.requeue(due, now)
        delays = self._delays
        ready: set[Queue] = set()
        while delays and delays[0][0] <= now:
            _, lease, record = heapq.heappop(delays)
            if record.lease != lease:
                continue  # purged
            record.lease = 0
            queue = record.queue
            queue.delayed -= 1
            if queue.deleted:
                self.records.pop(record.id, None)
                continue
            queue.push_back(record)
            ready.add(queue)
        for queue in ready:
            if queue.waiters:
                self.feed_waiters(queue, now)
        waits = self._waits
        while waits and waits[0][0] <= now:
            waiter = heapq.heappop(waits)[2]
            if waiter.active:
                self.cancel_wait(waiter)
                waiter.wake([])
        return count

    def next_deadline(self) -> float | None:
        """The earliest time `expire` has something to do (it may be a stale entry), or None."""
        tops = [heap[0][0] for heap in (self._delays, self._waits) if heap]
        first = self._deadlines.next_deadline()
        if first is not None:
            tops.append(first)
        return min(tops) if tops else None

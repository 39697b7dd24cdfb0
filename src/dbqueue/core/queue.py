"""One named queue and what it hands out: records and blocks, held in flight by a connection's
`Holding`, and the reads that wait on it.

Theory of operation
-------------------
A message is *ready* (in its queue, waiting for a read), *in flight* (read,
waiting for its confirm) or *delayed* (sent or released with a delay not yet
over). A `Queue` holds its ready messages itself, as a deque of segments (see
`segments`: runs and slabs of fresh messages, and records), and counts the
others. A fresh message is appended to the tail run; its id is the next of the
queue's current id block, a range of `ID_BLOCK` ids taken from the broker's
server-wide counter, so a queue takes from the counter once per block, not
once per message. A batch sent in columns is kept whole as a slab. A tail run
ends after `segments.RUN_LIMIT` messages (or at its id block's end: the
send that finds ``_run_end`` reached, one comparison it makes anyway, starts
the next run), and what it still holds is then sealed into a slab when the
queue holds a long backlog (``seal_backlog``, `segments.SEAL_BACKLOG`), so
that single sends left waiting cost what batches cost.

A read turns the first ready message into a `Record`, kept in `Broker.records`
(by id) and in its holder's `Holding` (one per connection; ``read`` numbers
keep the read order). A batch read takes fresh messages as a `Block` instead:
one object for a slice of a run or of a slab, with one deadline, held under
itself and found from any member's id through `Broker.blocks` (a `BlockIndex`:
buckets of id ranges), so a batch costs a few operations, not a dict entry per
message. A block cut from a slab keeps the slab's columns and an id column
built for it (a slab keeps only its first id): the reply is those columns
joined, and a confirm of the block as it was read is recognised by comparing
its ids column (`Broker.confirm_column`), so a batch sent, read and confirmed
whole costs no Python step per message at all. Members that leave a block
are marked in its ``gone`` set: a confirm marks them; a touch, release or
return gives the member a `Record` of its own (`Broker._split`). A block is
retired when its last member leaves.

A message that comes back goes to the front of its queue (`Queue.push_front`),
ahead of every fresh message; a delayed one joins the back when its delay ends
(`Queue.push_back`), and the next fresh message starts a new run behind it.

Enqueue times. A record carries its first enqueue time (``enqueued``, in the
caller's clock, as ``now``); a fresh message does not, to keep it a bare
payload: its queue keeps *marks* instead, (id, time) pairs, one for the first
fresh message sent in each 10 ms (`MARK_RESOLUTION`), so a fresh message's
time is its id's mark's, up to 10 ms early, at a cost of one comparison per
send and at most a hundred marks a second. Fresh ids grow with time
within a queue, so the marks are sorted by id and taken from the front as
fresh messages leave (a record takes its time along; a block keeps the marks
of its range). The age of the message at the front of the queue, what STATS
calls ``oldest_ready_age_ms``, is then one look at the first segment.

Dead letters carry an `journal.Origin`: where they came from. A queue keeps
its messages' origins beside them, by id (``origins``), so that neither a
payload in a run nor a record grows for them, and a queue that has ever held
one sets ``has_origins``: the paths that settle messages look at ``origins``
only then, and the server's fast paths check it once per request to leave
such queues' reads to the general path (the only one that writes origins), so
the common request pays nothing for them.

A read with ``wait_ms`` on an empty queue leaves a `Waiter`, in its queue's
``waiters`` (oldest first) and in the broker's heap of wait ends. Every path
that makes a message ready (`Broker.enqueue`, a requeue, a delay end) hands it
straight to the queue's first live waiter, whose ``wake`` callback (the
session's) sends the answer; `Broker.expire` wakes the ones whose wait is over
with nothing. A waiter that is answered, times out or loses its connection is
only marked inactive (`Broker.cancel_wait`): the structures that still list it
skip it, and are rebuilt before such leftovers pile up.

Why one module: a queue, the records and blocks it makes, the holding that
keeps them and the reads that wait on it all refer to one another, so they
cannot sit in modules that each import only those below them. The broker
that owns the queues stays apart: a queue sees it as an `Owner`.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice, repeat, starmap
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol.codecs import id_column
from .segments import RUN_LIMIT, SEAL_BACKLOG, Run, Slab, cut_payloads, seal

if TYPE_CHECKING:
    from .journal import Journal, Origin

__all__ = [
    "BATCH_ENTRY_OVERHEAD", "BUCKET_BITS", "ID_BLOCK", "NO_BYTE_LIMIT", "Block", "BlockIndex", "Entry", "Holding",
    "MARK_RESOLUTION", "Owner", "Queue", "Record", "Waiter", "columns", "read_order",
]  # fmt: skip

ID_BLOCK = 1 << 16  # ids a queue takes from the broker's counter at a time
BUCKET_BITS = 6  # `BlockIndex` lists a block under each 64-id range it overlaps
BATCH_ENTRY_OVERHEAD = 16  # a batch reply's id, deliveries and length for each payload
NO_BYTE_LIMIT = 1 << 62  # `Queue.take_many`'s limit for reads answered one frame each
MARK_RESOLUTION = 0.01  # seconds a queue's enqueue-time mark covers at most (see the module's docstring)
Mark = tuple[int, float]  # (the first id it covers, its enqueue time)
_unpack_u32 = struct.Struct(">I").unpack_from  # a slab's length column, one member's
_next_read = itertools.count(1).__next__  # numbers every read server-wide, so a holder's reads sort in read order


# --- what a read hands out ------------------------------------------------------------------------


class Record:
    """A message that has been read at least once, or was delayed.

    ``held`` is its holder's `Holding` while in flight, None otherwise; ``read`` numbers
    its last read (see `Holding`). ``enqueued`` is its first enqueue time (the callers'
    clock, as ``now``).
    """

    __slots__ = ("id", "queue", "data", "deliveries", "lease", "held", "read", "enqueued")

    def __init__(self, id_: int, queue: Queue, data: bytes, held: Holding | None = None, enqueued: float = 0.0) -> None:
        self.id = id_
        self.queue = queue
        self.data = data
        self.deliveries = 1 if held is not None else 0  # a record made for a read is a first delivery
        self.lease = 0  # its live heap entry: a deadline while in flight, a delay end while delayed
        self.held = held
        self.read = _next_read()
        self.enqueued = enqueued


class Block:
    """Fresh messages with consecutive ids, ``first_id`` up to ``end``, read together by one batch
    read and in flight on one deadline. ``live`` of them are still held; the ids of those that
    left (confirmed, or given a record of their own by `Broker._split`) are in ``gone``.

    Taken from a run, it holds its payloads as ``items``; taken from a slab, as ``slab``: the
    columns of the batch they were sent in (u64 ids, built when taken, u32 lengths, payloads back to back), from
    which a batch reply is built and a batch confirm recognised without a step per message.
    ``held`` becomes None when the block is retired. Its type leaves None out: nearly every path
    handles blocks in flight and may take it as set; the few that may meet a retired block test
    for it (`holds`, `Broker.records_of`), and its lane entry, stale, is skipped by its lease.
    """

    __slots__ = (
        "first_id", "end", "queue", "items", "slab", "held", "live", "gone", "lease", "read", "size", "marks",
    )  # fmt: skip
    deliveries = 1  # a block is always a first delivery

    def __init__(
        self,
        first_id: int,
        queue: Queue,
        count: int,
        held: Holding,
        items: list[bytes] | None = None,
        slab: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self.first_id = first_id
        self.end = first_id + count
        self.queue = queue
        self.items = items
        self.slab = slab
        self.held = held  # None once retired, a mark its type leaves out: see the class docstring
        self.live = count
        self.gone: set[int] | None = None  # made on the first departure: most blocks leave whole
        self.lease = 0
        self.read = _next_read()  # see `Record`
        # The payload bytes of its members still held; -1 until known (a run's slice is added up only
        # when needed: `take_many` knows the sum when it checks a byte limit, and a read run's reply
        # tells it for nothing, see `fastpath`).
        self.size = len(slab[2]) if slab is not None else -1
        # Its members' enqueue times: the one mark that covers them all (the usual case, found inline:
        # a block is made per batch read), or the list of those that do (`Queue.marks_of`).
        marks = queue._marks
        self.marks: Mark | list[Mark] | None = marks[0] if len(marks) == 1 else queue.marks_of(first_id, self.end)

    def enqueued(self, id_: int) -> float:
        """Member ``id_``'s enqueue time."""
        marks = self.marks
        if marks is None:
            return 0.0
        if isinstance(marks, tuple):  # one mark: (first id, time)
            return marks[1]
        return time_of(marks, id_)

    @property
    def payloads(self) -> list[bytes]:
        """Every member's payload, in id order (a slab's are cut apart the first time they are asked for)."""
        if self.items is None:
            _, lengths, data = self.slab  # type: ignore[misc]  # no items: taken from a slab, so it has one
            self.items = cut_payloads(lengths, data)
        return self.items

    def holds(self, id_: int) -> bool:
        """Whether member ``id_`` (in range) is still held as part of this block."""
        return self.held is not None and (self.gone is None or id_ not in self.gone)

    def bytes_of(self, ids: tuple[int, ...] | list[int] | range) -> int:
        """The payload bytes of these members, which are leaving (all those still held, or some)."""
        if len(ids) == self.live:  # every member still held
            if self.size < 0:
                self.size = sum(map(len, self.payloads)) if self.gone is None else self.bytes_of_members(ids)
            return self.size
        size = self.bytes_of_members(ids)
        if self.size >= 0:
            self.size -= size
        return size

    def bytes_of_members(self, ids: tuple[int, ...] | list[int] | range) -> int:
        payloads, first = self.payloads, self.first_id
        return sum([len(payloads[id_ - first]) for id_ in ids])

    def members(self) -> list[int]:
        """The ids of the members still held as part of this block, in order."""
        gone = self.gone
        return [id_ for id_ in range(self.first_id, self.end) if gone is None or id_ not in gone]


Entry = Record | Block  # what a holder holds in flight


def time_of(marks: list[Mark] | deque[Mark], id_: int) -> float:
    """The time of the last of ``marks`` (sorted by id) at or below ``id_``; the first mark's if none."""
    when = marks[0][1] if marks else 0.0
    for first, at in marks:
        if first > id_:
            break
        when = at
    return when


class Holding(dict[int | Block, Entry]):
    """What one connection holds in flight: each `Record` under its id, each `Block` under itself.
    ``extra`` is what its blocks' single entries leave out of the count of messages (`count`),
    kept by the block paths alone, so that a lone read or confirm costs one dict operation. Reads
    are numbered (``read``), so that what it holds can be put back in read order (`read_order`)."""

    __slots__ = ("extra",)

    def __init__(self) -> None:
        super().__init__()
        self.extra = 0  # the sum of (live members - 1) over its blocks

    @property
    def count(self) -> int:
        """How many messages it holds (a block counts its live members)."""
        return len(self) + self.extra

    def ids(self) -> list[int]:
        """The ids of the messages held, in read order."""
        order: list[tuple[int, int]] = []
        for entry in self.values():
            if isinstance(entry, Block):
                order += zip(repeat(entry.read), entry.members())
            else:
                order.append((entry.read, entry.id))
        return [id_ for _, id_ in sorted(order)]


def read_order(record: Record) -> tuple[int, int]:
    """A sort key for one holder's records: read order (a batch's members share a read, in id order)."""
    return record.read, record.id


class BlockIndex:
    """The blocks in flight, found by any member's id: each is listed under every bucket of
    2**BUCKET_BITS ids it overlaps, a few entries per block however many members it has."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, list[Block]] = {}

    def __iter__(self) -> Iterator[Block]:
        return iter(dict.fromkeys(block for bucket in self.buckets.values() for block in bucket))

    def add(self, block: Block) -> None:
        buckets = self.buckets
        for key in range(block.first_id >> BUCKET_BITS, ((block.end - 1) >> BUCKET_BITS) + 1):
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [block]
            else:
                bucket.append(block)

    def remove(self, block: Block) -> None:
        buckets = self.buckets
        for key in range(block.first_id >> BUCKET_BITS, ((block.end - 1) >> BUCKET_BITS) + 1):
            bucket = buckets[key]
            if len(bucket) == 1:
                del buckets[key]
            else:
                bucket.remove(block)

    def find(self, id_: int) -> Block | None:
        """The block in flight that ``id_`` belongs to (the member may have left it), or None."""
        bucket = self.buckets.get(id_ >> BUCKET_BITS)
        if bucket is not None:
            for block in bucket:
                if block.first_id <= id_ < block.end:
                    return block
        return None


def columns(entries: list[Entry]) -> tuple[list[int], list[int], list[bytes]]:
    """The ids, delivery counts and payloads of read messages, in read order."""
    ids: list[int] = []
    deliveries: list[int] = []
    payloads: list[bytes] = []
    for entry in entries:
        if entry.__class__ is Block:
            ids += range(entry.first_id, entry.end)
            deliveries += repeat(1, len(entry.payloads))
            payloads += entry.payloads
        else:  # a record (mypy narrows `x.__class__ is C` in its if branch only)
            ids.append(entry.id)  # type: ignore[union-attr]  # a record: see above
            deliveries.append(entry.deliveries)
            payloads.append(entry.data)  # type: ignore[union-attr]  # a record: see above
    return ids, deliveries, payloads


# --- reads that wait ------------------------------------------------------------------------------


class Waiter:
    """A read waiting for a message; ``wake`` gets the records, or None if the queue was deleted."""

    __slots__ = ("queue", "held", "timeout_ms", "max_messages", "deadline", "wake", "active")

    def __init__(
        self,
        queue: Queue,
        held: Holding,
        timeout_ms: int,
        max_messages: int,
        deadline: float,
        wake: Callable[[list[Entry] | None], None],
    ) -> None:
        self.queue = queue
        self.held = held
        self.timeout_ms = timeout_ms
        self.max_messages = max_messages
        self.deadline = deadline
        self.wake = wake
        self.active = True


# --- the queue ------------------------------------------------------------------------------------


class Owner(Protocol):
    """What a queue uses of the broker that owns it (`broker.Broker`), named as a protocol so that
    this module need not import `broker`, which imports it."""

    records: dict[int, Record]
    blocks: BlockIndex
    journal: Journal | None
    granted: int  # the bytes granted to every live queue (see `Queue.grant`)
    default_visibility_ms: int  # a queue's visibility timeout when it was created without one
    clock: Callable[[], float]  # the clock its callers pass as ``now`` (for figures asked without one)

    def allocate_ids(self, count: int) -> int: ...


def _fitting(lengths: list[int], room: int, first: bool) -> tuple[int, int]:
    """How many of these payloads fit in ``room`` bytes of batch reply, and the bytes they take
    (at least one when ``first``: a batch always carries its first message)."""
    used = sum(lengths) + BATCH_ENTRY_OVERHEAD * len(lengths)
    if used <= room:
        return len(lengths), used
    used = 0
    for count, length in enumerate(lengths):
        if used + length + BATCH_ENTRY_OVERHEAD > room and (count or not first):
            return count, used
        used += length + BATCH_ENTRY_OVERHEAD
    return len(lengths), used


class Queue:
    """One named queue. ``count`` is every message it holds: ready, in flight and delayed, and
    ``payload_bytes`` their payloads' bytes. ``grant`` is how many payload bytes the broker has
    granted it (`Broker.make_room`): a send that fits in the grant is admitted with one comparison."""

    __slots__ = (
        "name", "capacity", "max_deliveries", "dead_letter", "deleted", "payload_bytes", "grant",
        "ready", "delayed", "enqueued", "confirmed", "requeued", "dead_lettered", "dropped", "purged", "moved",
        "consumers",
        "waiters", "waiting", "_segments", "_tail", "_next_id", "_block_end", "_run_end", "seal_backlog",
        "_broker", "_records", "_blocks", "journal", "visibility_asked", "has_origins", "origins",
        "_marks", "_mark_end",
    )  # fmt: skip

    def __init__(
        self,
        broker: Owner,
        name: bytes,
        capacity: int,
        max_deliveries: int = 0,
        dead_letter: bytes | None = None,
        visibility_ms: int = 0,
    ) -> None:
        self.name = name
        self.capacity = capacity  # 0: unbounded
        self.max_deliveries = max_deliveries  # 0: no limit
        self.dead_letter = dead_letter
        # The default visibility timeout asked for at create, in ms as on the wire (0: the server's
        # default, `visibility_ms` then follows the broker's; NEVER_MS: never).
        self.visibility_asked = visibility_ms
        self.has_origins = False  # it has held a dead letter (see the module's docstring)
        self.origins: dict[int, Origin] = {}  # the origins of the dead letters it holds, by id
        self._marks: deque[Mark] = deque()  # enqueue-time marks of its fresh messages (module docstring)
        self._mark_end = float("-inf")  # a fresh message sent before this shares the last mark
        self.deleted = False
        self.payload_bytes = 0
        self.grant = 0
        self.ready = 0
        self.delayed = 0
        self.enqueued = 0
        self.confirmed = 0
        self.requeued = 0
        self.dead_lettered = 0
        self.dropped = 0  # of the dead-lettered: those no dead-letter queue took (none, deleted, or full)
        self.purged = 0
        self.moved = 0  # messages moved out to another queue (`Broker.move`)
        self.consumers = 0  # open connections that have read from this queue
        self.waiters: deque[Waiter] = deque()  # may hold inactive ones, see Broker.cancel_wait
        self.waiting = 0  # active waiters
        self._broker = broker
        self._records = broker.records
        self._blocks = broker.blocks
        self.journal: Journal | None = broker.journal
        self._segments: deque[Run | Slab | Record] = deque()
        self._tail: Run | None = None  # the run `push` appends to
        self._next_id = 0
        self._block_end = 0
        self._run_end = 0  # where the tail run ends: its id block's end or `RUN_LIMIT` ids after its start
        self.seal_backlog = SEAL_BACKLOG  # ready messages past which a run that ends is sealed

    @property
    def count(self) -> int:
        """Every message the queue holds: ready, in flight and delayed (derived, to keep `push` lean)."""
        return self.enqueued - self.confirmed - self.dead_lettered - self.purged - self.moved

    @property
    def visibility_ms(self) -> int:
        """The visibility timeout a read or touch that names none gets, in ms (`NEVER_MS`: never)."""
        return self.visibility_asked or self._broker.default_visibility_ms

    # --- enqueue times ---------------------------------------------------------------

    def mark(self, id_: int, now: float) -> None:
        """Note that fresh message ``id_`` (the next one sent) was sent at ``now``, unless the last
        mark is recent enough to cover it."""
        if now >= self._mark_end:
            self._marks.append((id_, now))
            self._mark_end = now + MARK_RESOLUTION

    def _time_taken(self, id_: int) -> float:
        """The enqueue time of fresh message ``id_``, leaving the queue: the marks before it go."""
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= id_:
            marks.popleft()
        return marks[0][1] if marks else 0.0

    def marks_of(self, first_id: int, end: int) -> Mark | list[Mark] | None:
        """The marks that cover fresh ids ``first_id`` up to ``end``, leaving the queue as a block: the
        one mark that covers them all, or the list of them (None: the queue has no marks)."""
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= first_id:
            marks.popleft()
        if len(marks) < 2 or marks[1][0] >= end:  # one mark covers the block
            return marks[0] if marks else None
        return [mark for mark in marks if mark[0] < end]

    def front_enqueued(self) -> float | None:
        """The enqueue time of the ready message a read would take next, or None when none is ready."""
        for segment in self._segments:
            if segment.__class__ is Record:
                return segment.enqueued
            if segment.__class__ is Run:
                if segment.items:
                    return time_of(self._marks, segment.next_id)
            elif segment.taken < segment.count:  # type: ignore[union-attr]  # a slab
                return time_of(self._marks, segment.first_id + segment.taken)  # type: ignore[union-attr]  # a slab
        return None

    @property
    def in_flight(self) -> int:
        return self.count - self.ready - self.delayed

    @property
    def returned(self) -> list[Record]:
        """Ready messages that carry a record (read before, or delayed), in queue order."""
        return [segment for segment in self._segments if segment.__class__ is Record]

    def has_room(self, count: int = 1) -> bool:
        return not self.capacity or self.count + count <= self.capacity

    def push(self, data: bytes, now: float = 0.0) -> int:
        """Append a fresh message sent at ``now``; return its id, or -1 if the queue is full."""
        if self.capacity and (
            self.enqueued - self.confirmed - self.dead_lettered - self.purged - self.moved >= self.capacity
        ):
            return -1
        id_ = self._next_id
        tail = self._tail
        if tail is None or id_ == self._run_end:
            tail = self._start_run()
            id_ = self._next_id
        if now >= self._mark_end:
            self.mark(id_, now)
        tail.items.append(data)
        self._next_id = id_ + 1
        self.ready += 1
        self.enqueued += 1
        self.payload_bytes += len(data)
        if self.journal is not None:
            self.journal.add(self.name, id_, data)
        return id_

    def push_many(self, items: list[bytes], size: int = -1, now: float = 0.0) -> list[int]:
        """Append fresh messages sent at ``now`` (the caller checked the capacity) whose payloads take
        ``size`` bytes (added up here if not given); return their ids."""
        ids: list[int] = []
        start = 0
        while start < len(items):
            tail = self._tail
            if tail is None or self._next_id == self._run_end:
                tail = self._start_run()
            first = self._next_id
            if not start and now >= self._mark_end:  # (`mark`, inlined: once per batch sent)
                self._marks.append((first, now))
                self._mark_end = now + MARK_RESOLUTION
            chunk = items[start : start + self._run_end - first]
            tail.items.extend(chunk)
            self._next_id = first + len(chunk)
            ids += range(first, self._next_id)
            start += len(chunk)
        self.ready += len(items)
        self.enqueued += len(items)
        self.payload_bytes += size if size >= 0 else sum(map(len, items))
        if self.journal is not None:
            self.journal.add_many(self.name, ids, items)
        return ids

    def push_columns(self, lengths: bytes, data: bytes, now: float = 0.0) -> bytes:
        """Append fresh messages sent at ``now``, given as a batch's columns (u32 lengths, payloads back to back), kept
        whole as one slab (the caller checked the capacity); return their ids as a u64 column. Ids
        are handed out as `push_many` hands them: a batch that crosses the end of the queue's id
        block (rare) becomes two slabs."""
        count = len(lengths) // 4
        columns: list[bytes] = []
        placed = offset = 0
        while placed < count:
            if self._next_id == self._block_end:
                self._next_id = self._broker.allocate_ids(ID_BLOCK)
                self._block_end = self._next_id + ID_BLOCK
            first = self._next_id
            if not placed:
                self.mark(first, now)
            part = min(count - placed, self._block_end - first)
            if part == count:
                part_lengths, part_data = lengths, data
            else:
                part_lengths = lengths[4 * placed : 4 * (placed + part)]
                size = sum(struct.unpack(f">{part}I", part_lengths))
                part_data, offset = data[offset : offset + size], offset + size
            ids = id_column(first, part)  # the reply's; the slab keeps no copy (see `segments`)
            self._segments.append(Slab(first, part_lengths, part_data))
            self._next_id = first + part
            if self.journal is not None:
                self.journal.add_columns(self.name, first, part_lengths, part_data)
            columns.append(ids)
            placed += part
        self._tail = None  # a message sent next starts a run behind the slab
        self.ready += count
        self.enqueued += count
        self.payload_bytes += len(data)
        return columns[0] if len(columns) == 1 else b"".join(columns)

    def take(self, held: Holding) -> Record | None:
        """Hand the first ready message to ``held`` and register it in flight with the broker;
        return its record (deliveries counted), or None when none is ready."""
        segments = self._segments
        while segments:
            segment = segments[0]
            if segment.__class__ is Run:
                items = segment.items
                if items:
                    id_ = segment.next_id
                    segment.next_id = id_ + 1
                    self.ready -= 1
                    # Its enqueue time (`_time_taken`, inlined: the lone read's path).
                    marks = self._marks
                    while len(marks) > 1 and marks[1][0] <= id_:
                        marks.popleft()
                    record = held[id_] = self._records[id_] = Record(
                        id_, self, items.popleft(), held, marks[0][1] if marks else 0.0
                    )
                    return record
                if segment is self._tail:
                    return None
                segments.popleft()
            elif segment.__class__ is Slab:
                # `Slab.take_one` and `_time_taken`, inlined: the lone read's path through a backlog of single
                # sends, sealed into slabs.
                index, start = segment.taken, segment.offset
                end = start + _unpack_u32(segment.lengths, 4 * index)[0]
                segment.taken, segment.offset = index + 1, end
                if index + 1 == segment.count:
                    segments.popleft()
                id_ = segment.first_id + index
                self.ready -= 1
                marks = self._marks
                while len(marks) > 1 and marks[1][0] <= id_:
                    marks.popleft()
                record = held[id_] = self._records[id_] = Record(
                    id_, self, segment.data[start:end], held, marks[0][1] if marks else 0.0
                )
                return record
            else:
                # Neither a run nor a slab: a record (mypy narrows `x.__class__ is C` in its if branch only).
                record = segments.popleft()  # type: ignore[assignment]  # a record: see above
                self.ready -= 1
                record.deliveries += 1
                record.held = held
                held[record.id] = record
                record.read = _next_read()
                return record
        return None

    def take_many(self, held: Holding, count: int, limit: int) -> list[Entry]:
        """Like `take`, for up to ``count`` messages whose batch reply entries stay within
        ``limit`` bytes (the first one always goes). Fresh messages leave their run as a `Block`."""
        # Typed as `take` is, which finds a message each time it is called here: the list holds no None.
        entries: list[Entry | None] = []
        taken = size = 0
        segments = self._segments
        while taken < count and segments:
            segment = segments[0]
            if segment.__class__ is Record:
                size += len(segment.data) + BATCH_ENTRY_OVERHEAD
                if entries and size > limit:
                    break
                entries.append(self.take(held))
                taken += 1
                continue
            if segment.__class__ is Slab:
                fits, used = self._take_slab(segment, held, count - taken, limit - size, not entries, entries)
                taken += fits
                size += used
                if segment.taken < segment.count:
                    break  # the count or the byte limit stopped it
                continue
            # Neither a record nor a slab: a run (mypy narrows `x.__class__ is C` in its if branch only).
            items = segment.items  # type: ignore[union-attr]  # a run: see above
            if not items:
                if segment is self._tail:
                    break
                segments.popleft()
                continue
            wanted = min(count - taken, len(items))
            if limit == NO_BYTE_LIMIT:  # reads answered a frame each: nothing to add up
                fits, used = wanted, 0
            else:
                fits, used = _fitting(list(map(len, islice(items, wanted))), limit - size, not entries)
            if not fits:
                break
            if fits == 1:  # a block pays off from two messages
                entries.append(self.take(held))
            else:
                first = segment.next_id  # type: ignore[union-attr]  # a run: see above
                segment.next_id = first + fits  # type: ignore[union-attr]  # a run: see above
                payloads = list(starmap(items.popleft, repeat((), fits)))
                block = Block(first, self, fits, held, items=payloads)
                if used:
                    block.size = used - BATCH_ENTRY_OVERHEAD * fits
                entries.append(self._hold(block))
            taken += fits
            size += used
            if fits < wanted:
                break
        return entries  # type: ignore[return-value]  # no None in it: see above

    def _take_slab(
        self, slab: Slab, held: Holding, wanted: int, room: int, first: bool, entries: list[Entry | None]
    ) -> tuple[int, int]:
        """`take_many`'s step over the first segment, a slab: append up to ``wanted`` of its members
        whose reply entries fit in ``room`` bytes to ``entries`` as one block (a record, for one),
        drop the slab once empty; return (how many, their reply bytes)."""
        wanted = min(wanted, slab.count - slab.taken)
        whole = slab.taken == 0 and wanted == slab.count
        payload = len(slab.data) if whole else sum(slab.sizes(wanted))  # the whole slab: nothing to add up
        fits, used = wanted, payload + BATCH_ENTRY_OVERHEAD * wanted
        if used > room:
            fits, used = _fitting(list(slab.sizes(wanted)), room, first)
            payload = used - BATCH_ENTRY_OVERHEAD * fits
        if fits == 1:
            entries.append(self.take(held))  # (it drops the slab once empty)
            return fits, used
        if fits:
            first_id, columns = slab.take(fits, payload)
            entries.append(self._hold(Block(first_id, self, fits, held, slab=columns)))  # its size: its data column
            if slab.taken == slab.count:
                self._segments.popleft()
        return fits, used

    def _hold(self, block: Block) -> Block:
        """Put a block just taken in flight: with its holder, and findable by its members' ids."""
        held = block.held
        held[block] = block
        held.extra += block.live - 1
        self._blocks.add(block)
        self.ready -= block.live
        return block

    def push_front(self, record: Record) -> None:
        """Return a record ahead of every ready message."""
        self._segments.appendleft(record)
        self.ready += 1

    def push_back(self, record: Record) -> None:
        """Make a record ready behind every ready message (a delay ended, or it moved in)."""
        self._segments.append(record)
        self._tail = None  # the next fresh message starts a new run behind it
        self.ready += 1

    def push_letter(self, data: bytes, now: float, origin: Origin, wall: int) -> int:
        """Append a dead letter (a fresh message with an origin) sent at ``now`` (``wall``: Unix ms);
        return its id, or -1 if the queue is full."""
        journal, self.journal = self.journal, None  # its addition is journaled below, with its origin
        try:
            id_ = self.push(data, now)
        finally:
            self.journal = journal
        if id_ >= 0:
            self.origins[id_] = origin
            self.has_origins = True
            if journal is not None:
                journal.add(self.name, id_, data, enqueued_ms=wall, origin=origin)
        return id_

    def take_ready(self, count: int) -> list[Record]:
        """Take up to ``count`` ready messages from the front, as records out of the queue (not in
        flight, not in the broker's records: the caller places them); the queue's counts are the
        caller's to settle, but ``ready`` drops here."""
        taken: list[Record] = []
        segments = self._segments
        while len(taken) < count and segments:
            segment = segments[0]
            if segment.__class__ is Record:
                taken.append(segments.popleft())  # type: ignore[arg-type]  # a record: see above
            elif segment.__class__ is Slab:
                id_, data = segment.take_one()
                if segment.taken == segment.count:
                    segments.popleft()
                taken.append(Record(id_, self, data, None, self._time_taken(id_)))
            else:
                items = segment.items  # type: ignore[union-attr]  # a run: see above
                if not items:
                    if segment is self._tail:
                        break
                    segments.popleft()
                    continue
                id_ = segment.next_id  # type: ignore[union-attr]  # a run: see above
                segment.next_id = id_ + 1  # type: ignore[union-attr]  # a run: see above
                taken.append(Record(id_, self, items.popleft(), None, self._time_taken(id_)))
        self.ready -= len(taken)
        return taken

    def ready_view(self, count: int) -> list[tuple[int, bytes, int, float, Origin | None]]:
        """The first ``count`` ready messages, left in place: (id, data, deliveries, enqueue time, origin)."""
        seen: list[tuple[int, bytes, int, float, Origin | None]] = []
        marks = self._marks
        origins = self.origins
        for segment in self._segments:
            if len(seen) >= count:
                break
            if segment.__class__ is Record:
                record: Record = segment
                seen.append((record.id, record.data, record.deliveries, record.enqueued, origins.get(record.id)))
            elif segment.__class__ is Slab:
                slab: Slab = segment
                wanted = min(count - len(seen), slab.count - slab.taken)
                offset = slab.offset
                for index, size in enumerate(slab.sizes(wanted), slab.taken):
                    id_ = slab.first_id + index
                    seen.append((id_, slab.data[offset : offset + size], 0, time_of(marks, id_), origins.get(id_)))
                    offset += size
            else:
                run: Run = segment  # type: ignore[assignment]  # a run: see above
                for index, data in enumerate(islice(run.items, count - len(seen))):
                    id_ = run.next_id + index
                    seen.append((id_, data, 0, time_of(marks, id_), origins.get(id_)))
        return seen

    def drop_ready(self) -> list[Record]:
        """Drop every ready message (their bytes leave ``payload_bytes``); return the records among them."""
        records: list[Record] = []
        size = 0
        for segment in self._segments:
            if isinstance(segment, Run):
                size += sum(map(len, segment.items))
            elif isinstance(segment, Slab):
                size += len(segment.data) - segment.offset
            else:
                size += len(segment.data)
                records.append(segment)
        self._segments.clear()
        self._tail = None
        self._marks.clear()
        self._mark_end = float("-inf")
        self.purged += self.ready
        self.ready = 0
        self.payload_bytes -= size
        return records

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Its figures, as STATS answers them (``now``: the broker's clock, read if not given)."""
        front = self.front_enqueued()
        if now is None:
            now = self._broker.clock()
        return {
            "name": self.name.decode("utf-8", "replace"),
            "ready": self.ready,
            "in_flight": self.in_flight,
            "delayed": self.delayed,
            "capacity": self.capacity,
            "max_deliveries": self.max_deliveries,
            "dead_letter_queue": self.dead_letter.decode("utf-8", "replace") if self.dead_letter else None,
            "enqueued": self.enqueued,
            "confirmed": self.confirmed,
            "requeued": self.requeued,
            "dead_lettered": self.dead_lettered,
            "dropped": self.dropped,
            "purged": self.purged,
            "consumers": self.consumers,
            "waiting": self.waiting,
            "moved": self.moved,
            "visibility_timeout_ms": self.visibility_ms,
            "oldest_ready_age_ms": max(0, round((now - front) * 1000)) if front is not None else 0,
        }

    def _start_run(self) -> Run:
        """Start a new tail run, sealing the one that reached its end (see `segments`)."""
        segments = self._segments
        ended = self._tail
        if ended is not None and segments and segments[-1] is ended:  # the tail is always the last segment
            if not ended.items:  # read to its end already
                segments.pop()
            elif self.ready > self.seal_backlog:  # behind a long backlog (see `segments`)
                segments[-1] = seal(ended)
        if self._next_id == self._block_end:
            self._next_id = self._broker.allocate_ids(ID_BLOCK)
            self._block_end = self._next_id + ID_BLOCK
        run = self._tail = Run(self._next_id)
        self._run_end = min(self._block_end, self._next_id + RUN_LIMIT)
        segments.append(run)
        return run

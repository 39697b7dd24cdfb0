"""Queues, in-flight messages, delays, waiting reads: the server's logic, with no I/O.

Theory of operation
-------------------
A message is *ready* (in its queue, waiting for a read), *in flight* (read,
waiting for its confirm) or *delayed* (sent or released with a delay not yet
over). A queue's ready messages are a deque of *segments*:

* a `_Run` holds fresh messages (never read) as bare ``bytes`` with
  consecutive ids, so a queued message costs its payload plus one deque slot:
  the id is implied by its position. Ids come from one server-wide counter,
  handed to queues in blocks of `ID_BLOCK`, so they stay unique for the
  server's lifetime across all queues;
* a `_Slab` holds the fresh messages of one sent batch (ENQUEUE_BATCH) as the
  batch's columns, never cut apart: its ids (u64 each, the body of the reply
  that gave them), its u32 length column and its payloads back to back;
* a `Record` is a message that has been read, or was delayed: it carries its
  own id and delivery count.

A read turns the first ready message into a `Record`, kept in `Broker.records`
(by id) and in its holder's `Holding` (one per connection; ``read`` numbers
keep the read order). A batch read takes fresh messages as a `Block` instead:
one object for a slice of a run or of a slab, with one deadline, held under
itself and found from any member's id through `Broker.blocks` (buckets of id
ranges), so a batch costs a few operations, not a dict entry per message. A
block cut from a slab keeps the slab's columns: the reply is those columns
joined, and a confirm of the block as it was read is recognised by comparing
its ids column (`Broker.confirm_column`), so a batch sent, read and confirmed
whole costs no step per message at all. Members that leave a block are
marked in its ``gone`` set: a confirm marks them; a touch, release or return
gives the member a `Record` of its own (`Broker._split`). A block is retired
when its last member leaves.
A message that comes back (timeout, release, or its connection closed) goes
to the front of its queue, ahead of every fresh message, unless it has been
delivered ``max_deliveries`` times: then it moves to the queue's dead-letter
queue (or is dropped and logged when there is none). A delayed message joins
the back of its queue when its delay ends.

Three structures hold every time-driven event: in-flight deadlines
(`_Lanes`), delay ends and the ends of waiting reads (heaps). `Broker.expire`
sweeps all three; the server runs it from one timer, never a timer per
message. In-flight deadlines come in lanes, one per timeout value: reads
with the same timeout join their lane in deadline order, since time only
moves forward, so a deadline costs an append and a pop, however many
messages are in flight (a heap would sift a new 1 s deadline past a million
10-minute ones). Each entry takes a new *lease* number, which breaks ties in
arrival order; a record's ``lease`` names its one live entry (0: none), so an
entry is stale as soon as its record is confirmed, requeued, touched or
purged. Stale entries stay behind and are skipped; the lanes are rebuilt
whenever they outnumber live ones.

A read with ``wait_ms`` on an empty queue leaves a `Waiter`; every path that
makes a message ready (`enqueue`, requeue, delay end) hands it straight to the
queue's first live waiter, whose ``wake`` callback (the session's) sends the
answer.

With a data directory, a *journal* (`journal.Journal`, the store's) is told of every change
that must survive a restart: messages added and removed, queues created,
deleted and purged, id blocks reserved, delays and delivery counts. It only
buffers; the server commits it once per loop iteration, before it sends the
replies. In memory the journal is None and costs one test per change.

Every method takes ``now`` (seconds, monotonic) from the caller, so tests drive
a fake clock.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, islice, repeat, starmap
from typing import Any

from ..errors import InvalidQueueName, InvalidRequest, LimitExceeded, NoSuchQueue
from .journal import Journal, Snapshot, now_ms

__all__ = [
    "Broker", "Queue", "Record", "Block", "Entry", "Holding", "Waiter", "Outcome",
    "ID_BLOCK", "NO_BYTE_LIMIT", "columns", "read_order",
]  # fmt: skip

log = logging.getLogger("dbqueue.server")

ID_BLOCK = 1 << 16
BUCKET_BITS = 6  # `_BlockIndex` lists a block under each 64-id range it overlaps
_U32 = struct.Struct(">I")
_next_read = itertools.count(1).__next__  # numbers every read server-wide, so a holder's reads sort in read order
BATCH_ENTRY_OVERHEAD = 16  # a batch reply's id, deliveries and length for each payload
NO_BYTE_LIMIT = 1 << 62  # `Queue.take_many`'s limit for reads answered one frame each


class Outcome(enum.IntEnum):
    """What a confirm, touch or release did (also the CONFIRM_RESULTS byte).

    DONE: the message was in flight and the request was done (confirmed, touched or released).
    """

    DONE = 0
    REQUEUED = 1
    NO_SUCH_MESSAGE = 2


class Record:
    """A message that has been read at least once, or was delayed.

    ``held`` is its holder's `Holding` while in flight, None otherwise; ``read`` numbers
    its last read (see `Holding`).
    """

    __slots__ = ("id", "queue", "data", "deliveries", "lease", "held", "read")

    def __init__(self, id_: int, queue: Queue, data: bytes, held: Holding | None = None) -> None:
        self.id = id_
        self.queue = queue
        self.data = data
        self.deliveries = 1 if held is not None else 0  # a record made for a read is a first delivery
        self.lease = 0  # its live heap entry: a deadline while in flight, a delay end while delayed
        self.held = held
        self.read = _next_read()


class Block:
    """Fresh messages with consecutive ids, ``first_id`` up to ``end``, read together by one batch
    read and in flight on one deadline. ``live`` of them are still held; the ids of those that
    left (confirmed, or given a record of their own by `Broker._split`) are in ``gone``.

    Taken from a run, it holds its payloads as ``items``; taken from a slab, as ``slab``: the
    columns of the batch they were sent in (u64 ids, u32 lengths, payloads back to back), from
    which a batch reply is built and a batch confirm recognised without a step per message.
    """

    __slots__ = ("first_id", "end", "queue", "items", "slab", "held", "live", "gone", "lease", "read")
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
        self.held: Holding | None = held
        self.live = count
        self.gone: set[int] | None = None  # made on the first departure: most blocks leave whole
        self.lease = 0
        self.read = _next_read()  # see `Record`

    @property
    def payloads(self) -> list[bytes]:
        """Every member's payload, in id order (a slab's are cut apart the first time they are asked for)."""
        if self.items is None:
            _, lengths, data = self.slab  # type: ignore[misc]
            self.items = _cut(lengths, data)
        return self.items

    def holds(self, id_: int) -> bool:
        """Whether member ``id_`` (in range) is still held as part of this block."""
        return self.held is not None and (self.gone is None or id_ not in self.gone)

    def members(self) -> list[int]:
        """The ids of the members still held as part of this block, in order."""
        gone = self.gone
        return [id_ for id_ in range(self.first_id, self.end) if gone is None or id_ not in gone]


Entry = Record | Block  # what a holder holds in flight


class Holding(dict):  # type: ignore[type-arg]
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
        for key, entry in self.items():
            if entry.__class__ is Block:
                order += zip(repeat(entry.read), entry.members())  # type: ignore[union-attr]
            else:
                order.append((entry.read, key))
        return [id_ for _, id_ in sorted(order)]


def read_order(record: Record) -> tuple[int, int]:
    """A sort key for one holder's records: read order (a batch's members share a read, in id order)."""
    return record.read, record.id


class _BlockIndex:
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
            ids += range(entry.first_id, entry.end)  # type: ignore[union-attr]
            deliveries += repeat(1, len(entry.payloads))  # type: ignore[union-attr]
            payloads += entry.payloads  # type: ignore[union-attr]
        else:
            ids.append(entry.id)  # type: ignore[union-attr]
            deliveries.append(entry.deliveries)
            payloads.append(entry.data)  # type: ignore[union-attr]
    return ids, deliveries, payloads


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


class _Run:
    """Fresh messages with consecutive ids, the first being ``next_id``."""

    __slots__ = ("next_id", "items")

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id
        self.items: deque[bytes] = deque()


class _Slab:
    """Fresh messages sent in one batch, kept in the batch's columns: ``ids`` (u64 each, the
    OBJECTS_QUEUED body), ``lengths`` (u32 each) and ``data`` (the payloads back to back). The
    first ``taken`` have left; their payloads end at ``offset``."""

    __slots__ = ("first_id", "count", "ids", "lengths", "data", "taken", "offset")

    def __init__(self, first_id: int, ids: bytes, lengths: bytes, data: bytes) -> None:
        self.first_id = first_id
        self.count = len(lengths) // 4
        self.ids = ids
        self.lengths = lengths
        self.data = data
        self.taken = 0
        self.offset = 0

    def sizes(self, count: int) -> tuple[int, ...]:
        """The payload sizes of the next ``count`` members."""
        return struct.unpack_from(f">{count}I", self.lengths, 4 * self.taken)

    def take_one(self) -> tuple[int, bytes]:
        """The next member: (id, payload)."""
        index, start = self.taken, self.offset
        end = start + _U32.unpack_from(self.lengths, 4 * index)[0]
        self.taken, self.offset = index + 1, end
        return self.first_id + index, self.data[start:end]

    def take(self, count: int, size: int) -> tuple[int, tuple[bytes, bytes, bytes]]:
        """The next ``count`` members, whose payloads take ``size`` bytes: (first id, their columns)."""
        index, start = self.taken, self.offset
        end = start + size
        self.taken, self.offset = index + count, end
        if index == 0 and count == self.count:  # the whole batch, as it was sent: nothing copied
            return self.first_id, (self.ids, self.lengths, self.data)
        stop = index + count
        columns = (self.ids[8 * index : 8 * stop], self.lengths[4 * index : 4 * stop], self.data[start:end])
        return self.first_id + index, columns


def _cut(lengths: bytes, data: bytes) -> list[bytes]:
    """Payloads back to back, cut apart by their u32 length column."""
    ends = list(accumulate(struct.unpack(f">{len(lengths) // 4}I", lengths), initial=0))
    return [data[start:end] for start, end in zip(ends, ends[1:])]


class _Lanes:
    """In-flight deadlines: a FIFO of (deadline, lease, record) entries per timeout value,
    and a heap of each non-empty lane's first deadline. Iterating gives every entry."""

    __slots__ = ("lanes", "heads", "size")

    def __init__(self) -> None:
        self.lanes: dict[int, deque[tuple[float, int, Entry]]] = {}
        self.heads: list[tuple[float, int]] = []  # (first deadline, timeout_ms) of each non-empty lane
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[float, int, Entry]]:
        for lane in self.lanes.values():
            yield from lane

    def push(self, timeout_ms: int, deadline: float, lease: int, record: Record) -> None:
        lane = self.lanes.get(timeout_ms)
        if lane is None:
            lane = self.lanes[timeout_ms] = deque()
            heapq.heappush(self.heads, (deadline, timeout_ms))
        lane.append((deadline, lease, record))
        self.size += 1

    def push_many(self, timeout_ms: int, deadline: float, lease: int, records: list[Entry]) -> None:
        """One deadline and lease for several records (a batch read): a tie keeps their read order."""
        lane = self.lanes.get(timeout_ms)
        if lane is None:
            lane = self.lanes[timeout_ms] = deque()
            heapq.heappush(self.heads, (deadline, timeout_ms))
        lane.extend(zip(repeat(deadline), repeat(lease), records))
        self.size += len(records)

    def pop_due(self, now: float) -> list[tuple[float, int, Entry]]:
        """Remove and return every entry due by ``now``, in (deadline, lease) order."""
        due: list[tuple[float, int, Entry]] = []
        heads = self.heads
        while heads and heads[0][0] <= now:
            timeout_ms = heapq.heappop(heads)[1]
            lane = self.lanes[timeout_ms]
            while lane and lane[0][0] <= now:
                due.append(lane.popleft())
            if lane:
                heapq.heappush(heads, (lane[0][0], timeout_ms))
            else:
                del self.lanes[timeout_ms]  # a lane per timeout value ever used would pile up
        self.size -= len(due)
        due.sort(key=_deadline_and_lease)
        return due

    def next_deadline(self) -> float | None:
        return self.heads[0][0] if self.heads else None

    def keep_live(self) -> None:
        """Drop every stale entry: O(entries), not O(records)."""
        lanes = {}
        for timeout_ms, lane in self.lanes.items():
            live = deque(entry for entry in lane if entry[2].lease == entry[1])
            if live:
                lanes[timeout_ms] = live
        self.lanes = lanes
        self.heads = [(lane[0][0], timeout_ms) for timeout_ms, lane in lanes.items()]
        heapq.heapify(self.heads)
        self.size = sum(map(len, lanes.values()))


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


def _deadline_and_lease(entry: tuple[float, int, Entry]) -> tuple[float, int]:
    return entry[0], entry[1]


class Queue:
    """One named queue. ``count`` is every message it holds: ready, in flight and delayed."""

    __slots__ = (
        "name", "capacity", "max_deliveries", "dead_letter", "deleted",
        "ready", "delayed", "enqueued", "confirmed", "requeued", "dead_lettered", "purged", "consumers",
        "waiters", "waiting", "_segments", "_tail", "_next_id", "_block_end",
        "_broker", "_records", "_blocks", "journal",
    )  # fmt: skip

    def __init__(
        self, broker: Broker, name: bytes, capacity: int, max_deliveries: int = 0, dead_letter: bytes | None = None
    ) -> None:
        self.name = name
        self.capacity = capacity  # 0: unbounded
        self.max_deliveries = max_deliveries  # 0: no limit
        self.dead_letter = dead_letter
        self.deleted = False
        self.ready = 0
        self.delayed = 0
        self.enqueued = 0
        self.confirmed = 0
        self.requeued = 0
        self.dead_lettered = 0
        self.purged = 0
        self.consumers = 0  # open connections that have read from this queue
        self.waiters: deque[Waiter] = deque()  # may hold inactive ones, see Broker.cancel_wait
        self.waiting = 0  # active waiters
        self._broker = broker
        self._records = broker.records
        self._blocks = broker.blocks
        self.journal: Journal | None = broker.journal
        self._segments: deque[_Run | _Slab | Record] = deque()
        self._tail: _Run | None = None  # the run `push` appends to
        self._next_id = 0
        self._block_end = 0

    @property
    def count(self) -> int:
        """Every message the queue holds: ready, in flight and delayed (derived, to keep `push` lean)."""
        return self.enqueued - self.confirmed - self.dead_lettered - self.purged

    @property
    def in_flight(self) -> int:
        return self.count - self.ready - self.delayed

    @property
    def returned(self) -> list[Record]:
        """Ready messages that carry a record (read before, or delayed), in queue order."""
        return [segment for segment in self._segments if segment.__class__ is Record]  # type: ignore[misc]

    def has_room(self, count: int = 1) -> bool:
        return not self.capacity or self.count + count <= self.capacity

    def push(self, data: bytes) -> int:
        """Append a fresh message; return its id, or -1 if the queue is full."""
        if self.capacity and self.enqueued - self.confirmed - self.dead_lettered - self.purged >= self.capacity:
            return -1
        id_ = self._next_id
        tail = self._tail
        if tail is None or id_ == self._block_end:
            tail = self._start_run()
            id_ = self._next_id
        tail.items.append(data)
        self._next_id = id_ + 1
        self.ready += 1
        self.enqueued += 1
        if self.journal is not None:
            self.journal.add(self.name, id_, data)
        return id_

    def push_many(self, items: list[bytes]) -> list[int]:
        """Append fresh messages (the caller checked the capacity); return their ids."""
        ids: list[int] = []
        start = 0
        while start < len(items):
            if self._tail is None or self._next_id == self._block_end:
                self._start_run()
            first = self._next_id
            chunk = items[start : start + self._block_end - first]
            self._tail.items.extend(chunk)  # type: ignore[union-attr]
            self._next_id = first + len(chunk)
            ids += range(first, self._next_id)
            start += len(chunk)
        self.ready += len(items)
        self.enqueued += len(items)
        if self.journal is not None:
            self.journal.add_many(self.name, ids, items)
        return ids

    def push_columns(self, lengths: bytes, data: bytes) -> bytes:
        """Append fresh messages given as a batch's columns (u32 lengths, payloads back to back), kept
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
            part = min(count - placed, self._block_end - first)
            if part == count:
                part_lengths, part_data = lengths, data
            else:
                part_lengths = lengths[4 * placed : 4 * (placed + part)]
                size = sum(struct.unpack(f">{part}I", part_lengths))
                part_data, offset = data[offset : offset + size], offset + size
            ids = struct.pack(f">{part}Q", *range(first, first + part))
            self._segments.append(_Slab(first, ids, part_lengths, part_data))
            self._next_id = first + part
            if self.journal is not None:
                self.journal.add_columns(self.name, first, part_lengths, part_data)
            columns.append(ids)
            placed += part
        self._tail = None  # a message sent next starts a run behind the slab
        self.ready += count
        self.enqueued += count
        return columns[0] if len(columns) == 1 else b"".join(columns)

    def take(self, held: Holding) -> Record | None:
        """Hand the first ready message to ``held`` and register it in flight with the broker;
        return its record (deliveries counted), or None when none is ready."""
        segments = self._segments
        while segments:
            segment = segments[0]
            if segment.__class__ is _Run:
                items = segment.items  # type: ignore[union-attr]
                if items:
                    id_ = segment.next_id  # type: ignore[union-attr]
                    segment.next_id = id_ + 1  # type: ignore[union-attr]
                    self.ready -= 1
                    record = held[id_] = self._records[id_] = Record(id_, self, items.popleft(), held)
                    return record
                if segment is self._tail:
                    return None
                segments.popleft()
            elif segment.__class__ is _Slab:
                id_, data = segment.take_one()  # type: ignore[union-attr]
                if segment.taken == segment.count:  # type: ignore[union-attr]
                    segments.popleft()
                self.ready -= 1
                record = held[id_] = self._records[id_] = Record(id_, self, data, held)
                return record
            else:
                segments.popleft()
                self.ready -= 1
                segment.deliveries += 1  # type: ignore[union-attr]
                segment.held = held  # type: ignore[union-attr]
                held[segment.id] = segment  # type: ignore[union-attr,index]
                segment.read = _next_read()  # type: ignore[union-attr]
                return segment  # type: ignore[return-value]
        return None

    def take_many(self, held: Holding, count: int, limit: int) -> list[Entry]:
        """Like `take`, for up to ``count`` messages whose batch reply entries stay within
        ``limit`` bytes (the first one always goes). Fresh messages leave their run as a `Block`."""
        entries: list[Entry] = []
        taken = size = 0
        segments = self._segments
        while taken < count and segments:
            segment = segments[0]
            if segment.__class__ is Record:
                size += len(segment.data) + BATCH_ENTRY_OVERHEAD  # type: ignore[union-attr]
                if entries and size > limit:
                    break
                entries.append(self.take(held))  # type: ignore[arg-type]
                taken += 1
                continue
            if segment.__class__ is _Slab:
                fits, used = self._take_slab(segment, held, count - taken, limit - size, not entries, entries)  # type: ignore[arg-type]
                taken += fits
                size += used
                if segment.taken < segment.count:  # type: ignore[union-attr]
                    break  # the count or the byte limit stopped it
                continue
            items = segment.items  # type: ignore[union-attr]
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
                entries.append(self.take(held))  # type: ignore[arg-type]
            else:
                first = segment.next_id  # type: ignore[union-attr]
                segment.next_id = first + fits  # type: ignore[union-attr]
                payloads = list(starmap(items.popleft, repeat((), fits)))
                entries.append(self._hold(Block(first, self, fits, held, items=payloads)))
            taken += fits
            size += used
            if fits < wanted:
                break
        return entries

    def _take_slab(
        self, slab: _Slab, held: Holding, wanted: int, room: int, first: bool, entries: list[Entry]
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
            entries.append(self.take(held))  # type: ignore[arg-type]  # (it drops the slab once empty)
            return fits, used
        if fits:
            first_id, columns = slab.take(fits, payload)
            entries.append(self._hold(Block(first_id, self, fits, held, slab=columns)))
            if slab.taken == slab.count:
                self._segments.popleft()
        return fits, used

    def _hold(self, block: Block) -> Block:
        """Put a block just taken in flight: with its holder, and findable by its members' ids."""
        held = block.held
        held[block] = block  # type: ignore[index]
        held.extra += block.live - 1  # type: ignore[union-attr]
        self._blocks.add(block)
        self.ready -= block.live
        return block

    def push_front(self, record: Record) -> None:
        """Return a record ahead of every ready message."""
        self._segments.appendleft(record)
        self.ready += 1

    def push_back(self, record: Record) -> None:
        """Make a record ready behind every ready message (a delay ended)."""
        self._segments.append(record)
        self._tail = None  # the next fresh message starts a new run behind it
        self.ready += 1

    def drop_ready(self) -> list[Record]:
        """Drop every ready message; return the records among them."""
        records = self.returned
        self._segments.clear()
        self._tail = None
        self.purged += self.ready
        self.ready = 0
        return records  # type: ignore[return-value]

    def stats(self) -> dict[str, Any]:
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
            "purged": self.purged,
            "consumers": self.consumers,
            "waiting": self.waiting,
        }

    def _start_run(self) -> _Run:
        if self._next_id == self._block_end:
            self._next_id = self._broker.allocate_ids(ID_BLOCK)
            self._block_end = self._next_id + ID_BLOCK
        run = self._tail = _Run(self._next_id)
        self._segments.append(run)
        return run


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
    ) -> None:
        self.default_capacity = default_capacity
        self.max_in_flight = max_in_flight  # per holder: waiting reads are woken with no more than this
        self.max_queues = max_queues
        self.max_queue_name = max_queue_name
        self.max_batch_bytes = max_batch_bytes
        self.queues: dict[bytes, Queue] = {}
        self.records: dict[int, Record] = {}  # every message with a record: in flight, returned or delayed
        self.blocks = _BlockIndex()  # every block in flight
        self._deadlines = _Lanes()
        self._delays: list[tuple[float, int, Record]] = []
        self._waits: list[tuple[float, int, Waiter]] = []
        self._timed = 0  # records in flight with a deadline (live entries of `_deadlines`)
        self._waiting = 0  # active waiters (live entries of `_waits`)
        self._leases = 0
        self._next_id = first_id
        self._reserved = first_id  # ids below this are reserved in the journal
        self.journal: Journal | None = None

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
            self._reserved = self._next_id + 16 * ID_BLOCK
            self.journal.reserve_ids(self._reserved)
        return first

    def attach(self, journal: Journal) -> None:
        """From now on, tell ``journal`` of every change that must survive a restart."""
        self.journal = journal
        self._reserved = self._next_id
        for queue in self.queues.values():
            queue.journal = journal

    def restore(self, snapshot: Snapshot, now: float) -> int:
        """Rebuild queues and messages from a store's snapshot; return how many messages came back.

        Every message comes back ready (or delayed, if its delay has not ended),
        in the order it was added. Call before `attach`.
        """
        wall = now_ms()
        restored = 0
        for stored in snapshot.queues:
            self.queues[stored.name] = Queue(
                self, stored.name, stored.capacity, stored.max_deliveries, stored.dead_letter
            )
        for stored in snapshot.queues:
            queue = self.queues[stored.name]
            for id_, data, deliveries, due_ms in stored.messages:
                record = self.records[id_] = Record(id_, queue, data)
                record.deliveries = deliveries
                queue.enqueued += 1
                if due_ms > wall:
                    self._delay(record, due_ms - wall, now)
                else:
                    queue.push_back(record)
                restored += 1
        self._next_id = max(self._next_id, snapshot.next_id)
        return restored

    # --- queues ----------------------------------------------------------------------

    def create_queue(
        self, name: bytes, capacity: int = 0, max_deliveries: int = 0, dead_letter: bytes | None = None
    ) -> Queue:
        """Return the queue called ``name``, creating it if needed (an existing one keeps its options).

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
        queue = self.queues[name] = Queue(self, name, capacity or self.default_capacity, max_deliveries, dead_letter)
        if self.journal is not None:
            self.journal.create_queue(name, queue.capacity, max_deliveries, dead_letter)
        return queue

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
        if self.journal is not None:
            records = self.records.values()
            in_flight = [record.id for record in records if record.queue is queue and record.held is not None]
            in_flight += [id_ for block in self.blocks if block.queue is queue for id_ in block.members()]
            self.journal.purge(queue.name, keep=in_flight)
        for record in queue.drop_ready():
            del self.records[record.id]
        if queue.delayed:
            for _, lease, record in self._delays:
                if record.queue is queue and record.lease == lease:
                    record.lease = 0  # its heap entry goes stale
                    record.data = b""  # and holds no payload until it is swept
                    del self.records[record.id]
            queue.purged += queue.delayed
            queue.delayed = 0
        return dropped

    # --- sending ---------------------------------------------------------------------

    def enqueue(self, queue: Queue, data: bytes, now: float) -> int:
        """Append a message and hand it to a waiting read if there is one; return its id or -1 (full)."""
        id_ = queue.push(data)
        if id_ >= 0 and queue.waiters:
            self.feed_waiters(queue, now)
        return id_

    def enqueue_batch(self, queue: Queue, items: list[bytes], now: float) -> list[int] | None:
        """Append every message or none; return their ids, or None if they do not all fit."""
        if not queue.has_room(len(items)):
            return None
        ids = queue.push_many(items)
        if queue.waiters:
            self.feed_waiters(queue, now)
        return ids

    def enqueue_columns(self, queue: Queue, lengths: bytes, data: bytes, now: float) -> bytes | None:
        """`enqueue_batch` for a batch in its columns (u32 lengths, payloads back to back), kept as
        they are; return the ids as a u64 column, or None if they do not all fit."""
        if not queue.has_room(len(lengths) // 4):
            return None
        ids = queue.push_columns(lengths, data)
        if queue.waiters:
            self.feed_waiters(queue, now)
        return ids

    def enqueue_delayed(self, queue: Queue, data: bytes, delay_ms: int, now: float) -> int:
        """Add a message that becomes ready after ``delay_ms``; return its id or -1 (full)."""
        if not queue.has_room():
            return -1
        record = Record(self.allocate_ids(1), queue, data)
        self.records[record.id] = record
        queue.enqueued += 1
        self._delay(record, delay_ms, now)
        if self.journal is not None:
            self.journal.add(queue.name, record.id, data, due_ms=now_ms() + delay_ms)
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
        deadlines.push(timeout_ms, deadline, lease, record)
        self._timed += 1
        if deadlines.size > 2 * self._timed + 1024:
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

    def confirm(self, id_: int) -> Outcome:
        """Acknowledge a message by id."""
        record = self.records.get(id_)
        if record is None:
            block = self.blocks.find(id_)
            if block is None or not block.holds(id_):
                return Outcome.NO_SUCH_MESSAGE
            self._settle(block, (id_,))
            return Outcome.NO_SUCH_MESSAGE if block.queue.deleted else Outcome.DONE
        if record.queue.deleted and record.held is None:
            return Outcome.NO_SUCH_MESSAGE
        held = record.held
        if held is None:  # ready or delayed: requeued if it was ever handed out
            return Outcome.REQUEUED if record.deliveries else Outcome.NO_SUCH_MESSAGE
        del self.records[id_]
        del held[id_]
        record.held = None
        record.data = b""  # a stale lane entry may keep the record a while
        if record.lease:
            self._timed -= 1
            record.lease = 0  # its lane entry goes stale
        queue = record.queue
        if queue.deleted:
            return Outcome.NO_SUCH_MESSAGE
        queue.confirmed += 1
        if self.journal is not None:
            self.journal.remove(id_)
        return Outcome.DONE

    def confirm_many(self, ids: tuple[int, ...]) -> bytes:
        """Acknowledge messages by id; return one `Outcome` byte each.

        The usual case, a confirm of messages read together (distinct held members of one
        block of a live queue), settles them at once; any other goes id by id.
        """
        block = self.blocks.find(ids[0]) if ids else None
        if block is not None and not block.queue.deleted:
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
        return bytes(map(self.confirm, ids))

    def confirm_column(self, ids: bytes) -> bool:
        """Confirm a whole block, its ids given as the u64 column it was read with (what a consumer
        that confirms a batch as it read it sends): True if they were that, else False, having done
        nothing (`confirm_many` then settles them id by id)."""
        block = self.blocks.find(int.from_bytes(ids[:8], "big"))
        if (
            block is None
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
        self._depart(block, ids)
        queue = block.queue
        if not queue.deleted:
            queue.confirmed += len(ids)
            if self.journal is not None:
                self.journal.remove_many(ids)

    def _depart(self, block: Block, ids: tuple[int, ...] | list[int] | range) -> None:
        """Mark distinct held members as gone from their block; retire it when none is left."""
        if len(ids) == block.live:  # the last ones: nothing left to mark
            block.held.extra -= block.live - 1  # type: ignore[union-attr]  # (and its entry goes)
            self._retire(block)
            return
        block.held.extra -= len(ids)  # type: ignore[union-attr]
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
        del block.held[block]  # type: ignore[union-attr]
        self.blocks.remove(block)
        block.live = 0
        block.items = []
        block.slab = None
        block.held = None

    def _split(self, block: Block, ids: list[int]) -> list[Record]:
        """Give these held members of a block records of their own (in flight, no deadline yet)."""
        records = self.records
        held = block.held
        first = block.first_id
        split = [Record(id_, block.queue, block.payloads[id_ - first], held) for id_ in ids]
        for record in split:
            records[record.id] = held[record.id] = record  # type: ignore[index]
            record.read = block.read
        self._depart(block, ids)
        return split

    def records_of(self, entries: Iterable[Entry]) -> list[Record]:
        """The in-flight records of these entries, in order, a block's held members split off."""
        records: list[Record] = []
        for entry in entries:
            if entry.__class__ is Block:
                if entry.held is not None:
                    records += self._split(entry, entry.members())  # type: ignore[arg-type,union-attr]
            else:
                records.append(entry)  # type: ignore[arg-type]
        return records

    def touch(self, id_: int, timeout_ms: int, now: float) -> Outcome:
        """Move an in-flight message's deadline to ``now + timeout_ms`` (0: no timeout)."""
        record = self._in_flight(id_)
        if not isinstance(record, Record):
            return record
        if record.lease:
            self._timed -= 1
            record.lease = 0  # the old heap entry goes stale
        if timeout_ms:
            self.set_deadline(record, timeout_ms, now)
        return Outcome.DONE

    def release(self, id_: int, delay_ms: int, now: float) -> Outcome:
        """Give an in-flight message back now (to the front) or after ``delay_ms`` (to the back)."""
        record = self._in_flight(id_)
        if not isinstance(record, Record):
            return record
        self.requeue([record], now, delay_ms)
        return Outcome.DONE

    def _in_flight(self, id_: int) -> Record | Outcome:
        """The record of in-flight message ``id_`` (split off its block), or the outcome that says why there is none."""
        record = self.records.get(id_)
        if record is None:
            block = self.blocks.find(id_)
            if block is None or block.queue.deleted or not block.holds(id_):
                return Outcome.NO_SUCH_MESSAGE
            return self._split(block, [id_])[0]
        if record.queue.deleted:
            return Outcome.NO_SUCH_MESSAGE
        if record.held is None:  # ready or delayed: requeued if it was ever handed out
            return Outcome.REQUEUED if record.deliveries else Outcome.NO_SUCH_MESSAGE
        return record

    def requeue(self, entries: list[Entry], now: float, delay_ms: int = 0) -> int:
        """Take in-flight messages back, keeping their order at the front of their queues; return how many."""
        records = self.records_of(entries)
        returned = 0
        touched: set[Queue] = set()
        spent: list[Record] = []  # out of deliveries, in reverse order
        for record in reversed(records):
            del record.held[record.id]  # type: ignore[union-attr]
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
        queue = record.queue
        del self.records[record.id]
        queue.dead_lettered += 1
        if self.journal is not None:
            self.journal.remove(record.id)
        target = self.queues.get(queue.dead_letter) if queue.dead_letter else None
        name = queue.name.decode("utf-8", "replace")
        if target is None:
            log.warning(
                "message %d of %r dropped after %d deliveries (no dead-letter queue)",
                record.id,
                name,
                record.deliveries,
            )
        elif self.enqueue(target, record.data, now) < 0:
            log.warning(
                "message %d of %r dropped after %d deliveries: its dead-letter queue is full",
                record.id,
                name,
                record.deliveries,
            )

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

"""A queue's ready messages, held in *segments*: runs and slabs of fresh messages, and records.

Theory of operation
-------------------
A queue's ready messages are a deque of segments, read from the front:

* a `Run` holds fresh messages (never read) as bare ``bytes`` with
  consecutive ids, so a queued message costs its payload plus one deque slot:
  the id is implied by its position. Ids come from one server-wide counter,
  handed to queues in blocks of `queue.ID_BLOCK`, so they stay unique for the
  server's lifetime across all queues. A run takes at most `RUN_LIMIT`
  messages; when the next send finds it full and the queue holds a long
  backlog (more than `SEAL_BACKLOG` ready messages), the messages the run
  still holds are *sealed* into a slab (`seal`): single sends that pile up
  then cost what a batch costs, their payload and its u32 length, instead of
  a ``bytes`` object's header, its allocator's rounding and a deque slot each.
  A send still only appends to a deque. A run behind a short backlog is left
  as it is: it will be read soon, and reading a run one message at a time is
  cheaper than reading a slab (no length to unpack, no payload to slice out),
  while what sealing it would save is bounded by the backlog's length;
* a `Slab` holds the fresh messages of one sent batch (ENQUEUE_BATCH) as the
  batch's columns, never cut apart: its u32 length column and its payloads
  back to back. Its ids are consecutive, so it keeps only the first: a queued
  message costs its payload and its length, no more. The u64 id column a
  batch read replies with (and a batch confirm sends back) is built for the
  slice taken, when it is taken (`codecs.id_column`: a few C loops over the
  column's bytes), rather than kept for every message while it waits;
* a `queue.Record` is a message that has been read, or was delayed: it
  carries its own id and delivery count.

A read takes from the first segment; a batch read takes a slice of a run or a
slab as one `queue.Block` (a slab's slice keeps its columns, with the id
column built for it). The segments
know nothing of reads or holders: `queue.Queue` moves messages out of them.
"""

from __future__ import annotations

import struct
from collections import deque
from itertools import accumulate

from ..protocol.codecs import id_column

__all__ = ["RUN_LIMIT", "SEAL_BACKLOG", "Run", "Slab", "cut_payloads", "seal"]

_U32 = struct.Struct(">I")
# Messages a run takes before the next send seals what it still holds into a slab: enough that a
# slab's own object and headers are spread thin, few enough that an unsealed run's bytes objects
# are a small part of a long queue.
RUN_LIMIT = 512
# Ready messages a queue holds, at least, before a run that ends is sealed: below it, a backlog's
# bytes objects cost a few MiB at most, and its reads stay on runs.
SEAL_BACKLOG = 1 << 16


class Run:
    """Fresh messages with consecutive ids, the first being ``next_id``."""

    __slots__ = ("next_id", "items")

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id
        self.items: deque[bytes] = deque()


class Slab:
    """Fresh messages sent in one batch, kept in the batch's columns: ``lengths`` (u32 each) and
    ``data`` (the payloads back to back); their ids run from ``first_id``. The first ``taken``
    have left; their payloads end at ``offset``."""

    __slots__ = ("first_id", "count", "lengths", "data", "taken", "offset")

    def __init__(self, first_id: int, lengths: bytes, data: bytes) -> None:
        self.first_id = first_id
        self.count = len(lengths) // 4
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
        """The next ``count`` members, whose payloads take ``size`` bytes: (first id, their columns:
        u64 ids, built here, u32 lengths and payloads)."""
        index, start = self.taken, self.offset
        end = start + size
        self.taken, self.offset = index + count, end
        first = self.first_id + index
        if index == 0 and count == self.count:  # the whole batch, as it was sent: no payload copied
            return first, (id_column(first, count), self.lengths, self.data)
        stop = index + count
        return first, (id_column(first, count), self.lengths[4 * index : 4 * stop], self.data[start:end])


def seal(run: Run) -> Slab:
    """The messages ``run`` still holds as one slab (its columns), with the same ids: the run is
    left to go, and its deque's payloads with it."""
    items = run.items
    return Slab(run.next_id, struct.pack(f">{len(items)}I", *map(len, items)), b"".join(items))


def cut_payloads(lengths: bytes, data: bytes) -> list[bytes]:
    """Payloads back to back, cut apart by their u32 length column."""
    ends = list(accumulate(struct.unpack(f">{len(lengths) // 4}I", lengths), initial=0))
    return [data[start:end] for start, end in zip(ends, ends[1:])]

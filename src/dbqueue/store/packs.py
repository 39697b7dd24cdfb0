"""Packs: messages sent together, stored as one row; their layouts and the index that finds them.

Theory of operation
-------------------
Messages sent together (`Store.add_many`: a pipelined run or a send_batch) are
stored as one row of ``packs``, their payloads joined, instead of a row each:
SQLite's work per row, not per byte, is what a durable server spends most of
its time on. A pack holds the consecutive ids ``first_id .. first_id + count - 1``,
never delivered and with no due time; ``sizes`` gives each payload's length.

A pack's row stays until every member is gone; while only some are, a small
``pack_gone`` row holds a bitmap of the gone ones (a confirm of part of a pack
writes that row, not the pack). A member whose delivery count or due time
must be stored is first *extracted*: copied into ``messages`` by one
``INSERT ... SELECT substr(...)``, and marked gone in its pack. A pack that
has been partly gone for a whole `Store.reclaim` round with fewer than half
its members live is compacted (its live members extracted, its row dropped),
so packs never hold more than about twice their live bytes for long.

`PackIndex` finds a message's pack by its id. Ids are cut into buckets of 64;
each bucket lists the packs that overlap it (one or two for a pack of up to
64), so the index costs a few entries a pack, not one a message.

Free slots: rows are keyed by a *slot* number, and a pack whose last member is
gone leaves its row behind as a free slot (a ``pack_gone`` row with every bit
set) instead of being deleted, up to `FREE_SLOT_BYTES` of them. A new pack of
the same *shape* (count and payload bytes) takes a free slot over with an
UPDATE, which SQLite does in place for a row of the same size: no pages are
freed or allocated, so the freelist, the pointer map and the file header are
not rewritten by every commit. A queue's deletion or purge deletes its rows,
free slots included.

This module holds no SQL: the `Store` writes the rows (`store.sqlite`), the
schema says what they are (`store.schema`).
"""

from __future__ import annotations

import functools
import itertools
import struct

from ..core.journal import StoredMessage

# Payload bytes of retired packs whose rows are kept as free slots, for new packs of the same shape to
# take over: a fixed floor of dead data, in exchange for rows rewritten in place.
FREE_SLOT_BYTES = 1 << 20

BUCKET_BITS = 6  # a `PackIndex` bucket spans 64 ids


class Pack:
    """Messages ``first_id`` .. ``first_id + count - 1`` stored as one row of ``packs``; ``live``
    of them are still stored, bit i of ``gone`` is set once member ``first_id + i`` is not."""

    __slots__ = (
        "first_id", "qid", "seq", "count", "sizes", "data", "live", "gone", "written", "partial_round",
        "slot", "shape", "reused_qid", "freed", "enqueued_ms",
    )  # fmt: skip

    def __init__(
        self,
        first_id: int,
        qid: int,
        seq: int,
        sizes: bytes,
        data: bytes | None,
        slot: int,
        size: int,
        enqueued_ms: int = 0,
    ) -> None:
        self.first_id = first_id
        self.enqueued_ms = enqueued_ms  # when its members were sent, Unix ms
        self.qid = qid
        self.seq = seq
        self.count = len(sizes) // 4
        self.sizes = sizes
        self.data = data  # the joined payloads until the row is written
        self.live = self.count
        self.gone = 0
        self.written = data is None
        self.partial_round = -1  # the `reclaim` round that first saw it partly gone
        self.slot = slot  # its row's key
        self.shape = (len(sizes), size)  # rows of one shape have one size: a free one is rewritten in place
        self.reused_qid = -1  # unwritten, in a free slot: the qid its row still holds (-1: a new row)
        self.freed = False  # retired into the free slots (else its row is deleted)

    def span(self, id_: int) -> tuple[int, int]:
        """Where member ``id_``'s payload lies in ``data``: (offset, size)."""
        index = id_ - self.first_id
        sizes = sizes_layout(index + 1).unpack_from(self.sizes)
        return sum(sizes) - sizes[-1], sizes[-1]

    def gone_bits(self) -> bytes:
        """The ``pack_gone`` bitmap of its gone members."""
        return self.gone.to_bytes((self.count + 7) // 8, "little")

    def ids(self) -> tuple[int, ...]:
        """Every id it was written with, gone or not."""
        return tuple(range(self.first_id, self.first_id + self.count))

    def members(self) -> list[int]:
        """The ids still stored in it."""
        first, gone = self.first_id, self.gone
        return [id_ for id_ in range(first, first + self.count) if not gone >> (id_ - first) & 1]

    def buckets(self) -> range:
        """The `PackIndex` buckets its ids fall in."""
        return range(self.first_id >> BUCKET_BITS, ((self.first_id + self.count - 1) >> BUCKET_BITS) + 1)


class PackIndex:
    """The packs with members still stored (and not yet retired), found by any member's id."""

    __slots__ = ("buckets", "packs")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Pack]] = {}
        self.packs: dict[int, Pack] = {}  # first_id -> pack

    def add(self, pack: Pack) -> None:
        self.packs[pack.first_id] = pack
        for bucket in pack.buckets():
            listed = self.buckets.get(bucket)
            if listed is None:
                self.buckets[bucket] = [pack]
            else:
                listed.append(pack)

    def discard(self, pack: Pack) -> None:
        del self.packs[pack.first_id]
        for bucket in pack.buckets():
            listed = self.buckets[bucket]
            if len(listed) == 1:
                del self.buckets[bucket]
            else:
                listed.remove(pack)

    def find(self, id_: int) -> Pack | None:
        """The pack that still stores message ``id_``, or None."""
        for pack in self.buckets.get(id_ >> BUCKET_BITS, ()):
            offset = id_ - pack.first_id
            if 0 <= offset < pack.count:
                return None if pack.gone >> offset & 1 else pack
        return None


@functools.cache
def sizes_layout(count: int) -> struct.Struct:
    """The layout of a pack's ``sizes`` for ``count`` members: a big-endian u32 per payload."""
    return struct.Struct(f">{count}I")


def all_gone(count: int) -> bytes:
    """The gone bitmap of a free slot: every member gone."""
    return ((1 << count) - 1).to_bytes((count + 7) // 8, "little")


def unpacked(
    first_id: int, seq: int, sizes: bytes, data: bytes, gone: int, enqueued_ms: int = 0
) -> list[tuple[int, int, StoredMessage, int]]:
    """A pack row's live members as `Store.load` sorts them: (seq, id, message, enqueue time)."""
    lengths = sizes_layout(len(sizes) // 4).unpack(sizes)
    ends = list(itertools.accumulate(lengths))
    return [
        (seq, first_id + index, (first_id + index, data[end - length : end], 0, 0), enqueued_ms)
        for index, (length, end) in enumerate(zip(lengths, ends, strict=True))
        if not gone >> index & 1
    ]

"""The durable store: queues and messages in one SQLite file, written in batches.

Theory of operation
-------------------
The server keeps every queue in memory (`queues.Broker`) and tells the store
what changed. Change methods (`Store.add`, `Store.remove`, ...) only *buffer*:
they are plain dict and list operations, cheap enough for the hot path.
`Store.commit` writes everything buffered since the last commit in one SQLite
transaction and returns once it is durable to the chosen level. Group commit
is the caller's job: the server commits once per event-loop batch and sends the
replies of that batch only after `commit` returns, so a client never hears of
a change that a crash could undo.

A buffered change is cancelled in memory when a later one undoes it: a message
added and removed (sent and confirmed) within one batch never reaches SQLite.
Whatever is left is applied in an order that gives the same result as applying
every call in sequence::

    extractions -> queue creations, deletions and purges (in call order)
    -> id high-water mark -> delivery counts -> due times -> removals -> additions
    -> packs retired (freed or deleted) -> packs added (into free slots or new rows)
    -> packs' gone members

That order is correct because of how the calls relate. Ids are never reused,
except that a message may be removed and added again with its id (moved to a
dead-letter queue), so removals go before additions. A pending addition is
dropped from the buffer by its queue's deletion or purge (unless the purge
keeps its id), so every addition left after them belongs after them. Count and due-time changes to a message
added in the same batch are folded into the pending addition; the others
touch a row that existed before the batch, so they go first (on a row that
the batch then removes, they are harmless).

Packs: messages sent together (`add_many`: a pipelined run or a send_batch) are
stored as one row of ``packs``, their payloads joined, instead of a row each:
SQLite's work per row, not per byte, is what a durable server spends most of its
time on. A pack's row stays until every member is gone; while only some are, a
small ``pack_gone`` row holds a bitmap of the gone ones (a confirm of part of a
pack writes that row, not the pack). A pack member whose delivery count or due
time must be stored is first *extracted*: copied into ``messages`` by one
``INSERT ... SELECT substr(...)``, and marked gone in its pack. Space: a pack
that has been partly gone for a whole `reclaim` round with fewer than half its
members live is compacted (its live members extracted, its row dropped), so
packs never hold more than about twice their live bytes for long. The store
finds a message's pack by its id in `_PackIndex`, whose memory is a few entries
a pack, not one a message.

Free slots: rows are keyed by a *slot* number, and a pack whose last member is
gone leaves its row behind as a free slot (a ``pack_gone`` row with every bit
set) instead of being deleted, up to `FREE_SLOT_BYTES` of them. A new pack of the
same shape (count and payload bytes) takes a free slot over with an UPDATE,
which SQLite does in place for a row of the same size: no pages are freed or
allocated, so the freelist, the pointer map and the file header are not
rewritten by every commit (in a bare replay, 0.35-0.63 µs a message against
0.83-1.19 for DELETE + INSERT). A queue's deletion or purge deletes its rows,
free slots included.

Queues are referred to by a small integer *qid* (creation order) so a message
row does not repeat its queue's name. Message rows are keyed by their id (the
rowid, so a removal is one B-tree lookup) and carry a ``seq`` number given at
`add` time (a pack has one, its members follow in id order, and an extracted
member keeps its pack's); `load` returns each queue's messages in (``seq``, id)
order, which is the order they were added (ids cannot give that order: a queue takes them in
blocks while a delayed message takes a single one, and a moved message may
keep its id). There is no index besides the id: each one would cost
every add and remove. The price is that `delete_queue` and `purge` scan the
table when committed, and that `load` sorts.

Ids: the server hands out ids from one counter. Before it hands out an id it
calls ``reserve_ids(upto)``, best well ahead (a block or more at a time), and
in the same batch as the first message using it at the latest: they commit
together, and a reply naming the id is sent only after. `load` returns a
`Snapshot.next_id` at or above every reserved id, so ids stay unique across
restarts, even those of messages that were confirmed and are gone.

Durability (`Store.open` ``sync``): "os" runs SQLite in WAL mode with
``synchronous=NORMAL``: a commit is in the kernel when it returns, so it
survives the server being killed but not a power cut. "disk" uses
``synchronous=FULL``: each commit fsyncs the WAL.

Space: the file is created with ``auto_vacuum=INCREMENTAL``. Pages freed by
removals are reused by later additions; `Store.reclaim`, which the server
calls from a periodic timer, gives the excess back to the file system
(``incremental_vacuum``) and truncates the WAL (``wal_checkpoint(TRUNCATE)``).
SQLite also checkpoints by itself every `WAL_AUTOCHECKPOINT_PAGES`, so the WAL
stays bounded even if `reclaim` is never called.

Threading: a `Store` belongs to the thread that opened it (the event loop's).
Do not hand `commit` to a worker thread: Python's sqlite3 releases the GIL for
every statement step, and a busy event loop holding the GIL makes each of
those re-acquisitions wait (measured: a 1000-message commit took 22 ms in a
thread beside a busy Python thread, 1.9 ms on its own).

Files: ``DIR/dbqueue.db`` (plus SQLite's ``dbqueue.db-wal``) and
``DIR/dbqueue.lock``, which the open store holds an exclusive `fcntl.flock`
on for its whole life, so two servers never share a directory.

Format version
--------------
The file carries ``PRAGMA application_id`` = `APPLICATION_ID` (so a stray
SQLite file is refused rather than adopted) and ``PRAGMA user_version`` =
`FORMAT_VERSION`. The rule for changing it:

* Bump `FORMAT_VERSION` for any change that a reader of the previous version
  would misread or silently ignore: a new, renamed or retyped column or table,
  a change in what a stored value means (units, encoding, ordering). Changes
  an old reader cannot notice (pragma tuning, an extra index) need no bump.
* With each bump, add ``_upgrade_vN`` (turning a version N file into N+1, in
  place, inside the opening transaction) to `_UPGRADES`, and a test that
  builds a version N file with raw SQL and loads it. Never edit or drop an
  existing upgrade: every old version stays readable, through the chain.
* A file whose version is above `FORMAT_VERSION` was written by a newer
  server: opening it raises `StoreError`; there is no downgrade.

Version 2 schema (version 1 had no ``packs`` and ``pack_gone``)::

    meta(key TEXT PRIMARY KEY, value INTEGER)   -- 'next_id': id high-water mark
    queues(qid INTEGER PRIMARY KEY, name BLOB UNIQUE, capacity, max_deliveries,
           dead_letter BLOB NULL)               -- qid is creation order
    messages(id INTEGER PRIMARY KEY, qid, seq, data BLOB, deliveries,
             due_ms)                            -- due_ms: Unix ms, 0 = now
    packs(slot INTEGER PRIMARY KEY, first_id, qid, seq, count, sizes BLOB,
          data BLOB)                            -- ids first_id .. first_id + count - 1,
                                                -- never delivered, no due time; sizes:
                                                -- a u32 (big-endian) per payload
    pack_gone(slot INTEGER PRIMARY KEY, gone BLOB)
                                                -- bit i (little-endian bit order):
                                                -- member first_id + i is gone; every
                                                -- bit set: a free slot
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import operator
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Self

from ..core.journal import Snapshot, StoredMessage, StoredQueue, now_ms
from ..errors import StoreError

__all__ = [
    "DB_NAME",
    "FORMAT_VERSION",
    "LOCK_NAME",
    "SYNC_MODES",
    "Snapshot",
    "Store",
    "StoreError",
    "StoredMessage",
    "StoredQueue",
    "now_ms",
]

FORMAT_VERSION = 2
APPLICATION_ID = 0x64627175  # b"dbqu"
DB_NAME = "dbqueue.db"
LOCK_NAME = "dbqueue.lock"
SYNC_MODES = {"os": "NORMAL", "disk": "FULL"}

# 4 KiB pages: a batch of 32 small messages dirties two or three of them; larger
# pages write more WAL per small commit and measured no faster for big ones.
PAGE_SIZE = 4096
# SQLite's own checkpoint (4 MiB of WAL): under steady churn the WAL, not the
# database, is what grows between two `reclaim` rounds, so keep it short.
WAL_AUTOCHECKPOINT_PAGES = 1024
# After a checkpoint SQLite truncates a WAL larger than this: the WAL file stays near 4 MiB.
JOURNAL_SIZE_LIMIT = 4 << 20
# `reclaim` keeps this many free pages for the next additions instead of returning them.
FREE_PAGES_KEPT = 256
# Payload bytes of retired packs whose rows are kept as free slots, for new packs of the same shape to
# take over: a fixed floor of dead data, in exchange for rows rewritten in place.
FREE_SLOT_BYTES = 1 << 20


class _Pack:
    """Messages ``first_id`` .. ``first_id + count - 1`` stored as one row of ``packs``; ``live``
    of them are still stored, bit i of ``gone`` is set once member ``first_id + i`` is not."""

    __slots__ = (
        "first_id", "qid", "seq", "count", "sizes", "data", "live", "gone", "written", "partial_round",
        "slot", "shape", "reused_qid", "freed",
    )  # fmt: skip

    def __init__(
        self, first_id: int, qid: int, seq: int, sizes: bytes, data: bytes | None, slot: int, size: int
    ) -> None:
        self.first_id = first_id
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
        sizes = _sizes_layout(index + 1).unpack_from(self.sizes)
        return sum(sizes) - sizes[-1], sizes[-1]

    def gone_bits(self) -> bytes:
        return self.gone.to_bytes((self.count + 7) // 8, "little")

    def members(self) -> list[int]:
        """The ids still stored in it."""
        first, gone = self.first_id, self.gone
        return [id_ for id_ in range(first, first + self.count) if not gone >> (id_ - first) & 1]

    def buckets(self) -> range:
        """The `_PackIndex` buckets its ids fall in."""
        return range(self.first_id >> _BUCKET_BITS, ((self.first_id + self.count - 1) >> _BUCKET_BITS) + 1)


_BUCKET_BITS = 6  # a `_PackIndex` bucket spans 64 ids


class _PackIndex:
    """The packs with members still stored (and not yet retired), found by any member's id.

    Ids are cut into buckets of 64; each bucket lists the packs that overlap it (one or
    two for a pack of up to 64), so the index costs a few entries a pack, not one a message.
    """

    __slots__ = ("buckets", "packs")

    def __init__(self) -> None:
        self.buckets: dict[int, list[_Pack]] = {}
        self.packs: dict[int, _Pack] = {}  # first_id -> pack

    def add(self, pack: _Pack) -> None:
        self.packs[pack.first_id] = pack
        for bucket in pack.buckets():
            listed = self.buckets.get(bucket)
            if listed is None:
                self.buckets[bucket] = [pack]
            else:
                listed.append(pack)

    def discard(self, pack: _Pack) -> None:
        del self.packs[pack.first_id]
        for bucket in pack.buckets():
            listed = self.buckets[bucket]
            if len(listed) == 1:
                del self.buckets[bucket]
            else:
                listed.remove(pack)

    def find(self, id_: int) -> _Pack | None:
        """The pack that still stores message ``id_``, or None."""
        for pack in self.buckets.get(id_ >> _BUCKET_BITS, ()):
            offset = id_ - pack.first_id
            if 0 <= offset < pack.count:
                return None if pack.gone >> offset & 1 else pack
        return None


_SCHEMA_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    (
        "CREATE TABLE queues (qid INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE, capacity INTEGER NOT NULL,"
        " max_deliveries INTEGER NOT NULL, dead_letter BLOB)"
    ),
    (
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, qid INTEGER NOT NULL, seq INTEGER NOT NULL,"
        " data BLOB NOT NULL, deliveries INTEGER NOT NULL, due_ms INTEGER NOT NULL)"
    ),
    "INSERT INTO meta (key, value) VALUES ('next_id', 1)",
)

# Version 2: messages sent together are stored as one row (see "Packs" above).
_PACK_TABLES = (
    (
        "CREATE TABLE packs (slot INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, qid INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, count INTEGER NOT NULL, sizes BLOB NOT NULL, data BLOB NOT NULL)"
    ),
    "CREATE TABLE pack_gone (slot INTEGER PRIMARY KEY, gone BLOB NOT NULL)",
)
_SCHEMA = _SCHEMA_V1 + _PACK_TABLES


def _upgrade_v1(con: sqlite3.Connection) -> None:
    for statement in _PACK_TABLES:
        con.execute(statement)


# Version N -> N+1, run in place inside the opening transaction.
_UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {1: _upgrade_v1}

_INSERT = "INSERT INTO messages (id, qid, data, deliveries, due_ms, seq) VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM messages WHERE id = ?"
# Rows per multi-row statement. One statement for 32 rows instead of 32 statements
# took 15-25% off a commit in an A/B run of the benchmark.
_CHUNK = 32
_INSERT_CHUNK = _INSERT.partition(" VALUES ")[0] + " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * _CHUNK)
_DELETE_CHUNK = "DELETE FROM messages WHERE id IN (" + ", ".join(["?"] * _CHUNK) + ")"
_INSERT_PACK = "INSERT INTO packs (first_id, qid, seq, count, sizes, data, slot) VALUES (?, ?, ?, ?, ?, ?, ?)"
# A free slot taken over: SQLite rewrites a row of the same size in place (no pages freed or allocated).
_REUSE_PACK = "UPDATE packs SET first_id = ?, qid = ?, seq = ?, count = ?, sizes = ?, data = ? WHERE slot = ?"
_DELETE_PACK = "DELETE FROM packs WHERE slot = ?"
_SET_GONE = "INSERT OR REPLACE INTO pack_gone (slot, gone) VALUES (?, ?)"
_DELETE_GONE = "DELETE FROM pack_gone WHERE slot = ?"
# A pack member copied into `messages` (substr counts bytes from 1 on a BLOB).
_EXTRACT = (
    "INSERT INTO messages (id, qid, data, deliveries, due_ms, seq)"
    " SELECT ?, qid, substr(data, ?, ?), ?, ?, seq FROM packs WHERE slot = ?"
)
_SET_DELIVERIES = "UPDATE messages SET deliveries = ? WHERE id = ?"
_SET_DUE = "UPDATE messages SET due_ms = ? WHERE id = ?"
_RESERVE = "UPDATE meta SET value = ? WHERE key = 'next_id' AND value < ?"

# Queue operations, kept in call order: (kind, qid, *arguments).
_CREATE, _DELETE_QUEUE, _PURGE = 0, 1, 2


class Store:
    """The open store of one server directory. Create with `Store.open`.

    Change methods buffer; `commit` writes. Every method must be called from
    the thread that opened the store.
    """

    def __init__(self, directory: Path, sync: str, con: sqlite3.Connection, lock_fd: int) -> None:
        # Use `Store.open`.
        self.directory = directory
        self.path = directory / DB_NAME
        self.sync = sync
        self._con: sqlite3.Connection | None = con
        self._lock_fd = lock_fd
        qids = con.execute("SELECT name, qid FROM queues").fetchall()
        self._qids: dict[bytes, int] = dict(qids)
        self._next_qid = max((qid for _, qid in qids), default=0) + 1
        (max_seq,) = con.execute(
            "SELECT max(seq) FROM (SELECT seq FROM messages UNION ALL SELECT seq FROM packs)"
        ).fetchone()
        self._seq = itertools.count((max_seq or 0) + 1)
        (self._reserved,) = con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        self._reserved_written = self._reserved
        self._packs = _PackIndex()
        self._partial: dict[int, _Pack] = {}  # written packs with members gone: first_id -> pack
        self._free: dict[tuple[int, int], list[tuple[int, int]]] = {}  # shape -> [(slot, qid in its row)]
        self._free_bytes = 0
        self._next_slot = 1
        self._reclaim_round = 0
        self._index_packs(con)
        self._clear_buffer()

    def _clear_buffer(self) -> None:
        # The buffer: everything since the last successful commit.
        self._adds: dict[int, tuple[int, int, bytes, int, int, int]] = {}  # id -> row, as _INSERT binds it
        self._removes: list[int] = []
        self._deliveries: dict[int, int] = {}
        self._dues: dict[int, int] = {}
        self._queue_ops: list[tuple] = []
        self._new_packs: dict[int, _Pack] = {}  # first_id -> a pack not written yet
        self._dead_packs: list[_Pack] = []  # written packs whose last member went
        self._gone_changed: dict[int, _Pack] = {}  # first_id -> a written pack with newly gone members
        self._extracts: dict[int, list] = {}  # id -> [pack, deliveries, due_ms]: members of written packs to copy

    def _index_packs(self, con: sqlite3.Connection) -> None:
        gone = dict(con.execute("SELECT slot, gone FROM pack_gone"))
        rows = con.execute("SELECT slot, first_id, qid, seq, sizes, length(data) FROM packs")
        for slot, first_id, qid, seq, sizes, size in rows:
            self._next_slot = max(self._next_slot, slot + 1)
            pack = _Pack(first_id, qid, seq, sizes, None, slot, size)
            bits = gone.get(slot)
            if bits is not None:
                pack.gone = int.from_bytes(bits, "little")
                pack.live = pack.count - pack.gone.bit_count()
                if not pack.live:
                    self._free_slot(pack.shape, slot, qid)
                    continue
                self._partial[first_id] = pack
            self._packs.add(pack)

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], sync: str = "os") -> Store:
        """Open the store in ``directory``, creating the directory and an empty store if missing.

        ``sync`` is "os" (a commit survives the process dying) or "disk" (it
        survives a power cut; each commit fsyncs).

        Raises `StoreError`, naming the file, if another process (or another
        `Store` in this one) holds the directory, if the file is not a dbqueue
        store, is corrupt (fails ``PRAGMA quick_check``), or was written by a
        newer format version. Raises `ValueError` for an unknown ``sync``.
        """
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {sorted(SYNC_MODES)}, got {sync!r}")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{directory}: cannot create the store directory: {exc}") from exc
        lock_fd = _lock(directory / LOCK_NAME)
        path = directory / DB_NAME
        con = None
        try:
            created = not path.exists()
            con = _connect(path, sync)
            store = cls(directory, sync, con, lock_fd)
            if created:
                _fsync_directory(directory)
            return store
        except BaseException as exc:
            if con is not None:
                con.close()
            os.close(lock_fd)  # releases the flock
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: cannot open the store: {exc}") from exc
            raise

    def close(self) -> None:
        """Commit what is buffered, checkpoint, and release the file and its lock.

        Closing twice is harmless. Raises `StoreError` if the final commit
        fails; the store is closed all the same (the uncommitted changes are lost).
        """
        con = self._con
        if con is None:
            return
        try:
            self.commit()
            try:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: checkpoint failed: {exc}") from exc
        finally:
            self._con = None
            con.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Return every stored queue and message as last committed (buffered changes are not included).

        Meant to be called once, right after `open`. Costs one scan and sort of
        the message table. Raises `StoreError` if SQLite fails.
        """
        con = self._connection()
        try:
            queues = con.execute(
                "SELECT qid, name, capacity, max_deliveries, dead_letter FROM queues ORDER BY qid"
            ).fetchall()
            # (seq, id, message) for each queue, to sort: a pack's members share its seq.
            by_qid: dict[int, list[tuple[int, int, StoredMessage]]] = {row[0]: [] for row in queues}
            for seq, qid, *message in con.execute("SELECT seq, qid, id, data, deliveries, due_ms FROM messages"):
                by_qid[qid].append((seq, message[0], tuple(message)))  # type: ignore[arg-type]
            gone = dict(con.execute("SELECT slot, gone FROM pack_gone"))
            packs = con.execute("SELECT slot, first_id, qid, seq, sizes, data FROM packs")
            for slot, first_id, qid, seq, sizes, data in packs:
                by_qid[qid] += _unpacked(first_id, seq, sizes, data, int.from_bytes(gone.get(slot, b""), "little"))
            (max_id,) = con.execute("SELECT max(id) FROM messages").fetchone()
            (max_packed,) = con.execute("SELECT max(first_id + count - 1) FROM packs").fetchone()
            (reserved,) = con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the store: {exc}") from exc
        except KeyError as exc:
            raise StoreError(f"{self.path}: a message refers to queue {exc}, which is not stored") from exc
        for messages in by_qid.values():
            messages.sort()  # (seq, id) is unique: the messages themselves are never compared
        return Snapshot(
            queues=[
                StoredQueue(name, cap, maxd, dlq, [message for _, _, message in by_qid[qid]])
                for qid, name, cap, maxd, dlq in queues
            ],
            next_id=max(reserved, (max_id or 0) + 1, (max_packed or 0) + 1, 1),
        )

    # --- buffered changes (the hot path: no SQLite here) ------------------------------

    def create_queue(
        self, name: bytes, capacity: int = 0, max_deliveries: int = 0, dead_letter: bytes | None = None
    ) -> None:
        """Record a new queue. Raises `ValueError` if the store already has a queue called ``name``."""
        if name in self._qids:
            raise ValueError(f"queue {name!r} is already stored")
        qid = self._qids[name] = self._next_qid
        self._next_qid = qid + 1
        self._queue_ops.append((_CREATE, qid, name, capacity, max_deliveries, dead_letter))

    def delete_queue(self, name: bytes) -> None:
        """Record that a queue and every message in it are gone. Raises `KeyError` for an unknown queue."""
        qid = self._qids.pop(name)
        self._drop_pending_adds(qid)
        self._drop_packs(qid)
        self._forget_rows_of(qid)
        self._queue_ops.append((_DELETE_QUEUE, qid))

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None:
        """Record that every message of a queue is gone except the ids in ``keep``; the queue stays.

        ``keep`` is for messages a purge leaves alone, such as those in flight
        (`queues.Broker.purge` drops only ready and delayed ones). Raises
        `KeyError` for an unknown queue.
        """
        qid = self._qids[name]
        kept = frozenset(keep)
        self._drop_pending_adds(qid, kept)
        self._drop_packs(qid, kept)
        self._forget_rows_of(qid)
        self._queue_ops.append((_PURGE, qid, kept))

    def add(self, queue: bytes, id_: int, data: bytes, due_ms: int = 0, deliveries: int = 0) -> None:
        """Record a new message at the end of ``queue``.

        ``due_ms`` is the wall-clock time (`now_ms`) before which it must not be
        delivered, 0 for none. ``deliveries`` is non-zero when a message moves
        (after ``remove(id_)``) to a dead-letter queue. Raises `KeyError` for an
        unknown queue.
        """
        self._adds[id_] = (id_, self._qids[queue], data, deliveries, due_ms, next(self._seq))

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes]) -> None:
        """`add` for several new messages at once, in order of increasing ids (no delay, no deliveries):
        stored as one pack for each stretch of consecutive ids."""
        qid = self._qids[queue]
        start = 0
        while start < len(ids):  # ``ids`` increase: a stretch ends where they skip
            end = len(ids) if ids[-1] - ids[start] == len(ids) - 1 - start else _stretch_end(ids, start)
            if end - start == 1:
                self._adds[ids[start]] = (ids[start], qid, items[start], 0, 0, next(self._seq))
            else:
                chunk = items[start:end]
                self._add_pack(qid, ids[start], _sizes_layout(len(chunk)).pack(*map(len, chunk)), b"".join(chunk))
            start = end

    def add_columns(self, queue: bytes, first_id: int, sizes: bytes, data: bytes) -> None:
        """`add_many` for messages with consecutive ids from ``first_id``, given as a batch's columns:
        their u32 sizes and their payloads back to back (stored as they are, as one pack)."""
        qid = self._qids[queue]
        if len(sizes) == 4:
            self._adds[first_id] = (first_id, qid, data, 0, 0, next(self._seq))
        else:
            self._add_pack(qid, first_id, sizes, data)

    def _add_pack(self, qid: int, first_id: int, sizes: bytes, data: bytes) -> None:
        # A new pack, in a free slot of its shape if there is one, else in a new row.
        pack = _Pack(first_id, qid, next(self._seq), sizes, data, 0, len(data))
        free = self._free.get(pack.shape)
        if free:
            pack.slot, pack.reused_qid = free.pop()
            self._free_bytes -= len(data)
        else:
            pack.slot = self._next_slot
            self._next_slot += 1
        self._new_packs[first_id] = pack
        self._packs.add(pack)

    def remove(self, id_: int) -> None:
        """Record that a message is gone (confirmed, dead-lettered, dropped). Unknown ids are ignored at commit."""
        if self._adds.pop(id_, None) is not None:
            return
        pack = self._packs.find(id_)
        if pack is not None:
            pack.live -= 1
            self._mark_gone(pack, id_)
        elif self._extracts.pop(id_, None) is None:  # (an extracted member is already gone from its pack)
            self._removes.append(id_)

    def remove_many(self, ids: Sequence[int]) -> None:
        """`remove` for several ids; usually they are the members of one pack, or none was added since
        the last commit, and they are settled at once."""
        pack = self._packs.find(ids[0]) if ids else None
        if pack is not None and len(ids) == pack.live == pack.count and tuple(ids) == _pack_ids(pack):  # a whole pack
            pack.live = 0
            self._retire(pack)
        elif (
            pack is None
            and not any(map(self._packs.find, ids))
            and self._adds.keys().isdisjoint(ids)
            and self._extracts.keys().isdisjoint(ids)
        ):
            self._removes += ids
        else:
            for id_ in ids:
                self.remove(id_)

    def set_deliveries(self, id_: int, deliveries: int) -> None:
        """Record a message's delivery count, so dead-lettering counts across restarts."""
        self._update(id_, 3, deliveries, self._deliveries)

    def set_due(self, id_: int, due_ms: int) -> None:
        """Record a message's new due time (wall-clock ms, `now_ms`; 0: deliverable now)."""
        self._update(id_, 4, due_ms, self._dues)

    def _update(self, id_: int, field: int, value: int, updates: dict[int, int]) -> None:
        # ``field``: the value's place in an _INSERT row (3 deliveries, 4 due_ms).
        pack = self._packs.find(id_)
        if pack is not None:
            self._extract(pack, id_)
        row = self._adds.get(id_)
        extract = self._extracts.get(id_)
        if row is not None:
            self._adds[id_] = row[:field] + (value,) + row[field + 1 :]
        elif extract is not None:
            extract[field - 2] = value
        else:
            updates[id_] = value

    def _extract(self, pack: _Pack, id_: int) -> None:
        """Turn a pack member into a message of its own (in `messages`, at its pack's place)."""
        if pack.written:
            self._extracts[id_] = [pack, 0, 0]  # copied by SQL at commit: [pack, deliveries, due_ms]
        else:
            offset, size = pack.span(id_)
            self._adds[id_] = (id_, pack.qid, pack.data[offset : offset + size], 0, 0, pack.seq)  # type: ignore[index]
        pack.live -= 1
        self._mark_gone(pack, id_)

    def _mark_gone(self, pack: _Pack, id_: int) -> None:
        # ``id_`` has left ``pack`` (its ``live`` already counts it out).
        if not pack.live:
            self._retire(pack)
            return
        pack.gone |= 1 << (id_ - pack.first_id)
        if pack.written:
            self._gone_changed[pack.first_id] = self._partial[pack.first_id] = pack

    def _retire(self, pack: _Pack) -> None:
        # Its last member is gone. A written row becomes a free slot (up to FREE_SLOT_BYTES of
        # them) or is deleted; an unwritten one is never written, and a slot it took is free again.
        self._packs.discard(pack)
        if pack.written:
            self._dead_packs.append(pack)
            self._gone_changed.pop(pack.first_id, None)
            self._partial.pop(pack.first_id, None)
            if self._free_bytes + pack.shape[1] <= FREE_SLOT_BYTES:
                pack.freed = True
                self._free_slot(pack.shape, pack.slot, pack.qid)
        else:
            del self._new_packs[pack.first_id]
            if pack.reused_qid >= 0:
                self._free_slot(pack.shape, pack.slot, pack.reused_qid)

    def _free_slot(self, shape: tuple[int, int], slot: int, qid: int) -> None:
        self._free.setdefault(shape, []).append((slot, qid))
        self._free_bytes += shape[1]

    def _forget_rows_of(self, qid: int) -> None:
        # A queue deletion or purge deletes every pack row that holds ``qid``, free slots included:
        # they cannot be taken over any more, nor marked free.
        for shape, slots in list(self._free.items()):
            kept = [(slot, row_qid) for slot, row_qid in slots if row_qid != qid]
            self._free_bytes -= (len(slots) - len(kept)) * shape[1]
            self._free[shape] = kept
        for pack in self._dead_packs:
            if pack.qid == qid:
                pack.freed = False
        for pack in self._new_packs.values():
            if pack.reused_qid == qid:
                pack.reused_qid = -1  # its row goes with the queue: it is inserted anew

    def _drop_packs(self, qid: int, kept: frozenset[int] = frozenset()) -> None:
        # A queue deleted or purged: its pack members are gone, except those kept (extracted).
        # The written rows go by the queue operation's own SQL. O(stored messages): rare.
        for id_ in [id_ for id_, extract in self._extracts.items() if extract[0].qid == qid and id_ not in kept]:
            del self._extracts[id_]
        for pack in [pack for pack in self._packs.packs.values() if pack.qid == qid]:
            for id_ in pack.members():
                if id_ in kept:
                    self._extract(pack, id_)
                else:
                    pack.live -= 1
                    self._mark_gone(pack, id_)

    def reserve_ids(self, upto: int) -> None:
        """Record that ids below ``upto`` may be handed out: `Snapshot.next_id` will never be lower."""
        self._reserved = max(self._reserved, upto)

    def committed(self, id_: int) -> bool:
        """Whether message ``id_``, if stored, is in the file (its addition is not buffered)."""
        if id_ in self._adds:
            return False
        pack = self._packs.find(id_)
        return pack is None or pack.written

    def pending(self) -> bool:
        """Whether anything is buffered that `commit` would write."""
        return bool(
            self._adds
            or self._removes
            or self._queue_ops
            or self._deliveries
            or self._dues
            or self._new_packs
            or self._dead_packs
            or self._gone_changed
            or self._extracts
            or self._reserved != self._reserved_written
        )

    # --- writing ---------------------------------------------------------------------

    def commit(self) -> None:
        """Write every change buffered since the last commit in one transaction, durable per ``sync``.

        Returns at once when nothing is buffered. Raises `StoreError` if SQLite
        fails (disk full, I/O error, or a misuse such as adding an id twice):
        nothing of the batch is written, and the buffer is kept, so a later
        `commit` retries it together with whatever was buffered since.
        """
        if not self.pending():
            return
        con = self._connection()
        try:
            con.execute("BEGIN")
            if self._extracts:
                con.executemany(_EXTRACT, list(map(_extract_row, self._extracts.items())))
            for op in self._queue_ops:
                kind, qid = op[0], op[1]
                if kind == _CREATE:
                    con.execute(
                        "INSERT INTO queues (qid, name, capacity, max_deliveries, dead_letter) VALUES (?, ?, ?, ?, ?)",
                        op[1:],
                    )
                elif kind == _DELETE_QUEUE:
                    _delete_packs_of(con, qid)
                    con.execute("DELETE FROM messages WHERE qid = ?", (qid,))
                    con.execute("DELETE FROM queues WHERE qid = ?", (qid,))
                elif op[2]:
                    _delete_packs_of(con, qid)
                    con.executemany("INSERT INTO temp.kept (id) VALUES (?)", zip(op[2]))
                    con.execute("DELETE FROM messages WHERE qid = ? AND id NOT IN temp.kept", (qid,))
                    con.execute("DELETE FROM temp.kept")
                else:
                    _delete_packs_of(con, qid)
                    con.execute("DELETE FROM messages WHERE qid = ?", (qid,))
            if self._reserved != self._reserved_written:
                con.execute(_RESERVE, (self._reserved, self._reserved))
            if self._deliveries:
                con.executemany(_SET_DELIVERIES, _swapped(self._deliveries))
            if self._dues:
                con.executemany(_SET_DUE, _swapped(self._dues))
            if self._removes:
                _delete(con, self._removes)
            if self._adds:
                _insert(con, list(self._adds.values()))
            self._write_packs(con)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.rollback()
            raise StoreError(f"{self.path}: commit failed, nothing of the batch was written: {exc}") from exc
        for pack in self._new_packs.values():
            pack.written = True
            pack.reused_qid = -1
            pack.data = None  # the queue holds the payloads; an extraction reads them back from the row
            if pack.gone:
                self._partial[pack.first_id] = pack
        self._clear_buffer()
        self._reserved_written = self._reserved

    def _write_packs(self, con: sqlite3.Connection) -> None:
        # Retired packs (free slots, or rows deleted), then new ones (into free slots, or new
        # rows), then the gone bitmaps: a slot freed and taken over in one batch ends up taken.
        dead = self._dead_packs
        if dead:
            con.executemany(_SET_GONE, [(pack.slot, _all_gone(pack.count)) for pack in dead if pack.freed])
            con.executemany(_DELETE_PACK, [(pack.slot,) for pack in dead if not pack.freed])
            con.executemany(_DELETE_GONE, [(pack.slot,) for pack in dead if not pack.freed and pack.gone])
        new_packs = list(self._new_packs.values())
        if new_packs:
            reused = [pack.reused_qid >= 0 for pack in new_packs]
            rows = [(p.first_id, p.qid, p.seq, p.count, p.sizes, p.data, p.slot) for p in new_packs]
            con.executemany(_REUSE_PACK, itertools.compress(rows, reused))
            con.executemany(_DELETE_GONE, [(pack.slot,) for pack in itertools.compress(new_packs, reused)])
            con.executemany(_INSERT_PACK, itertools.compress(rows, map(operator.not_, reused)))
        changed = [*self._gone_changed.values(), *(pack for pack in new_packs if pack.gone)]
        if changed:
            con.executemany(_SET_GONE, [(pack.slot, pack.gone_bits()) for pack in changed])

    def reclaim(self, max_pages: int = 1024) -> int:
        """Give free space back to the file system and truncate the WAL; return the pages released.

        Releases at most ``max_pages`` pages (4 KiB each) beyond `FREE_PAGES_KEPT`,
        which stay for the next additions, then checkpoints. Meant for a timer
        (every second or so); buffered changes are left for `commit`. Raises
        `StoreError` if SQLite fails.
        """
        self._compact_packs()
        self.commit()
        con = self._connection()
        try:
            (free,) = con.execute("PRAGMA freelist_count").fetchone()
            excess = min(max_pages, free - FREE_PAGES_KEPT)
            if excess > 0:
                # The vacuum frees one page per step, and only executescript steps a
                # statement without result columns to the end (execute stops at one page).
                con.executescript(f"PRAGMA incremental_vacuum({int(excess)});")
            (left,) = con.execute("PRAGMA freelist_count").fetchone()
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reclaim failed: {exc}") from exc
        return free - left

    def _compact_packs(self) -> None:
        # A pack partly gone since the last round, and more gone than live, gives its live
        # members rows of their own and goes: packs hold at most about twice their live bytes.
        self._reclaim_round += 1
        for pack in list(self._partial.values()):
            if pack.partial_round < 0:
                pack.partial_round = self._reclaim_round
            elif pack.partial_round < self._reclaim_round and pack.live * 2 < pack.count:
                for id_ in pack.members():
                    self._extract(pack, id_)

    # --- internals -------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._con

    def _drop_pending_adds(self, qid: int, kept: frozenset[int] = frozenset()) -> None:
        adds = self._adds
        for id_ in [id_ for id_, row in adds.items() if row[1] == qid and id_ not in kept]:
            del adds[id_]


def _pack_ids(pack: _Pack) -> tuple[int, ...]:
    return tuple(range(pack.first_id, pack.first_id + pack.count))


def _stretch_end(ids: Sequence[int], start: int) -> int:
    end = start + 1
    while end < len(ids) and ids[end] == ids[end - 1] + 1:
        end += 1
    return end


@functools.cache
def _sizes_layout(count: int) -> struct.Struct:
    # A pack's ``sizes``: a big-endian u32 per payload.
    return struct.Struct(f">{count}I")


def _all_gone(count: int) -> bytes:
    """The gone bitmap of a free slot: every member gone."""
    return ((1 << count) - 1).to_bytes((count + 7) // 8, "little")


def _extract_row(item: tuple[int, list]) -> tuple[int, int, int, int, int, int]:
    # (id, [pack, deliveries, due_ms]) as _EXTRACT binds it.
    id_, (pack, deliveries, due_ms) = item
    offset, size = pack.span(id_)
    return id_, offset + 1, size, deliveries, due_ms, pack.slot


def _delete_packs_of(con: sqlite3.Connection, qid: int) -> None:
    con.execute("DELETE FROM pack_gone WHERE slot IN (SELECT slot FROM packs WHERE qid = ?)", (qid,))
    con.execute("DELETE FROM packs WHERE qid = ?", (qid,))


def _unpacked(first_id: int, seq: int, sizes: bytes, data: bytes, gone: int) -> list[tuple[int, int, StoredMessage]]:
    """A pack row's live members as `load` sorts them: (seq, id, message)."""
    lengths = _sizes_layout(len(sizes) // 4).unpack(sizes)
    ends = list(itertools.accumulate(lengths))
    return [
        (seq, first_id + index, (first_id + index, data[end - length : end], 0, 0))
        for index, (length, end) in enumerate(zip(lengths, ends))
        if not gone >> index & 1
    ]


def _delete(con: sqlite3.Connection, ids: list[int]) -> None:
    whole = len(ids) - len(ids) % _CHUNK
    if whole:
        con.executemany(_DELETE_CHUNK, [ids[i : i + _CHUNK] for i in range(0, whole, _CHUNK)])
    if whole < len(ids):
        con.executemany(_DELETE, zip(ids[whole:]))


def _insert(con: sqlite3.Connection, rows: list[tuple[int, int, bytes, int, int, int]]) -> None:
    whole = len(rows) - len(rows) % _CHUNK
    if whole:
        flat = list(itertools.chain.from_iterable(rows[:whole]))
        step = 6 * _CHUNK
        con.executemany(_INSERT_CHUNK, [flat[i : i + step] for i in range(0, len(flat), step)])
    if whole < len(rows):
        con.executemany(_INSERT, rows[whole:])


def _swapped(values: dict[int, int]) -> zip[tuple[int, int]]:
    # (id -> value) as (value, id) rows for "SET x = ? WHERE id = ?".
    return zip(values.values(), values.keys())


def _lock(path: Path) -> int:
    """Take the directory's exclusive lock; return its descriptor or raise `StoreError`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the lock file: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"{path}: the store is in use by another dbqueue server (pid {holder})") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    """Open, check and (if new) create the database; raise `StoreError` naming ``path`` if it is not usable."""
    # timeout=0: our flock already excludes other servers; anything else holding
    # the file should make us fail now, not after a wait.
    con = sqlite3.connect(path, isolation_level=None, timeout=0, cached_statements=32)
    try:
        # Before the first read, so the WAL index lives in our memory (no -shm
        # file) and SQLite's own lock is exclusive too.
        con.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            version = _pragma(con, "user_version")
            app_id = _pragma(con, "application_id")
            (objects,) = con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a readable dbqueue store ({exc})") from exc
        if version == 0 and app_id == 0 and objects == 0:
            _create(con)
        else:
            _check(con, path, version, app_id)
        con.execute("PRAGMA journal_mode = WAL").fetchall()
        con.execute(f"PRAGMA synchronous = {SYNC_MODES[sync]}")
        con.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        con.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        con.execute("PRAGMA temp_store = MEMORY")  # for `load`'s sort and the table below
        con.execute("CREATE TEMP TABLE kept (id INTEGER PRIMARY KEY)")  # ids a purge keeps, for one statement
        return con
    except BaseException:
        con.close()
        raise


def _create(con: sqlite3.Connection) -> None:
    # page_size and auto_vacuum only take effect before the first table exists.
    con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    con.execute("PRAGMA auto_vacuum = INCREMENTAL")
    con.execute("PRAGMA journal_mode = WAL").fetchall()
    con.execute("BEGIN")
    for statement in _SCHEMA:
        con.execute(statement)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    con.execute("COMMIT")


def _check(con: sqlite3.Connection, path: Path, version: int, app_id: int) -> None:
    """Refuse a foreign, newer or corrupt file; upgrade an older one in place."""
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path}: not a dbqueue store (application_id {app_id:#x}, expected {APPLICATION_ID:#x})")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: written by a newer dbqueue (store format {version}; this one reads up to {FORMAT_VERSION})"
        )
    if version < 1:
        raise StoreError(f"{path}: invalid store format version {version}")
    try:
        problems = [row[0] for row in con.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: the store is corrupt ({exc})") from exc
    if problems != ["ok"]:
        raise StoreError(f"{path}: the store is corrupt: " + "; ".join(problems))
    if version < FORMAT_VERSION:
        con.execute("BEGIN")
        for step in range(version, FORMAT_VERSION):
            _UPGRADES[step](con)
        con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        con.execute("COMMIT")


def _pragma(con: sqlite3.Connection, name: str) -> int:
    (value,) = con.execute(f"PRAGMA {name}").fetchone()
    return int(value)


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is durable only once the directory is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

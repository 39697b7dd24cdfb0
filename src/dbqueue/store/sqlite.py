"""The durable store: the `Store` that buffers the queue logic's changes and commits them in batches.

Theory of operation
-------------------
The server keeps every queue in memory (`core.queues.Broker`) and tells the
store what changed, through the `core.journal.Journal` methods. Change
methods (`Store.add`, `Store.remove`, ...) only *buffer*: they are plain dict
and list operations, cheap enough for the hot path. `Store.commit` writes
everything buffered since the last commit in one SQLite transaction and
returns once it is durable to the chosen level. Group commit is the caller's
job: the server commits once per event-loop batch and sends the replies of
that batch only after `commit` returns, so a client never hears of a change
that a crash could undo.

A buffered change is cancelled in memory when a later one undoes it: a message
added and removed (sent and confirmed) within one batch never reaches SQLite.
Whatever is left is applied in an order that gives the same result as applying
every call in sequence::

    extractions -> queue creations, changes of settings, deletions and purges
    (in call order, `store.queue_ops`)
    -> id high-water mark -> delivery counts -> due times -> removals -> additions
    -> packs retired (freed or deleted) -> packs added (into free slots or new rows)
    -> packs' gone members

That order is correct because of how the calls relate. Ids are never reused,
except that a message may be removed and added again with its id (moved to a
dead-letter queue), so removals go before additions. A pending addition is
dropped from the buffer by its queue's deletion or purge (unless the purge
keeps its id), so every addition left after them belongs after them. Count
and due-time changes to a message added in the same batch are folded into
the pending addition; the others touch a row that existed before the batch,
so they go first (on a row that the batch then removes, they are harmless).

Messages sent together become one row, a *pack* (`store.packs`, which also
explains extraction, compaction and free slots); the tables, and the rule for
bumping their format version, are in `store.schema`. There is no index besides
the message id: `delete_queue` and `purge` scan the message table when
committed, and `load` sorts it.

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
those re-acquisitions wait, so a commit beside a busy event loop takes many
times longer than the same commit on the loop's own thread.

Files: ``DIR/dbqueue.db`` (plus SQLite's ``dbqueue.db-wal``) and
``DIR/dbqueue.lock`` (`store.lock`), locked for the store's whole life, so two
servers never share a directory; with `keep_room`, ``DIR/dbqueue.reserve``.

A full disk (`store.room`). A failed `commit` writes nothing and keeps its
buffer; the caller decides. The server answers the requests of the failed
batch with errors, then throws the buffer away and reads the store's last
commit back (`reload`: the in-memory bookkeeping, packs included, is rebuilt
from the file, as `open` builds it). The store keeps a reserve of room while
all is well (`keep_room`) and gives it back when writes fail
(`release_room`), so that confirms can still be written; without its room it
compacts no packs (a compaction writes new rows). `probe` tells when the
store can write again: it takes its reserve again and commits a write.

Damage: a store is created only in a directory that never held one, and a
store file that is missing or cut short stops the open (`store.files`). Every
row that holds payloads carries a checksum (`store.checksums`), computed when
the change is buffered (a message) or written (a pack), and verified by
`load` for every live message, and by `commit` for a pack before members are
extracted from it: damage stops the server, naming the file and the message
ids, instead of being served. `store.check` reads a store without changing
it and salvages the intact messages of a damaged one.
"""

from __future__ import annotations

import itertools
import operator
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from ..core.journal import Journal, Origin, Snapshot, StoredMessage, StoredQueue, now_ms
from ..errors import StoreError
from . import contents, files, schema
from .checksums import pack_crc, row_crc
from .files import DB_NAME
from .lock import LOCK_NAME, DirectoryLock
from .packs import FREE_SLOT_BYTES, Pack, PackIndex, all_gone, sizes_layout
from .queue_ops import Alter, Create, Delete, QueueOp, QueueOps
from .room import Room
from .schema import FORMAT_VERSION

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

SYNC_MODES = {"os": "NORMAL", "disk": "FULL"}

# SQLite's own checkpoint (4 MiB of WAL): under steady churn the WAL, not the
# database, is what grows between two `reclaim` rounds, so keep it short.
WAL_AUTOCHECKPOINT_PAGES = 1024
# After a checkpoint SQLite truncates a WAL larger than this: the WAL file stays near 4 MiB.
JOURNAL_SIZE_LIMIT = 4 << 20
# `reclaim` keeps this many free pages for the next additions instead of returning them.
FREE_PAGES_KEPT = 256

_INSERT = (
    "INSERT INTO messages (id, qid, data, deliveries, due_ms, seq, crc, enqueued_ms,"
    " origin_queue, origin_id, origin_enqueued_ms, origin_deliveries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ROW_FIELDS = 12
_DELETE = "DELETE FROM messages WHERE id = ?"
# Rows per multi-row statement: SQLite's cost per statement, not per row, dominates a commit of small rows.
_CHUNK = 32
_INSERT_CHUNK = (
    _INSERT.partition(" VALUES ")[0] + " VALUES " + ", ".join(["(" + ", ".join("?" * _ROW_FIELDS) + ")"] * _CHUNK)
)
_DELETE_CHUNK = "DELETE FROM messages WHERE id IN (" + ", ".join(["?"] * _CHUNK) + ")"
_INSERT_PACK = (
    "INSERT INTO packs (first_id, qid, seq, count, sizes, data, crc, enqueued_ms, slot)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A free slot taken over: SQLite rewrites a row of the same size in place (no pages freed or allocated).
_REUSE_PACK = (
    "UPDATE packs SET first_id = ?, qid = ?, seq = ?, count = ?, sizes = ?, data = ?, crc = ?, enqueued_ms = ?"
    " WHERE slot = ?"
)
_DELETE_PACK = "DELETE FROM packs WHERE slot = ?"
_SET_GONE = "INSERT OR REPLACE INTO pack_gone (slot, gone) VALUES (?, ?)"
_DELETE_GONE = "DELETE FROM pack_gone WHERE slot = ?"
# A written pack whose members are to be extracted, read back and checked first.
_READ_PACK = "SELECT first_id, sizes, data, crc FROM packs WHERE slot = ?"
_SET_DELIVERIES = "UPDATE messages SET deliveries = ? WHERE id = ?"
_SET_DUE = "UPDATE messages SET due_ms = ? WHERE id = ?"
_RESERVE = "UPDATE meta SET value = ? WHERE key = 'next_id' AND value < ?"
# A write that changes nothing but still appends a page to the log: `probe`'s test of the disk.
_PROBE = "UPDATE meta SET value = value WHERE key = 'next_id'"

# A message row as _INSERT binds it: (id, qid, data, deliveries, due_ms, seq, crc, enqueued_ms, origin_queue,
# origin_id, origin_enqueued_ms, origin_deliveries).
_Row = tuple[int, int, bytes, int, int, int, int, int, bytes | None, int, int, int]
_NO_ORIGIN = (None, 0, 0, 0)  # a row's origin columns when it has none


class _Extract:
    # A member of a written pack to copy into `messages` at commit, with the values its row will hold.
    __slots__ = ("deliveries", "due_ms", "pack")

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.deliveries = 0
        self.due_ms = 0


class Store:
    """The open store of one server directory. Create with `Store.open`.

    Change methods buffer; `commit` writes. Every method must be called from
    the thread that opened the store.
    """

    def __init__(self, directory: Path, sync: str, con: sqlite3.Connection, lock: DirectoryLock) -> None:
        # Use `Store.open`.
        self.directory = directory
        self.path = directory / DB_NAME
        self.sync = sync
        self._con: sqlite3.Connection | None = con
        self._lock = lock
        self._room = Room(directory)
        self._tight = False  # the room was given back: compact nothing until it is kept again
        self._reclaim_round = 0
        # The enqueue time of messages added without one: the time of the last commit (or the open),
        # read once a batch rather than once a message.
        self._stamp = now_ms()
        self._read_state(con)

    def _read_state(self, con: sqlite3.Connection) -> None:
        # The bookkeeping of what the file holds (queue ids, sequence numbers, reserved ids,
        # packs and free slots), and an empty buffer.
        self._queues = QueueOps(dict(con.execute("SELECT name, qid FROM queues").fetchall()))
        self._qids = self._queues.qids  # the same dict, read by every addition
        (max_seq,) = con.execute(
            "SELECT max(seq) FROM (SELECT seq FROM messages UNION ALL SELECT seq FROM packs)"
        ).fetchone()
        self._seq = itertools.count((max_seq or 0) + 1)
        (self._reserved,) = con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        self._reserved_written = self._reserved
        self._packs = PackIndex()
        self._partial: dict[int, Pack] = {}  # written packs with members gone: first_id -> pack
        self._free: dict[tuple[int, int], list[tuple[int, int]]] = {}  # shape -> [(slot, qid in its row)]
        self._free_bytes = 0
        self._next_slot = 1
        self._index_packs(con)
        self._clear_buffer()

    def _clear_buffer(self) -> None:
        # The buffer: everything since the last successful commit.
        self._adds: dict[int, _Row] = {}  # id -> row
        self._removes: list[int] = []
        self._deliveries: dict[int, int] = {}
        self._dues: dict[int, int] = {}
        self._queues.clear()
        self._new_packs: dict[int, Pack] = {}  # first_id -> a pack not written yet
        self._dead_packs: list[Pack] = []  # written packs whose last member went
        self._gone_changed: dict[int, Pack] = {}  # first_id -> a written pack with newly gone members
        self._extracts: dict[int, _Extract] = {}  # id -> a member of a written pack to copy

    def _index_packs(self, con: sqlite3.Connection) -> None:
        gone = dict(con.execute("SELECT slot, gone FROM pack_gone"))
        rows = con.execute("SELECT slot, first_id, qid, seq, sizes, length(data), enqueued_ms FROM packs")
        for slot, first_id, qid, seq, sizes, size, enqueued_ms in rows:
            self._next_slot = max(self._next_slot, slot + 1)
            pack = Pack(first_id, qid, seq, sizes, None, slot, size, enqueued_ms)
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

        An empty store is created only in a directory that never held one; a
        store of an older format version is upgraded in place, for good.

        Raises `StoreError`, naming the file, if another process (or another
        `Store` in this one) holds the directory, if the store looks lost or
        damaged (`store.files`: its file missing beside its lock file or log,
        empty or truncated), if the file is not a dbqueue store, is corrupt
        (fails ``PRAGMA quick_check``), or was written by a newer format
        version. Raises `ValueError` for an unknown ``sync``. Damaged payloads
        are found by `load`.
        """
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {sorted(SYNC_MODES)}, got {sync!r}")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{directory}: cannot create the store directory: {exc}") from exc
        lock = DirectoryLock.acquire(directory)
        path = directory / DB_NAME
        con = None
        try:
            if files.holds_store(directory, lock.found):
                problem, _ = files.damage(directory)
                if problem:
                    raise StoreError(f"{path}: {problem}: the store is damaged; restore it from a backup")
            else:
                files.create(directory)
            con = _connect(path, sync)
            return cls(directory, sync, con, lock)
        except BaseException as exc:
            if con is not None:
                con.close()
            if not lock.found and not path.exists():
                lock.discard()  # a first start that failed leaves the directory as new as it found it
            lock.release()
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
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Return every stored queue and message as last committed (buffered changes are not included).

        Meant to be called once, right after `open`. Costs one scan and sort of
        the message table, and a checksum of every stored payload
        (`store.checksums`). Raises `StoreError` if SQLite fails, and if any
        payload fails its checksum: the error names the file and the damaged
        message ids, and nothing is returned (`store.check.salvage` copies the
        intact messages into a new store).
        """
        con = self._connection()
        try:
            found = contents.read(con, FORMAT_VERSION)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the store: {exc}") from exc
        except KeyError as exc:
            raise StoreError(f"{self.path}: a message refers to queue {exc}, which is not stored") from exc
        if found.damaged:
            raise StoreError(
                f"{self.path}: {len(found.damaged)} stored messages fail their checksum, the file is damaged"
                f" (ids {contents.describe_ids(found.damaged)}); `dbqueue store check {self.directory}"
                " --salvage NEW_DIR` copies the intact messages into a new store"
            )
        return Snapshot(queues=found.queues, next_id=found.next_id)

    def discard(self) -> None:
        """Throw away every buffered change: the store is again as last committed.

        For a batch whose `commit` failed and that the caller gives up. Raises
        `StoreError` if the file cannot be read.
        """
        con = self._connection()
        try:
            self._read_state(con)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the store back: {exc}") from exc

    def reload(self) -> Snapshot:
        """`discard` the buffer and return the store as last committed (`load`); raises as they do."""
        self.discard()
        return self.load()

    # --- room on the file system (`store.room`) ----------------------------------------

    def keep_room(self) -> None:
        """Keep the reserve of room (`room.RESERVE_BYTES`) allocated; raise `StoreError` if the disk lacks it."""
        try:
            self._room.keep()
        except OSError as exc:
            raise StoreError(
                f"{self._room.path}: the disk is full: {self._room.size} bytes of room cannot be kept ({exc})"
            ) from exc
        self._tight = False

    def release_room(self) -> None:
        """Give the reserve back to the file system, for the writes that free space (confirms, `reclaim`)."""
        self._room.release()
        self._tight = True

    def probe(self) -> None:
        """Whether the store can write again: take the room back (`keep_room`), find as much again free
        beside it (so that what one reclaim round gives back does not count as room), and commit a write.

        Raises `StoreError` if any of that fails; the room is given back then.
        """
        self.keep_room()
        free = self._room.free()
        if free < self._room.size:
            self.release_room()
            raise StoreError(
                f"{self.directory}: the disk is full: {free} bytes free beside the room kept, {self._room.size} wanted"
            )
        con = self._connection()
        try:
            con.execute("BEGIN")
            con.execute(_PROBE)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.rollback()
            self.release_room()
            raise StoreError(f"{self.path}: a write fails: {_cause(exc)}") from exc

    # --- buffered changes (the hot path: no SQLite here) ------------------------------

    def create_queue(
        self,
        name: bytes,
        capacity: int = 0,
        max_deliveries: int = 0,
        dead_letter: bytes | None = None,
        visibility_timeout_ms: int = 0,
    ) -> None:
        """Record a new queue. Raises `ValueError` if the store already has a queue called ``name``."""
        self._queues.create(name, capacity, max_deliveries, dead_letter, visibility_timeout_ms)

    def alter_queue(
        self,
        name: bytes,
        max_deliveries: int,
        dead_letter: bytes | None,
        visibility_timeout_ms: int,
        annotations: bytes,
    ) -> None:
        """Record a queue's settings from now on (its capacity stays) and its annotations (b"": none).
        Raises `KeyError` for an unknown queue."""
        self._queues.alter(name, max_deliveries, dead_letter, visibility_timeout_ms, annotations)

    def delete_queue(self, name: bytes) -> None:
        """Record that a queue and every message in it are gone. Raises `KeyError` for an unknown queue."""
        qid = self._queues.delete(name)
        self._drop_pending_adds(qid)
        self._drop_packs(qid)
        self._forget_rows_of(qid)

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None:
        """Record that every message of a queue is gone except the ids in ``keep``; the queue stays.

        ``keep`` is for messages a purge leaves alone, such as those in flight
        (`queues.Broker.purge` drops only ready and delayed ones). Raises
        `KeyError` for an unknown queue.
        """
        qid, kept = self._queues.purge(name, keep)
        self._drop_pending_adds(qid, kept)
        self._drop_packs(qid, kept)
        self._forget_rows_of(qid)

    def add(
        self,
        queue: bytes,
        id_: int,
        data: bytes,
        due_ms: int = 0,
        deliveries: int = 0,
        enqueued_ms: int = 0,
        origin: Origin | None = None,
    ) -> None:
        """Record a new message at the end of ``queue``.

        ``due_ms`` is the wall-clock time (`now_ms`) before which it must not be
        delivered, 0 for none. ``deliveries`` is non-zero when a message moves
        (after ``remove(id_)``, with its id) to another queue. ``enqueued_ms`` is
        its first enqueue time (0: the batch's), ``origin`` a dead letter's.
        Raises `KeyError` for an unknown queue.
        """
        self._adds[id_] = (
            id_, self._qids[queue], data, deliveries, due_ms, next(self._seq), row_crc(id_, data),
            enqueued_ms or self._stamp, *(origin or _NO_ORIGIN),
        )  # fmt: skip

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes], enqueued_ms: int = 0) -> None:
        """`add` for several new messages at once, in order of increasing ids (no delay, no deliveries):
        stored as one pack for each stretch of consecutive ids."""
        qid = self._qids[queue]
        enqueued_ms = enqueued_ms or self._stamp
        start = 0
        while start < len(ids):  # ``ids`` increase: a stretch ends where they skip
            end = len(ids) if ids[-1] - ids[start] == len(ids) - 1 - start else _stretch_end(ids, start)
            if end - start == 1:
                id_, data = ids[start], items[start]
                self._adds[id_] = (id_, qid, data, 0, 0, next(self._seq), row_crc(id_, data), enqueued_ms, *_NO_ORIGIN)
            else:
                chunk = items[start:end]
                sizes = sizes_layout(len(chunk)).pack(*map(len, chunk))
                self._add_pack(qid, ids[start], sizes, b"".join(chunk), enqueued_ms)
            start = end

    def add_columns(self, queue: bytes, first_id: int, sizes: bytes, data: bytes, enqueued_ms: int = 0) -> None:
        """`add_many` for messages with consecutive ids from ``first_id``, given as a batch's columns:
        their u32 sizes and their payloads back to back (stored as they are, as one pack)."""
        qid = self._qids[queue]
        enqueued_ms = enqueued_ms or self._stamp
        if len(sizes) == 4:
            self._adds[first_id] = (
                first_id, qid, data, 0, 0, next(self._seq), row_crc(first_id, data), enqueued_ms, *_NO_ORIGIN,
            )  # fmt: skip
        else:
            self._add_pack(qid, first_id, sizes, data, enqueued_ms)

    def _add_pack(self, qid: int, first_id: int, sizes: bytes, data: bytes, enqueued_ms: int) -> None:
        # A new pack, in a free slot of its shape if there is one, else in a new row.
        pack = Pack(first_id, qid, next(self._seq), sizes, data, 0, len(data), enqueued_ms)
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
        if pack is not None and len(ids) == pack.live == pack.count and tuple(ids) == pack.ids():  # a whole pack
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
        self._update(id_, deliveries, None)

    def set_due(self, id_: int, due_ms: int) -> None:
        """Record a message's new due time (wall-clock ms, `now_ms`; 0: deliverable now)."""
        self._update(id_, None, due_ms)

    def _update(self, id_: int, deliveries: int | None, due_ms: int | None) -> None:
        # One of ``deliveries`` and ``due_ms`` is given: folded into a pending row, else buffered.
        pack = self._packs.find(id_)
        if pack is not None:
            self._extract(pack, id_)
        row = self._adds.get(id_)
        extract = self._extracts.get(id_)
        if row is not None:
            _, qid, data, old_deliveries, old_due_ms, seq, crc, *rest = row
            if deliveries is None:
                deliveries = old_deliveries
            if due_ms is None:
                due_ms = old_due_ms
            self._adds[id_] = (id_, qid, data, deliveries, due_ms, seq, crc, *rest)  # type: ignore[assignment]  # rest: the row's last five fields
        elif extract is not None:
            if deliveries is not None:
                extract.deliveries = deliveries
            if due_ms is not None:
                extract.due_ms = due_ms
        elif deliveries is not None:
            self._deliveries[id_] = deliveries
        elif due_ms is not None:
            self._dues[id_] = due_ms

    def _extract(self, pack: Pack, id_: int) -> None:
        """Turn a pack member into a message of its own (in `messages`, at its pack's place)."""
        if pack.written:
            self._extracts[id_] = _Extract(pack)  # read back from its row at commit
        else:
            assert pack.data is not None  # an unwritten pack holds its payloads
            offset, size = pack.span(id_)
            data = pack.data[offset : offset + size]
            self._adds[id_] = (id_, pack.qid, data, 0, 0, pack.seq, row_crc(id_, data), pack.enqueued_ms, *_NO_ORIGIN)
        pack.live -= 1
        self._mark_gone(pack, id_)

    def _mark_gone(self, pack: Pack, id_: int) -> None:
        # ``id_`` has left ``pack`` (its ``live`` already counts it out).
        if not pack.live:
            self._retire(pack)
            return
        pack.gone |= 1 << (id_ - pack.first_id)
        if pack.written:
            self._gone_changed[pack.first_id] = self._partial[pack.first_id] = pack

    def _retire(self, pack: Pack) -> None:
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
        for id_ in [id_ for id_, extract in self._extracts.items() if extract.pack.qid == qid and id_ not in kept]:
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
            or self._queues.ops
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
                con.executemany(_INSERT, self._extracted_rows(con))
            for op in self._queues.ops:
                _queue_op(con, op)
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
            self._stamp = now_ms()
        except BaseException as exc:
            if con.in_transaction:
                con.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(
                    f"{self.path}: commit failed, nothing of the batch was written: {_cause(exc)}"
                ) from exc
            raise
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
            con.executemany(_SET_GONE, [(pack.slot, all_gone(pack.count)) for pack in dead if pack.freed])
            con.executemany(_DELETE_PACK, [(pack.slot,) for pack in dead if not pack.freed])
            con.executemany(_DELETE_GONE, [(pack.slot,) for pack in dead if not pack.freed and pack.gone])
        new_packs = list(self._new_packs.values())
        if new_packs:
            reused = [pack.reused_qid >= 0 for pack in new_packs]
            rows = list(map(_pack_row, new_packs))
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
        `StoreError` if SQLite fails. Sparse packs are compacted first, unless
        the store gave its room back (`release_room`).
        """
        if not self._tight:
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
            raise StoreError(f"{self.path}: reclaim failed: {_cause(exc)}") from exc
        return int(free - left)

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

    def _extracted_rows(self, con: sqlite3.Connection) -> list[_Row]:
        # The members to extract as message rows, read back from their packs' rows. Each pack is
        # checked first: a payload damaged since the start must not be copied under a fresh checksum.
        rows: list[_Row] = []
        by_pack: dict[int, list[tuple[int, _Extract]]] = {}
        for id_, extract in self._extracts.items():
            by_pack.setdefault(extract.pack.slot, []).append((id_, extract))
        for slot, members in by_pack.items():
            pack = members[0][1].pack
            [(first_id, sizes, data, crc)] = con.execute(_READ_PACK, (slot,)).fetchall()
            if (first_id, sizes) != (pack.first_id, pack.sizes) or pack_crc(first_id, sizes, data) != crc:
                live = [id_ for id_, _ in members] + pack.members()
                raise StoreError(
                    f"{self.path}: a stored pack fails its checksum, the file is damaged"
                    f" (ids {contents.describe_ids(sorted(live))})"
                )
            for id_, extract in members:
                offset, size = pack.span(id_)
                payload = data[offset : offset + size]
                rows.append(
                    (
                        id_,
                        pack.qid,
                        payload,
                        extract.deliveries,
                        extract.due_ms,
                        pack.seq,
                        row_crc(id_, payload),
                        pack.enqueued_ms,
                        *_NO_ORIGIN,
                    )  # fmt: skip
                )
        return rows

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._con

    def _drop_pending_adds(self, qid: int, kept: frozenset[int] = frozenset()) -> None:
        adds = self._adds
        for id_ in [id_ for id_, row in adds.items() if row[1] == qid and id_ not in kept]:
            del adds[id_]


def _cause(exc: sqlite3.Error) -> str:
    # SQLite's words for a failed write, led by plain ones for a full disk (what an operator acts on).
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
        return f"the disk is full ({exc})"
    return str(exc)


def _stretch_end(ids: Sequence[int], start: int) -> int:
    end = start + 1
    while end < len(ids) and ids[end] == ids[end - 1] + 1:
        end += 1
    return end


def _pack_row(pack: Pack) -> tuple[int, int, int, int, bytes, bytes, int, int, int]:
    # A new pack as _INSERT_PACK and _REUSE_PACK bind it.
    data = pack.data
    assert data is not None  # an unwritten pack holds its payloads
    return (
        pack.first_id,
        pack.qid,
        pack.seq,
        pack.count,
        pack.sizes,
        data,
        pack_crc(pack.first_id, pack.sizes, data),
        pack.enqueued_ms,
        pack.slot,
    )


def _queue_op(con: sqlite3.Connection, op: QueueOp) -> None:
    # A queue's creation, change of settings, deletion or purge (`store.queue_ops`).
    if isinstance(op, Create):
        con.execute(
            "INSERT INTO queues (qid, name, capacity, max_deliveries, dead_letter, visibility_timeout_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            op,
        )
    elif isinstance(op, Alter):
        con.execute(
            "UPDATE queues SET max_deliveries = ?, dead_letter = ?, visibility_timeout_ms = ?, annotations = ?"
            " WHERE qid = ?",
            (*op[1:], op.qid),
        )
    elif isinstance(op, Delete):
        _delete_packs_of(con, op.qid)
        con.execute("DELETE FROM messages WHERE qid = ?", (op.qid,))
        con.execute("DELETE FROM queues WHERE qid = ?", (op.qid,))
    else:
        _delete_packs_of(con, op.qid)
        if op.kept:
            con.executemany("INSERT INTO temp.kept (id) VALUES (?)", zip(op.kept))
            con.execute("DELETE FROM messages WHERE qid = ? AND id NOT IN temp.kept", (op.qid,))
            con.execute("DELETE FROM temp.kept")
        else:
            con.execute("DELETE FROM messages WHERE qid = ?", (op.qid,))


def _delete_packs_of(con: sqlite3.Connection, qid: int) -> None:
    con.execute("DELETE FROM pack_gone WHERE slot IN (SELECT slot FROM packs WHERE qid = ?)", (qid,))
    con.execute("DELETE FROM packs WHERE qid = ?", (qid,))


def _delete(con: sqlite3.Connection, ids: list[int]) -> None:
    whole = len(ids) - len(ids) % _CHUNK
    if whole:
        con.executemany(_DELETE_CHUNK, [ids[i : i + _CHUNK] for i in range(0, whole, _CHUNK)])
    if whole < len(ids):
        con.executemany(_DELETE, zip(ids[whole:]))


def _insert(con: sqlite3.Connection, rows: list[_Row]) -> None:
    whole = len(rows) - len(rows) % _CHUNK
    if whole:
        flat = list(itertools.chain.from_iterable(rows[:whole]))
        step = _ROW_FIELDS * _CHUNK
        con.executemany(_INSERT_CHUNK, [flat[i : i + step] for i in range(0, len(flat), step)])
    if whole < len(rows):
        con.executemany(_INSERT, rows[whole:])


def _swapped(values: dict[int, int]) -> zip[tuple[int, int]]:
    # (id -> value) as (value, id) rows for "SET x = ? WHERE id = ?".
    return zip(values.values(), values.keys())


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    """Open and check the existing store at ``path``, upgrading it if older; raise `StoreError` naming ``path``
    if it is not usable."""
    # timeout=0: our flock already excludes other servers; anything else holding
    # the file should make us fail now, not after a wait.
    con = sqlite3.connect(path, isolation_level=None, timeout=0, cached_statements=32)
    try:
        # Before the first read, so the WAL index lives in our memory (no -shm
        # file) and SQLite's own lock is exclusive too.
        con.execute("PRAGMA locking_mode = EXCLUSIVE")
        schema.adopt(con, path)
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


_journal: type[Journal] = Store  # checked by mypy: the Store is what the queue logic writes to

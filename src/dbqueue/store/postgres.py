"""The PostgreSQL store: the queue logic's `core.Journal` committed to a PostgreSQL database.

Theory of operation
-------------------
The same contract as the SQLite store (`store.sqlite`): change methods only
*buffer* (dict and list operations, cheap on the hot path), and `Store.commit`
writes everything buffered since the last commit in one transaction and
returns once PostgreSQL has committed it (with ``synchronous_commit=on``, once
it is on the primary's disk, and on a synchronous replica's if one is
configured). The server commits once per loop iteration and sends the replies
of that batch only after `commit` returns. A message sent and confirmed within
one batch never reaches the database. The buffered changes are applied in the
order the SQLite store documents (queue operations in call order, kept by
`store.queue_ops` as the SQLite store keeps them, the id high-water mark,
delivery counts, due times, removals, additions), for the same reasons.

One commit is one round trip and, commonly, one statement: ``dbqueue_commit``
(`postgres_schema`), which checks the *fence* and then applies every change
kind over arrays (``unnest``); a single statement in autocommit mode is a
transaction of its own, answered once committed, so no BEGIN or COMMIT is
sent, and its plan is prepared once per session. The arrays are packed into
PostgreSQL's binary array format by `struct` (`pack_int8s`, `pack_byteas`...),
not element by element by psycopg's list dumpers: the server's CPU per commit
is what bounds a member's rate. A batch with queue operations or dead letters
(rare) is a transaction of several statements in libpq's pipeline mode,
starting with the fence, still one round trip. The server writes its
group commits without blocking its event loop: `begin` takes the buffer as a
`Batch` (its additions count as not committed until `finish`), `write` commits
it on an asyncio session while the loop goes on handling requests into a fresh
buffer, and `finish` settles it. Up to `WRITERS` batches may be written at
once, each on its own session, when they touch disjoint message ids
(`can_begin`; queue and parts changes go alone). `commit` is the same
transaction on the blocking session, for a stop and for tests. psycopg 3 was
measured against asyncpg (bench/postgres_driver.py): equal within the noise;
it has both a synchronous API (the start, the reload, the ownership checks)
and an asyncio one (the commits), with libpq's multi-host connection strings.

Parts and ownership. A group's members share one database; member ``i`` owns
*part* ``i``: the queues it created and the messages whose ids carry ``i`` in
their top byte. A store is opened for one part and holds it for its whole
life with a session advisory lock (`postgres_parts`): PostgreSQL releases the
lock when the owner's session ends (the process died, or its connection was
cut and PostgreSQL's keepalives noticed). Taking a part bumps its fencing
*epoch*; every commit transaction first calls ``dbqueue_fence(part, epoch)``,
which raises unless the epoch is still ours, so a member that lost its part
(paused, partitioned, slow) can never commit for it again, even on a new
session. The row lock the fence takes makes a takeover wait for a commit under
way, and a commit that waited for a takeover fail.

A commit that fails (the fence refused, PostgreSQL refused) writes nothing;
one whose connection broke during COMMIT may or may not have written, which
its error says. Either way the server answers that batch (and what came
after it) with errors and calls `reload`, which reconnects (retrying for `RECONNECT_SECONDS`, through every
host of a multi-host connection string), takes the part again if nobody else
did, and reads it back. If another server took the part, `reload` raises
`PartLost` and the server stops: it must not serve what it no longer owns.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain, repeat
from typing import Any, Self

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ..core.journal import Journal, Origin, Snapshot, StoredMessage, StoredQueue, now_ms
from ..errors import StoreError
from ..protocol.frames import MEMBER_SHIFT
from . import postgres_parts as parts
from .postgres_parts import PartLost, PartOwned
from .postgres_schema import FENCED_SQLSTATE, SCHEMA_VERSION, adopt
from .queue_ops import Alter, Create, Delete, QueueOp, QueueOps

__all__ = [
    "ORPHAN_GRACE",
    "RECONNECT_SECONDS",
    "SCHEMA_VERSION",
    "Batch",
    "OrphanWatch",
    "PartLost",
    "PartOwned",
    "PostgresStore",
    "connect",
]

log = logging.getLogger("dbqueue.store.postgres")

# How long `reload` tries to reach a database again (a primary's failover takes seconds).
RECONNECT_SECONDS = 30.0
# Seconds a part must have had no owner before a standby takes it (`OrphanWatch`): longer than an owner takes
# to get its part back after its session dropped, shorter than the takeover time promised (5 s).
ORPHAN_GRACE = 1.0
# Group commits written at once at most, each on its own session (`PostgresStore.can_begin`). Two let one
# commit's statement run in PostgreSQL while the other's WAL is flushed, and the loop begin the next batch
# while one is under way: on the 2-core machine of bench/postgres.py, with the commit as one statement, 2
# writers moved 1.3-1.4x the messages of 1 with batches of 100 and as many one request at a time, at 10-20%
# more PostgreSQL CPU per message (smaller batches); 4, measured once, were no faster than 2.
WRITERS = 2

_FENCE = b"SELECT dbqueue_fence(%s, %s)"
# Dead letters, with their origin: rare, so the common commit (`_COMMIT`) carries no origin columns.
_INSERT_ORIGIN = (
    b"INSERT INTO dbqueue_messages (id, qid, seq, data, deliveries, due_ms, enqueued_ms,"
    b" origin_queue, origin_id, origin_enqueued_ms, origin_deliveries)"
    b" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# The common commit, one statement (`postgres_schema`'s ``dbqueue_commit``): the arrays go in binary (`_Packed`).
_COMMIT = (
    b"SELECT dbqueue_commit(%s, %s, %s::int8, %b::int8[], %b::int4[], %b::int8[], %b::int8[], %b::int8[],"
    b" %b::int8[], %b::int4[], %b::int8[], %b::bytea[], %b::int4[], %b::int8[], %b::int8[])"
)
_CREATE_QUEUE = (
    b"INSERT INTO dbqueue_queues (part, qid, name, capacity, max_deliveries, dead_letter, visibility_timeout_ms)"
    b" VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_ALTER_QUEUE = (
    b"UPDATE dbqueue_queues SET max_deliveries = %s, dead_letter = %s, visibility_timeout_ms = %s, annotations = %s"
    b" WHERE part = %s AND qid = %s"
)
_DELETE_MESSAGES_OF = b"DELETE FROM dbqueue_messages WHERE qid = %s AND id >= %s AND id < %s"
_PURGE_MESSAGES_OF = b"DELETE FROM dbqueue_messages WHERE qid = %s AND id >= %s AND id < %s AND id <> ALL(%b::int8[])"
_DELETE_QUEUE = b"DELETE FROM dbqueue_queues WHERE part = %s AND qid = %s"

# A message row as ``dbqueue_commit`` takes it: (id, qid, seq, data, deliveries, due_ms, enqueued_ms).
_Row = tuple[int, int, int, bytes, int, int, int]


_CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,  # a commit on a link that went dead fails within 5 s instead of the kernel's 15 min
}
# The server side: PostgreSQL ends the session (and frees the part's lock) of a member cut off from it, idle
# (keepalives) or with a reply unacknowledged (tcp_user_timeout: keepalives are not sent while data is).
_KEEPALIVES = (
    b"SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3;"
    b" SET tcp_user_timeout = 5000"
)


# --- arrays in PostgreSQL's binary format, packed by struct (psycopg's list dumpers go element by element) ---


class _Packed:
    """An array already in PostgreSQL's binary array format (`pack_int8s`, `pack_int4s`, `pack_byteas`)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Int8s(_Packed):
    __slots__ = ()


class _Int4s(_Packed):
    __slots__ = ()


class _Byteas(_Packed):
    __slots__ = ()


class _PackedDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj.data  # type: ignore[no-any-return]  # a _Packed, by its registration


class _Int8sDumper(_PackedDumper):
    oid = 1016  # int8[]


class _Int4sDumper(_PackedDumper):
    oid = 1007  # int4[]


class _ByteasDumper(_PackedDumper):
    oid = 1001  # bytea[]


# An array header: dimensions, a has-nulls flag, the element type, then (size, lower bound) of its one dimension.
_ARRAY = struct.Struct(">iiIii")
_EMPTY = struct.Struct(">iiI")
_LENGTH = struct.Struct(">i")


def _pack_ints(values: Sequence[int], oid: int, size: int, code: str) -> bytes:
    # Each element is its length (``size``) then its big-endian value: the values packed at once, then
    # interleaved with the lengths byte column by byte column (slices run in C).
    count = len(values)
    if not count:
        return _EMPTY.pack(0, 0, oid)
    stride = 4 + size
    body = bytearray(stride * count)
    body[3::stride] = bytes([size]) * count
    packed = struct.pack(f">{count}{code}", *values)
    for byte in range(size):
        body[4 + byte :: stride] = packed[byte::size]
    return _ARRAY.pack(1, 0, oid, count, 1) + body


def pack_int8s(values: Sequence[int]) -> _Int8s:
    """``values`` as an ``int8[]`` parameter."""
    return _Int8s(_pack_ints(values, 20, 8, "q"))


def pack_int4s(values: Sequence[int]) -> _Int4s:
    """``values`` as an ``int4[]`` parameter."""
    return _Int4s(_pack_ints(values, 23, 4, "i"))


def pack_byteas(values: Sequence[bytes]) -> _Byteas:
    """``values`` as a ``bytea[]`` parameter."""
    if not values:
        return _Byteas(_EMPTY.pack(0, 0, 17))
    # Each element is its length then its bytes, interleaved by iterators that run in C.
    elements = chain.from_iterable(zip(map(_LENGTH.pack, map(len, values)), values))
    return _Byteas(_ARRAY.pack(1, 0, 17, len(values), 1) + b"".join(elements))


def _register_packed(con: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    con.adapters.register_dumper(_Int8s, _Int8sDumper)
    con.adapters.register_dumper(_Int4s, _Int4sDumper)
    con.adapters.register_dumper(_Byteas, _ByteasDumper)


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection to ``url`` in autocommit mode, with keepalives both ways so a dead link is noticed in seconds.

    Raises `psycopg.Error`.
    """
    con = psycopg.connect(url, **_CONNECT_OPTIONS)
    _register_packed(con)
    con.execute(_KEEPALIVES)
    return con


class Batch:
    """Changes taken from the buffer (`PostgresStore.begin`) for one `PostgresStore.write`.

    ``ids`` are every message id it touches; ``alone`` says it must be written
    with no other batch under way (it changes queues, or the parts row).
    """

    __slots__ = ("statements", "adds", "ids", "reserved", "alone", "slot")

    def __init__(
        self,
        statements: list[tuple[bytes, Sequence[Any]]],
        adds: dict[int, _Row],
        ids: set[int],
        reserved: int,
        alone: bool,
    ) -> None:
        self.statements = statements
        self.adds = adds
        self.ids = ids
        self.reserved = reserved
        self.alone = alone
        self.slot = -1  # the session it is written on


async def connect_async(url: str) -> psycopg.AsyncConnection[Any]:
    """`connect`'s settings on an asyncio connection (the session `PostgresStore.write` commits on)."""
    con = await psycopg.AsyncConnection.connect(url, **_CONNECT_OPTIONS)
    _register_packed(con)
    await con.execute(_KEEPALIVES)
    return con


class PostgresStore:
    """The open store of one part (member index) in a PostgreSQL database. Create with `PostgresStore.open`.

    Change methods buffer; `commit` writes. Not thread-safe: the buffer belongs to the event loop's thread.
    The calls that only read or check the database (`load`, `members`, `heartbeat`, `check`) may run on a
    worker thread, so that a slow database does not stall the loop (the server does so); psycopg's
    connection lock makes a blocking call of the loop's on the same session (`reload`, `probe`, `commit`,
    `close`) wait for them.
    """

    sync = "postgresql"

    def __init__(self, url: str, con: psycopg.Connection[Any], part: int, epoch: int, address: str) -> None:
        # Use `PostgresStore.open`.
        self.url = url
        self.part = part
        self.epoch = epoch
        self.address = address
        self._con: psycopg.Connection[Any] | None = con
        # The sessions of `write` (each opened by its first use): commits on the event loop, without blocking
        # it, up to WRITERS at once, so that PostgreSQL flushes the WAL of several at a time.
        self._acons: list[psycopg.AsyncConnection[Any] | None] = [None] * WRITERS
        self._in_flight: list[Batch] = []  # batches being written
        self._busy: set[int] = set()  # the ids they touch
        self._alone = False  # one of them must be alone
        self._low = part << MEMBER_SHIFT
        self._high = (part + 1) << MEMBER_SHIFT
        self._read_state(con)

    @property
    def where(self) -> str:
        """The database and part, for messages (the URL without its password)."""
        return f"{_redacted(self.url)} part {self.part}"

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, part: int, address: str) -> Self:
        """Connect, create or upgrade the tables, and take ``part`` for ``address`` (bumping its epoch).

        Raises `PartOwned` if a live server holds the part, `StoreError` if the
        database cannot be reached or was written by a newer dbqueue.
        """
        try:
            con = connect(url)
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(url)}: cannot connect: {exc}") from exc
        try:
            adopt(con, _redacted(url))
            epoch = parts.claim(con, part, address)
            return cls(url, con, part, epoch, address)
        except psycopg.Error as exc:
            con.close()
            raise StoreError(f"{_redacted(url)}: cannot open the store: {exc}") from exc
        except BaseException:
            con.close()
            raise

    @classmethod
    def take_orphan(cls, url: str, *, address: str, parts_wanted: Iterable[int] | None = None) -> Self | None:
        """For a standby: take the first part whose owner is gone, or return None if every part has one.

        Raises `StoreError` if the database cannot be reached.
        """
        try:
            con = connect(url)
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(url)}: cannot connect: {exc}") from exc
        try:
            adopt(con, _redacted(url))
            taken = parts.take_orphan(con, address, parts_wanted)
            if taken is None:
                con.close()
                return None
            part, epoch = taken
            return cls(url, con, part, epoch, address)
        except psycopg.Error as exc:
            con.close()
            raise StoreError(f"{_redacted(url)}: cannot look for a part to take: {exc}") from exc
        except BaseException:
            con.close()
            raise

    @classmethod
    def watch(cls, url: str) -> OrphanWatch:
        """For a standby: a session that watches for parts whose owner is gone (`OrphanWatch`).

        Raises `StoreError` if the database cannot be reached or was written by a newer dbqueue.
        """
        try:
            con = connect(url)
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(url)}: cannot connect: {exc}") from exc
        try:
            adopt(con, _redacted(url))
        except BaseException:
            con.close()
            raise
        return OrphanWatch(cls, url, con)

    def close(self) -> None:
        """Commit what is buffered and end the session (its part's lock goes with it). Closing twice is harmless.

        Raises `StoreError` if the final commit fails; the store is closed all the same.
        """
        con = self._con
        if con is None:
            return
        try:
            self.commit()
        finally:
            self._con = None
            con.close()
            self._drop_async()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def _read_state(self, con: psycopg.Connection[Any]) -> None:
        rows = con.execute(b"SELECT name, qid FROM dbqueue_queues WHERE part = %s", (self.part,)).fetchall()
        self._queues = QueueOps({bytes(name): qid for name, qid in rows})
        self._qids = self._queues.qids  # the same dict, read by every addition
        row = con.execute(
            b"SELECT max(seq), max(id) FROM dbqueue_messages WHERE id >= %s AND id < %s", (self._low, self._high)
        ).fetchone()
        max_seq, max_id = row if row else (None, None)
        self._seq = (max_seq or 0) + 1
        row = con.execute(b"SELECT next_id FROM dbqueue_parts WHERE part = %s", (self.part,)).fetchone()
        self._reserved = max(int(row[0]) if row else 0, (max_id or 0) + 1, self._low + 1)
        self._reserved_written = self._reserved
        self._clear_buffer()

    def _clear_buffer(self) -> None:
        self._adds: dict[int, _Row] = {}
        self._origins: dict[int, Origin] = {}  # id -> the origin of a pending addition that is a dead letter
        self._removes: list[int] = []
        self._deliveries: dict[int, int] = {}
        self._dues: dict[int, int] = {}
        self._queues.clear()

    def load(self) -> Snapshot:
        """Return the part's queues (in creation order) and messages (in the order added), as last committed.

        Raises `StoreError` if PostgreSQL fails.
        """
        con = self._connection()
        try:
            queues = con.execute(
                b"SELECT qid, name, capacity, max_deliveries, dead_letter, visibility_timeout_ms, annotations"
                b" FROM dbqueue_queues WHERE part = %s ORDER BY qid",
                (self.part,),
            ).fetchall()
            by_qid: dict[int, list[StoredMessage]] = {qid: [] for qid, *_ in queues}
            times: dict[int, list[int]] = {qid: [] for qid, *_ in queues}
            origins: dict[int, dict[int, Origin]] = {qid: {} for qid, *_ in queues}
            cur = con.cursor(binary=True)
            cur.execute(
                b"SELECT qid, id, data, deliveries, due_ms, enqueued_ms,"
                b" origin_queue, origin_id, origin_enqueued_ms, origin_deliveries"
                b" FROM dbqueue_messages WHERE id >= %s AND id < %s ORDER BY seq",
                (self._low, self._high),
            )
            for qid, id_, data, deliveries, due_ms, enqueued_ms, o_queue, o_id, o_enqueued, o_deliveries in cur:
                by_qid[qid].append((id_, bytes(data), deliveries, due_ms))
                times[qid].append(enqueued_ms)
                if o_queue is not None:
                    origins[qid][id_] = Origin(bytes(o_queue), o_id, o_enqueued, o_deliveries)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot read the store: {exc}") from exc
        except KeyError as exc:
            raise StoreError(f"{self.where}: a message refers to queue {exc}, which is not stored") from exc
        stored = [
            StoredQueue(
                name=bytes(name),
                capacity=capacity,
                max_deliveries=max_deliveries,
                dead_letter=None if dead_letter is None else bytes(dead_letter),
                messages=by_qid[qid],
                visibility_timeout_ms=visibility_timeout_ms,
                enqueued_ms=times[qid],
                origins=origins[qid],
                annotations=bytes(annotations),
            )
            for qid, name, capacity, max_deliveries, dead_letter, visibility_timeout_ms, annotations in queues
        ]
        return Snapshot(queues=stored, next_id=self._reserved)

    def discard(self) -> None:
        """Throw away every buffered change and read the bookkeeping back (reconnecting if need be).

        Raises `PartLost` if another server took the part meanwhile, `StoreError`
        if the database cannot be reached within `RECONNECT_SECONDS`.
        """
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                con = self._reconnected()
                self._read_state(con)
                return
            except PartLost:
                raise
            except (psycopg.Error, StoreError) as exc:
                self._drop_connection()
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.where}: cannot reach the database again: {exc}") from exc
                log.warning("%s: reconnecting: %s", self.where, exc)
                time.sleep(0.2)

    def reload(self) -> Snapshot:
        """`discard` the buffer and return the part as last committed (`load`); raises as they do."""
        self.discard()
        return self.load()

    def _reconnected(self) -> psycopg.Connection[Any]:
        # The session, checked: a broken one is replaced, and the part taken again on the new one
        # (the same epoch: `PartLost` if another server took the part).
        con = self._con
        if con is not None and not con.closed and not con.broken:
            try:
                con.execute(_FENCE, (self.part, self.epoch))
                return con
            except psycopg.Error as exc:
                if _fenced(exc):
                    raise PartLost(f"{self.where}: {exc}") from exc
        self._drop_connection()
        con = connect(self.url)
        try:
            parts.reclaim(con, self.part, self.epoch, self.where)
        except BaseException:
            con.close()
            raise
        self._con = con
        return con

    def _drop_connection(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(psycopg.Error):
                con.close()
        self._drop_async()

    def _drop_async(self) -> None:
        # The next `write` connects anew; the old session's socket is closed now (libpq's close does not wait).
        # Only idle, healthy ones are finished here: psycopg has closed a broken one already, and finishing
        # it again from outside its coroutines is how a libpq connection gets freed twice.
        acons, self._acons = self._acons, [None] * WRITERS
        for acon in acons:
            if acon is not None and not acon.closed and not acon.broken:
                with contextlib.suppress(psycopg.Error):
                    acon.pgconn.finish()

    # --- ownership and membership ----------------------------------------------------

    def members(self) -> list[str]:
        """Every part's owner's address, by part (the group as MEMBERS answers it). Raises `StoreError`."""
        try:
            return parts.members(self._connection())
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot read the members: {exc}") from exc

    def heartbeat(self) -> None:
        """Check, with a round trip, that the part is still ours and the database reachable.

        Raises `PartLost` if the part was taken over, `StoreError` if the database cannot be reached.
        """
        con = self._connection()
        try:
            con.execute(_FENCE, (self.part, self.epoch))
        except psycopg.Error as exc:
            if _fenced(exc):
                raise PartLost(f"{self.where}: {exc}") from exc
            raise StoreError(f"{self.where}: the database cannot be reached: {exc}") from exc

    def check(self) -> list[str]:
        """`heartbeat`, then `members`: what the server's periodic check asks, on a worker thread.

        Raises `PartLost` if the part was taken over, `StoreError` if the database cannot be reached.
        """
        self.heartbeat()
        return self.members()

    # --- room (the SQLite store's disk reserve; PostgreSQL manages its own) ------------

    def keep_room(self) -> None:
        """Nothing to keep: PostgreSQL manages its disk."""

    def release_room(self) -> None:
        """Nothing to give back."""

    def probe(self) -> None:
        """Whether the store can commit again: a fenced transaction that writes. Raises `StoreError` or `PartLost`."""
        con = self._reconnected_or_raise()
        try:
            with con.transaction():
                con.execute(_FENCE, (self.part, self.epoch))
                con.execute(b"UPDATE dbqueue_parts SET next_id = next_id WHERE part = %s", (self.part,))
        except psycopg.Error as exc:
            if _fenced(exc):
                raise PartLost(f"{self.where}: {exc}") from exc
            raise StoreError(f"{self.where}: a write fails: {exc}") from exc

    def _reconnected_or_raise(self) -> psycopg.Connection[Any]:
        try:
            return self._reconnected()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: the database cannot be reached: {exc}") from exc

    def reclaim(self, max_pages: int = 0) -> int:
        """Nothing to do: PostgreSQL's autovacuum gives space back (and the server's commits write the buffer).
        Returns 0."""
        return 0

    # --- buffered changes (the hot path: no database here) ------------------------------

    def create_queue(
        self,
        name: bytes,
        capacity: int = 0,
        max_deliveries: int = 0,
        dead_letter: bytes | None = None,
        visibility_timeout_ms: int = 0,
    ) -> None:
        """Record a new queue. Raises `ValueError` if the part already has a queue called ``name``."""
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
        self._drop_pending_adds(self._queues.delete(name))

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None:
        """Record that every message of a queue is gone except the ids in ``keep``. Raises `KeyError`."""
        qid, kept = self._queues.purge(name, keep)
        self._drop_pending_adds(qid, kept)

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
        """Record a message at the end of ``queue`` (see `core.journal.Journal`): a new one, one moved
        there (after `remove` of its id), or a dead letter (with its ``origin``). Raises `KeyError`."""
        seq = self._seq
        self._seq = seq + 1
        self._adds[id_] = (id_, self._qids[queue], seq, data, deliveries, due_ms, enqueued_ms or now_ms())
        if origin is not None:
            self._origins[id_] = origin
        elif self._origins:
            self._origins.pop(id_, None)

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes], enqueued_ms: int = 0) -> None:
        """`add` for several new messages at once, in order (no delay, no deliveries)."""
        qid = self._qids[queue]
        count = len(ids)
        if len(items) != count:
            raise ValueError(f"{count} ids for {len(items)} messages")
        seq = self._seq
        self._seq = seq + count
        # The rows built by zip and the dict filled by update: no bytecode per message on this hot path.
        rows = zip(
            ids, repeat(qid), range(seq, seq + count), items, repeat(0), repeat(0), repeat(enqueued_ms or now_ms())
        )
        self._adds.update(zip(ids, rows))

    def add_columns(self, queue: bytes, first_id: int, sizes: bytes, data: bytes, enqueued_ms: int = 0) -> None:
        """`add_many` for messages with consecutive ids from ``first_id``: big-endian u32 sizes, and payloads
        back to back."""
        lengths = struct.unpack(f">{len(sizes) // 4}I", sizes)
        ends = list(accumulate(lengths))
        items = list(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)))
        self.add_many(queue, range(first_id, first_id + len(items)), items, enqueued_ms)

    def remove(self, id_: int) -> None:
        """Record that a message is gone. Unknown ids are ignored at commit."""
        if self._adds.pop(id_, None) is None:
            self._removes.append(id_)
        elif self._origins:
            self._origins.pop(id_, None)

    def remove_many(self, ids: Sequence[int]) -> None:
        """`remove` for several ids."""
        adds = self._adds
        if not adds or adds.keys().isdisjoint(ids):
            self._removes += ids
            return
        for id_ in ids:
            self.remove(id_)

    def set_deliveries(self, id_: int, deliveries: int) -> None:
        """Record a message's delivery count."""
        row = self._adds.get(id_)
        if row is not None:
            self._adds[id_] = (*row[:4], deliveries, *row[5:])
        else:
            self._deliveries[id_] = deliveries

    def set_due(self, id_: int, due_ms: int) -> None:
        """Record a message's new due time (wall-clock ms; 0: deliverable now)."""
        row = self._adds.get(id_)
        if row is not None:
            self._adds[id_] = (*row[:5], due_ms, row[6])
        else:
            self._dues[id_] = due_ms

    def reserve_ids(self, upto: int) -> None:
        """Record that ids below ``upto`` may be handed out: `Snapshot.next_id` will never be lower."""
        if upto > self._reserved:
            self._reserved = upto

    def committed(self, id_: int) -> bool:
        """Whether message ``id_``, if stored, is in the database (its addition is neither buffered nor
        being written)."""
        if id_ in self._adds:
            return False
        return not self._in_flight or not any(id_ in batch.adds for batch in self._in_flight)

    def pending(self) -> bool:
        """Whether anything is buffered that `commit` would write."""
        return bool(
            self._adds
            or self._removes
            or self._queues.ops
            or self._deliveries
            or self._dues
            or self._reserved != self._reserved_written
        )

    # --- writing ---------------------------------------------------------------------

    def commit(self) -> None:
        """Write every change buffered since the last commit in one fenced transaction, in one round trip,
        on the store's own (blocking) session.

        Returns at once when nothing is buffered. Raises `PartLost` if the part
        was taken over (nothing written, ever again), `StoreError` if PostgreSQL
        fails: nothing of the batch is written and the buffer is kept. Never
        while a `write` is under way.
        """
        if not self.pending():
            return
        con = self._connection()
        statements = self._statements()
        try:
            if len(statements) == 1:  # the common commit: one statement is one transaction
                con.execute(*statements[0], prepare=True)
            else:
                with con.pipeline(), con.transaction():
                    for statement, params in statements:
                        con.execute(statement, params)
        except psycopg.Error as exc:
            if _fenced(exc):
                raise PartLost(f"{self.where}: {exc}") from exc
            raise StoreError(f"{self.where}: commit failed, nothing of the batch was written: {exc}") from exc
        self._clear_buffer()
        self._reserved_written = self._reserved

    def can_begin(self) -> bool:
        """Whether the buffer may be written now beside the batches under way: a free session, and no change
        that depends on theirs (the same message ids, or queue and parts changes, which go alone)."""
        if not self._in_flight:
            return True
        if (
            self._alone
            or len(self._in_flight) >= WRITERS
            or self._queues.ops
            or self._reserved != self._reserved_written
        ):
            return False
        busy = self._busy
        return (
            busy.isdisjoint(self._adds)
            and busy.isdisjoint(self._removes)
            and busy.isdisjoint(self._deliveries)
            and busy.isdisjoint(self._dues)
        )

    def begin(self) -> Batch:
        """Take everything buffered as a `Batch` for `write` (the buffer starts empty again). Only when
        `can_begin`. Until `finish`, the batch's additions count as not committed (`committed`)."""
        ids: set[int] = set()
        if WRITERS > 1:  # with one writer, `can_begin` never compares ids
            ids.update(self._adds, self._removes, self._deliveries, self._dues)
        alone = bool(self._queues.ops) or self._reserved != self._reserved_written
        batch = Batch(self._statements(), self._adds, ids, self._reserved, alone)
        used = {other.slot for other in self._in_flight}
        batch.slot = next(slot for slot in range(WRITERS) if slot not in used)
        self._in_flight.append(batch)
        self._busy |= ids
        self._alone = self._alone or alone
        self._clear_buffer()
        return batch

    async def write(self, batch: Batch) -> None:
        """Commit ``batch`` in one fenced transaction, in one round trip, without blocking the event loop.

        Raises `PartLost` if the part was taken over, `StoreError` if PostgreSQL
        fails (nothing of the batch is written: the caller reads the part back).
        """
        try:
            con = self._acons[batch.slot]
            if con is None or con.closed or con.broken:
                self._acons[batch.slot] = None
                con = self._acons[batch.slot] = await connect_async(self.url)
            statements = batch.statements
            if len(statements) == 1:  # the common commit: one statement is one transaction
                await con.execute(*statements[0], prepare=True)
            else:
                async with con.pipeline(), con.transaction():
                    for statement, params in statements:
                        await con.execute(statement, params)
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"{self.where}: the connection failed during a commit, which may or may not have been written: {exc}"
            ) from exc
        except psycopg.Error as exc:
            if _fenced(exc):
                raise PartLost(f"{self.where}: {exc}") from exc
            raise StoreError(f"{self.where}: commit failed, nothing of the batch was written: {exc}") from exc

    def finish(self, batch: Batch, written: bool) -> None:
        """The end of ``batch``'s `write`: its additions are committed (``written``), or gone with it."""
        self._in_flight.remove(batch)
        self._busy -= batch.ids
        self._alone = any(other.alone for other in self._in_flight)
        if written:
            self._reserved_written = max(self._reserved_written, batch.reserved)

    def _statements(self) -> list[tuple[bytes, Sequence[Any]]]:
        # The buffered changes as statements, in the order the module's docstring gives. Commonly one: the
        # fenced ``dbqueue_commit``, a transaction of its own. Queue operations and dead letters (rare) make it
        # a transaction of several: the fence, the queue operations, ``dbqueue_commit``, the dead letters.
        part = self.part
        reserve = self._reserved if self._reserved != self._reserved_written else None
        deliveries, dues, removes = self._deliveries, self._dues, self._removes
        adds = self._adds
        origins = self._origins
        rows = list(adds.values())
        if origins:
            rows = [row for row in rows if row[0] not in origins]
        if rows:
            ids, qids, seqs, datas, counts, due_ms, enqueued = zip(*rows, strict=True)
            added: tuple[Any, ...] = (
                pack_int8s(ids),
                pack_int4s(qids),
                pack_int8s(seqs),
                pack_byteas(datas),
                pack_int4s(counts),
                pack_int8s(due_ms),
                pack_int8s(enqueued),
            )
        else:
            added = (None,) * 7
        commit = (
            _COMMIT,
            (
                part,
                self.epoch,
                reserve,
                pack_int8s(list(deliveries)) if deliveries else None,
                pack_int4s(list(deliveries.values())) if deliveries else None,
                pack_int8s(list(dues)) if dues else None,
                pack_int8s(list(dues.values())) if dues else None,
                pack_int8s(removes) if removes else None,
                *added,
            ),
        )
        if not self._queues.ops and not origins:
            return [commit]
        statements: list[tuple[bytes, Sequence[Any]]] = [(_FENCE, (part, self.epoch))]
        for op in self._queues.ops:
            statements += self._queue_op(op)
        statements.append(commit)
        statements += [(_INSERT_ORIGIN, (*adds[id_], *origin)) for id_, origin in origins.items()]
        return statements

    def _queue_op(self, op: QueueOp) -> list[tuple[bytes, Sequence[Any]]]:
        # A queue's creation, change of settings, deletion or purge (`store.queue_ops`).
        if isinstance(op, Create):
            return [(_CREATE_QUEUE, (self.part, *op))]
        if isinstance(op, Alter):
            return [(_ALTER_QUEUE, (*op[1:], self.part, op.qid))]
        if isinstance(op, Delete):
            return [(_DELETE_MESSAGES_OF, (op.qid, self._low, self._high)), (_DELETE_QUEUE, (self.part, op.qid))]
        return [(_PURGE_MESSAGES_OF, (op.qid, self._low, self._high, sorted(op.kept)))]

    # --- internals -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._con is None:
            raise StoreError(f"{self.where}: the store is not connected")
        return self._con

    def _drop_pending_adds(self, qid: int, kept: frozenset[int] = frozenset()) -> None:
        adds = self._adds
        for id_ in [id_ for id_, row in adds.items() if row[1] == qid and id_ not in kept]:
            del adds[id_]
            self._origins.pop(id_, None)


class OrphanWatch:
    """A standby's session: which parts have had no owner for `ORPHAN_GRACE` seconds, and taking one.

    A part counts as orphaned only once no session has held its lock for the
    whole grace period, as seen by successive `poll` calls: an owner whose
    session dropped for a moment (a restart of PostgreSQL, a failover, a short
    network cut) gets its part back on a new session before a standby takes it.
    """

    def __init__(self, store_class: type[PostgresStore], url: str, con: psycopg.Connection[Any]) -> None:
        self._store_class = store_class
        self.url = url
        self._con: psycopg.Connection[Any] | None = con
        self._since: dict[int, float] = {}  # part -> when it was first seen without an owner (monotonic)

    def poll(self, address: str, now: float) -> PostgresStore | None:
        """Take a part orphaned for `ORPHAN_GRACE` seconds and return its store, or return None.

        The session is reopened if it broke. Raises `StoreError` if the database cannot be reached.
        """
        try:
            if self._con is None or self._con.closed or self._con.broken:
                self._con = connect(self.url)
            con = self._con
            found = set(parts.orphans(con))
            self._since = {part: self._since.get(part, now) for part in found}
            for part, since in sorted(self._since.items()):
                if now - since >= ORPHAN_GRACE:
                    epoch = parts.take(con, part, address)
                    if epoch is not None:
                        self._con = None  # the store owns the session now
                        return self._store_class(self.url, con, part, epoch, address)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"{_redacted(self.url)}: cannot look for a part to take: {exc}") from exc
        return None

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(psycopg.Error):
                con.close()


def _fenced(exc: psycopg.Error) -> bool:
    # Whether ``exc`` is ``dbqueue_fence``'s refusal (its own SQLSTATE, which psycopg maps to no subclass).
    return exc.sqlstate == FENCED_SQLSTATE


def _redacted(url: str) -> str:
    # A connection string without its password, for messages and logs.
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the database"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)


_journal: type[Journal] = PostgresStore  # checked by mypy: the store is what the queue logic writes to

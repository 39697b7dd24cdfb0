"""The store's file format: its tables, its version, and the upgrade of every older version.

Theory of operation
-------------------
The file carries ``PRAGMA application_id`` = `APPLICATION_ID` (so a stray
SQLite file is refused rather than adopted) and ``PRAGMA user_version`` =
`FORMAT_VERSION`. The rule for changing it:

* Bump `FORMAT_VERSION` for any change that a reader of the previous version
  would misread or silently ignore: a new, renamed or retyped column or table,
  a change in what a stored value means (units, encoding, ordering). Changes
  an old reader cannot notice (pragma tuning, an extra index) need no bump.
* With each bump, add an upgrade (turning a version N file into N+1, in
  place, inside the opening transaction) to `UPGRADES`, and a test that
  builds a version N file with raw SQL and loads it. Never edit or drop an
  existing upgrade: every old version stays readable, through the chain.
* A file whose version is above `FORMAT_VERSION` was written by a newer
  server: opening it raises `StoreError`; there is no downgrade.

Version 5 schema (version 4 had no ``annotations`` column, version 3 no
``enqueued_ms``, ``origin_*`` and ``visibility_timeout_ms`` columns, version 2
no ``crc`` columns, version 1 no ``packs`` and ``pack_gone``)::

    meta(key TEXT PRIMARY KEY, value INTEGER)   -- 'next_id': id high-water mark
    queues(qid INTEGER PRIMARY KEY, name BLOB UNIQUE, capacity, max_deliveries,
           dead_letter BLOB NULL,
           visibility_timeout_ms,               -- qid is creation order; visibility:
           annotations BLOB)                    -- ms as asked, 0 = the server's default;
                                                -- max_deliveries, dead_letter, visibility
                                                -- and annotations as last changed;
                                                -- annotations: the broker's opaque bytes
                                                -- for a layer above it (x'' = none)
    messages(id INTEGER PRIMARY KEY, qid, seq, data BLOB, deliveries,
             due_ms, crc, enqueued_ms,          -- due_ms: Unix ms, 0 = now;
             origin_queue BLOB NULL,            -- crc: checksums.row_crc(id, data);
             origin_id, origin_enqueued_ms,     -- enqueued_ms: first enqueue, Unix ms;
             origin_deliveries)                 -- origin_*: a dead letter's (NULL queue: none)
    packs(slot INTEGER PRIMARY KEY, first_id, qid, seq, count, sizes BLOB,
          data BLOB, crc, enqueued_ms)          -- ids first_id .. first_id + count - 1,
                                                -- never delivered, no due time; sizes:
                                                -- a u32 (big-endian) per payload;
                                                -- crc: checksums.pack_crc(first_id, sizes, data)
    pack_gone(slot INTEGER PRIMARY KEY, gone BLOB)
                                                -- bit i (little-endian bit order):
                                                -- member first_id + i is gone; every
                                                -- bit set: a free slot

A new store is laid out by running the version 1 schema and then every
upgrade in turn, so a new file and an upgraded one cannot differ.

Queues are referred to by a small integer *qid* (creation order) so a message
row does not repeat its queue's name. Message rows are keyed by their id (the
rowid, so a removal is one B-tree lookup) and carry a ``seq`` number given
when they are added (a pack has one, its members follow in id order, and an
extracted member keeps its pack's): the order of (``seq``, id) is the order
they were added in. There is no index besides the id: each one would cost
every add and remove.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError
from .checksums import pack_crc, row_crc

FORMAT_VERSION = 5
APPLICATION_ID = 0x64627175  # b"dbqu"

# 4 KiB pages: a batch of small messages dirties only a few of them, and larger pages write more WAL
# per small commit without making big commits faster. Fixed when the file is created.
PAGE_SIZE = 4096

SCHEMA_V1 = (
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

# Version 2: messages sent together are stored as one row (see `store.packs`).
PACK_TABLES = (
    (
        "CREATE TABLE packs (slot INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, qid INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, count INTEGER NOT NULL, sizes BLOB NOT NULL, data BLOB NOT NULL)"
    ),
    "CREATE TABLE pack_gone (slot INTEGER PRIMARY KEY, gone BLOB NOT NULL)",
)


def upgrade_v1(con: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the pack tables (empty)."""
    for statement in PACK_TABLES:
        con.execute(statement)


def upgrade_v2(con: sqlite3.Connection) -> None:
    """Version 2 -> 3: give every message row and pack row the checksum of what it holds.

    The checksums are computed from the bytes as they are: damage done before
    the upgrade cannot be told from data (SQLite's quick_check, run first,
    still finds damage to the file's structure).
    """
    con.create_function("dbqueue_row_crc", 2, row_crc, deterministic=True)
    con.create_function("dbqueue_pack_crc", 3, pack_crc, deterministic=True)
    con.execute("ALTER TABLE messages ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
    con.execute("ALTER TABLE packs ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
    con.execute("UPDATE messages SET crc = dbqueue_row_crc(id, data)")
    con.execute("UPDATE packs SET crc = dbqueue_pack_crc(first_id, sizes, data)")


def upgrade_v3(con: sqlite3.Connection) -> None:
    """Version 3 -> 4: enqueue times (every stored message gets the upgrade's time: the true one
    was not kept), dead letters' origins (none known) and queues' visibility timeouts (the
    server's default). The message and pack tables are rebuilt rather than altered, so that
    ``crc`` stays their last column: damage at the end of a row, where a file cut short loses
    bytes, still hits the bytes the checksum covers."""
    now = time.time_ns() // 1_000_000
    con.execute("ALTER TABLE queues ADD COLUMN visibility_timeout_ms INTEGER NOT NULL DEFAULT 0")
    con.execute(
        "CREATE TABLE messages_v4 (id INTEGER PRIMARY KEY, qid INTEGER NOT NULL, seq INTEGER NOT NULL,"
        " data BLOB NOT NULL, deliveries INTEGER NOT NULL, due_ms INTEGER NOT NULL,"
        " enqueued_ms INTEGER NOT NULL DEFAULT 0, origin_queue BLOB, origin_id INTEGER NOT NULL DEFAULT 0,"
        " origin_enqueued_ms INTEGER NOT NULL DEFAULT 0, origin_deliveries INTEGER NOT NULL DEFAULT 0,"
        " crc INTEGER NOT NULL DEFAULT 0)"
    )
    con.execute(
        "INSERT INTO messages_v4 (id, qid, seq, data, deliveries, due_ms, enqueued_ms, crc)"
        " SELECT id, qid, seq, data, deliveries, due_ms, ?, crc FROM messages",
        (now,),
    )
    con.execute(
        "CREATE TABLE packs_v4 (slot INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, qid INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, count INTEGER NOT NULL, sizes BLOB NOT NULL, data BLOB NOT NULL,"
        " enqueued_ms INTEGER NOT NULL DEFAULT 0, crc INTEGER NOT NULL DEFAULT 0)"
    )
    con.execute(
        "INSERT INTO packs_v4 (slot, first_id, qid, seq, count, sizes, data, enqueued_ms, crc)"
        " SELECT slot, first_id, qid, seq, count, sizes, data, ?, crc FROM packs",
        (now,),
    )
    for table in ("messages", "packs"):
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_v4 RENAME TO {table}")


def upgrade_v4(con: sqlite3.Connection) -> None:
    """Version 4 -> 5: queues' annotations (`core.broker.Broker.annotate`), none for every stored queue.
    A queue's settings were already columns of their own; from version 5 they may change after its
    creation (`core.journal.Journal.alter_queue`), which a version 4 reader would not know to expect."""
    con.execute("ALTER TABLE queues ADD COLUMN annotations BLOB NOT NULL DEFAULT x''")


# Version N -> N+1, run in place inside the opening transaction.
UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: upgrade_v1,
    2: upgrade_v2,
    3: upgrade_v3,
    4: upgrade_v4,
}


def create(con: sqlite3.Connection) -> None:
    """Lay out a new, empty store of the current version in the empty database behind ``con``."""
    # page_size and auto_vacuum only take effect before the first table exists.
    con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    con.execute("PRAGMA auto_vacuum = INCREMENTAL")
    con.execute("PRAGMA journal_mode = WAL").fetchall()
    con.execute("BEGIN")
    for statement in SCHEMA_V1:
        con.execute(statement)
    for step in range(1, FORMAT_VERSION):
        UPGRADES[step](con)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    con.execute("COMMIT")


def version_of(con: sqlite3.Connection, path: Path) -> int:
    """The format version of the dbqueue store behind ``con``.

    Raises `StoreError` naming ``path`` if the file is not a dbqueue store
    (another application's SQLite file, or not SQLite at all), was written by
    a newer dbqueue, or carries an invalid version.
    """
    try:
        version = pragma(con, "user_version")
        app_id = pragma(con, "application_id")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a readable dbqueue store ({exc})") from exc
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path}: not a dbqueue store (application_id {app_id:#x}, expected {APPLICATION_ID:#x})")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: written by a newer dbqueue (store format {version}; this one reads up to {FORMAT_VERSION}):"
            " run that version, there is no downgrade"
        )
    if version < 1:
        raise StoreError(f"{path}: invalid store format version {version}")
    return version


def structure_problems(con: sqlite3.Connection, limit: int = 5) -> list[str]:
    """What SQLite's ``quick_check`` finds wrong with the file's structure (at most ``limit``); empty if nothing."""
    try:
        problems = [str(row[0]) for row in con.execute(f"PRAGMA quick_check({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if problems == ["ok"] else problems


def adopt(con: sqlite3.Connection, path: Path) -> int:
    """Check the existing store behind ``con`` and upgrade it in place to `FORMAT_VERSION`; return the version found.

    Raises `StoreError` naming ``path`` for a file `version_of` refuses or one
    whose structure is corrupt. The upgrade runs in one transaction: a
    failure leaves the file at its old version.
    """
    version = version_of(con, path)
    problems = structure_problems(con)
    if problems:
        raise StoreError(f"{path}: the store is corrupt: " + "; ".join(problems))
    if version < FORMAT_VERSION:
        con.execute("BEGIN")
        try:
            for step in range(version, FORMAT_VERSION):
                UPGRADES[step](con)
            con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            con.execute("COMMIT")
        except BaseException:
            con.rollback()
            raise
    return version


def pragma(con: sqlite3.Connection, name: str) -> int:
    """The integer value of ``PRAGMA name``."""
    (value,) = con.execute(f"PRAGMA {name}").fetchone()
    return int(value)

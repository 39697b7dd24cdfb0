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
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError

FORMAT_VERSION = 2
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
SCHEMA = SCHEMA_V1 + PACK_TABLES


def upgrade_v1(con: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the pack tables (empty)."""
    for statement in PACK_TABLES:
        con.execute(statement)


# Version N -> N+1, run in place inside the opening transaction.
UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {1: upgrade_v1}


def create(con: sqlite3.Connection) -> None:
    """Lay out a new, empty store of the current version in the empty database behind ``con``."""
    # page_size and auto_vacuum only take effect before the first table exists.
    con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    con.execute("PRAGMA auto_vacuum = INCREMENTAL")
    con.execute("PRAGMA journal_mode = WAL").fetchall()
    con.execute("BEGIN")
    for statement in SCHEMA:
        con.execute(statement)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    con.execute("COMMIT")


def adopt(con: sqlite3.Connection, path: Path, version: int, app_id: int) -> None:
    """Refuse a foreign, newer or corrupt file with a `StoreError` naming ``path``; upgrade an older one in place."""
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
            UPGRADES[step](con)
        con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        con.execute("COMMIT")


def pragma(con: sqlite3.Connection, name: str) -> int:
    """The integer value of ``PRAGMA name``."""
    (value,) = con.execute(f"PRAGMA {name}").fetchone()
    return int(value)

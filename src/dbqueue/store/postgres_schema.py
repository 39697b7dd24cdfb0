"""The PostgreSQL store's tables, their version, and the upgrade of an older database.

Tables (every name starts with ``dbqueue_``, so the store can share a database):

* ``dbqueue_meta (key, value)``: ``schema_version``, the version of these tables;
* ``dbqueue_parts``: one row per member index of the group (a *part*): the
  fencing ``epoch`` its owner holds, the owner's ``address`` (what MEMBERS
  answers), when it was claimed, and ``next_id``, the ids reserved so far;
* ``dbqueue_queues (part, qid, ...)``: each part's queues, in creation order (``qid``), with their
  settings as last changed (`core.journal.Journal.alter_queue`) and their ``annotations``
  (`core.broker.Broker.annotate`: opaque bytes, empty for none);
* ``dbqueue_messages``: one row per stored message, with its first enqueue time
  and, for a dead letter, its origin (``origin_*``, NULL otherwise). The id's top byte is its
  part (`protocol.frames.MEMBER_SHIFT`), so a part's messages are a range of the
  primary key; ``seq`` is the order in which they were added.

Functions: ``dbqueue_fence`` (the fencing check every commit transaction
starts with) and ``dbqueue_commit`` (the common group commit as one statement).

Versions. `SCHEMA_VERSION` is bumped whenever a table changes in a way an
older server could not read, or a server needs a function an older database
lacks, and `UPGRADES` gains the statements that bring the previous version to
the new one. 1: the tables and ``dbqueue_fence``; 2: ``dbqueue_commit``; 3: queues'
``annotations`` (and their settings may change after creation). A server creates the tables in an empty
database, upgrades an older one in one transaction, and refuses one whose
version is newer than its own (`StoreError` naming both versions). Creation and
upgrade hold a transaction-level advisory lock, so members starting together
do it once.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import StoreError
from .postgres_parts import LOCK_CLASS

__all__ = ["FENCED_SQLSTATE", "SCHEMA_VERSION", "UPGRADES", "adopt", "LOCK_CLASS"]

SCHEMA_VERSION = 3
# The SQLSTATE of ``dbqueue_fence``'s refusal: the part's epoch moved on (`store.postgres` raises `PartLost`).
FENCED_SQLSTATE = "DQ001"

_SCHEMA_LOCK = -1

_CREATE = [
    """CREATE TABLE dbqueue_meta (key text PRIMARY KEY, value bigint NOT NULL)""",
    """CREATE TABLE dbqueue_parts (
        part int PRIMARY KEY,
        epoch bigint NOT NULL,
        address text NOT NULL,
        claimed_at timestamptz NOT NULL DEFAULT now(),
        next_id bigint NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE dbqueue_queues (
        part int NOT NULL,
        qid int NOT NULL,
        name bytea NOT NULL,
        capacity bigint NOT NULL,
        max_deliveries int NOT NULL,
        dead_letter bytea,
        visibility_timeout_ms bigint NOT NULL DEFAULT 0,
        annotations bytea NOT NULL DEFAULT '',
        PRIMARY KEY (part, qid)
    )""",
    """CREATE TABLE dbqueue_messages (
        id bigint PRIMARY KEY,
        qid int NOT NULL,
        seq bigint NOT NULL,
        data bytea NOT NULL,
        deliveries int NOT NULL DEFAULT 0,
        due_ms bigint NOT NULL DEFAULT 0,
        enqueued_ms bigint NOT NULL DEFAULT 0,
        origin_queue bytea,
        origin_id bigint,
        origin_enqueued_ms bigint,
        origin_deliveries int
    )""",
    # Payloads are stored as they come: compressing random-looking data costs CPU for nothing.
    """ALTER TABLE dbqueue_messages ALTER COLUMN data SET STORAGE EXTERNAL""",
    # The fence every commit transaction starts with: it raises (and so aborts the transaction) unless the
    # caller still holds the part's epoch. FOR SHARE makes a takeover's epoch bump wait for a commit under
    # way, and a commit that waited on a takeover sees the new epoch and fails.
    """CREATE FUNCTION dbqueue_fence(p int, e bigint) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM dbqueue_parts WHERE part = p AND epoch = e FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'dbqueue: part % is no longer ours (epoch % was taken over)', p, e
                USING ERRCODE = 'DQ001';
        END IF;
    END $$""",
]

# The common group commit as one statement (version 2): fenced, then the id high-water mark, delivery counts,
# due times, removals and additions, each a no-op when its argument is NULL. One statement in autocommit mode is
# one transaction, answered after it commits: no BEGIN and COMMIT to send, parse and run, and one plan cached
# per session for the lot. The arrays come in binary from `store.postgres` (``pack_*``).
_COMMIT_FUNCTION = """CREATE OR REPLACE FUNCTION dbqueue_commit(
        p int, e bigint, reserve bigint,
        delivery_ids int8[], delivery_counts int4[], due_ids int8[], due_times int8[], removed int8[],
        ids int8[], qids int4[], seqs int8[], datas bytea[], deliveries int4[], dues int8[], enqueued int8[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM dbqueue_fence(p, e);
        IF reserve IS NOT NULL THEN
            UPDATE dbqueue_parts SET next_id = reserve WHERE part = p AND next_id < reserve;
        END IF;
        IF delivery_ids IS NOT NULL THEN
            UPDATE dbqueue_messages m SET deliveries = u.v FROM unnest(delivery_ids, delivery_counts) AS u(id, v)
                WHERE m.id = u.id;
        END IF;
        IF due_ids IS NOT NULL THEN
            UPDATE dbqueue_messages m SET due_ms = u.v FROM unnest(due_ids, due_times) AS u(id, v) WHERE m.id = u.id;
        END IF;
        IF removed IS NOT NULL THEN
            DELETE FROM dbqueue_messages WHERE id = ANY(removed);
        END IF;
        IF ids IS NOT NULL THEN
            INSERT INTO dbqueue_messages (id, qid, seq, data, deliveries, due_ms, enqueued_ms)
                SELECT * FROM unnest(ids, qids, seqs, datas, deliveries, dues, enqueued);
        END IF;
    END $$"""
_CREATE.append(_COMMIT_FUNCTION)

# UPGRADES[v] brings a database at version v to v + 1.
UPGRADES: dict[int, list[str]] = {
    1: [_COMMIT_FUNCTION],
    # IF NOT EXISTS: a database whose version number was set back (by hand, or a test) still upgrades.
    2: ["ALTER TABLE dbqueue_queues ADD COLUMN IF NOT EXISTS annotations bytea NOT NULL DEFAULT ''"],
}


def adopt(con: psycopg.Connection[Any], where: str) -> None:
    """Make sure the database holds this version's tables: create them, upgrade older ones, refuse newer ones.

    ``con`` is in autocommit mode. Raises `StoreError` (naming ``where``) for a
    database written by a newer dbqueue, or if PostgreSQL fails.
    """
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _SCHEMA_LOCK))
        exists = con.execute("SELECT to_regclass('dbqueue_meta') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            for statement in _CREATE:
                con.execute(statement.encode())
            con.execute("INSERT INTO dbqueue_meta VALUES ('schema_version', %s)", (SCHEMA_VERSION,))
            return
        row = con.execute("SELECT value FROM dbqueue_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: the database holds dbqueue tables of schema version {version}, written by a newer"
                f" dbqueue; this one reads up to version {SCHEMA_VERSION}: upgrade dbqueue"
            )
        while version < SCHEMA_VERSION:
            if version not in UPGRADES:
                raise StoreError(f"{where}: no upgrade from schema version {version}")
            for statement in UPGRADES[version]:
                con.execute(statement.encode())
            version += 1
        con.execute("UPDATE dbqueue_meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION,))

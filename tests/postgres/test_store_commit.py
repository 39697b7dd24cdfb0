"""The PostgreSQL store's common commit: one ``dbqueue_commit`` statement with arrays packed in binary.

The packers (`store.postgres.pack_int8s`, ``pack_int4s``, ``pack_byteas``) are checked against PostgreSQL
itself, which reads them back as the values packed; a database of schema version 1 (before
``dbqueue_commit``) is upgraded at open and then commits; and a batch that needs more than the common
statement (a queue created, a dead letter with its origin) still commits as one transaction, fenced.
"""

from __future__ import annotations

import pg_fixtures
import psycopg
import pytest

from dbqueue.core.journal import Origin
from dbqueue.protocol.frames import MEMBER_SHIFT
from dbqueue.store.postgres import PartLost, PostgresStore, connect, pack_byteas, pack_int4s, pack_int8s
from dbqueue.store.postgres_schema import SCHEMA_VERSION

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url

INT8S = [[], [0], [1, -1, 2**63 - 1, -(2**63)], list(range(1000, 3000, 7))]
INT4S = [[], [0], [1, -1, 2**31 - 1, -(2**31)], list(range(-500, 500, 3))]
BYTEAS = [[], [b""], [b"a", b"", b"\x00\xff" * 300], [bytes([i % 256]) * i for i in range(200)]]


def test_packed_arrays_read_back_as_packed(pg_url: str) -> None:
    con = connect(pg_url)
    try:
        for values in INT8S:
            row = con.execute("SELECT %b::int8[]", (pack_int8s(values),)).fetchone()
            assert row is not None and row[0] == values
        for values in INT4S:
            row = con.execute("SELECT %b::int4[]", (pack_int4s(values),)).fetchone()
            assert row is not None and row[0] == values
        for blobs in BYTEAS:
            row = con.execute("SELECT %b::bytea[]", (pack_byteas(blobs),)).fetchone()
            assert row is not None and [bytes(value) for value in row[0]] == blobs
    finally:
        con.close()


def test_a_version_1_database_is_upgraded_and_commits(pg_url: str) -> None:
    assert SCHEMA_VERSION >= 2
    with PostgresStore.open(pg_url, part=0, address="a:1") as store:
        store.create_queue(b"q")
    with psycopg.connect(pg_url, autocommit=True) as con:  # as dbqueue of schema version 1 left it
        con.execute("DROP FUNCTION dbqueue_commit")
        con.execute("UPDATE dbqueue_meta SET value = 1 WHERE key = 'schema_version'")
    with PostgresStore.open(pg_url, part=0, address="a:1") as store:
        store.add(b"q", 1, b"one")
        store.commit()
        assert [message[1] for message in store.load().queues[0].messages] == [b"one"]
    with psycopg.connect(pg_url, autocommit=True) as con:
        row = con.execute("SELECT value FROM dbqueue_meta WHERE key = 'schema_version'").fetchone()
    assert row is not None and row[0] == SCHEMA_VERSION


def test_every_change_kind_in_one_commit_reads_back(pg_url: str) -> None:
    with PostgresStore.open(pg_url, part=0, address="a:1") as store:
        store.create_queue(b"q")
        store.create_queue(b"dead")
        store.add_many(b"q", [1, 2, 3, 4], [b"1", b"2", b"3", b"4"], enqueued_ms=1000)
        store.commit()
        # Deliveries, a due time, a removal, a move (remove + add of the same id), an addition and a dead
        # letter with its origin, all in one commit (queue operations and origins: the transaction of several).
        store.create_queue(b"later")
        store.set_deliveries(1, 2)
        store.set_due(2, 123456)
        store.remove(3)
        store.remove(4)
        store.add(b"q", 4, b"4", deliveries=1, enqueued_ms=1000)
        store.add(b"q", 5, b"5", enqueued_ms=2000)
        store.add(b"dead", 6, b"gone", enqueued_ms=3000, origin=Origin(b"q", 9, 900, 5))
        store.reserve_ids(100)
        store.commit()
        snapshot = store.load()
    queues = {queue.name: queue for queue in snapshot.queues}
    assert list(queues) == [b"q", b"dead", b"later"]
    assert queues[b"q"].messages == [(1, b"1", 2, 0), (2, b"2", 0, 123456), (4, b"4", 1, 0), (5, b"5", 0, 0)]
    assert queues[b"q"].enqueued_ms == [1000, 1000, 1000, 2000]
    assert queues[b"dead"].messages == [(6, b"gone", 0, 0)]
    assert queues[b"dead"].origins == {6: Origin(b"q", 9, 900, 5)}
    assert snapshot.next_id >= 100


@pytest.mark.parametrize("with_queue_op", [False, True])
def test_the_common_commit_is_fenced(pg_url: str, with_queue_op: bool) -> None:
    old = PostgresStore.open(pg_url, part=2, address="old:1")
    old.create_queue(b"q")
    old.commit()
    old._drop_connection()  # its session ends: the part's lock is free for a taker, as after a cut
    taker = PostgresStore.take_orphan(pg_url, address="new:1")
    assert taker is not None and taker.part == 2
    try:
        old._con = connect(pg_url)  # a session of the old owner's that still believes in its epoch
        if with_queue_op:
            old.create_queue(b"other")
        old.add(b"q", (2 << MEMBER_SHIFT) + 1, b"late")
        with pytest.raises(PartLost):
            old.commit()
        assert taker.load().queues[0].messages == []
    finally:
        taker.close()
        con, old._con = old._con, None
        if con is not None:
            con.close()

"""Store format 4: a version 3 store upgraded in place, and what protocol 3 stores (enqueue times, dead
letters' origins, queues' visibility timeouts, moves that keep ids) surviving a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dbqueue.core import Origin, now_ms
from dbqueue.store import Store
from dbqueue.store.checksums import pack_crc, row_crc
from dbqueue.store.files import DB_NAME
from dbqueue.store.lock import LOCK_NAME
from dbqueue.store.schema import APPLICATION_ID, FORMAT_VERSION, PACK_TABLES, PAGE_SIZE, SCHEMA_V1, pragma, upgrade_v2


def build_version_3_store(directory: Path) -> None:
    """A version 3 store as dbqueue 0.2 wrote it, by raw SQL: a row with a count and a due time, a pack."""
    directory.mkdir(exist_ok=True)
    con = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        for statement in (*SCHEMA_V1, *PACK_TABLES):
            con.execute(statement)
        upgrade_v2(con)
        con.execute("UPDATE meta SET value = 500 WHERE key = 'next_id'")
        con.execute("INSERT INTO queues VALUES (1, x'6a6f6273', 10, 3, x'64656164')")  # jobs -> dead
        con.execute("INSERT INTO queues VALUES (2, x'64656164', 0, 0, NULL)")
        con.execute("INSERT INTO messages VALUES (7, 1, 1, x'37', 2, 99, ?)", (row_crc(7, b"7"),))
        sizes = b"".join(len(b"%d" % i).to_bytes(4, "big") for i in (20, 21))
        con.execute(
            "INSERT INTO packs VALUES (1, 20, 2, 2, 2, ?, x'32303231', ?)", (sizes, pack_crc(20, sizes, b"2021"))
        )
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute("PRAGMA user_version = 3")
        con.execute("PRAGMA journal_mode = WAL").fetchall()
    finally:
        con.close()


def test_a_version_3_store_is_upgraded_in_place(tmp_path: Path) -> None:
    build_version_3_store(tmp_path)
    (tmp_path / LOCK_NAME).touch()
    before = now_ms()
    with Store.open(tmp_path) as store:
        assert FORMAT_VERSION == 5 and pragma(store._connection(), "user_version") == 5  # through version 4
        snapshot = store.load()
        jobs, dead = snapshot.queues
        assert (jobs.messages, dead.messages) == ([(7, b"7", 2, 99)], [(20, b"20", 0, 0), (21, b"21", 0, 0)])
        assert (jobs.visibility_timeout_ms, dead.visibility_timeout_ms) == (0, 0)  # the server's default
        assert all(before <= t <= now_ms() for t in (*jobs.enqueued_ms, *dead.enqueued_ms))  # the upgrade's time
        assert (jobs.origins, dead.origins) == ({}, {})
        # The upgraded store takes protocol 3's changes.
        store.add(b"dead", 501, b"x", deliveries=0, enqueued_ms=123, origin=Origin(b"jobs", 7, 100, 3))
        store.commit()
    with Store.open(tmp_path) as store:
        dead = store.load().queues[1]
        assert dead.messages[-1] == (501, b"x", 0, 0) and dead.enqueued_ms[-1] == 123
        assert dead.origins == {501: Origin(b"jobs", 7, 100, 3)}


def test_enqueue_times_origins_visibility_and_moves_survive_a_reopen(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.create_queue(b"jobs", 0, 2, b"dead", 250)
        store.create_queue(b"dead", visibility_timeout_ms=0xFFFFFFFF)
        store.add(b"jobs", 1, b"alone", enqueued_ms=1_000)
        store.add_many(b"jobs", [2, 3, 4], [b"a", b"b", b"c"], enqueued_ms=2_000)  # a pack
        store.add_columns(b"jobs", 5, b"\x00\x00\x00\x01\x00\x00\x00\x01", b"de", enqueued_ms=3_000)
        store.add(b"dead", 9, b"letter", enqueued_ms=4_000, origin=Origin(b"jobs", 8, 500, 2))
        store.commit()
        # A move, as the broker journals it: each id removed and added again, to the back of its new queue.
        for id_, data, enqueued_ms in ((3, b"b", 2_000), (9, b"letter", 4_000)):
            store.remove(id_)
            origin = Origin(b"jobs", 8, 500, 2) if id_ == 9 else None
            store.add(b"jobs" if id_ == 9 else b"dead", id_, data, deliveries=1, enqueued_ms=enqueued_ms, origin=origin)
        store.add(b"jobs", 10, b"stamped")  # no time given: the store's, the batch's
        stamped = now_ms()
        store.commit()
    with Store.open(tmp_path) as store:
        jobs, dead = store.load().queues
        assert (jobs.visibility_timeout_ms, dead.visibility_timeout_ms) == (250, 0xFFFFFFFF)
        assert [m[:3] for m in jobs.messages] == [
            (1, b"alone", 0),
            (2, b"a", 0),
            (4, b"c", 0),
            (5, b"d", 0),
            (6, b"e", 0),
            (9, b"letter", 1),
            (10, b"stamped", 0),
        ]
        assert jobs.enqueued_ms[:6] == [1_000, 2_000, 2_000, 3_000, 3_000, 4_000]
        assert abs(jobs.enqueued_ms[6] - stamped) < 5_000
        assert jobs.origins == {9: Origin(b"jobs", 8, 500, 2)}
        assert (dead.messages, dead.enqueued_ms, dead.origins) == ([(3, b"b", 1, 0)], [2_000], {})

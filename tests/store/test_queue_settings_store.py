"""Store format 5: a queue's settings changed while it lives and its annotations (`Journal.alter_queue`)
surviving a reopen, going with the queue, salvaged; a version 4 store upgraded in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dbqueue.core import Broker, Holding, Origin
from dbqueue.store import Store, StoreError, check
from dbqueue.store.checksums import pack_crc, row_crc
from dbqueue.store.files import DB_NAME
from dbqueue.store.lock import LOCK_NAME
from dbqueue.store.schema import APPLICATION_ID, FORMAT_VERSION, PAGE_SIZE, SCHEMA_V1, UPGRADES, pragma


def settings(store: Store) -> dict[bytes, tuple[int, int, bytes | None, int, bytes]]:
    """Queue name -> (capacity, max_deliveries, dead_letter, visibility_timeout_ms, annotations), as loaded."""
    return {
        q.name: (q.capacity, q.max_deliveries, q.dead_letter, q.visibility_timeout_ms, q.annotations)
        for q in store.load().queues
    }


def test_a_change_of_settings_and_annotations_survives_a_reopen(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.create_queue(b"dead")
        store.create_queue(b"work", capacity=10, visibility_timeout_ms=5_000)
        store.add(b"work", 1, b"kept")
        store.commit()
        store.alter_queue(b"work", 3, b"dead", 0xFFFFFFFF, b'{"DelaySeconds":"5"}')
        store.commit()
    with Store.open(tmp_path) as store:
        assert settings(store) == {
            b"dead": (0, 0, None, 0, b""),
            b"work": (10, 3, b"dead", 0xFFFFFFFF, b'{"DelaySeconds":"5"}'),  # the capacity stays as created
        }
        assert [m[:2] for m in store.load().queues[1].messages] == [(1, b"kept")]
        store.alter_queue(b"work", 0, None, 0, b"")  # taken away again
    with Store.open(tmp_path) as store:
        assert settings(store)[b"work"] == (10, 0, None, 0, b"")


def test_changes_in_one_batch_apply_in_call_order(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.create_queue(b"q")  # created and changed twice before a commit: the last change holds
        store.alter_queue(b"q", 1, None, 100, b"first")
        store.alter_queue(b"q", 2, None, 200, b"second")
        store.create_queue(b"gone")
        store.alter_queue(b"gone", 1, None, 0, b"never seen")
        store.delete_queue(b"gone")
        store.commit()
    with Store.open(tmp_path) as store:
        assert settings(store) == {b"q": (0, 2, None, 200, b"second")}


def test_a_deleted_queue_takes_its_settings_and_annotations_along_a_purged_one_keeps_them(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.create_queue(b"a")
        store.create_queue(b"b")
        store.alter_queue(b"a", 2, None, 0, b"of a")
        store.alter_queue(b"b", 3, None, 0, b"of b")
        store.add(b"b", 1, b"m")
        store.commit()
        store.delete_queue(b"a")
        store.purge(b"b")
        store.commit()
        store.create_queue(b"a")  # the same name again: a new queue
        store.commit()
    with Store.open(tmp_path) as store:
        assert settings(store) == {b"b": (0, 3, None, 0, b"of b"), b"a": (0, 0, None, 0, b"")}
        assert [q.messages for q in store.load().queues] == [[], []]


def test_a_failed_commit_keeps_the_change_for_the_next(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.create_queue(b"q")
        store.commit()
        store.alter_queue(b"q", 5, None, 0, b"retried")
        store.add(b"q", 7, b"m")
        store._adds[8] = store._adds[7]  # id 7's row twice: SQLite refuses the batch
        with pytest.raises(StoreError, match="commit failed"):
            store.commit()
        del store._adds[8]
        store.commit()
    with Store.open(tmp_path) as store:
        assert settings(store) == {b"q": (0, 5, None, 0, b"retried")}


def test_the_broker_changes_restored_after_a_restart(tmp_path: Path) -> None:
    # The broker journals its changes into a real store; a new broker restores them from it.
    broker = Broker()
    store = Store.open(tmp_path)
    broker.attach(store)
    broker.create_queue(b"dead")
    work = broker.create_queue(b"work")
    work.push(b"job")
    held = Holding()
    record = broker.deliver(work, 0, held, 0.0)
    assert record is not None
    broker.release(record.id, 0, 0.0, held)  # delivered once, before there is a limit
    broker.alter_queue(b"work", 3, b"dead", 12_000)
    broker.annotate(b"work", b'{"Policy":"x"}')
    store.commit()
    store.close()
    with Store.open(tmp_path) as store:
        restored = Broker()
        assert restored.restore(store.load(), 0.0) == 1
    queue = restored.queues[b"work"]
    assert (queue.max_deliveries, queue.dead_letter, queue.visibility_ms) == (3, b"dead", 12_000)
    assert restored.annotations == {b"work": b'{"Policy":"x"}'}
    again = restored.deliver(queue, 0, Holding(), 0.0)
    assert again is not None and again.deliveries == 2  # the count before the limit was given, kept
    # A queue deleted takes its annotations out of the store too.
    store = Store.open(tmp_path)
    restored.attach(store)
    restored.delete_queue(b"work")
    store.commit()
    store.close()
    with Store.open(tmp_path) as store:
        assert [q.name for q in store.load().queues] == [b"dead"]


def build_version_4_store(directory: Path) -> None:
    """A version 4 store as dbqueue 0.3 wrote it, by raw SQL: two queues with options, a row with a count,
    a due time, an enqueue time and an origin, and a pack."""
    directory.mkdir(exist_ok=True)
    con = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        for statement in SCHEMA_V1:
            con.execute(statement)
        for step in (1, 2, 3):
            UPGRADES[step](con)
        con.execute("UPDATE meta SET value = 500 WHERE key = 'next_id'")
        con.execute("INSERT INTO queues VALUES (1, x'6a6f6273', 10, 3, x'64656164', 2500)")  # jobs -> dead
        con.execute("INSERT INTO queues VALUES (2, x'64656164', 0, 0, NULL, 0)")
        con.execute(
            "INSERT INTO messages (id, qid, seq, data, deliveries, due_ms, enqueued_ms, origin_queue, origin_id,"
            " origin_enqueued_ms, origin_deliveries, crc) VALUES (7, 1, 1, x'37', 2, 99, 1000, x'6f74686572', 3,"
            " 900, 4, ?)",
            (row_crc(7, b"7"),),
        )
        sizes = b"".join(len(b"%d" % i).to_bytes(4, "big") for i in (20, 21))
        con.execute(
            "INSERT INTO packs (slot, first_id, qid, seq, count, sizes, data, enqueued_ms, crc)"
            " VALUES (1, 20, 2, 2, 2, ?, x'32303231', 2000, ?)",
            (sizes, pack_crc(20, sizes, b"2021")),
        )
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute("PRAGMA user_version = 4")
        con.execute("PRAGMA journal_mode = WAL").fetchall()
    finally:
        con.close()


def test_a_version_4_store_is_upgraded_in_place_keeping_every_message(tmp_path: Path) -> None:
    build_version_4_store(tmp_path)
    (tmp_path / LOCK_NAME).touch()  # as the previous dbqueue left it
    with Store.open(tmp_path) as store:
        assert FORMAT_VERSION == 5 and pragma(store._connection(), "user_version") == 5
        snapshot = store.load()
        assert snapshot.next_id == 500
        jobs, dead = snapshot.queues
        assert (jobs.messages, dead.messages) == ([(7, b"7", 2, 99)], [(20, b"20", 0, 0), (21, b"21", 0, 0)])
        assert (jobs.enqueued_ms, dead.enqueued_ms) == ([1000], [2000, 2000])
        assert jobs.origins == {7: Origin(b"other", 3, 900, 4)}
        assert settings(store) == {b"jobs": (10, 3, b"dead", 2500, b""), b"dead": (0, 0, None, 0, b"")}
        store.alter_queue(b"jobs", 1, None, 0, b"new")  # the upgraded store takes the new change
    with Store.open(tmp_path) as store:
        assert settings(store)[b"jobs"] == (10, 1, None, 0, b"new")
        assert [q.messages for q in store.load().queues][0] == [(7, b"7", 2, 99)]


def test_check_reads_a_version_4_store_and_salvage_keeps_annotations(tmp_path: Path) -> None:
    build_version_4_store(tmp_path / "old")
    (tmp_path / "old" / LOCK_NAME).touch()
    report = check.check(tmp_path / "old")
    assert (report.ok, report.format_version, report.queues, report.messages) == (True, 4, 2, 3)
    with Store.open(tmp_path / "annotated") as store:
        store.create_queue(b"q", visibility_timeout_ms=300)
        store.alter_queue(b"q", 0, None, 300, b"attrs")
        store.add(b"q", 1, b"m")
    report = check.salvage(tmp_path / "annotated", tmp_path / "copy")
    assert (report.queues, report.messages) == (1, 1)
    with Store.open(tmp_path / "copy") as store:
        assert settings(store) == {b"q": (0, 0, None, 300, b"attrs")}

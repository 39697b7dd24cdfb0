"""The durable store: round trips through close and reopen, the buffer's cancellation rules,
refusals (newer format, garbage, a second server), bounded disk use, and a SIGKILL crash test.

Everything runs in ``tmp_path``; a hypothesis state machine checks every
sequence of buffered calls and commits against a plain model of the state.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dbqueue.core import Snapshot, now_ms
from dbqueue.errors import DbQueueError
from dbqueue.store import DB_NAME, FORMAT_VERSION, LOCK_NAME, Store, StoreError, packs, room, schema
from dbqueue.store import sqlite as storage
from dbqueue.store.queue_ops import Create


def contents(snapshot: Snapshot) -> dict[bytes, list[int]]:
    """Queue name -> message ids, in order."""
    return {q.name: [m[0] for m in q.messages] for q in snapshot.queues}


def reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.directory)


def disk_usage(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith(DB_NAME))


# --- round trips ----------------------------------------------------------------------


def test_round_trip_of_queues_messages_and_order(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "new" / "dir")  # creates missing directories
    store.create_queue(b"jobs", capacity=10, max_deliveries=3, dead_letter=b"dead")
    store.create_queue(b"dead")
    store.create_queue(b"\x00\xffbinary")
    due = now_ms() + 60_000
    store.add(b"jobs", 70000, b"first")
    store.add(b"dead", 5, b"early id, added second")
    store.add(b"jobs", 3, b"low id, added third", due_ms=due)
    store.add(b"\x00\xffbinary", 9, b"")
    store.reserve_ids(1 << 17)
    store.commit()
    store.add(b"jobs", 70001, b"x" * 100_000)
    store.set_deliveries(70000, 2)
    store.commit()
    # A message moved to the dead-letter queue keeps its id and goes to the end there.
    store.remove(70000)
    store.add(b"dead", 70000, b"first", deliveries=3)
    store.commit()

    store = reopen(store)
    snapshot = store.load()
    assert [(q.name, q.capacity, q.max_deliveries, q.dead_letter) for q in snapshot.queues] == [
        (b"jobs", 10, 3, b"dead"),
        (b"dead", 0, 0, None),
        (b"\x00\xffbinary", 0, 0, None),
    ]
    jobs, dead, binary = snapshot.queues
    assert jobs.messages == [(3, b"low id, added third", 0, due), (70001, b"x" * 100_000, 0, 0)]
    assert dead.messages == [(5, b"early id, added second", 0, 0), (70000, b"first", 3, 0)]
    assert binary.messages == [(9, b"", 0, 0)]
    assert snapshot.next_id == 1 << 17

    # The store keeps working after a reopen: new queues and messages sort after the old ones.
    store.create_queue(b"later")
    store.add(b"jobs", 2, b"newest")
    store.add(b"later", 1, b"one")
    store = reopen(store)
    assert contents(store.load()) == {
        b"jobs": [3, 70001, 2],
        b"dead": [5, 70000],
        b"\x00\xffbinary": [9],
        b"later": [1],
    }
    store.close()


def rows(store: Store, table: str) -> int:
    (count,) = store._connection().execute(f"SELECT count(*) FROM {table}").fetchone()
    return count


def test_messages_sent_together_are_one_row_until_all_are_gone_then_a_free_slot(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add_many(b"q", [10, 11, 12, 13], [b"a", b"bb", b"", b"dddd"])
    store.commit()
    assert (rows(store, "packs"), rows(store, "messages")) == (1, 0)
    store.remove_many([11, 12])  # part of the pack: a bitmap row, the pack row stays
    store.commit()
    assert (rows(store, "packs"), rows(store, "pack_gone")) == (1, 1)
    store = reopen(store)
    assert store.load().queues[0].messages == [(10, b"a", 0, 0), (13, b"dddd", 0, 0)]
    store.remove_many([10, 13])  # the rest (known after a reopen too): the row is a free slot now
    store.commit()
    assert (rows(store, "packs"), rows(store, "pack_gone"), rows(store, "messages")) == (1, 1, 0)
    store = reopen(store)
    assert store.load().queues[0].messages == []
    store.add_many(b"q", [20, 21, 22, 23], [b"e", b"ff", b"", b"hhhh"])  # same shape: takes the slot over
    store.add_many(b"q", [24, 25], [b"i", b"j"])  # another shape: a row of its own
    store.commit()
    assert (rows(store, "packs"), rows(store, "pack_gone")) == (2, 0)
    store = reopen(store)
    assert contents(store.load()) == {b"q": [20, 21, 22, 23, 24, 25]}
    store.close()


def test_a_pack_member_with_a_count_or_due_time_gets_a_row_of_its_own(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.create_queue(b"dead")
    store.add(b"q", 1, b"before")
    store.add_many(b"q", [2, 3, 4, 5], [b"two", b"three", b"four", b"five"])
    store.set_deliveries(5, 1)  # not written yet: taken from the buffered pack
    store.commit()
    store.set_deliveries(3, 2)  # written: copied by SQL
    store.set_due(3, 1234)
    store.remove(4)
    store.add(b"dead", 4, b"four", deliveries=3)  # moved with its id
    store.add(b"q", 6, b"after")
    store.commit()
    assert (rows(store, "packs"), rows(store, "messages")) == (1, 5)
    store = reopen(store)
    q, dead = store.load().queues
    assert q.messages == [
        (1, b"before", 0, 0),
        (2, b"two", 0, 0),
        (3, b"three", 2, 1234),
        (5, b"five", 1, 0),
        (6, b"after", 0, 0),
    ]
    assert dead.messages == [(4, b"four", 3, 0)]
    store.remove(2)  # the pack's last member: its row is a free slot, the extracted ones stay
    store.commit()
    store = reopen(store)
    assert contents(store.load()) == {b"q": [1, 3, 5, 6], b"dead": [4]}
    store.close()


def test_purge_and_delete_reach_packs(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    for name in (b"a", b"b"):
        store.create_queue(name)
    store.add_many(b"a", [1, 2, 3], [b"1", b"2", b"3"])
    store.add_many(b"b", [4, 5, 6], [b"4", b"5", b"6"])
    store.commit()
    store.remove(1)
    store.commit()
    store.purge(b"a", keep=[3])  # 3 is in flight: it survives as a row of its own
    store.delete_queue(b"b")
    store.commit()
    assert (rows(store, "packs"), rows(store, "pack_gone"), rows(store, "messages")) == (0, 0, 1)
    store = reopen(store)
    assert [(q.name, q.messages) for q in store.load().queues] == [(b"a", [(3, b"3", 0, 0)])]
    store.close()


def test_sparse_packs_are_compacted_by_reclaim(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add_many(b"q", range(1, 101), [bytes(1000)] * 100)
    store.add_many(b"q", range(101, 201), [bytes(1000)] * 100)
    store.commit()
    store.remove_many(range(1, 99))  # two of 100 left: the row holds 50x their bytes
    store.remove_many(range(101, 141))  # 60 of 100 left: kept as it is
    store.reclaim()  # a first round only notes them: a pack is often partly gone for a moment
    assert rows(store, "packs") == 2
    store.reclaim()
    assert rows(store, "messages") == 2  # the sparse pack's two, in rows of their own; its row is a free slot
    store = reopen(store)
    assert contents(store.load()) == {b"q": [99, 100, *range(141, 201)]}
    store.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        for statement in schema.SCHEMA_V1:
            con.execute(statement)
        con.execute("INSERT INTO queues VALUES (1, x'6a6f6273', 0, 0, NULL)")
        con.execute("INSERT INTO messages VALUES (7, 1, 1, x'6869', 0, 0)")
        con.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        con.execute("PRAGMA user_version = 1")
    con.close()
    store = Store.open(tmp_path)
    assert schema.pragma(store._connection(), "user_version") == FORMAT_VERSION
    assert [(q.name, q.messages) for q in store.load().queues] == [(b"jobs", [(7, b"hi", 0, 0)])]
    store.add_many(b"jobs", [8, 9], [b"x", b"y"])
    store = reopen(store)
    assert contents(store.load()) == {b"jobs": [7, 8, 9]}
    store.close()


def test_empty_store(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert not store.pending()
        store.commit()  # nothing to do
        assert store.load() == Snapshot(queues=[], next_id=1)
    with Store.open(tmp_path) as store:
        assert store.load() == Snapshot(queues=[], next_id=1)


def test_due_times_and_delivery_counts_survive(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add(b"q", 1, b"a", due_ms=111)
    store.add(b"q", 2, b"b")
    store.set_due(2, 222)  # folded into the pending add
    store.set_deliveries(2, 4)
    store.commit()
    store.set_due(1, 0)  # an update of a stored row
    store.set_deliveries(1, 7)
    store.set_due(2, 333)
    store = reopen(store)
    assert store.load().queues[0].messages == [(1, b"a", 7, 0), (2, b"b", 4, 333)]
    store.close()


def test_wall_clock_milliseconds() -> None:
    assert abs(now_ms() - time.time() * 1000) < 1000


# --- the buffer -----------------------------------------------------------------------


def test_add_and_remove_in_one_batch_leaves_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.commit()
    for id_ in range(1, 1001):
        store.add(b"q", id_, b"m")
        store.set_deliveries(id_, 1)
        store.remove(id_)
    assert not store.pending()  # cancelled in memory: SQLite is not even asked
    store.add(b"q", 1001, b"kept")
    assert store.pending()
    store.commit()
    assert not store.pending()
    store = reopen(store)
    assert contents(store.load()) == {b"q": [1001]}
    store.close()


def test_move_within_one_batch(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.create_queue(b"dlq")
    store.add(b"q", 1, b"stored")
    store.commit()
    # A stored message and a pending one both move to the dead-letter queue.
    store.add(b"q", 2, b"pending")
    store.set_deliveries(1, 5)
    store.remove(1)
    store.add(b"dlq", 1, b"stored", deliveries=5)
    store.remove(2)
    store.add(b"dlq", 2, b"pending", deliveries=1)
    store = reopen(store)
    assert [q.messages for q in store.load().queues] == [[], [(1, b"stored", 5, 0), (2, b"pending", 1, 0)]]
    store.close()


def test_delete_queue_removes_its_messages(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"gone")
    store.create_queue(b"other")
    store.add(b"gone", 1, b"stored")
    store.add(b"other", 2, b"stays")
    store.commit()
    store.add(b"gone", 3, b"pending")
    store.delete_queue(b"gone")
    store.create_queue(b"gone", capacity=5)  # a new queue of the same name, in the same batch
    store.add(b"gone", 4, b"new")
    store.commit()
    with pytest.raises(KeyError):
        store.add(b"nope", 5, b"")
    with pytest.raises(ValueError):
        store.create_queue(b"other")
    store = reopen(store)
    snapshot = store.load()
    assert contents(snapshot) == {b"other": [2], b"gone": [4]}
    assert snapshot.queues[1].capacity == 5
    store.delete_queue(b"gone")
    store = reopen(store)
    assert contents(store.load()) == {b"other": [2]}
    (rows,) = store._con.execute("SELECT count(*) FROM messages").fetchone()  # type: ignore[union-attr]
    assert rows == 1
    store.close()


def test_purge(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.create_queue(b"other")
    store.add(b"q", 1, b"stored")
    store.add(b"other", 2, b"stays")
    store.commit()
    store.add(b"q", 3, b"pending")
    store.purge(b"q")
    store.add(b"q", 4, b"after the purge")
    store = reopen(store)
    assert contents(store.load()) == {b"q": [4], b"other": [2]}
    # Keeping some (those in flight): stored and pending ones alike, in their order.
    for id_ in range(5, 10):
        store.add(b"q", id_, b"stored")
    store.commit()
    for id_ in range(10, 15):
        store.add(b"q", id_, b"pending")
    store.purge(b"q", keep=[4, 6, 8, 11, 13, 2])  # 2 is another queue's: untouched either way
    store.add(b"q", 15, b"after the purge")
    store = reopen(store)
    assert contents(store.load()) == {b"q": [4, 6, 8, 11, 13, 15], b"other": [2]}
    store.purge(b"q", keep=[15])
    store.purge(b"q", keep=[])
    store = reopen(store)
    assert contents(store.load()) == {b"q": [], b"other": [2]}
    store.close()


def test_reserve_ids_survives_reopen(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.reserve_ids(65537)
    store.add(b"q", 1, b"a")
    store.commit()
    store.remove(1)
    store.reserve_ids(1000)  # lower than before: ignored
    store = reopen(store)
    assert store.load().next_id == 65537  # although every message is gone
    store.reserve_ids(131073)
    store = reopen(store)
    assert store.load().next_id == 131073
    # Defensive: a stored id above the reservation still moves next_id past it.
    store.add(b"q", 200_000, b"unreserved")
    store = reopen(store)
    assert store.load().next_id == 200_001
    store.close()


def test_failed_commit_writes_nothing_and_names_the_file(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add(b"q", 1, b"a")
    store.commit()
    store.add(b"q", 2, b"b")
    store.add(b"q", 1, b"a again")  # misuse: id 1 is stored
    with pytest.raises(StoreError, match=str(tmp_path / DB_NAME)):
        store.commit()
    assert store.pending()  # kept for a retry
    store._adds.clear()  # drop the bad batch, as a dying server would
    store.close()
    with Store.open(tmp_path) as store:
        assert contents(store.load()) == {b"q": [1]}


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.load()


def test_sqlite_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(tmp_path, sync="sometimes")
    for sync, level in (("os", 1), ("disk", 2)):
        with Store.open(tmp_path, sync=sync) as store:
            con = store._con
            assert con is not None

            def pragma(name: str, con: sqlite3.Connection = con) -> object:
                return con.execute(f"PRAGMA {name}").fetchone()[0]

            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == level
            assert pragma("auto_vacuum") == 2  # incremental
            assert pragma("page_size") == schema.PAGE_SIZE
            assert pragma("user_version") == FORMAT_VERSION
            assert pragma("application_id") == schema.APPLICATION_ID
    assert not (tmp_path / f"{DB_NAME}-shm").exists()  # exclusive locking: the WAL index is in memory


# --- refusals -------------------------------------------------------------------------


def test_store_error_is_a_dbqueue_error() -> None:
    assert issubclass(StoreError, DbQueueError)


def test_every_old_format_has_an_upgrade() -> None:
    assert sorted(schema.UPGRADES) == list(range(1, FORMAT_VERSION))


def test_newer_format_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer") as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value)
    # The failed open let go of the lock.
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    con.close()
    Store.open(tmp_path).close()


@pytest.mark.parametrize(
    "garbage", [b"this is not a database, just some text\n" * 200, os.urandom(8192)], ids=["text", "random"]
)
def test_garbage_file_is_refused(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / DB_NAME).write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value)
    assert (tmp_path / DB_NAME).read_bytes() == garbage  # untouched


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    con.close()
    with pytest.raises(StoreError, match="not a dbqueue store") as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value)


def test_corrupt_store_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    for id_ in range(1, 3001):
        store.add(b"q", id_, b"%d" % id_ * 20)
    store.close()
    path = tmp_path / DB_NAME
    raw = bytearray(path.read_bytes())
    assert len(raw) > 20 * schema.PAGE_SIZE
    # Scribble over the middle of the table's pages (past page 1, which holds the schema).
    for offset in range(10 * schema.PAGE_SIZE, 14 * schema.PAGE_SIZE, 16):
        raw[offset : offset + 8] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupt") as info:
        Store.open(tmp_path)
    assert str(path) in str(info.value)


def test_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    # flock locks belong to an open file description, so a second open() conflicts
    # even inside one process.
    store = Store.open(tmp_path)
    with pytest.raises(StoreError, match="in use") as info:
        Store.open(tmp_path)
    assert str(tmp_path / LOCK_NAME) in str(info.value)
    assert f"pid {os.getpid()}" in str(info.value)
    store.close()
    Store.open(tmp_path).close()  # released on close


def test_second_open_in_another_process_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try_open = [sys.executable, "-c", _TRY_OPEN, str(tmp_path)]
    child = subprocess.run(try_open, check=False, capture_output=True, text=True, timeout=30)
    assert child.returncode == 3, child.stderr
    assert "in use by another dbqueue server" in child.stdout and str(tmp_path) in child.stdout
    store.close()
    child = subprocess.run(try_open, check=False, capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stdout + child.stderr


_TRY_OPEN = textwrap.dedent(
    """
    import sys
    from dbqueue.store.sqlite import Store, StoreError
    try:
        Store.open(sys.argv[1]).close()
    except StoreError as exc:
        print(exc)
        sys.exit(3)
    """
)


# --- space ----------------------------------------------------------------------------


def test_disk_use_stays_bounded_under_churn(tmp_path: Path) -> None:
    # 200k add/remove cycles over 10k stored messages, each removal a random one of the
    # oldest 1000 (consumers confirm roughly in order), 250 per commit, with reclaim()
    # every 40 commits as a server timer would.
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    data = b"x" * 128
    live = 10_000
    live_bytes = live * len(data)
    floor = 3 << 19  # FREE_PAGES_KEPT (1 MiB), the schema, pointer maps
    wal_bound = storage.WAL_AUTOCHECKPOINT_PAGES * (schema.PAGE_SIZE + 24) + (1 << 20)
    rng = random.Random(7)
    stored = deque(range(1, live + 1))
    for id_ in stored:
        store.add(b"q", id_, data)
    store.commit()
    next_id = live + 1
    worst = 0
    for round_ in range(200_000 // 250):
        for _ in range(250):
            store.add(b"q", next_id, data)
            stored.append(next_id)
            next_id += 1
            victim = rng.randrange(1000)
            store.remove(stored[victim])
            del stored[victim]
        store.commit()
        worst = max(worst, disk_usage(tmp_path))
        if round_ % 40 == 39:
            store.reclaim()
            assert disk_usage(tmp_path) < 2 * live_bytes + floor
    assert worst < 2 * live_bytes + floor + wal_bound  # between reclaims, SQLite's own checkpoints bound the WAL
    assert sorted(m[0] for m in store.load().queues[0].messages) == sorted(stored)

    # A peak, then a drain: reclaim hands the space back while the store stays open.
    peak = 30_000
    for id_ in range(next_id, next_id + peak):
        store.add(b"q", id_, data)
        stored.append(id_)
    store.commit()
    store.reclaim()
    high = disk_usage(tmp_path)
    assert high > (live + peak) * len(data)
    for id_ in stored:
        store.remove(id_)
    store.commit()
    assert store.reclaim(max_pages=512) == 512  # a whole step per call, not one page
    assert disk_usage(tmp_path) <= high - 512 * schema.PAGE_SIZE
    while store.reclaim():
        pass
    assert disk_usage(tmp_path) < floor < high
    store.close()


def test_disk_use_stays_bounded_when_packs_are_confirmed_piecemeal(tmp_path: Path) -> None:
    # Packs of 32, confirmed in random pieces across commits (reads that do not line up with
    # sends), each leaving one message behind for much longer (a slow consumer's): without
    # compaction the store would keep every pack for its straggler, 32 times the live bytes.
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    data = b"x" * 128
    bound = (3 << 19) + packs.FREE_SLOT_BYTES + storage.WAL_AUTOCHECKPOINT_PAGES * (schema.PAGE_SIZE + 24)
    rng = random.Random(11)
    stored: deque[int] = deque()  # confirmed in order, a few at a time
    stragglers: deque[int] = deque()
    next_id = 1
    for round_ in range(4000):
        ids = list(range(next_id, next_id + 32))
        next_id += 32
        store.add_many(b"q", ids, [data] * 32)
        stragglers.append(ids[0])
        stored.extend(ids[1:])
        while len(stored) > 1000:
            store.remove_many([stored.popleft() for _ in range(min(len(stored), rng.randint(1, 20)))])
        while len(stragglers) > 3000:
            store.remove(stragglers.popleft())
        store.commit()
        if round_ % 50 == 49:
            store.reclaim()
            assert disk_usage(tmp_path) < 2 * (len(stored) + len(stragglers)) * len(data) + bound
    assert sorted(m[0] for m in store.load().queues[0].messages) == sorted([*stored, *stragglers])
    store = reopen(store)
    assert sorted(m[0] for m in store.load().queues[0].messages) == sorted([*stored, *stragglers])
    store.close()


# --- crashes --------------------------------------------------------------------------

# Adds batches of 50 messages; removes the ids divisible by 3 of the previous batch
# in the next one; prints the last id of each batch once its commit returned.
_CRASHER = textwrap.dedent(
    """
    import sys
    from dbqueue.store.sqlite import Store
    store = Store.open(sys.argv[1])
    store.create_queue(b"q")
    store.commit()
    print("ready", flush=True)
    next_id, previous = 1, []
    while True:
        batch = list(range(next_id, next_id + 50))
        next_id += 50
        for id_ in batch:
            store.add(b"q", id_, b"%d" % id_ * 16)
        for id_ in previous:
            if id_ % 3 == 0:
                store.remove(id_)
        store.commit()
        print(batch[-1], flush=True)
        previous = batch
    """
)


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_loses_no_committed_message(tmp_path: Path, attempt: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    time.sleep(random.uniform(0.05, 0.4))
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    printed = [int(line) for line in out.split(b"\n")[:-1]]  # a torn last line has no newline
    assert printed, "the child committed nothing before the kill"
    acknowledged = printed[-1]

    with Store.open(tmp_path) as store:
        [queue] = store.load().queues
    ids = [m[0] for m in queue.messages]
    assert ids == sorted(ids)
    last = ids[-1]
    # Every acknowledged batch is there; at most one more (committed, not yet printed), whole.
    assert last in (acknowledged, acknowledged + 50)
    expected = [i for i in range(1, last + 1) if i % 3 or i > last - 50]
    assert ids == expected
    assert all(m[1] == b"%d" % m[0] * 16 for m in queue.messages)


# --- the buffer against a model -------------------------------------------------------

NAMES = [b"a", b"b", b"c"]


class StoreModel(RuleBasedStateMachine):
    """Every call applied at once to a plain model; `load` after a reopen must match its last commit."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="dbqueue-store-"))
        self.store = Store.open(self.directory)
        # name -> (options, {id: [data, deliveries, due]} in order); dicts keep creation order.
        self.now: dict[bytes, tuple[tuple[int, int, bytes | None], dict[int, list]]] = {}
        self.committed: dict = {}
        self.fresh: set[int] = set()  # ids added (or moved) since the last commit
        self.next_id = 1
        self.reserved = 1
        self.committed_reserved = 1

    @initialize()
    def two_queues(self) -> None:
        self.create_queue(b"a", 0, None)
        self.create_queue(b"b", 1, b"a")

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory)

    def ids(self) -> list[int]:
        return [id_ for _, messages in self.now.values() for id_ in messages]

    @rule(name=st.sampled_from(NAMES), capacity=st.integers(0, 3), dlq=st.sampled_from([None, *NAMES]))
    def create_queue(self, name: bytes, capacity: int, dlq: bytes | None) -> None:
        if name in self.now:
            return
        self.store.create_queue(name, capacity, 2, dlq)
        self.now[name] = ((capacity, 2, dlq, 0, b""), {})

    @rule(
        name=st.sampled_from(NAMES),
        limit=st.integers(0, 3),
        dlq=st.sampled_from([None, *NAMES]),
        note=st.sampled_from([b"", b"a", b"bb"]),
    )
    def alter_queue(self, name: bytes, limit: int, dlq: bytes | None, note: bytes) -> None:
        # A queue's settings changed while it lives, and its annotations (store format 5).
        if name in self.now:
            self.store.alter_queue(name, limit, dlq, limit * 1000, note)
            opts, messages = self.now[name]
            self.now[name] = ((opts[0], limit, dlq, limit * 1000, note), messages)

    @rule(name=st.sampled_from(NAMES))
    def delete_queue(self, name: bytes) -> None:
        if name in self.now:
            self.store.delete_queue(name)
            del self.now[name]

    @rule(name=st.sampled_from(NAMES), pick=st.randoms(use_true_random=False))
    def purge(self, name: bytes, pick: random.Random) -> None:
        if name in self.now:
            messages = self.now[name][1]
            keep = {id_ for id_ in messages if pick.random() < 0.3}
            self.store.purge(name, keep)
            for id_ in [id_ for id_ in messages if id_ not in keep]:
                del messages[id_]

    @rule(name=st.sampled_from(NAMES), due=st.sampled_from([0, 5]), count=st.integers(1, 3))
    def add(self, name: bytes, due: int, count: int) -> None:
        if name in self.now:
            for _ in range(count):
                self.store.add(name, self.next_id, b"m%d" % self.next_id, due_ms=due)
                self.now[name][1][self.next_id] = [b"m%d" % self.next_id, 0, due]
                self.fresh.add(self.next_id)
                self.next_id += 1

    @rule(name=st.sampled_from(NAMES), count=st.integers(1, 5), gap=st.booleans())
    def add_many(self, name: bytes, count: int, gap: bool) -> None:
        # Sent together: one pack (two when the ids skip, as across two id blocks).
        if name in self.now:
            ids = [self.next_id + i + (gap and i >= count // 2) for i in range(count)]
            self.store.add_many(name, ids, [b"p%06d" % id_ for id_ in ids])
            for id_ in ids:
                self.now[name][1][id_] = [b"p%06d" % id_, 0, 0]
                self.fresh.add(id_)
            self.next_id = ids[-1] + 1

    @rule(pick=st.randoms(use_true_random=False))
    def remove_many(self, pick: random.Random) -> None:
        # Confirmed together: a stretch of one queue's ids, as a batch confirm sends them.
        queues = [messages for _, messages in self.now.values() if messages]
        if not queues:
            return
        ids = list(pick.choice(queues))
        start = pick.randrange(len(ids))
        chosen = ids[start : start + pick.randint(1, 6)]
        self.store.remove_many(chosen)
        for _, messages in self.now.values():
            for id_ in chosen:
                messages.pop(id_, None)

    @rule()
    def reclaim(self) -> None:
        self.store.reclaim()
        self.committed = _copy(self.now)
        self.committed_reserved = self.reserved
        self.fresh.clear()

    @rule(pick=st.randoms(use_true_random=False))
    def remove(self, pick: random.Random) -> None:
        if not self.ids():
            return
        id_ = pick.choice(self.ids())
        self.store.remove(id_)
        for _, messages in self.now.values():
            messages.pop(id_, None)

    @rule(pick=st.randoms(use_true_random=False), to=st.sampled_from(NAMES))
    def move(self, pick: random.Random, to: bytes) -> None:
        if to not in self.now or not self.ids():
            return
        id_ = pick.choice(self.ids())
        for _, messages in self.now.values():
            if id_ in messages:
                message = messages.pop(id_)
        self.store.remove(id_)
        self.store.add(to, id_, message[0], due_ms=message[2], deliveries=message[1])
        self.now[to][1][id_] = message
        self.fresh.add(id_)

    @rule(pick=st.randoms(use_true_random=False), value=st.integers(0, 9), due=st.booleans())
    def update(self, pick: random.Random, value: int, due: bool) -> None:
        if not self.ids():
            return
        id_ = pick.choice(self.ids())
        (self.store.set_due if due else self.store.set_deliveries)(id_, value)
        for _, messages in self.now.values():
            if id_ in messages:
                messages[id_][2 if due else 1] = value

    @rule(ahead=st.integers(0, 100))
    def reserve(self, ahead: int) -> None:
        self.store.reserve_ids(self.next_id + ahead)
        self.reserved = max(self.reserved, self.next_id + ahead)

    @rule()
    def commit(self) -> None:
        self.store.commit()
        self.committed = _copy(self.now)
        self.committed_reserved = self.reserved
        self.fresh.clear()

    @rule()
    def crash_and_reopen(self) -> None:
        # Drop the buffer, as a crash would, and compare with the last commit.
        self.store._clear_buffer()
        self.store._reserved = self.store._reserved_written
        self.store.close()
        self.store = Store.open(self.directory)
        self.back_to_the_last_commit(self.store.load())

    @rule(fail=st.booleans())
    def reload(self, fail: bool) -> None:
        # A server whose commit failed gives up the batch and reads the last commit back, and goes
        # on with the same store: its bookkeeping (packs, free slots, ids) must be the file's again.
        if fail and self.store.pending():
            name = next(iter(self.now), None)
            if name is not None:
                self.store._queues.ops.append(Create(10**6, name, 0, 0, None, 0))  # a queue stored twice: refused
                with pytest.raises(StoreError, match="commit failed"):
                    self.store.commit()
        self.back_to_the_last_commit(self.store.reload())

    def back_to_the_last_commit(self, snapshot: Snapshot) -> None:
        got = {
            q.name: ((q.capacity, q.max_deliveries, q.dead_letter, q.visibility_timeout_ms, q.annotations), q.messages)
            for q in snapshot.queues
        }
        want = {
            name: (opts, [(id_, *message) for id_, message in msgs.items()])
            for name, (opts, msgs) in self.committed.items()
        }
        assert got == want
        assert list(got) == list(want)  # creation order
        max_id = max((id_ for _, msgs in self.committed.values() for id_ in msgs), default=0)
        # A pack's row keeps the ids of its gone members: next_id may stay above the live ones.
        lowest = max(self.committed_reserved, max_id + 1)
        assert lowest <= snapshot.next_id <= max(self.committed_reserved, self.next_id)
        self.now = _copy(self.committed)
        self.reserved = self.committed_reserved
        self.fresh.clear()
        self.next_id = max(self.next_id, snapshot.next_id)  # ids stay unique across the "crash"

    @invariant()
    def committed_means_in_the_file(self) -> None:
        # A stored message is `committed` unless it was added (or moved) since the last commit.
        for _, messages in self.now.values():
            for id_ in messages:
                assert self.store.committed(id_) == (id_ not in self.fresh), id_

    @invariant()
    def pending_means_something_to_write(self) -> None:
        if not self.store.pending():
            assert {n: (o, list(m.items())) for n, (o, m) in self.now.items()} == {
                n: (o, list(m.items())) for n, (o, m) in self.committed.items()
            }


def _copy(state: dict) -> dict:
    return {name: (opts, {id_: list(m) for id_, m in msgs.items()}) for name, (opts, msgs) in state.items()}


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("seed", range(12))
def test_long_random_histories_against_the_model(seed: int) -> None:
    # Hypothesis shrinks well but its histories are short; these are long, weighted
    # towards the traffic a server makes, and reproducible by seed.
    rng = random.Random(seed)
    machine = StoreModel()
    steps = [
        (15, lambda: machine.add(rng.choice(NAMES), rng.choice([0, 5]), rng.randint(1, 5))),
        (15, lambda: machine.add_many(rng.choice(NAMES), rng.randint(1, 8), rng.random() < 0.2)),
        (10, lambda: machine.remove(rng)),
        (10, lambda: machine.remove_many(rng)),
        (3, machine.reclaim),
        (6, lambda: machine.move(rng, rng.choice(NAMES))),
        (8, lambda: machine.update(rng, rng.randint(0, 9), rng.random() < 0.5)),
        (2, lambda: machine.purge(rng.choice(NAMES), rng)),
        (2, lambda: machine.delete_queue(rng.choice(NAMES))),
        (3, lambda: machine.create_queue(rng.choice(NAMES), rng.randint(0, 3), rng.choice([None, *NAMES]))),
        (2, lambda: machine.reserve(rng.randint(0, 100))),
        (
            2,
            lambda: machine.alter_queue(
                rng.choice(NAMES), rng.randint(0, 3), rng.choice([None, *NAMES]), b"%d" % rng.randint(0, 9)
            ),
        ),
        (10, machine.commit),
        (3, machine.crash_and_reopen),
        (2, lambda: machine.reload(rng.random() < 0.5)),
    ]
    weights = [weight for weight, _ in steps]
    try:
        machine.two_queues()
        for _ in range(400):
            rng.choices(steps, weights)[0][1]()
            machine.pending_means_something_to_write()
            machine.committed_means_in_the_file()
        machine.commit()
        machine.crash_and_reopen()
    finally:
        machine.teardown()


# --- a full disk: reload, room, probe ---------------------------------------------------


def test_a_reload_after_a_failed_commit_is_the_last_commit_and_the_store_goes_on(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add_many(b"q", range(1, 33), [b"%d" % i for i in range(1, 33)])
    store.commit()
    store.remove_many(range(1, 17))  # half the pack gone, in the buffer
    store.add(b"q", 40, b"new")
    store._queues.ops.append(Create(99, b"q", 0, 0, None, 0))  # and something SQLite refuses
    with pytest.raises(StoreError, match="commit failed"):
        store.commit()
    assert contents(store.reload()) == {b"q": list(range(1, 33))}
    assert not store.pending()
    store.remove_many(range(1, 33))  # the whole pack, as the file has it
    store.add(b"q", 41, b"after")
    store.commit()
    store = reopen(store)
    assert contents(store.load()) == {b"q": [41]}
    store.close()


def test_the_room_is_kept_given_back_and_probed(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    reserve = tmp_path / room.RESERVE_NAME
    assert not reserve.exists()  # only a server asks for it
    store.keep_room()
    assert reserve.stat().st_size == room.RESERVE_BYTES
    assert reserve.stat().st_blocks * 512 >= room.RESERVE_BYTES  # taken, not a sparse file
    store.release_room()
    assert not reserve.exists()
    store.probe()
    assert reserve.stat().st_size == room.RESERVE_BYTES
    store.close()
    assert reserve.exists()  # it outlives a stop: a restart on a full disk has room too


def test_without_room_the_probe_fails_and_keeps_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store._room = room.Room(tmp_path, 1 << 62)  # more than any disk has
    with pytest.raises(StoreError, match="the disk is full"):
        store.keep_room()
    with pytest.raises(StoreError, match="the disk is full"):
        store.probe()
    assert not (tmp_path / room.RESERVE_NAME).exists()
    store.close()


def test_without_its_room_the_store_compacts_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.create_queue(b"q")
    store.add_many(b"q", range(1, 101), [bytes(1000)] * 100)
    store.commit()
    store.remove_many(range(1, 99))
    store.release_room()
    store.reclaim()
    store.reclaim()
    assert rows(store, "messages") == 0  # compacting writes rows: not while the disk is full
    store.keep_room()
    store.reclaim()  # a first round notes the sparse pack, the next compacts it
    store.reclaim()
    assert rows(store, "messages") == 2
    store.close()

"""A lost or damaged store stops the start instead of being served: truncated and deleted files,
bytes flipped inside payloads (row and pack checksums), the upgrade of a version 2 store that
computes them, and `store.check`'s read-only check and salvage.

Every test damages real store files the way an outside attack or a failing disk would:
``truncate``, bytes flipped at payload offsets found in the file, the database deleted
beside its lock file or its write-ahead log. The end-to-end tests run `dbqueue serve`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbqueue.store import DB_NAME, FORMAT_VERSION, LOCK_NAME, Store, StoreError, schema
from dbqueue.store.check import CheckReport, check, salvage
from dbqueue.store.checksums import pack_crc, row_crc
from server_process import ServerProcess, serve_expecting_failure

WAL_NAME = DB_NAME + "-wal"


def payload(id_: int) -> bytes:
    """A payload that can be found in the file: unique per id, longer than any id's digits."""
    return b"<payload %08d>" % id_ * 3


def fill(directory: Path) -> Store:
    """A store with two queues: messages 1-20 as rows of their own (with a count and a due time on
    two of them), 101-164 and 201-232 as packs; 150-159 confirmed (a pack with gone members)."""
    store = Store.open(directory)
    store.create_queue(b"jobs", capacity=1000, max_deliveries=5, dead_letter=b"dead")
    store.create_queue(b"dead")
    for id_ in range(1, 21):
        store.add(b"jobs", id_, payload(id_))
    store.add_many(b"jobs", list(range(101, 165)), [payload(i) for i in range(101, 165)])
    store.add_many(b"dead", list(range(201, 233)), [payload(i) for i in range(201, 233)])
    store.reserve_ids(1000)
    store.commit()
    store.set_deliveries(3, 2)
    store.set_due(4, 12345)
    store.remove_many(list(range(150, 160)))
    store.commit()
    return store


LIVE = [*range(1, 21), *range(101, 150), *range(160, 165), *range(201, 233)]


def flip(path: Path, needle: bytes, at: int = 3) -> None:
    """Flip one byte inside the only occurrence of ``needle`` in the file."""
    raw = bytearray(path.read_bytes())
    offset = raw.find(needle)
    assert offset >= 0 and raw.find(needle, offset + 1) < 0, needle
    raw[offset + at] ^= 0x20
    path.write_bytes(bytes(raw))


def files_state(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file in ``directory``: (size, mtime_ns, sha256), to show that nothing changed."""
    return {
        path.name: (path.stat().st_size, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.iterdir())
    }


def ids_of(store: Store) -> list[int]:
    return sorted(m[0] for q in store.load().queues for m in q.messages)


# --- lost and truncated stores (item 3) -----------------------------------------------


@pytest.mark.parametrize("cut", ["empty", "header only", "half", "last byte", "last page"])
def test_truncated_store_is_refused_and_left_as_it_is(tmp_path: Path, cut: str) -> None:
    fill(tmp_path).close()
    path = tmp_path / DB_NAME
    size = path.stat().st_size
    assert size > 8 * schema.PAGE_SIZE
    length = {"empty": 0, "header only": 60, "half": size // 2, "last byte": size - 1, "last page": size - 4096}[cut]
    os.truncate(path, length)
    with pytest.raises(StoreError, match="truncated|empty|malformed") as info:
        Store.open(tmp_path)
    assert str(path) in str(info.value)
    assert path.stat().st_size == length  # refused, not recreated or repaired
    assert not (tmp_path / WAL_NAME).exists()


def test_deleted_database_beside_its_lock_file_is_refused(tmp_path: Path) -> None:
    fill(tmp_path).close()
    (tmp_path / DB_NAME).unlink()
    with pytest.raises(StoreError, match="missing") as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value) and LOCK_NAME in str(info.value)
    assert not (tmp_path / DB_NAME).exists()
    # The message says how to start afresh on purpose: without the lock file, the directory is new.
    (tmp_path / LOCK_NAME).unlink()
    with Store.open(tmp_path) as store:
        assert store.load().queues == []


_KILLED_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from dbqueue.store import Store
    store = Store.open(sys.argv[1])
    store.create_queue(b"q")
    for id_ in range(1, 101):
        store.add(b"q", id_, b"m%d" % id_)
        store.commit()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_store(directory: Path) -> None:
    """A store whose server was killed: its last commits are only in the write-ahead log."""
    child = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(directory)], check=False, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (directory / WAL_NAME).stat().st_size > 0


@pytest.mark.parametrize("lock", ["kept", "deleted too"])
def test_deleted_database_beside_its_log_is_refused(tmp_path: Path, lock: str) -> None:
    killed_store(tmp_path)
    (tmp_path / DB_NAME).unlink()
    if lock == "deleted too":
        (tmp_path / LOCK_NAME).unlink()
    before = (tmp_path / WAL_NAME).read_bytes()
    with pytest.raises(StoreError, match="missing") as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value) and WAL_NAME in str(info.value)
    assert (tmp_path / WAL_NAME).read_bytes() == before
    assert not (tmp_path / DB_NAME).exists()


def test_a_killed_store_still_opens_with_everything_committed(tmp_path: Path) -> None:
    killed_store(tmp_path)
    with Store.open(tmp_path) as store:
        assert ids_of(store) == list(range(1, 101))


def test_an_empty_sqlite_file_is_not_adopted(tmp_path: Path) -> None:
    # A SQLite file with no tables used to be taken for a new store and filled.
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute("PRAGMA user_version = 0")
        con.execute("CREATE TABLE t (x)")
        con.execute("DROP TABLE t")
    con.close()
    assert (tmp_path / DB_NAME).stat().st_size > 0
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(StoreError, match="not a dbqueue store") as info:
        Store.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(info.value)
    assert (tmp_path / DB_NAME).read_bytes() == before


def test_a_new_store_is_born_whole(tmp_path: Path) -> None:
    # A creation cut short leaves dbqueue.db.new behind, never a half-made dbqueue.db.
    (tmp_path / (DB_NAME + ".new")).write_bytes(b"half-made")
    with Store.open(tmp_path) as store:
        assert store.load().queues == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME, LOCK_NAME]
    with Store.open(tmp_path) as store:  # and it is a store now, kept
        store.create_queue(b"q")
    assert (tmp_path / DB_NAME).stat().st_size > 0


def test_a_first_start_that_fails_leaves_the_directory_new(tmp_path: Path) -> None:
    # Creating the store fails (here: a directory where the file must go); the lock file this
    # open created goes too, so the next start, once the cause is gone, is a first start again.
    (tmp_path / (DB_NAME + ".new")).mkdir()
    (tmp_path / (DB_NAME + ".new") / "x").touch()
    with pytest.raises(StoreError, match="cannot create the store"):
        Store.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME + ".new"]
    shutil.rmtree(tmp_path / (DB_NAME + ".new"))
    with Store.open(tmp_path) as store:
        assert store.load().queues == []


# --- checksums (item 4) ---------------------------------------------------------------


def test_every_payload_is_verified_at_load(tmp_path: Path) -> None:
    store = fill(tmp_path)
    store = reopen(store)
    jobs, dead = store.load().queues
    assert [m[0] for m in jobs.messages] == [*range(1, 21), *range(101, 150), *range(160, 165)]
    assert jobs.messages[2] == (3, payload(3), 2, 0) and jobs.messages[3] == (4, payload(4), 0, 12345)
    assert [m[1] for m in dead.messages] == [payload(i) for i in range(201, 233)]
    con = store._connection()
    assert all(row_crc(i, d) == c for i, d, c in con.execute("SELECT id, data, crc FROM messages"))
    assert all(pack_crc(f, s, d) == c for f, s, d, c in con.execute("SELECT first_id, sizes, data, crc FROM packs"))
    store.close()


def reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.directory)


def test_a_flipped_byte_in_a_message_row_stops_the_load(tmp_path: Path) -> None:
    fill(tmp_path).close()
    flip(tmp_path / DB_NAME, payload(7))
    store = Store.open(tmp_path)  # SQLite's own checks see nothing wrong
    with pytest.raises(StoreError, match="checksum") as info:
        store.load()
    assert str(tmp_path / DB_NAME) in str(info.value)
    assert "ids 7)" in str(info.value)
    store.close()


def test_a_flipped_byte_in_a_pack_names_its_live_members(tmp_path: Path) -> None:
    fill(tmp_path).close()
    flip(tmp_path / DB_NAME, payload(130))
    flip(tmp_path / DB_NAME, payload(2))
    with Store.open(tmp_path) as store, pytest.raises(StoreError, match="checksum") as info:
        store.load()
    # The pack 101-164 had 150-159 confirmed: its live members are the damaged ones.
    assert "55 stored messages" in str(info.value)
    assert "ids 2, 101-149, 160-164)" in str(info.value)


def test_a_pack_damaged_while_the_store_is_open_is_not_copied_out_of_it(tmp_path: Path) -> None:
    # An extraction (a member of a written pack gets a row of its own) reads the pack back:
    # damage that happened since the start stops the commit instead of being checksummed anew.
    store = fill(tmp_path)
    con = store._connection()
    con.execute("UPDATE packs SET data = CAST(replace(data, 'payload 00000210', 'payload 0000021X') AS BLOB)")
    store.set_deliveries(205, 1)
    with pytest.raises(StoreError, match="pack fails its checksum") as info:
        store.commit()
    assert "201-232" in str(info.value) and str(tmp_path / DB_NAME) in str(info.value)
    store._clear_buffer()
    store.close()


def test_damage_to_a_confirmed_message_does_not_matter(tmp_path: Path) -> None:
    # A free slot's bytes are never served: a flip there is not damage to any message.
    store = fill(tmp_path)
    store.remove_many(list(range(201, 233)))
    store.close()
    flip(tmp_path / DB_NAME, payload(220))
    with Store.open(tmp_path) as store:
        assert ids_of(store) == [i for i in LIVE if i < 200]


def build_version_2_store(directory: Path) -> None:
    """A version 2 store as the previous dbqueue wrote it, by raw SQL: rows, a pack, a gone bitmap."""
    directory.mkdir(exist_ok=True)
    con = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size = {schema.PAGE_SIZE}")
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        for statement in (*schema.SCHEMA_V1, *schema.PACK_TABLES):
            con.execute(statement)
        con.execute("UPDATE meta SET value = 500 WHERE key = 'next_id'")
        con.execute("INSERT INTO queues VALUES (1, x'6a6f6273', 10, 3, x'64656164')")  # jobs -> dead
        con.execute("INSERT INTO queues VALUES (2, x'64656164', 0, 0, NULL)")
        con.execute("INSERT INTO messages VALUES (7, 1, 1, ?, 2, 99)", (payload(7),))
        sizes = b"".join(len(payload(i)).to_bytes(4, "big") for i in range(20, 24))
        con.execute(
            "INSERT INTO packs VALUES (1, 20, 1, 2, 4, ?, ?)", (sizes, b"".join(payload(i) for i in range(20, 24)))
        )
        con.execute("INSERT INTO pack_gone VALUES (1, x'02')")  # member 21 is gone
        con.execute("INSERT INTO messages VALUES (30, 2, 3, ?, 0, 0)", (payload(30),))
        con.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        con.execute("PRAGMA user_version = 2")
        con.execute("PRAGMA journal_mode = WAL").fetchall()
    finally:
        con.close()


def test_a_version_2_store_is_upgraded_in_place_with_checksums(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 5  # version 4: enqueue times, origins, visibility timeouts; 5: annotations
    build_version_2_store(tmp_path)
    Path(tmp_path / LOCK_NAME).touch()  # as the previous dbqueue left it
    store = Store.open(tmp_path)
    assert schema.pragma(store._connection(), "user_version") == 5  # upgraded through every version
    snapshot = store.load()
    assert snapshot.next_id == 500
    assert [(q.name, q.capacity, q.max_deliveries, q.dead_letter, q.messages) for q in snapshot.queues] == [
        (b"jobs", 10, 3, b"dead", [(7, payload(7), 2, 99), *[(i, payload(i), 0, 0) for i in (20, 22, 23)]]),
        (b"dead", 0, 0, None, [(30, payload(30), 0, 0)]),
    ]
    store.add_many(b"jobs", [501, 502], [b"new", b"newer"])
    store.set_deliveries(22, 1)  # an extraction from the upgraded pack
    store = reopen(store)
    assert [m[:3] for m in store.load().queues[0].messages] == [
        (7, payload(7), 2),
        (20, payload(20), 0),
        (22, payload(22), 1),
        (23, payload(23), 0),
        (501, b"new", 0),
        (502, b"newer", 0),
    ]
    store.close()
    # The upgraded rows carry working checksums: damage is seen from now on.
    flip(tmp_path / DB_NAME, payload(23))
    with Store.open(tmp_path) as store, pytest.raises(StoreError, match=r"ids 20, 23\)"):
        store.load()


def test_a_newer_store_is_still_refused(tmp_path: Path) -> None:
    fill(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer.*no downgrade"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="newer"):
        check(tmp_path)


# --- check and salvage ----------------------------------------------------------------


def test_check_of_a_healthy_store(tmp_path: Path) -> None:
    fill(tmp_path).close()
    before = files_state(tmp_path)
    report = check(tmp_path)
    assert report == CheckReport(
        directory=tmp_path,
        format_version=FORMAT_VERSION,
        checksummed=True,
        queues=2,
        messages=len(LIVE),
        damaged=(),
        problems=(),
    )
    assert report.ok and report.lines()[0] == f"{tmp_path / DB_NAME}: ok"
    assert files_state(tmp_path) == before


def test_check_finds_damage_and_changes_nothing(tmp_path: Path) -> None:
    fill(tmp_path).close()
    flip(tmp_path / DB_NAME, payload(5))
    flip(tmp_path / DB_NAME, payload(210))
    before = files_state(tmp_path)
    report = check(tmp_path)
    assert not report.ok
    assert report.damaged == (5, *range(201, 233))
    assert report.messages == len(LIVE) - 33 and report.queues == 2
    assert "33 damaged messages: ids 5, 201-232" in report.lines()
    assert files_state(tmp_path) == before


def test_check_of_a_killed_store_reads_its_log_without_touching_it(tmp_path: Path) -> None:
    killed_store(tmp_path)
    before = files_state(tmp_path)
    report = check(tmp_path)
    assert report.ok and report.messages == 100
    assert files_state(tmp_path) == before


def test_check_of_an_old_store_does_not_upgrade_it(tmp_path: Path) -> None:
    build_version_2_store(tmp_path)
    before = files_state(tmp_path)
    report = check(tmp_path)
    assert (report.format_version, report.checksummed, report.queues, report.messages) == (2, False, 2, 5)
    assert files_state(tmp_path) == before


def test_check_refuses_a_store_in_use_and_what_is_not_a_store(tmp_path: Path) -> None:
    store = fill(tmp_path / "busy")
    with pytest.raises(StoreError, match="in use"):
        check(tmp_path / "busy")
    store.close()
    (tmp_path / "none").mkdir()
    with pytest.raises(StoreError, match="no dbqueue store"):
        check(tmp_path / "none")
    assert list((tmp_path / "none").iterdir()) == []
    fill(tmp_path / "emptied").close()
    os.truncate(tmp_path / "emptied" / DB_NAME, 0)
    with pytest.raises(StoreError, match="empty"):
        check(tmp_path / "emptied")


def test_salvage_copies_every_intact_message_and_leaves_the_original(tmp_path: Path) -> None:
    original = tmp_path / "damaged"
    fill(original).close()
    flip(original / DB_NAME, payload(5))
    flip(original / DB_NAME, payload(210))
    before = files_state(original)
    report = salvage(original, tmp_path / "new")
    assert files_state(original) == before
    assert report.salvaged_into == tmp_path / "new"
    assert report.damaged == (5, *range(201, 233)) and report.messages == len(LIVE) - 33
    with Store.open(tmp_path / "new") as store:
        snapshot = store.load()
    jobs, dead = snapshot.queues
    assert (jobs.name, jobs.capacity, jobs.max_deliveries, jobs.dead_letter) == (b"jobs", 1000, 5, b"dead")
    assert (dead.name, dead.capacity, dead.max_deliveries, dead.dead_letter, dead.messages) == (b"dead", 0, 0, None, [])
    want = [i for i in LIVE if i != 5 and i < 200]
    assert [m[0] for m in jobs.messages] == want
    assert [m[1] for m in jobs.messages] == [payload(i) for i in want]
    assert jobs.messages[2] == (3, payload(3), 2, 0) and jobs.messages[3] == (4, payload(4), 0, 12345)
    assert snapshot.next_id == 1000  # ids the damaged store handed out are never handed out again
    assert check(tmp_path / "new").ok
    with pytest.raises(StoreError, match="never held a store"):
        salvage(original, tmp_path / "new")
    with pytest.raises(StoreError, match="new directory"):
        salvage(original, original)


@pytest.mark.parametrize("cut", ["last byte", "half"])
def test_check_and_salvage_of_a_truncated_store(tmp_path: Path, cut: str) -> None:
    fill(tmp_path / "cut").close()
    path = tmp_path / "cut" / DB_NAME
    os.truncate(path, path.stat().st_size - 1 if cut == "last byte" else path.stat().st_size // 2)
    report = check(tmp_path / "cut")
    assert not report.ok and "truncated" in report.problems[0]
    report = salvage(tmp_path / "cut", tmp_path / "new")
    with Store.open(tmp_path / "new") as store:
        salvaged = ids_of(store)
    assert len(salvaged) == report.messages
    assert set(salvaged) <= set(LIVE)
    if cut == "last byte":  # one page cut short: every message is either salvaged or named
        assert report.damaged and sorted([*salvaged, *report.damaged]) == LIVE


def test_salvage_of_a_version_2_store(tmp_path: Path) -> None:
    build_version_2_store(tmp_path / "old")
    report = salvage(tmp_path / "old", tmp_path / "new")
    assert (report.format_version, report.messages) == (2, 5)
    with Store.open(tmp_path / "new") as store:
        assert ids_of(store) == [7, 20, 22, 23, 30]
    con = sqlite3.connect(tmp_path / "old" / DB_NAME)
    assert schema.pragma(con, "user_version") == 2  # the original is not upgraded
    con.close()


# --- end to end: `dbqueue serve` refuses instead of serving -----------------------------


@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store directory written by a real server: sends one by one and in batches, stopped cleanly."""
    server = ServerProcess(tmp_path_factory.mktemp("served") / "data").start()
    try:
        with server.client() as client:
            client.create("q")
            for i in range(1, 11):
                client.send("q", payload(i))
            client.send_batch("q", [payload(i) for i in range(100, 140)])
        server.terminate()
    finally:
        server.close()
    return server.data_dir


def damaged_copy(stored: Path, tmp_path: Path, damage: str) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(stored, data_dir)
    path = data_dir / DB_NAME
    if damage == "truncated to 0":
        os.truncate(path, 0)
    elif damage == "database deleted":
        path.unlink()
    elif damage == "payload flipped":
        flip(path, payload(4))
    elif damage == "batch payload flipped":
        flip(path, payload(120))
    return data_dir


@pytest.mark.parametrize("damage", ["truncated to 0", "database deleted", "payload flipped", "batch payload flipped"])
def test_serve_refuses_a_damaged_store(served_store: Path, tmp_path: Path, damage: str) -> None:
    data_dir = damaged_copy(served_store, tmp_path, damage)
    code, output = serve_expecting_failure(data_dir)
    assert code != 0, output
    assert "Traceback" not in output, output
    assert str(data_dir / DB_NAME) in output, output
    if "flipped" in damage:
        assert "checksum" in output, output
    assert damage != "truncated to 0" or (data_dir / DB_NAME).stat().st_size == 0
    assert damage != "database deleted" or not (data_dir / DB_NAME).exists()


def test_serve_then_salvage_brings_the_intact_messages_back(served_store: Path, tmp_path: Path) -> None:
    data_dir = damaged_copy(served_store, tmp_path, "payload flipped")
    report = salvage(data_dir, tmp_path / "salvaged")
    assert len(report.damaged) == 1 and report.messages == 49
    server = ServerProcess(tmp_path / "salvaged").start()
    try:
        with server.client() as client:
            got = [client.read("q", visibility_timeout=60.0) for _ in range(49)]
            assert [m.data for m in got if m is not None] == [
                payload(i) for i in (1, 2, 3, *range(5, 11), *range(100, 140))
            ]
            assert client.read("q") is None
        server.terminate()
    finally:
        server.close()

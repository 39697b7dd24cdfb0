"""A server on a PostgreSQL store, over real sockets: what a restart or a kill -9 keeps, what ownership
refuses, MEMBERS from the database, and a standby taking over a killed member's part.

Servers run in the test's process (`conftest.ServerThread`, via ``server_factory``) where a clean stop
is enough, and as child processes (`pg_server.PgServer`) where they are killed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg_fixtures
import psycopg
import pytest
from pg_server import PgServer

from dbqueue import Client, NoSuchMessage, Requeued, Server
from dbqueue.errors import StoreError
from dbqueue.protocol.frames import MEMBER_SHIFT
from dbqueue.store.postgres import PartLost, PartOwned, PostgresStore
from dbqueue.store.postgres_schema import SCHEMA_VERSION

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url
processes_factory = pg_fixtures.processes_factory


def test_restart_restores_queues_messages_delays_and_counts(server_factory: Any, pg_url: str) -> None:
    server = server_factory(store=pg_url)
    with Client.connect(server.address) as client:
        client.create("jobs", max_deliveries=5)
        ids = [client.send("jobs", f"m{i}".encode()) for i in range(5)]
        delayed = client.send("jobs", b"later", delay=60.0)
        first = client.read("jobs", visibility_timeout=30.0)
        assert first is not None and first.id == ids[0]
        taken = client.read("jobs", visibility_timeout=30.0)
        assert taken is not None
        client.confirm(taken.id)  # ids[1] confirmed
    server.stop()

    server = server_factory(store=pg_url)
    with Client.connect(server.address) as client:
        got = [client.read("jobs", visibility_timeout=30.0) for _ in range(4)]
        assert [m.id for m in got if m is not None] == [ids[0], ids[2], ids[3], ids[4]]  # in flight: ready again
        assert got[0] is not None and got[0].deliveries == 2  # counted across the restart (max_deliveries set)
        assert client.read("jobs") is None  # the delayed one is still delayed
        assert delayed not in [m.id for m in got if m is not None]


def test_kill9_keeps_every_acknowledged_send_and_confirm(
    processes_factory: Callable[..., PgServer], pg_url: str
) -> None:
    server = processes_factory(pg_url)
    with Client.connect(server.address) as client:
        client.create("q")
        with client.pipeline() as pipe:
            for i in range(2000):
                pipe.send("q", i.to_bytes(4, "big"))
            sent = pipe.execute()
        confirmed = set()
        for _ in range(500):
            message = client.read("q", visibility_timeout=30.0)
            assert message is not None
            client.confirm(message.id)
            confirmed.add(message.id)
        in_flight = client.read("q", visibility_timeout=30.0)
        assert in_flight is not None
    server.kill()
    server.start()
    with Client.connect(server.address) as client:
        left = []
        while (message := client.read("q", visibility_timeout=30.0)) is not None:
            left.append(message.id)
        assert sorted(left) == sorted(set(sent) - confirmed)
        assert left[0] == in_flight.id  # ready again, at its place


def test_a_second_server_for_a_part_is_refused(server_factory: Any, pg_url: str) -> None:
    server_factory(store=pg_url)
    with pytest.raises(PartOwned, match="part 0 .* is served by 127.0.0.1:"):
        PostgresStore.open(pg_url, part=0, address="127.0.0.1:9")


def test_a_database_of_a_newer_dbqueue_is_refused(pg_url: str) -> None:
    PostgresStore.open(pg_url, part=0, address="x").close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("UPDATE dbqueue_meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, written by a newer dbqueue"):
        PostgresStore.open(pg_url, part=0, address="x")


def test_the_fence_stops_a_member_whose_part_was_taken(pg_url: str) -> None:
    old = PostgresStore.open(pg_url, part=3, address="old:1")
    old.create_queue(b"q")
    old.add(b"q", (3 << MEMBER_SHIFT) + 1, b"x")
    old.commit()
    # The old owner's session dies (partitioned, and PostgreSQL's keepalives noticed): a standby takes the part.
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 3 AND granted"
        )
    time.sleep(0.2)
    new = PostgresStore.take_orphan(pg_url, address="new:1")
    assert new is not None and new.part == 3 and new.epoch == old.epoch + 1
    assert [[m[:4] for m in q.messages] for q in new.load().queues] == [[((3 << MEMBER_SHIFT) + 1, b"x", 0, 0)]]
    # The old owner comes back: its buffered confirm is never committed, on its old session or a new one.
    old.remove((3 << MEMBER_SHIFT) + 1)
    with pytest.raises(StoreError):
        old.commit()
    with pytest.raises(PartLost):
        old.reload()
    assert new.members()[3] == "new:1"
    new.close()


def test_members_come_from_the_database(server_factory: Any, pg_url: str) -> None:
    first = server_factory(store=pg_url, member_index=0)
    second = server_factory(store=pg_url, member_index=1)
    time.sleep(1.3)  # the first reads the members again within PART_CHECK_INTERVAL
    for server in (first, second):
        with Client.connect(server.address) as client:
            assert list(client.members().members) == [first.address, second.address]


def test_a_standby_takes_over_a_killed_member(processes_factory: Callable[..., PgServer], pg_url: str) -> None:
    member = processes_factory(pg_url, index=0)
    other = processes_factory(pg_url, index=1)
    standby = processes_factory(pg_url, standby=True, wait=False)
    with Client.connect(member.address) as client:
        client.create("q")
        ids = [client.send("q", b"%d" % i) for i in range(10)]
        held = client.read("q", visibility_timeout=30.0)
        assert held is not None
        killed = time.monotonic()
        member.kill()
    serving = standby.wait_serving(timeout=10)
    takeover = serving - killed
    print(f"kill -9 -> standby serving: {takeover:.3f} s")
    assert takeover < 5.0
    with Client.connect(standby.address) as client:
        assert client.members().members[0] == standby.address
        with pytest.raises((Requeued, NoSuchMessage)):  # in flight at the death: never a false success
            client.confirm(held.id)
        got = [client.read("q", visibility_timeout=30.0) for _ in range(10)]
        assert [m.id for m in got if m is not None] == ids
        new_id = client.send("q", b"after")
        assert new_id >> MEMBER_SHIFT == 0 and new_id > max(ids)
    time.sleep(1.3)
    with Client.connect(other.address) as client:
        assert list(client.members().members) == [standby.address, other.address]


def test_server_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclusive"):
        Server(data_dir=tmp_path, store="postgresql://x")
    with pytest.raises(ValueError, match="standby needs"):
        Server(standby=True)

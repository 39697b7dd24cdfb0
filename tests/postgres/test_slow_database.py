"""A server's periodic PostgreSQL calls do not hold up its clients while the database is slow to answer them.

A standby's watch for orphaned parts is checked the same way: its session's backend stopped, the standby's
metrics endpoint (served by the same loop) still answers at once.

The server checks every `PART_CHECK_INTERVAL` that its part is still its own, on the session that holds the
part's lock. Here that session's backend is stopped (SIGSTOP, for `STALL` seconds, then SIGCONT): the check
cannot be answered meanwhile, while the group commits, written on sessions of their own, go on. A client's
round trips (send, read, confirm: each answered after its commit) must stay fast all along; with the check on
the event loop, every one of them waited for the stopped backend. Once the backend runs again, the check
answers and the server carries on, its part still its own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pg_fixtures
import psycopg
import pytest

from dbqueue import Client
from dbqueue.server.app import PART_CHECK_INTERVAL
from dbqueue.store.postgres_parts import LOCK_CLASS

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url

STALL = 3 * PART_CHECK_INTERVAL  # long enough for at least two checks to reach the stopped backend
ROUND_TRIP_BOUND = 1.0  # seconds; a round trip is milliseconds here, and the stall far longer


def lock_holder(url: str, part: int) -> int:
    """The pid of the backend whose session holds ``part``'s advisory lock (the server's own session)."""
    with psycopg.connect(url, autocommit=True) as con:
        row = con.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
            " AND objsubid = 2 AND granted",
            (LOCK_CLASS, part),
        ).fetchone()
    assert row is not None, "no session holds the part"
    return int(row[0])


@pytest.mark.timeout(60)
def test_round_trips_go_on_while_the_part_check_waits_on_the_database(
    server_factory: Callable[..., Any], pg_url: str
) -> None:
    server = server_factory(store=pg_url)
    with Client.connect(server.address, timeout=10.0) as client:
        client.create("jobs")
        client.send("jobs", b"warm")
        assert client.read("jobs") is not None  # left in flight: only fresh ones are confirmed below
        pid = lock_holder(pg_url, 0)
        slowest = 0.0
        rounds = 0
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(STALL, os.kill, (pid, signal.SIGCONT))  # even while a round trip hangs
        resume.start()
        try:
            stopped = time.monotonic()
            while time.monotonic() - stopped < STALL:
                began = time.monotonic()
                id_ = client.send("jobs", b"during")
                message = client.read("jobs", visibility_timeout=30.0)
                assert message is not None and message.id == id_
                client.confirm(id_)
                slowest = max(slowest, time.monotonic() - began)
                rounds += 1
                time.sleep(0.05)
        finally:
            resume.cancel()
            os.kill(pid, signal.SIGCONT)
        print(f"\n{rounds} round trips while the part's session was stopped for {STALL:.0f} s, slowest {slowest:.3f} s")
        assert slowest < ROUND_TRIP_BOUND, f"a round trip took {slowest:.2f} s: it waited for the part check"
        assert rounds > 10
        # The backend runs again: the checks answer, and the server still serves its part.
        time.sleep(2 * PART_CHECK_INTERVAL)
        assert server.server.store_unavailable is None
        id_ = client.send("jobs", b"after")
        assert lock_holder(pg_url, 0) == pid
        message = client.read("jobs", visibility_timeout=30.0)
        assert message is not None and message.id == id_


def watch_session(url: str) -> int:
    """The pid of the backend of a standby's watch: the session whose last query looked for orphaned parts."""
    deadline = time.monotonic() + 10.0
    with psycopg.connect(url, autocommit=True) as con:
        while True:
            row = con.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND query LIKE 'SELECT part FROM dbqueue_parts WHERE part NOT IN%'"
            ).fetchone()
            if row is not None:
                return int(row[0])
            assert time.monotonic() < deadline, "no standby watch session seen"
            time.sleep(0.1)


@pytest.mark.timeout(60)
def test_a_standby_loop_answers_while_its_watch_waits_on_the_database(
    server_factory: Callable[..., Any], pg_url: str
) -> None:
    server_factory(store=pg_url)  # the member whose part the standby watches
    standby = server_factory(store=pg_url, standby=True, metrics_port=0)
    url = f"http://127.0.0.1:{standby.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as reply:
        assert reply.status == 200
    pid = watch_session(pg_url)
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(STALL, os.kill, (pid, signal.SIGCONT))
    resume.start()
    slowest = 0.0
    try:
        stopped = time.monotonic()
        while time.monotonic() - stopped < STALL:
            began = time.monotonic()
            with urllib.request.urlopen(url, timeout=10.0) as reply:
                assert reply.status == 200
            slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.05)
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    print(f"\nthe standby's metrics while its watch session was stopped for {STALL:.0f} s: slowest {slowest:.3f} s")
    assert slowest < ROUND_TRIP_BOUND, f"a metrics request took {slowest:.2f} s: it waited for the standby's watch"

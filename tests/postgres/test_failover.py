"""PostgreSQL's own failover under load: a primary with a synchronous streaming replica, ``kill -9`` of the
primary, ``pg_ctl promote`` of the replica; dbqueue, given both hosts with ``target_session_attrs=read-write``,
reconnects to the new primary and carries on. Every acknowledged send is still there, no acknowledged confirm
is undone (`ledger`).

The two clusters are made by the test (initdb, pg_basebackup) on free ports and removed after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger import QUEUE, Ledger, Load, drain
from pg_cluster import Cluster, bin_dir, free_port
from pg_server import PgServer

from dbqueue import Client

pytestmark = pytest.mark.skipif(bin_dir() is None, reason="PostgreSQL is not installed")


@pytest.fixture
def replicated() -> Iterator[tuple[Cluster, Cluster]]:
    primary = Cluster.create(synchronous_standby_names="'replica1'").start()
    replica = None
    try:
        replica = primary.replica(name="replica1").start()
        deadline = time.monotonic() + 30
        while primary.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica1'") != "sync":
            assert time.monotonic() < deadline, "the replica never became synchronous"
            time.sleep(0.1)
        yield primary, replica
    finally:
        if replica is not None:
            replica.remove()
        primary.remove()


@pytest.mark.timeout(240)  # faults, waits and a drain: more than the suite's 60 s
def test_primary_failover_under_load(replicated: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    primary, replica = replicated
    url = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{replica.port}/postgres"
        "?target_session_attrs=read-write"
    )
    server = PgServer(url, free_port(), tmp_path / "server.log").start()
    try:
        with Client.connect(server.address) as client:
            client.create(QUEUE)
        ledger = Ledger()
        load = Load(ledger, lambda: [server.address]).start()
        time.sleep(2.0)
        assert ledger.sent, f"nothing acknowledged before the fault:\n{server.log_tail()}"
        primary.kill()
        killed = time.monotonic()
        time.sleep(1.0)  # what an operator or Patroni takes at the least to decide
        replica.promote()
        # The new primary has no synchronous replica of its own: as Patroni does (synchronous_mode without
        # strict), it stops waiting for one; else every commit would wait for ever.
        replica.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        replica.psql("SELECT pg_reload_conf()")
        promoted = time.monotonic()
        deadline = time.monotonic() + 30
        at_promote = len(ledger.sent)
        while len(ledger.sent) <= at_promote + 10:
            assert time.monotonic() < deadline, f"no send acknowledged after the failover:\n{server.log_tail()}"
            time.sleep(0.02)
        serving_again = time.monotonic()
        time.sleep(1.5)
        load.stop()
        drained = drain(ledger, [server.address])
        result = ledger.check(drained)
        print(
            f"\nfailover: {result}, errors {dict(ledger.errors)};"
            f" kill -9 -> promote {promoted - killed:.2f} s,"
            f" promote -> sends acknowledged {serving_again - promoted:.2f} s"
        )
        assert result["lost"] == 0
        assert result["confirmed_delivered_again"] == 0
        assert server.running(), server.log_tail()
    finally:
        server.kill()

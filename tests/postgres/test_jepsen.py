"""Jepsen-style: a 3-member group and a standby on one PostgreSQL, producers and consumers running through
`GroupClient` (sends and confirms pipelined in `GroupPipeline`s, `ledger.GroupLoad`), members killed with
``kill -9`` at random (`KILLS` times, bounded in time). After each kill the standby takes the dead member's
part over; the dead member comes back as the next standby. The group clients follow the parts to their new
owners by themselves (MEMBERS); the test never tells them. At the end: 0 acknowledged sends lost, 0
confirmed messages delivered again (`ledger`).

Run alone, with the figures printed: ``python -m pytest -s tests/postgres/test_jepsen.py``
(``DBQUEUE_JEPSEN_KILLS``, ``DBQUEUE_JEPSEN_SEED`` change the number of kills and the seed).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pg_fixtures
import pytest
from ledger import QUEUE, GroupLoad, Ledger, drain
from pg_cluster import free_port
from pg_server import PgServer

from dbqueue import Client

KILLS = int(os.environ.get("DBQUEUE_JEPSEN_KILLS", "10"))

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url
processes_factory = pg_fixtures.processes_factory


@pytest.mark.timeout(240)  # faults, waits and a drain: more than the suite's 60 s
def test_members_killed_at_random_lose_nothing(
    pg_url: str, tmp_path: Path, processes_factory: Callable[..., PgServer]
) -> None:
    rng = random.Random(int(os.environ.get("DBQUEUE_JEPSEN_SEED", "22")))
    members = [processes_factory(pg_url, index=i) for i in range(3)]
    standby = processes_factory(pg_url, standby=True, wait=False)
    time.sleep(1.5)  # every member reads the others' addresses
    with Client.connect(members[0].address) as client:
        for member in members:
            with Client.connect(member.address) as each:
                each.create(QUEUE)
        assert len(client.members().members) == 3
    ledger = Ledger()
    load = GroupLoad(ledger, [m.address for m in members], producers=3, consumers=3).start()
    takeovers: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.randrange(3)
            killed = time.monotonic()
            members[victim].kill()
            taken = standby.wait_serving(timeout=15)
            takeovers.append(taken - killed)
            members[victim], standby = standby, members[victim]
            standby.standby = True
            standby.port = free_port()
            standby.start(wait=False)  # the dead member comes back as the next standby
        # Every group client, told nothing, reaches the three parts at their owners now.
        live = {m.address for m in members}
        deadline = time.monotonic() + 15.0
        while not all(set(c.addresses) >= live and c.stats(QUEUE)["members"] == 3 for c in load.clients):
            assert time.monotonic() < deadline, f"a group client did not follow: {[c.addresses for c in load.clients]}"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        load.stop()
    live = [m.address for m in members]
    drained = drain(ledger, live)
    result = ledger.check(drained)
    print(
        f"\njepsen (GroupClient): {KILLS} kills, takeover kill -9 -> serving: max {max(takeovers):.2f} s,"
        f" mean {sum(takeovers) / len(takeovers):.2f} s; {result}; confirms refused"
        f" {dict(load.refused_confirms)}; errors {dict(ledger.errors)}"
    )
    assert result["lost"] == 0
    assert result["confirmed_delivered_again"] == 0
    assert result["acknowledged_sends"] > 0 and result["acknowledged_confirms"] > 0
    assert max(takeovers) < 5.0

"""Jepsen-style: a 3-member group and a standby on one PostgreSQL, producers (pipelining their sends) and
consumers running, members killed with ``kill -9`` at random (`KILLS` times, bounded in time). After each
kill the standby takes the dead member's part over; the dead member comes back as the next standby. Clients
follow the group through MEMBERS. At the end: 0 acknowledged sends lost, 0 confirmed messages delivered
again (`ledger`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pg_fixtures
import pytest
from ledger import QUEUE, Ledger, Load, drain
from pg_cluster import free_port
from pg_server import PgServer

from dbqueue import Client, DbQueueError

KILLS = int(os.environ.get("DBQUEUE_JEPSEN_KILLS", "10"))

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url
processes_factory = pg_fixtures.processes_factory


class Members:
    """The group's addresses as MEMBERS from any live member says, refreshed in the background."""

    def __init__(self, seeds: list[str]) -> None:
        self.current = list(seeds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __call__(self) -> list[str]:
        return [address for address in self.current if address]

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for address in list(self.current):
                try:
                    with Client.connect(address, timeout=1.0) as client:
                        self.current = list(client.members().members)
                    break
                except DbQueueError:
                    continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


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
    group = Members([m.address for m in members])
    ledger = Ledger()
    load = Load(ledger, group, producers=3, consumers=3).start()
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
        time.sleep(1.0)
    finally:
        load.stop()
        group.stop()
    live = [m.address for m in members]
    drained = drain(ledger, live)
    result = ledger.check(drained)
    print(
        f"\njepsen: {KILLS} kills, takeover kill -9 -> serving: max {max(takeovers):.2f} s,"
        f" mean {sum(takeovers) / len(takeovers):.2f} s; {result}; errors {dict(ledger.errors)}"
    )
    assert result["lost"] == 0
    assert result["confirmed_delivered_again"] == 0
    assert result["acknowledged_sends"] > 0 and result["acknowledged_confirms"] > 0
    assert max(takeovers) < 5.0

"""A member cut off from PostgreSQL (not from its clients) while a standby takes its part over.

The member runs in a network namespace of its own with two links to the root
namespace: one its clients use, one to PostgreSQL. Mid-load the PostgreSQL
link goes down (``ip link set ... down``: packets vanish, no RST, no FIN).
PostgreSQL notices with its keepalives (the store sets them to 1 s idle, 1 s
interval, 3 probes) and ends the member's sessions, which frees its part; the
standby takes it after `ORPHAN_GRACE`. The member's commits fail within
libpq's ``tcp_user_timeout`` (5 s): from then on it acknowledges nothing, and
when the link comes back its fence tells it the part was taken, and it stops.
The ledger must show 0 acknowledged sends lost and 0 confirmed messages
delivered again; the time from the cut to the standby serving is printed.

Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger import QUEUE, Ledger, Load, drain
from pg_cluster import Cluster, bin_dir, free_port
from pg_server import PgServer

from dbqueue import Client

NS = f"dbqp-{os.getpid()}"
PG_LINK = f"dqpp{os.getpid() % 100000}"
CLIENT_LINK = f"dqpc{os.getpid() % 100000}"
NET = f"10.231.{os.getpid() % 250}"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or bin_dir() is None:
        return False
    probe = f"dbqp-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


pytestmark = pytest.mark.skipif(not _netns_usable(), reason="needs root, ip netns and PostgreSQL")


@pytest.fixture
def namespace() -> Iterator[str]:
    _ip("netns", "add", NS)
    try:
        _ip("netns", "exec", NS, "ip", "link", "set", "lo", "up")
        for link, last in ((PG_LINK, 0), (CLIENT_LINK, 4)):
            _ip("link", "add", link, "type", "veth", "peer", "name", link + "n")
            _ip("link", "set", link + "n", "netns", NS)
            _ip("addr", "add", f"{NET}.{last + 1}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("netns", "exec", NS, "ip", "addr", "add", f"{NET}.{last + 2}/30", "dev", link + "n")
            _ip("netns", "exec", NS, "ip", "link", "set", link + "n", "up")
        yield NS
    finally:
        for link in (PG_LINK, CLIENT_LINK):
            _ip("link", "del", link, check=False)
        _ip("netns", "del", NS, check=False)


@pytest.fixture
def reachable_cluster() -> Iterator[Cluster]:
    cluster = Cluster.create(listen_addresses="'*'")
    with open(cluster.data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {NET}.0/24 trust\n")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.mark.timeout(240)  # faults, waits and a drain: more than the suite's 60 s
def test_a_member_cut_off_from_postgresql_stops_acknowledging(
    namespace: str, reachable_cluster: Cluster, tmp_path: Path
) -> None:
    url_inside = f"postgresql://postgres@{NET}.1:{reachable_cluster.port}/postgres"
    url = reachable_cluster.url()
    member = PgServer(url_inside, free_port(), tmp_path / "member.log", host=f"{NET}.6", netns=namespace).start()
    standby = PgServer(url, free_port(), tmp_path / "standby.log", standby=True).start(wait=False)
    servers = [member, standby]
    try:
        with Client.connect(member.address) as client:
            client.create(QUEUE)
        ledger = Ledger()
        addresses = [member.address]
        load = Load(ledger, lambda: list(addresses), producers=2, consumers=2).start()
        time.sleep(2.0)
        assert ledger.sent, member.log_tail()
        _ip("link", "set", PG_LINK, "down")
        cut = time.monotonic()
        served = standby.wait_serving(timeout=30)
        acknowledged_at_takeover = (len(ledger.sent), len(ledger.confirmed))
        addresses.append(standby.address)
        time.sleep(3.0)
        _ip("link", "set", PG_LINK, "up")
        mended = time.monotonic()
        stopped = None
        while time.monotonic() - mended < 40:
            if not member.running():
                stopped = time.monotonic()
                break
            time.sleep(0.1)
        load.stop()
        drained = drain(ledger, [standby.address])
        result = ledger.check(drained)
        print(
            f"\npartition: cut -> standby serving {served - cut:.2f} s;"
            f" mend -> cut-off member stopped {'never' if stopped is None else f'{stopped - mended:.2f} s'};"
            f" acknowledged at takeover {acknowledged_at_takeover}; {result}; errors {dict(ledger.errors)}"
        )
        assert result["lost"] == 0
        assert result["confirmed_delivered_again"] == 0
        assert served - cut < 15.0
        assert stopped is not None, member.log_tail()
        assert "PartLost" in member.log_path.read_text()  # it stopped because its part is another's now
    finally:
        for server in servers:
            server.kill()

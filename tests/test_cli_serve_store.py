"""``dbqueue serve --store URL [--standby]`` as real processes on a throwaway PostgreSQL cluster
(tests/postgres/pg_cluster.py): the store keeps what was sent across a restart, and a standby started
beside the server takes over its part when it stops. The client side is the CLI too.

Skipped, saying why, where PostgreSQL is not installed (CI installs it).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_cli_commands import clean_environment, ok, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent / "postgres"))
import pg_fixtures  # beside the PostgreSQL tests, on the path above
from pg_cluster import free_port

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url


class Serve:
    """``dbqueue serve --port PORT ARGS`` as a process, its output in a log file."""

    def __init__(self, tmp_path: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(self.port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_environment(),
            )

    def wait_serving(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while run_cli("list", "--address", self.address, "--timeout", "1").returncode != 0:
            assert self.process.poll() is None, f"serve exited {self.process.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"not serving on {self.address} after {within} s:\n{self.text()}"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(*args: str, port: int | None = None) -> Serve:
        started.append(Serve(tmp_path, *args, port=port))
        return started[-1]

    yield start
    for serve in started:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(10)


def test_serve_keeps_the_queues_in_postgresql_across_a_restart(pg_url: str, serving: Any) -> None:
    first = serving("--store", pg_url)
    first.wait_serving()
    at = ["--address", first.address]
    ok(run_cli("create", "jobs", "--visibility-timeout", "60", *at))
    ok(run_cli("send", "jobs", *at, stdin=b"one\ntwo\n"))
    assert first.stop() == 0, first.text()

    again = serving("--store", pg_url, port=first.port)
    again.wait_serving()
    stats = json.loads(ok(run_cli("stats", "jobs", "--json", *at)))
    assert (stats["ready"], stats["visibility_timeout_ms"]) == (2, 60_000)
    assert [m["data"] for m in json.loads(ok(run_cli("peek", "jobs", "--json", *at)))] == ["one", "two"]
    assert ok(run_cli("read", "jobs", "--count", "2", "--confirm", *at)) == "one\ntwo\n"
    assert again.stop() == 0, again.text()


def test_a_standby_takes_over_when_the_server_stops(pg_url: str, serving: Any) -> None:
    main = serving("--store", pg_url)
    main.wait_serving()
    standby = serving("--store", pg_url, "--standby")
    ok(run_cli("create", "handover", "--address", main.address))
    ok(run_cli("send", "handover", "kept", "--address", main.address))
    time.sleep(0.5)
    assert standby.process.poll() is None, standby.text()
    assert main.stop() == 0, main.text()
    standby.wait_serving(within=60.0)
    assert ok(run_cli("read", "handover", "--confirm", "--address", standby.address)) == "kept\n"
    assert standby.stop() == 0, standby.text()


# --- what --standby, --peers and --workers say with --store ----------------------------------------------------


def test_standby_with_workers_and_peers_with_store_are_usage_errors() -> None:
    url = "postgresql://nowhere/db"  # refused before any connection is tried
    both = run_cli("serve", "--port", "0", "--store", url, "--standby", "--workers", "2")
    assert both.returncode == 2, both.stderr
    assert b"--standby" in both.stderr and b"--workers" in both.stderr
    peers = run_cli("serve", "--port", "3000", "--store", url, "--peers", "127.0.0.1:3000,127.0.0.1:3001")
    assert peers.returncode == 2, peers.stderr
    assert b"--peers" in peers.stderr and b"come from the database" in peers.stderr


def test_serve_help_says_what_a_standby_takes_over_and_where_workers_serve_http() -> None:
    from click.testing import CliRunner

    from dbqueue.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"], terminal_width=400).output.split())
    assert "take over that part (whichever it is) and serve it under that part's member index" in help_text
    assert "not with --workers" in help_text
    assert "with --workers, worker I on PORT+I" in help_text.split("--http-port")[1]
    assert "come from the database" in help_text.split("--peers")[1]


def test_workers_on_one_database_each_own_a_part(pg_url: str, tmp_path: Path) -> None:
    from dbqueue import Client
    from test_workers import Supervised, answers, free_ports, serve_workers

    def command(workers: int, port: int) -> list[str]:
        return [*serve_workers(workers, port), "--store", pg_url]

    tree = Supervised(tmp_path, workers=2, command=command, port=free_ports(2))
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "every worker to answer", 30.0)
        deadline = time.monotonic() + 10.0
        while True:  # the members read from the database, every second
            with Client.connect(tree.addresses[1]) as client:
                reply = client.members()
            if list(reply.members) == tree.addresses:
                break
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert reply.index == 1
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(timeout=20) == 0, tree.log()
    finally:
        tree.close()

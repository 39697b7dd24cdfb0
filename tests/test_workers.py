"""`dbqueue serve --workers 3` as a real process tree: a supervisor and three member servers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbqueue import Client, ConnectionLost, LimitExceeded
from dbqueue.cli import serve
from dbqueue.client.group import GroupClient, member_of
from test_cli import serve_limits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")

WORKERS = 3
START_TIMEOUT = 10.0


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that nothing listens on right now."""
    for _ in range(100):
        first = random.randrange(20_000, 60_000 - count)
        probes = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    pytest.fail(f"found no {count} consecutive free ports")


def workers_of(supervisor: int) -> dict[int, int]:
    """The supervisor's live children, by the port each serves on: {port: pid}."""
    found = {}
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    for pid in map(int, children):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--port" in argv:
            found[int(argv[argv.index(b"--port") + 1])] = pid
    return found


def answers(address: str) -> bool:
    try:
        Client.connect(address, timeout=1.0).close()
        return True
    except ConnectionLost:
        return False


def serve_workers(workers: int, port: int) -> list[str]:
    return [sys.executable, "-m", "dbqueue.cli", "serve", "--workers", str(workers), "--port", str(port)]


class Supervised:
    """A supervisor started by ``command(workers, first port)``, its log in a file, its members' addresses."""

    def __init__(
        self, tmp_path: Path, workers: int = WORKERS, command: Callable[[int, int], list[str]] = serve_workers
    ) -> None:
        self.port = free_ports(workers)
        self.addresses = [f"127.0.0.1:{self.port + i}" for i in range(workers)]
        self.log_path = tmp_path / "supervisor.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command(workers, self.port), stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], what: str, within: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the supervisor exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {within}s waiting for {what}:\n{self.log()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Teardown after a failure: nothing of the tree may outlive the test."""
        if self.process.poll() is None:
            pids = list(workers_of(self.process.pid).values())
            self.process.kill()
            self.process.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    tree = Supervised(tmp_path)
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "every worker to answer")
        yield tree
    finally:
        tree.close()


def test_workers_form_a_group_are_restarted_and_stop_together(supervised: Supervised) -> None:
    addresses = supervised.addresses
    for index, address in enumerate(addresses):
        with Client.connect(address) as client:
            reply = client.members()
            assert (list(reply.members), reply.index) == (addresses, index)
            client.create("q")
            assert member_of(client.send("q", b"hello")) == index  # ids carry the member index

    with GroupClient.connect(addresses[2]) as group:  # discovered from any one worker
        assert group.addresses == addresses
        ids = [group.send("q", b"%d" % i) for i in range(6)]
        assert sorted(member_of(id_) for id_ in ids) == [0, 0, 1, 1, 2, 2]

    pids = workers_of(supervised.process.pid)
    assert sorted(pids) == [supervised.port + i for i in range(WORKERS)]
    victim = supervised.port + 1
    os.kill(pids[victim], signal.SIGKILL)
    supervised.wait_until(
        lambda: workers_of(supervised.process.pid).get(victim, pids[victim]) != pids[victim] and answers(addresses[1]),
        "the killed worker to be restarted",
    )
    with Client.connect(addresses[1]) as client:
        reply = client.members()
        assert (list(reply.members), reply.index) == (addresses, 1)
        client.create("q")
        assert member_of(client.send("q", b"again")) == 1
    assert "restarting it" in supervised.log()

    workers = list(workers_of(supervised.process.pid).values())
    assert len(workers) == WORKERS
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.process.wait(timeout=10) == 0, supervised.log()
    for pid in workers:  # reaped by the supervisor, so gone from /proc
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"
    assert not any(answers(address) for address in addresses)
    log = supervised.log()
    assert "all workers stopped" in log
    assert "Traceback" not in log


def test_workers_run_with_the_options_the_supervisor_was_given(tmp_path: Path) -> None:
    """Every limit (and every other option but the per-worker ones) reaches every worker as given."""
    flags = ["--max-in-flight", "1", "--max-queues", "2", "--idle-timeout", "30", "--sweep-resolution", "0.02"]
    flags += ["--log-level", "warning"]
    tree = Supervised(tmp_path, workers=2, command=lambda workers, port: [*serve_workers(workers, port), *flags])
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "every worker to answer")
        expected = serve_limits(*flags)
        workers = workers_of(tree.process.pid)
        assert sorted(workers) == [tree.port, tree.port + 1]
        for port, pid in workers.items():
            argv = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
            arguments = argv[argv.index("serve") + 1 :]
            assert "--workers" not in arguments
            assert serve_limits(*arguments) == expected, arguments
            context = serve.make_context("serve", arguments)
            assert (context.params["port"], context.params["log_level"]) == (port, "warning")
        with Client.connect(tree.addresses[1]) as client:
            client.create("q")
            client.send_batch("q", [b"a", b"b"])
            client.read("q")
            with pytest.raises(LimitExceeded, match="1 messages in flight"):
                client.read("q")
            client.create("r")
            with pytest.raises(LimitExceeded, match="2 queues"):
                client.create("s")
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(timeout=10) == 0, tree.log()
    finally:
        tree.close()

"""`dbqueue serve --workers 3` as a real process tree: a supervisor and three member servers."""

from __future__ import annotations

import contextlib
import http.client
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
        self,
        tmp_path: Path,
        workers: int = WORKERS,
        command: Callable[[int, int], list[str]] = serve_workers,
        *,
        port: int | None = None,
        log_name: str = "supervisor.log",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_ports(workers)
        self.addresses = [f"127.0.0.1:{self.port + i}" for i in range(workers)]
        self.log_path = tmp_path / log_name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command(workers, self.port), stdout=log, stderr=subprocess.STDOUT, env=env)

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


def test_each_worker_serves_its_http_listener_on_http_port_plus_its_index(tmp_path: Path) -> None:
    """``--http-port H --workers 2``: worker I's console, SQS API and /metrics answer on H+I, each for its own part."""
    http_port = free_ports(2)
    tree = Supervised(
        tmp_path,
        workers=2,
        command=lambda workers, port: [*serve_workers(workers, port), "--http-port", str(http_port)],
    )
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "every worker to answer")
        for i, address in enumerate(tree.addresses):
            with Client.connect(address) as client:
                client.create(f"only-on-{i}")
        for i in range(2):
            tree.wait_until(lambda i=i: http_answers(http_port + i), f"worker {i}'s HTTP listener")
            page = http.client.HTTPConnection("127.0.0.1", http_port + i, timeout=5)
            page.request("GET", "/")
            answer = page.getresponse()
            assert answer.status == 200 and b"/console/static/console.js" in answer.read()
            page.request("GET", "/?Action=ListQueues&Version=2012-11-05")
            queues = page.getresponse().read()
            assert f"only-on-{i}".encode() in queues and f"only-on-{1 - i}".encode() not in queues, queues
            page.request("GET", "/metrics")
            assert f'queue="only-on-{i}"'.encode() in page.getresponse().read()
            page.close()
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(timeout=10) == 0, tree.log()
    finally:
        tree.close()


def http_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# --- workers die with their supervisor ----------------------------------------------------------------


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped yet has ended: it holds no port, no lock)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def wait_gone(pids: list[int], within: float) -> float:
    """Seconds until every process of ``pids`` has ended; fail if some still run after ``within``."""
    started = time.monotonic()
    while not all(gone(pid) for pid in pids):
        if time.monotonic() - started > within:
            alive = [pid for pid in pids if not gone(pid)]
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes {alive} still ran {within}s after their supervisor died")
        time.sleep(0.02)
    return time.monotonic() - started


def test_kill_9_of_the_supervisor_takes_its_workers_along_and_a_new_one_starts_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def durable(workers: int, port: int) -> list[str]:
        return [*serve_workers(workers, port), "--data-dir", str(data)]

    first = Supervised(tmp_path, 2, durable, log_name="first.log")
    try:
        first.wait_until(lambda: all(answers(address) for address in first.addresses), "every worker to answer")
        with GroupClient.connect(first.addresses) as group:
            group.create("kept")
            group.send("kept", b"one")
            group.send("kept", b"two")
        pids = list(workers_of(first.process.pid).values())
        assert len(pids) == 2
        first.process.kill()
        first.process.wait()
        assert wait_gone(pids, within=5.0) < 2.5
    finally:
        first.close()
    assert not any(answers(address) for address in first.addresses)

    second = Supervised(tmp_path, 2, durable, port=first.port, log_name="second.log")
    try:
        second.wait_until(lambda: all(answers(address) for address in second.addresses), "every worker to answer")
        with GroupClient.connect(second.addresses) as group:
            assert group.stats("kept")["ready"] == 2  # both stores taken over: nothing held them any more
        log = second.log()
        assert "in use" not in log and "restarting" not in log, log
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=15) == 0, second.log()
    finally:
        second.close()


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_a_worker_dies_with_its_parent_by_the_parent_death_signal_alone(tmp_path: Path, how: str) -> None:
    """No lifeline (``--supervisor PID`` without an fd): the kernel's parent-death signal stops the worker."""
    port = free_ports(1)
    log_path = tmp_path / "worker.log"
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"serve = [sys.executable, '-m', 'dbqueue.cli', 'serve', '--port', '{port}']\n"
        "serve += ['--supervisor', str(os.getpid())]\n"
        f"worker = subprocess.Popen(serve, stdout=open({str(log_path)!r}, 'wb'), stderr=subprocess.STDOUT)\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(f"127.0.0.1:{port}"):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        parent.wait()
        wait_gone([worker], within=5.0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
    assert not answers(f"127.0.0.1:{port}")
    assert "stopped" in log_path.read_text()  # SIGTERM: a clean stop, its store closed


def test_a_worker_stops_when_its_lifeline_closes(tmp_path: Path) -> None:
    """The portable way: the supervisor (here the test) lives on, but closes its end of the pipe."""
    port = free_ports(1)
    read_end, write_end = os.pipe()
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dbqueue.cli",
                "serve",
                "--port",
                str(port),
                "--supervisor",
                f"{os.getpid()}:{read_end}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(read_end,),
        )
    os.close(read_end)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(f"127.0.0.1:{port}"):
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        os.close(write_end)
        assert worker.wait(timeout=5) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log = log_path.read_text()
    assert "the supervisor is gone" in log and "Traceback" not in log, log


def test_a_worker_whose_supervisor_is_already_gone_does_not_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(free_ports(1)), "--supervisor", "1"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines()[-1] == "Error: the supervisor (pid 1) is gone: not starting"


# --- restarts back off, and end --------------------------------------------------------------------------


def test_restarts_back_off_with_jitter_and_give_up_after_five_deaths_in_a_minute() -> None:
    from dbqueue.server.workers import RestartPolicy

    top = RestartPolicy(jitter=lambda: 0.999999)
    assert [round(top.died(float(t)) or 0, 3) for t in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert top.died(4.0) is None  # the fifth within the minute
    bottom = RestartPolicy(jitter=lambda: 0.0)
    assert bottom.died(0.0) == 0.25  # half the nominal delay at the least
    spaced = RestartPolicy(jitter=lambda: 0.999999)
    for minute in range(10):  # a worker that dies once a minute is always restarted, after the first delay
        assert round(spaced.died(minute * 61.0) or 0, 3) == 0.5
    capped = RestartPolicy(jitter=lambda: 0.999999, max_failures=100)
    assert max(capped.died(float(t)) or 0 for t in range(20)) <= 15.0


def test_a_supervisor_whose_worker_cannot_listen_gives_up_and_says_why(tmp_path: Path) -> None:
    port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        tree = Supervised(tmp_path, 2, port=port)
        try:
            started = time.monotonic()
            code = tree.process.wait(timeout=60)
            elapsed = time.monotonic() - started
        finally:
            tree.close()
    log = tree.log()
    assert code == 1, log
    assert elapsed < 40, elapsed
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"Error: worker 1 (127.0.0.1:{port + 1}) died 5 times within 60 s; giving up."), log
    assert f"cannot listen on 127.0.0.1:{port + 1}" in last, log
    assert log.count("restarting it in") == 4, log
    # Every line a worker wrote says which worker wrote it: its errors, five times over, included.
    worker_errors = [line for line in log.splitlines() if "cannot listen" in line and not line.startswith("Error:")]
    assert len(worker_errors) == 5 and all(line.startswith("worker 1: Error: ") for line in worker_errors), log
    assert not answers(f"127.0.0.1:{port}")  # the worker that could run was stopped, not left behind
    assert "Traceback" not in log


def test_each_line_a_worker_writes_names_the_worker(supervised: Supervised) -> None:
    log = supervised.log()
    for index, address in enumerate(supervised.addresses):
        listening = [line for line in log.splitlines() if f"listening on {address}" in line]
        assert listening and all(line.startswith(f"worker {index}: ") for line in listening), log

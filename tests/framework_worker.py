"""A framework's own worker (``celery -A ... worker``, ``dramatiq ...``) as a subprocess, and how tests watch it.

Each worker runs in a process group of its own, so a kill takes its pool
processes with it (as an OOM kill or a container stop would); its log goes to
a file, which `Worker.check_log` reads for errors a framework logs and goes
on from. What the worker's tasks did is counted from the files they leave
(`side_effects`), never from log lines. `started_workers` stops, at the end
of a test, every worker the test started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

__all__ = ["TESTS", "Worker", "environment", "started_workers", "wait_for"]

# What a worker's log must not hold: Celery's and Dramatiq's error levels, a traceback, and dbqueue's
# transport's own complaints.
ERROR_MARKS = ("Traceback", "ERROR/", "CRITICAL/", "[ERROR]", "[CRITICAL]", "dbqueue: ")


def environment(
    importable: Sequence[Path], variables: dict[str, str], drop: Sequence[str] = ("DBQUEUE_", "CELERY_")
) -> dict[str, str]:
    """A worker's environment: this process's without the variables that start with one of ``drop``,
    ``importable`` folders (the app's) and this one (`side_effects`) first on PYTHONPATH, and ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(tuple(drop))}
    folders = dict.fromkeys([*(str(folder) for folder in importable), str(TESTS)])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*folders, os.environ.get("PYTHONPATH")]))
    env.update(variables)
    return env


class Worker:
    """One worker subprocess (``python -m <args>``) in its own process group, its log in a file.

    ``stop_grace``: seconds a warm shutdown (SIGTERM) is given before the group is killed.
    """

    def __init__(
        self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path, stop_grace: float = 15.0
    ) -> None:
        self.name = name
        self.stop_grace = stop_grace
        self.log_path = log_dir / f"worker-{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=env,
                cwd=log_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill takes the pool processes with it
            )
        self.group = self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"worker {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def check_log(self) -> None:
        """Fail if the log holds an error or a traceback: a refused acknowledgement is logged and
        the worker goes on, which would otherwise pass unseen."""
        text = self.log_path.read_text(errors="replace")
        for mark in ERROR_MARKS:
            assert mark not in text, f"{mark!r} in the log of worker {self.name}:\n{self.log_tail(80)}"

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, and wait for the main process."""
        os.killpg(self.group, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the group after `stop_grace`; no process stays behind."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(self.stop_grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


@contextlib.contextmanager
def started_workers(
    log_dir: Path, stop_grace: float = 15.0
) -> Iterator[Callable[[str, Sequence[str], dict[str, str]], Worker]]:
    """``start(name, args, env)``, which starts a `Worker`; each one started is stopped on the way out."""
    started: list[Worker] = []

    def start(name: str, args: Sequence[str], env: dict[str, str]) -> Worker:
        worker = Worker(name, args, env, log_dir, stop_grace)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def wait_for(what: str, predicate: Callable[[], bool], alive: Sequence[Worker], timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail at ``timeout``, or as soon as a worker in ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for worker in alive:
            worker.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- worker {worker.name}:\n{worker.log_tail()}" for worker in alive)
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.05)

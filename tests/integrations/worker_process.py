"""A framework's own worker (``celery -A ... worker``, ``dramatiq ...``) as a subprocess, and how tests watch it.

Each worker runs in a process group of its own, so a kill takes its pool
processes with it (as an OOM kill or a container stop would); its log goes to
a file. Tasks leave one file per execution in an output folder, so tests count
what ran, never log lines: `outcomes` lists them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

__all__ = ["HERE", "Worker", "environment", "outcomes", "wait_for"]


def environment(address: str, out: Path, **extra: str) -> dict[str, str]:
    """A worker's environment: this folder importable, the server's address and the output folder."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DBQUEUE_", "CELERY_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "DBQUEUE_TEST_ADDRESS": address,
            "DBQUEUE_TEST_OUT": str(out),
            **extra,
        }
    )
    return env


class Worker:
    """One worker subprocess (``python -m <args>``) in its own process group, its log in a file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=env,
                cwd=log_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        for mark in ("Traceback", "ERROR/", "CRITICAL/", "[ERROR]", "[CRITICAL]", "dbqueue: "):
            assert mark not in text, f"{mark!r} in the log of worker {self.name}:\n{self.log_tail(80)}"

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, and wait for the main process."""
        os.killpg(self.group, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the group after 15 s; no process stays behind."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def outcomes(out: Path, prefix: str) -> list[str]:
    """Names of the side-effect files starting with ``prefix`` (one per execution)."""
    return sorted(path.name for path in out.iterdir() if path.name.startswith(prefix))


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


def leave(out: Path, name: str, content: str = "") -> None:
    """Write one side-effect file, whole or not at all (written aside, then renamed)."""
    aside = out / f".{name}.partial"
    aside.write_text(f"{os.getpgrp()}\n{content}")
    aside.rename(out / name)

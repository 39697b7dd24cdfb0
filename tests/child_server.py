"""`dbqueue serve` with any flags as a child process: for the CLI's own checks, RSS figures, and fd-heavy tests.

`ChildServer` starts ``python -m dbqueue.cli serve --port P <flags>`` with its
log in a file (never a pipe, which a chatty server could fill and block on),
waits until the port accepts a TCP connection, and on `stop` sends SIGTERM and
fails unless the server exits 0. Its `rss` and `peak_rss` read /proc, so they
measure the server alone, not the test process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = ["ChildServer", "free_port", "serve_refusal", "UNHANDLED_MARKERS"]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# What asyncio and uvloop log when a callback raises: a server log holding one of these hid an exception.
UNHANDLED_MARKERS = (
    "Traceback", "Fatal error", "Exception in callback", "exception was never retrieved", "Task was destroyed",
)  # fmt: skip


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "DBQUEUE_AUTH_TOKEN"}
    env.update(extra or {})
    return env


class ChildServer:
    """One `dbqueue serve` process; ``flags`` are passed as they are (``--port`` is added)."""

    def __init__(self, log_dir: Path, *flags: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.flags = list(flags)
        self.port = port or free_port()
        self.env = _environment(env)
        self.log_path = log_dir / f"dbqueue-serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ChildServer:
        """Start the server; return once its port accepts connections, fail if it exits first."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(self.port), *self.flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited with {self.process.returncode} while starting:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"the server did not come up on {self.address}:\n{self.log_tail()}")
                time.sleep(0.02)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _status(self, field: str) -> int:
        """A ``kB`` figure of /proc/PID/status, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def rss(self) -> int:
        """The server's resident memory now, in bytes (Linux)."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The most resident memory the server has had, in bytes (Linux)."""
        return self._status("VmHWM")

    def stop(self) -> None:
        """SIGTERM; fail unless the server exits 0 within `STOP_TIMEOUT` seconds."""
        if not self.running():
            code = self.process.returncode if self.process is not None else None
            pytest.fail(f"the server was no longer running (exit {code}):\n{self.log_tail()}")
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log_tail()}")
        assert code == 0, f"the server exited with {code} after SIGTERM:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the server if it still runs (teardown)."""
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def error_records(self) -> list[str]:
        """Every log record at ERROR or above, each with its traceback lines (the log's format starts records
        with a date)."""
        records: list[str] = []
        for line in self.log_text().splitlines():
            if line[:4].isdigit() and line[4:5] == "-":
                records.append(line)
            elif records:
                records[-1] += "\n" + line
        return [record for record in records if " ERROR " in record or " CRITICAL " in record]

    def assert_no_unhandled_errors(self) -> None:
        """Fail if the server's log shows an exception that escaped a callback."""
        text = self.log_text()
        found = [marker for marker in UNHANDLED_MARKERS if marker in text]
        assert not found, f"the server logged {found}:\n{self.log_tail(80)}"

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def serve_refusal(*flags: str, env: dict[str, str] | None = None, within: float = 10.0) -> tuple[int, str]:
    """Run `dbqueue serve` with ``flags``, which must refuse to start; return (exit code, stdout + stderr).

    A server that starts anyway would serve for ever: it is killed after
    ``within`` seconds and the test fails.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(free_port()), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(env),
    )
    try:
        out, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"dbqueue serve {' '.join(flags)} started instead of refusing:\n{err.decode(errors='replace')}")
    return process.returncode, (out + err).decode(errors="replace")

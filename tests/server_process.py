"""`dbqueue serve` as a child process, for tests that kill and restart a real server.

A `ServerProcess` keeps its data directory and its port across restarts, so
clients reconnect to the same address after a crash. Its log goes to a file in
the data directory's parent (not a pipe, which a chatty server could fill and
block on); failures quote the tail of it.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbqueue import Client, ConnectionLost

__all__ = ["ServerProcess", "free_port", "serve_expecting_failure", "store_bytes"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_command(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), *extra]


def store_bytes(data_dir: Path, *names: str) -> int:
    """The size of the store's files, ``dbqueue.db`` plus its ``-wal`` unless ``names`` says which (0 if missing)."""
    total = 0
    for name in names or ("dbqueue.db", "dbqueue.db-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += (data_dir / name).stat().st_size
    return total


class ServerProcess:
    """One server directory served by a succession of `dbqueue serve` processes on one port."""

    def __init__(self, data_dir: Path, *, port: int | None = None, sync: str = "os") -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.sync = sync
        self.file_size_limit: int | None = None  # RLIMIT_FSIZE for the next start: a disk that fills up
        self.tracebacks_expected = False  # see `check_log`
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start a server on the directory and return once it answers a Hello; fail if it exits first."""
        assert self.process is None or self.process.poll() is not None, "the server is already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                _serve_command(self.port, self.data_dir, "--sync", self.sync, "--log-level", "info"),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limit if self.file_size_limit is not None else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                Client.connect(self.address, timeout=1.0).close()
                return self
            except ConnectionLost:
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited with {self.process.returncode} while starting:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not come up on {self.address}:\n{self.log_tail()}")
                time.sleep(0.02)

    def _limit(self) -> None:
        # In the child, before exec. Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))

    def client(self, timeout: float = 5.0) -> Client:
        return Client.connect(self.address, timeout=timeout)

    def kill(self) -> None:
        """kill -9 the server and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM the server; fail unless it exits 0 within `STOP_TIMEOUT` seconds."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the server did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log_tail()}")
        assert code == 0, f"the server exited with {code} after SIGTERM:\n{self.log_tail()}"

    def stop(self, how: str) -> None:
        """Stop the server by ``how``: "sigterm" (clean) or "sigkill" (a crash)."""
        if how == "sigterm":
            self.terminate()
        elif how == "sigkill":
            self.kill()
        else:
            raise ValueError(how)

    def restart(self, how: str) -> ServerProcess:
        self.stop(how)
        return self.start()

    def wait(self, timeout: float) -> int | None:
        """The exit code if the server exits on its own within ``timeout`` seconds, else None (left running)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        """Kill the server if it still runs (test teardown)."""
        if self.running():
            self.kill()

    def check_log(self) -> None:
        """Fail if the server logged a traceback (an unhandled exception) and none was expected."""
        if not self.tracebacks_expected and "Traceback" in self.log_tail(10**6):
            pytest.fail(f"the server logged a traceback:\n{self.log_tail(60)}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def serve_expecting_failure(data_dir: Path, *extra: str, within: float = START_TIMEOUT) -> tuple[int, str]:
    """Run `dbqueue serve` on ``data_dir``, which must refuse to start; return (exit code, stderr).

    A server that starts anyway would serve for ever: it is killed after
    ``within`` seconds and the test fails.
    """
    process = subprocess.Popen(
        _serve_command(free_port(), data_dir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the server started on {data_dir} instead of refusing it:\n{err.decode(errors='replace')}")
    return process.returncode, (out + err).decode(errors="replace")

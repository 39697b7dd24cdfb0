"""`dbqueue serve` as a real process: it serves, and SIGTERM shuts it down cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from dbqueue import Client, ConnectionLost


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect_when_up(address: str, process: subprocess.Popen[bytes], within: float = 10.0) -> Client:
    deadline = time.monotonic() + within
    while True:
        try:
            return Client.connect(address, timeout=1)
        except ConnectionLost:
            if process.poll() is not None:
                pytest.fail(f"the server exited early with {process.returncode}: {process.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not come up on {address}")
            time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_serve_then_sigterm_exits_zero_promptly() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = connect_when_up(f"127.0.0.1:{port}", process)
        client.create("q")
        id_ = client.send("q", b"hello")
        assert client.read("q", timeout_ms=60_000).id == id_  # held while the server stops
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=5)
        elapsed = time.monotonic() - started
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]
    assert returncode == 0, stderr
    assert elapsed < 2.0
    assert f"listening on 127.0.0.1:{port}" in stderr
    assert "stopped" in stderr
    assert "Traceback" not in stderr


def test_serve_on_a_taken_port_fails_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port)],
            capture_output=True,
            timeout=10,
        )
    assert result.returncode != 0
    assert b"cannot listen" in result.stderr
    assert b"Traceback" not in result.stderr

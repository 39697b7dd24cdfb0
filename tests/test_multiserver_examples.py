"""examples/multiserver.py and examples/multiserver_client.py, run small, so that they keep working."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_workers import Supervised, answers

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
def test_the_multiserver_examples_run_a_validated_load(tmp_path: Path) -> None:
    def example(workers: int, port: int) -> list[str]:
        return [sys.executable, str(EXAMPLES / "multiserver.py"), "--workers", str(workers), "--port", str(port)]

    tree = Supervised(tmp_path, 2, example)
    port = tree.port
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "both members to answer")
        for address in (f"127.0.0.1:{port}-{port + 1}", f"127.0.0.1:{port + 1}"):  # a range, then discovery
            run = subprocess.run(
                [sys.executable, str(EXAMPLES / "multiserver_client.py"), "--address", address,
                 "--producers", "3", "--consumers", "3", "--iterations", "20", "--processes", "2",
                 "--time-limit", "20"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr
            assert "all 1920 messages sent, read and confirmed; every response validated" in run.stdout
            assert "requests/s" in run.stdout
        tree.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert tree.process.wait(timeout=10) == 0, tree.log()
        assert "all workers stopped" in tree.log()
    finally:
        tree.close()

"""A dbqueue server that crashes and comes back under running Celery and Dramatiq workers.

The server is ``dbqueue serve --data-dir`` as a subprocess (`server_process.ServerProcess`), so its
queues and messages, delayed ones included, survive a SIGKILL. Each framework's worker runs
throughout: tasks sent before the crash (some delayed past it) and after it all run, at least once,
with nobody restarting the worker or the producer: both reconnect on their own, as they would to a
restarted Redis.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_environment import environment

from framework_worker import Worker, wait_for
from server_process import ServerProcess
from side_effects import outcomes

FIRST, DELAYED, AFTER = 20, 10, 20


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data").start()
    yield server
    server.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def ran(out: Path, prefix: str) -> set[str]:
    return {name.split("-")[1] for name in outcomes(out, f"done-{prefix}")}


@pytest.mark.timeout(180)
def test_celery_workers_and_producers_ride_out_a_server_crash(
    durable: ServerProcess, out: Path, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    import celery_dbqueue_app

    env = environment(durable.address, out)
    producer = celery_dbqueue_app.make_app(env)
    args = ["celery", "-A", "celery_dbqueue_app", "worker", "--loglevel", "INFO", "--concurrency", "2"]
    worker = Worker("one", args, env, tmp_path)
    try:
        for index in range(FIRST):
            producer.send_task("celery_dbqueue_app.record", args=(f"a{index}",))
        wait_for("the first tasks", lambda: len(ran(out, "a")) == FIRST, [worker])
        for index in range(DELAYED):
            producer.send_task("celery_dbqueue_app.record", args=(f"d{index}",), countdown=3.0)
        durable.restart("sigkill")
        for index in range(AFTER):
            producer.send_task("celery_dbqueue_app.record", args=(f"b{index}",))
        wait_for("the tasks sent after the crash", lambda: len(ran(out, "b")) == AFTER, [worker], timeout=90)
        wait_for("the delayed tasks", lambda: len(ran(out, "d")) == DELAYED, [worker], timeout=60)
    finally:
        worker.stop()


@pytest.mark.timeout(180)
def test_dramatiq_workers_and_producers_ride_out_a_server_crash(
    durable: ServerProcess, out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("dramatiq")
    monkeypatch.setenv("DBQUEUE_TEST_ADDRESS", durable.address)
    monkeypatch.setenv("DBQUEUE_TEST_OUT", str(out))
    sys.modules.pop("dramatiq_dbqueue_app", None)
    app = importlib.import_module("dramatiq_dbqueue_app")
    env = environment(durable.address, out)
    worker = Worker("one", ["dramatiq", "dramatiq_dbqueue_app", "--processes", "1", "--threads", "2"], env, tmp_path)
    try:
        for index in range(FIRST):
            app.record.send(f"a{index}")
        wait_for("the first messages", lambda: len(ran(out, "a")) == FIRST, [worker])
        for index in range(DELAYED):
            app.record.send_with_options(args=(f"d{index}",), delay=3000)
        durable.restart("sigkill")
        deadline = time.monotonic() + 30
        for index in range(AFTER):
            while True:  # Dramatiq's send does not retry: a producer that sends into the restart retries here
                try:
                    app.record.send(f"b{index}")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        wait_for("the messages sent after the crash", lambda: len(ran(out, "b")) == AFTER, [worker], timeout=90)
        wait_for("the delayed messages", lambda: len(ran(out, "d")) == DELAYED, [worker], timeout=60)
    finally:
        worker.stop()
        app.broker.close()
        sys.modules.pop("dramatiq_dbqueue_app", None)

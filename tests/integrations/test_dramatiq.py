"""Dramatiq's own worker (``python -m dramatiq dramatiq_dbqueue_app``) on dbqueue's Dramatiq broker.

The server is a real one on a free port; the worker is a subprocess in a
process group of its own; the test sends through the same broker and waits
with `DbQueueBroker.join`. What ran is counted from the files the actors
leave, one per execution.

* A thousand messages on two worker processes each run exactly once, and
  ``join`` returns once the queue is empty.
* A worker killed with SIGKILL mid-message: its connection closed, the server
  gave the message back at once, and a second worker runs it and what was
  queued behind it.
* A delayed message waits on the server (no delay queue, no worker holds it)
  and does not run early.
* A message that always fails is retried twice, each retry a release with the
  Retries middleware's backoff, and then moved to ``failing.XQ`` by the server
  (its ``dead_lettered`` count, not a copy the client sent): the queue's
  budget of three deliveries comes from its actors' most retries.
* A message of an actor with no retries on that queue fails for good before the
  budget is spent: the server moves it to ``failing.XQ`` all the same (a
  DEAD_LETTER request), with its origin, never a copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("dramatiq", reason="Dramatiq is not installed (pip install 'dbqueue[dramatiq]')")

from app_environment import environment

from dbqueue import Client
from dbqueue.integrations.dramatiq import DbQueueBroker
from framework_worker import Worker, started_workers, wait_for
from side_effects import outcomes


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def app(address: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The app's module imported in this process too (its actors send through its broker)."""
    monkeypatch.setenv("DBQUEUE_TEST_ADDRESS", address)
    monkeypatch.setenv("DBQUEUE_TEST_OUT", str(out))
    import importlib
    import sys

    sys.modules.pop("dramatiq_dbqueue_app", None)
    module = importlib.import_module("dramatiq_dbqueue_app")
    yield module
    module.broker.close()
    sys.modules.pop("dramatiq_dbqueue_app", None)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    with started_workers(tmp_path) as start_worker:

        def start(
            name: str, env: dict[str, str], processes: int = 1, threads: int = 2, queues: str = "tasks"
        ) -> Worker:
            args = [
                "dramatiq", "dramatiq_dbqueue_app", "--processes", str(processes), "--threads", str(threads),
                "--queues", *queues.split(","),
            ]  # fmt: skip
            return start_worker(name, args, env)

        yield start


def stats(address: str, queue: str) -> dict[str, int]:
    with Client.connect(address) as client:
        return client.stats(queue)


@pytest.mark.timeout(240)
def test_a_thousand_messages_each_run_once(
    address: str, out: Path, app: object, workers: Callable[..., Worker]
) -> None:
    broker: DbQueueBroker = app.broker  # type: ignore[attr-defined]
    names = [f"t{i}" for i in range(1000)]
    for name in names[:500]:
        app.record.send(name)  # type: ignore[attr-defined]
    started = [workers("one", environment(address, out), processes=2, threads=4)]
    for name in names[500:]:
        app.record.send(name)  # type: ignore[attr-defined]
    broker.join("tasks", timeout=180_000)
    wait_for("a thousand messages", lambda: len(outcomes(out, "done-")) >= len(names), started, timeout=10)
    time.sleep(1.0)  # long enough for a duplicate to show up, if there were one
    for worker in started:
        worker.check_log()
    assert sorted(name.split("-")[1] for name in outcomes(out, "done-")) == sorted(names)
    figures = stats(address, "tasks")
    assert (figures["ready"], figures["in_flight"], figures["delayed"], figures["confirmed"]) == (0, 0, 0, 1000)


@pytest.mark.timeout(180)
def test_a_message_of_a_killed_worker_runs_again_elsewhere(
    address: str, out: Path, app: object, workers: Callable[..., Worker]
) -> None:
    env = environment(address, out)
    first = workers("first", env, threads=1)
    app.hold.send("held")  # type: ignore[attr-defined]
    behind = [f"b{i}" for i in range(20)]
    for name in behind:
        app.record.send(name)  # type: ignore[attr-defined]
    wait_for("the held message to start", lambda: bool(outcomes(out, "started-held-")), [first])
    first.kill()
    (out / "release-held").touch()
    second = workers("second", env)
    wait_for("the held message to finish", lambda: bool(outcomes(out, "done-held-")), [second])
    wait_for("the messages behind it", lambda: len(outcomes(out, "done-b")) >= len(behind), [second])
    assert len(outcomes(out, "started-held-")) == 2
    assert len(outcomes(out, "done-held-")) == 1
    assert {name.split("-")[1] for name in outcomes(out, "done-b")} == set(behind)
    second.check_log()
    app.broker.join("tasks", timeout=20_000)  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_a_delayed_message_waits_on_the_server_and_never_runs_early(
    address: str, out: Path, app: object, workers: Callable[..., Worker]
) -> None:
    worker = workers("one", environment(address, out))
    sent = time.time()
    app.stamp.send_with_options(args=("late",), delay=2000)  # type: ignore[attr-defined]
    figures = stats(address, "tasks")
    assert (figures["delayed"], figures["in_flight"]) == (1, 0)  # on the server, not held by the worker
    wait_for("the delayed message", lambda: bool(outcomes(out, "stamp-late")), [worker], timeout=30)
    assert float((out / "stamp-late").read_text().split("\n")[1]) >= sent + 2.0


@pytest.mark.timeout(120)
def test_a_message_that_always_fails_is_dead_lettered_by_the_server(
    address: str, out: Path, app: object, workers: Callable[..., Worker]
) -> None:
    worker = workers("one", environment(address, out), queues="failing")
    app.fail.send("doomed")  # type: ignore[attr-defined]
    wait_for("the dead letter", lambda: stats(address, "failing.XQ")["ready"] == 1, [worker], timeout=60)
    attempts = sorted(float((out / name).read_text().split("\n")[1]) for name in outcomes(out, "attempt-doomed-"))
    assert len(attempts) == 3  # the first run and two retries
    assert all(later - earlier >= 0.15 for earlier, later in zip(attempts, attempts[1:], strict=False))  # backoff
    figures = stats(address, "failing")
    assert figures["dead_lettered"] == 1 and figures["confirmed"] == 0  # moved by the server, not copied
    assert (figures["ready"], figures["in_flight"], figures["delayed"]) == (0, 0, 0)
    with Client.connect(address) as client:
        message = client.read("failing.XQ")
    assert message is not None and message.deliveries >= 1 and b"doomed" in message.data
    assert message.origin is not None and (message.origin.queue, message.origin.deliveries) == ("failing", 3)


@pytest.mark.timeout(120)
def test_a_message_that_fails_before_its_queue_budget_is_dead_lettered_by_the_server_too(
    address: str, out: Path, app: object, workers: Callable[..., Worker]
) -> None:
    worker = workers("one", environment(address, out), queues="failing")
    app.fail_at_once.send("early")  # type: ignore[attr-defined]
    wait_for("the dead letter", lambda: stats(address, "failing.XQ")["ready"] == 1, [worker], timeout=60)
    assert len(outcomes(out, "attempt-early-")) == 1
    figures = stats(address, "failing")
    assert (figures["max_deliveries"], figures["dead_lettered"], figures["confirmed"]) == (3, 1, 0)
    assert "dbqueue: " not in worker.log_path.read_text()  # nothing refused (the actor's own error is logged)
    with Client.connect(address) as client:
        message = client.read("failing.XQ")
    assert message is not None and b"early" in message.data
    assert message.origin is not None and (message.origin.queue, message.origin.deliveries) == ("failing", 1)

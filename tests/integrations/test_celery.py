"""Celery's own worker (``python -m celery -A celery_dbqueue_app worker``) on dbqueue's kombu transport.

The server is a real one on a free port (the ``server`` fixture); the worker is
a subprocess started as in production, in a process group of its own; the test
sends through the same app, so kombu's producer side runs too. What ran is
counted from the files the tasks leave, one per execution; what the server
holds is read through dbqueue's own client.

* A thousand tasks on two workers each run exactly once, and the queue ends
  empty: a thousand confirmed, nothing ready or in flight.
* A worker killed with SIGKILL mid-task (its whole process group) acknowledged
  nothing: its connection closed, so the server gave its task back at once (the
  visibility timeout is an hour), and a second worker runs it and what was
  queued behind it.
* A task with a countdown waits on the server (delayed there, not held by a
  worker) and does not run early.
* A task that always fails is retried twice (each retry a delayed message) and
  then rejected into the dead-letter queue.
* Tasks routed to two queues run on one worker that consumes both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("celery", reason="Celery is not installed (pip install 'dbqueue[celery]')")

import celery_dbqueue_app
from app_environment import environment

from dbqueue import Client
from framework_worker import Worker, started_workers, wait_for
from side_effects import outcomes


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    with started_workers(tmp_path) as start_worker:

        def start(name: str, env: dict[str, str], concurrency: int = 2, queues: str = "tasks") -> Worker:
            args = [
                "celery", "-A", "celery_dbqueue_app", "worker", "--loglevel", "INFO", "--pool", "prefork",
                "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--queues", queues,
            ]  # fmt: skip
            return start_worker(name, args, env)

        yield start


def stats(address: str, queue: str) -> dict[str, int]:
    with Client.connect(address) as client:
        return client.stats(queue)


@pytest.mark.timeout(240)
def test_a_thousand_tasks_each_run_once(address: str, out: Path, workers: Callable[..., Worker]) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    names = [f"t{i}" for i in range(1000)]
    for name in names[:500]:
        producer.send_task("celery_dbqueue_app.record", args=(name,))
    started = [workers("one", env, concurrency=4), workers("two", env, concurrency=4)]
    for name in names[500:]:
        producer.send_task("celery_dbqueue_app.record", args=(name,))
    wait_for("a thousand tasks", lambda: len(outcomes(out, "done-")) >= len(names), started, timeout=180)
    wait_for("the acknowledgements", lambda: stats(address, "tasks")["confirmed"] == len(names), started, timeout=20)
    time.sleep(1.0)  # long enough for a duplicate to show up, if there were one
    for worker in started:
        worker.check_log()
    ran = [name.split("-")[1] for name in outcomes(out, "done-")]
    assert sorted(ran) == sorted(names)  # each ran, and once
    figures = stats(address, "tasks")
    assert (figures["ready"], figures["in_flight"], figures["delayed"]) == (0, 0, 0)
    assert figures["confirmed"] == len(names)


@pytest.mark.timeout(180)
def test_a_task_of_a_killed_worker_runs_again_elsewhere(
    address: str, out: Path, workers: Callable[..., Worker]
) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    first = workers("first", env, concurrency=1)
    producer.send_task("celery_dbqueue_app.hold", args=("held",))
    behind = [f"b{i}" for i in range(20)]
    for name in behind:
        producer.send_task("celery_dbqueue_app.record", args=(name,))
    wait_for("the held task to start", lambda: bool(outcomes(out, "started-held-")), [first])
    first.kill()
    (out / "release-held").touch()
    second = workers("second", env, concurrency=2)
    wait_for("the held task to finish", lambda: bool(outcomes(out, "done-held-")), [second], timeout=60)
    wait_for("the tasks behind it", lambda: len(outcomes(out, "done-b")) >= len(behind), [second], timeout=60)
    assert len(outcomes(out, "started-held-")) == 2  # on the killed worker, then on the second
    assert len(outcomes(out, "done-held-")) == 1
    assert {name.split("-")[1] for name in outcomes(out, "done-b")} == set(behind)
    second.check_log()
    wait_for("the acknowledgements", lambda: stats(address, "tasks")["in_flight"] == 0, [second], timeout=20)


@pytest.mark.timeout(120)
def test_a_countdown_waits_on_the_server_and_never_runs_early(
    address: str, out: Path, workers: Callable[..., Worker]
) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    worker = workers("one", env)
    wait_for("the worker's queue", lambda: _exists(address, "tasks"), [worker])
    sent = time.time()
    producer.send_task("celery_dbqueue_app.stamp", args=("late",), countdown=2.0)
    figures = stats(address, "tasks")
    assert (figures["delayed"], figures["in_flight"]) == (1, 0)  # on the server, not held by the worker
    wait_for("the delayed task", lambda: bool(outcomes(out, "stamp-late")), [worker], timeout=30)
    ran = float((out / "stamp-late").read_text().split("\n")[1])
    assert ran >= sent + 2.0


@pytest.mark.timeout(120)
def test_a_task_that_always_fails_ends_in_the_dead_letter_queue(
    address: str, out: Path, workers: Callable[..., Worker]
) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    worker = workers("one", env)
    producer.send_task("celery_dbqueue_app.fail", args=("doomed",))
    wait_for("the dead letter", lambda: _ready(address, "tasks-dead") == 1, [worker], timeout=60)
    assert outcomes(out, "attempt-doomed-") == ["attempt-doomed-0", "attempt-doomed-1", "attempt-doomed-2"]
    with Client.connect(address) as client:
        message = client.read("tasks-dead")
    assert message is not None and b"celery_dbqueue_app.fail" in message.data
    # Moved by the server (a reject, before the queue's budget of 5 is spent), not copied: it keeps its origin.
    assert message.origin is not None and (message.origin.queue, message.origin.deliveries) == ("tasks", 1)
    figures = stats(address, "tasks")
    assert (figures["dead_lettered"], figures["confirmed"]) == (1, 2)  # a Celery retry is a new message
    wait_for("the queue to empty", lambda: stats(address, "tasks")["in_flight"] == 0, [worker], timeout=20)


@pytest.mark.timeout(120)
def test_tasks_routed_to_two_queues_run_on_one_worker(address: str, out: Path, workers: Callable[..., Worker]) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    worker = workers("both", env, queues="alpha,beta")
    for index in range(10):
        producer.send_task("celery_dbqueue_app.alpha", args=(f"a{index}",))
        producer.send_task("celery_dbqueue_app.beta", args=(f"b{index}",))
    wait_for("both queues' tasks", lambda: len(outcomes(out, "alpha-")) + len(outcomes(out, "beta-")) >= 20, [worker])
    time.sleep(2.5)  # idle: the worker waits on both queues at once; then one more on each
    producer.send_task("celery_dbqueue_app.beta", args=("late",))
    producer.send_task("celery_dbqueue_app.alpha", args=("late",))
    wait_for("the late ones", lambda: len(outcomes(out, "alpha-")) + len(outcomes(out, "beta-")) >= 22, [worker])
    assert stats(address, "alpha")["confirmed"] == stats(address, "beta")["confirmed"] == 11


def _exists(address: str, queue: str) -> bool:
    with Client.connect(address) as client:
        return any(entry["name"] == queue for entry in client.list_queues())


def _ready(address: str, queue: str) -> int:
    try:
        return stats(address, queue)["ready"]
    except Exception:
        return 0


@pytest.mark.timeout(120)
def test_inspect_and_control_reach_every_worker(address: str, out: Path, workers: Callable[..., Worker]) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    started = [workers("one", env), workers("two", env)]

    def names(replies: dict[str, object] | None) -> set[str]:
        return {name.split("@")[0] for name in replies or {}}

    wait_for(
        "both workers to answer a ping",
        lambda: names(producer.control.inspect(timeout=1.0).ping()) == {"one", "two"},
        started,
    )
    inspect = producer.control.inspect(timeout=2.0)
    queues = inspect.active_queues() or {}
    assert names(queues) == {"one", "two"}
    assert all([entry["name"] for entry in entries] == ["tasks"] for entries in queues.values())
    # A control command to one worker: it starts consuming another queue, and a task sent there runs on it.
    one = next(name for name in queues if name.startswith("one@"))
    reply = producer.control.add_consumer("extra", reply=True, destination=[one], timeout=2.0)
    assert reply and "ok" in reply[0][one]
    producer.send_task("celery_dbqueue_app.record", args=("extra",), queue="extra")
    wait_for("the task on the added queue", lambda: bool(outcomes(out, "done-extra-")), started)
    # The replies' queues and bindings are gone once read; the workers' mailboxes stay while they run.
    with Client.connect(address) as client:
        left = [entry["name"] for entry in client.list_queues()]
    assert not [name for name in left if "reply.celery.pidbox" in name], left
    mailboxes = [name for name in left if name.endswith(".celery.pidbox") and not name.startswith("_kombu.binding")]
    assert len(mailboxes) == 2, left
    for worker in started:
        worker.check_log()
        worker.stop()  # a warm shutdown: the worker deletes its mailbox and its binding
    with Client.connect(address) as client:
        left = [entry["name"] for entry in client.list_queues()]
    assert not [name for name in left if "pidbox" in name], left

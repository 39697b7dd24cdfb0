"""A Celery warm shutdown (SIGTERM) on dbqueue's transport finishes the running task and gives the prefetched
ones back at once, as Celery's Redis transport does.

A worker of concurrency 1 and prefetch 4 (`celery_prefetch_app`; prefork, or solo: the task runs in the
main process, inside the transport's hand-off) starts a task that runs until the test
lets it finish, with ten quick tasks queued behind it; it has taken the running one and prefetched more.
On SIGTERM (``Warm shutdown``), while the first task still runs:

* every message the transport read and had not handed to Celery is back on the server at once (released:
  ready, at the front of its queue); in flight stay the running task and at most one more, the one
  Celery's synchronous loop was handing to its full pool when the signal came (Celery's: it runs);
* the worker takes nothing more, however long the running task takes;
* once the running task is let finish, the worker acknowledges it (and the one it held) and exits, and a
  second worker runs the others, each once.

Before the fix, the worker went on taking and running tasks after SIGTERM (its transport's reads did not
stop with the consumer, and its prefetched messages stayed held until their tasks ran).
"""

from __future__ import annotations

import signal
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

        def start(name: str, env: dict[str, str], pool: str = "prefork") -> Worker:
            args = [
                "celery", "-A", "celery_prefetch_app", "worker", "--loglevel", "INFO", "--pool", pool,
                "--concurrency", "1", "--hostname", f"{name}@%h", "--queues", "tasks",
            ]  # fmt: skip
            return start_worker(name, args, env)

        yield start


def stats(address: str) -> dict[str, int]:
    with Client.connect(address) as client:
        return client.stats("tasks")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_warm_shutdown_gives_the_prefetched_tasks_back_at_once(
    address: str, out: Path, workers: Callable[..., Worker], pool: str
) -> None:
    env = environment(address, out)
    producer = celery_dbqueue_app.make_app(env)
    behind = [f"b{i}" for i in range(10)]
    producer.send_task("celery_dbqueue_app.hold", args=("held",))
    for name in behind:
        producer.send_task("celery_dbqueue_app.record", args=(name,))
    first = workers("first", env, pool)
    wait_for("the held task to start", lambda: bool(outcomes(out, "started-held-")), [first])
    wait_for("the prefetch", lambda: stats(address)["in_flight"] > 1, [first], timeout=20)
    first.process.send_signal(signal.SIGTERM)
    # Held in flight now: the running task, and at most the one Celery's loop was handing to its full pool
    # (Celery's own: it runs before the exit). Whatever else the transport had read is back at once.
    wait_for("the prefetched tasks back", lambda: stats(address)["in_flight"] <= 2, [first], timeout=2)
    time.sleep(3.0)  # the worker's reads would have taken more by now (its waits are a second)
    figures = stats(address)
    assert figures["in_flight"] <= 2 and figures["ready"] + figures["in_flight"] == 1 + len(behind), figures
    assert outcomes(out, "done-b") == []  # none of the others ran meanwhile
    assert first.process.poll() is None  # still running the held task
    (out / "release-held").touch()
    assert first.process.wait(30) == 0
    assert len(outcomes(out, "done-held-")) == 1
    ran_first = outcomes(out, "done-b")
    assert len(ran_first) <= 1, ran_first  # the one Celery was handed, if any: nothing taken after SIGTERM
    assert stats(address)["ready"] == len(behind) - len(ran_first)
    first.check_log()
    second = workers("second", env)
    wait_for("the others", lambda: len(outcomes(out, "done-b")) >= len(behind), [second], timeout=60)
    assert sorted(name.split("-")[1] for name in outcomes(out, "done-b")) == sorted(behind)
    assert len(outcomes(out, "started-held-")) == 1  # acknowledged before the exit: never run again
    wait_for("the acknowledgements", lambda: stats(address)["in_flight"] == 0, [second], timeout=20)
    second.check_log()

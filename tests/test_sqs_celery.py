"""Celery workers on Celery's own SQS transport (kombu's, with pycurl) against ``dbqueue serve --http-port``.

The server is a ``dbqueue serve --http-port PORT`` subprocess with its
credentials in ``DBQUEUE_SQS_ACCESS_KEY_ID`` / ``DBQUEUE_SQS_SECRET_ACCESS_KEY``;
its log must show no unhandled exception, and it must stop cleanly on SIGTERM.

The worker is a subprocess started as one would start it in production,
``python -m celery -A celery_sqs_app worker``, its broker URL
``sqs://KEY:SECRET@host:port`` pointing at the server's HTTP port
(`celery_sqs_app` says how it is configured); the test sends tasks through the same app, so
kombu's producer side (boto3's SendMessage) is exercised too. What ran is
counted from the files the tasks leave, one per execution, never from log
lines; what the server holds is read through dbqueue's own client.

* Forty tasks run end to end on a worker of two processes, each exactly once,
  and the queue ends empty: forty confirmed, nothing ready or in flight.
* A worker killed with SIGKILL mid-task (its whole process group, as an OOM
  kill or a container stop leaves it) acknowledged nothing: its task comes
  back when the visibility timeout ends, and a second worker runs it to
  completion, with the task queued behind it. The held task started on each
  worker and finished once, on the second.

The logs of the workers that were not killed must hold no error and no
traceback: kombu logs a refused DeleteMessage or ChangeMessageVisibility and
goes on, which would otherwise pass unseen.

Skipped, saying why, when Celery or pycurl (kombu's SQS transport needs
both: ``pip install "celery[sqs]"``) cannot be imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason='Celery is not installed (pip install "celery[sqs]")')
pytest.importorskip("pycurl", reason='pycurl is not installed (kombu\'s SQS transport needs it: "celery[sqs]")')

import celery_sqs_app
from dbqueue import Client
from framework_worker import Worker, environment, started_workers, wait_for
from side_effects import left_by, outcomes
from sqs_serving import Serving, serve_sqs

QUEUE = "celery-tasks"
ACCESS_KEY = "AKIDCELERYWORKER"
SECRET_KEY = "celery/worker+secret"  # "/" and "+": kombu wants them percent-encoded in the broker URL


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    with serve_sqs(tmp_path, ACCESS_KEY, SECRET_KEY) as server:
        yield server


def environment_for(serving: Serving, out: Path, visibility: int) -> dict[str, str]:
    """The worker's environment: the ``DBQUEUE_CELERY_*`` variables `celery_sqs_app` reads, and no AWS settings."""
    variables = {
        "AWS_CONFIG_FILE": str(out / "no-such-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(out / "no-such-credentials"),
        "DBQUEUE_CELERY_ENDPOINT": f"127.0.0.1:{serving.http_port}",
        "DBQUEUE_CELERY_ACCESS_KEY": ACCESS_KEY,
        "DBQUEUE_CELERY_SECRET_KEY": SECRET_KEY,
        "DBQUEUE_CELERY_QUEUE": QUEUE,
        "DBQUEUE_CELERY_VISIBILITY": str(visibility),
        "DBQUEUE_CELERY_OUT": str(out),
    }
    return environment([], variables, drop=("AWS_", "DBQUEUE_", "CELERY_"))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``start(name, environment, concurrency=2)``: a ``celery worker`` of `celery_sqs_app`; a warm shutdown
    (SIGTERM) gets 20 s before its process group is killed."""
    with started_workers(tmp_path, stop_grace=20.0) as start_worker:

        def start(name: str, environment: dict[str, str], concurrency: int = 2) -> Worker:
            args = [
                "celery", "-A", "celery_sqs_app", "worker",
                "--loglevel", "INFO", "--pool", "prefork", "--concurrency", str(concurrency),
                "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            return start_worker(name, args, environment)

        yield start


def queue_stats(serving: Serving) -> dict[str, Any]:
    with Client.connect(serving.address) as native:
        return native.stats(QUEUE)


@pytest.mark.timeout(180)
def test_tasks_run_end_to_end_on_a_celery_worker(
    serving: Serving, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    environment = environment_for(serving, out, visibility=30)
    producer = celery_sqs_app.make_app(environment)
    try:
        names = [f"t{i}" for i in range(40)]
        for name in names[:20]:
            producer.send_task("celery_sqs_app.write", args=(name,))
        worker = workers("one", environment)  # the first twenty wait in the queue for it
        for name in names[20:]:
            producer.send_task("celery_sqs_app.write", args=(name,))
        wait_for("forty tasks to run", lambda: len(outcomes(out, "done-")) >= len(names), [worker])
        time.sleep(1.0)  # long enough for a duplicate to show up, if there were one
        done = [name.split("-")[1] for name in outcomes(out, "done-")]
        assert sorted(done) == sorted(names)  # each task ran, and ran once
        assert {left_by(out, name) for name in outcomes(out, "done-")} == {worker.group}
        # Each acknowledgement was a DeleteMessage of a current receipt: confirmed, nothing left.
        wait_for(
            "the acknowledgements",
            lambda: queue_stats(serving)["confirmed"] == len(names),
            [worker],
            timeout=10,
        )
        stats = queue_stats(serving)
        assert (stats["ready"], stats["in_flight"], stats["enqueued"], stats["requeued"]) == (0, 0, len(names), 0)
        worker.stop()
        assert worker.process.returncode == 0, worker.log_tail()
        worker.check_log()
    finally:
        producer.close()


@pytest.mark.timeout(180)
def test_a_task_of_a_worker_killed_mid_task_completes_on_another(
    serving: Serving, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    visibility = 2
    environment = environment_for(serving, out, visibility=visibility)
    producer = celery_sqs_app.make_app(environment)
    try:
        first = workers("first", environment, concurrency=1)
        producer.send_task("celery_sqs_app.hold", args=("x",))
        wait_for("the held task to start", lambda: len(outcomes(out, "started-x-")) == 1, [first])
        producer.send_task("celery_sqs_app.write", args=("after",))  # prefetched by the busy worker, or not
        wait_for("the held task's message in flight", lambda: queue_stats(serving)["in_flight"] >= 1, [first])
        (started,) = outcomes(out, "started-x-")
        assert left_by(out, started) == first.group
        first.kill()
        killed_at = time.monotonic()
        assert outcomes(out, "done-") == []  # it died mid-task
        (out / "release-x").write_text("")

        second = workers("second", environment, concurrency=1)
        wait_for("the held task to finish again", lambda: len(outcomes(out, "done-")) == 2, [second])
        assert time.monotonic() - killed_at >= visibility - 0.5  # not before its visibility timeout ended
        (done_x,) = outcomes(out, "done-x-")
        assert left_by(out, done_x) == second.group
        (done_after,) = outcomes(out, "done-after-")
        assert left_by(out, done_after) == second.group
        starts = outcomes(out, "started-x-")
        assert len(starts) == 2  # once on each worker
        assert {left_by(out, name) for name in starts} == {first.group, second.group}
        wait_for("the acknowledgements", lambda: queue_stats(serving)["confirmed"] == 2, [second], timeout=10)
        stats = queue_stats(serving)
        assert (stats["ready"], stats["in_flight"], stats["enqueued"]) == (0, 0, 2)
        assert stats["requeued"] >= 1  # the held task came back when its visibility timeout ended
        second.stop()
        assert second.process.returncode == 0, second.log_tail()
        second.check_log()
    finally:
        producer.close()

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

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason='Celery is not installed (pip install "celery[sqs]")')
pytest.importorskip("pycurl", reason='pycurl is not installed (kombu\'s SQS transport needs it: "celery[sqs]")')

import celery_sqs_app
from dbqueue import Client
from sqs_serving import Serving, serve_sqs

TESTS = Path(__file__).resolve().parent
QUEUE = "celery-tasks"
WAIT = 60.0  # seconds for a worker to get through what a test sends
ACCESS_KEY = "AKIDCELERYWORKER"
SECRET_KEY = "celery/worker+secret"  # "/" and "+": kombu wants them percent-encoded in the broker URL


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    with serve_sqs(tmp_path, ACCESS_KEY, SECRET_KEY) as server:
        yield server


def environment_for(serving: Serving, out: Path, visibility: int) -> dict[str, str]:
    """The worker's environment: the ``DBQUEUE_CELERY_*`` variables `celery_sqs_app` reads, and no AWS settings."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DBQUEUE_", "CELERY_"))
    }
    environment.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            "AWS_CONFIG_FILE": str(out / "no-such-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(out / "no-such-credentials"),
            "DBQUEUE_CELERY_ENDPOINT": f"127.0.0.1:{serving.http_port}",
            "DBQUEUE_CELERY_ACCESS_KEY": ACCESS_KEY,
            "DBQUEUE_CELERY_SECRET_KEY": SECRET_KEY,
            "DBQUEUE_CELERY_QUEUE": QUEUE,
            "DBQUEUE_CELERY_VISIBILITY": str(visibility),
            "DBQUEUE_CELERY_OUT": str(out),
        }
    )
    return environment


class Worker:
    """One ``celery worker`` subprocess in a process group of its own, its log in a file."""

    def __init__(self, name: str, environment: dict[str, str], log_dir: Path, concurrency: int) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "celery_sqs_app", "worker",
                    "--loglevel", "INFO", "--pool", "prefork", "--concurrency", str(concurrency),
                    "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                ],
                env=environment,
                cwd=log_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill takes the pool processes with it
            )  # fmt: skip
        self.group = self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"worker {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def check_log(self) -> None:
        """Fail if the log holds an error or a traceback (kombu logs a refused request and goes on)."""
        text = self.log_path.read_text(errors="replace")
        assert "Traceback" not in text and "ERROR/" not in text and "CRITICAL/" not in text, self.log_tail(80)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, and wait for the main process."""
        os.killpg(self.group, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the group if it takes more than 20 s; no process stays behind."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(name: str, environment: dict[str, str], concurrency: int = 2) -> Worker:
        worker = Worker(name, environment, tmp_path, concurrency)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def files(out: Path, prefix: str) -> list[Path]:
    return sorted(path for path in out.iterdir() if path.name.startswith(prefix))


def wait_for(
    what: str, predicate: Callable[[], bool], alive: list[Worker], timeout: float = WAIT, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail at ``timeout``, or as soon as a worker in ``alive`` has exited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for worker in alive:
            worker.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- worker {worker.name}:\n{worker.log_tail()}" for worker in alive)
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(interval)


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
        wait_for("forty tasks to run", lambda: len(files(out, "done-")) >= len(names), [worker])
        time.sleep(1.0)  # long enough for a duplicate to show up, if there were one
        done = [path.name.split("-")[1] for path in files(out, "done-")]
        assert sorted(done) == sorted(names)  # each task ran, and ran once
        assert {path.read_text().split()[0] for path in files(out, "done-")} == {str(worker.group)}
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
        wait_for("the held task to start", lambda: len(files(out, "started-x-")) == 1, [first])
        producer.send_task("celery_sqs_app.write", args=("after",))  # prefetched by the busy worker, or not
        wait_for("the held task's message in flight", lambda: queue_stats(serving)["in_flight"] >= 1, [first])
        (started,) = files(out, "started-x-")
        assert started.read_text().split()[0] == str(first.group)
        first.kill()
        killed_at = time.monotonic()
        assert files(out, "done-") == []  # it died mid-task
        (out / "release-x").write_text("")

        second = workers("second", environment, concurrency=1)
        wait_for("the held task to finish again", lambda: len(files(out, "done-")) == 2, [second])
        assert time.monotonic() - killed_at >= visibility - 0.5  # not before its visibility timeout ended
        (done_x,) = files(out, "done-x-")
        assert done_x.read_text().split()[0] == str(second.group)
        (done_after,) = files(out, "done-after-")
        assert done_after.read_text().split()[0] == str(second.group)
        starts = files(out, "started-x-")
        assert len(starts) == 2  # once on each worker
        assert {path.read_text().split()[0] for path in starts} == {str(first.group), str(second.group)}
        wait_for("the acknowledgements", lambda: queue_stats(serving)["confirmed"] == 2, [second], timeout=10)
        stats = queue_stats(serving)
        assert (stats["ready"], stats["in_flight"], stats["enqueued"]) == (0, 0, 2)
        assert stats["requeued"] >= 1  # the held task came back when its visibility timeout ended
        second.stop()
        assert second.process.returncode == 0, second.log_tail()
        second.check_log()
    finally:
        producer.close()

"""A Celery app on dbqueue's kombu transport: what tests/integrations/test_celery.py runs.

``python -m celery -A celery_dbqueue_app worker`` with this folder on
``PYTHONPATH`` (and tests/, for `side_effects`) and ``DBQUEUE_TEST_ADDRESS``
(``host:port`` of the server) and ``DBQUEUE_TEST_OUT`` (the folder the tasks
leave their side effects in: see `side_effects`). Tasks
are acknowledged late; the queue ``tasks`` has a dead-letter queue,
``tasks-dead``, which takes a task that failed for good.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery

import dbqueue.integrations.celery  # noqa: F401  # registers dbqueue:// with kombu
import side_effects
from side_effects import leave


def make_app(environment: Mapping[str, str]) -> Celery:
    app = Celery("celery_dbqueue_app")
    app.conf.update(
        broker_url=f"dbqueue://{environment.get('DBQUEUE_TEST_ADDRESS', '127.0.0.1:3003')}",
        broker_transport_options={
            "wait_time_seconds": 1.0,
            "queue_options": {"tasks": {"dead_letter_queue": "tasks-dead", "max_deliveries": 5}},
        },
        broker_connection_retry_on_startup=True,
        task_default_queue="tasks",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,  # a task failed for good is rejected: to the dead-letter queue
        task_routes={"celery_dbqueue_app.alpha": {"queue": "alpha"}, "celery_dbqueue_app.beta": {"queue": "beta"}},
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    out = Path(environment.get("DBQUEUE_TEST_OUT", "."))

    @app.task(name="celery_dbqueue_app.record")
    def record(name: str) -> None:
        leave(out, f"done-{name}-{os.getpid()}-{secrets.token_hex(4)}")

    @app.task(name="celery_dbqueue_app.stamp")
    def stamp(name: str) -> None:
        leave(out, f"stamp-{name}", repr(time.time()))

    @app.task(name="celery_dbqueue_app.alpha")
    def alpha(name: str) -> None:
        leave(out, f"alpha-{name}-{secrets.token_hex(4)}")

    @app.task(name="celery_dbqueue_app.beta")
    def beta(name: str) -> None:
        leave(out, f"beta-{name}-{secrets.token_hex(4)}")

    @app.task(name="celery_dbqueue_app.hold")
    def hold(name: str) -> None:
        side_effects.hold(out, name)

    @app.task(name="celery_dbqueue_app.fail", bind=True, max_retries=2, default_retry_delay=0.3)
    def fail(self: Any, name: str) -> None:
        leave(out, f"attempt-{name}-{self.request.retries}")
        raise self.retry(exc=ValueError(f"{name} always fails"))

    return app


app = make_app(os.environ)

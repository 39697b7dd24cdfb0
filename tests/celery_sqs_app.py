"""A Celery app on Celery's own SQS transport, pointed at dbqueue's SQS listener: what `test_sqs_celery` runs.

A worker starts it as a deployed worker would, configured from its
environment: ``python -m celery -A celery_sqs_app worker`` with this folder on
``PYTHONPATH`` and

* ``DBQUEUE_CELERY_ENDPOINT``: ``host:port`` of the SQS listener (plain HTTP);
* ``DBQUEUE_CELERY_ACCESS_KEY`` / ``DBQUEUE_CELERY_SECRET_KEY``: the
  credentials, written into ``broker_url`` percent-encoded, as kombu wants a
  secret that holds ``/`` or ``+``;
* ``DBQUEUE_CELERY_QUEUE``: the SQS queue the tasks go to (kombu creates it);
* ``DBQUEUE_CELERY_VISIBILITY``: the visibility timeout in seconds, which is
  what brings back the task of a worker that died before acknowledging it;
* ``DBQUEUE_CELERY_OUT``: the folder the tasks write their side effects to.

The broker is kombu's SQS transport unchanged: the broker URL's host is the
endpoint (``is_secure`` False: ``http://``), boto3 sends, and the worker
receives, acknowledges (DeleteMessage) and long-polls through kombu's
asynchronous client (pycurl). Tasks are acknowledged late, after they ran, so a
task whose worker is killed mid-run is not lost.

Each task leaves files, one per execution (`side_effects`), so the test
counts what ran, not log lines: ``done-NAME-PID-NONCE`` for `write`;
``started-NAME-PID`` and ``done-NAME-PID`` for `hold`, which waits for
``release-NAME`` to appear before finishing (the test kills its worker in
between). Each file holds the writing process's group id, which tells the two
workers of a test apart.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from celery import Celery

import side_effects
from side_effects import leave

REGION = "us-east-1"


def settings(environment: Mapping[str, str]) -> dict[str, Any]:
    """The Celery configuration the ``DBQUEUE_CELERY_*`` variables of ``environment`` describe."""
    key = quote(environment.get("DBQUEUE_CELERY_ACCESS_KEY", "AKID"), safe="")
    secret = quote(environment.get("DBQUEUE_CELERY_SECRET_KEY", "secret"), safe="")
    endpoint = environment.get("DBQUEUE_CELERY_ENDPOINT", "127.0.0.1:9324")
    return {
        "broker_url": f"sqs://{key}:{secret}@{endpoint}",
        "broker_transport_options": {
            "region": REGION,
            "is_secure": False,
            "visibility_timeout": int(environment.get("DBQUEUE_CELERY_VISIBILITY", "30")),
            "wait_time_seconds": 1,  # long polls of a second: a stopping worker is not held up for long
            "polling_interval": 0.1,
        },
        "broker_connection_retry_on_startup": True,
        "task_default_queue": environment.get("DBQUEUE_CELERY_QUEUE", "celery-tasks"),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # SQS has no fanout: Celery's remote control and events are not for this transport.
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
    }


def make_app(environment: Mapping[str, str]) -> Celery:
    """A Celery app configured from ``environment``, with the tasks the test sends."""
    app = Celery("celery_sqs_app")
    app.conf.update(settings(environment))
    out = Path(environment.get("DBQUEUE_CELERY_OUT", "."))

    @app.task(name="celery_sqs_app.write")
    def write(name: str) -> None:
        leave(out, f"done-{name}-{os.getpid()}-{secrets.token_hex(4)}")

    @app.task(name="celery_sqs_app.hold")
    def hold(name: str) -> None:
        side_effects.hold(out, name)

    return app


app = make_app(os.environ)

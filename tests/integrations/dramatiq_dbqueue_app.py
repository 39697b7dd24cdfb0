"""A Dramatiq app on dbqueue's broker: what tests/integrations/test_dramatiq.py runs.

``python -m dramatiq dramatiq_dbqueue_app`` with this folder on ``PYTHONPATH``
and ``DBQUEUE_TEST_ADDRESS`` (``host:port`` of the server) and
``DBQUEUE_TEST_OUT`` (the folder the actors leave their side effects in). The
queue ``failing`` gets a budget of three deliveries from its actors' most
retries (`fail`'s two); `fail_at_once` (no retries) fails for good before
that budget is spent.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import dramatiq
from worker_process import leave

from dbqueue.integrations.dramatiq import DbQueueBroker

HOLD_LIMIT = 60.0

broker = DbQueueBroker(f"dbqueue://{os.environ.get('DBQUEUE_TEST_ADDRESS', '127.0.0.1:3003')}")
dramatiq.set_broker(broker)
out = Path(os.environ.get("DBQUEUE_TEST_OUT", "."))


@dramatiq.actor(queue_name="tasks")
def record(name: str) -> None:
    leave(out, f"done-{name}-{os.getpid()}-{secrets.token_hex(4)}")


@dramatiq.actor(queue_name="tasks")
def stamp(name: str) -> None:
    leave(out, f"stamp-{name}", repr(time.time()))


@dramatiq.actor(queue_name="tasks")
def hold(name: str) -> None:
    leave(out, f"started-{name}-{os.getpid()}")
    deadline = time.monotonic() + HOLD_LIMIT
    while not (out / f"release-{name}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"release-{name} did not appear within {HOLD_LIMIT} s")
        time.sleep(0.05)
    leave(out, f"done-{name}-{os.getpid()}")


@dramatiq.actor(queue_name="failing", max_retries=2, min_backoff=300, max_backoff=600)
def fail(name: str) -> None:
    leave(out, f"attempt-{name}-{time.time():.3f}", repr(time.time()))
    raise ValueError(f"{name} always fails")


@dramatiq.actor(queue_name="failing", max_retries=0)
def fail_at_once(name: str) -> None:
    leave(out, f"attempt-{name}-{time.time():.3f}", repr(time.time()))
    raise ValueError(f"{name} fails, and is not retried")

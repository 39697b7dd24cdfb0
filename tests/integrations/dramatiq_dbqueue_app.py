"""A Dramatiq app on dbqueue's broker: what tests/integrations/test_dramatiq.py runs.

``python -m dramatiq dramatiq_dbqueue_app`` with this folder on ``PYTHONPATH``
(and tests/, for `side_effects`) and ``DBQUEUE_TEST_ADDRESS`` (``host:port``
of the server) and ``DBQUEUE_TEST_OUT`` (the folder the actors leave their
side effects in: see `side_effects`). The
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

import side_effects
from dbqueue.integrations.dramatiq import DbQueueBroker
from side_effects import leave

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
    side_effects.hold(out, name)


@dramatiq.actor(queue_name="failing", max_retries=2, min_backoff=300, max_backoff=600)
def fail(name: str) -> None:
    leave(out, f"attempt-{name}-{time.time():.3f}", repr(time.time()))
    raise ValueError(f"{name} always fails")


@dramatiq.actor(queue_name="failing", max_retries=0)
def fail_at_once(name: str) -> None:
    leave(out, f"attempt-{name}-{time.time():.3f}", repr(time.time()))
    raise ValueError(f"{name} fails, and is not retried")

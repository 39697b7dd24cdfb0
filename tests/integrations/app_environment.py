"""The environment the test apps of this folder (`celery_dbqueue_app`, `dramatiq_dbqueue_app`) read.

``DBQUEUE_TEST_ADDRESS`` is ``host:port`` of the server, ``DBQUEUE_TEST_OUT``
the folder their tasks leave their side effects in (`side_effects`); this
folder and tests/ are importable.
"""

from __future__ import annotations

from pathlib import Path

from framework_worker import environment as worker_environment

HERE = Path(__file__).resolve().parent

__all__ = ["HERE", "environment"]


def environment(address: str, out: Path, **extra: str) -> dict[str, str]:
    """A worker's environment: the server's address, the output folder and ``extra``; no inherited
    ``DBQUEUE_`` or ``CELERY_`` variable."""
    return worker_environment([HERE], {"DBQUEUE_TEST_ADDRESS": address, "DBQUEUE_TEST_OUT": str(out), **extra})

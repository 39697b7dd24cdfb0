"""What a test task leaves behind, and how a test counts it: one file per execution.

The tasks of the Celery and Dramatiq test apps (`celery_sqs_app`,
``integrations/celery_dbqueue_app``, ``integrations/dramatiq_dbqueue_app``)
run in worker processes; the test sees what ran from the files they leave in
an output folder, never from log lines. A file is written aside and renamed,
so it is there whole or not at all; it holds the process group id of the
worker that wrote it (`left_by`), which tells two workers of a test apart,
then whatever the task adds. This module is imported by worker processes: it
imports nothing of pytest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["HOLD_LIMIT", "hold", "leave", "left_by", "outcomes"]

HOLD_LIMIT = 60.0  # seconds `hold` waits for its release file before giving up


def leave(out: Path, name: str, content: str = "") -> None:
    """Write one side-effect file, whole or not at all (written aside, then renamed)."""
    aside = out / f".{name}.partial"
    aside.write_text(f"{os.getpgrp()}\n{content}")
    aside.rename(out / name)


def hold(out: Path, name: str) -> None:
    """A task that stays running until the test lets it finish: leave ``started-NAME-PID``, wait for
    ``release-NAME`` to appear, leave ``done-NAME-PID``. Raises `TimeoutError` after `HOLD_LIMIT`."""
    leave(out, f"started-{name}-{os.getpid()}")
    release = out / f"release-{name}"
    deadline = time.monotonic() + HOLD_LIMIT
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {HOLD_LIMIT} s")
        time.sleep(0.05)
    leave(out, f"done-{name}-{os.getpid()}")


def outcomes(out: Path, prefix: str) -> list[str]:
    """Names of the side-effect files starting with ``prefix`` (one per execution), sorted."""
    return sorted(path.name for path in out.iterdir() if path.name.startswith(prefix))


def left_by(out: Path, name: str) -> int:
    """The process group id of the worker that left the file ``name``."""
    return int((out / name).read_text().split()[0])

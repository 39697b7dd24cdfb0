"""`dbqueue serve --workers N`: N server processes on consecutive ports, kept alive as a group.

Theory of operation
-------------------
Python threads share one interpreter lock, so a group gets more cores the
way NSQ gets more machines: independent server processes, each holding its
own part of every queue, with no coordination on the hot path. The
supervisor starts worker ``i`` as ``dbqueue serve <the supervisor's own
options> --port PORT+i --member-index i --peers <every member>`` (and
``--data-dir DIR/worker-i`` when durable, ``--metrics-port MPORT+i`` with
metrics), restarts a worker that dies (logging it), and on SIGINT or SIGTERM
stops them all and waits for them. Which options the workers share is the
command line's business (`dbqueue.cli`): here they are only passed on.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["supervise", "worker_command"]

log = logging.getLogger("dbqueue.workers")

RESTART_PAUSE = 0.5  # seconds between a worker's death and its restart, so a crash loop does not spin
STOP_GRACE = 10.0  # seconds a worker gets to stop cleanly before it is killed


def worker_command(
    index: int, port: int, peers: Sequence[str], serve_args: Sequence[str], data_dir: str | None
) -> list[str]:
    """The command line of worker ``index``: the same options as the supervisor's, its own port and member index."""
    command = [sys.executable, "-m", "dbqueue.cli", "serve", *serve_args, "--port", str(port)]
    command += ["--member-index", str(index), "--peers", ",".join(peers)]
    if data_dir is not None:
        command += ["--data-dir", str(Path(data_dir) / f"worker-{index}")]
    return command


def supervise(commands: list[list[str]]) -> int:
    """Run one process per command until SIGINT/SIGTERM; restart any that dies. Returns 0."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = [subprocess.Popen(command) for command in commands]
    log.info("started %d workers: pids %s", len(workers), [worker.pid for worker in workers])
    try:
        while not stopping:
            time.sleep(0.2)
            for index, worker in enumerate(workers):
                code = worker.poll()
                if code is not None and not stopping:
                    log.warning("worker %d (pid %d) exited with %d; restarting it", index, worker.pid, code)
                    time.sleep(RESTART_PAUSE)
                    workers[index] = subprocess.Popen(commands[index])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for worker in workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0f s; killing it", worker.pid, STOP_GRACE)
                worker.kill()
                worker.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("all workers stopped")
    return 0

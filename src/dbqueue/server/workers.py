"""`dbqueue serve --workers N`: N server processes on consecutive ports, kept alive as a group.

Theory of operation
-------------------
Python threads share one interpreter lock, so a group gets more cores the
way NSQ gets more machines: independent server processes, each holding its
own part of every queue, with no coordination on the hot path. The
supervisor starts worker ``i`` as ``dbqueue serve <the supervisor's own
options> --port PORT+i --member-index i --peers <every member>`` (and
``--data-dir DIR/worker-i`` when durable, ``--metrics-port MPORT+i`` with
metrics, ``--http-port HPORT+i`` with an HTTP listener: each worker's SQS
API, /metrics and console serve its own part). Which options the workers
share is the command line's business (`dbqueue.cli`): here they are only
passed on. With ``--store`` the workers share one database, worker ``i``
owning part ``i``; the ``--peers`` they are given is overridden by the
members the database names.

*Workers die with their supervisor.* A worker left behind by a supervisor
that was killed (``kill -9``, the OOM killer) would keep its port and its
store's lock, and the next supervisor's workers would fail to start for
ever. Two mechanisms, either enough alone:

* on Linux, the worker's first act is ``prctl(PR_SET_PDEATHSIG, SIGTERM)``:
  the kernel sends it SIGTERM when its parent dies. The parent may have
  died before that call took effect, so the worker then checks that its
  parent is still the supervisor (``getppid``) and stops if not;
* everywhere, a *lifeline*: a pipe whose only write end the supervisor
  holds, its read end passed to the worker (``--supervisor PID:FD``). When
  the supervisor dies, for whatever reason, the kernel closes the write end;
  a thread in the worker sees end-of-file and sends the worker SIGTERM,
  then ends the process if it has not stopped after `STOP_GRACE`.

*Restarts back off, and end.* A worker that dies is started again after a
delay that doubles with each death within `FAILURE_WINDOW` (with jitter, so
workers that fail together do not retry together); `MAX_FAILURES` deaths
within that window mean the worker cannot run (its port is taken, its store
is damaged), and the supervisor stops the others and exits, naming the
worker and the last line it wrote. A service manager restarting a failed
unit (systemd's ``Restart=on-failure``) then takes over, and the journal
says why. The decision is `RestartPolicy`'s, with the time passed in.

*Output is relayed, line by line.* Each worker's stdout and stderr come to
the supervisor through a pipe, which writes every line to its own stderr as
``worker I: <line>``, so a log read later says which worker wrote what, and
the last line before a death is at hand to explain it. The pipes are read
from one selector loop, which also watches for deaths and due restarts; no
thread is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "RestartPolicy",
    "SupervisorGone",
    "WorkerSpec",
    "die_with_supervisor",
    "supervise",
    "worker_command",
]

log = logging.getLogger("dbqueue.workers")

FIRST_DELAY = 0.5  # seconds before the first restart of a worker that died; doubles with each death in the window
MAX_DELAY = 15.0  # seconds: the longest wait before a restart
FAILURE_WINDOW = 60.0  # seconds over which a worker's deaths are counted
MAX_FAILURES = 5  # deaths within the window that make the supervisor give up
STOP_GRACE = 10.0  # seconds a worker gets to stop cleanly before it is killed
_TICK = 0.2  # seconds between two looks at the workers when no output comes
_MAX_LINE = 64 * 1024  # bytes of a line without its end that are passed on as a line anyway

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class SupervisorGone(Exception):
    """Raised in a worker whose supervisor died before the worker could tie its fate to it."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker to run: its member index (which its log lines carry), its address, its command line."""

    index: int
    address: str
    command: list[str]


def worker_command(
    index: int, port: int, peers: Sequence[str], serve_args: Sequence[str], data_dir: str | None
) -> list[str]:
    """The command line of worker ``index``: the same options as the supervisor's, its own port and member index."""
    command = [sys.executable, "-m", "dbqueue.cli", "serve", *serve_args, "--port", str(port)]
    command += ["--member-index", str(index), "--peers", ",".join(peers)]
    if data_dir is not None:
        command += ["--data-dir", str(Path(data_dir) / f"worker-{index}")]
    return command


class RestartPolicy:
    """When to start a dead worker again, and when to give up on it. No I/O: time is passed in.

    ``jitter`` returns a number in [0, 1); each delay is scaled by half of it
    plus one half, so that it falls between half and all of its nominal value.
    """

    def __init__(
        self,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        window: float = FAILURE_WINDOW,
        max_failures: int = MAX_FAILURES,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.window = window
        self.max_failures = max_failures
        self.jitter = jitter
        self._deaths: deque[float] = deque()

    def recent(self, now: float) -> int:
        """How many deaths fell within the window ending at ``now``."""
        while self._deaths and self._deaths[0] <= now - self.window:
            self._deaths.popleft()
        return len(self._deaths)

    def died(self, now: float) -> float | None:
        """Record a death at ``now``; return the seconds to wait before the restart, or None to give up."""
        self._deaths.append(now)
        deaths = self.recent(now)
        if deaths >= self.max_failures:
            return None
        nominal = min(self.max_delay, self.first_delay * 2.0 ** (deaths - 1))
        return nominal * (0.5 + self.jitter() / 2)


# --- in the worker -----------------------------------------------------------------------------


def die_with_supervisor(supervisor_pid: int, lifeline: int | None) -> None:
    """Tie this worker's life to its supervisor's (see the module docstring); call it before anything else.

    ``lifeline`` is the read end of the supervisor's pipe, or None where
    there is none. Returns None. Raises `SupervisorGone` if the supervisor
    (``supervisor_pid``) is no longer this process's parent.
    """
    if sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGTERM)
    # After prctl: a supervisor that died before it took effect sent nothing, and never will.
    if os.getppid() != supervisor_pid:
        raise SupervisorGone(f"the supervisor (pid {supervisor_pid}) is gone")
    if lifeline is not None:
        threading.Thread(target=_watch_lifeline, args=(lifeline,), name="dbqueue-lifeline", daemon=True).start()


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): relying on the lifeline pipe", ctypes.get_errno())


def _watch_lifeline(fd: int) -> None:
    """Block on the lifeline until the supervisor is gone; then stop this process, by force if it must."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except OSError:
            break
    log.warning("the supervisor is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE)
    log.error("still running %.0f s after the supervisor died: exiting now", STOP_GRACE)
    os._exit(1)


# --- in the supervisor -------------------------------------------------------------------------


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker's process, the pipe its output comes through, its lifeline, and its restarts."""

    def __init__(self, spec: WorkerSpec, policy: RestartPolicy) -> None:
        self.spec = spec
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self.lifeline: int | None = None  # the write end the supervisor holds
        self.partial = b""  # output after the last line end
        self.last_line = ""  # the last line it wrote: what explains a death
        self.restart_at: float | None = None

    def start(self, selector: selectors.BaseSelector, env: Mapping[str, str] | None) -> None:
        command = list(self.spec.command)
        pass_fds: tuple[int, ...] = ()
        read_end = None
        if os.name == "posix":
            read_end, self.lifeline = os.pipe()
            command += ["--supervisor", f"{os.getpid()}:{read_end}"]
            pass_fds = (read_end,)
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                env=None if env is None else dict(env),
            )
        finally:
            if read_end is not None:
                os.close(read_end)  # the worker has its own copy; ours would keep the pipe open after a death
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        selector.register(self.process.stdout.fileno(), selectors.EVENT_READ, self)
        self.partial = b""
        self.restart_at = None

    def relay(self, out: BinaryIO) -> bool:
        """Pass on what the worker wrote; return False at the end of its output."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                if self.partial:
                    self._lines([self.partial], out)
                    self.partial = b""
                return False
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            if len(self.partial) > _MAX_LINE:
                lines.append(self.partial)
                self.partial = b""
            self._lines(lines, out)

    def _lines(self, lines: list[bytes], out: BinaryIO) -> None:
        prefix = b"worker %d: " % self.spec.index
        written = []
        for line in lines:
            line = line.rstrip(b"\r")
            if line.strip():
                self.last_line = line.decode(errors="replace").strip()
            written.append(prefix + line + b"\n")
        with contextlib.suppress(OSError, ValueError):  # nowhere left to write: the workers still run
            out.write(b"".join(written))
            out.flush()

    def reap(self, selector: selectors.BaseSelector, out: BinaryIO) -> int:
        """After the process exited: take the rest of its output, close its pipes; return its exit code."""
        assert self.process is not None and self.process.stdout is not None
        code = self.process.wait()
        self.relay(out)
        with contextlib.suppress(KeyError):  # already gone if its end was seen first
            selector.unregister(self.process.stdout.fileno())
        self.process.stdout.close()
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
        return code

    def describe(self, pid: int | None = None) -> str:
        """``worker I (ADDRESS)``, with the pid if given, for a person reading the log."""
        return f"worker {self.spec.index} ({self.spec.address}" + (f", pid {pid})" if pid is not None else ")")


def supervise(
    workers: Sequence[WorkerSpec | Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    out: BinaryIO | None = None,
    policy: Callable[[], RestartPolicy] = RestartPolicy,
) -> str | None:
    """Run one process per spec until SIGINT or SIGTERM, restarting any that dies (see the module docstring).

    A spec is a `WorkerSpec`, or only the command line (`worker_command`'s):
    the worker is then named by its place in ``workers`` and its ``--port``.
    ``env`` is the workers' environment (default: the supervisor's); their
    output goes to ``out`` (default: the supervisor's stderr), each line
    prefixed with ``worker I: ``. Returns None after a stop by signal, or the
    reason it gave up on a worker that kept dying (the others are stopped
    first). Raises `OSError` if a worker cannot be started at all.
    """
    output = out if out is not None else sys.stderr.buffer
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = [_Worker(_spec(index, spec), policy()) for index, spec in enumerate(workers)]
    reason: str | None = None
    with selectors.DefaultSelector() as selector:
        try:
            for worker in running:
                worker.start(selector, env)
            log.info(
                "started %d workers: pids %s",
                len(running),
                [worker.process.pid for worker in running if worker.process],
            )
            while not stopping and reason is None:
                reason = _watch(running, selector, output, env, lambda: stopping)
        finally:
            _stop_all(running, selector, output)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if reason is None:
        log.info("all workers stopped")
    return reason


def _spec(index: int, spec: WorkerSpec | Sequence[str]) -> WorkerSpec:
    if isinstance(spec, WorkerSpec):
        return spec
    command = list(spec)
    port = command[command.index("--port") + 1] if "--port" in command[:-1] else "?"
    return WorkerSpec(index, f"port {port}", command)


def _watch(
    running: list[_Worker],
    selector: selectors.BaseSelector,
    out: BinaryIO,
    env: Mapping[str, str] | None,
    stopping: Callable[[], bool],
) -> str | None:
    """One turn of the loop: relay output, reap the dead, start those due. Returns the reason to give up, if any."""
    now = time.monotonic()
    due = [worker.restart_at for worker in running if worker.restart_at is not None]
    timeout = max(0.0, min([_TICK, *(at - now for at in due)]))
    _relay_ready(selector, timeout, out)
    now = time.monotonic()
    for worker in running:
        if worker.process is not None and worker.process.poll() is not None:
            pid = worker.process.pid
            code = worker.reap(selector, out)
            worker.process = None
            if stopping():
                continue
            delay = worker.policy.died(now)
            exited = _exit_description(code)
            if delay is None:
                deaths = worker.policy.max_failures
                return (
                    f"{worker.describe()} died {deaths} times within {worker.policy.window:.0f} s; giving up. "
                    f"Last {exited}: {worker.last_line or '(no output)'}"
                )
            log.warning("%s exited (%s); restarting it in %.1f s", worker.describe(pid), exited, delay)
            worker.restart_at = now + delay
        elif worker.restart_at is not None and now >= worker.restart_at and not stopping():
            worker.start(selector, env)
    return None


def _relay_ready(selector: selectors.BaseSelector, timeout: float, out: BinaryIO) -> None:
    """Relay the output of every worker that wrote some within ``timeout``; stop watching ended outputs."""
    for key, _ in selector.select(timeout):
        if not key.data.relay(out):
            selector.unregister(key.fd)  # at its end: a pipe at its end is always "ready"


def _stop_all(running: list[_Worker], selector: selectors.BaseSelector, out: BinaryIO) -> None:
    """SIGTERM every running worker, relay their last words, kill those still running after `STOP_GRACE`."""
    alive = [worker for worker in running if worker.process is not None]
    for worker in alive:
        assert worker.process is not None
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while alive and time.monotonic() < deadline:
        _relay_ready(selector, 0.05, out)
        for worker in list(alive):
            assert worker.process is not None
            if worker.process.poll() is not None:
                worker.reap(selector, out)
                worker.process = None
                alive.remove(worker)
    for worker in alive:
        assert worker.process is not None
        log.warning("%s did not stop in %.0f s; killing it", worker.describe(worker.process.pid), STOP_GRACE)
        worker.process.kill()
        worker.reap(selector, out)
        worker.process = None

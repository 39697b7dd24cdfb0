"""Celery and Dramatiq on dbqueue against the same frameworks on Redis: trivial tasks per second, one run.

Run ``python bench/frameworks.py`` (``--smoke`` for a few seconds' check,
``--tasks N`` per round, ``--rounds``, ``--idle-seconds`` for the idle test,
``--json PATH`` for the raw figures). Needs celery, dramatiq, redis (the
Python client) and ``redis-server`` on PATH.

Theory of operation
-------------------
**Servers.** ``dbqueue serve`` (in memory) and ``redis-server`` (no
persistence) are started once, on free loopback ports, and stay up for the
whole run.

**Systems.** ``celery-dbqueue`` (Celery on dbqueue's kombu transport),
``celery-redis`` (Celery on kombu's Redis transport), ``dramatiq-dbqueue``
(dbqueue's Dramatiq broker) and ``dramatiq-redis`` (Dramatiq's RedisBroker).
Each pair has the same app, task and settings but the broker: Celery with one
worker, ``--pool prefork --concurrency C``, the default prefetch multiplier,
``acks_late``, no gossip, mingle, heartbeat or result backend; Dramatiq with one
worker process of ``--threads T``. Rounds alternate the order (A B, then B A),
so that a machine that drifts favours neither.

**A round.** A producer subprocess sends ``--tasks`` trivial tasks
(``task.delay()`` / ``actor.send()``, one at a time) and reports its rate;
then the framework's own worker is started on the full queue, and the round
times it from the first task done to the last. A task writes one byte to a
file of its process (one ``write`` call), and the script counts the bytes, so
what is timed is the broker's deliveries and acknowledgements plus the
framework's own work, not a shared counter. The server's CPU over the drain
(``/proc/PID/stat``), the worker's (its process group's, children reaped at
the end included) and every other process's (`machine.CpuWatch`, which marks
a crowded round) are recorded, as microseconds per task, with the requests the
server handled per task (Redis's ``INFO commandstats``, dbqueue's
``dbqueue_requests_total`` from ``--metrics-port``): that says where the time
goes.

**Idle.** With ``--idle-seconds``, eight idle Celery workers and then eight
idle Dramatiq worker processes are attached to the dbqueue server, and its CPU
over that many seconds is reported (cores busy) with the requests it handled per
second, beside Redis's with the same workers on Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

SYSTEMS = ("celery-dbqueue", "celery-redis", "dramatiq-dbqueue", "dramatiq-redis")
TICKS = """
import os

_fd = None
_pid = None


def tick():
    # One write per task, to a file of this process: the bench counts the bytes.
    global _fd, _pid
    if _pid != os.getpid():
        _fd = os.open(os.path.join(os.environ["BENCH_OUT"], "ticks-%d" % os.getpid()),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        _pid = os.getpid()
    os.write(_fd, b"x")
"""
CELERY_APP = """
import os
import dbqueue.integrations.celery  # registers dbqueue:// with kombu
from celery import Celery
from ticks import tick

app = Celery("bench_celery", broker=os.environ["BENCH_URL"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_acks_late=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"wait_time_seconds": 1.0},
)


@app.task(name="bench.trivial", ignore_result=True)
def trivial():
    tick()


def send(count):
    for _ in range(count):
        trivial.delay()
"""
DRAMATIQ_APP = """
import os
import dramatiq
from ticks import tick

if os.environ["BENCH_URL"].startswith("redis"):
    from dramatiq.brokers.redis import RedisBroker
    broker = RedisBroker(url=os.environ["BENCH_URL"])
else:
    from dbqueue.integrations.dramatiq import DbQueueBroker
    broker = DbQueueBroker(os.environ["BENCH_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ["BENCH_QUEUE"])
def trivial():
    tick()


def send(count):
    for _ in range(count):
        trivial.send()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User plus system CPU of ``pid`` (all threads), with its reaped children's if asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(group: int) -> float:
    """CPU of every live process of process group ``group`` (with what each reaped)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Servers:
    """``dbqueue serve`` and ``redis-server``, each on a free port, for the whole run."""

    def __init__(self, work: Path) -> None:
        self.dbqueue_port = free_port()
        self.metrics_port = free_port()
        self.redis_port = free_port()
        log = open(work / "servers.log", "wb")  # noqa: SIM115  # kept open for the servers' lives
        self.dbqueue = subprocess.Popen(
            [
                sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(self.dbqueue_port),
                "--metrics-port", str(self.metrics_port),
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--save", "", "--appendonly", "no"], stdout=log, stderr=log
        )
        wait_port(self.dbqueue_port)
        wait_port(self.redis_port)

    def url(self, system: str) -> str:
        if system.endswith("redis"):
            return f"redis://127.0.0.1:{self.redis_port}/0"
        return f"dbqueue://127.0.0.1:{self.dbqueue_port}"

    def pid(self, system: str) -> int:
        return self.redis.pid if system.endswith("redis") else self.dbqueue.pid

    def requests(self, system: str) -> int:
        """Requests the server of ``system`` has handled so far (Redis: commands; dbqueue: its requests counter)."""
        if system.endswith("redis"):
            import redis

            stats = redis.Redis(port=self.redis_port).info("commandstats")
            return sum(int(entry["calls"]) for entry in stats.values())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return int(
            float(next(line.split()[1] for line in text.splitlines() if line.startswith("dbqueue_requests_total")))
        )

    def stop(self) -> None:
        for process in (self.dbqueue, self.redis):
            process.terminate()
        for process in (self.dbqueue, self.redis):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def environment(work: Path, out: Path, url: str, queue: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CELERY_", "BENCH_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
            "BENCH_URL": url,
            "BENCH_QUEUE": queue,
            "BENCH_OUT": str(out),
        }
    )
    return env


def worker_command(system: str, concurrency: int, threads: int) -> list[str]:
    if system.startswith("celery"):
        return [
            sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker", "--loglevel", "WARNING",
            "--pool", "prefork", "--concurrency", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
    return [sys.executable, "-m", "dramatiq", "bench_dramatiq_app", "--processes", "1", "--threads", str(threads)]


@contextlib.contextmanager
def worker(system: str, env: dict[str, str], log: Path, concurrency: int, threads: int) -> Iterator[int]:
    """Start the framework's worker in a process group of its own; yield the group; stop it whatever happens."""
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            worker_command(system, concurrency, threads), env=env, stdout=sink, stderr=sink, start_new_session=True
        )
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(10)


def ticks(out: Path) -> int:
    total = 0
    for path in out.iterdir():
        if path.name.startswith("ticks-"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


def one_round(
    servers: Servers, work: Path, system: str, tasks: int, concurrency: int, threads: int, index: int
) -> dict[str, Any]:
    """Send ``tasks`` with a producer subprocess, then drain them with the framework's worker; the figures."""
    out = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=work))
    queue = f"bench-{system}-{index}"
    env = environment(work, out, servers.url(system), queue)
    module = "bench_celery_app" if system.startswith("celery") else "bench_dramatiq_app"
    produce = (
        f"import time, {module} as m\nstart = time.perf_counter()\nm.send({tasks})\n"
        "print(time.perf_counter() - start)\n"
    )
    sent = subprocess.run([sys.executable, "-c", produce], env=env, capture_output=True, text=True, timeout=600)
    if sent.returncode != 0:
        raise RuntimeError(f"{system}: the producer failed:\n{sent.stderr[-3000:]}")
    send_seconds = float(sent.stdout.strip().splitlines()[-1])
    server = servers.pid(system)
    watch = machine.CpuWatch(lambda: [os.getpid()])
    with worker(system, env, work / f"worker-{system}.log", concurrency, threads) as group:
        deadline = time.monotonic() + 600
        while ticks(out) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: no task ran in 600 s (see {work / f'worker-{system}.log'})")
            time.sleep(0.002)
        first, done_first = time.perf_counter(), ticks(out)
        server_before, worker_before = cpu_seconds(server), group_cpu_seconds(group)
        requests_before = servers.requests(system)
        watch.start()
        while (done := ticks(out)) < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: {done} of {tasks} ran in 600 s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - first
        server_cpu = cpu_seconds(server) - server_before
        worker_cpu = group_cpu_seconds(group) - worker_before
        requests = servers.requests(system) - requests_before
        watch.stop()
    counted = tasks - done_first
    return {
        "system": system,
        "round": index,
        "tasks": tasks,
        "sent_per_second": tasks / send_seconds,
        "run_per_second": counted / elapsed,
        "server_us_per_task": server_cpu / counted * 1e6,
        "worker_us_per_task": worker_cpu / counted * 1e6,
        "requests_per_task": requests / counted,
        "other_cores": watch.other_seconds / elapsed,
        "duplicates": done - tasks,
    }


def idle(servers: Servers, work: Path, seconds: float, framework: str, broker: str) -> dict[str, Any]:
    """Eight idle workers of ``framework`` on ``broker``'s server: that server's CPU over ``seconds``."""
    system = f"{framework}-{broker}"
    out = Path(tempfile.mkdtemp(prefix=f"idle-{system}-", dir=work))
    env = environment(work, out, servers.url(system), f"idle-{system}")
    server = servers.pid(system)
    with contextlib.ExitStack() as stack:
        for number in range(8):
            stack.enter_context(worker(system, env, work / f"idle-{system}-{number}.log", 1, 1))
        time.sleep(8.0)  # every worker started and settled into its waiting reads
        before, requests_before = cpu_seconds(server), servers.requests(system)
        time.sleep(seconds)
        busy = (cpu_seconds(server) - before) / seconds
        rate = (servers.requests(system) - requests_before) / seconds
    return {"system": system, "workers": 8, "seconds": seconds, "server_cores": busy, "requests_per_second": rate}


def report(results: list[dict[str, Any]], idles: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'system':18} {'sent/s':>9} {'run/s':>9} {'server us/task':>15} {'worker us/task':>15} "
        f"{'requests/task':>14} {'other cores':>12}"
    ]
    medians: dict[str, float] = {}
    for system in SYSTEMS:
        rows = [row for row in results if row["system"] == system]
        if not rows:
            continue
        med = {key: statistics.median(row[key] for row in rows) for key in rows[0] if key not in ("system",)}
        medians[system] = med["run_per_second"]
        lines.append(
            f"{system:18} {med['sent_per_second']:9.0f} {med['run_per_second']:9.0f} "
            f"{med['server_us_per_task']:15.0f} {med['worker_us_per_task']:15.0f} {med['requests_per_task']:14.2f} "
            f"{med['other_cores']:12.2f}"
        )
    for framework in ("celery", "dramatiq"):
        ratios = []
        for index in {row["round"] for row in results}:
            ours = [
                r["run_per_second"] for r in results if r["round"] == index and r["system"] == f"{framework}-dbqueue"
            ]
            theirs = [
                r["run_per_second"] for r in results if r["round"] == index and r["system"] == f"{framework}-redis"
            ]
            if ours and theirs:
                ratios.append(ours[0] / theirs[0])
        if ratios:
            lines.append(
                f"{framework}: dbqueue / redis, tasks run per second, median of rounds: {statistics.median(ratios):.2f}"
            )
    if any(row["duplicates"] for row in results):
        lines.append(
            "DUPLICATES: " + ", ".join(f"{r['system']} round {r['round']}: {r['duplicates']}" for r in results)
        )
    for row in idles:
        lines.append(
            f"idle, {row['workers']} workers, {row['system']}: server {row['server_cores'] * 100:.2f}% of a core"
        )
    return lines


def framework_versions() -> dict[str, str]:
    """The versions of the frameworks and client libraries driven here, for the context lines."""
    return {name: importlib.metadata.version(name) for name in ("celery", "kombu", "dramatiq", "redis")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--concurrency", type=int, default=2, help="Celery's prefork processes")
    parser.add_argument("--threads", type=int, default=4, help="Dramatiq's worker threads")
    parser.add_argument("--idle-seconds", type=float, default=0.0)
    parser.add_argument("--smoke", action="store_true", help="a few hundred tasks, one round, no idle test")
    parser.add_argument("--json", type=Path)
    machine.add_run_options(parser)
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.rounds, args.idle_seconds, args.quiet_load = 300, 1, 0.0, 0.0
    context = machine.begin_run(args)
    context["peers"].update(framework_versions())
    systems = [system for system in args.systems.split(",") if system]
    work = Path(tempfile.mkdtemp(prefix="bench-frameworks-"))
    (work / "ticks.py").write_text(textwrap.dedent(TICKS))
    (work / "bench_celery_app.py").write_text(textwrap.dedent(CELERY_APP))
    (work / "bench_dramatiq_app.py").write_text(textwrap.dedent(DRAMATIQ_APP))
    print("\n".join(machine.context_lines(context)))
    print(f"logs in {work}")
    print(f"{args.tasks} tasks a round, {args.rounds} rounds; Celery prefork -c {args.concurrency}, "
          f"Dramatiq 1 process x {args.threads} threads")  # fmt: skip
    servers = Servers(work)
    results: list[dict[str, Any]] = []
    idles: list[dict[str, Any]] = []
    try:
        for index in range(args.rounds):
            order = systems if index % 2 == 0 else list(reversed(systems))
            for system in order:
                row = one_round(servers, work, system, args.tasks, args.concurrency, args.threads, index)
                results.append(row)
                print(
                    f"round {index} {system:18} sent {row['sent_per_second']:7.0f}/s  "
                    f"run {row['run_per_second']:7.0f}/s  server {row['server_us_per_task']:5.0f} us/task  "
                    f"worker {row['worker_us_per_task']:6.0f} us/task  {row['requests_per_task']:.2f} requests/task  "
                    f"others {row['other_cores']:.2f} cores",
                    flush=True,
                )
        if args.idle_seconds:
            for framework in ("celery", "dramatiq"):
                for broker in ("dbqueue", "redis"):
                    idles.append(idle(servers, work, args.idle_seconds, framework, broker))
                    print(f"idle {idles[-1]}", flush=True)
    finally:
        servers.stop()
    print("\n".join(report(results, idles)))
    if args.json:
        args.json.write_text(json.dumps({"context": context, "rounds": results, "idle": idles}, indent=2))


if __name__ == "__main__":
    main()

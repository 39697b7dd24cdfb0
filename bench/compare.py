"""Compare dbqueue with beanstalkd and Redis under one workload, interleaved so drift cancels.

Run ``python bench/compare.py`` (``--smoke`` for a few seconds' check). It
starts every server once, on its own free loopback port, then runs the load
test of `dbqueue.loadtest` against each system in turn, A B C D A B C D ..., for
``--rounds`` rounds, with the load generator in this process on uvloop. Each
round ends with unpipelined round trips (send, read, confirm one at a time on
one connection) against dbqueue and redis-list (``--durable``: their durable
variants; ``--batch`` and ``--workers``: none).

It reports, per system, the median requests/s and messages/s; for the
baseline (dbqueue) against each other system, the median of the
round-by-round ratios (round i's baseline figure over round i's figure for
the other), so that a machine slowing down or speeding up over the run
cancels out; the round trips' p50 and p99 (pooled over rounds); and the CPU
the load generator, each server, every other process and the kernel used,
which says who the bottleneck was and whether the machine was shared.
Servers are stopped at the end, also on failure or Ctrl-C.

Messages/s is the figure to compare: requests/s also counts reads that found
the queue empty, and how many of those a system causes is not a virtue.

Payloads are unique per message, for every system (`dbqueue.loadtest`: a
running number in each payload's last 8 bytes), so Redis's LREM compares
payloads along its processing list as it would in a real deployment.

Four modes, each with its own systems, baseline (the numerator of every
ratio) and targets, which the report checks in a table (target, reached, met?),
and a fifth that is a script of its own:

* default, in memory: dbqueue against beanstalkd, redis-list, redis-stream.
* ``--durable``: every system with its write-ahead log, plus in-memory dbqueue
  in the same rounds: dbqueue-durable (``--data-dir``, ``--sync os``) against
  dbqueue (target: at least half its rate), beanstalkd-binlog (``-b``, fsync
  every second), redis-list-aof and redis-stream-aof (``appendonly yes``,
  ``appendfsync everysec``) (target: faster than each). The report ends
  with each durable system's disk use: after every load run (the largest) and
  at the end.
* ``--batch N``: N messages a request: dbqueue-batch (``send_batch`` /
  ``read_batch`` / ``confirm_batch``) against redis-list-batch (``RPUSH`` of N
  values / ``LPOP key N``, no confirm step); target: dbqueue at 1M messages/s.
* ``--workers``: dbqueue-2-workers (``serve --workers 2``; the load generator
  spreads its connections over both workers' ports) against dbqueue-1-worker
  (one plain server); target: the group at least 1.3 times as fast. Server
  CPU is the whole group's: the supervisor and both workers.
* ``--fan-in``: many connections with one request in flight each, over several
  client processes, against dbqueue, Redis lists, beanstalkd and a framing-only
  floor: ``python bench/compare.py --fan-in [options]`` runs ``bench/fanin.py``
  with those options (see its own ``--help``).

Before it starts, the run waits (``--quiet-load``, ``--quiet-wait``) for the
machine's load average to settle; a round in which any run saw other processes
use more than a quarter of a core is run again (``--retry-crowded``), after
waiting for the machine to be quiet, and the crowded figures are kept in the
JSON but not in the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `peers` sits next to this file

import hiredis
from rich import box
from rich.console import Console
from rich.table import Table

from dbqueue.errors import DbQueueError
from dbqueue.loadtest import (
    BenchConfig,
    BenchFailure,
    BenchResult,
    DbQueueDriver,
    Driver,
    run_load,
    run_round_trips,
)
from dbqueue.server import new_event_loop
from machine import CpuWatch, begin_run, context_lines, wait_for_idle_cpu
from peers import (
    BeanstalkdDriver,
    BeanstalkdServer,
    DbQueueServer,
    RedisBatchDriver,
    RedisListDriver,
    RedisServer,
    RedisStreamDriver,
    ServerProcess,
    ServerUnavailable,
)


@dataclass(frozen=True)
class System:
    driver: type[Driver]
    server: Callable[[argparse.Namespace], ServerProcess]


def _beanstalkd(args: argparse.Namespace, durable: bool = False) -> ServerProcess:
    return BeanstalkdServer(durable=durable, max_job_size=max(65535, args.payload))


SYSTEMS: dict[str, System] = {
    "dbqueue": System(DbQueueDriver, lambda args: DbQueueServer(python=args.server_python)),
    "beanstalkd": System(BeanstalkdDriver, _beanstalkd),
    "redis-list": System(RedisListDriver, lambda args: RedisServer(label="redis-list")),
    "redis-stream": System(RedisStreamDriver, lambda args: RedisServer(label="redis-stream")),
    "dbqueue-durable": System(
        DbQueueDriver,
        lambda args: DbQueueServer(
            python=args.server_python, durable=True, sync=args.dbqueue_sync, label="dbqueue-durable"
        ),
    ),
    "beanstalkd-binlog": System(BeanstalkdDriver, lambda args: _beanstalkd(args, durable=True)),
    "redis-list-aof": System(RedisListDriver, lambda args: RedisServer(label="redis-list-aof", durable=True)),
    "redis-stream-aof": System(RedisStreamDriver, lambda args: RedisServer(label="redis-stream-aof", durable=True)),
    "dbqueue-batch": System(
        DbQueueDriver, lambda args: DbQueueServer(python=args.server_python, label="dbqueue-batch")
    ),
    "redis-list-batch": System(RedisBatchDriver, lambda args: RedisServer(label="redis-list-batch")),
    "dbqueue-1-worker": System(
        DbQueueDriver, lambda args: DbQueueServer(python=args.server_python, label="dbqueue-1-worker")
    ),
    "dbqueue-2-workers": System(
        DbQueueDriver, lambda args: DbQueueServer(python=args.server_python, workers=2, label="dbqueue-2-workers")
    ),
}


@dataclass(frozen=True)
class Target:
    """A goal for one figure: ``baseline ÷ system`` messages/s (``system`` set) or the baseline's own messages/s."""

    description: str
    op: str  # ">=" or ">"
    threshold: float
    system: str | None = None  # None: the baseline's own median messages/s

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value > self.threshold


@dataclass(frozen=True)
class Mode:
    """Which systems run, which one is every ratio's numerator, which pair does round trips, and the goals."""

    systems: tuple[str, ...]
    baseline: str
    latency: tuple[str, str] | None
    targets: tuple[Target, ...] = ()


MODES: dict[str, Mode] = {
    "memory": Mode(("dbqueue", "beanstalkd", "redis-list", "redis-stream"), "dbqueue", ("dbqueue", "redis-list")),
    "durable": Mode(
        ("dbqueue-durable", "dbqueue", "beanstalkd-binlog", "redis-list-aof", "redis-stream-aof"),
        "dbqueue-durable",
        ("dbqueue-durable", "redis-list-aof"),
        (
            Target("durable dbqueue ÷ in-memory dbqueue, msg/s", ">=", 0.5, "dbqueue"),
            Target("durable dbqueue ÷ beanstalkd with binlog, msg/s", ">", 1.0, "beanstalkd-binlog"),
            Target("durable dbqueue ÷ Redis list with AOF, msg/s", ">", 1.0, "redis-list-aof"),
            Target("durable dbqueue ÷ Redis stream with AOF, msg/s", ">", 1.0, "redis-stream-aof"),
        ),
    ),
    "batch": Mode(
        ("dbqueue-batch", "redis-list-batch"),
        "dbqueue-batch",
        None,
        (Target("dbqueue with batches, msg/s", ">=", 1_000_000.0),),
    ),
    "workers": Mode(
        ("dbqueue-2-workers", "dbqueue-1-worker"),
        "dbqueue-2-workers",
        None,
        (Target("2 workers ÷ 1 worker, msg/s", ">=", 1.3, "dbqueue-1-worker"),),
    ),
}
CROWDED = 0.25  # other processes' CPU, in cores, above which a run is flagged
# A smoke run checks that everything works, not the figures: it neither waits for quiet nor retries.
SMOKE = {"rounds": 1, "iterations": 20, "latency_iterations": 200, "quiet_load": 0.0, "retry_crowded": 0}
FAILURES = (BenchFailure, DbQueueError, OSError, hiredis.HiredisError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load-test dbqueue and its peers (beanstalkd, Redis lists, Redis streams) in interleaved rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--durable",
        action="store_true",
        help="durable variants (dbqueue --data-dir, beanstalkd binlog, Redis AOF everysec) plus in-memory dbqueue",
    )
    modes.add_argument(
        "--batch",
        type=_positive,
        metavar="N",
        help=(
            "N messages a request: dbqueue send/read/confirm_batch against Redis RPUSH/LPOP N"
            " (default iterations: 4000/N)"
        ),
    )
    modes.add_argument(
        "--workers",
        action="store_true",
        help="dbqueue serve --workers 2 (connections spread over both workers) against a single dbqueue server",
    )
    modes.add_argument(
        "--fan-in",
        action="store_true",
        help="one request in flight per connection, many connections: runs bench/fanin.py with the other options",
    )
    parser.add_argument(
        "--dbqueue-sync", choices=("os", "disk"), default="os", help="with --durable: dbqueue-durable's --sync"
    )
    parser.add_argument("--rounds", type=_positive, default=5, help="rounds of A B C D ...")
    parser.add_argument("--producers", type=_positive, default=16, help="connections that send")
    parser.add_argument("--consumers", type=_positive, default=16, help="connections that read and confirm")
    parser.add_argument("--pipeline", type=_positive, default=32, help="requests per batch")
    parser.add_argument("--iterations", type=_positive, default=1000, help="batches per producer")
    parser.add_argument("--payload", type=_natural, default=128, help="message size in bytes")
    parser.add_argument(
        "--systems",
        help="comma-separated subset of the mode's systems (default: all of them; the baseline must be in): "
        + "; ".join(f"{name}: {', '.join(mode.systems)}" for name, mode in MODES.items()),
    )
    parser.add_argument(
        "--latency-iterations",
        type=_natural,
        default=2000,
        help="unpipelined send/read/confirm cycles per round against dbqueue and redis-list "
        "(--durable: their durable variants; --batch, --workers: none) (0: none)",
    )
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds before one load run fails")
    parser.add_argument(
        "--server-python",
        metavar="PATH",
        help="interpreter for the dbqueue server (default: this one); it must have dbqueue installed",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=0.7,
        metavar="LOAD",
        help="before starting, wait until the 1-minute load average is at most this (0: do not wait)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=300.0, metavar="SECONDS", help="wait at most this long for a quiet machine"
    )
    parser.add_argument(
        "--retry-crowded",
        type=_natural,
        default=2,
        metavar="K",
        help=(
            f"run a round again, up to K times, when other processes used over {100 * CROWDED:.0f}%% of a core in a run"
        ),
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write every raw result as JSON")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run for CI: 1 round, 20 iterations, 200 round trips, no waiting, unless given",
    )
    known = parser.parse_known_args(argv)[0]
    defaults: dict[str, Any] = dict(SMOKE) if known.smoke else {}
    if known.batch:
        # Keep a run near 2M messages (16 x 32 x 40 x 100): a batch run counts messages, not requests.
        defaults["iterations"] = max(1, round((20 if known.smoke else 4000) / known.batch))
        defaults["latency_iterations"] = 0  # round trips are single messages: see the default mode
    if known.workers:
        defaults["latency_iterations"] = 0  # one connection reaches one worker: nothing to compare
    parser.set_defaults(**defaults)  # options given explicitly still win
    args = parser.parse_args(argv)
    args.mode = "durable" if args.durable else "batch" if args.batch else "workers" if args.workers else "memory"
    args.batch = args.batch or 1
    mode = MODES[args.mode]
    if args.systems is None:
        args.systems = list(mode.systems)
    else:
        args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(args.systems) - set(mode.systems))
    if unknown:
        parser.error(f"systems not in the {args.mode} mode: {', '.join(unknown)} (it has: {', '.join(mode.systems)})")
    if len(set(args.systems)) != len(args.systems):
        parser.error("--systems lists a system twice")
    if mode.baseline not in args.systems:
        parser.error(f"--systems must include {mode.baseline}: every ratio is taken against it")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


# --- the run ------------------------------------------------------------------------


@dataclass
class Run:
    """One load run or one round-trip run of one system in one round."""

    round: int
    system: str
    kind: str  # "load" or "round-trips"
    result: BenchResult | None = None
    server_cpu_seconds: float = 0.0
    other_cpu_seconds: float = 0.0  # every other user-space process on the machine, over the same window
    kernel_cpu_seconds: float = 0.0  # kernel threads and interrupt work charged to no process, same window
    window_seconds: float = 0.0  # wall time the CPU figures above cover (the run plus its setup)
    data_bytes: int | None = None  # a durable server's files after the run
    error: str = ""
    discarded: bool = False  # its round was crowded and run again

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round, "system": self.system, "kind": self.kind}
        if self.discarded:
            out["discarded"] = "crowded round, run again"
        if self.data_bytes is not None:
            out["data_bytes"] = self.data_bytes
        if self.result is None:
            return {**out, "error": self.error}
        figures = self.result.as_dict()
        figures.pop("system")
        return {
            **out,
            **figures,
            "server_cpu_seconds": round(self.server_cpu_seconds, 3),
            "server_cpu_percent": round(100.0 * self.server_cpu_fraction, 1),
            "other_cpu_seconds": round(self.other_cpu_seconds, 3),
            "other_cpu_percent": round(100.0 * self.other_cpu_fraction, 1),
            "kernel_cpu_seconds": round(self.kernel_cpu_seconds, 3),
            "kernel_cpu_percent": round(100.0 * self.kernel_cpu_fraction, 1),
            "cpu_window_seconds": round(self.window_seconds, 4),
        }

    @property
    def server_cpu_fraction(self) -> float:
        return self.server_cpu_seconds / self.window_seconds if self.window_seconds else 0.0

    @property
    def other_cpu_fraction(self) -> float:
        return self.other_cpu_seconds / self.window_seconds if self.window_seconds else 0.0

    @property
    def kernel_cpu_fraction(self) -> float:
        return self.kernel_cpu_seconds / self.window_seconds if self.window_seconds else 0.0

    @property
    def crowded(self) -> bool:
        # Below a second the 10 ms ticks of /proc/stat make the share too coarse to judge.
        return self.other_cpu_fraction > CROWDED and self.window_seconds >= 1.0


@dataclass
class Comparison:
    args: argparse.Namespace
    console: Console
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it has no figures (or stopped having them)
    runs: list[Run] = field(default_factory=list)
    disk: dict[str, dict[str, Any]] = field(default_factory=dict)  # durable system -> its disk use at the end
    interrupted: bool = False

    @property
    def mode(self) -> Mode:
        return MODES[self.args.mode]

    def config(self, system: str, iterations: int, batch: int = 1) -> BenchConfig:
        args = self.args
        return BenchConfig(
            addresses=self.servers[system].addresses,  # a group's workers: run_load spreads connections over them
            producers=args.producers,
            consumers=args.consumers,
            pipeline=args.pipeline,
            iterations=iterations,
            payload=args.payload,
            time_limit=args.time_limit,
            batch=batch,
        )

    def start_servers(self, stack: ExitStack) -> None:
        for name in self.args.systems:
            server = SYSTEMS[name].server(self.args)
            stack.callback(server.stop)
            try:
                server.start()
            except ServerUnavailable as exc:
                self.skip(name, str(exc))
                continue
            self.servers[name] = server
            self.console.print(f"started {name} {server.describe()}")

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        self.console.print(f"[bold red]skipping {name}[/]: {reason}")

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        args = self.args
        latency = self.mode.latency if args.latency_iterations else None
        for round_ in range(1, args.rounds + 1):
            for attempt in range(args.retry_crowded + 1):
                first = len(self.runs)
                for name in args.systems:
                    if name in self.servers and name not in self.skipped:
                        self.measure(loop, round_, name, "load")
                for name in latency or ():
                    if name in self.servers and name not in self.skipped:
                        self.measure(loop, round_, name, "round-trips")
                crowded = [run for run in self.runs[first:] if run.crowded]
                last = attempt == args.retry_crowded
                for run in self.runs[first:]:
                    if run.error and (last or not run.crowded):
                        self.skip(run.system, f"round {round_} {run.kind} failed, no further runs: {run.error}")
                if not crowded or last:
                    break
                for run in self.runs[first:]:
                    run.discarded = True
                names = ", ".join(f"{run.system} {run.kind}" for run in crowded)
                self.console.print(
                    f"[bold yellow]round {round_} was crowded[/] ({names}): running it again "
                    f"({attempt + 1} of {args.retry_crowded}) once the machine is quiet"
                )
                wait_for_idle_cpu(args.quiet_wait, CROWDED, say=self.console.print)
        self.record_disk(final=True)

    def record_disk(self, final: bool = False) -> None:
        """Note each durable server's disk use (at the end when ``final``)."""
        for name, server in self.servers.items():
            if not server.data_paths():
                continue
            entry = self.disk.setdefault(name, {"what": server.data_description(), "max_after_run": 0})
            size = server.data_bytes()
            entry["max_after_run"] = max(entry["max_after_run"], size)
            if final:
                entry["end"] = size

    def measure(self, loop: asyncio.AbstractEventLoop, round_: int, name: str, kind: str) -> None:
        server = self.servers[name]
        iterations = self.args.iterations if kind == "load" else self.args.latency_iterations
        batch = self.args.batch if kind == "load" else 1
        driver = SYSTEMS[name].driver(self.config(name, iterations, batch))
        run = Run(round_, name, kind)
        began = time.perf_counter()
        watch = CpuWatch(lambda: [os.getpid()])  # the servers are our children: left out with us
        watch.start()
        cpu_before = server.cpu_seconds()
        # The engine's own time limit binds the consumers; this one also ends a run whose server stopped answering.
        work = run_load(driver) if kind == "load" else run_round_trips(driver)
        task = loop.create_task(asyncio.wait_for(work, self.args.time_limit + 30))
        try:
            with _signals_cancel(loop, task):
                run.result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        except FAILURES as exc:
            run.error = f"{type(exc).__name__}: {exc or f'not done {self.args.time_limit + 30:.0f} s after it began'}"
            if not server.alive():
                run.error += f" ({server.exit_description()})"
        run.server_cpu_seconds = server.cpu_seconds() - cpu_before
        watch.stop()
        run.other_cpu_seconds, run.kernel_cpu_seconds = watch.other_seconds, watch.kernel_seconds
        run.window_seconds = time.perf_counter() - began
        if server.data_paths():
            run.data_bytes = server.data_bytes()
            self.record_disk()
        self.runs.append(run)
        self.console.print(_run_line(run, self.args.rounds))
        # A failure on a crowded machine (a confirm after a 1 s timeout, say) is retried with its round;
        # `run` skips the system for good once a failure is not crowded, or the retries are spent.

    def results(self, name: str, kind: str = "load") -> dict[int, Run]:
        """The runs that count: finished, and not from a round that was run again."""
        return {
            r.round: r
            for r in self.runs
            if r.system == name and r.kind == kind and r.result is not None and not r.discarded
        }


def _run_line(run: Run, rounds: int) -> str:
    head = f"round {run.round}/{rounds}  {run.system:<17} {run.kind:<11}"
    if run.result is None:
        return f"{head} [bold red]FAILED[/] {run.error}"
    r = run.result
    cpu = (
        f"CPU: client {100 * r.client_cpu_seconds / r.seconds:.0f}%, server {100 * run.server_cpu_fraction:.0f}%, "
        f"other processes {100 * run.other_cpu_fraction:.0f}%, kernel {100 * run.kernel_cpu_fraction:.0f}%"
    )
    if run.data_bytes is not None:
        cpu += f", data {run.data_bytes / 1e6:,.1f} MB"
    if run.kind == "load":
        return (
            f"{head} {r.requests_per_second:>11,.0f} req/s {r.messages_per_second:>10,.0f} msg/s"
            f"  {r.seconds:6.2f} s  {cpu}"
        )
    return f"{head} p50 {r.percentile_ms(0.5):.3f} ms  p99 {r.percentile_ms(0.99):.3f} ms  {r.seconds:6.2f} s  {cpu}"


# --- the report ---------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _empty_read_fraction(result: BenchResult, batch: int = 1) -> float | None:
    """Reads that found nothing, over all reads: every message is sent once and confirmed once, the rest are reads.

    None for batches: a batched read may return part of a batch, so the counts cannot tell.
    """
    if batch > 1:
        return None
    reads = result.requests - 2 * result.messages
    return (reads - result.messages) / reads if reads else 0.0


def _pooled_percentile_ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)  # the same rule as BenchResult.percentile_ms
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0 if ordered else float("nan")


def summarise(comparison: Comparison) -> dict[str, Any]:
    """Medians, pair-by-pair ratios and pooled latency percentiles, as plain data (what --json stores)."""
    throughput: dict[str, Any] = {}
    mode = comparison.mode
    baseline = mode.baseline
    base = {i: run.result for i, run in comparison.results(baseline).items() if run.result is not None}
    for name in comparison.args.systems:
        runs = comparison.results(name)
        if not runs:
            continue
        results = {i: run.result for i, run in runs.items() if run.result is not None}
        rates = [r.messages_per_second for r in results.values()]
        figures: dict[str, Any] = {
            "rounds": len(runs),
            "requests_per_second": _median([r.requests_per_second for r in results.values()]),
            "messages_per_second": _median(rates),
            "messages_per_second_min": min(rates),
            "messages_per_second_max": max(rates),
            "empty_read_fraction": (
                None if comparison.args.batch > 1 else _median([_empty_read_fraction(r) for r in results.values()])  # type: ignore[misc]
            ),
            "client_cpu_fraction": _median([r.client_cpu_seconds / r.seconds for r in results.values()]),
            "server_cpu_fraction": _median([run.server_cpu_fraction for run in runs.values()]),
            "other_cpu_fraction": _median([run.other_cpu_fraction for run in runs.values()]),
            "kernel_cpu_fraction": _median([run.kernel_cpu_fraction for run in runs.values()]),
        }
        if name != baseline:
            pairs = [(base[i], results[i]) for i in sorted(results) if base.get(i) is not None]
            figures["pairs"] = len(pairs)
            if pairs:
                by_round = [a.messages_per_second / b.messages_per_second for a, b in pairs]
                figures["ratio_messages_by_round"] = by_round
                figures["ratio_messages"] = _median(by_round)
                figures["ratio_requests"] = _median([a.requests_per_second / b.requests_per_second for a, b in pairs])
        throughput[name] = figures

    targets = []
    for target in mode.targets:
        if target.system is None:
            entry = throughput.get(baseline)
            reached = entry["messages_per_second"] if entry else None
            by_round = [r.messages_per_second for r in base.values()]
        else:
            entry = throughput.get(target.system)
            reached = entry.get("ratio_messages") if entry else None
            by_round = entry.get("ratio_messages_by_round", []) if entry else []
        targets.append(
            {
                "target": target.description,
                "goal": f"{target.op} {target.threshold:,.0f}"
                if target.threshold >= 100
                else f"{target.op} {target.threshold:g}",
                "reached": reached,
                "by_round": by_round,
                "met": None if reached is None else target.met(reached),
            }
        )

    latency: dict[str, Any] = {}
    pair: tuple[str, ...] = mode.latency or ()
    for name in pair:
        runs = comparison.results(name, "round-trips")
        if not runs:
            continue
        pooled = [t for run in runs.values() if run.result is not None for t in run.result.latencies]
        latency[name] = {
            "round_trips": len(pooled),
            "p50_ms": _pooled_percentile_ms(pooled, 0.50),
            "p99_ms": _pooled_percentile_ms(pooled, 0.99),
            "client_cpu_fraction": _median(
                [r.result.client_cpu_seconds / r.result.seconds for r in runs.values() if r.result is not None]
            ),
            "server_cpu_fraction": _median([r.server_cpu_fraction for r in runs.values()]),
            "other_cpu_fraction": _median([r.other_cpu_fraction for r in runs.values()]),
            "kernel_cpu_fraction": _median([r.kernel_cpu_fraction for r in runs.values()]),
        }
    if len(latency) == 2:
        a, b = (latency[name] for name in pair)
        latency["ratio"] = {"p50": a["p50_ms"] / b["p50_ms"], "p99": a["p99_ms"] / b["p99_ms"]}
    return {
        "mode": comparison.args.mode,
        "baseline": baseline,
        "throughput": throughput,
        "targets": targets,
        "latency": latency,
        "disk": comparison.disk,
    }


def print_report(console: Console, comparison: Comparison, summary: dict[str, Any]) -> None:
    args = comparison.args
    baseline = summary["baseline"]
    throughput = summary["throughput"]
    if throughput:
        batches = f", {args.batch} messages a request" if args.batch > 1 else ""
        title = f"Load test{batches}, medians over {args.rounds} interleaved round(s)"
        table = Table(box=box.MARKDOWN)
        table.add_column("system")
        table.add_column("runs", justify="right")
        for heading in (
            "requests/s",
            "messages/s",
            "messages/s min–max",
            "empty reads",
            "client CPU",
            "server CPU",
            "other CPU",
            "kernel CPU",
        ):
            table.add_column(heading, justify="right")
        table.add_column(f"{baseline} ÷ system, msg/s", justify="right")
        table.add_column(f"{baseline} ÷ system, req/s", justify="right")
        for name, f in throughput.items():
            ratio_m = ratio_r = "—"
            if "pairs" in f:
                ratio_m = f"{f['ratio_messages']:.2f}×" if f["pairs"] else "no pair"
                ratio_r = f"{f['ratio_requests']:.2f}×" if f["pairs"] else "no pair"
            table.add_row(
                name,
                str(f["rounds"]),
                f"{f['requests_per_second']:,.0f}",
                f"{f['messages_per_second']:,.0f}",
                f"{f['messages_per_second_min']:,.0f}–{f['messages_per_second_max']:,.0f}",
                "—" if f["empty_read_fraction"] is None else f"{100 * f['empty_read_fraction']:.1f}%",
                f"{100 * f['client_cpu_fraction']:.0f}%",
                f"{100 * f['server_cpu_fraction']:.0f}%",
                f"{100 * f['other_cpu_fraction']:.0f}%",
                f"{100 * f['kernel_cpu_fraction']:.0f}%",
                ratio_m,
                ratio_r,
            )
        _print_table(console, title, table)
        console.print(
            f"Ratios are the median of round i's {baseline} figure over round i's figure for the system "
            f"(> 1: {baseline} faster).\n"
            "CPU is the median share of one core over each run (client: this process; server: all its threads and\n"
            "children, for a group the supervisor's and every worker's summed; other: every other user-space process,\n"
            "which should be near 0%; kernel: kernel threads (writeback, ksoftirqd) and interrupt work charged to no\n"
            "process: mostly disk and network work the systems cause).\n"
            + (
                "A request is one batch (a send, a read or a confirm of up to N messages);"
                " redis-list-batch has no confirms."
                if args.batch > 1
                else "Empty reads: reads that found nothing, as a share of all reads."
            )
        )
    if summary["targets"]:
        table = Table(box=box.MARKDOWN)
        for heading in ("target", "goal", "reached (median)", "by round", "met?"):
            table.add_column(heading, justify="left" if heading == "target" else "right")
        for t in summary["targets"]:
            absolute = t["reached"] is not None and t["reached"] > 100
            shown = "—" if t["reached"] is None else f"{t['reached']:,.0f}" if absolute else f"{t['reached']:.2f}×"
            rounds = " ".join(f"{v:,.0f}" if absolute else f"{v:.2f}" for v in t["by_round"])
            met = "—" if t["met"] is None else "yes" if t["met"] else "[bold red]no[/]"
            table.add_row(t["target"], t["goal"], shown, rounds, met)
        _print_table(console, "Targets", table)
    disk = summary["disk"]
    if disk:
        table = Table(box=box.MARKDOWN)
        for heading in ("system", "what", "largest after a load run", "at the end"):
            table.add_column(heading, justify="left" if heading in ("system", "what") else "right")
        for name, d in disk.items():
            table.add_row(name, d["what"], _size(d["max_after_run"]), _size(d["end"]) if "end" in d else "—")
        _print_table(console, "Disk use of the durable systems (apparent file sizes)", table)
    latency = summary["latency"]
    if latency:
        title = (
            f"Unpipelined round trips, one connection, {args.latency_iterations:,} send/read/confirm cycles per round"
        )
        table = Table(box=box.MARKDOWN)
        table.add_column("system")
        for heading in ("round trips", "p50", "p99", "client CPU", "server CPU", "other CPU", "kernel CPU"):
            table.add_column(heading, justify="right")
        pair: tuple[str, ...] = comparison.mode.latency or ()
        for name in pair:
            if name in latency:
                f = latency[name]
                table.add_row(
                    name,
                    f"{f['round_trips']:,}",
                    f"{f['p50_ms']:.3f} ms",
                    f"{f['p99_ms']:.3f} ms",
                    f"{100 * f['client_cpu_fraction']:.0f}%",
                    f"{100 * f['server_cpu_fraction']:.0f}%",
                    f"{100 * f['other_cpu_fraction']:.0f}%",
                    f"{100 * f['kernel_cpu_fraction']:.0f}%",
                )
        if "ratio" in latency:
            ratio = latency["ratio"]
            table.add_row(f"{pair[0]} ÷ {pair[1]}", "", f"{ratio['p50']:.2f}×", f"{ratio['p99']:.2f}×", "", "", "", "")
        _print_table(console, title, table)
        console.print(f"Percentiles pool every round's requests; a latency ratio > 1 means {pair[0]} is slower.")
    finished = [run for run in comparison.runs if run.result is not None and not run.discarded]
    crowded = [run for run in finished if run.crowded]
    discarded = sum(1 for run in comparison.runs if run.discarded)
    if discarded:
        console.print(
            f"{discarded} runs of crowded rounds were run again; they are in --json, not in the figures above"
        )
    if crowded:
        console.print(
            f"[bold yellow]warning[/]: in {len(crowded)} of {len(finished)} runs other processes used more than "
            f"{CROWDED:.0%} of a core ({', '.join(f'round {r.round} {r.system} {r.kind}' for r in crowded[:8])}"
            f"{', ...' if len(crowded) > 8 else ''}): those figures measure a shared machine"
        )
    for name, reason in comparison.skipped.items():
        console.print(f"[bold red]{name}[/]: {reason}")
    if comparison.interrupted:
        console.print("[bold red]interrupted[/]: the figures above cover the runs that finished")


def _size(count: int) -> str:
    return f"{count:,} B ({count / 1e6:,.1f} MB)"


def _print_table(console: Console, title: str, table: Table) -> None:
    """Print ``title`` and ``table`` without the padding rich adds, so they paste cleanly into Markdown."""
    with console.capture() as capture:
        console.print(table)
    lines = [line.rstrip() for line in capture.get().splitlines()]
    console.file.write(f"\n{title}\n\n" + "\n".join(line for line in lines if line) + "\n\n")


# --- the machine, and what was run --------------------------------------------------


def _versions(dbqueue: str, servers: dict[str, ServerProcess]) -> dict[str, str]:
    versions = {"dbqueue": dbqueue}
    try:
        import uvloop

        versions["uvloop"] = uvloop.__version__
    except ImportError:
        versions["uvloop"] = "not installed (stdlib asyncio loop)"
    versions["hiredis"] = getattr(hiredis, "__version__", "?")
    for server in servers.values():
        if type(server).program:
            versions[type(server).program] = server.version()
    return versions


def print_header(console: Console, info: dict[str, Any]) -> None:
    machine, args = info["machine"], info["workload"]
    for line in context_lines(info):  # without a dbqueue line: main moved it among the versions
        console.print(line)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    batch = f", {args['batch']} messages a request" if args["batch"] > 1 else ""
    console.print(
        f"workload ({args['mode']}): {args['producers']} producers, {args['consumers']} consumers, "
        f"pipeline {args['pipeline']}{batch}, {args['iterations']:,} iterations, {args['payload']}-byte payloads "
        f"(unique per message: a running number in the last {min(8, args['payload'])} bytes, for every system) "
        f"= {args['messages']:,} messages a run; {args['rounds']} round(s) of {' → '.join(args['systems'])}"
    )
    if machine["nproc"] and machine["nproc"] < 4:
        console.print(
            f"note: the load generator and the server share {machine['nproc']} CPUs; "
            "a system that needs more than one core is capped by this machine"
        )


# --- plot ---------------------------------------------------------------------------


def write_plot(path: str, comparison: Comparison, summary: dict[str, Any], console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)")
        return
    names = list(summary["throughput"])
    if not names:
        console.print("no figures to plot")
        return
    medians = [summary["throughput"][n]["messages_per_second"] for n in names]
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 4.5))
    ax.bar(names, medians, color=["#d55e00" if n == summary["baseline"] else "#0072b2" for n in names])
    for x, name in enumerate(names):
        rounds = [r.result.messages_per_second for r in comparison.results(name).values() if r.result is not None]
        ax.scatter([x] * len(rounds), rounds, color="black", s=12, zorder=3)
    ax.set_ylabel("messages/s (bar: median; dots: rounds)")
    ax.set_title(
        f"{comparison.args.producers}p/{comparison.args.consumers}c, pipeline {comparison.args.pipeline}, "
        f"{comparison.args.payload} B"
    )
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    console.print(f"plot written to {path}")


# --- main ---------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _signals_cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> Iterator[None]:
    """While ``task`` runs, let SIGINT and SIGTERM cancel it.

    A signal handler that raises would raise inside whichever protocol callback
    happens to run, and the loop takes that for a broken connection; a
    cancelled task unwinds the load test through its own ``finally`` clauses.
    """
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.getsignal(sig) for sig in signals]
    for sig in signals:
        loop.add_signal_handler(sig, task.cancel)
    try:
        yield
    finally:
        for sig, handler in zip(signals, previous):
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def _cancel_everything(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if "--fan-in" in arguments:  # a mode with a script of its own
        import fanin

        return fanin.main([argument for argument in arguments if argument != "--fan-in"])
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on `kill` too
    comparison = Comparison(args, console)
    info = begin_run(args, console.print)
    dbqueue = info.pop("dbqueue")  # printed and stored among the versions
    info["workload"] = {
        "mode": args.mode,
        "batch": args.batch,
        "rounds": args.rounds,
        "producers": args.producers,
        "consumers": args.consumers,
        "pipeline": args.pipeline,
        "iterations": args.iterations,
        "payload": args.payload,
        "messages": args.producers * args.pipeline * args.iterations * args.batch,
        "latency_iterations": args.latency_iterations,
        "systems": args.systems,
    }
    loop = new_event_loop()
    try:
        with ExitStack() as stack:
            try:
                comparison.start_servers(stack)
                info["versions"] = _versions(dbqueue, comparison.servers)
                print_header(console, info)
                comparison.run(loop)
            except KeyboardInterrupt:
                comparison.interrupted = True
                _cancel_everything(loop)
            # leaving the stack stops every server, whatever happened above
    finally:
        loop.close()
    info.setdefault("versions", {})
    summary = summarise(comparison)
    print_report(console, comparison, summary)
    if args.json:
        document = {
            **info,
            "summary": summary,
            "runs": [run.as_dict() for run in comparison.runs],
            "skipped": comparison.skipped,
            "interrupted": comparison.interrupted,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"raw results written to {args.json}")
    if args.plot:
        write_plot(args.plot, comparison, summary, console)
    if comparison.interrupted:
        return 130
    return 1 if comparison.skipped or not comparison.runs else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compare dbqueue with beanstalkd and Redis under one workload, interleaved so drift cancels.

Run ``python bench/compare.py`` (``--smoke`` for a few seconds' check). It
starts every server once, on its own free loopback port, then runs the load
test of `dbqueue.bench` against each system in turn, A B C D A B C D ..., for
``--rounds`` rounds, with the load generator in this process on uvloop. Each
round ends with unpipelined round trips (send, read, confirm one at a time on
one connection) against dbqueue and redis-list.

It reports, per system, the median requests/s and messages/s; for dbqueue
against each peer, the median of the round-by-round ratios (round i's dbqueue
figure over round i's peer figure), so that a machine slowing down or speeding
up over the run cancels out; the round trips' p50 and p99 (pooled over rounds);
and the CPU the load generator and each server used, which says who the
bottleneck was. Servers are stopped at the end, also on failure or Ctrl-C.

Messages/s is the figure to compare: requests/s also counts reads that found
the queue empty, and how many of those a system causes is not a virtue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `peers` sits next to this file

import hiredis  # noqa: E402
from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import dbqueue  # noqa: E402
from dbqueue.bench import (  # noqa: E402
    BenchConfig,
    BenchFailure,
    BenchResult,
    DbQueueDriver,
    Driver,
    run_load,
    run_round_trips,
)
from dbqueue.errors import DbQueueError  # noqa: E402
from dbqueue.server import new_event_loop  # noqa: E402
from peers import (  # noqa: E402
    BeanstalkdDriver,
    BeanstalkdServer,
    DbQueueServer,
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


SYSTEMS: dict[str, System] = {
    "dbqueue": System(DbQueueDriver, lambda args: DbQueueServer(python=args.server_python)),
    "beanstalkd": System(BeanstalkdDriver, lambda args: BeanstalkdServer(max_job_size=max(65535, args.payload))),
    "redis-list": System(RedisListDriver, lambda args: RedisServer(label="redis-list")),
    "redis-stream": System(RedisStreamDriver, lambda args: RedisServer(label="redis-stream")),
}
BASELINE = "dbqueue"
LATENCY_SYSTEMS = ("dbqueue", "redis-list")  # the round-trip comparison
CROWDED = 0.25  # other processes' CPU, in cores, above which a run is flagged
SMOKE = {"rounds": 1, "iterations": 20, "latency_iterations": 200}
FAILURES = (BenchFailure, DbQueueError, OSError, hiredis.HiredisError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load-test dbqueue and its peers (beanstalkd, Redis lists, Redis streams) in interleaved rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=_positive, default=5, help="rounds of A B C D ...")
    parser.add_argument("--producers", type=_positive, default=16, help="connections that send")
    parser.add_argument("--consumers", type=_positive, default=16, help="connections that read and confirm")
    parser.add_argument("--pipeline", type=_positive, default=32, help="requests per batch")
    parser.add_argument("--iterations", type=_positive, default=1000, help="batches per producer")
    parser.add_argument("--payload", type=_natural, default=128, help="message size in bytes")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument(
        "--latency-iterations",
        type=_natural,
        default=2000,
        help="unpipelined send/read/confirm cycles per round against dbqueue and redis-list (0: none)",
    )
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds before one load run fails")
    parser.add_argument(
        "--server-python",
        metavar="PATH",
        help="interpreter for the dbqueue server (default: this one); it must have dbqueue installed",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write every raw result as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: 1 round, 20 iterations, 200 round trips, unless given")
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**SMOKE)  # options given explicitly still win
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    if len(set(args.systems)) != len(args.systems):
        parser.error("--systems lists a system twice")
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
    other_cpu_seconds: float = 0.0  # every other process on the machine, over the same window
    window_seconds: float = 0.0  # wall time the CPU figures above cover (the run plus its setup)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round, "system": self.system, "kind": self.kind}
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
            "cpu_window_seconds": round(self.window_seconds, 4),
        }

    @property
    def server_cpu_fraction(self) -> float:
        return self.server_cpu_seconds / self.window_seconds if self.window_seconds else 0.0

    @property
    def other_cpu_fraction(self) -> float:
        return self.other_cpu_seconds / self.window_seconds if self.window_seconds else 0.0


@dataclass
class Comparison:
    args: argparse.Namespace
    console: Console
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it has no figures (or stopped having them)
    runs: list[Run] = field(default_factory=list)
    interrupted: bool = False

    def config(self, system: str, iterations: int) -> BenchConfig:
        args = self.args
        return BenchConfig(
            addresses=[self.servers[system].address],
            producers=args.producers,
            consumers=args.consumers,
            pipeline=args.pipeline,
            iterations=iterations,
            payload=args.payload,
            time_limit=args.time_limit,
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
            self.console.print(f"started {name} {server.version()} on {server.host}:{server.port} (pid {server.pid})")

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        self.console.print(f"[bold red]skipping {name}[/]: {reason}")

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        args = self.args
        for round_ in range(1, args.rounds + 1):
            for name in args.systems:
                if name in self.servers and name not in self.skipped:
                    self.measure(loop, round_, name, "load")
            if args.latency_iterations:
                for name in LATENCY_SYSTEMS:
                    if name in self.servers and name not in self.skipped:
                        self.measure(loop, round_, name, "round-trips")

    def measure(self, loop: asyncio.AbstractEventLoop, round_: int, name: str, kind: str) -> None:
        server = self.servers[name]
        iterations = self.args.iterations if kind == "load" else self.args.latency_iterations
        driver = SYSTEMS[name].driver(self.config(name, iterations))
        run = Run(round_, name, kind)
        began = time.perf_counter()
        cpu_before, own_before, busy_before = server.cpu_seconds(), time.process_time(), _machine_busy_seconds()
        task = loop.create_task(run_load(driver) if kind == "load" else run_round_trips(driver))
        try:
            with _signals_cancel(loop, task):
                run.result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        except FAILURES as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            if not server.alive():
                run.error += f" ({server.exit_description()})"
        run.server_cpu_seconds = server.cpu_seconds() - cpu_before
        own = time.process_time() - own_before
        run.other_cpu_seconds = max(0.0, _machine_busy_seconds() - busy_before - own - run.server_cpu_seconds)
        run.window_seconds = time.perf_counter() - began
        self.runs.append(run)
        self.console.print(_run_line(run, self.args.rounds))
        if run.error:
            self.skip(name, f"round {round_} {kind} failed, no further runs: {run.error}")

    def results(self, name: str, kind: str = "load") -> dict[int, Run]:
        return {r.round: r for r in self.runs if r.system == name and r.kind == kind and r.result is not None}


def _machine_busy_seconds() -> float:
    """CPU time all processors have spent busy since boot, from /proc/stat (0.0 where there is none)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _run_line(run: Run, rounds: int) -> str:
    head = f"round {run.round}/{rounds}  {run.system:<12} {run.kind:<11}"
    if run.result is None:
        return f"{head} [bold red]FAILED[/] {run.error}"
    r = run.result
    cpu = (
        f"CPU: client {100 * r.client_cpu_seconds / r.seconds:.0f}%, server {100 * run.server_cpu_fraction:.0f}%, "
        f"other processes {100 * run.other_cpu_fraction:.0f}%"
    )
    if run.kind == "load":
        return (
            f"{head} {r.requests_per_second:>11,.0f} req/s {r.messages_per_second:>10,.0f} msg/s"
            f"  {r.seconds:6.2f} s  {cpu}"
        )
    return f"{head} p50 {r.percentile_ms(0.5):.3f} ms  p99 {r.percentile_ms(0.99):.3f} ms  {r.seconds:6.2f} s  {cpu}"


# --- the report ---------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _empty_read_fraction(result: BenchResult) -> float:
    """Reads that found nothing, over all reads: every message is sent once and confirmed once, the rest are reads."""
    reads = result.requests - 2 * result.messages
    return (reads - result.messages) / reads if reads else 0.0


def _pooled_percentile_ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)  # the same rule as BenchResult.percentile_ms
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0 if ordered else float("nan")


def summarise(comparison: Comparison) -> dict[str, Any]:
    """Medians, pair-by-pair ratios and pooled latency percentiles, as plain data (what --json stores)."""
    throughput: dict[str, Any] = {}
    base = {i: run.result for i, run in comparison.results(BASELINE).items()}
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
            "empty_read_fraction": _median([_empty_read_fraction(r) for r in results.values()]),
            "client_cpu_fraction": _median([r.client_cpu_seconds / r.seconds for r in results.values()]),
            "server_cpu_fraction": _median([run.server_cpu_fraction for run in runs.values()]),
            "other_cpu_fraction": _median([run.other_cpu_fraction for run in runs.values()]),
        }
        if name != BASELINE:
            pairs = [(base[i], results[i]) for i in sorted(results) if base.get(i) is not None]
            figures["pairs"] = len(pairs)
            if pairs:
                figures["dbqueue_ratio_messages"] = _median([a.messages_per_second / b.messages_per_second for a, b in pairs])
                figures["dbqueue_ratio_requests"] = _median([a.requests_per_second / b.requests_per_second for a, b in pairs])
        throughput[name] = figures

    latency: dict[str, Any] = {}
    for name in LATENCY_SYSTEMS:
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
        }
    if len(latency) == 2:
        a, b = (latency[name] for name in LATENCY_SYSTEMS)
        latency["ratio"] = {"p50": a["p50_ms"] / b["p50_ms"], "p99": a["p99_ms"] / b["p99_ms"]}
    return {"throughput": throughput, "latency": latency}


def print_report(console: Console, comparison: Comparison, summary: dict[str, Any]) -> None:
    args = comparison.args
    throughput = summary["throughput"]
    if throughput:
        title = f"Load test, medians over {args.rounds} interleaved round(s)"
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
        ):
            table.add_column(heading, justify="right")
        table.add_column(f"{BASELINE} ÷ system, msg/s", justify="right")
        table.add_column(f"{BASELINE} ÷ system, req/s", justify="right")
        for name, f in throughput.items():
            ratio_m = ratio_r = "—"
            if "pairs" in f:
                ratio_m = f"{f['dbqueue_ratio_messages']:.2f}×" if f["pairs"] else "no pair"
                ratio_r = f"{f['dbqueue_ratio_requests']:.2f}×" if f["pairs"] else "no pair"
            table.add_row(
                name,
                str(f["rounds"]),
                f"{f['requests_per_second']:,.0f}",
                f"{f['messages_per_second']:,.0f}",
                f"{f['messages_per_second_min']:,.0f}–{f['messages_per_second_max']:,.0f}",
                f"{100 * f['empty_read_fraction']:.1f}%",
                f"{100 * f['client_cpu_fraction']:.0f}%",
                f"{100 * f['server_cpu_fraction']:.0f}%",
                f"{100 * f['other_cpu_fraction']:.0f}%",
                ratio_m,
                ratio_r,
            )
        _print_table(console, title, table)
        console.print(
            "Ratios are the median of round i's dbqueue figure over round i's peer figure (> 1: dbqueue faster).\n"
            "CPU is the median share of one core over each run (client: this process; server: all its threads;\n"
            "other: every other process on the machine, which should be near 0%).\n"
            "Empty reads: reads that found nothing, as a share of all reads."
        )
    latency = summary["latency"]
    if latency:
        title = f"Unpipelined round trips, one connection, {args.latency_iterations:,} send/read/confirm cycles per round"
        table = Table(box=box.MARKDOWN)
        table.add_column("system")
        for heading in ("round trips", "p50", "p99", "client CPU", "server CPU", "other CPU"):
            table.add_column(heading, justify="right")
        for name in LATENCY_SYSTEMS:
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
                )
        if "ratio" in latency:
            ratio = latency["ratio"]
            table.add_row(f"{LATENCY_SYSTEMS[0]} ÷ {LATENCY_SYSTEMS[1]}", "", f"{ratio['p50']:.2f}×", f"{ratio['p99']:.2f}×", "", "", "")
        _print_table(console, title, table)
        console.print("Percentiles pool every round's requests; a latency ratio > 1 means dbqueue is slower.")
    finished = [run for run in comparison.runs if run.result is not None]
    crowded = [run for run in finished if run.other_cpu_fraction > CROWDED and run.window_seconds >= 1.0]  # ticks: 10 ms
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


def _print_table(console: Console, title: str, table: Table) -> None:
    """Print ``title`` and ``table`` without the padding rich adds, so they paste cleanly into Markdown."""
    with console.capture() as capture:
        console.print(table)
    lines = [line.rstrip() for line in capture.get().splitlines()]
    console.file.write(f"\n{title}\n\n" + "\n".join(line for line in lines if line) + "\n\n")


# --- the machine, and what was run --------------------------------------------------


def describe_machine(comparison: Comparison | None = None) -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _git_revision() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    if rev.returncode:
        return "?"
    return rev.stdout.strip() + (" with uncommitted changes under src/" if dirty.stdout.strip() else "")


def _versions(servers: dict[str, ServerProcess]) -> dict[str, str]:
    versions = {"dbqueue": f"{dbqueue.__version__} (git {_git_revision()})"}
    try:
        import uvloop

        versions["uvloop"] = uvloop.__version__
    except ImportError:
        versions["uvloop"] = "not installed (stdlib asyncio loop)"
    versions["hiredis"] = getattr(hiredis, "__version__", "?")
    for name, server in servers.items():
        if name != "dbqueue":
            versions[type(server).program] = server.version()
    return versions


def _command_line() -> str:
    python = sys.executable
    try:
        relative = os.path.relpath(python)
        if not relative.startswith(".."):
            python = relative
    except ValueError:
        pass
    return shlex.join([python, *sys.argv])


def print_header(console: Console, info: dict[str, Any]) -> None:
    machine, args = info["machine"], info["workload"]
    console.print(f"date: {info['date']}")
    console.print(f"command: {info['command']}")
    console.print(
        f"machine: nproc {machine['nproc']} (of {machine['cpu_count']}), {machine['cpu_model']}, "
        f"{machine['kernel']}, Python {machine['python']}"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    console.print(
        f"workload: {args['producers']} producers, {args['consumers']} consumers, pipeline {args['pipeline']}, "
        f"{args['iterations']:,} iterations, {args['payload']}-byte payloads = {args['messages']:,} messages a run; "
        f"{args['rounds']} round(s) of {' → '.join(args['systems'])}"
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
    ax.bar(names, medians, color=["#d55e00" if n == BASELINE else "#0072b2" for n in names])
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
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on `kill` too
    comparison = Comparison(args, console)
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": _command_line(),
        "machine": describe_machine(),
        "workload": {
            "rounds": args.rounds,
            "producers": args.producers,
            "consumers": args.consumers,
            "pipeline": args.pipeline,
            "iterations": args.iterations,
            "payload": args.payload,
            "messages": args.producers * args.pipeline * args.iterations,
            "latency_iterations": args.latency_iterations,
            "systems": args.systems,
        },
    }
    loop = new_event_loop()
    try:
        with ExitStack() as stack:
            try:
                comparison.start_servers(stack)
                info["versions"] = _versions(comparison.servers)
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

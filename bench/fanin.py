"""The fan-in benchmark: many workers with one request in flight each, against dbqueue, its peers and a floor.

    python bench/fanin.py                      # 64, 256 and 1,024 connections, 3 rounds
    python bench/fanin.py --smoke              # a few seconds: CI's check that it works
    python bench/compare.py --fan-in ...       # the same, from compare.py

A real deployment is not a few connections pipelining 32 requests each: it is
many workers, each doing read -> work -> confirm with one request in flight.
For each connection count in ``--connections``, half the connections are
producers (send one message, wait for the reply, send the next) and half are
consumers (read one message with a visibility timeout, ``--visibility-timeout``, then
confirm it; a read that finds the queue empty is tried again 1 ms later).
Every reply is checked (`dbqueue.loadtest.run_fan_in`). The systems:

* dbqueue: ENQUEUE / READ with a visibility timeout / CONFIRM;
* redis-list: the reliable-queue pattern, RPUSH / LMOVE into a processing list / LREM;
* beanstalkd: put / reserve-with-timeout 0 / delete (the visibility timeout is the job's ttr);
* floor: `floor.py`, dbqueue's framing on the same event loop with canned replies and no queue work:
  what any Python server on this loop pays per request, the floor under dbqueue's figures.

Payloads are unique per message for every system (a running number in the last
8 bytes of each ``--payload``-byte payload), so Redis's LREM compares real
payloads along its processing list. Each run sends ``--messages`` messages (at
least one per producer) and ends when all are confirmed, or fails at
``--time-limit``. The systems run in turn, A B C D A B C D ..., ``--rounds``
times for each connection count, so that a machine that drifts moves all alike.

The connections are dealt out over ``--processes`` forked client processes,
which connect, then start together. For each run the report gives confirmed
messages/s, requests/s, the share of reads that found the queue empty, the
p50/p99/p99.9 round trip of every request, and CPU: the server's user and
system time per request (from ``/proc/<pid>/stat`` over exactly the run), its
share of one core, the client processes' CPU (summed, in cores, and the busiest
one's share), every other process's and the kernel's. A server near 100% of a
core was the limit; client processes near 100% each mean the load generator
was. Medians over rounds; percentiles pool every round's round trips; ratios
are the median of round-by-round ratios (dbqueue ÷ system).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue.errors import DbQueueError
from dbqueue.loadtest import BenchConfig, BenchFailure, DbQueueDriver, Driver, FanInResult, run_fan_in
from dbqueue.server import new_event_loop
from machine import CpuWatch, add_run_options, begin_run, context_lines, dbqueue_origin
from peers import (
    BeanstalkdDriver,
    BeanstalkdServer,
    DbQueueServer,
    FloorDriver,
    FloorServer,
    RedisListDriver,
    RedisServer,
    ServerProcess,
    ServerUnavailable,
    process_stat,
)

SYSTEMS: dict[str, tuple[type[Driver], Any]] = {
    "dbqueue": (DbQueueDriver, lambda args: DbQueueServer(python=args.server_python)),
    "redis-list": (RedisListDriver, lambda args: RedisServer(label="redis-list")),
    "beanstalkd": (BeanstalkdDriver, lambda args: BeanstalkdServer(max_job_size=max(65535, args.payload))),
    "floor": (FloorDriver, lambda args: FloorServer(python=args.server_python)),
}
BASELINE = "dbqueue"
CROWDED = 0.25  # other processes' CPU, in cores, above which a run is flagged
SMOKE = {"connections": "8", "messages": 1000, "rounds": 1, "quiet_load": 0.0}
FAILURES = (BenchFailure, DbQueueError, OSError)
TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--connections", default="64,256,1024", help="comma-separated connection counts, half producers, half consumers"
    )
    parser.add_argument("--messages", type=int, default=60_000, help="messages a run sends (at least one per producer)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B C D ... for each connection count")
    parser.add_argument("--processes", type=int, default=2, help="client processes the connections are dealt over")
    parser.add_argument("--payload", type=int, default=128, help="message size in bytes")
    parser.add_argument(
        "--visibility-timeout", type=float, default=30.0, metavar="SECONDS", help="the consumers' visibility timeout"
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds before one run fails")
    parser.add_argument("--json", metavar="PATH", help="write every raw result as JSON")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds for CI: 8 connections, 1,000 messages, 1 round"
    )
    add_run_options(parser)
    known = parser.parse_known_args(argv)[0]
    if known.smoke:
        parser.set_defaults(**SMOKE)  # options given explicitly still win
    args = parser.parse_args(argv)
    try:
        args.levels = [int(part) for part in args.connections.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--connections takes numbers: {args.connections!r}")
    if not args.levels or min(args.levels) < 2:
        parser.error("--connections: at least 2 each (a producer and a consumer)")
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)} (there are: {', '.join(SYSTEMS)})")
    if args.rounds < 1 or args.processes < 1 or args.messages < 1:
        parser.error("--rounds, --processes and --messages must be at least 1")
    return args


# --- one run -------------------------------------------------------------------------


@dataclass
class Run:
    """One system at one connection count in one round."""

    connections: int
    round: int
    system: str
    result: FanInResult | None = None
    server_user: float = 0.0  # seconds of server CPU over the run
    server_system: float = 0.0
    other: float = 0.0  # every other user-space process, over the same window
    kernel: float = 0.0  # kernel work charged to no process
    window: float = 0.0  # wall seconds the CPU figures cover
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None

    def per_request_us(self, seconds: float) -> float:
        return 1e6 * seconds / self.result.requests if self.result and self.result.requests else math.nan

    @property
    def empty_reads(self) -> float:
        """Reads that found nothing, as a share of all reads (every message is sent once and confirmed once)."""
        r = self.result
        if r is None:
            return math.nan
        reads = r.requests - 2 * r.messages
        return (reads - r.messages) / reads if reads else 0.0

    @property
    def crowded(self) -> bool:
        return self.window >= 1.0 and self.other / self.window > CROWDED

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connections": self.connections, "round": self.round, "system": self.system}
        if self.result is None:
            return {**out, "error": self.error}
        r = self.result
        return {
            **out,
            **r.as_dict(),
            "empty_read_fraction": round(self.empty_reads, 4),
            "client_cpu_by_process_seconds": [round(s, 3) for s in r.process_cpu_seconds],
            "server_user_seconds": round(self.server_user, 3),
            "server_system_seconds": round(self.server_system, 3),
            "server_us_per_request": round(self.per_request_us(self.server_user + self.server_system), 3),
            "server_user_us_per_request": round(self.per_request_us(self.server_user), 3),
            "server_system_us_per_request": round(self.per_request_us(self.server_system), 3),
            "client_us_per_request": round(self.per_request_us(r.client_cpu_seconds), 3),
            "other_cpu_seconds": round(self.other, 3),
            "kernel_cpu_seconds": round(self.kernel, 3),
            "cpu_window_seconds": round(self.window, 4),
            "crowded": self.crowded,
        }


def _server_cpu(server: ServerProcess) -> tuple[float, float]:
    """(user, system) seconds of the server's processes so far, with the children they have reaped."""
    user = system = 0
    for pid in server.pids():
        fields = process_stat(pid)
        if fields is not None:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / TICK, system / TICK


def measure(args: argparse.Namespace, server: ServerProcess, name: str, connections: int, round_: int) -> Run:
    run = Run(connections, round_, name)
    producers = connections // 2
    consumers = connections - producers
    iterations = max(1, -(-args.messages // producers))
    config = BenchConfig(
        addresses=server.addresses,
        producers=producers,
        consumers=consumers,
        pipeline=1,
        iterations=iterations,
        payload=args.payload,
        visibility_timeout=args.visibility_timeout,
        time_limit=args.time_limit,
    )
    marks: dict[str, Any] = {}
    watch = CpuWatch(lambda: [os.getpid()])  # the servers and the client processes are our children

    def started() -> None:
        marks["cpu"] = _server_cpu(server)
        marks["time"] = time.perf_counter()
        watch.start()

    def ended() -> None:
        watch.stop()
        marks["window"] = time.perf_counter() - marks["time"]
        marks["cpu_end"] = _server_cpu(server)

    driver = SYSTEMS[name][0]
    try:
        run.result = run_fan_in(driver, config, new_event_loop, args.processes, on_start=started, on_end=ended)
    except FAILURES as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        if not server.alive():
            run.error += f" ({server.exit_description()})"
        return run
    (user, system), (user_end, system_end) = marks["cpu"], marks["cpu_end"]
    run.server_user, run.server_system = user_end - user, system_end - system
    run.other, run.kernel, run.window = watch.other_seconds, watch.kernel_seconds, marks["window"]
    return run


def run_line(run: Run, rounds: int) -> str:
    head = f"{run.connections:>5} conns  round {run.round}/{rounds}  {run.system:<11}"
    if run.result is None:
        return f"{head} FAILED {run.error}"
    r = run.result
    busiest = max(r.process_cpu_seconds) / r.seconds if r.process_cpu_seconds else math.nan
    return (
        f"{head} {r.messages_per_second:>9,.0f} msg/s {r.requests_per_second:>9,.0f} req/s  "
        f"p50 {r.percentile_ms(0.5):.2f} p99 {r.percentile_ms(0.99):.2f} p99.9 {r.percentile_ms(0.999):.2f} ms  "
        f"server {run.per_request_us(run.server_user):.1f}+{run.per_request_us(run.server_system):.1f} µs/req "
        f"({100 * (run.server_user + run.server_system) / run.window:.0f}%)  "
        f"client {r.client_cpu_seconds / r.seconds:.2f} cores (busiest {100 * busiest:.0f}%)  "
        f"other {100 * run.other / run.window:.0f}%  kernel {100 * run.kernel / run.window:.0f}%  "
        f"empty reads {100 * run.empty_reads:.1f}%  {r.seconds:.2f} s"
    )


# --- the report ----------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _pooled_ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)  # the rule of BenchResult.percentile_ms
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0 if ordered else math.nan


def summarise(runs: list[Run], args: argparse.Namespace) -> dict[int, dict[str, dict[str, Any]]]:
    """Per connection count, per system: medians over rounds, pooled percentiles, ratios against dbqueue."""
    summary: dict[int, dict[str, dict[str, Any]]] = {}
    for level in args.levels:
        rows: dict[str, dict[str, Any]] = {}
        base = {run.round: run for run in runs if run.connections == level and run.system == BASELINE and run.ok}
        for name in args.systems:
            done = [run for run in runs if run.connections == level and run.system == name and run.ok]
            if not done:
                continue
            results = [run.result for run in done if run.result is not None]
            pooled = [t for r in results for t in r.latencies]
            row: dict[str, Any] = {
                "rounds": len(done),
                "messages_per_second": _median([r.messages_per_second for r in results]),
                "messages_per_second_min": min(r.messages_per_second for r in results),
                "messages_per_second_max": max(r.messages_per_second for r in results),
                "requests_per_second": _median([r.requests_per_second for r in results]),
                "empty_read_fraction": _median([run.empty_reads for run in done]),
                "p50_ms": _pooled_ms(pooled, 0.50),
                "p99_ms": _pooled_ms(pooled, 0.99),
                "p999_ms": _pooled_ms(pooled, 0.999),
                "server_us_per_request": _median(
                    [run.per_request_us(run.server_user + run.server_system) for run in done]
                ),
                "server_user_us_per_request": _median([run.per_request_us(run.server_user) for run in done]),
                "server_system_us_per_request": _median([run.per_request_us(run.server_system) for run in done]),
                "server_cores": _median([(run.server_user + run.server_system) / run.window for run in done]),
                "client_us_per_request": _median(
                    [run.per_request_us(r.client_cpu_seconds) for run, r in zip(done, results)]
                ),
                "client_cores": _median([r.client_cpu_seconds / r.seconds for r in results]),
                "client_busiest_process": _median([max(r.process_cpu_seconds) / r.seconds for r in results]),
                "other_cores": _median([run.other / run.window for run in done]),
                "kernel_cores": _median([run.kernel / run.window for run in done]),
                "crowded_runs": sum(run.crowded for run in done),
            }
            if name != BASELINE:
                pairs = [(base[run.round], run) for run in done if run.round in base]
                ratios = [a.result.messages_per_second / b.result.messages_per_second for a, b in pairs]  # type: ignore[union-attr]
                row["ratio_by_round"] = ratios
                row["ratio"] = _median(ratios)
            rows[name] = row
        summary[level] = rows
    return summary


def print_report(summary: dict[int, dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    columns = (
        "system", "msg/s", "min–max", "req/s", "empty reads", "p50 ms", "p99 ms", "p99.9 ms",
        "server µs/req (user+sys)", "server CPU", "client µs/req", "client CPU (busiest process)",
        "other CPU", "kernel CPU", f"{BASELINE} ÷ system",
    )  # fmt: skip
    for level, rows in summary.items():
        producers = level // 2
        print(
            f"\nFan-in, {level:,} connections ({producers} producers, {level - producers} consumers, one request in "
            f"flight each), medians over {args.rounds} round(s)\n"
        )
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
        for name, f in rows.items():
            ratio = "—" if name == BASELINE else (f"{f['ratio']:.2f}×" if f.get("ratio_by_round") else "no pair")
            cells = [
                name,
                f"{f['messages_per_second']:,.0f}",
                f"{f['messages_per_second_min']:,.0f}–{f['messages_per_second_max']:,.0f}",
                f"{f['requests_per_second']:,.0f}",
                f"{100 * f['empty_read_fraction']:.1f}%",
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{f['p999_ms']:.2f}",
                f"{f['server_us_per_request']:.1f} ({f['server_user_us_per_request']:.1f}+"
                f"{f['server_system_us_per_request']:.1f})",
                f"{100 * f['server_cores']:.0f}%",
                f"{f['client_us_per_request']:.1f}",
                f"{f['client_cores']:.2f} cores ({100 * f['client_busiest_process']:.0f}%)",
                f"{100 * f['other_cores']:.0f}%",
                f"{100 * f['kernel_cores']:.0f}%",
                ratio,
            ]
            print("| " + " | ".join(cells) + " |")
    print(
        "\nmsg/s: messages confirmed per second (each: one send, one read, one confirm; reads that found the queue"
        " empty\nadd requests, not messages). Round trips: every request's, pooled over rounds. Server CPU: user +"
        " system time\nof the server's process over the run, per request and as a share of one core; client CPU:"
        f" the {args.processes} client\nprocess(es) summed, in cores, and the busiest one's share of a core; other:"
        " every other process on the machine\n(should be near 0%); kernel: kernel work charged to no process. A"
        " server near 100% was the limit."
    )


# --- main ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_file_limit(connections: int) -> str:
    """Raise this process's open-file limit (the servers inherit it) to its hard limit; say if it is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = 2 * connections + 64
    return "" if hard >= needed else f"the open-file limit is {hard}: {connections} connections need about {needed}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on `kill` too
    short = _raise_file_limit(max(args.levels))
    if short:
        print(f"warning: {short}")
    info = begin_run(args)
    for line in context_lines(info):
        print(line)
    producers = [level // 2 for level in args.levels]
    print(
        f"workload: fan-in, one request in flight per connection; connections {', '.join(map(str, args.levels))} "
        f"(half producers, half consumers) over {args.processes} client process(es); {args.messages:,} messages "
        f"a run (rounded up to a whole number per producer: "
        f"{', '.join(f'{-(-args.messages // p) * p:,}' for p in producers)}); {args.payload}-byte payloads, unique "
        f"per message (a running number in the last {min(8, args.payload)} bytes), for every system; visibility "
        f"timeout {args.visibility_timeout:g} s; {args.rounds} round(s) of {' → '.join(args.systems)}"
    )
    runs: list[Run] = []
    skipped: dict[str, str] = {}
    servers: dict[str, ServerProcess] = {}
    interrupted = False
    try:
        with ExitStack() as stack:
            for name in args.systems:
                server = SYSTEMS[name][1](args)
                stack.callback(server.stop)
                try:
                    server.start()
                except ServerUnavailable as exc:
                    skipped[name] = str(exc)
                    print(f"skipping {name}: {exc}")
                    continue
                servers[name] = server
                print(f"started {name} {server.describe()}")
            info["versions"] = {name: server.version() for name, server in servers.items()}
            info["versions"]["dbqueue"] = dbqueue_origin()
            for level in args.levels:
                for round_ in range(1, args.rounds + 1):
                    for name in args.systems:
                        if name not in servers or name in skipped:
                            continue
                        run = measure(args, servers[name], name, level, round_)
                        runs.append(run)
                        print(run_line(run, args.rounds), flush=True)
                        if run.error:
                            skipped[name] = f"{level} connections, round {round_}: {run.error}"
    except KeyboardInterrupt:
        interrupted = True
    summary = summarise(runs, args)
    print_report(summary, args)
    crowded = [run for run in runs if run.ok and run.crowded]
    if crowded:
        print(
            f"warning: in {len(crowded)} of {len(runs)} runs other processes used more than {CROWDED:.0%} of a core "
            f"({', '.join(f'{r.connections}/{r.round}/{r.system}' for r in crowded[:8])}"
            f"{', ...' if len(crowded) > 8 else ''}): those figures measure a shared machine"
        )
    for name, reason in skipped.items():
        print(f"{name}: {reason}")
    if interrupted:
        print("interrupted: the figures above cover the runs that finished")
    if args.json:
        document = {
            **info,
            "workload": {
                key: getattr(args, key)
                for key in ("levels", "messages", "rounds", "processes", "payload", "visibility_timeout", "systems")
            },
            "payloads": "unique per message: a running number in the last 8 bytes",
            "summary": {str(level): rows for level, rows in summary.items()},
            "runs": [run.as_dict() for run in runs],
            "skipped": skipped,
            "interrupted": interrupted,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"raw results written to {args.json}")
    if interrupted:
        return 130
    return 1 if skipped or not runs else 0


if __name__ == "__main__":
    sys.exit(main())

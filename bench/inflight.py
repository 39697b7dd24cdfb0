"""Does a million messages in flight slow the server down? The load test with and without them, interleaved.

Run ``python bench/inflight.py`` (``--held 100000 --iterations 100`` for a
quick check). It starts one dbqueue server and, for each of ``--pairs``
pairs, runs the standard load test (16 producers, 16 consumers, pipeline 32,
128-byte messages, queue ``foo``) twice:

* *without*: nothing else on the server;
* *with*: first ``--held`` messages are sent to queue ``held`` and taken in
  flight, with a ``--held-timeout`` visibility timeout (10 minutes), by ``--holders``
  connections reading with ``read_batch`` (16: the server lets one
  connection hold 100,000 at most, ``--max-in-flight``); those connections
  stay open through the load test, then close (the server requeues their
  messages) and ``held`` is deleted.

So the order is without / with / without / with ... on the same server. Every
measured run follows a short unmeasured warm-up run, so one-off work the
previous phase left behind (a deadline heap to compact, memory to reuse)
falls outside the measurement in both phases alike. The report gives each
phase's median messages/s and the median of the pair-by-pair ratios
with ÷ without against the target (within 10%: at least 0.90), with the CPU
the load generator, the server and every other process used in each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue.client import AsyncClient
from dbqueue.errors import DbQueueError
from dbqueue.loadtest import BenchConfig, BenchFailure, DbQueueDriver, run_load
from filler import Holders, fill, hold
from machine import CpuWatch, add_run_options, begin_run, context_lines, wait_for_idle_cpu
from peers import DbQueueServer, run_guarded

TARGET = 0.90  # with ÷ without, messages/s
CROWDED = 0.25  # other processes' CPU, in cores, above which a run is flagged
HELD_QUEUE = "held"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The load test with and without a million messages in flight on the same server, interleaved.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--held", type=int, default=1_000_000, help="messages kept in flight during the 'with' runs")
    parser.add_argument("--held-timeout", type=float, default=600.0, metavar="SECONDS", help="their visibility timeout")
    parser.add_argument("--holders", type=int, default=16, help="connections that hold them")
    parser.add_argument(
        "--holder-limit",
        type=int,
        default=100_000,
        help="messages one holder takes at most (keep it within the server's --max-in-flight, 100,000 by default)",
    )
    parser.add_argument("--read-batch", type=int, default=1000, help="messages a send_batch / read_batch when holding")
    parser.add_argument("--pairs", type=int, default=2, help="pairs of runs (without, with)")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=16)
    parser.add_argument("--pipeline", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=1000, help="batches per producer")
    parser.add_argument("--payload", type=int, default=128)
    parser.add_argument(
        "--warmup-iterations", type=int, default=20, help="iterations of the warm-up run before each run"
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds one load run or one setup may take")
    parser.add_argument("--retry-crowded", type=int, default=2, help="run a crowded pair again, up to this many times")
    add_run_options(parser)
    parser.add_argument("--json", metavar="PATH", help="write every run as JSON")
    args = parser.parse_args(argv)
    if args.held < 1 or args.held % args.read_batch:
        parser.error("--held must be a positive multiple of --read-batch")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, server: DbQueueServer) -> None:
        self.args = args
        self.server = server
        self.runs: list[dict[str, Any]] = []

    def load_config(self, iterations: int) -> BenchConfig:
        a = self.args
        return BenchConfig(
            addresses=[self.server.address],
            producers=a.producers,
            consumers=a.consumers,
            pipeline=a.pipeline,
            iterations=iterations,
            payload=a.payload,
            time_limit=a.time_limit,
        )

    def held_driver(self) -> DbQueueDriver:
        a = self.args
        return DbQueueDriver(
            BenchConfig(
                addresses=[self.server.address],
                payload=a.payload,
                queue=HELD_QUEUE,
                batch=a.read_batch,
                visibility_timeout=a.held_timeout,
            )
        )

    async def put_in_flight(self) -> tuple[Holders, dict[str, Any]]:
        a = self.args
        driver = self.held_driver()
        await driver.prepare(self.server.address)
        started = time.perf_counter()
        await asyncio.wait_for(fill(driver, self.server.address, a.held // a.read_batch), a.time_limit)
        filled = time.perf_counter() - started
        holders = await asyncio.wait_for(
            hold(driver, self.server.address, connections=a.holders, limit=a.holder_limit), a.time_limit
        )
        stats = await self.stats(HELD_QUEUE)
        if holders.messages != a.held or stats["in_flight"] != a.held:
            await holders.close()
            raise BenchFailure(f"{holders.messages} messages taken, {stats['in_flight']} in flight, not {a.held}")
        return holders, {"fill_seconds": filled, "hold_seconds": holders.seconds, "rss_bytes": self.server.rss_bytes()}

    async def give_back(self, holders: Holders) -> None:
        await holders.close()
        for _ in range(1000):  # the server requeues them once it sees the connections close
            if (await self.stats(HELD_QUEUE))["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
        client = await AsyncClient.connect(self.server.address)
        try:
            await client.delete(HELD_QUEUE)
        finally:
            await client.close()

    async def stats(self, queue: str) -> dict[str, Any]:
        client = await AsyncClient.connect(self.server.address)
        try:
            return await client.stats(queue)  # type: ignore[no-any-return]
        finally:
            await client.close()

    def measure(
        self, loop: asyncio.AbstractEventLoop, pair: int, phase: str, attempt: int, setup: dict[str, Any]
    ) -> dict[str, Any]:
        server = self.server
        loop.run_until_complete(run_load(DbQueueDriver(self.load_config(self.args.warmup_iterations))))
        watch = CpuWatch(lambda: [os.getpid()])
        watch.start()
        began = time.perf_counter()
        server_before = server.cpu_seconds()
        result = loop.run_until_complete(run_load(DbQueueDriver(self.load_config(self.args.iterations))))
        server_cpu = server.cpu_seconds() - server_before
        watch.stop()
        window = time.perf_counter() - began
        run = {
            "pair": pair,
            "phase": phase,
            "attempt": attempt,
            **result.as_dict(),
            "server_cpu_percent": round(100 * server_cpu / window, 1),
            "other_cpu_percent": round(100 * watch.other_seconds / window, 1),
            "kernel_cpu_percent": round(100 * watch.kernel_seconds / window, 1),
            "server_rss_bytes": server.rss_bytes(),
            **setup,
        }
        run["crowded"] = run["other_cpu_percent"] > 100 * CROWDED
        self.runs.append(run)
        print(
            f"pair {pair} {phase:<8} {run['messages_per_second']:>10,.0f} msg/s  {run['seconds']:6.2f} s  CPU: client "
            f"{run['client_cpu_percent']:.0f}%, server {run['server_cpu_percent']:.0f}%, other processes "
            f"{run['other_cpu_percent']:.0f}%, kernel {run['kernel_cpu_percent']:.0f}%  server RSS "
            f"{run['server_rss_bytes'] / 2**20:,.0f} MiB" + ("  [crowded]" if run["crowded"] else "")
        )
        return run

    def pair(self, loop: asyncio.AbstractEventLoop, number: int, attempt: int) -> list[dict[str, Any]]:
        without = self.measure(loop, number, "without", attempt, {})
        holders, setup = loop.run_until_complete(self.put_in_flight())
        print(
            f"pair {number} with:    {self.args.held:,} messages in flight (sent in {setup['fill_seconds']:.1f} s, "
            f"read in {setup['hold_seconds']:.1f} s; server RSS {setup['rss_bytes'] / 2**20:,.0f} MiB)"
        )
        try:
            with_ = self.measure(loop, number, "with", attempt, setup)
        finally:
            loop.run_until_complete(self.give_back(holders))
        return [without, with_]

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the server, run every pair on it (a crowded one again), stop it."""
        with self.server:
            print(f"started dbqueue {self.server.describe()}")
            for number in range(1, self.args.pairs + 1):
                for attempt in range(self.args.retry_crowded + 1):
                    runs = self.pair(loop, number, attempt)
                    if not any(run["crowded"] for run in runs) or attempt == self.args.retry_crowded:
                        break
                    for run in runs:
                        run["discarded"] = True
                    print(f"pair {number} was crowded: running it again once the machine is quiet")
                    wait_for_idle_cpu(self.args.quiet_wait, CROWDED)


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    kept = [run for run in runs if not run.get("discarded")]
    by_phase = {phase: [run for run in kept if run["phase"] == phase] for phase in ("without", "with")}
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for run in kept:
        pairs.setdefault(run["pair"], {})[run["phase"]] = run
    ratios = [
        p["with"]["messages_per_second"] / p["without"]["messages_per_second"]
        for _, p in sorted(pairs.items())
        if "with" in p and "without" in p
    ]
    ratio = statistics.median(ratios) if ratios else float("nan")

    def median(phase: str, key: str) -> float:
        values = [run[key] for run in by_phase[phase]]
        return statistics.median(values) if values else float("nan")

    print()
    print(
        f"Load test ({args.producers}+{args.consumers}, pipeline {args.pipeline}, {args.iterations:,} iterations, "
        f"{args.payload}-byte messages), medians over {len(ratios)} pair(s)"
    )
    print()
    print("| phase | runs | messages/s | min–max | client CPU | server CPU | other CPU | kernel CPU | server RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase, label in (("without", "without"), ("with", f"with {args.held:,} in flight")):
        rates = [run["messages_per_second"] for run in by_phase[phase]]
        if not rates:
            continue
        print(
            f"| {label} | {len(rates)} | {statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} "
            f"| {median(phase, 'client_cpu_percent'):.0f}% | {median(phase, 'server_cpu_percent'):.0f}% "
            f"| {median(phase, 'other_cpu_percent'):.0f}% | {median(phase, 'kernel_cpu_percent'):.0f}% "
            f"| {median(phase, 'server_rss_bytes') / 2**20:,.0f} MiB |"
        )
    print()
    print("| target | goal | reached (median) | by pair | met? |")
    print("|---|---:|---:|---:|---:|")
    met = ratio >= TARGET
    print(
        f"| with ÷ without in flight, msg/s | >= {TARGET:.2f} | {ratio:.2f}× "
        f"| {' '.join(f'{r:.2f}' for r in ratios)} | {'yes' if met else 'no'} |"
    )
    crowded = [run for run in kept if run["crowded"]]
    if crowded:
        print(f"warning: {len(crowded)} runs were crowded (other processes over {CROWDED:.0%} of a core)")
    return {"ratio": ratio, "ratios": ratios, "target": TARGET, "met": met}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = begin_run(args)
    for line in context_lines(context):
        print(line)
    bench = Bench(args, DbQueueServer(python=args.server_python))
    status = run_guarded(bench.run, (TimeoutError, BenchFailure, DbQueueError, OSError), bench.server)
    if status:
        return status
    summary = report(bench.runs, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({**context, "args": vars(args), "runs": bench.runs, **summary}, indent=2) + "\n"
        )
        print(f"runs written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

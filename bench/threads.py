"""Threads sharing one blocking `Client`, against a client per thread; and one thread's round trip, before and after.

Starts one dbqueue server (``dbqueue serve``, a child process) and, against it
in the same run:

1. **One thread's round trip.** A cycle is send, read, confirm: three
   requests, each waiting for its answer. The client of this working tree
   (thread-safe) and the client as it was before it became thread-safe (its
   ``sync.py`` read from git at ``--before``, loaded beside this one) take
   turns, ``--rounds`` times each, so that both see the same server and the
   same load; each round times ``--trips`` cycles.
2. **Threads.** ``--threads`` threads each loop send, read, confirm on a
   queue of their own, checking that every read brings back the payload the
   thread just sent (payloads are unique), either all through one shared
   `Client` or each through a client of its own. Each run stops after
   ``--seconds`` or ``--count`` cycles per thread, whichever comes first;
   shared and own take turns, ``--rounds`` times each.

A message below is one cycle. "other CPU" is what every process but this one
and the server used meanwhile (`machine.CpuWatch`): a figure taken while it is
high measures a shared machine. Ratios are the median of the round-by-round
ratios, as in BENCHMARKS.md.

    python bench/threads.py --quiet-load 0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue import Client
from machine import CpuWatch, add_run_options, begin_run, context_lines
from peers import DbQueueServer, ServerUnavailable

# The last commit whose blocking client was single-threaded (its Client failed when shared by threads).
BEFORE = "66c2646"

REPOSITORY = Path(__file__).resolve().parent.parent


def client_before(revision: str, workdir: Path) -> type[Any]:
    """The `Client` class of ``src/dbqueue/client/sync.py`` at ``revision``, loaded as a module of the
    installed package (its relative imports then find today's protocol and commands)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/dbqueue/client/sync.py"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout
    path = workdir / "sync_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("dbqueue.client._sync_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    client: type[Any] = module.Client
    return client


class Cycles:
    """Send, read, confirm on one queue, checking each payload; counts the cycles done."""

    def __init__(self, client: Any, queue: str, tag: bytes, size: int) -> None:
        self.client = client
        self.queue = queue
        self.tag = tag
        self.size = size
        self.done = 0

    def run(self, count: int, until: float) -> None:
        client, queue = self.client, self.queue
        for n in range(count):
            payload = b"%s:%d:" % (self.tag, n)
            payload += b"." * max(0, self.size - len(payload))
            client.send(queue, payload)
            message = client.read(queue, visibility_timeout=60.0)
            if message is None or message.data != payload:
                raise SystemExit(f"{queue}: sent {payload[:40]!r}, read back {message!r}")
            client.confirm(message.id)
            self.done = n + 1
            if not n % 64 and time.monotonic() >= until:
                return


def round_trip(client: Any, label: str, round_: int, trips: int, size: int) -> tuple[float, float]:
    """Seconds per cycle over ``trips`` cycles of one thread: elapsed, and the CPU this process used
    (the client's alone: the server is another process), which a busy machine disturbs less."""
    queue = f"rt-{label}-{round_}"
    client.create(queue)
    cycles = Cycles(client, queue, f"{label}{round_}".encode(), size)
    cycles.run(50, float("inf"))  # warm up
    started, cpu = time.perf_counter(), time.process_time()
    cycles.run(trips, float("inf"))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.delete(queue)
    return elapsed / trips, cpu / trips


def threaded(
    clients: list[Client], threads: int, seconds: float, count: int, size: int, label: str
) -> tuple[int, float]:
    """Run ``threads`` threads of cycles, thread i on ``clients[i % len(clients)]``; return (cycles, seconds)."""
    queues = [f"{label}-{i}" for i in range(threads)]
    for queue in queues:
        clients[0].create(queue)
    workers = [
        Cycles(clients[i % len(clients)], queue, f"{label}-{i}".encode(), size) for i, queue in enumerate(queues)
    ]
    failures: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def work(cycles: Cycles) -> None:
        start.wait()
        try:
            cycles.run(count, time.monotonic() + seconds)
        except BaseException as exc:  # reported, and the run fails
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(cycles,)) for cycles in workers]
    for thread in pool:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{label}: {len(failures)} thread(s) failed, first: {failures[0]!r}")
    for queue in queues:
        clients[0].delete(queue)
    return sum(cycles.done for cycles in workers), elapsed


def ratio(these: list[float], those: list[float]) -> float:
    """The median of round-by-round ratios (rounds pair up by their index), as BENCHMARKS.md reports ratios."""
    return statistics.median(this / that for this, that in zip(these, those))


def watched(server: DbQueueServer, run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()``'s result, and the CPU seconds other processes used meanwhile."""
    watch = CpuWatch(lambda: [os.getpid(), *server.pids()])
    watch.start()
    result = run()
    watch.stop()
    return result, watch.other_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="each threaded run stops after this long")
    parser.add_argument("--count", type=int, default=20_000, help="... or after this many cycles per thread")
    parser.add_argument("--trips", type=int, default=2_000, help="cycles in each single-thread round")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each client kind")
    parser.add_argument("--payload", type=int, default=64, help="bytes a message")
    parser.add_argument("--before", default=BEFORE, help=f"git revision of the client to compare (default {BEFORE})")
    add_run_options(parser)
    args = parser.parse_args()

    context = begin_run(args)
    for line in context_lines(context):
        print(line)
    print(f"client before: src/dbqueue/client/sync.py at {args.before}")
    try:
        server = DbQueueServer(python=args.server_python).start()
    except ServerUnavailable as exc:
        raise SystemExit(f"the server did not start: {exc}") from None
    address = f"{server.host}:{server.port}"
    print(f"server: {server.describe()}")
    print(
        f"threads {args.threads}, payload {args.payload} B, rounds {args.rounds}, "
        f"{args.trips} cycles a single-thread round, threaded runs of {args.seconds:g} s or {args.count} cycles"
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            before_class = client_before(args.before, Path(workdir))
            with before_class.connect(address) as before, Client.connect(address) as after:
                print("\none thread, send/read/confirm round trips (µs a cycle of three requests; client CPU):")
                times: dict[str, list[float]] = {"before": [], "after": []}
                cpus: dict[str, list[float]] = {"before": [], "after": []}
                for round_ in range(args.rounds):
                    order = [("before", before), ("after", after)]
                    if round_ % 2:
                        order.reverse()  # neither always goes first
                    for label, client in order:
                        run = partial(round_trip, client, label, round_, args.trips, args.payload)
                        (per_cycle, cpu), other = watched(server, run)
                        times[label].append(per_cycle)
                        cpus[label].append(cpu)
                        print(
                            f"  round {round_}  {label:6}  {per_cycle * 1e6:7.1f} µs   client CPU {cpu * 1e6:6.1f} µs"
                            f"   other CPU {other:5.2f} s"
                        )
                for label, values in times.items():
                    print(
                        f"  {label:6}  median {statistics.median(values) * 1e6:7.1f} µs, "
                        f"best {min(values) * 1e6:7.1f} µs;  client CPU median "
                        f"{statistics.median(cpus[label]) * 1e6:6.1f} µs, best {min(cpus[label]) * 1e6:6.1f} µs"
                    )
                for what, figures in (("elapsed", times), ("client CPU", cpus)):
                    print(f"  after/before, {what}: {ratio(figures['after'], figures['before']) - 1:+.1%}")

        print(f"\n{args.threads} threads, send/read/confirm cycles (messages/s):")
        rates: dict[str, list[float]] = {"shared": [], "own": []}
        for round_ in range(args.rounds):
            order = ["shared", "own"] if round_ % 2 == 0 else ["own", "shared"]
            for kind in order:
                count = 1 if kind == "shared" else args.threads
                clients = [Client.connect(address) for _ in range(count)]
                try:
                    run = partial(
                        threaded, clients, args.threads, args.seconds, args.count, args.payload, f"{kind}{round_}"
                    )
                    (cycles, elapsed), other = watched(server, run)
                finally:
                    for client in clients:
                        client.close()
                rate = cycles / elapsed
                rates[kind].append(rate)
                what = "one client shared" if kind == "shared" else "a client each    "
                print(
                    f"  round {round_}  {what}  {rate:9,.0f} /s  ({cycles:,} in {elapsed:.2f} s)   "
                    f"other CPU {other:5.2f} s"
                )
        for kind, values in rates.items():
            what = "one client shared" if kind == "shared" else "a client each    "
            print(f"  {what}  median {statistics.median(values):9,.0f} /s, best {max(values):9,.0f} /s")
        print(f"  shared/own: {ratio(rates['shared'], rates['own']):.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""User and system CPU time a server spends per request under the load test: dbqueue and Redis lists, alternately.

    python bench/server_cpu.py --rounds 3

Each round runs the original's load test (`dbqueue.loadtest`, 16 producers + 16
consumers, pipeline 32) against a dbqueue server and then a Redis server
(lists: RPUSH / LMOVE / LREM), and reads each server's CPU time from
``/proc/PID/stat`` before and after. `bench/instructions.py` counts user-space
instructions exactly but sees nothing of the kernel; this splits a request's
cost into the server's own work and the system calls it makes. The kernel
counts in clock ticks (10 ms here), so a run of a couple of seconds gives the
split to a few percent, and rates move with the machine as in `compare.py`.
Payloads are unique per message (`dbqueue.loadtest`). It prints the machine,
both interpreters' builds and the peers' versions first (`machine`). Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `peers` sits next to this file

from dbqueue.loadtest import BenchConfig, DbQueueDriver, Driver, run_load
from dbqueue.server import new_event_loop
from machine import add_run_options, begin_run, context_lines
from peers import DbQueueServer, RedisListDriver, RedisServer, ServerProcess, process_stat

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) seconds a process has used: fields 14 and 15 of /proc/PID/stat."""
    fields = process_stat(pid)
    if fields is None:
        raise SystemExit(f"the server (pid {pid}) is gone")
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(server: ServerProcess, driver: type[Driver], iterations: int) -> tuple[float, float, float]:
    """(requests/s, user µs per request, system µs per request) of one load run."""
    (pid,) = server.pids()
    config = BenchConfig(addresses=[server.address], iterations=iterations)
    user, system = cpu_seconds(pid)
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(run_load(driver(config)))
    finally:
        loop.close()
    user_after, system_after = cpu_seconds(pid)
    per_request = 1e6 / result.requests
    return result.requests_per_second, (user_after - user) * per_request, (system_after - system) * per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of dbqueue, then Redis lists")
    parser.add_argument("--iterations", type=int, default=1000, help="batches per producer")
    add_run_options(parser)
    parser.set_defaults(quiet_load=0.0)  # as before machine.py: no waiting unless --quiet-load asks (CI runs it)
    args = parser.parse_args(argv)
    for line in context_lines(begin_run(args)):
        print(line)
    with DbQueueServer(python=args.server_python) as dbqueue, RedisServer(label="redis-list") as redis:
        for number in range(1, args.rounds + 1):
            for server, driver in ((dbqueue, DbQueueDriver), (redis, RedisListDriver)):
                rate, user, system = measure(server, driver, args.iterations)
                print(
                    f"round {number}  {server.name:10}  {rate:11,.0f} req/s  server per request: "
                    f"user {user:5.2f} µs, system {system:5.2f} µs, total {user + system:5.2f} µs"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

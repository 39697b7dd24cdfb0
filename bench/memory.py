"""Memory per queued message: dbqueue against a Redis list, each filled with the same N messages.

Run ``python bench/memory.py`` (10,000,000 messages of 128 bytes; ``--messages
100000`` for a quick check). For each system it starts a fresh server, lets it
settle, and notes its idle memory; fills one queue with ``--messages``
messages using batch sends (dbqueue ``send_batch``, Redis ``RPUSH`` with
``--batch`` values; ``--batch 1``: dbqueue ``send`` and one value a ``RPUSH``,
what a user who sends one at a time pays) over a few pipelined connections,
checks the queue holds exactly that many, lets it settle again, and notes the
memory once more:

* dbqueue: the server process's resident memory (``VmRSS`` in
  ``/proc/<pid>/status``), full minus idle;
* Redis: ``used_memory`` from ``INFO memory`` (what its allocator hands out
  for data), full minus empty, and also its ``VmRSS`` the same way, which is
  the figure measured like dbqueue's.

It prints bytes a message for each and the ratio dbqueue ÷ Redis against the
target: dbqueue at most Redis's ``used_memory`` (no more memory than a Redis
list takes, measured in the same run). Each fill must finish within
``--time-limit`` seconds or the run fails; servers are stopped at the end,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue.client import AsyncClient
from dbqueue.loadtest import BenchConfig, BenchFailure, DbQueueDriver
from filler import fill
from machine import add_run_options, begin_run, context_lines
from peers import DbQueueServer, RedisBatchDriver, RedisServer, ServerProcess, redis_call, run_guarded

TARGET = 1.0  # dbqueue's bytes a message at most this times Redis's used_memory a message
QUEUE = "memory"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Bytes per queued message: dbqueue's RSS against Redis's used_memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=10_000_000, help="messages to queue in each system")
    parser.add_argument("--payload", type=int, default=128, help="message size in bytes")
    parser.add_argument("--batch", type=int, default=1000, help="messages a send request")
    parser.add_argument("--connections", type=int, default=4, help="connections that send")
    parser.add_argument("--pipeline", type=int, default=8, help="send requests outstanding on each connection")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each memory reading")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds one fill may take")
    parser.add_argument("--systems", default="dbqueue,redis", help="comma-separated: dbqueue, redis")
    add_run_options(parser)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1 or args.messages % args.batch:
        parser.error("--messages must be a positive multiple of --batch")
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if not set(args.systems) <= {"dbqueue", "redis"} or not args.systems:
        parser.error("--systems takes dbqueue and/or redis")
    return args


def _config(server: ServerProcess, args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(addresses=[server.address], payload=args.payload, queue=QUEUE, batch=args.batch)


async def measure_dbqueue(server: DbQueueServer, args: argparse.Namespace) -> dict[str, Any]:
    driver = DbQueueDriver(_config(server, args))
    await driver.prepare(server.address)  # an empty queue: part of the idle server
    await asyncio.sleep(args.settle)
    idle = server.rss_bytes()
    seconds = await asyncio.wait_for(
        fill(driver, server.address, args.messages // args.batch, connections=args.connections, pipeline=args.pipeline),
        args.time_limit,
    )
    client = await AsyncClient.connect(server.address)
    try:
        stats = await client.stats(QUEUE)
    finally:
        await client.close()
    if stats["ready"] != args.messages:
        raise BenchFailure(f"dbqueue holds {stats['ready']} ready messages, not {args.messages}")
    await asyncio.sleep(args.settle)
    full = server.rss_bytes()
    return {
        "system": "dbqueue",
        "measure": "VmRSS",
        "idle_bytes": idle,
        "full_bytes": full,
        "bytes_per_message": (full - idle) / args.messages,
        "fill_seconds": seconds,
        "rss_idle_bytes": idle,
        "rss_full_bytes": full,
        "rss_bytes_per_message": (full - idle) / args.messages,
    }


async def _redis_memory(server: RedisServer) -> dict[str, int]:
    [info] = await redis_call(server.address, (b"INFO", b"memory"))
    return {key.decode(): int(value) for key, value in re.findall(rb"^(\w+):(\d+)\r?$", info, re.MULTILINE)}


async def measure_redis(server: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    driver = RedisBatchDriver(_config(server, args))
    await driver.prepare(server.address)
    await asyncio.sleep(args.settle)
    before, rss_idle = await _redis_memory(server), server.rss_bytes()
    seconds = await asyncio.wait_for(
        fill(driver, server.address, args.messages // args.batch, connections=args.connections, pipeline=args.pipeline),
        args.time_limit,
    )
    [length] = await redis_call(server.address, (b"LLEN", QUEUE.encode()))
    if length != args.messages:
        raise BenchFailure(f"the Redis list holds {length} values, not {args.messages}")
    await asyncio.sleep(args.settle)
    after, rss_full = await _redis_memory(server), server.rss_bytes()
    return {
        "system": "redis",
        "measure": "used_memory",
        "idle_bytes": before["used_memory"],
        "full_bytes": after["used_memory"],
        "bytes_per_message": (after["used_memory"] - before["used_memory"]) / args.messages,
        "fill_seconds": seconds,
        "rss_idle_bytes": rss_idle,
        "rss_full_bytes": rss_full,
        "rss_bytes_per_message": (rss_full - rss_idle) / args.messages,
        "mem_fragmentation_ratio_full": after.get("used_memory_rss", 0) / max(1, after["used_memory"]),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    print()
    sent = f"sent in batches of {args.batch}" if args.batch > 1 else "sent one a request (dbqueue SEND, RPUSH of one)"
    print(f"{args.messages:,} queued messages of {args.payload} bytes, {sent}")
    print()
    print("| system | measure | idle | full | bytes/message | overhead/message | RSS bytes/message | fill |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results.values():
        print(
            f"| {r['system']} | {r['measure']} | {r['idle_bytes'] / 2**20:,.1f} MiB "
            f"| {r['full_bytes'] / 2**20:,.1f} MiB "
            f"| {r['bytes_per_message']:.1f} | {r['bytes_per_message'] - args.payload:+.1f} "
            f"| {r['rss_bytes_per_message']:.1f} | {r['fill_seconds']:.1f} s "
            f"({args.messages / r['fill_seconds']:,.0f} msg/s) |"
        )
    summary: dict[str, Any] = {"results": results}
    if len(results) == 2:
        d, r = results["dbqueue"], results["redis"]
        ratio = d["bytes_per_message"] / r["bytes_per_message"]
        rss_ratio = d["rss_bytes_per_message"] / r["rss_bytes_per_message"]
        summary.update(ratio=ratio, rss_ratio=rss_ratio, target=TARGET, met=ratio <= TARGET)
        print()
        print("| target | goal | reached | met? |")
        print("|---|---:|---:|---:|")
        print(
            f"| dbqueue RSS ÷ Redis used_memory, bytes/message | <= {TARGET} | {ratio:.2f}× "
            f"| {'yes' if ratio <= TARGET else 'no'} |"
        )
        print(f"| (for reference) dbqueue RSS ÷ Redis RSS, bytes/message | — | {rss_ratio:.2f}× | — |")
    print()
    print(
        "Memory is read after --settle seconds of quiet, before and after the fill; overhead is bytes/message minus "
        "the payload.\nRedis's used_memory leaves out allocator fragmentation and its RSS counts it, as dbqueue's does."
    )
    return summary


def measure_each(args: argparse.Namespace, results: dict[str, dict[str, Any]], loop: asyncio.AbstractEventLoop) -> None:
    """For each system in turn: start a fresh server, measure it into ``results[name]``, stop it."""
    for name in args.systems:
        server: ServerProcess = (
            DbQueueServer(python=args.server_python, max_message_size=max(1 << 20, args.batch * args.payload))
            if name == "dbqueue"
            else RedisServer(label="redis")
        )
        with server:
            print(f"started {name} {server.version()} (pid {server.pid}); filling {args.messages:,} messages ...")
            began = time.perf_counter()
            measure = measure_dbqueue if name == "dbqueue" else measure_redis
            results[name] = loop.run_until_complete(measure(server, args))  # type: ignore[arg-type]
            r = results[name]
            print(
                f"{name}: {r['measure']} {r['idle_bytes'] / 2**20:,.1f} -> {r['full_bytes'] / 2**20:,.1f} MiB, "
                f"{r['bytes_per_message']:.1f} bytes/message ({time.perf_counter() - began:.0f} s)"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = begin_run(args)
    for line in context_lines(context):
        print(line)
    results: dict[str, dict[str, Any]] = {}
    status = run_guarded(partial(measure_each, args, results), (TimeoutError, BenchFailure, OSError))
    if status:
        return status
    summary = report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({**context, "args": vars(args), **summary}, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

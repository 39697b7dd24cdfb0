"""How long other clients wait while a server moves a big dead-letter queue back.

    python bench/move_stall.py --messages 1000000 [--data-dir]

Starts a dbqueue server, fills a queue with ``--messages`` 128-byte messages
(unique payloads), then moves them all to another queue with one MOVE while a
second connection does unpipelined round trips (STATS of a third queue) as
fast as it can. It prints how long the MOVE took, how many round trips the
other connection completed meanwhile, and their p50, p99 and longest: the
stall every other client of the server sees. ``--data-dir`` runs the server
with a store (each step journaled and committed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue import Client
from machine import add_run_options, begin_run, context_lines
from peers import DbQueueServer, ServerUnavailable

BATCH = 5_000


def watch(address: str, trips: list[float], moving: threading.Event) -> None:
    """Unpipelined round trips on a connection of its own while ``moving`` is set, each one's seconds in ``trips``."""
    with Client.connect(address) as watcher:
        while moving.is_set():
            began = time.perf_counter()
            watcher.stats("watched")
            trips.append(time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages moved")
    parser.add_argument("--payload", type=int, default=128)
    parser.add_argument("--data-dir", action="store_true", help="a server with a store (--data-dir, --sync os)")
    parser.add_argument("--rounds", type=int, default=3)
    add_run_options(parser)
    args = parser.parse_args()
    if args.payload < 8 or args.messages < 1:
        parser.error("--payload at least 8, --messages at least 1")
    context = begin_run(args)
    for line in context_lines(context):
        print(line, flush=True)
    head = b"m" * (args.payload - 8)
    try:
        server = DbQueueServer(durable=args.data_dir, python=args.server_python).start()
    except ServerUnavailable as exc:
        raise SystemExit(f"the server did not start: {exc}") from None
    try:
        address = f"{server.host}:{server.port}"
        with Client.connect(address) as admin:
            admin.create("watched")
            for number in range(1, args.rounds + 1):
                source, destination = f"dead{number}", f"jobs{number}"
                admin.create(source)
                admin.create(destination)
                for start in range(0, args.messages, BATCH):
                    count = min(BATCH, args.messages - start)
                    admin.send_batch(source, [head + n.to_bytes(8, "big") for n in range(start, start + count)])
                trips: list[float] = []
                moving = threading.Event()
                moving.set()
                watching = threading.Thread(target=watch, args=(address, trips, moving))
                watching.start()
                time.sleep(0.2)  # the watcher's round trips before the move: its p50 without one
                before = len(trips)
                with Client.connect(address, timeout=600) as mover:
                    began = time.perf_counter()
                    moved = mover.move(source, destination)
                    took = time.perf_counter() - began
                moving.clear()
                watching.join()
                during = sorted(trips[before:]) or [0.0]
                p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
                print(
                    f"round {number}: moved {moved:,} in {took:.3f} s; the other connection: {len(during):,} round"
                    f" trips meanwhile, p50 {statistics.median(during) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms,"
                    f" longest {during[-1] * 1000:.1f} ms (before the move: p50"
                    f" {statistics.median(trips[:before] or [0.0]) * 1000:.2f} ms)",
                    flush=True,
                )
                admin.delete(source)
                admin.delete(destination)
    finally:
        if not server.alive():
            print(server.exit_description(), file=sys.stderr)
        server.stop()


if __name__ == "__main__":
    main()

"""Disk use of a durable server under steady send/confirm churn.

Starts ``dbqueue serve --data-dir <tmp>``, keeps ``--live`` messages queued,
and for ``--seconds`` sends and confirms messages in pipelined batches (the
backlog stays constant: each batch read and confirmed is replaced by a batch
sent). Every few seconds it samples the store's files (``dbqueue.db`` and its
WAL) and the live data (queued messages × payload) and prints both; at the end
it prints the largest store size against the bound the durability issue sets:
twice the live data plus a fixed floor.

    python bench/store_churn.py --seconds 600 --live 100000 --payload 128

Every payload is unique (a running number in its last 8 bytes), as in the other
benchmarks; the output begins with the machine, the interpreters and the
dbqueue commit (`machine.context_lines`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file

from dbqueue import Client, PipelinedClient
from dbqueue.protocol import Confirm, Confirmed, Enqueue, Message, ObjectQueued, Read
from machine import add_run_options, begin_run, context_lines
from peers import DbQueueServer, ServerUnavailable

FLOOR = 8 * 1024 * 1024  # bytes: SQLite's fixed costs plus one WAL's worth


def unique_payloads(template: bytes, first: int, count: int) -> list[bytes]:
    """``count`` payloads of ``template``'s size, numbered from ``first`` in their last 8 bytes."""
    head = template[:-8]
    return [head + number.to_bytes(8, "big") for number in range(first, first + count)]


def store_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("dbqueue.db*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--live", type=int, default=100_000, help="messages kept queued")
    parser.add_argument("--payload", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="messages per pipelined batch")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    add_run_options(parser)
    args = parser.parse_args()
    if args.payload < 8:
        parser.error("--payload: at least 8 bytes (each payload carries a running number)")

    context = begin_run(args)
    for line in context_lines(context):
        print(line, flush=True)
    payload = os.urandom(args.payload)
    try:
        # serve --data-dir <its temporary directory>/data --sync os
        server = DbQueueServer(durable=True, python=args.server_python).start()
    except ServerUnavailable as exc:
        raise SystemExit(f"the server did not start: {exc}") from None
    [data_dir] = server.data_paths()
    try:
        address = f"{server.host}:{server.port}"
        with Client.connect(address) as admin:
            admin.create("churn")
            for start in range(0, args.live, 1000):
                admin.send_batch("churn", unique_payloads(payload, start, min(1000, args.live - start)))
        sent = args.live  # payloads numbered so far
        reads = [Read("churn", 60_000)] * args.batch
        churned = 0
        largest = 0
        live_bytes = args.live * args.payload
        started = next_sample = time.monotonic()
        with PipelinedClient.connect(address) as link:
            while time.monotonic() - started < args.seconds:
                link.send_many(reads)
                ids = [r.id for _, r in link.receive(len(reads)) if isinstance(r, Message)]
                link.send_many(Confirm(id_) for id_ in ids)
                if not all(isinstance(r, Confirmed) for _, r in link.receive(len(ids))):
                    raise SystemExit("a confirm failed")
                link.send_many(Enqueue("churn", data) for data in unique_payloads(payload, sent, len(ids)))
                sent += len(ids)
                if not all(isinstance(r, ObjectQueued) for _, r in link.receive(len(ids))):
                    raise SystemExit("a send failed")
                churned += len(ids)
                if time.monotonic() >= next_sample:
                    size = store_bytes(data_dir)
                    largest = max(largest, size)
                    elapsed = time.monotonic() - started
                    print(
                        f"{elapsed:7.1f} s  churned {churned:>10,}  store {size / 1e6:8.2f} MB  "
                        f"live {live_bytes / 1e6:6.2f} MB  bound {(2 * live_bytes + FLOOR) / 1e6:6.2f} MB",
                        flush=True,
                    )
                    next_sample += args.sample
        largest = max(largest, store_bytes(data_dir))
        bound = 2 * live_bytes + FLOOR
        verdict = "within" if largest <= bound else "OVER"
        print(
            f"churned {churned:,} messages in {args.seconds:.0f} s ({churned / args.seconds:,.0f}/s); "
            f"largest store {largest / 1e6:.2f} MB, {verdict} the bound of 2 x {live_bytes / 1e6:.2f} MB live "
            f"+ {FLOOR / 1e6:.1f} MB"
        )
    finally:
        if not server.alive():  # its output went to a log in the directory that `stop` removes
            print(server.exit_description(), file=sys.stderr)
        server.stop()


if __name__ == "__main__":
    main()

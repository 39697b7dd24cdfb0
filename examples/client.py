"""The original dbqueue load test, with the blocking pipelining client.

One queue "foo"; 16 producer and 16 consumer threads, each with its own
connection. A producer iteration pipelines 32 sends of a 128-byte payload and
reads the 32 answers; a consumer iteration pipelines 32 reads (timeout 1 s)
and then confirms, pipelined, every message it got. Producers run 1000
iterations; consumers run until every message sent has been confirmed. Every
response is checked. Start a server first: `python examples/server.py`.

    python examples/client.py [--address 127.0.0.1:3003] [--iterations 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable

from dbqueue import Client, NoSuchQueue, PipelinedClient
from dbqueue.protocol import Confirm, Confirmed, Empty, Enqueue, Message, ObjectQueued, Read

PAYLOAD = bytes(range(128))


class Failure(Exception):
    pass


def producer(address: str, iterations: int, depth: int, counts: list[int]) -> None:
    sends = [Enqueue("foo", PAYLOAD)] * depth
    with PipelinedClient.connect(address) as client:
        for _ in range(iterations):
            ids = client.send_many(sends)
            for request_id, (answered, response) in zip(ids, client.receive(depth)):
                if answered != request_id or not isinstance(response, ObjectQueued):
                    raise Failure(f"send {request_id}: got {response!r} for request {answered}")
            counts.append(depth)


def consumer(address: str, depth: int, total: int, confirmed: list[int], reads: list[int], deadline: float) -> None:
    read_batch = [Read("foo", timeout_ms=1000)] * depth
    with PipelinedClient.connect(address) as client:
        while sum(confirmed) < total:
            if time.monotonic() > deadline:
                raise Failure(f"time limit passed with {sum(confirmed)} of {total} messages confirmed")
            ids = client.send_many(read_batch)
            got = []
            for request_id, (answered, response) in zip(ids, client.receive(depth)):
                if answered != request_id:
                    raise Failure(f"read {request_id}: answer for request {answered}")
                if isinstance(response, Message):
                    if response.data != PAYLOAD:
                        raise Failure(f"message {response.id}: payload corrupted")
                    got.append(response.id)
                elif not isinstance(response, Empty):
                    raise Failure(f"read {request_id}: got {response!r}")
            reads.append(depth)
            if not got:
                time.sleep(0.001)
                continue
            client.send_many(Confirm(id_) for id_ in got)
            for _, response in client.receive(len(got)):
                if not isinstance(response, Confirmed):
                    raise Failure(f"confirm: got {response!r}")
            confirmed.append(len(got))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:3003")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--pipeline", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()

    with Client.connect(args.address) as admin:  # start from an empty queue
        with contextlib.suppress(NoSuchQueue):
            admin.delete("foo")
        admin.create("foo")

    total = args.producers * args.iterations * args.pipeline
    # Tallies: list.append is atomic, so threads share these without a lock.
    sent: list[int] = []
    confirmed: list[int] = []
    reads: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + args.time_limit

    def guarded(target: Callable[..., None], *target_args: object) -> None:
        try:
            target(*target_args)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(producer, args.address, args.iterations, args.pipeline, sent))
        for _ in range(args.producers)
    ] + [
        threading.Thread(
            target=guarded, args=(consumer, args.address, args.pipeline, total, confirmed, reads, deadline)
        )
        for _ in range(args.consumers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"FAILED: {errors[0]!r}")
    done = sum(confirmed)
    if done != total:
        raise SystemExit(f"FAILED: {done} messages confirmed, {total} sent")
    requests = sum(sent) + sum(reads) + done
    print(f"all {total} messages sent, read and confirmed; every response validated")
    print(f"elapsed {elapsed:.3f} s, {requests} requests, {requests / elapsed:,.0f} requests/s")


if __name__ == "__main__":
    main()

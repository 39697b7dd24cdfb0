"""The original dbqueue's multi-server load test, against a group of servers.

Start the group first: `python examples/multiserver.py` (or
`dbqueue serve --workers 4 --port 3000`). One queue "foo" on every member;
16 producers and 16 consumers spread over the members, each with blocking
pipelining connections of its own:

* producer i sends to member i % N: an iteration pipelines 32 sends of a
  128-byte payload and checks the 32 answers (each an id whose top byte is
  that member's index); producers run 1000 iterations;
* consumer j holds one connection per member and starts at member j % N: an
  iteration pipelines 32 reads (timeout 1 s) to its current member, then
  confirms every message it got at that same member (the one that handed it
  out), and moves on to the next member when a batch comes back short, so no
  member's messages wait for consumers busy elsewhere. Consumers run until
  every message sent has been confirmed.

Every response is checked (request id, type, payload, member of each id).
A Python process runs on one core: the threads are shared out over
--processes client processes (default: one per member).

    python examples/multiserver_client.py [--address 127.0.0.1:3000-3003] [--iterations 1000] [--processes N]

``--address`` takes a list (``host:port,host:port``), a range of ports
(``host:3000-3003``), or one member, whose MEMBERS answer gives the group.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from dbqueue import Client, NoSuchQueue, PipelinedClient
from dbqueue.client.group import member_of
from dbqueue.protocol import Confirm, Confirmed, Empty, Enqueue, Message, ObjectQueued, Read

PAYLOAD = bytes(range(128))
QUEUE = "foo"


class Failure(Exception):
    pass


def group_addresses(spec: str) -> list[str]:
    """``host:3000-3003`` or ``a:1,b:2`` as a list; a single member is asked for its group (MEMBERS)."""
    if "," in spec:
        return [part.strip() for part in spec.split(",") if part.strip()]
    host, _, ports = spec.rpartition(":")
    if "-" in ports:
        first, last = (int(port) for port in ports.split("-"))
        return [f"{host}:{port}" for port in range(first, last + 1)]
    with Client.connect(spec) as client:
        return list(client.members().members) or [spec]


class Tally:
    """Counts shared by every client process (one lock, taken once per pipelined batch)."""

    def __init__(self, context: Any) -> None:
        self.lock = context.Lock()
        self.values = {name: context.RawValue("q", 0) for name in ("sent", "reads", "confirmed", "failed")}

    def add(self, name: str, count: int) -> None:
        with self.lock:
            self.values[name].value += count

    def __getitem__(self, name: str) -> int:
        return int(self.values[name].value)


def producer(address: str, member: int, iterations: int, depth: int, tally: Tally) -> None:
    sends = [Enqueue(QUEUE, PAYLOAD)] * depth
    with PipelinedClient.connect(address) as client:
        for _ in range(iterations):
            if tally["failed"]:
                return
            ids = client.send_many(sends)
            for request_id, (answered, response) in zip(ids, client.receive(depth)):
                if answered != request_id or not isinstance(response, ObjectQueued):
                    raise Failure(f"send {request_id} to {address}: got {response!r} for request {answered}")
                if member_of(response.id) != member:  # an id's top byte is the member that handed it out
                    raise Failure(f"{address} (member {member}) queued id {response.id}, not one of its own")
            tally.add("sent", depth)


def consumer(
    addresses: list[str], indexes: list[int], first: int, depth: int, total: int, tally: Tally, deadline: float
) -> None:
    reads = [Read(QUEUE, timeout_ms=1000)] * depth
    clients = [PipelinedClient.connect(address) for address in addresses]
    try:
        at = first
        idle_round = 0
        while tally["confirmed"] < total and not tally["failed"]:
            if time.monotonic() > deadline:
                raise Failure(f"time limit passed with {tally['confirmed']} of {total} messages confirmed")
            client, member = clients[at], indexes[at]
            got = []
            for request_id, (answered, response) in zip(client.send_many(reads), client.receive(depth)):
                if answered != request_id:
                    raise Failure(f"read {request_id} at {addresses[at]}: answer for request {answered}")
                if isinstance(response, Message):
                    if response.data != PAYLOAD:
                        raise Failure(f"message {response.id}: payload corrupted")
                    if member_of(response.id) != member:
                        raise Failure(f"{addresses[at]} (member {member}) handed out id {response.id}")
                    got.append(response.id)
                elif not isinstance(response, Empty):
                    raise Failure(f"read {request_id} at {addresses[at]}: got {response!r}")
            tally.add("reads", depth)
            if got:  # confirmed where they came from: that member alone knows these ids
                for _, response in client.receive(len(client.send_many(Confirm(id_) for id_ in got))):
                    if not isinstance(response, Confirmed):
                        raise Failure(f"confirm at {addresses[at]}: got {response!r}")
                tally.add("confirmed", len(got))
            if len(got) < depth:  # this member is (nearly) drained for now: try the next
                at = (at + 1) % len(clients)
                idle_round = idle_round + 1 if not got else 0
                if idle_round >= len(clients):
                    time.sleep(0.001)
                    idle_round = 0
    finally:
        for client in clients:
            client.close()


def run_share(share: int, shares: int, args: argparse.Namespace, addresses: list[str], indexes: list[int],
              tally: Tally, deadline: float) -> None:  # fmt: skip
    """One client process: its share of the producer and consumer threads."""
    total = args.producers * args.iterations * args.pipeline
    errors: list[BaseException] = []

    def guarded(target: Callable[..., None], *target_args: object) -> None:
        try:
            target(*target_args)
        except BaseException as exc:
            errors.append(exc)
            tally.add("failed", 1)

    n = len(addresses)
    # Producer i and consumer j belong to client process i % shares (j % shares); each to member i % n (j % n).
    threads = [
        threading.Thread(
            target=guarded, args=(producer, addresses[i % n], indexes[i % n], args.iterations, args.pipeline, tally)
        )
        for i in range(share, args.producers, shares)
    ] + [
        threading.Thread(
            target=guarded, args=(consumer, addresses, indexes, j % n, args.pipeline, total, tally, deadline)
        )
        for j in range(share, args.consumers, shares)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"client process {share}: FAILED: {errors[0]!r}", flush=True)
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:3000-3003", help="the group (see above)")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--consumers", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--pipeline", type=int, default=32)
    parser.add_argument("--processes", type=int, default=0, help="client processes (default: one per member)")
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    if args.consumers < 1:
        parser.error("a load test needs consumers to confirm what producers send")

    addresses = group_addresses(args.address)
    indexes = []
    for address in addresses:  # start from an empty queue on every member; learn each one's index
        with Client.connect(address) as admin:
            indexes.append(admin.members().index)
            with contextlib.suppress(NoSuchQueue):
                admin.delete(QUEUE)
            admin.create(QUEUE)
    if len(set(indexes)) != len(indexes):
        raise SystemExit(f"FAILED: members {addresses} do not have distinct indexes {indexes}: not one group")

    shares = max(1, min(args.processes or len(addresses), args.producers + args.consumers))
    total = args.producers * args.iterations * args.pipeline
    context = multiprocessing.get_context("fork") if hasattr(os, "fork") else multiprocessing.get_context("spawn")
    tally = Tally(context)
    deadline = time.monotonic() + args.time_limit
    print(f"{args.producers} producers, {args.consumers} consumers, pipeline {args.pipeline}, over "
          f"{len(addresses)} members {addresses} from {shares} client processes")  # fmt: skip
    started = time.perf_counter()
    processes = [
        context.Process(target=run_share, args=(share, shares, args, addresses, indexes, tally, deadline))
        for share in range(shares)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    if any(process.exitcode for process in processes):
        raise SystemExit("FAILED: see the client process output above")
    if tally["confirmed"] != total or tally["sent"] != total:
        raise SystemExit(f"FAILED: {tally['sent']} messages sent, {tally['confirmed']} confirmed, {total} expected")
    per_member = []
    for address in addresses:
        with Client.connect(address) as admin:
            stats = admin.stats(QUEUE)
        if stats["ready"] or stats["in_flight"] or stats["delayed"]:
            raise SystemExit(f"FAILED: {address} still holds messages: {stats}")
        per_member.append(stats["confirmed"])
    requests = tally["sent"] + tally["reads"] + tally["confirmed"]
    print(f"all {total} messages sent, read and confirmed; every response validated")
    print(f"confirmed per member: {per_member}")
    print(f"elapsed {elapsed:.3f} s, {requests} requests, {requests / elapsed:,.0f} requests/s")


if __name__ == "__main__":
    main()

"""A MOVE of more than a step's worth of messages (`server.mover`), against real servers over real sockets:
other connections are served between its steps and see it partly done, every message is in exactly one
queue at every moment (also across a kill -9 in the middle of it), order and ids are kept, and a queue
deleted meanwhile stops it. (The console's redrive and the SQS move task: in their own tests.)

The servers are child processes: a server thread in the test's process would share its interpreter lock
with the test's connections, which would then wait on the lock, not on the server's steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from child_server import ChildServer
from conftest import Peer, RawConnection
from dbqueue import Client
from dbqueue.protocol import messages as msg
from dbqueue.server.mover import MOVE_STEP
from server_process import ServerProcess

BATCH = 5_000


def fill(client: Client, queue: str, total: int) -> None:
    """``total`` messages in ``queue``, numbered in their payloads."""
    for start in range(0, total, BATCH):
        client.send_batch(queue, [b"%d" % n for n in range(start, min(total, start + BATCH))])


def ready(peer: Peer, name: str) -> int:
    reply = peer.call(msg.Stats(name))
    assert isinstance(reply, msg.StatsReply)
    return int(reply.stats["ready"])


def ready_in_both(peer: Peer, first: str, second: str) -> tuple[int, int]:
    """The ready counts of two queues in one state of the server (one ListQueues)."""
    reply = peer.call(msg.ListQueues())
    assert isinstance(reply, msg.StatsReply)
    counts = {queue["name"]: int(queue["ready"]) for queue in reply.stats["queues"]}
    return counts[first], counts[second]


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ChildServer]:
    """A server in memory, in a process of its own."""
    server = ChildServer(tmp_path).start()
    yield server
    server.stop()


def connect(server: ChildServer) -> Peer:
    return Peer(RawConnection(("127.0.0.1", server.port), timeout=30))


def test_a_long_move_lets_the_others_in_between_and_keeps_every_message_in_one_queue(child: ChildServer) -> None:
    total = 50 * MOVE_STEP + 7
    with Client.connect(child.address) as client:
        client.create("dead")
        client.create("jobs")
        fill(client, "dead", total)
        sent_ids = [m.id for m in client.peek("dead", 3)]
    mover = connect(child)
    watcher = connect(child)
    mover.connection.send(msg.encode(99, msg.Move("dead", "jobs")))  # count 0: every ready message
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = ready_in_both(watcher, "dead", "jobs")
        seen.append(state)
        if state[1] == total:
            break
    opcode, flags, answered, body = mover.connection.recv_frame()
    assert answered == 99 and msg.decode_response(opcode, body, flags) == msg.Moved(total)
    # Another connection was answered while the move went on, and saw it partly done ...
    partly = [state for state in seen if 0 < state[1] < total]
    assert len(partly) >= 2, seen
    # ... but never a message in both queues or in neither (each ListQueues is one state of the server).
    assert {sum(state) for state in seen} == {total}
    with Client.connect(child.address) as client:
        assert [m.id for m in client.peek("jobs", 3)] == sent_ids  # the same messages, ids kept, in order
        got: list[bytes] = []
        while len(got) < total:
            batch = client.read_batch("jobs", 10_000, visibility_timeout=60)
            assert batch
            got += [m.data for m in batch]
            client.confirm_batch([m.id for m in batch])
        assert got == [b"%d" % n for n in range(total)]


def test_a_queue_deleted_during_a_move_stops_it(child: ChildServer) -> None:
    total = 100 * MOVE_STEP
    with Client.connect(child.address) as client:
        client.create("dead")
        client.create("jobs")
        fill(client, "dead", total)
    mover = connect(child)
    other = connect(child)
    mover.connection.send(msg.encode(7, msg.Move("dead", "jobs")))
    while ready(other, "jobs") == 0:
        pass
    assert other.call(msg.DeleteQueue("jobs")) == msg.QueueDeleted()
    opcode, flags, answered, body = mover.connection.recv_frame()
    moved = msg.decode_response(opcode, body, flags)
    assert answered == 7 and isinstance(moved, msg.Moved) and 0 < moved.count < total
    assert ready(other, "dead") == total - moved.count  # what had not moved stayed


def test_a_kill_9_in_the_middle_of_a_move_loses_and_doubles_nothing(tmp_path: Path) -> None:
    total = 20 * MOVE_STEP
    process = ServerProcess(tmp_path / "data").start()
    try:
        with process.client() as client:
            client.create("dead")
            client.create("jobs")
            fill(client, "dead", total)

        def move() -> None:
            try:
                with process.client() as mover:
                    mover.move("dead", "jobs")
            except Exception:  # the server is killed under it
                pass

        moving = threading.Thread(target=move, daemon=True)
        moving.start()
        with process.client() as watcher:
            deadline = time.monotonic() + 30
            while watcher.stats("jobs")["ready"] == 0 and time.monotonic() < deadline:
                pass
            process.kill()
        moving.join(10)
        process.start()
        with process.client() as client:
            dead, jobs = client.stats("dead")["ready"], client.stats("jobs")["ready"]
            assert dead + jobs == total
            data: list[bytes] = []
            for name in ("jobs", "dead"):
                while True:
                    batch = client.read_batch(name, 10_000, visibility_timeout=60)
                    if not batch:
                        break
                    data += [m.data for m in batch]
                    client.confirm_batch([m.id for m in batch])
            assert sorted(data) == sorted(b"%d" % n for n in range(total))  # none lost, none twice
        process.check_log()
    finally:
        process.close()

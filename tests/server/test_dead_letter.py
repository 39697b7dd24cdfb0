"""DEAD_LETTER against real servers over real sockets: a message the connection holds moves to its queue's
dead-letter queue in one server step, with its origin, whatever its delivery count; any other id is settled
as a release would be (Requeued, NO_SUCH_MESSAGE); a queue with no dead-letter queue (or a deleted or full
one) refuses it and the message stays in flight, deadline and all; and the move survives a SIGKILL of a
`dbqueue serve --data-dir` right after its answer."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerThread
from dbqueue import AsyncClient, Client
from dbqueue.errors import ErrorCode, InvalidRequest, NoSuchMessage, NoSuchQueue, QueueFull, Requeued
from dbqueue.protocol import Op
from dbqueue.protocol import messages as msg
from server_process import ServerProcess


def jobs_with_dead_letters(client: Client, max_deliveries: int | None = None, dead_capacity: int | None = None) -> None:
    client.create("dead", capacity=dead_capacity)
    client.create("jobs", dead_letter_queue="dead", max_deliveries=max_deliveries)


def test_the_wire_answer_is_a_bare_dead_lettered_frame(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        jobs_with_dead_letters(client)
        client.send("jobs", b"poison")
    connection = server.raw()
    connection.send(msg.encode(1, msg.Hello()))
    assert connection.recv_frame()[0] == Op.HELLO_OK
    connection.send(msg.encode(2, msg.Read("jobs")))
    opcode, _, _, body = connection.recv_frame()
    taken = msg.Message.from_body(body)
    connection.send(msg.encode(3, msg.DeadLetter(taken.id)))
    assert connection.recv_frame() == (Op.DEAD_LETTERED, 0, 3, b"")
    connection.send(msg.encode(4, msg.DeadLetter(taken.id)))  # gone from "jobs": no longer this connection's
    opcode, _, request_id, body = connection.recv_frame()
    error = msg.decode_response(opcode, body)
    assert request_id == 4 and isinstance(error, msg.Error) and error.code == ErrorCode.NO_SUCH_MESSAGE


def test_the_message_moves_with_its_origin_before_its_budget_is_spent(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        jobs_with_dead_letters(client, max_deliveries=5)
        sent_at = time.time()
        original = client.send("jobs", b"poison")
        behind = client.send("jobs", b"fine")
        first = client.read("jobs")
        assert first is not None and first.id == original
        client.release(original)
        again = client.read("jobs")
        assert again is not None and (again.id, again.deliveries) == (original, 2)
        assert client.dead_letter(original) is None
        jobs, dead = client.stats("jobs"), client.stats("dead")
        assert (jobs["ready"], jobs["in_flight"], jobs["dead_lettered"], jobs["confirmed"]) == (1, 0, 1, 0)
        assert dead["ready"] == 1
        letter = client.read("dead")
        assert letter is not None and letter.data == b"poison" and letter.id not in (original, behind)
        assert letter.deliveries == 1 and letter.origin is not None
        assert (letter.origin.queue, letter.origin.id, letter.origin.deliveries) == ("jobs", original, 2)
        assert abs(letter.origin.enqueued_at - sent_at) < 5
        with pytest.raises(NoSuchMessage):
            client.confirm(original)  # the old id is gone
        # A dead letter of a dead letter keeps the first origin (as when deliveries run out).
        client.create("graveyard")
        client.create("dead2", dead_letter_queue="graveyard")
        assert client.move("dead", "dead2") == 0  # "dead" holds it in flight: nothing ready to move
        client.release(letter.id)
        assert client.move("dead", "dead2") == 1
        moved = client.read("dead2")
        assert moved is not None and moved.id == letter.id
        client.dead_letter(moved.id)
        last = client.read("graveyard")
        assert last is not None and last.origin == letter.origin


def test_another_connections_message_is_not_dead_lettered(server: ServerThread) -> None:
    with Client.connect(server.address) as owner, Client.connect(server.address) as other:
        jobs_with_dead_letters(owner)
        owner.send_batch("jobs", [b"a", b"b"])
        first = owner.read("jobs")
        assert first is not None
        with pytest.raises(NoSuchMessage):  # in flight with the owner, on its first delivery
            other.dead_letter(first.id)
        with pytest.raises(NoSuchMessage):
            other.dead_letter(1)  # never handed out
        owner.release(first.id)
        taken = other.read("jobs")
        assert taken is not None and taken.id == first.id
        with pytest.raises(Requeued):  # the owner's delivery is over: another read it since
            owner.dead_letter(first.id)
        assert other.stats("jobs")["in_flight"] == 1 and other.stats("dead")["ready"] == 0
        other.dead_letter(taken.id)
        assert other.stats("dead")["ready"] == 1


def test_refused_without_a_usable_dead_letter_queue_the_message_stays_in_flight(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("plain")
        client.send("plain", b"x")
        held = client.read("plain", visibility_timeout=0.3)
        assert held is not None
        with pytest.raises(InvalidRequest, match="'plain' has no dead-letter queue"):
            client.dead_letter(held.id)
        assert client.stats("plain")["in_flight"] == 1  # not dropped
        time.sleep(0.6)  # its deadline was kept: it comes back on time
        assert client.stats("plain")["ready"] == 1

        jobs_with_dead_letters(client, dead_capacity=1)
        client.send("dead", b"filler")
        client.send_batch("jobs", [b"one", b"two"])
        batch = client.read_batch("jobs", 2, visibility_timeout=0.3)  # a block of two, one deadline
        with pytest.raises(QueueFull):
            client.dead_letter(batch[1].id)
        assert client.stats("jobs")["in_flight"] == 2
        time.sleep(0.6)  # the refused member kept its block's deadline
        assert client.stats("jobs")["ready"] == 2
        client.delete("dead")
        again = client.read("jobs")
        assert again is not None
        with pytest.raises(NoSuchQueue, match="was deleted"):
            client.dead_letter(again.id)
        client.confirm(again.id)  # still this connection's to settle


def test_one_member_of_a_batch_read_leaves_and_the_rest_settle(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        jobs_with_dead_letters(client)
        ids = client.send_batch("jobs", [b"%d" % i for i in range(5)])
        batch = client.read_batch("jobs", 5)
        assert [m.id for m in batch] == ids
        client.dead_letter(ids[2])
        assert client.confirm_batch(ids[:2] + ids[3:]) == [None] * 4
        with pytest.raises(NoSuchMessage):
            client.confirm(ids[2])
        letter = client.read("dead")
        assert letter is not None and letter.data == b"2" and letter.origin is not None
        assert (letter.origin.id, letter.origin.deliveries) == (ids[2], 1)
        assert client.stats("jobs")["confirmed"] == 4


def test_a_waiting_read_on_the_dead_letter_queue_gets_it_at_once(server: ServerThread) -> None:
    async def run() -> None:
        async with (
            await AsyncClient.connect(server.address) as watcher,
            await AsyncClient.connect(server.address) as worker,
        ):
            await worker.create("dead")
            await worker.create("jobs", dead_letter_queue="dead")
            waiting = asyncio.ensure_future(watcher.read("dead", wait=5))
            await worker.send("jobs", b"poison")
            taken = await worker.read("jobs")
            assert taken is not None
            began = time.monotonic()
            await worker.dead_letter(taken.id)
            letter = await waiting
            assert time.monotonic() - began < 1
            assert letter is not None and letter.origin is not None and letter.origin.id == taken.id

    asyncio.run(run())


def test_the_move_survives_a_sigkill_of_the_server_right_after_its_answer(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "data").start()
    try:
        with process.client() as client:
            jobs_with_dead_letters(client, max_deliveries=10)
            original = client.send("jobs", b"poison")
            client.send("jobs", b"next")
            taken = client.read("jobs")
            assert taken is not None and taken.id == original
            client.dead_letter(original)
            process.kill()  # no clean shutdown: only what was committed before the answer is left
        process.start()
        with process.client() as client:
            jobs, dead = client.stats("jobs"), client.stats("dead")
            assert (jobs["ready"], jobs["in_flight"], dead["ready"]) == (1, 0, 1)
            letter = client.read("dead")
            assert letter is not None and letter.data == b"poison" and letter.origin is not None
            assert (letter.origin.queue, letter.origin.id, letter.origin.deliveries) == ("jobs", original, 1)
            left = client.read("jobs")
            assert left is not None and left.data == b"next"
        process.check_log()
    finally:
        process.close()


def test_the_dead_letter_keeps_its_origin_across_a_restart_in_process(
    server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    server = server_factory(data_dir=tmp_path / "data")
    with Client.connect(server.address) as client:
        jobs_with_dead_letters(client)
        original = client.send("jobs", b"poison")
        taken = client.read("jobs")
        assert taken is not None
        client.dead_letter(taken.id)
        before = client.peek("dead")
    server.stop()
    restarted = server_factory(data_dir=tmp_path / "data")
    with Client.connect(restarted.address) as client:
        after = client.peek("dead")
        assert [(m.id, m.data, m.origin) for m in after] == [(m.id, m.data, m.origin) for m in before]
        assert after[0].origin is not None and after[0].origin.id == original
        assert client.stats("jobs")["ready"] == client.stats("jobs")["in_flight"] == 0


def test_a_spent_message_no_dead_letter_queue_takes_is_counted_dropped(
    server_factory: Callable[..., ServerThread],
) -> None:
    """Dropped, not lost in silence: Stats (and the metrics) count what a full or deleted dead-letter queue, or
    none at all, could not take, beside the log line."""
    server = server_factory(metrics_port=0)
    with Client.connect(server.address) as client:
        client.create("full-dead", capacity=1)
        client.create("full", max_deliveries=1, dead_letter_queue="full-dead")
        client.create("gone-dead")
        client.create("gone", max_deliveries=1, dead_letter_queue="gone-dead")
        client.delete("gone-dead")
        client.create("none", max_deliveries=1)
        for name, count in (("full", 3), ("gone", 2), ("none", 1)):
            for number in range(count):
                client.send(name, b"job%d" % number)
            for _ in range(count):
                taken = client.read(name)
                assert taken is not None
                client.release(taken.id)  # its one delivery spent
        figures = {name: client.stats(name) for name in ("full", "gone", "none")}
        assert [(f["dead_lettered"], f["dropped"]) for f in figures.values()] == [(3, 2), (2, 2), (1, 1)]
        assert client.stats("full-dead")["ready"] == 1
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5).read()
    assert b'dbqueue_queue_dropped_total{queue="full"} 2.0' in metrics

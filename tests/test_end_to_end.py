"""The blocking clients against a real server on port 0."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

import dbqueue
from dbqueue import (
    NEVER,
    Client,
    ConnectionLost,
    DbQueueError,
    InvalidQueueName,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    PipelinedClient,
    QueueFull,
    RequestError,
    Requeued,
)
from dbqueue.protocol import (
    Confirm,
    Confirmed,
    CreateQueue,
    Empty,
    Enqueue,
    Error,
    Full,
    Message,
    ObjectQueued,
    Op,
    QueueCreated,
    Read,
    decode_response,
    encode,
)

if TYPE_CHECKING:
    from conftest import ServerThread

# --- the original's four correctness tests ---------------------------------------------


def test_create_send_read_confirm(address: str) -> None:
    with Client.connect(address) as client:
        assert client.create("jobs") is None
        id_ = client.send("jobs", b"hello")
        message = client.read("jobs")
        assert message == Message(id_, b"hello", 1)
        assert client.confirm(id_) is None
        assert client.read("jobs") is None
        with pytest.raises(NoSuchMessage):
            client.confirm(id_)  # gone for good


def test_several_items_come_back_in_order(address: str) -> None:
    payloads = [b"item-%d" % i for i in range(50)] + [b"", b"\x00" * 1000]
    with Client.connect(address) as client:
        client.create("jobs")
        ids = [client.send("jobs", p) for p in payloads]
        assert len(set(ids)) == len(ids)
        messages = [client.read("jobs") for _ in payloads]
        assert [m.data for m in messages] == payloads
        assert [m.id for m in messages] == ids
        assert client.read("jobs") is None
        for m in messages:
            client.confirm(m.id)


def test_read_confirm_timeout_requeues_to_the_front(server: ServerThread) -> None:
    broker = server.server.broker
    with Client.connect(server.address) as client:
        client.create("jobs")
        first = client.send("jobs", b"first")
        client.send("jobs", b"second")
        message = client.read("jobs", visibility_timeout=0.03)
        assert (message.id, message.deliveries) == (first, 1)
        server.wait_until(lambda: broker.entries()[first].held is None, what="the read to time out")
        with pytest.raises(Requeued):
            client.confirm(first)
        again = client.read("jobs", visibility_timeout=10.0)
        assert again == Message(first, b"first", 2)  # at the front, ahead of "second"
        client.confirm(first)
        assert client.read("jobs").data == b"second"


def test_confirmed_in_time_never_comes_back(server: ServerThread) -> None:
    broker = server.server.broker
    with Client.connect(server.address) as client:
        client.create("jobs")
        id_ = client.send("jobs", b"x")
        assert client.read("jobs", visibility_timeout=0.02).id == id_
        client.confirm(id_)
        time.sleep(0.04)  # past the deadline and the sweep after it
        assert client.read("jobs") is None
        assert server.call(lambda: (broker.entries(), broker.queues[b"jobs"].count)) == ({}, 0)


def test_pipelining_exact_response_order(address: str) -> None:
    with PipelinedClient.connect(address) as connection:
        requests = [
            CreateQueue("p"),
            Enqueue("p", b"one"),
            Enqueue("p", b"two"),
            Read("p"),
            Enqueue("missing", b"x"),
            Read("p"),
            Read("p"),
            Confirm(999_999_999),
            CreateQueue("p"),
        ]
        ids = connection.send_many(requests)
        assert len(set(ids)) == len(ids)
        responses = connection.receive(len(requests))
        assert [rid for rid, _ in responses] == ids  # in request order, one each
        got = [response for _, response in responses]
        one, two = got[1], got[2]
        assert isinstance(one, ObjectQueued) and isinstance(two, ObjectQueued)
        assert two.id == one.id + 1
        assert got[0] == QueueCreated()
        assert got[3] == Message(one.id, b"one", 1)
        assert isinstance(got[4], Error) and got[4].code == dbqueue.errors.ErrorCode.NO_SUCH_QUEUE
        assert got[5] == Message(two.id, b"two", 1)
        assert got[6] == Empty()
        assert isinstance(got[7], Error) and got[7].code == dbqueue.errors.ErrorCode.NO_SUCH_MESSAGE
        assert got[8] == QueueCreated()
        ids = connection.send_many([Confirm(one.id), Confirm(two.id)])
        assert connection.receive(2) == [(ids[0], Confirmed()), (ids[1], Confirmed())]


def test_pipelined_client_receive_keeps_extra_responses(address: str) -> None:
    with PipelinedClient.connect(address) as connection:
        ids = connection.send_many([CreateQueue("q")] + [Enqueue("q", b"%d" % i) for i in range(20)])
        first = connection.receive(3)
        rest = connection.receive(18)
        assert [rid for rid, _ in first + rest] == ids
        assert all(isinstance(r, ObjectQueued) for _, r in first[1:] + rest)


# --- commands and their errors ---------------------------------------------------------


def test_create_is_idempotent_and_keeps_the_first_capacity(address: str) -> None:
    with Client.connect(address) as client:
        client.create("q", capacity=1)
        client.send("q", b"kept")
        client.create("q")  # again: no error, nothing lost
        client.create("q", capacity=100)  # the first capacity stays
        with pytest.raises(QueueFull):
            client.send("q", b"over")
        assert client.read("q").data == b"kept"


def test_capacity_counts_in_flight_and_frees_on_confirm(address: str) -> None:
    with Client.connect(address) as client:
        client.create("q", capacity=2)
        client.send("q", b"a")
        client.send("q", b"b")
        with pytest.raises(QueueFull) as info:
            client.send("q", b"c")
        assert isinstance(info.value, RequestError)
        message = client.read("q")
        with pytest.raises(QueueFull):
            client.send("q", b"c")  # read but not confirmed: still counted
        client.confirm(message.id)
        client.send("q", b"c")
        assert [client.read("q").data for _ in range(2)] == [b"b", b"c"]


def test_default_capacity_applies(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(default_capacity=1)
    with Client.connect(server.address) as client:
        client.create("small")
        client.send("small", b"x")
        with pytest.raises(QueueFull):
            client.send("small", b"y")
        client.create("big", capacity=3)
        for i in range(3):
            client.send("big", b"%d" % i)


def test_missing_queues(address: str) -> None:
    with Client.connect(address) as client:
        with pytest.raises(NoSuchQueue) as info:
            client.send("nope", b"x")
        assert "nope" in str(info.value)
        with pytest.raises(NoSuchQueue):
            client.read("nope")
        with pytest.raises(NoSuchQueue):
            client.delete("nope")
        client.create("q")
        client.delete("q")
        with pytest.raises(NoSuchQueue):
            client.delete("q")
        with pytest.raises(NoSuchQueue):
            client.send("q", b"x")
        client.create("q")  # the connection is still fine after every refusal
        assert client.read("q") is None


def test_confirm_unknown_message(address: str) -> None:
    with Client.connect(address) as client:
        with pytest.raises(NoSuchMessage) as info:
            client.confirm(123456789)
        assert isinstance(info.value, LookupError)
        client.create("q")
        id_ = client.send("q", b"x")
        with pytest.raises(NoSuchMessage):
            client.confirm(id_)  # queued but never read


def test_delete_queue_with_messages_in_flight(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("q")
        client.send("q", b"a")
        client.send("q", b"b")
        held = client.read("q", visibility_timeout=0.02)
        client.delete("q")
        with pytest.raises(NoSuchMessage):
            client.confirm(held.id)
        client.create("q")
        assert client.read("q") is None  # nothing of the old queue came back
        # Its timeout drops the in-flight record instead of requeueing it anywhere.
        server.wait_until(lambda: not server.server.broker.entries(), what="the old record to be dropped")
        assert client.read("q") is None


def test_invalid_queue_names_are_refused_locally(address: str) -> None:
    with Client.connect(address) as client:
        for name in ("", "x" * 256, "é" * 128):
            with pytest.raises(InvalidQueueName):
                client.create(name)
            with pytest.raises(InvalidQueueName):
                client.send(name, b"x")
        client.create("x" * 255)  # the longest name is fine
        client.send("x" * 255, b"ok")
        assert client.read("x" * 255).data == b"ok"


def test_read_timeout_out_of_range_is_refused_locally(address: str) -> None:
    with Client.connect(address) as client:
        client.create("q")
        with pytest.raises(ValueError):
            client.read("q", visibility_timeout=-0.001)
        with pytest.raises(ValueError):
            client.read("q", visibility_timeout=2**32 / 1000)
        assert client.read("q", visibility_timeout=(2**32 - 2) / 1000) is None  # the longest finite one
        assert client.read("q", visibility_timeout=NEVER) is None


def test_disconnect_returns_held_messages_to_the_front(server: ServerThread) -> None:
    broker = server.server.broker
    with Client.connect(server.address) as other:
        other.create("q")
        for data in (b"a", b"b", b"c", b"d"):
            other.send("q", data)
        holder = Client.connect(server.address)
        a = holder.read("q", visibility_timeout=NEVER)  # only a disconnect brings it back
        b = holder.read("q", visibility_timeout=60.0)
        c = holder.read("q", visibility_timeout=60.0)  # timed: must come back at once, not after a minute
        holder.confirm(b.id)
        assert other.read("q").data == b"d"  # "other" holds d while holder closes
        holder.close()
        server.wait_until(lambda: broker.queues[b"q"].ready == 2, what="the closed connection's messages")
        first, second = other.read("q"), other.read("q")
        assert (first.id, first.data, first.deliveries) == (a.id, b"a", 2)
        assert (second.id, second.data, second.deliveries) == (c.id, b"c", 2)
        assert other.read("q") is None
        for m in (first, second):
            other.confirm(m.id)


def test_message_size_limit_is_enforced_locally(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(max_message_size=100)
    with Client.connect(server.address) as client:
        assert client.connection.protocol.max_message_size == 100  # learned from HelloOk
        client.create("q")
        client.send("q", b"x" * 100)
        with pytest.raises(MessageTooLarge) as info:
            client.send("q", b"x" * 101)
        assert isinstance(info.value, dbqueue.InvalidRequest)
        # Nothing was sent: the next exchange lines up.
        assert client.read("q").data == b"x" * 100


# --- Pipeline -------------------------------------------------------------------------


def test_pipeline_returns_errors_as_values_in_order(address: str) -> None:
    with Client.connect(address) as client:
        client.create("small", capacity=1)
        pipe = client.pipeline()
        assert pipe.create("q").send("q", b"one").send("missing", b"x") is pipe
        pipe.send("small", b"fits").send("small", b"full").read("q").read("q").confirm(424242).delete("missing")
        assert len(pipe) == 9
        results = pipe.execute()
        assert len(pipe) == 0
        assert results[0] is None
        one = results[1]
        assert isinstance(one, int)
        assert isinstance(results[2], NoSuchQueue)
        assert isinstance(results[3], int)
        assert isinstance(results[4], QueueFull)
        assert results[5] == Message(one, b"one", 1)
        assert results[6] is None
        assert isinstance(results[7], NoSuchMessage)
        assert isinstance(results[8], NoSuchQueue)
        assert pipe.execute() == []
        # The connection is still in step.
        assert client.confirm(one) is None


def test_pipeline_raise_on_error(address: str) -> None:
    with Client.connect(address) as client:
        client.create("q")
        pipe = client.pipeline().send("q", b"a").send("missing", b"x").send("q", b"b")
        with pytest.raises(NoSuchQueue):
            pipe.execute(raise_on_error=True)
        # Every response was read before raising: the others took effect and the connection is in step.
        assert [client.read("q").data for _ in range(2)] == [b"a", b"b"]
        with client.pipeline() as pipe:
            pipe.send("q", b"never sent")
        assert client.read("q") is None


def test_pipeline_reports_requeued(server: ServerThread) -> None:
    broker = server.server.broker
    with Client.connect(server.address) as client:
        client.create("q")
        id_ = client.send("q", b"a")
        client.read("q", visibility_timeout=0.01)
        server.wait_until(lambda: broker.entries()[id_].held is None, what="the read to time out")
        results = client.pipeline().confirm(id_).read("q").execute()
        assert isinstance(results[0], Requeued)
        assert results[1] == Message(id_, b"a", 2)


# --- error classes and connection failures --------------------------------------------


def test_error_tree() -> None:
    assert issubclass(ConnectionLost, ConnectionError)
    assert issubclass(ConnectionLost, DbQueueError)
    for cls in (NoSuchQueue, NoSuchMessage, QueueFull, Requeued, InvalidQueueName, MessageTooLarge):
        assert issubclass(cls, RequestError) and issubclass(cls, DbQueueError)
    assert issubclass(InvalidQueueName, ValueError)


def test_connecting_to_nothing_is_connection_lost() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound but not listening: refused
        with pytest.raises(ConnectionLost) as info:
            Client.connect(f"127.0.0.1:{port}", timeout=2)
    assert isinstance(info.value, ConnectionError)


def test_server_stop_mid_session_is_connection_lost(server: ServerThread) -> None:
    client = Client.connect(server.address)
    client.create("q")
    client.send("q", b"kept")
    held = client.read("q")
    server.stop()
    with pytest.raises(ConnectionLost):
        client.send("q", b"x")
        client.send("q", b"x")  # the first may still fit in the socket buffer
    client.close()
    # The held message went back to its queue when the server closed the session.
    assert [r.data for r in server.server.broker.queues[b"q"].returned] == [held.data]


def test_many_connections_each_get_their_own_messages(address: str) -> None:
    clients = [Client.connect(address) for _ in range(20)]
    try:
        for i, client in enumerate(clients):
            client.create(f"q{i}")
            client.send(f"q{i}", b"%d" % i)
        for i, client in enumerate(reversed(clients)):
            j = len(clients) - 1 - i
            assert client.read(f"q{j}").data == b"%d" % j
    finally:
        for client in clients:
            client.close()


def test_slow_reader_gets_every_response(server: ServerThread) -> None:
    """Pipelined reads of large messages while not reading replies: the server pauses, then finishes."""
    payload = bytes(range(256)) * 256  # 64 KiB
    count = 150
    with PipelinedClient.connect(server.address) as connection:
        connection.send_many([CreateQueue("big")])
        connection.receive(1)
        for start in range(0, count, 50):
            connection.send_many(Enqueue("big", payload + b"%d" % i) for i in range(start, start + 50))
            connection.receive(50)
        ids = connection.send_many([Read("big")] * count)
        time.sleep(0.05)  # let the server fill its write buffer and stop reading
        responses = connection.receive(count)
        assert [rid for rid, _ in responses] == ids
        assert [r.data for _, r in responses] == [payload + b"%d" % i for i in range(count)]  # type: ignore[union-attr]
        confirms = connection.send_many(Confirm(r.id) for _, r in responses)  # type: ignore[union-attr]
        assert connection.receive(count) == [(rid, Confirmed()) for rid in confirms]


def test_full_is_its_own_frame_not_an_error(address: str) -> None:
    """The wire answers a full queue with a Full frame (the clients turn it into QueueFull)."""
    with PipelinedClient.connect(address) as connection:
        connection.send_many([CreateQueue("one", 1), Enqueue("one", b"a"), Enqueue("one", b"b")])
        _, _, (_, full) = connection.receive(3)
        assert full == Full()


def test_redelivery_right_after_a_disconnect_survives_the_sweep(server: ServerThread) -> None:
    broker = server.server.broker
    read = encode(1, Read("q", 30))
    with Client.connect(server.address) as client:
        client.create("q")
        for _ in range(50):
            client.send("q", b"x")
            crashing, taking_over = server.raw(), server.raw()
            crashing.send(read)
            assert crashing.recv_frame()[0] == Op.MESSAGE
            crashing.close()  # a consumer dies holding the message...
            taking_over.send(read)  # ...and another asks for work at once
            opcode, _, _, body = taking_over.recv_frame()
            if opcode == Op.MESSAGE:
                entries = server.call(lambda: list(broker._deadlines))
                if len(set(entries)) < len(entries):
                    break  # the same (deadline, id) twice: the sweep will meet it twice
                # Settled by the connection that holds it (since protocol 2 only the holder may confirm).
                taking_over.send(encode(2, Confirm(decode_response(opcode, body).id)))  # type: ignore[union-attr]
                assert taking_over.recv_frame()[0] == Op.CONFIRMED
            else:  # the second read won the race: clean up and try again
                server.wait_until(lambda: broker.queues[b"q"].ready == 1, what="the released message")
                client.confirm(client.read("q").id)
            taking_over.close()
        else:
            pytest.skip("could not line up two equal deadlines on this machine")
        server.wait_until(lambda: broker.queues[b"q"].ready == 1, what="the timeout to pass")
        assert server.take_errors() == []
        message = client.read("q")
        assert message is not None and message.deliveries == 3


def test_timeouts_fire_while_other_clients_keep_reading(server: ServerThread) -> None:
    broker = server.server.broker
    with Client.connect(server.address) as stuck, Client.connect(server.address) as busy:
        stuck.create("q")
        busy.create("w")
        stuck.send("q", b"m1")
        stuck.send("q", b"m2")
        m1 = stuck.read("q", visibility_timeout=0.05)
        time.sleep(0.004)
        m2 = stuck.read("q", visibility_timeout=0.05)  # due 4 ms after m1: pending when m1's sweep re-arms the timer
        started = last = time.monotonic()
        worst_gap = 0.0
        requeued = None
        while time.monotonic() - started < 0.3:
            busy.send("w", b"x")
            busy.confirm(busy.read("w", visibility_timeout=60.0).id)
            now = time.monotonic()
            worst_gap, last = max(worst_gap, now - last), now
            if server.call(lambda: broker.entries()[m2.id].held is None):
                requeued = now - started
                break
        if requeued is None and worst_gap > 0.008:
            pytest.skip(f"the busy client paused for {worst_gap * 1000:.0f} ms: too noisy to judge")
        assert server.call(lambda: broker.entries()[m1.id].held is None)  # the first sweep did run
        assert requeued is not None and requeued < 0.2, "m2's 50 ms timeout never fired while the other client read"

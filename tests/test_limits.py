"""The server's configured limits, each hit on purpose: a clear error, and room again once freed.

Message size, queue-name length, number of queues, connections, messages in
flight per connection, unread replies per connection, idle connections. The
last tests check that `dbqueue serve` passes every limit flag through, and
that the README's limits table names every `Limits` option with its default.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from child_server import ChildServer
from dbqueue import (
    NEVER,
    AsyncClient,
    Client,
    ConnectionLost,
    InvalidQueueName,
    LimitExceeded,
    NoSuchQueue,
    Server,
)
from dbqueue.cli import option_name
from dbqueue.errors import ErrorCode
from dbqueue.protocol import (
    Enqueue,
    Error,
    Hello,
    ListQueues,
    Message,
    ObjectQueued,
    Read,
    decode_response,
    encode,
)
from dbqueue.protocol.messages import EnqueueBatch, EnqueueDelayed
from dbqueue.server.limits import limit_fields

if TYPE_CHECKING:
    from conftest import RawConnection, ServerThread

Factory = Callable[..., "ServerThread"]


def answer(connection: RawConnection) -> tuple[int, object]:
    opcode, _, request_id, body = connection.recv_frame()
    return request_id, decode_response(opcode, body)


def refusal(connection: RawConnection, request_id: int, code: ErrorCode) -> str:
    rid, response = answer(connection)
    assert rid == request_id and isinstance(response, Error) and response.code == code, (rid, response)
    return response.message


def drain_until_closed(sock: socket.socket, within: float = 5.0) -> int:
    """Read and drop everything until the peer closes or resets; return the bytes read. Fail after ``within``."""
    sock.settimeout(within)
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {within}s")
    return total


def connect_when_room(address: str, within: float = 3.0) -> Client:
    """Connect, retrying while the server is at its connection limit (a closed connection it has not yet seen go)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return Client.connect(address)
        except LimitExceeded:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# --- message size and queue names ------------------------------------------------------------


def test_payloads_over_the_limit_are_refused_on_every_server_side_send_path(server_factory: Factory) -> None:
    """Past the clients' own checks: raw ENQUEUE_DELAYED and ENQUEUE_BATCH with one payload over the limit."""
    server = server_factory(max_message_size=1024)
    with Client.connect(server.address) as client:
        client.create("q")
    raw = server.raw()
    raw.send(
        encode(1, EnqueueDelayed("q", b"x" * 1025, 10))
        + encode(2, EnqueueBatch("q", (b"ok", b"x" * 1025)))
        + encode(3, Enqueue("q", b"x" * 1025))
        + encode(4, Enqueue("q", b"x" * 1024))
    )
    for request_id in (1, 2, 3):
        message = refusal(raw, request_id, ErrorCode.MESSAGE_TOO_LARGE)
        assert "1025" in message and "1024" in message, message
    request_id, queued = answer(raw)
    assert request_id == 4 and isinstance(queued, ObjectQueued)  # the session went on
    assert server.call(lambda: server.server.broker.queues[b"q"].stats()["enqueued"]) == 1


def test_queue_names_are_limited_in_bytes(server_factory: Factory) -> None:
    server = server_factory(max_queue_name=8)
    with Client.connect(server.address) as client:
        client.create("12345678")
        client.create("éééé")  # 8 bytes of UTF-8
        for name in ("123456789", "ééééé"):
            with pytest.raises(InvalidQueueName, match="at most 8 bytes"):
                client.create(name)
            with pytest.raises(NoSuchQueue):
                client.send(name, b"x")
        assert sorted(q["name"] for q in client.list_queues()) == ["12345678", "éééé"]
        client.send("12345678", b"fine")  # the connection is in step


def test_the_number_of_queues_is_limited_and_deleting_frees_room(server_factory: Factory) -> None:
    server = server_factory(max_queues=3)
    with Client.connect(server.address) as client:
        for name in ("a", "b", "c"):
            client.create(name)
        with pytest.raises(LimitExceeded, match="limit of 3 queues"):
            client.create("d")
        client.create("a")  # an existing queue is no new queue
        client.delete("b")
        client.create("d")
        with pytest.raises(LimitExceeded):
            client.pipeline().create("e").execute(raise_on_error=True)
        assert sorted(q["name"] for q in client.list_queues()) == ["a", "c", "d"]


# --- connections -----------------------------------------------------------------------------


def test_the_number_of_connections_is_limited_and_closing_frees_room(server_factory: Factory) -> None:
    server = server_factory(max_connections=3)
    held = [Client.connect(server.address) for _ in range(3)]
    try:
        held[0].create("q")
        with pytest.raises(LimitExceeded, match="limit of 3 connections"):
            Client.connect(server.address)
        raw = server.raw()
        assert "limit of 3 connections" in refusal(raw, 0, ErrorCode.LIMIT_EXCEEDED)
        assert raw.at_eof()
        for client in held:  # the connections within the limit are untouched
            client.send("q", b"x")
        held.pop().close()
        server.wait_until(lambda: len(server.server.sessions) == 2, what="the closed connection to go")
        with Client.connect(server.address) as client:
            assert client.read("q").data == b"x"
    finally:
        for client in held:
            client.close()


def test_the_async_client_over_the_connection_limit_gets_limit_exceeded(server_factory: Factory) -> None:
    """Regression: the refusal is an Error frame with request id 0, which the AsyncClient used to drop."""
    server = server_factory(max_connections=1)
    with Client.connect(server.address):

        async def connect() -> None:
            with pytest.raises(LimitExceeded):
                await AsyncClient.connect(server.address)

        asyncio.run(connect())


# --- messages in flight per connection ----------------------------------------------------------


def test_messages_in_flight_per_connection_are_limited_and_settling_frees_room(server_factory: Factory) -> None:
    server = server_factory(max_in_flight=3)
    with Client.connect(server.address) as client, Client.connect(server.address) as other:
        client.create("q")
        for i in range(10):
            client.send("q", b"%d" % i)
        held = [client.read("q") for _ in range(3)]
        with pytest.raises(LimitExceeded, match="limit of 3 messages in flight"):
            client.read("q")
        with pytest.raises(LimitExceeded):
            client.read_batch("q", 5)
        assert other.read("q").data == b"3"  # the limit is per connection
        client.confirm(held[0].id)  # a confirm frees room
        assert client.read("q").data == b"4"
        client.release(held[1].id)  # so does a release (and the message goes back to the front)
        assert [m.data for m in client.read_batch("q", 5)] == [b"1"]  # capped at the room left
        with pytest.raises(LimitExceeded):
            client.read("q")


def test_a_timed_out_message_frees_room(server_factory: Factory) -> None:
    server = server_factory(max_in_flight=1)
    with Client.connect(server.address) as client:
        client.create("q")
        client.send_batch("q", [b"a", b"b"])
        assert client.read("q", visibility_timeout=0.1).data == b"a"
        with pytest.raises(LimitExceeded):
            client.read("q")
        time.sleep(0.25)
        assert client.read("q").data == b"a"  # it timed out, went back to the front, and the room is free


def test_pipelined_reads_past_the_limit_are_refused_one_by_one(server_factory: Factory) -> None:
    server = server_factory(max_in_flight=2)
    with Client.connect(server.address) as client:
        client.create("q")
        client.send_batch("q", [b"%d" % i for i in range(5)])
        results = client.pipeline().read("q").read("q").read("q").read_batch("q", 3).execute()
        assert [r.data for r in results[:2]] == [b"0", b"1"]
        assert all(isinstance(r, LimitExceeded) for r in results[2:]), results
        assert client.stats("q")["in_flight"] == 2


def test_waiting_reads_respect_the_in_flight_limit(server_factory: Factory) -> None:
    """Regression: the limit used to be checked only when a read arrived, so parked reads took any number when woken."""
    server = server_factory(max_in_flight=2)
    with Client.connect(server.address) as producer:
        producer.create("q")
        raw = server.raw()
        raw.send(encode(1, Hello()) + b"".join(encode(10 + i, Read("q", 0, 5000)) for i in range(10)))
        answer(raw)
        server.wait_until(lambda: server.server.broker.queues[b"q"].waiting == 10, what="ten waiting reads")
        for i in range(10):
            producer.send("q", b"%d" % i)
        queue = server.call(lambda: server.server.broker.queues[b"q"])
        server.wait_until(lambda: queue.ready + queue.in_flight == 10, what="the ten messages to be handed out")
        in_flight = server.call(lambda: queue.in_flight)
        assert in_flight <= 2, f"one connection holds {in_flight} messages in flight with max_in_flight=2"


# --- unread replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "data-dir"])
def test_a_consumer_that_stops_reading_is_cut_off_and_its_messages_requeued(
    server_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture, store: str
) -> None:
    caplog.set_level(logging.WARNING, logger="dbqueue.server")
    limit = 1 << 20
    server = server_factory(max_output_buffer=limit, data_dir=tmp_path / "data" if store == "data-dir" else None)
    # 16 MiB of replies to one pipelined write: far more than the limit plus what the kernel buffers.
    payloads = [bytes([i]) * (256 * 1024 - 8) + b"#%06d" % i for i in range(64)]
    with Client.connect(server.address) as producer:
        producer.create("big")
        for payload in payloads:
            producer.send("big", payload)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(server.host_port)
    try:
        # No timeout on the reads: only the end of the connection can give these messages back.
        hog.sendall(encode(1, Hello()) + b"".join(encode(2 + i, Read("big")) for i in range(len(payloads))))
        server.wait_until(lambda: not server.server.sessions, timeout=5, what="the server to cut the reader off")
        received = drain_until_closed(hog)
    finally:
        hog.close()
    assert received < sum(map(len, payloads)) // 2
    assert any("replies unread" in r.getMessage() and f"limit {limit}" in r.getMessage() for r in caplog.records)
    with Client.connect(server.address) as consumer:
        assert consumer.stats("big")["in_flight"] == 0
        messages = [consumer.read("big") for _ in payloads]
        assert [m.data for m in messages] == payloads  # all back, in order, intact
        assert consumer.read("big") is None
        assert consumer.confirm_batch([m.id for m in messages]) == [None] * len(payloads)


def test_the_unread_reply_limit_bounds_memory_even_within_one_received_buffer(tmp_path: Path) -> None:
    """Regression: the limit used to be checked only after every reply to one received buffer was built: 1000
    LIST_QUEUES (12 kB) on 200 queues built ~43 MB of replies against 1 MiB (peak RSS +90 MB, loop blocked ~1 s)."""
    limit = 1 << 20
    with ChildServer(tmp_path, "--max-output-buffer", str(limit), "--log-level", "warning") as server:
        with Client.connect(server.address) as client:
            pipe = client.pipeline()
            for i in range(200):
                pipe.create(f"a-queue-with-a-rather-long-name-{i:04d}")
            pipe.execute(raise_on_error=True)
        before = server.peak_rss()
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", server.port))
        try:
            hog.sendall(encode(1, Hello()) + encode(2, ListQueues()) * 1000)
            drain_until_closed(hog, within=30)
        finally:
            hog.close()
        grown = server.peak_rss() - before
        server.stop()
    assert grown < 24 * limit, f"the server's peak RSS grew by {grown / 2**20:.0f} MiB with a {limit >> 20} MiB limit"


def test_deleting_a_queue_frees_its_delayed_messages(server_factory: Factory) -> None:
    """Regression: a deleted queue's delayed messages used to stay in memory until each delay ended (up to 49 days),
    bounded by neither the queue's capacity nor --max-queues."""
    server = server_factory()
    with Client.connect(server.address) as client:
        for _ in range(20):
            client.create("q", capacity=100)
            client.send_batch("q", [b"ready"] * 10)
            for _ in range(90):
                client.send("q", b"x" * 10_000, delay=3600.0)
            client.delete("q")
    left = server.call(lambda: len(server.server.broker.entries()))
    assert left == 0, f"{left} messages of deleted queues are still held in memory"


@pytest.mark.parametrize("how", ["delete", "purge", "confirm"])
def test_messages_dropped_or_confirmed_free_their_memory(server_factory: Factory, how: str) -> None:
    server = server_factory()
    with Client.connect(server.address) as client:
        client.create("q")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20 if how != "confirm" else 10):
                client.create("q", capacity=100)
                pipe = client.pipeline()
                for _ in range(100):
                    pipe.send("q", b"x" * 10_000, delay=0 if how == "confirm" else 3600.0)
                pipe.execute(raise_on_error=True)
                if how == "delete":
                    client.delete("q")
                elif how == "purge":
                    client.purge("q")
                else:
                    messages = client.read_batch("q", 100, visibility_timeout=3600.0)
                    assert client.confirm_batch([m.id for m in messages]) == [None] * 100
            server.call(gc.collect)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert server.call(lambda: len(server.server.broker.entries())) == 0
    assert kept < 4_000_000, f"{kept / 1e6:.1f} MB still allocated after {how} was done with every message"


# --- idle connections ------------------------------------------------------------------------------


def test_idle_connections_are_closed_and_their_messages_requeued(server_factory: Factory) -> None:
    server = server_factory(idle_timeout=0.3)
    with Client.connect(server.address) as client:
        client.create("q")
        client.send("q", b"held by the idle one")
        idle = Client.connect(server.address)
        assert (
            idle.read("q", visibility_timeout=NEVER).data == b"held by the idle one"
        )  # held until the connection goes
        started = time.monotonic()
        # Meanwhile the active client keeps its connection by using it.
        while time.monotonic() - started < 1.0:
            client.stats("q")
            time.sleep(0.1)
        assert server.call(lambda: len(server.server.sessions)) == 1
        with pytest.raises(ConnectionLost):
            idle.stats("q")
        idle.close()
        message = client.read("q")
        assert (message.data, message.deliveries) == (b"held by the idle one", 2)


def test_an_idle_connection_closes_about_on_time(server_factory: Factory) -> None:
    server = server_factory(idle_timeout=0.3)
    raw = server.raw()
    raw.send(encode(1, Hello()))
    answer(raw)
    started = time.monotonic()
    assert raw.at_eof()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed <= 2.5, elapsed


def test_a_waiting_read_is_not_idle(server_factory: Factory) -> None:
    server = server_factory(idle_timeout=0.3)
    with Client.connect(server.address) as setup:
        setup.create("q")
        setup.create("empty")

    def wait_for_a_message() -> Message | None:
        with Client.connect(server.address) as reader:
            return reader.read("q", wait=5.0)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=1) as pool:
        woken = pool.submit(wait_for_a_message)
        with Client.connect(server.address) as client:
            started = time.monotonic()
            assert client.read("empty", wait=1.2) is None  # four idle timeouts long: answered, not cut off
            assert time.monotonic() - started >= 1.1
        with Client.connect(server.address) as producer:
            producer.send("q", b"late")  # the other reader has waited four idle timeouts by now
        message = woken.result(5)
    assert message is not None and message.data == b"late"


def test_the_idle_clock_restarts_when_a_waiting_read_ends(server_factory: Factory) -> None:
    """Regression: an answered wait used not to count as activity, so the next idle sweep closed the connection."""
    server = server_factory(idle_timeout=0.5)
    with Client.connect(server.address) as client:
        client.create("q")
        assert client.read("q", wait=1.5) is None
        time.sleep(0.2)  # well within the idle timeout
        client.stats("q")


def test_idle_timeout_is_off_by_default() -> None:
    assert Server().idle_timeout is None


# --- the command line ------------------------------------------------------------------------------


def test_serve_passes_every_limit_flag_through(tmp_path: Path) -> None:
    flags = [
        "--max-message-size", "100", "--max-queues", "2", "--max-queue-name", "5", "--max-connections", "3",
        "--max-in-flight", "1", "--max-output-buffer", "1024", "--idle-timeout", "1",
    ]  # fmt: skip
    with ChildServer(tmp_path, *flags, "--log-level", "info") as server:
        with Client.connect(server.address) as client:
            assert client.connection.protocol.max_message_size == 100
            client.create("q")
            with pytest.raises(InvalidQueueName, match="at most 5 bytes"):
                client.create("sixsix")
            client.create("r")
            with pytest.raises(LimitExceeded, match="2 queues"):
                client.create("s")
            client.send_batch("q", [b"a", b"b"])
            client.read("q")
            with pytest.raises(LimitExceeded, match="1 messages in flight"):
                client.read("q")
            hog = socket.socket()
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.connect(("127.0.0.1", server.port))
            with hog:
                hog.sendall(encode(1, Hello()) + encode(2, ListQueues()) * 12000)  # ~7 MB of replies, never read
                drain_until_closed(hog)
            client.stats("q")  # not idle
            # The server may not have seen the hog go yet: retry while it still counts it.
            with (
                connect_when_room(server.address),
                connect_when_room(server.address),
                pytest.raises(LimitExceeded, match="3 connections"),
            ):
                Client.connect(server.address)
            time.sleep(1.5)  # the first client sits idle past the timeout
            with pytest.raises(ConnectionLost):
                client.stats("q")
        server.stop()
    log = server.log_text()
    assert "replies unread (limit 1024)" in log, log
    assert "idle for" in log, log
    server.assert_no_unhandled_errors()


# --- the documentation -----------------------------------------------------------------------------

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_limits_table_names_every_limit_option_with_its_default() -> None:
    """Every field of `Limits` has a row in a README table naming its option and its default as
    `LimitField.describe` writes it (``| messages in flight ... | 100,000 | `--max-in-flight` ... |``)."""
    rows = [line for line in README.read_text().splitlines() if line.startswith("|")]
    missing = []
    for described in limit_fields():
        option = re.compile(re.escape(option_name(described.name)) + r"(?![\w-])")
        default = f"| {described.describe(described.default)} |"
        if not any(option.search(row) and default in row for row in rows):
            missing.append(f"{option_name(described.name)} with default {described.describe(described.default)!r}")
    assert not missing, "README.md's limits table lacks " + ", ".join(missing)

"""The new commands against a real server, through every client.

Each scenario runs three times, once per client flavour, behind one blocking face:

* ``client``: the blocking `Client`;
* ``pipeline``: every command queued on a fresh `Pipeline` and sent with
  ``execute(raise_on_error=True)``, so the pipeline's own result conversion is used;
* ``async``: the `AsyncClient`, on its own event loop in a background thread
  (that loop fails the test if it sees an unhandled exception).

A waiting read blocks its caller, so scenarios that need one start it in a
worker thread and watch the server's ``waiting`` count before waking it. Waits
are tens of milliseconds; nothing sleeps longer than the behaviour needs.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from dbqueue import (
    NEVER,
    AsyncClient,
    Client,
    ConnectionLost,
    InvalidRequest,
    Message,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    PipelinedClient,
    QueueFull,
    Requeued,
)
from dbqueue.protocol import Read
from dbqueue.server import new_event_loop

if TYPE_CHECKING:
    from conftest import ServerThread

T = TypeVar("T")
U32_MAX = 2**32 - 1
QUICK = 1.0  # generous bound for "answered at once" (a waiting read woken early, a request not blocked)


# --- one blocking face for the three clients ---------------------------------------------


class AsyncRunner:
    """An event loop on a background thread, for driving an `AsyncClient` from blocking code."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, name="dbqueue-test-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        assert self.errors == [], f"the client's loop saw unhandled exceptions: {self.errors}"


class ViaPipeline:
    """Each command goes through its own one-command pipeline."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            pipe = self.client.pipeline()
            assert getattr(pipe, name)(*args, **kwargs) is pipe
            (result,) = pipe.execute(raise_on_error=True)
            return result

        return call

    def close(self) -> None:
        self.client.close()


class ViaAsync:
    """Each command is awaited on the runner's loop; its result or exception comes back here."""

    def __init__(self, runner: AsyncRunner, client: AsyncClient) -> None:
        self.runner = runner
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            async def command() -> Any:
                return await getattr(self.client, name)(*args, **kwargs)

            return self.runner.run(command())

        return call

    def close(self) -> None:
        self.runner.run(self.client.close())


FLAVOURS = ["client", "pipeline", "async"]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def connect(flavour: str) -> Iterator[Callable[[str], Any]]:
    """``connect(address)`` opens a client of the test's flavour; all are closed after the test."""
    opened: list[Any] = []
    runner: AsyncRunner | None = None

    def open_(address: str) -> Any:
        nonlocal runner
        if flavour == "client":
            client: Any = Client.connect(address)
        elif flavour == "pipeline":
            client = ViaPipeline(Client.connect(address))
        else:
            if runner is None:
                runner = AsyncRunner()
            client = ViaAsync(runner, runner.run(AsyncClient.connect(address)))
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()
    if runner is not None:
        runner.stop()


@pytest.fixture
def background() -> Iterator[Callable[..., Future[Any]]]:
    """``background(function, *args, **kwargs)`` runs a blocking call (a waiting read) in a worker thread."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool.submit


def figure(server: ServerThread, queue: str, key: str) -> Any:
    """One figure of one queue; only on the server's loop thread, i.e. inside `ServerThread.wait_until`."""
    return server.server.broker.queues[queue.encode()].stats()[key]


def wait_for_waiting(server: ServerThread, queue: str, count: int) -> None:
    server.wait_until(
        lambda: server.server.broker.queues[queue.encode()].waiting == count, what=f"{count} waiting on {queue}"
    )


# --- delays -------------------------------------------------------------------------------


def test_send_with_a_delay_is_readable_only_after_it_and_joins_the_back(
    server: ServerThread, connect: Callable[[str], Any]
) -> None:
    client = connect(server.address)
    client.create("q")
    a = client.send("q", b"a")
    started = time.monotonic()
    late = client.send("q", b"late", delay=0.05)
    b = client.send("q", b"b")
    assert len({a, late, b}) == 3
    assert client.read("q") == Message(a, b"a", 1)
    stats = client.stats("q")
    if time.monotonic() - started < 0.045:  # (a loaded machine may already be past the delay)
        assert (stats["ready"], stats["delayed"], stats["in_flight"]) == (1, 1, 1)
    server.wait_until(lambda: figure(server, "q", "delayed") == 0, what="the delay to end")
    assert time.monotonic() - started >= 0.045  # never ready before its delay
    c = client.send("q", b"c")
    got = [client.read("q") for _ in range(3)]
    assert got == [Message(b, b"b", 1), Message(late, b"late", 1), Message(c, b"c", 1)]  # behind b, ahead of c
    assert client.read("q") is None


def test_a_delayed_send_wakes_a_waiting_read_when_its_delay_ends(
    server: ServerThread, connect: Callable[[str], Any]
) -> None:
    client = connect(server.address)
    client.create("q")
    started = time.monotonic()
    id_ = client.send("q", b"later", delay=0.04)
    message = client.read("q", visibility_timeout=10.0)
    if message is None:  # as expected: not yet; a loaded machine may already be past the delay
        message = client.read("q", visibility_timeout=10.0, wait=3.0)
    elapsed = time.monotonic() - started
    assert message == Message(id_, b"later", 1)
    assert 0.035 <= elapsed < QUICK
    assert client.stats("q")["in_flight"] == 1


# --- waiting reads -----------------------------------------------------------------------


def test_a_waiting_read_is_woken_by_another_clients_send(
    server: ServerThread, connect: Callable[[str], Any], background: Callable[..., Future[Any]]
) -> None:
    client = connect(server.address)
    client.create("q")
    with Client.connect(server.address) as other:
        pending = background(client.read, "q", visibility_timeout=10.0, wait=5.0)
        wait_for_waiting(server, "q", 1)
        assert not pending.done()
        sent = time.monotonic()
        id_ = other.send("q", b"hello")
        message = pending.result(timeout=3)
        assert time.monotonic() - sent < QUICK
        assert message == Message(id_, b"hello", 1)
        assert client.stats("q")["waiting"] == 0 and client.stats("q")["in_flight"] == 1
        assert client.confirm(id_) is None
        # The woken read's timeout runs: the server's timer is armed for a message handed out on a wake.
        pending = background(client.read, "q", visibility_timeout=0.02, wait=5.0)
        wait_for_waiting(server, "q", 1)
        id_ = other.send("q", b"unconfirmed")
        assert pending.result(timeout=3) == Message(id_, b"unconfirmed", 1)
        server.wait_until(lambda: figure(server, "q", "ready") == 1, what="the woken read to time out")
        assert other.read("q") == Message(id_, b"unconfirmed", 2)
        assert other.confirm(id_) is None
        # A waiting batch read takes a whole batch sent at once.
        pending = background(client.read_batch, "q", 5, visibility_timeout=10.0, wait=5.0)
        wait_for_waiting(server, "q", 1)
        ids = other.send_batch("q", [b"1", b"2", b"3"])
        assert pending.result(timeout=3) == [Message(i, d, 1) for i, d in zip(ids, [b"1", b"2", b"3"])]
        assert client.confirm_batch(ids) == [None, None, None]


def test_a_waiting_read_that_runs_out_answers_none(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("q")
    started = time.monotonic()
    assert client.read("q", wait=0.04) is None
    assert 0.035 <= time.monotonic() - started < QUICK
    started = time.monotonic()
    assert client.read_batch("q", 10, wait=0.03) == []
    assert 0.025 <= time.monotonic() - started < QUICK
    assert client.stats("q")["waiting"] == 0
    id_ = client.send("q", b"after")  # nobody took it
    assert client.read("q") == Message(id_, b"after", 1)


def test_a_waiting_read_on_a_deleted_queue_is_no_such_queue(
    server: ServerThread, connect: Callable[[str], Any], background: Callable[..., Future[Any]]
) -> None:
    client = connect(server.address)
    client.create("gone")
    with Client.connect(server.address) as other:
        pending = background(client.read, "gone", wait=5.0)
        wait_for_waiting(server, "gone", 1)
        deleted = time.monotonic()
        other.delete("gone")
        with pytest.raises(NoSuchQueue):
            pending.result(timeout=3)
        assert time.monotonic() - deleted < QUICK
        client.create("gone")
        pending = background(client.read_batch, "gone", 3, wait=5.0)
        wait_for_waiting(server, "gone", 1)
        other.delete("gone")
        with pytest.raises(NoSuchQueue):
            pending.result(timeout=3)
    client.create("gone")  # the connection is still in step
    assert client.read("gone") is None


def test_a_waiting_read_whose_blocking_connection_closes_is_retired(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("q")
        waiting = PipelinedClient.connect(server.address)  # what Client and Pipeline send through
        waiting.send_many([Read("q", 10_000, 60_000)])
        wait_for_waiting(server, "q", 1)
        waiting.close()
        wait_for_waiting(server, "q", 0)
        id_ = client.send("q", b"not lost")
        with Client.connect(server.address) as reader:
            assert reader.read("q") == Message(id_, b"not lost", 1)
        assert client.stats("q")["waiting"] == 0


def test_a_waiting_read_whose_async_client_closes_is_retired(server: ServerThread) -> None:
    async def main() -> None:
        client = await AsyncClient.connect(server.address)
        await client.create("q")
        pending = asyncio.ensure_future(client.read("q", wait=60.0))
        batch = asyncio.ensure_future(client.read_batch("q", 5, wait=60.0))
        while server.call(lambda: server.server.broker.queues[b"q"].waiting) < 2:
            await asyncio.sleep(0.002)
        await client.close()
        for task in (pending, batch):
            with pytest.raises(ConnectionLost):
                await task
        while server.call(lambda: server.server.broker.queues[b"q"].waiting):
            await asyncio.sleep(0.002)
        async with await AsyncClient.connect(server.address) as other:
            id_ = await other.send("q", b"not lost")
            assert await other.read("q") == Message(id_, b"not lost", 1)

    runner = AsyncRunner()
    try:
        runner.run(main())
    finally:
        runner.stop()


# --- batches ------------------------------------------------------------------------------


def test_send_batch_read_batch_confirm_batch(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("q")
    payloads = [b"a", b"", b"c" * 100]
    ids = client.send_batch("q", payloads)
    assert len(set(ids)) == 3
    assert client.read_batch("q", 2, visibility_timeout=10.0) == [Message(ids[0], b"a", 1), Message(ids[1], b"", 1)]
    assert client.read_batch("q", 10) == [Message(ids[2], b"c" * 100, 1)]
    assert client.read_batch("q", 10) == []
    results = client.confirm_batch([ids[0], 424_242, ids[2], ids[1]])
    assert [type(r) for r in results] == [type(None), NoSuchMessage, type(None), type(None)]
    assert [type(r) for r in client.confirm_batch([ids[0]])] == [NoSuchMessage]  # confirmed already
    stats = client.stats("q")
    assert (stats["enqueued"], stats["confirmed"], stats["ready"], stats["in_flight"]) == (3, 3, 0, 0)
    # A confirm that comes too late is reported as a Requeued value, not raised.
    late = client.send("q", b"late")
    assert [m.id for m in client.read_batch("q", 1, visibility_timeout=0.01)] == [late]
    server.wait_until(lambda: figure(server, "q", "ready") == 1, what="the read to time out")
    assert [type(r) for r in client.confirm_batch([late])] == [Requeued]


def test_send_batch_is_all_or_nothing(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("small", capacity=3)
    client.send("small", b"first")
    with pytest.raises(QueueFull):
        client.send_batch("small", [b"x", b"y", b"z"])
    assert client.stats("small")["ready"] == 1
    ids = client.send_batch("small", [b"x", b"y"])
    assert [m.id for m in client.read_batch("small", 10)][1:] == ids
    with pytest.raises(NoSuchQueue):
        client.send_batch("missing", [b"x"])


def test_read_batch_stops_at_the_message_size_limit(
    server_factory: Callable[..., ServerThread], connect: Callable[[str], Any]
) -> None:
    server = server_factory(max_message_size=1000)
    client = connect(server.address)
    client.create("q")
    # Each entry of the reply costs its payload plus 16 bytes: 416 + 568 = 984, and b"z" would pass 1000.
    client.send_batch("q", [b"x" * 400, b"y" * 552, b"z"])
    assert [len(m.data) for m in client.read_batch("q", 10)] == [400, 552]
    assert [m.data for m in client.read_batch("q", 10)] == [b"z"]


# --- touch and release ------------------------------------------------------------------


def test_touch_and_release(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("q")
    a = client.send("q", b"a")
    b = client.send("q", b"b")
    message = client.read("q", visibility_timeout=0.02)
    assert message == Message(a, b"a", 1)
    assert client.touch(a, visibility_timeout=60.0) is None
    time.sleep(0.05)  # past the first deadline and the sweep after it
    stats = client.stats("q")
    assert (stats["in_flight"], stats["ready"], stats["requeued"]) == (1, 1, 0)  # the touch held it
    assert client.release(a) is None
    assert client.read("q") == Message(a, b"a", 2)  # back at the front
    assert client.release(a, delay=0.03) is None
    assert client.stats("q")["delayed"] == 1
    assert client.read("q") == Message(b, b"b", 1)
    assert client.read("q") is None
    assert client.read("q", wait=3.0) == Message(a, b"a", 3)
    assert client.confirm_batch([a, b]) == [None, None]
    with pytest.raises(NoSuchMessage):
        client.touch(999_999_999, visibility_timeout=0.01)
    with pytest.raises(NoSuchMessage):
        client.release(999_999_999)
    with pytest.raises(NoSuchMessage):
        client.touch(a, visibility_timeout=0.01)  # confirmed
    late = client.send("q", b"late")
    client.read("q", visibility_timeout=0.01)
    server.wait_until(lambda: figure(server, "q", "ready") == 1, what="the read to time out")
    with pytest.raises(Requeued):
        client.touch(late, visibility_timeout=10.0)
    with pytest.raises(Requeued):
        client.release(late)
    assert client.read("q") == Message(late, b"late", 2)


# --- purge, stats, list_queues ------------------------------------------------------------


def test_purge_stats_and_list_queues(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("p", capacity=10)
    client.create("other")
    for data in (b"1", b"2", b"3"):
        client.send("p", data)
    client.send("p", b"later", delay=60.0)
    held = client.read("p", visibility_timeout=60.0)
    assert client.purge("p") == 3  # two ready, one delayed; the one in flight stays
    assert client.stats("p") == {
        "name": "p",
        "ready": 0,
        "in_flight": 1,
        "delayed": 0,
        "capacity": 10,
        "max_deliveries": 0,
        "dead_letter_queue": None,
        "enqueued": 4,
        "confirmed": 0,
        "requeued": 0,
        "dead_lettered": 0,
        "dropped": 0,
        "purged": 3,
        "consumers": 1,
        "waiting": 0,
        "moved": 0,
        "oldest_ready_age_ms": 0,
        "visibility_timeout_ms": 30_000,
    }
    assert client.confirm(held.id) is None
    with Client.connect(server.address) as second:
        assert second.read("p") is None
        assert client.stats("p")["consumers"] == 2
    server.wait_until(lambda: figure(server, "p", "consumers") == 1, what="the closed reader to stop counting")
    stats = client.stats("p")
    assert (stats["confirmed"], stats["in_flight"]) == (1, 0)
    assert client.purge("p") == 0
    queues = client.list_queues()
    assert sorted(q["name"] for q in queues) == ["other", "p"]
    assert {q["name"]: q for q in queues} == {"p": client.stats("p"), "other": client.stats("other")}
    for command in (client.purge, client.stats):
        with pytest.raises(NoSuchQueue):
            command("missing")


# --- dead-letter queues -------------------------------------------------------------------


def test_max_deliveries_moves_a_message_to_the_dead_letter_queue(
    server: ServerThread, connect: Callable[[str], Any]
) -> None:
    client = connect(server.address)
    client.create("dlq")
    client.create("jobs", max_deliveries=2, dead_letter_queue="dlq")
    stats = client.stats("jobs")
    assert (stats["max_deliveries"], stats["dead_letter_queue"]) == (2, "dlq")
    id_ = client.send("jobs", b"poison")
    assert client.release(client.read("jobs").id) is None  # delivery 1: back
    assert client.read("jobs", visibility_timeout=0.01) == Message(id_, b"poison", 2)  # delivery 2: times out
    server.wait_until(lambda: figure(server, "jobs", "dead_lettered") == 1, what="the dead-lettering")
    dead = client.read("dlq")
    assert (dead.data, dead.deliveries) == (b"poison", 1) and dead.id != id_
    stats = client.stats("jobs")
    assert (stats["ready"], stats["in_flight"], stats["requeued"], stats["dead_lettered"]) == (0, 0, 1, 1)
    assert client.read("jobs") is None
    with pytest.raises(NoSuchMessage):
        client.confirm(id_)
    assert client.confirm(dead.id) is None


def test_dead_letter_queue_errors(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    with pytest.raises(NoSuchQueue):
        client.create("q", dead_letter_queue="missing")
    with pytest.raises(InvalidRequest):
        client.create("self", dead_letter_queue="self")
    client.create("b")
    client.create("a", max_deliveries=1, dead_letter_queue="b")
    client.delete("b")
    with pytest.raises(InvalidRequest):
        client.create("b", dead_letter_queue="a")  # b -> a -> b
    for refused in ("q", "self", "b"):  # none of the refused queues was made
        with pytest.raises(NoSuchQueue):
            client.stats(refused)
    client.create("b")  # without the loop it is fine
    assert client.stats("a")["dead_letter_queue"] == "b"


# --- bad inputs ---------------------------------------------------------------------------


def test_out_of_range_arguments_are_refused_locally(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("q")
    refused: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for bad in (-0.001, (U32_MAX + 1) / 1000):
        refused += [
            ("send", ("q", b"x"), {"delay": bad}),
            ("read", ("q",), {"visibility_timeout": bad}),
            ("read", ("q",), {"wait": bad}),
            ("read_batch", ("q", 1), {"visibility_timeout": bad}),
            ("read_batch", ("q", 1), {"wait": bad}),
            ("touch", (1,), {"visibility_timeout": bad}),
            ("release", (1,), {"delay": bad}),
        ]
    refused += [
        ("read_batch", ("q", 0), {}),
        ("read_batch", ("q", 0x10000), {}),
        ("send_batch", ("q", []), {}),
        ("confirm_batch", ([],), {}),
    ]
    for name, args, kwargs in refused:
        with pytest.raises(ValueError):
            getattr(client, name)(*args, **kwargs)
    # Nothing was sent: the server saw none of it and the connection is in step.
    assert client.stats("q")["enqueued"] == 0
    id_ = client.send("q", b"ok", delay=U32_MAX / 1000)  # the largest delay is fine
    assert client.read("q", visibility_timeout=NEVER, wait=0) is None
    assert client.stats("q")["delayed"] == 1
    assert id_ > 0


@pytest.mark.parametrize(
    "name, args, kwargs",
    [
        ("confirm", (-1,), {}),
        ("confirm", (2**64,), {}),
        ("touch", (2**64,), {}),
        ("release", (-1,), {}),
        ("confirm_batch", ([1, -1],), {}),
        ("create", ("q",), {"capacity": -1}),
        ("create", ("q",), {"capacity": 2**64}),
        ("create", ("q",), {"max_deliveries": 2**32}),
    ],
    ids=[
        "confirm-negative",
        "confirm-2**64",
        "touch",
        "release",
        "confirm_batch",
        "capacity",
        "capacity-2**64",
        "max_deliveries",
    ],  # fmt: skip
)
def test_out_of_range_ids_and_options_are_value_errors(
    server: ServerThread, connect: Callable[[str], Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    client = connect(server.address)
    client.create("kept")
    with pytest.raises(ValueError) as info:
        getattr(client, name)(*args, **kwargs)
    assert not isinstance(info.value, struct.error)
    # Nothing reached the server, and the connection is in step.
    assert sorted(q["name"] for q in client.list_queues()) == ["kept"]
    assert client.read("kept") is None


def test_a_batch_item_over_the_size_limit_is_message_too_large(
    server_factory: Callable[..., ServerThread], connect: Callable[[str], Any]
) -> None:
    server = server_factory(max_message_size=100)
    client = connect(server.address)
    client.create("q")
    with pytest.raises(MessageTooLarge):
        client.send_batch("q", [b"ok", b"x" * 101])
    with pytest.raises(MessageTooLarge):
        client.send("q", b"x" * 101, delay=0.01)
    assert client.stats("q")["enqueued"] == 0  # none of the batch went in
    assert client.send_batch("q", [b"x" * 100]) != []  # the connection is in step


@pytest.mark.parametrize("command", ["send_batch", "delayed send"])
def test_a_request_over_the_frame_limit_is_refused_locally(
    server_factory: Callable[..., ServerThread], connect: Callable[[str], Any], command: str
) -> None:
    server = server_factory(max_message_size=100)
    client = connect(server.address)
    client.create("q")
    with pytest.raises(MessageTooLarge):
        if command == "send_batch":
            client.send_batch("q", [b"x" * 100] * 10)  # every item fits; the batch does not
        else:
            client.send("q", b"x" * 1000, delay=0.01)
    assert client.stats("q")["enqueued"] == 0  # nothing was sent: the server would have closed the connection
    assert client.send_batch("q", [b"x" * 100, b"y" * 100]) != []  # a batch within the frame limit is fine


# --- Pipeline ----------------------------------------------------------------------------


def test_pipeline_returns_errors_of_the_new_commands_as_values_in_order(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        pipe = client.pipeline()
        pipe.create("dlq").create("jobs", capacity=3, max_deliveries=1, dead_letter_queue="dlq")
        pipe.create("bad", dead_letter_queue="missing").create("loop", dead_letter_queue="loop")
        pipe.send("jobs", b"later", delay=60.0).send_batch("jobs", [b"a", b"b"]).send_batch("jobs", [b"c"])
        pipe.send_batch("missing", [b"x"]).read_batch("jobs", 5, visibility_timeout=60.0).read_batch("missing", 1)
        pipe.touch(999_999_999, visibility_timeout=0.01).release(999_999_999).purge("missing").stats("missing").purge(
            "jobs"
        )
        pipe.stats("jobs").list_queues().confirm_batch([999_999_999])
        assert len(pipe) == 18
        results = pipe.execute()
        assert len(results) == 18 and len(pipe) == 0
        assert results[:2] == [None, None]
        assert isinstance(results[2], NoSuchQueue)
        assert type(results[3]) is InvalidRequest  # the loop
        assert isinstance(results[4], int)
        a, b = results[5]
        assert isinstance(results[6], QueueFull)  # capacity 3: the delayed message counts
        assert isinstance(results[7], NoSuchQueue)
        assert results[8] == [Message(a, b"a", 1), Message(b, b"b", 1)]
        assert isinstance(results[9], NoSuchQueue)
        assert isinstance(results[10], NoSuchMessage) and isinstance(results[11], NoSuchMessage)
        assert isinstance(results[12], NoSuchQueue) and isinstance(results[13], NoSuchQueue)
        assert results[14] == 1  # the delayed one; the two in flight stay
        assert (results[15]["ready"], results[15]["in_flight"], results[15]["delayed"]) == (0, 2, 0)
        assert sorted(q["name"] for q in results[16]) == ["dlq", "jobs"]
        assert [type(r) for r in results[17]] == [NoSuchMessage]
        with pytest.raises(NoSuchQueue):
            client.pipeline().stats("jobs").purge("missing").execute(raise_on_error=True)
        assert client.confirm_batch([a, b]) == [None, None]  # still in step


def test_a_pipelined_waiting_read_is_woken_by_a_send_later_in_the_same_pipeline(server: ServerThread) -> None:
    """The read's answer comes after the send's: the pipeline matches them by request id."""
    with Client.connect(server.address) as client:
        client.create("q")
        started = time.monotonic()
        results = client.pipeline().read("q", wait=5.0).send("q", b"x").read("q").execute()
        assert time.monotonic() - started < QUICK
        id_ = results[1]
        assert results == [Message(id_, b"x", 1), id_, None]


# --- AsyncClient: one connection, many coroutines ----------------------------------------


def test_a_pending_waiting_read_does_not_block_the_same_async_connection(server: ServerThread) -> None:
    async def main() -> None:
        async with (
            await AsyncClient.connect(server.address) as client,
            await AsyncClient.connect(server.address) as other,
        ):
            await asyncio.gather(client.create("slow"), client.create("busy"), client.create("batch"))
            pending = asyncio.ensure_future(client.read("slow", visibility_timeout=10.0, wait=2.0))
            while server.call(lambda: server.server.broker.queues[b"slow"].waiting) == 0:
                await asyncio.sleep(0.002)
            started = time.monotonic()
            for i in range(20):  # sends, reads and confirms on other queues go through at once
                id_ = await client.send("busy", b"%d" % i)
                assert await client.read("busy", visibility_timeout=10.0) == Message(id_, b"%d" % i, 1)
                assert await client.confirm(id_) is None
            ids = await client.send_batch("batch", [b"a", b"b"])
            assert [m.id for m in await client.read_batch("batch", 5)] == ids
            assert await client.confirm_batch(ids) == [None, None]
            assert (await client.stats("slow"))["waiting"] == 1
            assert time.monotonic() - started < QUICK
            assert not pending.done()
            id_ = await other.send("slow", b"at last")
            assert await asyncio.wait_for(pending, QUICK) == Message(id_, b"at last", 1)
            assert await client.confirm(id_) is None

    runner = AsyncRunner()
    try:
        runner.run(main())
    finally:
        runner.stop()


def test_concurrent_waiting_reads_on_one_async_connection_each_get_one_message(server: ServerThread) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(server.address) as client:
            await client.create("q")
            readers = [asyncio.ensure_future(client.read("q", wait=3.0)) for _ in range(5)]
            while server.call(lambda: server.server.broker.queues[b"q"].waiting) < 5:
                await asyncio.sleep(0.002)
            ids = await client.send_batch("q", [b"%d" % i for i in range(5)])
            got = await asyncio.wait_for(asyncio.gather(*readers), QUICK)
            assert [m.id for m in got] == ids  # oldest waiter first
            assert await client.confirm_batch(ids) == [None] * 5

    runner = AsyncRunner()
    try:
        runner.run(main())
    finally:
        runner.stop()


# --- the blocking clients' socket timeout -------------------------------------------------


@pytest.mark.parametrize("flavour", ["client", "pipeline"])
def test_a_blocking_waiting_read_may_wait_longer_than_the_socket_timeout(server: ServerThread, flavour: str) -> None:
    with Client.connect(server.address, timeout=0.05) as client:
        client.create("q")
        face: Any = client if flavour == "client" else ViaPipeline(client)
        started = time.monotonic()
        assert face.read("q", wait=0.15) is None
        assert time.monotonic() - started >= 0.14
        assert face.read_batch("q", 2, wait=0.12) == []
        id_ = face.send("q", b"x")
        assert face.read("q") == Message(id_, b"x", 1)  # in step afterwards


# --- protocol 3: the queue's visibility timeout, NEVER, peek and move, in every flavour -----------------


def test_a_read_or_touch_without_a_visibility_timeout_gets_its_queues(
    server: ServerThread, connect: Callable[[str], Any]
) -> None:
    client = connect(server.address)
    client.create("plain")
    assert client.stats("plain")["visibility_timeout_ms"] == 30_000  # the server's default
    client.create("short", visibility_timeout=0.2)
    id_ = client.send("short", b"x")
    first = client.read("short")
    assert first == Message(id_, b"x", 1)
    again = client.read("short", wait=5.0)  # back once the queue's 0.2 s passed
    assert again == Message(id_, b"x", 2)
    started = time.monotonic()
    client.touch(id_)  # the queue's default again, from now
    assert client.read("short", wait=5.0) == Message(id_, b"x", 3)
    assert time.monotonic() - started >= 0.15
    client.release(id_)
    held = client.read("short", visibility_timeout=NEVER)
    assert held == Message(id_, b"x", 4)
    assert client.read("short", wait=0.5) is None  # NEVER: it does not come back while the connection lives
    assert client.stats("short")["in_flight"] == 1


def test_peek_shows_and_move_moves_in_every_flavour(server: ServerThread, connect: Callable[[str], Any]) -> None:
    client = connect(server.address)
    client.create("a")
    client.create("b", capacity=10)
    ids = [client.send("a", b"%d" % i) for i in range(3)]
    client.send("a", b"later", delay=60.0)
    seen = client.peek("a")
    assert [(m.id, m.data, m.state, m.deliveries, m.origin) for m in seen] == [
        (id_, b"%d" % i, "ready", 0, None) for i, id_ in enumerate(ids)
    ]
    assert all(abs(m.enqueued_at - time.time()) < 60 for m in seen)
    assert [m.state for m in client.peek("a", 10, delayed=True)] == ["ready"] * 3 + ["delayed"]
    assert client.stats("a")["enqueued"] == 4 and client.stats("a")["ready"] == 3  # nothing delivered
    assert client.move("a", "b", count=2) == 2
    assert [m.id for m in client.peek("b")] == ids[:2]
    assert client.move("a", "b") == 1
    assert (client.stats("a")["ready"], client.stats("a")["delayed"], client.stats("b")["ready"]) == (0, 1, 3)
    assert [m.id for m in client.read_batch("b", 10)] == ids  # ids kept, order kept
    with pytest.raises(NoSuchQueue):
        client.peek("nope")
    with pytest.raises(NoSuchQueue):
        client.move("a", "nope")

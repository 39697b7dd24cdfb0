"""AsyncClient against a real server: many coroutines on one connection, and failure delivery."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from dbqueue import (
    AsyncClient,
    ConnectionLost,
    InvalidQueueName,
    Message,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    QueueFull,
    Requeued,
)
from dbqueue.server import new_event_loop

if TYPE_CHECKING:
    from conftest import ServerThread

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run ``coroutine`` on a fresh client-side loop; fail on any unhandled exception that loop sees."""
    loop = new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
    finally:
        loop.close()
    assert errors == [], f"the client's loop saw unhandled exceptions: {errors}"
    return result


def test_200_coroutines_share_one_connection(server: ServerThread) -> None:
    count = 200

    async def main() -> list[int]:
        async with await AsyncClient.connect(server.address) as client:
            await asyncio.gather(*(client.create(f"q{i}") for i in range(count)))

            async def worker(i: int) -> int:
                payload = b"payload-%d-" % i + bytes([i % 256]) * (i % 50)
                id_ = await client.send(f"q{i}", payload)
                message = await client.read(f"q{i}", visibility_timeout=10.0)
                assert message == Message(id_, payload, 1), (i, message)
                assert await client.confirm(id_) is None
                return id_

            return await asyncio.gather(*(worker(i) for i in range(count)))

    ids = run(main())
    assert len(set(ids)) == 200
    broker = server.server.broker
    assert server.call(lambda: (broker.entries(), sum(q.count for q in broker.queues.values()))) == ({}, 0)


def test_concurrent_readers_of_one_queue_get_each_message_once(server: ServerThread) -> None:
    async def main() -> tuple[list[int], list[Message | None]]:
        async with await AsyncClient.connect(server.address) as client:
            await client.create("shared")
            ids = await asyncio.gather(*(client.send("shared", b"%d" % i) for i in range(100)))
            messages = await asyncio.gather(*(client.read("shared") for _ in range(105)))
            await asyncio.gather(*(client.confirm(m.id) for m in messages if m is not None))
            return ids, messages

    ids, messages = run(main())
    got = [m for m in messages if m is not None]
    # Requests pipelined from one connection are answered in order: the reads see FIFO order.
    assert [m.id for m in got] == ids
    assert [m.data for m in got] == [b"%d" % i for i in range(100)]
    assert messages[100:] == [None] * 5


def test_errors_reach_only_their_own_coroutine(server: ServerThread) -> None:
    async def main() -> list[object]:
        async with await AsyncClient.connect(server.address) as client:
            await client.create("q", capacity=1)
            results = await asyncio.gather(
                client.send("q", b"a"),
                client.send("missing", b"x"),
                client.send("q", b"full"),
                client.confirm(987654321),
                client.read("q", visibility_timeout=0.01),
                return_exceptions=True,
            )
            with pytest.raises(InvalidQueueName):
                await client.read("")
            with pytest.raises(MessageTooLarge):
                await client.send("q", b"x" * (1024 * 1024 + 1))
            # Still usable after every refusal; wait out the timeout, then a late confirm.
            read = results[4]
            assert isinstance(read, Message)
            while server.call(lambda: server.server.broker.entries()[read.id].held is not None):
                await asyncio.sleep(0.005)
            with pytest.raises(Requeued):
                await client.confirm(read.id)
            again = await client.read("q")
            assert again is not None and again.deliveries == 2
            return results

    results = run(main())
    assert isinstance(results[0], int)
    assert isinstance(results[1], NoSuchQueue)
    assert isinstance(results[2], QueueFull)
    assert isinstance(results[3], NoSuchMessage)
    assert isinstance(results[4], Message) and results[4].id == results[0]


def test_pending_requests_get_connection_lost_when_the_server_stops(server: ServerThread) -> None:
    entered = threading.Event()
    gate = threading.Event()

    async def stop_when_let_go() -> None:
        # Blocks the server's loop: requests sent now sit unread in its socket buffer,
        # and stop() closes every session before the loop gets back to reading them.
        entered.set()
        gate.wait(5)
        await server.server.stop()

    async def main() -> list[BaseException | object]:
        client = await AsyncClient.connect(server.address)
        await client.create("q")
        stopping = asyncio.run_coroutine_threadsafe(stop_when_let_go(), server.loop)
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        pending = [asyncio.ensure_future(client.send("q", b"%d" % i)) for i in range(10)]
        pending.append(asyncio.ensure_future(client.read("q")))
        await asyncio.sleep(0.02)  # the frames leave in one write
        assert not any(task.done() for task in pending)
        gate.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.wrap_future(stopping)
        # Later commands fail at once with the same error.
        with pytest.raises(ConnectionLost):
            await client.read("q")
        await client.close()
        return results

    results = run(main())
    assert len(results) == 11
    for result in results:
        assert isinstance(result, ConnectionLost), result
        assert isinstance(result, ConnectionError)


def test_connect_to_nothing_is_connection_lost() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        address = ("127.0.0.1", placeholder.getsockname()[1])

        async def main() -> None:
            await AsyncClient.connect(address, timeout=2)

        with pytest.raises(ConnectionLost) as info:
            run(main())
    assert isinstance(info.value, ConnectionError)


def test_close_returns_held_messages(server: ServerThread) -> None:
    async def main() -> Message | None:
        first = await AsyncClient.connect(server.address)
        await first.create("q")
        await first.send("q", b"held")
        assert (await first.read("q")).data == b"held"  # type: ignore[union-attr]
        await first.close()
        second = await AsyncClient.connect(server.address)
        try:
            while server.call(lambda: server.server.broker.queues[b"q"].ready) == 0:
                await asyncio.sleep(0.002)
            return await second.read("q")
        finally:
            await second.close()

    message = run(main())
    assert message is not None and (message.data, message.deliveries) == (b"held", 2)

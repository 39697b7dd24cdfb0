"""`SqsService` on a real `Broker` behind a fake host: the orders of events a real server makes rare.

The host is a few attributes and a clock the test moves; requests are typed
`dbqueue.sqs` requests given straight to `SqsService.act`. These tests pin the
races of long polls (a client gone while its wait is woken), the wait for the
store's commit and its failure, and visibility timeouts under a fake clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbqueue.core import Broker
from dbqueue.server.limits import Limits
from dbqueue.server.sqs_api import SqsService
from dbqueue.sqs import (
    ChangeMessageVisibility,
    CreateQueue,
    DeleteMessage,
    DeleteQueue,
    ErrorCode,
    PurgeQueue,
    ReceiptHandles,
    ReceiveMessage,
    ReceiveMessageResult,
    SendMessage,
    SendMessageResult,
    SqsError,
)

ENDPOINT = "http://test"


class FakeHost:
    """The members `SqsService` uses of a server, with a clock the test sets and a store it commits by hand."""

    def __init__(self) -> None:
        self.broker = Broker()
        self.now = 1000.0
        self.max_message_size = 1 << 20
        self.max_in_flight = 100
        self.limits = Limits()
        self.store: object | None = None
        self.store_unavailable: str | None = None
        self.failed: asyncio.Future[BaseException] | None = None
        self.outbox: list[tuple[Any, bytes]] = []

    def clock(self) -> float:
        return self.now

    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        if self.store is None:
            transport.write(data)
        else:
            self.outbox.append((transport, data))

    def commit(self, failing: bool = False) -> None:
        """Write the replies out as the server does after a commit; a failed one rewrites them as errors."""
        outbox, self.outbox = self.outbox, []
        for transport, data in outbox:
            transport.write(b"a StoreUnavailable error frame" if failing else data)

    def expire_by(self, deadline: float) -> None:
        pass

    def schedule_expiry(self) -> None:
        pass


def service() -> tuple[FakeHost, SqsService]:
    host = FakeHost()
    return host, SqsService(host, ReceiptHandles(b"0123456789abcdef"), wall=lambda: 1_700_000_000.0)


async def send(sqs: SqsService, body: str) -> SendMessageResult:
    result = await sqs.act(SendMessage("q", body, size=len(body)), ENDPOINT, "AK")
    assert isinstance(result, SendMessageResult)
    return result


async def receive(sqs: SqsService, **options: Any) -> ReceiveMessageResult:
    result = await sqs.act(ReceiveMessage("q", **options), ENDPOINT, "AK")
    assert isinstance(result, ReceiveMessageResult)
    return result


def test_a_wait_woken_after_its_request_was_cancelled_gives_the_message_back() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q"), ENDPOINT, "AK")
        polling = asyncio.ensure_future(receive(sqs, wait_time_seconds=20))
        await asyncio.sleep(0)
        queue = host.broker.queues[b"q"]
        assert queue.waiting == 1
        polling.cancel()  # the client went away; the task has not run its cancellation yet
        await send(sqs, "arrives in between")  # wakes the cancelled wait
        with pytest.raises(asyncio.CancelledError):
            await polling
        assert (queue.ready, queue.in_flight, queue.waiting, sqs.held.count) == (1, 0, 0, 0)
        (message,) = (await receive(sqs, system_attribute_names=frozenset({"ApproximateReceiveCount"}))).messages
        assert message.attributes["ApproximateReceiveCount"] == "1"  # the lost answer was no delivery

    asyncio.run(main())


def test_a_wait_cancelled_after_it_was_woken_gives_the_message_back() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q"), ENDPOINT, "AK")
        polling = asyncio.ensure_future(receive(sqs, wait_time_seconds=20, visibility_timeout=60))
        await asyncio.sleep(0)
        await send(sqs, "handed, never sent")  # the wait takes it, deadline and all
        queue = host.broker.queues[b"q"]
        assert (queue.in_flight, sqs.held.count) == (1, 1)
        polling.cancel()  # before the request could answer
        with pytest.raises(asyncio.CancelledError):
            await polling
        assert (queue.ready, queue.in_flight, sqs.held.count) == (1, 0, 0)
        host.now += 120  # the deadline it had is stale: nothing comes back twice
        assert host.broker.expire(host.now) == 0
        assert queue.ready == 1

    asyncio.run(main())


def test_visibility_timeouts_on_the_broker_clock_and_stale_handles() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q", {"VisibilityTimeout": "10"}), ENDPOINT, "AK")
        await send(sqs, "m")
        (first,) = (await receive(sqs)).messages
        host.now += 9.9
        host.broker.expire(host.now)
        assert (await receive(sqs)).messages == ()
        host.now += 0.2
        host.broker.expire(host.now)
        (second,) = (await receive(sqs)).messages
        queue = host.broker.queues[b"q"]
        await sqs.act(DeleteMessage("q", first.receipt_handle), ENDPOINT, "AK")  # stale: deletes nothing
        assert (queue.in_flight, queue.confirmed) == (1, 0)
        with pytest.raises(SqsError) as caught:
            await sqs.act(ChangeMessageVisibility("q", first.receipt_handle, 5), ENDPOINT, "AK")
        assert caught.value.code is ErrorCode.MESSAGE_NOT_INFLIGHT
        await sqs.act(ChangeMessageVisibility("q", second.receipt_handle, 100), ENDPOINT, "AK")
        host.now += 50
        assert host.broker.expire(host.now) == 0  # touched: the old deadline passed, the new one did not
        await sqs.act(DeleteMessage("q", second.receipt_handle), ENDPOINT, "AK")
        assert (queue.in_flight, queue.confirmed) == (0, 1)

    asyncio.run(main())


def test_answers_wait_for_the_commit_and_a_failed_store_is_service_unavailable() -> None:
    async def main() -> None:
        host, sqs = service()
        host.store = object()
        host.failed = asyncio.get_running_loop().create_future()
        creating = asyncio.ensure_future(sqs.act(CreateQueue("q"), ENDPOINT, "AK"))
        await asyncio.sleep(0.01)
        assert not creating.done() and len(host.outbox) == 1  # done on the broker, not answered yet
        host.commit()
        await asyncio.wait_for(creating, 1)
        sending = asyncio.ensure_future(send(sqs, "m"))
        await asyncio.sleep(0.01)
        host.failed.set_result(OSError("disk full"))
        with pytest.raises(SqsError) as caught:
            await asyncio.wait_for(sending, 1)
        assert caught.value.code is ErrorCode.SERVICE_UNAVAILABLE

    asyncio.run(main())


def test_in_flight_messages_go_back_when_the_service_closes() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q"), ENDPOINT, "AK")
        for body in "abc":
            await send(sqs, body)
        assert len((await receive(sqs, max_messages=10)).messages) == 3
        polling = asyncio.ensure_future(receive(sqs, wait_time_seconds=20))
        await asyncio.sleep(0)
        sqs.close()
        assert (await polling).messages == ()
        queue = host.broker.queues[b"q"]
        assert (queue.ready, queue.in_flight, queue.consumers) == (3, 0, 0)

    asyncio.run(main())


def test_a_failed_commit_and_a_degraded_store_are_service_unavailable() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q"), ENDPOINT, "AK")
        host.store = object()
        sending = asyncio.ensure_future(send(sqs, "m"))
        await asyncio.sleep(0.01)
        host.store_unavailable = "the disk is full"
        host.commit(failing=True)
        with pytest.raises(SqsError) as caught:
            await asyncio.wait_for(sending, 1)
        assert caught.value.code is ErrorCode.SERVICE_UNAVAILABLE and "the disk is full" in caught.value.message
        for request in (SendMessage("q", "m", size=1), CreateQueue("new"), PurgeQueue("q"), DeleteQueue("q")):
            with pytest.raises(SqsError) as caught:
                await sqs.act(request, ENDPOINT, "AK")
            assert caught.value.code is ErrorCode.SERVICE_UNAVAILABLE, request
        assert b"new" not in host.broker.queues and b"q" in host.broker.queues

    asyncio.run(main())


def test_the_memory_budget_and_the_waiting_reads_limit_apply() -> None:
    async def main() -> None:
        host, sqs = service()
        host.limits = Limits(memory_budget=200, max_waiting_reads=1)
        sqs = SqsService(host, ReceiptHandles(b"0123456789abcdef"))
        await sqs.act(CreateQueue("q"), ENDPOINT, "AK")
        await send(sqs, "x" * 50)  # about 80 bytes with its envelope
        await send(sqs, "x" * 50)
        with pytest.raises(SqsError) as caught:
            await send(sqs, "x" * 50)
        assert caught.value.code is ErrorCode.OVER_LIMIT and "memory budget" in caught.value.message
        await sqs.act(CreateQueue("empty"), ENDPOINT, "AK")
        parked = asyncio.ensure_future(sqs.act(ReceiveMessage("empty", wait_time_seconds=20), ENDPOINT, "AK"))
        await asyncio.sleep(0)
        with pytest.raises(SqsError) as caught:
            await sqs.act(ReceiveMessage("empty", wait_time_seconds=20), ENDPOINT, "AK")
        assert caught.value.code is ErrorCode.OVER_LIMIT
        sqs.stop_waiting()
        assert isinstance(await parked, ReceiveMessageResult)

    asyncio.run(main())


def test_a_new_broker_after_a_reload_is_followed() -> None:
    async def main() -> None:
        host, sqs = service()
        await sqs.act(CreateQueue("q", {"VisibilityTimeout": "7"}), ENDPOINT, "AK")
        await send(sqs, "held")
        assert len((await receive(sqs)).messages) == 1
        parked = asyncio.ensure_future(sqs.act(ReceiveMessage("q", wait_time_seconds=20), ENDPOINT, "AK"))
        await asyncio.sleep(0)
        # The server reloads its store: a new broker with the same queue, the held message ready again.
        host.broker = Broker()
        host.broker.create_queue(b"q")
        host.broker.enqueue(host.broker.queues[b"q"], b"restored", host.now)
        sqs.rebind()
        assert (await parked).messages == ()
        assert sqs.held.count == 0
        (message,) = (await receive(sqs)).messages
        assert message.body == "restored"
        record = sqs.record("q")
        assert record.queue is host.broker.queues[b"q"] and record.number("VisibilityTimeout") == 7

    asyncio.run(main())

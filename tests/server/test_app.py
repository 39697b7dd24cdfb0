"""The Server's one expiry timer, driven with a fake clock inside a real loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dbqueue import Server
from dbqueue.core.queues import Holding, Queue
from dbqueue.server.app import SWEEP_RESOLUTION


def with_started_server(body: Callable[[Server, list[float]], Awaitable[None]]) -> None:
    """Run ``body(server, now)`` against a started server whose clock reads ``now[0]``."""

    async def main() -> None:
        server = Server(port=0)
        await server.start()
        now = [asyncio.get_running_loop().time()]
        server.clock = lambda: now[0]
        try:
            await body(server, now)
        finally:
            await server.stop()
            assert server._expiry is None  # stop cancels the timer

    asyncio.run(main())


def ready_queue(server: Server, count: int) -> Queue:
    """Queue "q" on ``server``'s broker, holding ``count`` fresh messages."""
    queue = server.broker.create_queue(b"q")
    for _ in range(count):
        queue.push(b"x")
    return queue


def test_server_options() -> None:
    with pytest.raises(ValueError):
        Server(max_message_size=0)
    server = Server("127.0.0.1", 0)
    assert server.address == "127.0.0.1:0"
    with pytest.raises(RuntimeError):
        server.clock()  # no clock before start


def test_timer_follows_the_earliest_deadline() -> None:
    async def body(server: Server, now: list[float]) -> None:
        broker = server.broker
        queue = ready_queue(server, 3)
        held = Holding()
        server.schedule_expiry()
        assert server._expiry is None  # nothing in flight: no timer
        broker.deliver(queue, 5_000, held, now[0])
        server.schedule_expiry()
        assert server._expiry_at == pytest.approx(now[0] + 5.0)
        broker.deliver(queue, 1_000, held, now[0])  # earlier: the timer moves up
        server.schedule_expiry()
        assert server._expiry_at == pytest.approx(now[0] + 1.0)
        broker.deliver(queue, 9_000, held, now[0])  # later: the timer stays
        server.schedule_expiry()
        assert server._expiry_at == pytest.approx(now[0] + 1.0)
        # A deadline closer than the sweep resolution is rounded up to it.
        other = broker.create_queue(b"other")
        other.push(b"y")
        broker.deliver(other, 1, held, now[0])
        server.schedule_expiry()
        assert server._expiry_at == pytest.approx(now[0] + SWEEP_RESOLUTION)

    with_started_server(body)


def test_expire_by_moves_the_timer_only_for_an_earlier_deadline() -> None:
    """`expire_by` (what every read with a timeout calls) arms the timer when none is set, moves it up
    for an earlier deadline, and leaves it for a later one."""

    async def body(server: Server, now: list[float]) -> None:
        broker = server.broker
        queue = ready_queue(server, 3)
        held = Holding()
        server.expire_by(broker.set_deadline(queue.take(held), 5_000, now[0]))  # type: ignore[arg-type]
        assert server._expiry_at == pytest.approx(now[0] + 5.0)
        server.expire_by(broker.set_deadline(queue.take(held), 9_000, now[0]))  # type: ignore[arg-type]
        assert server._expiry_at == pytest.approx(now[0] + 5.0)  # later: the timer stays
        server.expire_by(broker.set_deadline(queue.take(held), 1_000, now[0]))  # type: ignore[arg-type]
        assert server._expiry_at == pytest.approx(now[0] + 1.0)  # earlier: the timer moves up

    with_started_server(body)


def test_a_pending_sweep_is_never_postponed() -> None:
    async def body(server: Server, now: list[float]) -> None:
        broker = server.broker
        queue = ready_queue(server, 10)
        held = Holding()
        broker.deliver(queue, 5, held, now[0])  # due in 5 ms: the sweep goes at +10 ms
        server.schedule_expiry()
        first = server._expiry_at
        assert first == pytest.approx(now[0] + SWEEP_RESOLUTION)
        for _ in range(5):  # other clients keep reading, every 3 ms, with long timeouts
            now[0] += 0.003
            broker.deliver(queue, 60_000, held, now[0])
            server.schedule_expiry()
            assert server._expiry_at <= first

    with_started_server(body)


def test_the_timer_sweeps_and_rearms() -> None:
    """With the real clock: an expired read goes back, and the timer re-arms for the next deadline."""

    async def main() -> None:
        server = Server(port=0)
        await server.start()
        try:
            broker = server.broker
            queue = broker.create_queue(b"q")
            queue.push(b"a")
            queue.push(b"b")
            held = Holding()
            loop_now = server.clock()
            a = broker.deliver(queue, 20, held, loop_now)
            b = broker.deliver(queue, 60, held, loop_now)
            server.schedule_expiry()
            for _ in range(200):
                await asyncio.sleep(0.005)
                if b.held is None:  # type: ignore[union-attr]
                    break
            assert a.held is None and b.held is None  # type: ignore[union-attr]
            assert [r.data for r in queue.returned] == [b"b", b"a"]
            assert server._expiry is None  # the heap is empty: no timer left armed
        finally:
            await server.stop()

    asyncio.run(main())

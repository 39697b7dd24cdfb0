"""The Server: its limits, its one expiry timer (driven with a fake clock inside a real loop), its store
reclaim timer, its metrics endpoint, and the enqueue times it hands out (Unix time, within milliseconds)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dbqueue import Client, Limits, Server
from dbqueue.core import Holding, Queue
from dbqueue.store import Store, StoreError

SWEEP_RESOLUTION = Limits().sweep_resolution


def with_started_server(body: Callable[[Server, list[float]], Awaitable[None]], limits: Limits | None = None) -> None:
    """Run ``body(server, now)`` against a started server whose clock reads ``now[0]``."""

    async def main() -> None:
        server = Server(port=0, limits=limits)
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
        Server(limits=Limits(max_message_size=0))
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


def test_a_sweep_resolution_of_its_own_rounds_deadlines_up_to_it() -> None:
    async def body(server: Server, now: list[float]) -> None:
        queue = ready_queue(server, 1)
        server.broker.deliver(queue, 1, Holding(), now[0])
        server.schedule_expiry()
        assert server._expiry_at == pytest.approx(now[0] + 0.25)

    with_started_server(body, Limits(sweep_resolution=0.25))


def test_the_server_takes_every_limit_from_its_limits() -> None:
    limits = Limits(
        max_message_size=512,
        default_capacity=7,
        max_queues=4,
        max_queue_name=9,
        max_connections=2,
        max_in_flight=3,
        max_output_buffer=4096,
        idle_timeout=2.5,
    )
    server = Server(port=0, limits=limits)
    assert server.limits is limits
    assert (server.max_message_size, server.max_connections, server.max_in_flight) == (512, 2, 3)
    assert (server.max_output_buffer, server.idle_timeout) == (4096, 2.5)
    broker = server.broker
    assert (broker.max_batch_bytes, broker.default_capacity, broker.max_queues) == (512, 7, 4)
    assert (broker.max_queue_name, broker.max_in_flight) == (9, 3)
    assert Server().limits == Limits()


def test_the_old_limit_keywords_are_gone() -> None:
    with pytest.raises(TypeError):
        Server(max_in_flight=3)  # type: ignore[call-arg]


def test_the_store_is_reclaimed_on_the_limits_interval_and_page_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []
    reclaim = Store.reclaim

    def spy(store: Store, max_pages: int = 1024) -> int:
        rounds.append(max_pages)
        return reclaim(store, max_pages)

    monkeypatch.setattr(Store, "reclaim", spy)

    async def main() -> None:
        server = Server(port=0, data_dir=tmp_path, limits=Limits(reclaim_interval=0.05, reclaim_pages=7))
        await server.start()
        try:
            await asyncio.sleep(0.5)
        finally:
            await server.stop()
        after = len(rounds)
        await asyncio.sleep(0.15)
        assert len(rounds) == after  # stop cancels the timer

    asyncio.run(main())
    assert 4 <= len(rounds) <= 11, rounds  # one at the start, then one every 0.05 s
    assert set(rounds) == {7}


def test_a_store_that_fails_to_give_space_back_runs_degraded_and_keeps_trying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed reclaim round (a full disk, say) no longer stops the server: it is logged, the
    server refuses sends until the store can write again, and the rounds go on."""
    rounds: list[int] = []

    def failing(store: Store, max_pages: int = 1024) -> int:
        rounds.append(max_pages)
        if len(rounds) > 1:
            raise StoreError("the disk went away")
        return 0

    monkeypatch.setattr(Store, "reclaim", failing)
    loop_errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
        server = Server(port=0, data_dir=tmp_path, limits=Limits(reclaim_interval=0.02))
        await server.start()
        try:
            for _ in range(250):
                if len(rounds) >= 4:
                    break
                await asyncio.sleep(0.02)
            assert len(rounds) >= 4  # the rounds go on after the failure
            assert server.failed is not None and not server.failed.done()
            assert server.store_unavailable is not None and "the disk went away" in server.store_unavailable
        finally:
            await server.stop()

    asyncio.run(main())
    assert loop_errors == []
    assert "sends refused until the store can write again" in caplog.text


def scrape(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), head
    return body.decode()


def test_metrics_report_queues_connections_and_requests(server_factory: Callable[..., Any]) -> None:
    server = server_factory(metrics_port=0)
    metrics_port = server.server.metrics_port
    assert metrics_port
    with Client.connect(server.address) as client:
        client.create("jobs")
        client.send_batch("jobs", [b"a", b"b", b"c"])
        client.read("jobs", visibility_timeout=60.0)
        text = scrape(metrics_port)
    lines = set(text.splitlines())
    assert 'dbqueue_queue_ready{queue="jobs"} 2.0' in lines, text
    assert 'dbqueue_queue_in_flight{queue="jobs"} 1.0' in lines, text
    assert 'dbqueue_queue_enqueued_total{queue="jobs"} 3.0' in lines, text
    assert "dbqueue_connections 1.0" in lines, text
    requests = [line for line in lines if line.startswith("dbqueue_requests_total ")]
    assert requests and float(requests[0].split()[1]) >= 4, text  # hello, create, send_batch, read
    assert any(line.startswith('dbqueue_batch_seconds_bucket{le="+Inf"}') for line in lines), text


# --- enqueue times ---------------------------------------------------------------------------------------------------
# A message's enqueue time leaves the server in Unix ms (a peek, an origin): the loop's clock mapped by one offset
# (`Broker.wall_offset_ms`). Ages read against the client's wall clock must agree with the server's own figure
# (STATS' oldest_ready_age_ms) to within the 10 ms the figures are compared at.
WITHIN = 0.010


def sent_between(client: Client, queue: str, data: bytes) -> tuple[float, float, float]:
    """Send ``data``; return the wall clock before and after, and the enqueue time a peek then reads."""
    before = time.time()
    client.send(queue, data)
    after = time.time()
    [peeked] = [message for message in client.peek(queue, 1000) if message.data == data]
    return before, after, peeked.enqueued_at


def test_enqueue_times_are_the_wall_clock_s_over_a_real_server(server_factory: Callable[..., Any]) -> None:
    thread = server_factory()
    with Client.connect(thread.address) as client:
        client.create("times")
        before, after, enqueued = sent_between(client, "times", b"right after start")
        assert before - WITHIN <= enqueued <= after + WITHIN
        # A long iteration of the server's loop (the loop's clock read late in it must still be now).
        busy = threading.Event()

        def hold_up() -> None:
            busy.set()
            time.sleep(0.3)

        thread.loop.call_soon_threadsafe(hold_up)
        assert busy.wait(5)
        before, after, enqueued = sent_between(client, "times", b"behind a long iteration")
        assert after - before >= 0.25 and before - WITHIN <= enqueued <= after + WITHIN
        time.sleep(0.2)
        age = time.time() - enqueued
        oldest = client.stats("times")["oldest_ready_age_ms"] / 1000.0
        assert oldest >= age - WITHIN  # the first message is older still
        client.purge("times")
        before, after, enqueued = sent_between(client, "times", b"alone")
        age = time.time() - enqueued
        assert abs(client.stats("times")["oldest_ready_age_ms"] / 1000.0 - age) <= WITHIN


def test_a_step_of_the_wall_clock_is_followed(server_factory: Callable[..., Any]) -> None:
    """A wall clock stepped after the mapping was taken (NTP, a VM resumed) puts every time off by the step until
    the server's check (`Broker.follow_wall`, every `WALL_CHECK_INTERVAL`) takes the mapping again. The step is
    played by moving the mapping itself by as much, the other way."""
    from dbqueue.server.app import WALL_CHECK_INTERVAL

    thread = server_factory()
    with Client.connect(thread.address) as client:
        client.create("stepped")
        client.send("stepped", b"before the step")

        def step() -> None:
            thread.server.broker.wall_offset_ms -= 450.0

        thread.call(step)
        [message] = client.peek("stepped", 10)
        assert time.time() - message.enqueued_at > 0.4  # off by the step, until the check
        time.sleep(WALL_CHECK_INTERVAL * 1.5)
        [message] = client.peek("stepped", 10)
        age = time.time() - message.enqueued_at
        assert abs(client.stats("stepped")["oldest_ready_age_ms"] / 1000.0 - age) <= WITHIN
        before, after, enqueued = sent_between(client, "stepped", b"after the step")
        assert before - WITHIN <= enqueued <= after + WITHIN


def test_dbqueue_peek_shows_the_age_a_message_has_when_it_prints(tmp_path: Path) -> None:
    """`dbqueue serve`, then `dbqueue send` and `dbqueue peek --json`: the age peek prints is the time since the send
    by the wall clock when it prints, its own start-up included (a CLI takes a few hundred ms to start on a busy
    machine: a message peeked "right after" it was sent is that old, and STATS read by the same command says as
    much). A Client in the same process reads the enqueue time to the millisecond, right after start."""
    server = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            found = re.search(r"dbqueue listening on 127\.0\.0\.1:(\d+)", server.stderr.readline())
            port = int(found[1]) if found else None
        assert port is not None, "the server's log line never came"
        address = f"127.0.0.1:{port}"
        with Client.connect(address) as client:
            client.create("cli")
            before, after, enqueued = sent_between(client, "cli", b"in process")
            assert before - WITHIN <= enqueued <= after + WITHIN
            client.purge("cli")
        cli = [sys.executable, "-m", "dbqueue.cli"]
        subprocess.run([*cli, "send", "cli", "by the CLI", "--address", address], check=True, capture_output=True)
        sent = time.time()
        peeked = subprocess.run(
            [*cli, "peek", "cli", "--json", "--address", address], check=True, capture_output=True, text=True
        )
        printed = time.time()
        [message] = json.loads(peeked.stdout)
        assert message["enqueued_at"] <= sent + WITHIN
        assert message["age"] <= printed - message["enqueued_at"] + WITHIN
        assert message["age"] >= 0.0
    finally:
        server.terminate()
        assert server.wait(20) == 0

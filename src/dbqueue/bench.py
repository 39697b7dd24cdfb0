"""The load test of the original dbqueue, for dbqueue and for its peers.

Theory of operation
-------------------
One asyncio process opens ``producers + consumers`` connections to one or more
servers. A producer iteration writes ``pipeline`` prebuilt sends in one write
and waits for as many replies; a consumer iteration writes ``pipeline`` reads,
then confirms every message it got in one more write. Every reply is checked
(opcode, request order, payload): wrong or missing data raises
`BenchFailure`, it never becomes a number. Consumers run until every message
produced has been confirmed, or the time limit passes (then the run fails).

What a system's bytes look like lives in a `Driver`; the engine (`run_load`,
`run_round_trips`) knows nothing of any wire format, so `bench/compare.py`
drives beanstalkd and Redis through the very same loops.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DbQueueError
from .protocol import frames as fr
from .protocol import messages as msg

__all__ = ["BenchConfig", "BenchResult", "BenchFailure", "Driver", "DbQueueDriver", "run_load", "run_round_trips"]


class BenchFailure(DbQueueError):
    """A reply was wrong, or messages were lost: the run has no valid figure."""


@dataclass
class BenchConfig:
    addresses: Sequence[tuple[str, int]] = (("127.0.0.1", 3003),)
    producers: int = 16
    consumers: int = 16
    pipeline: int = 32
    iterations: int = 1000
    payload: int = 128
    queue: str = "foo"
    timeout_ms: int = 1000  # the in-flight timeout consumers ask for
    time_limit: float = 120.0  # seconds; the run fails if consumers are not done by then
    batch: int = 1  # messages per request: >1 sends, reads and confirms in batches

    @property
    def messages(self) -> int:
        return self.producers * self.iterations * self.pipeline * self.batch


@dataclass
class BenchResult:
    system: str
    requests: int
    messages: int
    seconds: float
    client_cpu_seconds: float
    latencies: list[float] = field(repr=False, default_factory=list)  # seconds per request batch

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "requests": self.requests,
            "messages": self.messages,
            "seconds": round(self.seconds, 4),
            "requests_per_second": round(self.requests_per_second, 1),
            "messages_per_second": round(self.messages_per_second, 1),
            "p50_ms": round(self.percentile_ms(0.50), 4),
            "p99_ms": round(self.percentile_ms(0.99), 4),
            "p999_ms": round(self.percentile_ms(0.999), 4),
            "client_cpu_seconds": round(self.client_cpu_seconds, 3),
            "client_cpu_percent": round(100.0 * self.client_cpu_seconds / self.seconds, 1),
        }


class Driver(ABC):
    """How one system spells the load test's operations. Frames are built once and reused."""

    name: str

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.payload = bytes(i % 251 for i in range(config.payload))

    @abstractmethod
    async def prepare(self, address: tuple[str, int]) -> None:
        """Make the queue exist and be empty on one server."""

    @abstractmethod
    def new_parser(self) -> Callable[[bytes], list[Any]]:
        """Return a function that takes received bytes and returns the replies they complete."""

    @abstractmethod
    def send_frames(self, count: int) -> bytes:
        """``count`` pipelined sends of the payload."""

    @abstractmethod
    def check_sent(self, replies: list[Any]) -> None:
        """Raise `BenchFailure` unless every reply says its message was queued."""

    @abstractmethod
    def read_frames(self, count: int) -> bytes:
        """``count`` pipelined reads (each with ``config.timeout_ms`` where the system has one)."""

    @abstractmethod
    def take_messages(self, replies: list[Any]) -> list[Any]:
        """Check read replies (payload intact); return a confirm handle for each message received."""

    @abstractmethod
    def confirm_frames(self, handles: list[Any]) -> bytes:
        """Pipelined confirms for every handle."""

    def confirm_replies(self, handles: list[Any]) -> int:
        """How many replies `confirm_frames` gets: one per handle unless confirms are batched."""
        return len(handles)

    @abstractmethod
    def check_confirmed(self, replies: list[Any]) -> None:
        """Raise `BenchFailure` unless every reply says its message was confirmed."""


class DbQueueDriver(Driver):
    """The load test in dbqueue's own protocol."""

    name = "dbqueue"

    async def prepare(self, address: tuple[str, int]) -> None:
        from .client import AsyncClient

        client = await AsyncClient.connect(address)
        try:
            try:
                await client.delete(self.config.queue)
            except DbQueueError:
                pass
            await client.create(self.config.queue)
        finally:
            await client.close()

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        config = self.config
        return fr.FrameReader(config.batch * (config.payload + 16) + fr.BODY_OVERHEAD).feed

    def _batch(self, request: msg.Request, count: int) -> bytes:
        # Request ids 1..count, reused by every batch: replies are checked against them.
        return b"".join(msg.encode(request_id, request) for request_id in range(1, count + 1))

    def send_frames(self, count: int) -> bytes:
        config = self.config
        if config.batch > 1:
            return self._batch(msg.EnqueueBatch(config.queue, (self.payload,) * config.batch), count)
        return self._batch(msg.Enqueue(config.queue, self.payload), count)

    def check_sent(self, replies: list[Any]) -> None:
        batch = self.config.batch
        queued = fr.Op.OBJECTS_QUEUED if batch > 1 else fr.Op.OBJECT_QUEUED
        size = 8 * batch
        for expected_id, (opcode, _flags, request_id, body) in enumerate(replies, 1):
            if opcode != queued or request_id != expected_id or len(body) != size:
                raise BenchFailure(f"send {expected_id}: got opcode 0x{opcode:02x} for request {request_id}")

    def read_frames(self, count: int) -> bytes:
        config = self.config
        if config.batch > 1:
            return self._batch(msg.ReadBatch(config.queue, config.batch, config.timeout_ms), count)
        return self._batch(msg.Read(config.queue, config.timeout_ms), count)

    def take_messages(self, replies: list[Any]) -> list[Any]:
        if self.config.batch > 1:
            return self._take_batches(replies)
        ids = []
        message, empty = fr.Op.MESSAGE, fr.Op.EMPTY
        unpack_id = msg.U64.unpack_from
        payload = self.payload
        for expected_id, (opcode, _flags, request_id, body) in enumerate(replies, 1):
            if request_id != expected_id:
                raise BenchFailure(f"read {expected_id}: reply for request {request_id}")
            if opcode == message:
                if body[12:] != payload:
                    raise BenchFailure(f"read {expected_id}: payload corrupted")
                ids.append(unpack_id(body)[0])
            elif opcode != empty:
                raise BenchFailure(f"read {expected_id}: got opcode 0x{opcode:02x}")
        return ids

    def _take_batches(self, replies: list[Any]) -> list[Any]:
        ids: list[int] = []
        payload = self.payload
        for expected_id, (opcode, _flags, request_id, body) in enumerate(replies, 1):
            if opcode != fr.Op.MESSAGES or request_id != expected_id:
                raise BenchFailure(f"read batch {expected_id}: got opcode 0x{opcode:02x} for request {request_id}")
            messages = msg.Messages.from_body(body).messages
            if any(message.data != payload for message in messages):
                raise BenchFailure(f"read batch {expected_id}: payload corrupted")
            ids += [message.id for message in messages]
        return ids

    def _chunks(self, handles: list[Any]) -> list[list[Any]]:
        batch = self.config.batch
        return [handles[i : i + batch] for i in range(0, len(handles), batch)]

    def confirm_frames(self, handles: list[Any]) -> bytes:
        if self.config.batch > 1:
            chunks = self._chunks(handles)
            return b"".join(msg.encode(i, msg.ConfirmBatch(tuple(chunk))) for i, chunk in enumerate(chunks, 1))
        pack = msg.ID_FRAME.pack
        confirm = fr.Op.CONFIRM
        return b"".join(pack(fr.MAGIC, confirm, 0, i, 8, id_) for i, id_ in enumerate(handles, 1))

    def confirm_replies(self, handles: list[Any]) -> int:
        return len(self._chunks(handles)) if self.config.batch > 1 else len(handles)

    def check_confirmed(self, replies: list[Any]) -> None:
        batched = self.config.batch > 1
        confirmed = fr.Op.CONFIRM_RESULTS if batched else fr.Op.CONFIRMED
        for expected_id, (opcode, _flags, request_id, body) in enumerate(replies, 1):
            if opcode != confirmed or request_id != expected_id or (batched and any(body)):
                raise BenchFailure(f"confirm {expected_id}: got opcode 0x{opcode:02x} for request {request_id}")


class _Link(asyncio.Protocol):
    """One load-generator connection: write a batch, wait for that many replies."""

    def __init__(self, parse: Callable[[bytes], list[Any]]) -> None:
        self.parse = parse
        self.replies: list[Any] = []
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.replies += self.parse(data)
        if self.waiter is not None and len(self.replies) >= self.wanted and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(BenchFailure(f"server closed the connection: {exc}"))

    async def exchange(self, frames: bytes, count: int) -> list[Any]:
        self.transport.write(frames)  # type: ignore[union-attr]
        if len(self.replies) < count:
            self.wanted = count
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        if len(self.replies) != count:
            raise BenchFailure(f"expected {count} replies, got {len(self.replies)}")
        replies, self.replies = self.replies, []
        return replies


async def _open(driver: Driver, address: tuple[str, int]) -> _Link:
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(lambda: _Link(driver.new_parser()), *address)
    return link  # type: ignore[return-value]


class _Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.confirmed = 0
        self.latencies: list[float] = []


async def run_load(
    driver: Driver, on_progress: Callable[[int, int], None] | None = None
) -> BenchResult:
    """Run the load test; return its figures. Raises `BenchFailure` on any wrong or missing reply."""
    config = driver.config
    addresses = list(config.addresses)
    for address in addresses:
        await driver.prepare(address)
    links = [await _open(driver, addresses[i % len(addresses)]) for i in range(config.producers + config.consumers)]
    tally = _Tally()
    total = config.messages
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + config.time_limit

    async def produce(link: _Link) -> None:
        frames = driver.send_frames(config.pipeline)
        for _ in range(config.iterations):
            begun = time.perf_counter()
            driver.check_sent(await link.exchange(frames, config.pipeline))
            tally.latencies.append(time.perf_counter() - begun)
            tally.requests += config.pipeline

    async def consume(link: _Link) -> None:
        frames = driver.read_frames(config.pipeline)
        while tally.confirmed < total:
            if time.perf_counter() > deadline:
                raise BenchFailure(f"time limit passed with {tally.confirmed} of {total} messages confirmed")
            begun = time.perf_counter()
            handles = driver.take_messages(await link.exchange(frames, config.pipeline))
            tally.requests += config.pipeline
            if not handles:
                await asyncio.sleep(0.001)  # the queue is empty: do not spin against the producers
                continue
            replies = driver.confirm_replies(handles)
            if replies:
                driver.check_confirmed(await link.exchange(driver.confirm_frames(handles), replies))
            tally.latencies.append(time.perf_counter() - begun)
            tally.requests += replies
            tally.confirmed += len(handles)

    async def report() -> None:
        while True:
            on_progress(tally.confirmed, total)  # type: ignore[misc]
            await asyncio.sleep(0.2)

    reporter = asyncio.ensure_future(report()) if on_progress else None
    try:
        await asyncio.gather(
            *(produce(link) for link in links[: config.producers]),
            *(consume(link) for link in links[config.producers :]),
        )
    finally:
        if reporter is not None:
            reporter.cancel()
        for link in links:
            link.transport.close()  # type: ignore[union-attr]
    if tally.confirmed != total:
        raise BenchFailure(f"{tally.confirmed} messages confirmed, {total} sent")
    if on_progress:
        on_progress(total, total)
    return BenchResult(
        driver.name,
        tally.requests,
        tally.confirmed,
        time.perf_counter() - started,
        time.process_time() - cpu_started,
        tally.latencies,
    )


async def run_round_trips(driver: Driver) -> BenchResult:
    """Unpipelined latency: one connection, send / read / confirm one at a time, each timed."""
    config = driver.config
    address = config.addresses[0]
    await driver.prepare(address)
    link = await _open(driver, address)
    send, read = driver.send_frames(1), driver.read_frames(1)
    latencies = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    clock = time.perf_counter
    try:
        for _ in range(config.iterations):
            t0 = clock()
            driver.check_sent(await link.exchange(send, 1))
            t1 = clock()
            handles = driver.take_messages(await link.exchange(read, 1))
            t2 = clock()
            if len(handles) != 1:
                raise BenchFailure("a message sent was not read back")
            driver.check_confirmed(await link.exchange(driver.confirm_frames(handles), 1))
            latencies += (t1 - t0, t2 - t1, clock() - t2)
    finally:
        link.transport.close()  # type: ignore[union-attr]
    return BenchResult(
        driver.name,
        len(latencies),
        config.iterations,
        time.perf_counter() - started,
        time.process_time() - cpu_started,
        latencies,
    )


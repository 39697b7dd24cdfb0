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

Each connection is driven by its replies: the callback that receives a
batch's last reply checks them and writes the next batch, so a batch costs no
task switch or future, and the load generator stays well below the server's
CPU (`dbqueue bench` prints both). That matters most for a group of servers
sharing the machine's cores with it.

What a system's bytes look like lives in a `Driver`; the engine (`run_load`,
`run_round_trips`) knows nothing of any wire format, so `bench/compare.py`
drives beanstalkd and Redis through the very same loops. dbqueue's replies
are checked as columns (`Replies`), cut by one struct call per batch
(`protocol.codecs.cut_alike`); their bodies are read through the protocol's
layouts (`protocol.layouts`), never at offsets of the load test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, cast

from .errors import DbQueueError, InvalidRequest
from .protocol import codecs
from .protocol import frames as fr
from .protocol import messages as msg
from .protocol.layouts import CONFIRM_ID, MESSAGE_FIELDS, MESSAGE_ID, U32, U64, messages_columns

__all__ = [
    "BenchConfig", "BenchFailure", "BenchResult", "DbQueueDriver", "Driver", "Replies", "ReplyReader",
    "run_load", "run_round_trips",
]  # fmt: skip


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


class ReplyReader(Protocol):
    """Collects one connection's replies: `feed` returns how many are complete, `take` hands them over."""

    def feed(self, data: bytes) -> int: ...

    def take(self) -> Any: ...


class _ListReader:
    """A `ReplyReader` over a parse function that returns a list of replies."""

    def __init__(self, parse: Callable[[bytes], list[Any]]) -> None:
        self.parse = parse
        self.replies: list[Any] = []

    def feed(self, data: bytes) -> int:
        self.replies += self.parse(data)
        return len(self.replies)

    def take(self) -> list[Any]:
        replies, self.replies = self.replies, []
        return replies


class Driver(ABC):
    """How one system spells the load test's operations. Frames are built once and reused."""

    name: str

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.payload = bytes(i % 251 for i in range(config.payload))

    @abstractmethod
    async def prepare(self, address: tuple[str, int]) -> None:
        """Make the queue exist and be empty on one server."""

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        """Return a function that takes received bytes and returns the replies they complete
        (a driver implements this or `new_reader`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither new_parser nor new_reader")

    def new_reader(self) -> ReplyReader:
        """A reader for one connection's replies: by default, the list `new_parser` makes."""
        return _ListReader(self.new_parser())

    @abstractmethod
    def send_frames(self, count: int) -> bytes:
        """``count`` pipelined sends of the payload."""

    # Replies come in each driver's own form, what its reader's `take` returns (a list, `Replies`...).

    @abstractmethod
    def check_sent(self, replies: Any) -> None:
        """Raise `BenchFailure` unless every reply says its message was queued."""

    @abstractmethod
    def read_frames(self, count: int) -> bytes:
        """``count`` pipelined reads (each with ``config.timeout_ms`` where the system has one)."""

    @abstractmethod
    def take_messages(self, replies: Any) -> list[Any]:
        """Check read replies (payload intact); return a confirm handle for each message received."""

    @abstractmethod
    def confirm_frames(self, handles: list[Any]) -> bytes:
        """Pipelined confirms for every handle."""

    def confirm_replies(self, handles: list[Any]) -> int:
        """How many replies `confirm_frames` gets: one per handle unless confirms are batched."""
        return len(handles)

    @abstractmethod
    def check_confirmed(self, replies: Any) -> None:
        """Raise `BenchFailure` unless every reply says its message was confirmed."""


class Replies(NamedTuple):
    """dbqueue replies as columns, so that the checks run as a few C-level list operations."""

    opcodes: list[int]
    request_ids: list[int]
    lengths: list[int]
    bodies: list[bytes]


class _ColumnReader:
    """A `ReplyReader` for dbqueue frames.

    A pipelined batch of like replies usually arrives as whole frames of one
    size: such a buffer is cut, and every header checked, by one precompiled
    struct call. Anything else (mixed sizes, a frame split across reads) goes
    through the protocol's `FrameReader`.
    """

    MAX_RUN = codecs.MAX_RUN  # frames per struct layout; longer buffers take the general path

    def __init__(self, max_body: int) -> None:
        self.reader = fr.FrameReader(max_body)
        self.layouts: dict[tuple[int, int], struct.Struct] = {}  # `cut_alike`'s, by (body length, count)
        self.columns = Replies([], [], [], [])

    def feed(self, data: bytes) -> int:
        columns = self.columns
        reader = self.reader
        if reader.failure is not None:
            raise BenchFailure(f"bad reply framing: {reader.failure.message}")
        if reader.buffered:
            values: codecs.Alike | None = None
        elif len(data) == fr.HEADER_SIZE + int.from_bytes(data[fr.LENGTH_FIELD], "big") and self._add_one(data):
            return len(columns.opcodes)  # one whole frame: an unpipelined round trip
        else:
            values = codecs.cut_alike(data, reader.max_body, self.layouts)
        if values is not None:
            columns.opcodes.extend(values.opcodes)
            columns.request_ids.extend(values.request_ids)
            columns.lengths.extend(values.lengths)
            columns.bodies.extend(values.bodies)
            return len(columns.opcodes)
        frames = reader.feed(data)
        if reader.failure is not None:
            raise BenchFailure(f"bad reply framing: {reader.failure.message}")
        for opcode, flags, request_id, body in frames:
            if flags:
                raise BenchFailure(f"reply to request {request_id} has flags 0x{flags:04x}")
            columns.opcodes.append(opcode)
            columns.request_ids.append(request_id)
            columns.lengths.append(len(body))
            columns.bodies.append(body)
        return len(columns.opcodes)

    def _add_one(self, data: bytes) -> bool:
        """Add ``data``, one whole frame, if it is well-formed (else the caller's general path
        reports what is wrong)."""
        magic, opcode, flags, request_id, length = fr.HEADER.unpack_from(data)
        if magic != fr.MAGIC or flags or length > self.reader.max_body:
            return False
        columns = self.columns
        columns.opcodes.append(opcode)
        columns.request_ids.append(request_id)
        columns.lengths.append(length)
        columns.bodies.append(data[fr.HEADER_SIZE :])
        return True

    def take(self) -> Replies:
        columns, self.columns = self.columns, Replies([], [], [], [])
        return columns


_MESSAGE_ID = itemgetter(MESSAGE_ID)  # a MESSAGE body's id, kept as its wire bytes for the confirm


class DbQueueDriver(Driver):
    """The load test in dbqueue's own protocol.

    Replies are checked as columns (`Replies`) and message ids kept as their
    8 wire bytes, so confirms are built by joining prebuilt headers with them.
    """

    name = "dbqueue"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.request_ids = list(range(1, config.pipeline + 1))  # every batch numbers its requests 1..n
        self.confirm_heads = [fr.HEADER.pack(fr.MAGIC, fr.Op.CONFIRM, 0, i, CONFIRM_ID.size) for i in self.request_ids]
        self.length_column = U32.pack(config.payload) * config.batch  # a full MESSAGES body's lengths
        self.id_columns: dict[int, struct.Struct] = {}  # by message count: cuts a MESSAGES id column into 8-byte ids

    async def prepare(self, address: tuple[str, int]) -> None:
        from .client import AsyncClient

        client = await AsyncClient.connect(address)
        try:
            with contextlib.suppress(DbQueueError):
                await client.delete(self.config.queue)
            await client.create(self.config.queue)
        finally:
            await client.close()

    def new_reader(self) -> ReplyReader:
        config = self.config
        return _ColumnReader(config.batch * (config.payload + 16) + fr.BODY_OVERHEAD)

    def _batch(self, request: msg.Request, count: int) -> bytes:
        # Request ids 1..count, reused by every batch: replies are checked against them.
        return b"".join(msg.encode(request_id, request) for request_id in range(1, count + 1))

    def _check(self, replies: Replies, opcode: int, length: int | None, what: str) -> None:
        """Raise unless every reply has ``opcode``, a body of ``length`` bytes (None: any), and
        request ids 1..n in order."""
        count = len(replies.opcodes)
        if (
            replies.opcodes.count(opcode) == count
            and (length is None or replies.lengths.count(length) == count)
            and replies.request_ids == self.request_ids[:count]
        ):
            return
        for expected, (got, request_id, size) in enumerate(
            zip(replies.opcodes, replies.request_ids, replies.lengths), 1
        ):
            if got != opcode or request_id != expected or length not in (None, size):
                raise BenchFailure(f"{what} {expected}: got opcode 0x{got:02x}, {size} bytes, for request {request_id}")

    def send_frames(self, count: int) -> bytes:
        config = self.config
        if config.batch > 1:
            return self._batch(msg.EnqueueBatch(config.queue, (self.payload,) * config.batch), count)
        return self._batch(msg.Enqueue(config.queue, self.payload), count)

    def check_sent(self, replies: Replies) -> None:
        batch = self.config.batch
        if batch > 1:
            self._check(replies, fr.Op.OBJECTS_QUEUED, 8 * batch, "send batch")
        else:
            self._check(replies, fr.Op.OBJECT_QUEUED, 8, "send")

    def read_frames(self, count: int) -> bytes:
        config = self.config
        if config.batch > 1:
            return self._batch(msg.ReadBatch(config.queue, config.batch, config.timeout_ms), count)
        return self._batch(msg.Read(config.queue, config.timeout_ms), count)

    def take_messages(self, replies: Replies) -> list[bytes]:
        """The ids (8 wire bytes each) of every message read, once each reply and payload is checked."""
        if self.config.batch > 1:
            return self._take_batches(replies)
        count = len(replies.opcodes)
        if replies.opcodes.count(fr.Op.MESSAGE) == count:  # the usual case: every read found a message
            self._check(replies, fr.Op.MESSAGE, MESSAGE_FIELDS.size + len(self.payload), "read")
            intact = list(map(bytes.endswith, replies.bodies, repeat(self.payload)))
            if intact.count(True) != count:
                raise BenchFailure(f"read {intact.index(False) + 1}: payload corrupted")
            return list(map(_MESSAGE_ID, replies.bodies))
        ids = []
        for expected, (opcode, request_id, body) in enumerate(
            zip(replies.opcodes, replies.request_ids, replies.bodies), 1
        ):
            if request_id != expected:
                raise BenchFailure(f"read {expected}: reply for request {request_id}")
            if opcode == fr.Op.MESSAGE:
                if body[MESSAGE_FIELDS.size :] != self.payload:
                    raise BenchFailure(f"read {expected}: payload corrupted")
                ids.append(body[MESSAGE_ID])
            elif opcode != fr.Op.EMPTY:
                raise BenchFailure(f"read {expected}: got opcode 0x{opcode:02x}")
        return ids

    def _take_batches(self, replies: Replies) -> list[bytes]:
        """The ids of every message in MESSAGES bodies (count, ids, deliveries, lengths, payloads),
        each body checked by comparing its length column and payloads whole."""
        self._check(replies, fr.Op.MESSAGES, None, "read batch")
        payload = self.payload
        ids: list[bytes] = []
        for expected, body in enumerate(replies.bodies, 1):
            try:
                count, id_column, _, lengths, payloads = messages_columns(body)
            except InvalidRequest:
                count = -1
            if not 0 <= count <= self.config.batch:
                raise BenchFailure(f"read batch {expected}: a body of {len(body)} bytes for {count} messages")
            if lengths != self.length_column[: U32.size * count] or payloads != payload * count:
                raise BenchFailure(f"read batch {expected}: payload corrupted")
            cut = self.id_columns.get(count)
            if cut is None:
                cut = self.id_columns[count] = struct.Struct(f"{U64.size}s" * count)
            ids += cut.unpack(id_column)
        return ids

    def confirm_frames(self, handles: list[bytes]) -> bytes:
        batch = self.config.batch
        if batch == 1:
            return b"".join(chain.from_iterable(zip(self.confirm_heads, handles)))
        frames: list[bytes] = []
        for number, start in enumerate(range(0, len(handles), batch), 1):
            chunk = handles[start : start + batch]
            frames += (fr.HEADER.pack(fr.MAGIC, fr.Op.CONFIRM_BATCH, 0, number, U64.size * len(chunk)), *chunk)
        return b"".join(frames)

    def confirm_replies(self, handles: list[Any]) -> int:
        return -(-len(handles) // self.config.batch)  # one per batch of ids: a ceiling division

    def check_confirmed(self, replies: Replies) -> None:
        if self.config.batch == 1:
            self._check(replies, fr.Op.CONFIRMED, 0, "confirm")
            return
        self._check(replies, fr.Op.CONFIRM_RESULTS, None, "confirm batch")
        # One outcome per id: every batch but the last is full.
        batch, lengths = self.config.batch, replies.lengths
        for number, (body, length) in enumerate(zip(replies.bodies, lengths), 1):
            if any(body) or not 0 < length <= batch or (length < batch and number < len(lengths)):
                raise BenchFailure(f"confirm batch {number}: outcomes {list(body)} for a batch of up to {batch} ids")


class _Link(asyncio.Protocol):
    """One load-generator connection: write a batch, collect that many replies.

    `exchange` awaits the replies (round trips); `expect` hands them to a
    callback straight from `data_received`, so a load run costs no task
    wake-up or future per batch: only the parsing and the checks.
    """

    def __init__(self, reader: ReplyReader) -> None:
        self.reader = reader
        self.wanted = 0
        self.then: Callable[[Any], None] | None = None
        self.failed: Callable[[Exception], None] | None = None

    # Set when the connection is made, before anything uses it.
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            complete = self.reader.feed(data)
            if self.then is not None and complete >= self.wanted:
                if complete > self.wanted:
                    raise BenchFailure(f"expected {self.wanted} replies, got {complete}")
                then, self.then = self.then, None
                then(self.reader.take())
        except Exception as exc:  # a failed check ends this link's run, not the event loop
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.then is not None:
            self.then = None
            self.fail(BenchFailure(f"server closed the connection: {exc}"))

    def fail(self, exc: Exception) -> None:
        if self.failed is not None:
            self.failed(exc)

    def expect(self, frames: bytes, count: int, then: Callable[[Any], None]) -> None:
        """Write ``frames``; call ``then`` with the ``count`` replies once they are in."""
        self.wanted = count
        self.then = then
        self.transport.write(frames)

    async def exchange(self, frames: bytes, count: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def failed(exc: Exception) -> None:
            if not future.done():
                future.set_exception(exc)

        def answered(replies: Any) -> None:
            if not future.done():
                future.set_result(replies)

        self.failed = failed
        self.expect(frames, count, answered)
        return await future


async def _open(driver: Driver, address: tuple[str, int]) -> _Link:
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(lambda: _Link(driver.new_reader()), *address)
    return link


class _Tally:
    """What every link of one run has done so far."""

    def __init__(self, config: BenchConfig) -> None:
        self.total = config.messages
        self.deadline = time.perf_counter() + config.time_limit
        self.requests = 0
        self.confirmed = 0
        self.latencies: list[float] = []


class _Worker:
    """One link's part of the load test, driven by its replies; `done` resolves when it is over."""

    def __init__(self, driver: Driver, link: _Link, tally: _Tally) -> None:
        self.driver = driver
        self.config = driver.config
        self.link = link
        self.tally = tally
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.began = 0.0
        self.retry: asyncio.TimerHandle | None = None  # a consumer's pause after an empty read
        link.failed = self.fail

    def fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def start(self) -> None:
        """Begin this worker's part (each kind of worker says how)."""
        raise NotImplementedError

    def stop(self) -> None:
        """End this worker's part for good (the run is over, or failed elsewhere)."""
        self.link.failed = self.link.then = None
        if self.retry is not None:
            self.retry.cancel()
        self.finish()


class _Producer(_Worker):
    def __init__(self, driver: Driver, link: _Link, tally: _Tally) -> None:
        super().__init__(driver, link, tally)
        self.frames = driver.send_frames(self.config.pipeline)
        self.left = self.config.iterations

    def start(self) -> None:
        if not self.left:
            self.finish()
            return
        self.left -= 1
        self.began = time.perf_counter()
        self.link.expect(self.frames, self.config.pipeline, self.sent)

    def sent(self, replies: Any) -> None:
        self.driver.check_sent(replies)
        tally = self.tally
        tally.latencies.append(time.perf_counter() - self.began)
        tally.requests += self.config.pipeline
        self.start()


class _Consumer(_Worker):
    def __init__(self, driver: Driver, link: _Link, tally: _Tally) -> None:
        super().__init__(driver, link, tally)
        self.frames = driver.read_frames(self.config.pipeline)
        self.handles: list[Any] = []
        self.confirms = 0

    def start(self) -> None:
        tally = self.tally
        if tally.confirmed >= tally.total:
            self.finish()
            return
        self.began = time.perf_counter()
        if self.began > tally.deadline:
            self.fail(BenchFailure(f"time limit passed with {tally.confirmed} of {tally.total} messages confirmed"))
            return
        self.link.expect(self.frames, self.config.pipeline, self.read)

    def read(self, replies: Any) -> None:
        driver = self.driver
        self.handles = handles = driver.take_messages(replies)
        self.tally.requests += self.config.pipeline
        if not handles:
            self.retry = self.loop.call_later(
                0.001, self.start
            )  # the queue is empty: do not spin against the producers
            return
        self.confirms = driver.confirm_replies(handles)
        if self.confirms:
            self.link.expect(driver.confirm_frames(handles), self.confirms, self.confirmed)
        else:
            self.confirmed(None)

    def confirmed(self, replies: Any) -> None:
        if replies is not None:
            self.driver.check_confirmed(replies)
        tally = self.tally
        tally.latencies.append(time.perf_counter() - self.began)
        tally.requests += self.confirms
        tally.confirmed += len(self.handles)
        self.start()


async def run_load(driver: Driver, on_progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Run the load test; return its figures. Raises `BenchFailure` on any wrong or missing reply."""
    config = driver.config
    addresses = list(config.addresses)
    for address in addresses:
        await driver.prepare(address)
    # Producers and consumers are spread over the addresses each on their own, so that
    # every server that gets messages also gets consumers.
    senders = [await _open(driver, addresses[i % len(addresses)]) for i in range(config.producers)]
    readers = [await _open(driver, addresses[i % len(addresses)]) for i in range(config.consumers)]
    links = senders + readers
    started = time.perf_counter()
    cpu_started = time.process_time()
    tally = _Tally(config)
    workers: list[_Worker] = [_Producer(driver, link, tally) for link in senders]
    workers += [_Consumer(driver, link, tally) for link in readers]

    async def report(progress: Callable[[int, int], None]) -> None:
        while True:
            progress(tally.confirmed, tally.total)
            await asyncio.sleep(0.2)

    reporter = asyncio.ensure_future(report(on_progress)) if on_progress else None
    try:
        for worker in workers:
            worker.start()
        # Consumers check the time limit before each batch; this bounds a server that stops answering.
        await asyncio.wait_for(asyncio.gather(*(worker.done for worker in workers)), config.time_limit + 5.0)
    except TimeoutError:
        raise BenchFailure(
            f"no end {config.time_limit + 5.0:.0f} s after the start: the server stopped answering"
        ) from None
    finally:
        if reporter is not None:
            reporter.cancel()
        for worker in workers:
            worker.stop()
        for link in links:
            link.transport.close()
    if tally.confirmed != tally.total:
        raise BenchFailure(f"{tally.confirmed} messages confirmed, {tally.total} sent")
    if on_progress:
        on_progress(tally.total, tally.total)
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
    latencies: list[float] = []
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
            if len(handles) != config.batch:
                raise BenchFailure(f"{config.batch} messages sent, {len(handles)} read back")
            driver.check_confirmed(await link.exchange(driver.confirm_frames(handles), driver.confirm_replies(handles)))
            latencies += (t1 - t0, t2 - t1, clock() - t2)
    finally:
        link.transport.close()
    return BenchResult(
        driver.name,
        len(latencies),
        config.iterations,
        time.perf_counter() - started,
        time.process_time() - cpu_started,
        latencies,
    )

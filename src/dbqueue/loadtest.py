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
`run_round_trips`, `run_fan_in`) knows nothing of any wire format, so
`bench/compare.py` and `bench/fanin.py` drive beanstalkd and Redis through the
very same loops. dbqueue's replies are checked as columns (`Replies`), cut by
one struct call per batch (`protocol.codecs.cut_alike`); their bodies are read
through the protocol's layouts (`protocol.layouts`), never at offsets of the
load test's own.

Payloads are unique per message, for every system: each is the driver's
template with its last `LABEL_SIZE` bytes replaced by a running number (the
*label*), so a system that finds a message by its value (Redis's ``LREM``)
compares whole payloads, as it would in a real deployment, instead of
matching the first one it looks at. A check that a payload is intact compares
its size and everything before the label with the template.

*Fan-in* (`run_fan_in`) is the shape of a real deployment: many workers, each
with one request in flight. Producers send one message at a time; consumers
read one (with ``config.visibility_timeout`` as its visibility timeout), then confirm
it. Every round trip is timed. Its connections are spread over several
client processes (forked), so that the load generator is not what limits the
run; the processes share one count of confirmed messages (`Ledger`), so that
every consumer goes on until the whole run's messages are confirmed, whoever
sent them.

*Reaching a server.* Every connection (the load's and `DbQueueDriver.prepare`'s)
is made with ``config.tls`` (an `ssl.SSLContext`, or None for plain TCP) and,
where the driver has one, opens with its greeting (`Driver.greeting`: dbqueue's
Hello with ``config.token``) before the run uses it.

*The queue.* `DbQueueDriver.prepare` never deletes anything: it creates the
queue where it does not exist (and records that in ``created``), uses it where
it exists and is empty, and refuses (`BenchFailure`) where it holds messages:
those are somebody's, and the run's checks would count them as lost or stray.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import ssl
import struct
import sys
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, cast

from .client.commands import visibility_ms
from .errors import DbQueueError, InvalidRequest, NoSuchQueue, error_for_code
from .protocol import codecs
from .protocol import frames as fr
from .protocol import messages as msg
from .protocol.layouts import CONFIRM_ID, MESSAGE_FIELDS, MESSAGE_ID, U32, U64, messages_columns

__all__ = [
    "LABEL_SIZE", "BenchConfig", "BenchFailure", "BenchResult", "DbQueueDriver", "Driver", "Ledger", "Replies",
    "ReplyReader", "run_fan_in", "run_load", "run_round_trips",
]  # fmt: skip

LABEL_SIZE = 8  # bytes at the end of every payload that number its message (fewer in a shorter payload)


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
    visibility_timeout: float = 1.0  # seconds: the visibility timeout consumers ask for
    time_limit: float = 120.0  # seconds; the run fails if consumers are not done by then
    batch: int = 1  # messages per request: >1 sends, reads and confirms in batches
    fan_in: bool = False  # time every round trip (a send, a read, a confirm), not every batch: for pipeline 1
    first_label: int = 0  # the number in the first payload sent (processes of one run start far apart)
    token: bytes | None = field(default=None, repr=False)  # sent in a Hello on every connection when given
    tls: ssl.SSLContext | None = None  # every connection over TLS with this context when given

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
        # The template: every payload sent is this with its last `label_size` bytes numbering it.
        self.payload = bytes(i % 251 for i in range(config.payload))
        self.label_size = min(LABEL_SIZE, config.payload)
        self.next_label = config.first_label

    @property
    def payload_head(self) -> bytes:
        """What every payload of this run shares: the template without its label."""
        return self.payload[: len(self.payload) - self.label_size]

    def payloads(self, count: int) -> list[bytes]:
        """The next ``count`` payloads: the template, each numbered by its label (a payload shorter
        than `LABEL_SIZE` bytes keeps the number's low bytes, so its payloads repeat)."""
        head, size = self.payload_head, self.label_size
        first = self.next_label
        self.next_label = first + count
        mask = (1 << 8 * size) - 1
        return [head + (number & mask).to_bytes(size, "big") for number in range(first, first + count)]

    def intact(self, data: bytes) -> bool:
        """Whether ``data`` is a payload of this run: the template's size and, before the label, its bytes."""
        return len(data) == len(self.payload) and data.startswith(self.payload_head)

    @abstractmethod
    async def prepare(self, address: tuple[str, int]) -> None:
        """Make the queue exist and be empty on one server."""

    def greeting(self) -> bytes | None:
        """The frame a new connection opens with, whose one reply `check_greeting` judges; None: none."""
        return None

    def check_greeting(self, reply: bytes) -> None:
        """Raise if ``reply`` (the whole reply to `greeting`) refuses the connection."""
        return None  # a driver without a greeting has nothing to check

    def new_parser(self) -> Callable[[bytes], list[Any]]:
        """Return a function that takes received bytes and returns the replies they complete
        (a driver implements this or `new_reader`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither new_parser nor new_reader")

    def new_reader(self) -> ReplyReader:
        """A reader for one connection's replies: by default, the list `new_parser` makes."""
        return _ListReader(self.new_parser())

    @abstractmethod
    def send_frames(self, count: int) -> bytes:
        """``count`` pipelined sends, each of a payload of its own (`payloads`): called for every batch."""

    # Replies come in each driver's own form, what its reader's `take` returns (a list, `Replies`...).

    @abstractmethod
    def check_sent(self, replies: Any) -> None:
        """Raise `BenchFailure` unless every reply says its message was queued."""

    @abstractmethod
    def read_frames(self, count: int) -> bytes:
        """``count`` pipelined reads (each with ``config.visibility_timeout`` where the system has one)."""

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


_unpack_header = fr.HEADER.unpack_from
_HEADER_SIZE, _MAGIC, _MESSAGE = fr.HEADER_SIZE, fr.MAGIC, int(fr.Op.MESSAGE)


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
        # None until a reply comes: a lone reply's columns are then made with it, one item each.
        self.pending: Replies | None = None

    @property
    def columns(self) -> Replies:
        """The replies collected since the last `take`."""
        if self.pending is None:
            self.pending = Replies([], [], [], [])
        return self.pending

    def feed(self, data: bytes) -> int:
        reader = self.reader
        if reader.failure is not None:
            raise BenchFailure(f"bad reply framing: {reader.failure.message}")
        if reader.buffered:
            values: codecs.Alike | None = None
        else:
            if self.pending is None and len(data) >= _HEADER_SIZE:  # an unpipelined round trip's reply
                magic, opcode, flags, request_id, length = _unpack_header(data)
                if len(data) == _HEADER_SIZE + length and magic == _MAGIC and not flags and length <= reader.max_body:
                    self.pending = Replies([opcode], [request_id], [length], [data[_HEADER_SIZE:]])
                    return 1
            values = codecs.cut_alike(data, reader.max_body, self.layouts)
        columns = self.columns
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

    def take(self) -> Replies:
        columns = self.columns
        self.pending = None
        return columns


_MESSAGE_ID = itemgetter(MESSAGE_ID)  # a MESSAGE body's id, kept as its wire bytes for the confirm


class DbQueueDriver(Driver):
    """The load test in dbqueue's own protocol.

    Replies are checked as columns (`Replies`) and message ids kept as their
    8 wire bytes, so confirms are built by joining prebuilt headers with them.
    Sends are built the same way: each request's frame up to its payloads
    (the same for every batch: payloads differ only in content) joined with
    the payloads.
    """

    name = "dbqueue"

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.created: set[tuple[str, int]] = set()  # where `prepare` created the queue (the others had it)
        self.request_ids = list(range(1, config.pipeline + 1))  # every batch numbers its requests 1..n
        self.confirm_heads = [fr.HEADER.pack(fr.MAGIC, fr.Op.CONFIRM, 0, i, CONFIRM_ID.size) for i in self.request_ids]
        self.length_column = U32.pack(config.payload) * config.batch  # a full MESSAGES body's lengths
        self.id_columns: dict[int, struct.Struct] = {}  # by message count: cuts a MESSAGES id column into 8-byte ids
        self.head_columns: dict[int, struct.Struct] = {}  # by message count: cuts MESSAGES payloads into their heads
        template = (
            msg.EnqueueBatch(config.queue, (self.payload,) * config.batch)
            if config.batch > 1
            else msg.Enqueue(config.queue, self.payload)
        )
        payload_bytes = config.batch * config.payload
        self.send_heads = []  # request i's send frame (1-based) up to its payloads
        for request_id in self.request_ids:
            frame = msg.encode(request_id, template)
            self.send_heads.append(frame[: len(frame) - payload_bytes])

    async def prepare(self, address: tuple[str, int]) -> None:
        """Create the queue on ``address``, or use it there if it exists and is empty; raise
        `BenchFailure` if it holds messages (see the module docstring). Deletes nothing."""
        from .client import AsyncClient

        config = self.config
        client = await AsyncClient.connect(address, token=config.token, tls=config.tls or None)
        try:
            try:
                figures = await client.stats(config.queue)
            except NoSuchQueue:
                await client.create(config.queue)
                self.created.add(address)
                return
            held = sum(int(figures.get(state, 0)) for state in ("ready", "in_flight", "delayed"))
            if held:
                host, port = address
                raise BenchFailure(
                    f"the queue {config.queue!r} on {host}:{port} holds {held:,} message{'' if held == 1 else 's'}: "
                    "the load test will not use it (pick another queue with --queue, or leave --queue out for a new"
                    " one)"
                )
        finally:
            await client.close()

    def greeting(self) -> bytes | None:
        if self.config.token is None:
            return None
        return msg.encode(1, msg.Hello(token=self.config.token))

    def check_greeting(self, reply: bytes) -> None:
        _, opcode, flags, _, _ = fr.HEADER.unpack_from(reply)
        answer = msg.decode_response(opcode, reply[fr.HEADER_SIZE :], flags)
        if isinstance(answer, msg.Error):
            raise error_for_code(answer.code, answer.message)
        if not isinstance(answer, msg.HelloOk):
            raise BenchFailure(f"expected HELLO_OK to the Hello, got {type(answer).__name__}")

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
        if count == 1:  # an unpipelined round trip's one reply: the same tests, item by item
            if replies.opcodes[0] == opcode and length in (None, replies.lengths[0]) and replies.request_ids[0] == 1:
                return
        elif (
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
        batch = self.config.batch
        payloads = self.payloads(count * batch)
        if count * batch == 1:  # an unpipelined send: its head and its payload
            return self.send_heads[0] + payloads[0]
        if batch > 1:
            groups = [b"".join(payloads[start : start + batch]) for start in range(0, len(payloads), batch)]
            return b"".join(chain.from_iterable(zip(self.send_heads, groups)))
        return b"".join(chain.from_iterable(zip(self.send_heads, payloads)))

    def check_sent(self, replies: Replies) -> None:
        batch = self.config.batch
        if batch > 1:
            self._check(replies, fr.Op.OBJECTS_QUEUED, 8 * batch, "send batch")
        else:
            self._check(replies, fr.Op.OBJECT_QUEUED, 8, "send")

    def read_frames(self, count: int) -> bytes:
        config = self.config
        timeout_ms = visibility_ms(config.visibility_timeout)
        if config.batch > 1:
            return self._batch(msg.ReadBatch(config.queue, config.batch, timeout_ms), count)
        return self._batch(msg.Read(config.queue, timeout_ms), count)

    def take_messages(self, replies: Replies) -> list[bytes]:
        """The ids (8 wire bytes each) of every message read, once each reply and payload is checked."""
        if self.config.batch > 1:
            return self._take_batches(replies)
        count = len(replies.opcodes)
        head = self.payload_head
        size = MESSAGE_FIELDS.size + len(self.payload)
        if count == 1 and replies.opcodes[0] == _MESSAGE:  # an unpipelined read that found a message
            body = replies.bodies[0]
            if replies.request_ids[0] == 1 and len(body) == size and body.startswith(head, MESSAGE_FIELDS.size):
                return [body[MESSAGE_ID]]
            # else the loop below says what is wrong
        elif replies.opcodes.count(fr.Op.MESSAGE) == count:  # the usual case: every read found a message
            self._check(replies, fr.Op.MESSAGE, size, "read")
            intact = list(map(bytes.startswith, replies.bodies, repeat(head), repeat(MESSAGE_FIELDS.size)))
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
                if len(body) != size or not body.startswith(head, MESSAGE_FIELDS.size):
                    raise BenchFailure(f"read {expected}: payload corrupted")
                ids.append(body[MESSAGE_ID])
            elif opcode != fr.Op.EMPTY:
                raise BenchFailure(f"read {expected}: got opcode 0x{opcode:02x}")
        return ids

    def _take_batches(self, replies: Replies) -> list[bytes]:
        """The ids of every message in MESSAGES bodies (count, ids, deliveries, lengths, payloads),
        each body checked by comparing its length column and payloads whole."""
        self._check(replies, fr.Op.MESSAGES, None, "read batch")
        size, head = len(self.payload), self.payload_head
        ids: list[bytes] = []
        for expected, body in enumerate(replies.bodies, 1):
            try:
                count, id_column, _, lengths, payloads = messages_columns(body)
            except InvalidRequest:
                count = -1
            if not 0 <= count <= self.config.batch:
                raise BenchFailure(f"read batch {expected}: a body of {len(body)} bytes for {count} messages")
            if lengths != self.length_column[: U32.size * count] or len(payloads) != size * count:
                raise BenchFailure(f"read batch {expected}: payload corrupted")
            heads = self.head_columns.get(count)
            if heads is None:
                heads = self.head_columns[count] = struct.Struct(f"{len(head)}s{self.label_size}x" * count)
            if heads.unpack(payloads).count(head) != count:
                raise BenchFailure(f"read batch {expected}: payload corrupted")
            cut = self.id_columns.get(count)
            if cut is None:
                cut = self.id_columns[count] = struct.Struct(f"{U64.size}s" * count)
            ids += cut.unpack(id_column)
        return ids

    def confirm_frames(self, handles: list[bytes]) -> bytes:
        batch = self.config.batch
        if batch == 1:
            if len(handles) == 1:  # an unpipelined confirm: its head and the id
                return self.confirm_heads[0] + handles[0]
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
    """A link to ``address`` (over TLS with ``config.tls``), greeted (`Driver.greeting`) if the driver says so."""
    loop = asyncio.get_running_loop()
    host, port = address
    tls = driver.config.tls
    greeting = driver.greeting()
    reader: ReplyReader = driver.new_reader() if greeting is None else _GreetingReader(driver.new_reader())
    _, link = await loop.create_connection(
        lambda: _Link(reader), host, port, ssl=tls, server_hostname=host if tls is not None else None
    )
    if greeting is not None:
        try:
            driver.check_greeting(await link.exchange(greeting, 1))
        except BaseException:
            link.transport.close()
            raise
        link.reader = cast(_GreetingReader, reader).after
    return link


class _GreetingReader:
    """Reads the one reply to a greeting (a whole frame, as bytes), then hands over to ``after``."""

    def __init__(self, after: ReplyReader) -> None:
        self.after = after
        self.buffer = bytearray()

    def feed(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) < fr.HEADER_SIZE:
            return 0
        length = fr.HEADER.unpack_from(self.buffer)[fr.LENGTH_INDEX]
        return 1 if len(self.buffer) >= fr.HEADER_SIZE + length else 0

    def take(self) -> bytes:
        return bytes(self.buffer)


class Ledger:
    """Messages confirmed so far by every process of one run (`run_fan_in`), in shared memory.

    One slot per process: each process writes only its own slot and reads the
    sum, so no lock is needed. A sum read while another process writes is at
    worst a few messages behind, which only makes a consumer try one more read
    before it sees that the run is over.
    """

    def __init__(self, slots: Any, index: int, total: int) -> None:
        self.slots = slots  # a shared array of integers, one per process (`multiprocessing.RawArray`)
        self.index = index
        self.total = total  # messages the whole run sends

    def note(self, confirmed: int) -> None:
        """Record that this process has confirmed ``confirmed`` messages in all."""
        self.slots[self.index] = confirmed

    def confirmed(self) -> int:
        """Messages confirmed by every process together."""
        return sum(self.slots)


class _Tally:
    """What every link of one process's run has done so far."""

    def __init__(self, config: BenchConfig, ledger: Ledger | None = None) -> None:
        self.total = config.messages if ledger is None else ledger.total
        self.ledger = ledger
        self.deadline = time.perf_counter() + config.time_limit
        self.requests = 0
        self.confirmed = 0  # by this process
        self.latencies: list[float] = []

    def add_confirmed(self, count: int) -> None:
        self.confirmed += count
        if self.ledger is not None:
            self.ledger.note(self.confirmed)

    def run_confirmed(self) -> int:
        """Messages confirmed by the whole run: this process's, or every process's with a ledger."""
        return self.confirmed if self.ledger is None else self.ledger.confirmed()


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
        self.left = self.config.iterations

    def start(self) -> None:
        if not self.left:
            self.finish()
            return
        self.left -= 1
        frames = self.driver.send_frames(self.config.pipeline)  # payloads of their own: built for every batch
        self.began = time.perf_counter()
        self.link.expect(frames, self.config.pipeline, self.sent)

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
        self.each = self.config.fan_in  # time the read and the confirm apart (and empty reads too)

    def start(self) -> None:
        tally = self.tally
        confirmed = tally.run_confirmed()
        if confirmed >= tally.total:
            self.finish()
            return
        self.began = time.perf_counter()
        if self.began > tally.deadline:
            self.fail(BenchFailure(f"time limit passed with {confirmed} of {tally.total} messages confirmed"))
            return
        self.link.expect(self.frames, self.config.pipeline, self.read)

    def read(self, replies: Any) -> None:
        driver = self.driver
        self.handles = handles = driver.take_messages(replies)
        tally = self.tally
        tally.requests += self.config.pipeline
        if self.each:
            now = time.perf_counter()
            tally.latencies.append(now - self.began)
            self.began = now
        if not handles:
            # The queue is empty: do not spin against the producers.
            self.retry = self.loop.call_later(0.001, self.start)
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
        tally.add_confirmed(len(self.handles))
        self.start()


async def _connect(driver: Driver) -> tuple[list[_Link], list[_Link]]:
    """Open the producers' and the consumers' connections (closed again if one fails).

    Producers and consumers are spread over the addresses each on their own, so that
    every server that gets messages also gets consumers.
    """
    config = driver.config
    addresses = list(config.addresses)
    senders: list[_Link] = []
    readers: list[_Link] = []
    try:
        for i in range(config.producers):
            senders.append(await _open(driver, addresses[i % len(addresses)]))
        for i in range(config.consumers):
            readers.append(await _open(driver, addresses[i % len(addresses)]))
    except BaseException:
        for link in senders + readers:
            link.transport.close()
        raise
    return senders, readers


async def _drive(
    driver: Driver,
    senders: list[_Link],
    readers: list[_Link],
    tally: _Tally,
    on_progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Run the workers on open links until the run's messages are confirmed; close the links."""
    config = driver.config
    links = senders + readers
    started = time.perf_counter()
    cpu_started = time.process_time()
    workers: list[_Worker] = [_Producer(driver, link, tally) for link in senders]
    workers += [_Consumer(driver, link, tally) for link in readers]

    async def report(progress: Callable[[int, int], None]) -> None:
        while True:
            progress(tally.run_confirmed(), tally.total)
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
    return BenchResult(
        driver.name,
        tally.requests,
        tally.confirmed,
        time.perf_counter() - started,
        time.process_time() - cpu_started,
        tally.latencies,
    )


async def run_load(driver: Driver, on_progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Run the load test; return its figures. Raises `BenchFailure` on any wrong or missing reply."""
    config = driver.config
    for address in config.addresses:
        await driver.prepare(address)
    senders, readers = await _connect(driver)
    tally = _Tally(config)
    result = await _drive(driver, senders, readers, tally, on_progress)
    if tally.confirmed != tally.total:
        raise BenchFailure(f"{tally.confirmed} messages confirmed, {tally.total} sent")
    if on_progress:
        on_progress(tally.total, tally.total)
    return result


async def run_round_trips(driver: Driver) -> BenchResult:
    """Unpipelined latency: one connection, send / read / confirm one at a time, each timed."""
    config = driver.config
    address = config.addresses[0]
    await driver.prepare(address)
    link = await _open(driver, address)
    read = driver.read_frames(1)
    latencies: list[float] = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    clock = time.perf_counter
    try:
        for _ in range(config.iterations):
            send = driver.send_frames(1)
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


# --- fan-in: one request in flight per connection, over several client processes ----------------


@dataclass
class FanInResult(BenchResult):
    """A fan-in run's figures: `BenchResult`'s over every client process, and each process's CPU.

    ``client_cpu_seconds`` is the sum over the processes (it may pass ``seconds``:
    the processes run on several cores); ``seconds`` runs from the start the
    processes share to the end of the last one.
    """

    process_cpu_seconds: list[float] = field(default_factory=list)


_PROCESS_SPACING = 1 << 48  # labels each client process numbers its payloads from, apart


def _share(count: int, parts: int, index: int) -> int:
    """Part ``index`` of ``count`` things dealt out over ``parts`` (the first parts get one more)."""
    return count // parts + (index < count % parts)


def run_fan_in(
    make_driver: Callable[[BenchConfig], Driver],
    config: BenchConfig,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    processes: int = 1,
    *,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> FanInResult:
    """The fan-in load: every connection with one request in flight, over ``processes`` client processes.

    ``config.producers`` connections send one message at a time, ``config.iterations``
    each; ``config.consumers`` connections read one message at a time (a read that
    finds the queue empty is tried again 1 ms later) and confirm it. Every round
    trip is timed. ``config.pipeline`` and ``config.batch`` must be 1.

    The queue is prepared here, with a driver from ``make_driver`` on a loop from
    ``new_loop``; then the connections are dealt out over ``processes`` forked
    processes (so call this outside a running event loop, on a platform that
    forks), each with its own loop from ``new_loop`` and its own driver. They
    connect, wait for one another, and start together: ``on_start`` is called
    then, and ``on_end`` when the last has finished, so that a caller can read
    a server's CPU over exactly the run.

    Returns the figures of all processes together. Raises `BenchFailure` when a
    process fails (a wrong reply, a refused connection, the time limit), or not
    every message was confirmed once; `ValueError` for a pipeline or batch other
    than 1.
    """
    if config.pipeline != 1 or config.batch != 1:
        raise ValueError("a fan-in run has one request in flight per connection: pipeline and batch must be 1")
    config = replace(config, fan_in=True)
    processes = max(1, min(processes, max(config.producers, config.consumers)))
    driver = make_driver(config)
    loop = new_loop()
    try:
        for address in config.addresses:
            loop.run_until_complete(driver.prepare(address))
    finally:
        loop.close()
    context = multiprocessing.get_context("fork")
    slots = context.RawArray("q", processes)
    barrier = context.Barrier(processes + 1)
    children: list[tuple[BaseProcess, Connection]] = []
    try:
        for index in range(processes):
            part = replace(
                config,
                producers=_share(config.producers, processes, index),
                consumers=_share(config.consumers, processes, index),
                first_label=config.first_label + index * _PROCESS_SPACING,
            )
            receive, report = context.Pipe(duplex=False)
            ledger = Ledger(slots, index, config.messages)
            child = context.Process(
                target=_fan_in_process,
                args=(make_driver, part, new_loop, ledger, barrier, report),
                name=f"fan-in client {index}",
                daemon=True,
            )
            child.start()
            report.close()
            children.append((child, receive))
        try:
            barrier.wait(timeout=120)
        except Exception:  # a process failed to connect, or never got there: its report says why
            raise BenchFailure(f"the client processes did not all connect: {_first_failure(children)}") from None
        if on_start is not None:
            on_start()
        figures = _collect(children, config.time_limit + 30.0)
        if on_end is not None:
            on_end()
    finally:
        # After a failure the others would run on to their time limit: stop them now.
        patience = 5.0 if sys.exc_info()[0] is None else 0.0
        for process, receive in children:
            process.join(timeout=patience)
            if process.is_alive():
                process.terminate()
                process.join()
            receive.close()
    latencies: list[float] = []
    for figure in figures:
        latencies += array("d", figure["latencies"])
    confirmed = sum(figure["confirmed"] for figure in figures)
    if confirmed != config.messages:
        raise BenchFailure(f"{confirmed} messages confirmed, {config.messages} sent")
    cpu = [figure["cpu"] for figure in figures]
    return FanInResult(
        driver.name,
        sum(figure["requests"] for figure in figures),
        confirmed,
        max(figure["ended"] for figure in figures) - min(figure["started"] for figure in figures),
        sum(cpu),
        latencies,
        cpu,
    )


def _collect(children: list[tuple[BaseProcess, Connection]], patience: float) -> list[dict[str, Any]]:
    """Every process's figures, as they come; the first failure raises at once (the others are then stopped)."""
    deadline = time.monotonic() + patience
    waiting = {receive: index for index, (_, receive) in enumerate(children)}
    figures: list[dict[str, Any]] = []
    while waiting:
        ready = multiprocessing.connection.wait(list(waiting), max(0.0, deadline - time.monotonic()))
        if not ready:
            raise BenchFailure(f"no end {patience:.0f} s after the start: the server stopped answering")
        for receive in cast(list[Connection], ready):  # wait() returns some of what it was given
            index = waiting.pop(receive)
            try:
                kind, value = receive.recv()
            except EOFError:
                raise BenchFailure(f"client process {index} ended without a word") from None
            if kind != "done":
                raise BenchFailure(f"client process {index}: {value}")
            figures.append(value)
    return figures


def _first_failure(children: list[tuple[BaseProcess, Connection]]) -> str:
    for index, (_, receive) in enumerate(children):
        if receive.poll(1.0):
            with contextlib.suppress(EOFError):
                kind, value = receive.recv()
                if kind != "done":
                    return f"client process {index}: {value}"
    return "no process said why"


def _fan_in_process(
    make_driver: Callable[[BenchConfig], Driver],
    config: BenchConfig,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    ledger: Ledger,
    barrier: Any,
    report: Any,
) -> None:
    """One client process of `run_fan_in`: connect, wait for the others, run, send back the figures."""
    try:
        loop = new_loop()
        try:
            figures = loop.run_until_complete(_fan_in_part(make_driver(config), ledger, barrier))
        finally:
            loop.close()
        report.send(("done", figures))
    except BaseException as exc:  # everything goes back to the parent, which decides
        barrier.abort()
        report.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        report.close()


async def _fan_in_part(driver: Driver, ledger: Ledger, barrier: Any) -> dict[str, Any]:
    senders, readers = await _connect(driver)
    try:
        barrier.wait(timeout=120)  # blocks this process's loop, which has nothing else to do yet
    except BaseException:
        for link in senders + readers:
            link.transport.close()
        raise
    started = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
    tally = _Tally(driver.config, ledger)
    result = await _drive(driver, senders, readers, tally)
    return {
        "pid": os.getpid(),
        "started": started,
        "ended": started + result.seconds,
        "requests": result.requests,
        "confirmed": result.messages,
        "cpu": result.client_cpu_seconds,
        "latencies": array("d", result.latencies).tobytes(),
    }

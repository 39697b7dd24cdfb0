"""Message types and their body layouts, shared by the server and every client.

Each request and response is a frozen, slotted dataclass with an ``OPCODE``;
`encode` turns one into a frame, `decode_request` / `decode_response` turn a
frame back. The server's hot path skips the dataclasses and calls the
``split_*`` functions and precompiled structs below directly: they are the
single definition of each body layout, used by both paths.

Queue names travel as a u8 length and that many bytes of UTF-8 (1-255).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from operator import add
from typing import Any, ClassVar, NamedTuple, Union

from ..errors import InvalidQueueName, InvalidRequest, UnknownOpcode
from .frames import HEADER, HEADER_SIZE, MAGIC, MAX_QUEUE_NAME, PROTOCOL_VERSION, FrameReader, Op, framing_failure

__all__ = [
    "Hello",
    "CreateQueue",
    "DeleteQueue",
    "Enqueue",
    "Read",
    "Confirm",
    "HelloOk",
    "QueueCreated",
    "QueueDeleted",
    "ObjectQueued",
    "Message",
    "Confirmed",
    "Requeued",
    "Full",
    "Empty",
    "Error",
    "Purge",
    "Stats",
    "ListQueues",
    "Members",
    "MembersReply",
    "EnqueueDelayed",
    "EnqueueBatch",
    "ReadBatch",
    "ConfirmBatch",
    "Touch",
    "Release",
    "Purged",
    "StatsReply",
    "ObjectsQueued",
    "Messages",
    "ConfirmResults",
    "Touched",
    "Released",
    "Cancel",
    "Cancelled",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "Request",
    "Response",
    "encode",
    "decode_request",
    "decode_response",
    "encode_name",
    "split_enqueue",
    "split_read",
    "split_name",
    "RequestReader",
    "OTHER",
    "error_frame",
    "messages_frame",
    "Run",
    "cut_run",
    "id_frames",
    "bare_frames",
    "message_frames",
    "U64",
    "ID_FRAME",
    "MESSAGE_HEAD",
]

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
U8 = struct.Struct(">B")
TIMES = struct.Struct(">II")  # timeout_ms, wait_ms (READ) or id-less pairs
_unpack_times = TIMES.unpack_from
_unpack_u64 = U64.unpack_from
_ENQUEUE, _READ, _CONFIRM, _MESSAGE = int(Op.ENQUEUE), int(Op.READ), int(Op.CONFIRM), int(Op.MESSAGE)
OTHER = -1  # RequestReader's tag for frames off the hot path
HELLO_OK_HEAD = struct.Struct(">HI")
CREATE_OPTIONS = struct.Struct(">QI")  # capacity, max_deliveries
ID_AND_MS = struct.Struct(">QI")  # TOUCH, RELEASE: id, milliseconds
READ_BATCH_HEAD = struct.Struct(">IIH")  # timeout_ms, wait_ms, max_messages
MESSAGE_FIELDS = struct.Struct(">QI")
# Whole frames the server builds in one call on its hot path.
ID_FRAME = struct.Struct(">BBHIIQ")  # header + one u64 id: ObjectQueued (and the bench's Confirm)
MESSAGE_HEAD = struct.Struct(">BBHIIQI")  # header + id + deliveries; the payload follows
_MESSAGE_HEAD_RAW_ID = struct.Struct(">BBH4sIQI")  # the same, the request id as its wire bytes


# --- body helpers --------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """Return the wire form of a queue name (u8 length + UTF-8); raise `InvalidQueueName`."""
    try:
        raw = name.encode("utf-8") if isinstance(name, str) else b""
    except UnicodeEncodeError:  # a lone surrogate
        raw = b""
    if not 1 <= len(raw) <= MAX_QUEUE_NAME:
        raise InvalidQueueName(f"queue names are 1-{MAX_QUEUE_NAME} bytes of UTF-8, got {name!r}")
    return bytes((len(raw),)) + raw


def split_name(body: bytes, pos: int = 0) -> tuple[bytes, int]:
    """Return (raw name, position after it) of a name at ``pos``; raise `InvalidRequest`."""
    try:
        size = body[pos]
    except IndexError:
        raise InvalidRequest("body too short for a queue name") from None
    stop = pos + 1 + size
    if size == 0:
        raise InvalidQueueName(f"queue names are 1-{MAX_QUEUE_NAME} bytes of UTF-8, got an empty name")
    if stop > len(body):
        raise InvalidRequest(f"a queue name of {size} bytes runs past the end of the body")
    return body[pos + 1 : stop], stop


def split_enqueue(body: bytes) -> tuple[bytes, bytes]:
    """Return (raw queue name, payload) of an ENQUEUE body: name, then the payload to the end."""
    size = body[0] if body else 0
    name = body[1 : size + 1]
    if not size or len(name) != size:
        split_name(body)  # raises the precise error
    return name, body[size + 1 :]


def split_read(body: bytes) -> tuple[bytes, int, int]:
    """Return (raw queue name, timeout_ms, wait_ms) of a READ body: two u32, then the name to the end."""
    if len(body) < 10 or body[8] != len(body) - 9:
        _bad_read(body)
    timeout_ms, wait_ms = _unpack_times(body)
    return body[9:], timeout_ms, wait_ms


def _bad_read(body: bytes) -> None:
    if len(body) < 9:
        raise InvalidRequest(f"READ body must hold timeout_ms, wait_ms and a queue name, got {len(body)} bytes")
    name, stop = split_name(body, 8)
    raise InvalidRequest(f"READ body has {len(body) - stop} bytes after the queue name")


class RequestReader(FrameReader):
    """The server's frame reader: the hot requests come out already split.

    `feed` returns ``(opcode, request_id, a, b)`` tuples:

    * ``(Op.ENQUEUE, request_id, raw queue name, payload)``
    * ``(Op.READ, request_id, raw queue name, (timeout_ms, wait_ms))``
    * ``(Op.CONFIRM, request_id, message id, None)``
    * ``(OTHER, request_id, (opcode, flags, request_id, body), None)`` for every
      other frame, and for a hot request whose body or flags are not well-formed:
      `decode_request` then gives it its precise answer.

    Splitting while cutting frames saves a body copy, a tuple and a call per
    request; the layouts are the same as `split_enqueue` / `split_read`.
    """

    __slots__ = ()

    def _scan(self, data: bytes) -> tuple[list[Any], int, int]:
        items: list[Any] = []
        append = items.append
        unpack = HEADER.unpack_from
        unpack_times = _unpack_times
        unpack_u64 = _unpack_u64
        max_body = self.max_body
        pos = 0
        end = len(data)
        while end - pos >= HEADER_SIZE:
            magic, opcode, flags, request_id, length = unpack(data, pos)
            if magic != MAGIC or length > max_body:
                self.failure = framing_failure(magic, request_id, length, max_body)
                return items, end, HEADER_SIZE
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                return items, pos, stop - pos
            pos = stop
            if not flags:
                if opcode == _ENQUEUE:
                    size = data[start] if length else 0
                    name_end = start + 1 + size
                    if size and name_end <= stop:
                        append((_ENQUEUE, request_id, data[start + 1 : name_end], data[name_end:stop]))
                        continue
                elif opcode == _READ:
                    if length >= 10 and data[start + 8] == length - 9:
                        append((_READ, request_id, data[start + 9 : stop], unpack_times(data, start)))
                        continue
                elif opcode == _CONFIRM and length == 8:
                    append((_CONFIRM, request_id, unpack_u64(data, start)[0], None))
                    continue
            append((OTHER, request_id, (opcode, flags, request_id, data[start:stop]), None))
        return items, pos, HEADER_SIZE


class Run(NamedTuple):
    """Pipelined requests alike, cut by `cut_run`: ``request_ids`` in order, each as its 4 wire
    bytes (replies copy them), and, by ``opcode``, ENQUEUE: ``key`` the raw queue name,
    ``values`` the payloads; READ: ``key`` the body they all share; CONFIRM: ``values`` the
    message ids."""

    opcode: int
    request_ids: tuple[bytes, ...]
    key: bytes
    values: tuple[Any, ...]


MAX_RUN = 256  # frames per run layout; longer buffers go frame by frame
_run_layouts: dict[tuple[str, int], struct.Struct] = {}


def _layout(fields: str, count: int) -> struct.Struct:
    """A precompiled struct for ``count`` repetitions of ``fields`` (cached, and the cache bounded)."""
    layout = _run_layouts.get((fields, count))
    if layout is None:
        if len(_run_layouts) >= 512:
            _run_layouts.clear()
        layout = _run_layouts[fields, count] = struct.Struct(">" + fields * count)
    return layout


def cut_run(data: bytes) -> Run | None:
    """Cut ``data`` in one struct call if it is two or more whole frames of one size, all ENQUEUEs
    to one queue, all READs with one body, or all CONFIRMs, with no flags: what a client that
    pipelines sends. None for anything else (which `RequestReader` then cuts frame by frame).
    Frames are only cut here; whether their fields make sense is for the caller to check."""
    if len(data) < 2 * HEADER_SIZE or data[0] != MAGIC:
        return None
    opcode = data[1]
    length = int.from_bytes(data[8:12], "big")
    count, rest = divmod(len(data), HEADER_SIZE + length)
    if rest or not 2 <= count <= MAX_RUN:
        return None
    if opcode == _ENQUEUE and length:
        name_size = data[HEADER_SIZE]
        if not 0 < name_size < length:
            return None
        fields, width = f"BBH4sIB{name_size}s{length - 1 - name_size}s", 8
    elif opcode == _READ:
        fields, width = f"BBH4sI{length}s", 6
    elif opcode == _CONFIRM and length == 8:
        fields, width = "BBH4sIQ", 6
    else:
        return None
    values = _layout(fields, count).unpack(data)
    if not (
        values[0::width].count(MAGIC) == values[1::width].count(opcode) == values[2::width].count(0)
        == values[4::width].count(length) == count
    ):  # fmt: skip
        return None
    request_ids = values[3::width]
    if opcode == _CONFIRM:
        return Run(opcode, request_ids, b"", values[5::6])
    key = values[-2] if opcode == _ENQUEUE else values[-1]  # the last frame's name, or body
    keys = values[6::8] if opcode == _ENQUEUE else values[5::6]
    if keys.count(key) != count or (opcode == _ENQUEUE and values[5::8].count(name_size) != count):
        return None
    return Run(opcode, request_ids, key, values[7::8] if opcode == _ENQUEUE else ())


# A header's first four bytes (magic, opcode, no flags) by opcode: packed as one field, a header's
# constant parts cost a copy rather than an integer conversion each.
_FRAME_STARTS = {int(opcode): HEADER.pack(MAGIC, opcode, 0, 0, 0)[:4] for opcode in Op}


_LENGTH_8 = U32.pack(8)


def id_frames(opcode: int, request_ids: tuple[bytes, ...], ids: list[int]) -> bytes:
    """One frame with a u64 id for each request (ObjectQueued), packed in one call. (The fields are
    laid out by slice assignment: zipping them made a tuple a frame and took half as long again.)"""
    count = len(request_ids)
    fields: list[Any] = [_FRAME_STARTS[opcode]] * (4 * count)
    fields[1::4] = request_ids
    fields[2::4] = [_LENGTH_8] * count
    fields[3::4] = ids
    return _layout("4s4s4sQ", count).pack(*fields)


def bare_frames(opcode: int, request_ids: tuple[bytes, ...]) -> bytes:
    """One frame with no body for each request (Confirmed, Empty): the request ids joined by
    the bytes that stand between them (the rest of a header, the start of the next)."""
    if not request_ids:
        return b""
    start, end = _FRAME_STARTS[opcode], bytes(4)  # magic, opcode, flags | length 0
    return start + (end + start).join(request_ids) + end


def message_frames(
    request_ids: tuple[bytes, ...], ids: list[int], deliveries: list[int], payloads: list[bytes]
) -> bytes:
    """One Message frame for each of the first ``len(ids)`` requests, built without a Python loop
    (payloads of one size, the usual case: in one struct call)."""
    count = len(ids)
    size = len(payloads[0]) if count else 0
    if 0 < count <= MAX_RUN and list(map(len, payloads)).count(size) == count:
        fields: list[Any] = [_FRAME_STARTS[_MESSAGE]] * (6 * count)  # laid out as in `id_frames`
        fields[1::6] = request_ids[:count]
        fields[2::6] = [U32.pack(12 + size)] * count
        fields[3::6] = ids
        fields[4::6] = deliveries
        fields[5::6] = payloads
        return _layout(f"4s4s4sQI{size}s", count).pack(*fields)
    sizes = map(add, map(len, payloads), repeat(12))  # each body: id, deliveries, payload
    heads = map(
        _MESSAGE_HEAD_RAW_ID.pack, repeat(MAGIC), repeat(_MESSAGE), repeat(0), request_ids, sizes, ids, deliveries
    )
    return b"".join(chain.from_iterable(zip(heads, payloads)))


def _decode_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQueueName("queue name is not valid UTF-8") from None


def _expect_empty(body: bytes, what: str) -> None:
    if body:
        raise InvalidRequest(f"{what} takes no body, got {len(body)} bytes")


def _fixed(layout: struct.Struct, body: bytes, what: str) -> tuple:
    if len(body) != layout.size:
        raise InvalidRequest(f"{what} body must be {layout.size} bytes, got {len(body)}")
    return layout.unpack(body)


# --- requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a session: the client's protocol version, and the server's token if it wants one."""

    OPCODE: ClassVar[int] = Op.HELLO
    version: int = PROTOCOL_VERSION
    token: bytes = b""

    def body(self) -> bytes:
        return U16.pack(self.version) + self.token

    @classmethod
    def from_body(cls, body: bytes) -> Hello:
        if len(body) < 2:
            raise InvalidRequest(f"HELLO body must be at least 2 bytes, got {len(body)}")
        return cls(U16.unpack_from(body)[0], body[2:])

    def __repr__(self) -> str:  # never print a token
        return f"Hello(version={self.version}, token={'<set>' if self.token else '<none>'})"


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """Create a queue (idempotent: an existing queue keeps its options).

    ``capacity`` 0 means the server's default; ``max_deliveries`` 0 means no
    limit; ``dead_letter_queue`` "" means none.
    """

    OPCODE: ClassVar[int] = Op.CREATE_QUEUE
    name: str
    capacity: int = 0
    max_deliveries: int = 0
    dead_letter_queue: str = ""

    def body(self) -> bytes:
        dead_letter = encode_name(self.dead_letter_queue) if self.dead_letter_queue else b"\x00"
        return encode_name(self.name) + CREATE_OPTIONS.pack(self.capacity, self.max_deliveries) + dead_letter

    @classmethod
    def from_body(cls, body: bytes) -> CreateQueue:
        raw, stop = split_name(body)
        options_end = stop + CREATE_OPTIONS.size
        if len(body) < options_end + 1:
            raise InvalidRequest("CREATE_QUEUE body too short for its options")
        capacity, max_deliveries = CREATE_OPTIONS.unpack_from(body, stop)
        dead_letter = ""
        if body[options_end]:
            raw_dead_letter, options_end = split_name(body, options_end)
            dead_letter = _decode_name(raw_dead_letter)
        else:
            options_end += 1
        if options_end != len(body):
            raise InvalidRequest("CREATE_QUEUE body has trailing bytes")
        return cls(_decode_name(raw), capacity, max_deliveries, dead_letter)


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    """Delete a queue with every message it holds."""

    OPCODE: ClassVar[int] = Op.DELETE_QUEUE
    name: str

    def body(self) -> bytes:
        return encode_name(self.name)

    @classmethod
    def from_body(cls, body: bytes) -> DeleteQueue:
        raw, stop = split_name(body)
        if stop != len(body):
            raise InvalidRequest("DELETE_QUEUE body has trailing bytes")
        return cls(_decode_name(raw))


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Append ``data`` to a queue."""

    OPCODE: ClassVar[int] = Op.ENQUEUE
    queue: str
    data: bytes

    def body(self) -> bytes:
        return encode_name(self.queue) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Enqueue:
        raw, data = split_enqueue(body)
        return cls(_decode_name(raw), data)


@dataclass(frozen=True, slots=True)
class Read:
    """Take the next message of a queue; confirm it within ``timeout_ms`` (0: no timeout).

    With ``wait_ms`` the server waits that long for a message before answering Empty.
    """

    OPCODE: ClassVar[int] = Op.READ
    queue: str
    timeout_ms: int = 0
    wait_ms: int = 0

    def body(self) -> bytes:
        return TIMES.pack(self.timeout_ms, self.wait_ms) + encode_name(self.queue)

    @classmethod
    def from_body(cls, body: bytes) -> Read:
        raw, timeout_ms, wait_ms = split_read(body)
        return cls(_decode_name(raw), timeout_ms, wait_ms)


@dataclass(frozen=True, slots=True)
class Confirm:
    """Acknowledge an in-flight message: the server forgets it."""

    OPCODE: ClassVar[int] = Op.CONFIRM
    id: int

    def body(self) -> bytes:
        return U64.pack(self.id)

    @classmethod
    def from_body(cls, body: bytes) -> Confirm:
        return cls(*_fixed(U64, body, "CONFIRM"))


@dataclass(frozen=True, slots=True)
class _NameOnly:
    """A request whose body is a queue name and nothing else."""

    name: str

    def body(self) -> bytes:
        return encode_name(self.name)

    @classmethod
    def from_body(cls, body: bytes) -> Any:
        raw, stop = split_name(body)
        if stop != len(body):
            raise InvalidRequest(f"{cls.__name__} body has trailing bytes")
        return cls(_decode_name(raw))


@dataclass(frozen=True, slots=True)
class Purge(_NameOnly):
    """Drop every ready and delayed message of a queue (in-flight ones stay)."""

    OPCODE: ClassVar[int] = Op.PURGE


@dataclass(frozen=True, slots=True)
class Stats(_NameOnly):
    """Ask for one queue's figures."""

    OPCODE: ClassVar[int] = Op.STATS


@dataclass(frozen=True, slots=True)
class ListQueues:
    """Ask for every queue's figures."""

    OPCODE: ClassVar[int] = Op.LIST_QUEUES

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_body(cls, body: bytes) -> ListQueues:
        _expect_empty(body, "LIST_QUEUES")
        return cls()


@dataclass(frozen=True, slots=True)
class Members:
    """Ask which servers form this server's group."""

    OPCODE: ClassVar[int] = Op.MEMBERS

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_body(cls, body: bytes) -> Members:
        _expect_empty(body, "MEMBERS")
        return cls()


@dataclass(frozen=True, slots=True)
class EnqueueDelayed:
    """Append ``data`` to a queue, readable only after ``delay_ms``."""

    OPCODE: ClassVar[int] = Op.ENQUEUE_DELAYED
    queue: str
    data: bytes
    delay_ms: int

    def body(self) -> bytes:
        return encode_name(self.queue) + U32.pack(self.delay_ms) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> EnqueueDelayed:
        raw, stop = split_name(body)
        if len(body) < stop + 4:
            raise InvalidRequest("ENQUEUE_DELAYED body too short for delay_ms")
        return cls(_decode_name(raw), body[stop + 4 :], U32.unpack_from(body, stop)[0])


@dataclass(frozen=True, slots=True)
class EnqueueBatch:
    """Append several messages to a queue at once (all or none)."""

    OPCODE: ClassVar[int] = Op.ENQUEUE_BATCH
    queue: str
    items: tuple[bytes, ...]

    def body(self) -> bytes:
        return encode_name(self.queue) + _pack_lengths(self.items) + b"".join(self.items)

    @classmethod
    def from_body(cls, body: bytes) -> EnqueueBatch:
        raw, pos = split_name(body)
        items = _cut_payloads(body, pos, 0, "ENQUEUE_BATCH")
        if not items:
            raise InvalidRequest("ENQUEUE_BATCH holds no message")
        return cls(_decode_name(raw), items)


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """Take up to ``max_messages`` messages of a queue (see `Read`)."""

    OPCODE: ClassVar[int] = Op.READ_BATCH
    queue: str
    max_messages: int
    timeout_ms: int = 0
    wait_ms: int = 0

    def body(self) -> bytes:
        return READ_BATCH_HEAD.pack(self.timeout_ms, self.wait_ms, self.max_messages) + encode_name(self.queue)

    @classmethod
    def from_body(cls, body: bytes) -> ReadBatch:
        if len(body) < READ_BATCH_HEAD.size:
            raise InvalidRequest("READ_BATCH body too short")
        timeout_ms, wait_ms, max_messages = READ_BATCH_HEAD.unpack_from(body)
        raw, stop = split_name(body, READ_BATCH_HEAD.size)
        if stop != len(body):
            raise InvalidRequest("READ_BATCH body has trailing bytes")
        if not max_messages:
            raise InvalidRequest("READ_BATCH max_messages must be at least 1")
        return cls(_decode_name(raw), max_messages, timeout_ms, wait_ms)


@dataclass(frozen=True, slots=True)
class ConfirmBatch:
    """Confirm several messages at once."""

    OPCODE: ClassVar[int] = Op.CONFIRM_BATCH
    ids: tuple[int, ...]

    def body(self) -> bytes:
        return struct.pack(f">{len(self.ids)}Q", *self.ids)

    @classmethod
    def from_body(cls, body: bytes) -> ConfirmBatch:
        if not body or len(body) % 8:
            raise InvalidRequest(f"CONFIRM_BATCH body must be a nonzero multiple of 8 bytes, got {len(body)}")
        return cls(struct.unpack(f">{len(body) // 8}Q", body))


@dataclass(frozen=True, slots=True)
class Touch:
    """Give an in-flight message ``timeout_ms`` more, counted from now (0: no timeout)."""

    OPCODE: ClassVar[int] = Op.TOUCH
    id: int
    timeout_ms: int

    def body(self) -> bytes:
        return ID_AND_MS.pack(self.id, self.timeout_ms)

    @classmethod
    def from_body(cls, body: bytes) -> Touch:
        return cls(*_fixed(ID_AND_MS, body, "TOUCH"))


@dataclass(frozen=True, slots=True)
class Release:
    """Give an in-flight message back now, or after ``delay_ms``, without waiting for its timeout."""

    OPCODE: ClassVar[int] = Op.RELEASE
    id: int
    delay_ms: int = 0

    def body(self) -> bytes:
        return ID_AND_MS.pack(self.id, self.delay_ms)

    @classmethod
    def from_body(cls, body: bytes) -> Release:
        return cls(*_fixed(ID_AND_MS, body, "RELEASE"))


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a waiting read of this connection (named by its request id): it is answered as empty now."""

    OPCODE: ClassVar[int] = Op.CANCEL
    request_id: int

    def body(self) -> bytes:
        return U32.pack(self.request_id)

    @classmethod
    def from_body(cls, body: bytes) -> Cancel:
        return cls(*_fixed(U32, body, "CANCEL"))


# --- responses -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloOk:
    """The server's answer to Hello: the version it will speak and its limits."""

    OPCODE: ClassVar[int] = Op.HELLO_OK
    version: int
    max_message_size: int
    server: str = ""

    def body(self) -> bytes:
        return HELLO_OK_HEAD.pack(self.version, self.max_message_size) + self.server.encode()

    @classmethod
    def from_body(cls, body: bytes) -> HelloOk:
        if len(body) < HELLO_OK_HEAD.size:
            raise InvalidRequest("HELLO_OK body too short")
        version, max_size = HELLO_OK_HEAD.unpack_from(body)
        return cls(version, max_size, body[HELLO_OK_HEAD.size :].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class ObjectQueued:
    """The message was accepted; ``id`` names it from now on."""

    OPCODE: ClassVar[int] = Op.OBJECT_QUEUED
    id: int

    def body(self) -> bytes:
        return U64.pack(self.id)

    @classmethod
    def from_body(cls, body: bytes) -> ObjectQueued:
        return cls(*_fixed(U64, body, "OBJECT_QUEUED"))


@dataclass(frozen=True, slots=True)
class Message:
    """A message handed out by a read: confirm ``id`` before the read's timeout.

    ``deliveries`` counts how many times it has been handed out, this time included.
    """

    OPCODE: ClassVar[int] = Op.MESSAGE
    id: int
    data: bytes
    deliveries: int = 1

    def body(self) -> bytes:
        return MESSAGE_FIELDS.pack(self.id, self.deliveries) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Message:
        if len(body) < MESSAGE_FIELDS.size:
            raise InvalidRequest("MESSAGE body too short")
        id_, deliveries = MESSAGE_FIELDS.unpack_from(body)
        return cls(id_, body[MESSAGE_FIELDS.size :], deliveries)


@dataclass(frozen=True, slots=True)
class Error:
    """A refused request: an `ErrorCode` and a readable reason."""

    OPCODE: ClassVar[int] = Op.ERROR
    code: int
    message: str

    def body(self) -> bytes:
        return U16.pack(self.code) + self.message.encode("utf-8")

    @classmethod
    def from_body(cls, body: bytes) -> Error:
        if len(body) < 2:
            raise InvalidRequest("ERROR body too short")
        return cls(U16.unpack_from(body)[0], body[2:].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Purged:
    """How many messages a purge dropped."""

    OPCODE: ClassVar[int] = Op.PURGED
    count: int

    def body(self) -> bytes:
        return U64.pack(self.count)

    @classmethod
    def from_body(cls, body: bytes) -> Purged:
        return cls(*_fixed(U64, body, "PURGED"))


@dataclass(frozen=True, slots=True)
class StatsReply:
    """Figures as a JSON object: one queue's for Stats, ``{"queues": [...]}`` for ListQueues."""

    OPCODE: ClassVar[int] = Op.STATS_REPLY
    stats: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.stats, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> StatsReply:
        try:
            stats = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidRequest("STATS_REPLY body is not JSON") from None
        if not isinstance(stats, dict):
            raise InvalidRequest("STATS_REPLY body is not a JSON object")
        return cls(stats)


@dataclass(frozen=True, slots=True)
class MembersReply:
    """The group, as JSON: ``{"members": ["host:port", ...], "index": i}``, where ``index`` is the
    answering server's place in the list and the top byte of every id it hands out."""

    OPCODE: ClassVar[int] = Op.MEMBERS_REPLY
    members: tuple[str, ...]
    index: int

    def body(self) -> bytes:
        return json.dumps({"members": list(self.members), "index": self.index}, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> MembersReply:
        try:
            group = json.loads(body)
            members = tuple(group["members"])
            index = group["index"]
        except (ValueError, RecursionError, KeyError, TypeError):
            raise InvalidRequest("MEMBERS_REPLY body is not the expected JSON object") from None
        if type(index) is not int or not all(isinstance(member, str) for member in members):
            raise InvalidRequest("MEMBERS_REPLY needs a list of 'host:port' strings and an integer index")
        return cls(members, index)


@dataclass(frozen=True, slots=True)
class ObjectsQueued:
    """The ids of a batch's messages, in order."""

    OPCODE: ClassVar[int] = Op.OBJECTS_QUEUED
    ids: tuple[int, ...]

    def body(self) -> bytes:
        return struct.pack(f">{len(self.ids)}Q", *self.ids)

    @classmethod
    def from_body(cls, body: bytes) -> ObjectsQueued:
        if len(body) % 8:
            raise InvalidRequest("OBJECTS_QUEUED body is not a multiple of 8 bytes")
        return cls(struct.unpack(f">{len(body) // 8}Q", body))


@dataclass(frozen=True, slots=True)
class Messages:
    """The messages of a batch read (none when the queue was empty)."""

    OPCODE: ClassVar[int] = Op.MESSAGES
    messages: tuple[Message, ...]

    def body(self) -> bytes:
        messages = self.messages
        return _messages_body([m.id for m in messages], [m.deliveries for m in messages], [m.data for m in messages])

    @classmethod
    def from_body(cls, body: bytes) -> Messages:
        payloads = _cut_payloads(body, 0, 12, "MESSAGES")  # 12: each message's id and deliveries
        count = len(payloads)
        ids = struct.unpack_from(f">{count}Q", body, 4)
        deliveries = struct.unpack_from(f">{count}I", body, 4 + 8 * count)
        return cls(tuple(map(Message, ids, payloads, deliveries)))


@dataclass(frozen=True, slots=True)
class ConfirmResults:
    """One outcome byte per confirmed id: 0 confirmed, 1 requeued, 2 no such message."""

    OPCODE: ClassVar[int] = Op.CONFIRM_RESULTS
    outcomes: tuple[int, ...]

    def body(self) -> bytes:
        return bytes(self.outcomes)

    @classmethod
    def from_body(cls, body: bytes) -> ConfirmResults:
        if any(outcome > 2 for outcome in body):
            raise InvalidRequest("CONFIRM_RESULTS holds an unknown outcome")
        return cls(tuple(body))


class _Bare:
    """A response with no body; its one instance is the class's ``INSTANCE``."""

    __slots__ = ()
    OPCODE: ClassVar[int]

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_body(cls, body: bytes) -> _Bare:
        _expect_empty(body, cls.__name__)
        return cls.INSTANCE  # type: ignore[attr-defined, no-any-return]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return self.OPCODE

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class QueueCreated(_Bare):
    """The queue exists (it may have existed before)."""

    OPCODE = Op.QUEUE_CREATED


class QueueDeleted(_Bare):
    """The queue and its messages are gone."""

    OPCODE = Op.QUEUE_DELETED


class Confirmed(_Bare):
    """The message was confirmed in time and is gone for good."""

    OPCODE = Op.CONFIRMED


class Requeued(_Bare):
    """The confirm came too late: the message went back to its queue."""

    OPCODE = Op.REQUEUED


class Full(_Bare):
    """The queue is at capacity; the message was not accepted."""

    OPCODE = Op.FULL


class Empty(_Bare):
    """The queue has no message ready."""

    OPCODE = Op.EMPTY


class Touched(_Bare):
    """The in-flight message's deadline moved."""

    OPCODE = Op.TOUCHED


class Released(_Bare):
    """The in-flight message went back to its queue."""

    OPCODE = Op.RELEASED


class Cancelled(_Bare):
    """The cancel was handled: the read it named (if it still waited) has been answered."""

    OPCODE = Op.CANCELLED


for _bare in (QueueCreated, QueueDeleted, Confirmed, Requeued, Full, Empty, Touched, Released, Cancelled):
    _bare.INSTANCE = _bare()  # type: ignore[attr-defined]

REQUEST_TYPES = (
    Hello, CreateQueue, DeleteQueue, Purge, Stats, ListQueues, Members,
    Enqueue, Read, Confirm, EnqueueBatch, ReadBatch, ConfirmBatch, Touch, Release, EnqueueDelayed, Cancel,
)  # fmt: skip
RESPONSE_TYPES = (
    HelloOk, QueueCreated, QueueDeleted, Purged, StatsReply, MembersReply,
    ObjectQueued, Message, Confirmed, Requeued, Full, Empty,
    ObjectsQueued, Messages, ConfirmResults, Touched, Released, Cancelled, Error,
)  # fmt: skip
Request = Union[REQUEST_TYPES]  # type: ignore[valid-type]
Response = Union[RESPONSE_TYPES]  # type: ignore[valid-type]

_REQUESTS = {cls.OPCODE: cls for cls in REQUEST_TYPES}
_RESPONSES = {cls.OPCODE: cls for cls in RESPONSE_TYPES}


def encode(request_id: int, message: Request | Response, flags: int = 0) -> bytes:
    """Return the whole frame for ``message``.

    Raises `InvalidQueueName` for a bad name, `ValueError` for a number that
    does not fit its field (a negative id, a capacity over 2**64-1...).
    """
    try:
        body = message.body()
    except struct.error as exc:
        raise ValueError(f"{type(message).__name__}: a field is out of range for the wire ({exc})") from None
    return HEADER.pack(MAGIC, message.OPCODE, flags, request_id, len(body)) + body


def decode_request(opcode: int, body: bytes) -> Request:
    """Return the request a frame carries; raise `InvalidRequest` (or a subclass) if it does not parse."""
    cls = _REQUESTS.get(opcode)
    if cls is None:
        raise UnknownOpcode(f"unknown request opcode 0x{opcode:02x}")
    return cls.from_body(body)  # type: ignore[no-any-return]


def decode_response(opcode: int, body: bytes) -> Response:
    """Return the response a frame carries; raise `InvalidRequest` if it does not parse."""
    cls = _RESPONSES.get(opcode)
    if cls is None:
        raise InvalidRequest(f"unknown response opcode 0x{opcode:02x}")
    return cls.from_body(body)  # type: ignore[no-any-return]


def messages_frame(request_id: int, ids: list[int], deliveries: list[int], payloads: list[bytes]) -> bytes:
    """A MESSAGES frame straight from its columns: the server's batch reads build no `Message`."""
    body = _messages_body(ids, deliveries, payloads)
    return HEADER.pack(MAGIC, Op.MESSAGES, 0, request_id, len(body)) + body


def _messages_body(ids: list[int], deliveries: list[int], payloads: list[bytes]) -> bytes:
    count = len(payloads)
    columns = struct.pack(f">I{count}Q{count}I{count}I", count, *ids, *deliveries, *map(len, payloads))
    return columns + b"".join(payloads)


def messages_frame_of_columns(
    request_id: int, count: int, ids: list[bytes], deliveries: list[bytes], lengths: list[bytes], payloads: list[bytes]
) -> bytes:
    """A MESSAGES frame from its columns already packed, each given as pieces: u64 ids, u32
    delivery counts, u32 lengths, payloads back to back (the server's slabs keep them so)."""
    parts = [b"", U32.pack(count), *ids, *deliveries, *lengths, *payloads]
    size = sum(map(len, parts))
    parts[0] = HEADER.pack(MAGIC, Op.MESSAGES, 0, request_id, size)
    return b"".join(parts)


def objects_queued_frame(request_id: int, ids: bytes) -> bytes:
    """An OBJECTS_QUEUED frame for ids already packed as a u64 column."""
    return HEADER.pack(MAGIC, Op.OBJECTS_QUEUED, 0, request_id, len(ids)) + ids


def split_enqueue_batch(body: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """An ENQUEUE_BATCH body left in its columns, payloads not cut apart: (raw queue name, u32
    length column, payloads back to back, the longest payload's size). None for a body that
    `EnqueueBatch.from_body` would refuse: it says why."""
    size = body[0] if body else 0
    start = 1 + size  # the message count
    if not size or len(body) < start + 4:
        return None
    (count,) = U32.unpack_from(body, start)
    payloads_start = start + 4 + 4 * count
    if not count or payloads_start > len(body):
        return None
    lengths = struct.unpack_from(f">{count}I", body, start + 4)
    if sum(lengths) != len(body) - payloads_start:
        return None
    return body[1:start], body[start + 4 : payloads_start], body[payloads_start:], max(lengths)


def _pack_lengths(payloads: tuple[bytes, ...] | list[bytes]) -> bytes:
    """A batch's count and length column (the payloads follow them, back to back)."""
    return struct.pack(f">I{len(payloads)}I", len(payloads), *map(len, payloads))


def _cut_payloads(body: bytes, start: int, fixed: int, what: str) -> tuple[bytes, ...]:
    """The payloads of a batch body laid out in columns from ``start``: a u32 count, ``fixed``
    bytes of other columns per message, a u32 length per message, then the payloads back to
    back up to the end of the body. One C-level pass cuts them: no Python loop per message."""
    if len(body) < start + 4:
        raise InvalidRequest(f"{what} body has no message count")
    (count,) = U32.unpack_from(body, start)
    payloads_start = start + 4 + (fixed + 4) * count
    if payloads_start > len(body):
        raise InvalidRequest(f"{what} body too short for the columns of {count} messages")
    lengths = struct.unpack_from(f">{count}I", body, payloads_start - 4 * count)
    if sum(lengths) != len(body) - payloads_start:
        raise InvalidRequest(
            f"{what} payload lengths add up to {sum(lengths)} bytes, the body carries {len(body) - payloads_start}"
        )
    if 0 < count <= MAX_RUN and lengths.count(lengths[0]) == count:  # all of one size: one struct call
        return _layout(f"{lengths[0]}s", count).unpack_from(body, payloads_start)  # type: ignore[no-any-return]
    ends = list(accumulate(lengths, initial=payloads_start))
    return tuple([body[begin:end] for begin, end in zip(ends, ends[1:])])


def error_frame(request_id: int, code: int, message: str) -> bytes:
    """Return an ERROR frame (the server's one way to refuse a request)."""
    return encode(request_id, Error(code, message))

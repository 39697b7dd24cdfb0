"""The message catalogue: every request and response as a frozen, slotted dataclass.

Each type has an ``OPCODE``, ``body()`` (its wire body) and ``from_body`` (the
reverse, raising `InvalidRequest` or a subclass for a body that does not parse);
`encode` turns one into a whole frame, `decode_request` / `decode_response` turn
a frame's body back. The clients speak only these types. The byte layouts they
read and write are defined once, in `layouts`; the server's hot paths use those
layouts directly through `codecs`, without building a dataclass per request.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ..errors import InvalidRequest, UnknownOpcode
from .envelope import MessageAttributeValue
from .envelope import message_attributes as _attributes_of
from .envelope import message_body as _body_of
from .frames import HEADER, MAGIC, PROTOCOL_VERSION, Flag, Op
from .layouts import (
    BATCH_COUNT,
    CONFIRM_ID,
    CREATE_OPTIONS,
    DEAD_LETTER_ID,
    DELAY,
    ERROR_HEAD,
    HELLO_HEAD,
    HELLO_OK_HEAD,
    ID_AND_MS,
    MESSAGE_FIELDS,
    MOVE_HEAD,
    NO_NAME,
    PEEK_DELAYED,
    PEEK_HEAD,
    PEEK_IN_FLIGHT,
    PEEKED_ENTRY,
    READ_BATCH_HEAD,
    READ_TIMES,
    U32,
    U64,
    cut_payloads,
    decode_name,
    encode_name,
    expect_empty,
    pack_lengths,
    pack_messages,
    pack_origin,
    pack_origins,
    split_create_queue,
    split_enqueue,
    split_enqueue_delayed,
    split_message,
    split_message_with_origin,
    split_messages,
    split_messages_with_origins,
    split_move,
    split_name,
    split_origin,
    split_read,
    unpack_exact,
)

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
    "Origin",
    "PeekedMessage",
    "Peek",
    "Peeked",
    "Move",
    "Moved",
    "DeadLetter",
    "DeadLettered",
    "PEEK_STATES",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "Request",
    "Response",
    "encode",
    "decode_request",
    "decode_response",
]


# --- requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a session: the client's protocol version, and the server's token if it wants one."""

    OPCODE: ClassVar[int] = Op.HELLO
    version: int = PROTOCOL_VERSION
    token: bytes = b""

    def body(self) -> bytes:
        return HELLO_HEAD.pack(self.version) + self.token

    @classmethod
    def from_body(cls, body: bytes) -> Hello:
        if len(body) < HELLO_HEAD.size:
            raise InvalidRequest(f"HELLO body must be at least {HELLO_HEAD.size} bytes, got {len(body)}")
        return cls(HELLO_HEAD.unpack_from(body)[0], body[HELLO_HEAD.size :])

    def __repr__(self) -> str:  # never print a token
        return f"Hello(version={self.version}, token={'<set>' if self.token else '<none>'})"


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """Create a queue (idempotent: an existing queue keeps its options).

    ``capacity`` 0 means the server's default; ``max_deliveries`` 0 means no
    limit; ``dead_letter_queue`` "" means none; ``visibility_timeout_ms`` is the
    queue's default visibility timeout, which a read or touch that names none
    (0) gets: 0 means the server's default, `NEVER_MS` never times out.
    """

    OPCODE: ClassVar[int] = Op.CREATE_QUEUE
    name: str
    capacity: int = 0
    max_deliveries: int = 0
    dead_letter_queue: str = ""
    visibility_timeout_ms: int = 0

    def body(self) -> bytes:
        dead_letter = encode_name(self.dead_letter_queue) if self.dead_letter_queue else NO_NAME
        options = CREATE_OPTIONS.pack(self.capacity, self.max_deliveries, self.visibility_timeout_ms)
        return encode_name(self.name) + options + dead_letter

    @classmethod
    def from_body(cls, body: bytes) -> CreateQueue:
        raw, capacity, max_deliveries, visibility_ms, dead_letter = split_create_queue(body)
        return cls(
            decode_name(raw), capacity, max_deliveries, decode_name(dead_letter) if dead_letter else "", visibility_ms
        )


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
        return cls(decode_name(raw))


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
        return cls(decode_name(raw), data)


@dataclass(frozen=True, slots=True)
class Read:
    """Take the next message of a queue; confirm it within ``timeout_ms`` (0: the queue's default
    visibility timeout; `NEVER_MS`: no timeout).

    With ``wait_ms`` the server waits that long for a message before answering Empty.
    """

    OPCODE: ClassVar[int] = Op.READ
    queue: str
    timeout_ms: int = 0
    wait_ms: int = 0

    def body(self) -> bytes:
        return READ_TIMES.pack(self.timeout_ms, self.wait_ms) + encode_name(self.queue)

    @classmethod
    def from_body(cls, body: bytes) -> Read:
        raw, timeout_ms, wait_ms = split_read(body)
        return cls(decode_name(raw), timeout_ms, wait_ms)


@dataclass(frozen=True, slots=True)
class Confirm:
    """Acknowledge an in-flight message: the server forgets it."""

    OPCODE: ClassVar[int] = Op.CONFIRM
    id: int

    def body(self) -> bytes:
        return U64.pack(self.id)

    @classmethod
    def from_body(cls, body: bytes) -> Confirm:
        return cls(*unpack_exact(CONFIRM_ID, body, "CONFIRM"))


@dataclass(frozen=True, slots=True)
class _NameOnly:
    """A request whose body is a queue name and nothing else."""

    name: str

    def body(self) -> bytes:
        return encode_name(self.name)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        raw, stop = split_name(body)
        if stop != len(body):
            raise InvalidRequest(f"{cls.__name__} body has trailing bytes")
        return cls(decode_name(raw))


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
        expect_empty(body, "LIST_QUEUES")
        return cls()


@dataclass(frozen=True, slots=True)
class Members:
    """Ask which servers form this server's group."""

    OPCODE: ClassVar[int] = Op.MEMBERS

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_body(cls, body: bytes) -> Members:
        expect_empty(body, "MEMBERS")
        return cls()


@dataclass(frozen=True, slots=True)
class EnqueueDelayed:
    """Append ``data`` to a queue, readable only after ``delay_ms``."""

    OPCODE: ClassVar[int] = Op.ENQUEUE_DELAYED
    queue: str
    data: bytes
    delay_ms: int

    def body(self) -> bytes:
        return encode_name(self.queue) + DELAY.pack(self.delay_ms) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> EnqueueDelayed:
        raw, delay_ms, data = split_enqueue_delayed(body)
        return cls(decode_name(raw), data, delay_ms)


@dataclass(frozen=True, slots=True)
class EnqueueBatch:
    """Append several messages to a queue at once (all or none)."""

    OPCODE: ClassVar[int] = Op.ENQUEUE_BATCH
    queue: str
    items: tuple[bytes, ...]

    def body(self) -> bytes:
        return encode_name(self.queue) + pack_lengths(self.items) + b"".join(self.items)

    @classmethod
    def from_body(cls, body: bytes) -> EnqueueBatch:
        raw, pos = split_name(body)
        items = cut_payloads(body, pos, 0, "ENQUEUE_BATCH")
        if not items:
            raise InvalidRequest("ENQUEUE_BATCH holds no message")
        return cls(decode_name(raw), items)


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
        return cls(decode_name(raw), max_messages, timeout_ms, wait_ms)


@dataclass(frozen=True, slots=True)
class ConfirmBatch:
    """Confirm several messages at once."""

    OPCODE: ClassVar[int] = Op.CONFIRM_BATCH
    ids: tuple[int, ...]

    def body(self) -> bytes:
        return struct.pack(f">{len(self.ids)}Q", *self.ids)

    @classmethod
    def from_body(cls, body: bytes) -> ConfirmBatch:
        if not body or len(body) % U64.size:
            raise InvalidRequest(f"CONFIRM_BATCH body must be a nonzero multiple of {U64.size} bytes, got {len(body)}")
        return cls(struct.unpack(f">{len(body) // U64.size}Q", body))


@dataclass(frozen=True, slots=True)
class Touch:
    """Give an in-flight message ``timeout_ms`` more, counted from now (0: the queue's default
    visibility timeout; `NEVER_MS`: no timeout any more)."""

    OPCODE: ClassVar[int] = Op.TOUCH
    id: int
    timeout_ms: int

    def body(self) -> bytes:
        return ID_AND_MS.pack(self.id, self.timeout_ms)

    @classmethod
    def from_body(cls, body: bytes) -> Touch:
        return cls(*unpack_exact(ID_AND_MS, body, "TOUCH"))


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
        return cls(*unpack_exact(ID_AND_MS, body, "RELEASE"))


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a waiting read of this connection (named by its request id): it is answered as empty now."""

    OPCODE: ClassVar[int] = Op.CANCEL
    request_id: int

    def body(self) -> bytes:
        return U32.pack(self.request_id)

    @classmethod
    def from_body(cls, body: bytes) -> Cancel:
        return cls(*unpack_exact(U32, body, "CANCEL"))


@dataclass(frozen=True, slots=True)
class Peek:
    """Look at up to ``count`` messages of a queue, oldest first, without delivering them or changing
    any count: the ready ones, and with ``delayed`` / ``in_flight`` those too (answered `Peeked`)."""

    OPCODE: ClassVar[int] = Op.PEEK
    queue: str
    count: int = 10
    delayed: bool = False
    in_flight: bool = False

    def body(self) -> bytes:
        states = (PEEK_DELAYED if self.delayed else 0) | (PEEK_IN_FLIGHT if self.in_flight else 0)
        return PEEK_HEAD.pack(self.count, states) + encode_name(self.queue)

    @classmethod
    def from_body(cls, body: bytes) -> Peek:
        if len(body) < PEEK_HEAD.size:
            raise InvalidRequest("PEEK body too short")
        count, states = PEEK_HEAD.unpack_from(body)
        raw, stop = split_name(body, PEEK_HEAD.size)
        if stop != len(body):
            raise InvalidRequest("PEEK body has trailing bytes")
        if not count:
            raise InvalidRequest("PEEK count must be at least 1")
        if states & ~(PEEK_DELAYED | PEEK_IN_FLIGHT):
            raise InvalidRequest(f"PEEK states 0x{states:02x} has unknown bits")
        return cls(decode_name(raw), count, bool(states & PEEK_DELAYED), bool(states & PEEK_IN_FLIGHT))


@dataclass(frozen=True, slots=True)
class Move:
    """Move up to ``count`` ready messages (0: all of them) from the front of ``source`` to the back of
    ``destination``, in one server step: answered `Moved` with how many moved, once stored. Moved
    messages keep their ids, payloads, delivery counts, enqueue times and origins; a destination
    with a capacity takes what fits (the rest stay in ``source``)."""

    OPCODE: ClassVar[int] = Op.MOVE
    source: str
    destination: str
    count: int = 0

    def body(self) -> bytes:
        return MOVE_HEAD.pack(self.count) + encode_name(self.source) + encode_name(self.destination)

    @classmethod
    def from_body(cls, body: bytes) -> Move:
        count, source, destination = split_move(body)
        return cls(decode_name(source), decode_name(destination), count)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move an in-flight message, held by this connection, to its queue's dead-letter queue now, in
    one server step, as when its deliveries are spent: it gets a new id there and keeps its origin
    (source queue, id, first enqueue time, delivery count). Answered `DeadLettered` once stored;
    `Requeued` or NO_SUCH_MESSAGE as a `Release`; `Full` when the dead-letter queue has no room; an
    InvalidRequest error when the queue has none. Refused, the message stays in flight as it was."""

    OPCODE: ClassVar[int] = Op.DEAD_LETTER
    id: int

    def body(self) -> bytes:
        return DEAD_LETTER_ID.pack(self.id)

    @classmethod
    def from_body(cls, body: bytes) -> DeadLetter:
        return cls(*unpack_exact(DEAD_LETTER_ID, body, "DEAD_LETTER"))


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
        return cls(*unpack_exact(U64, body, "OBJECT_QUEUED"))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a dead letter came from: its ``queue`` and ``id`` there, when it was first enqueued
    (``enqueued_at``, seconds since the epoch, to the millisecond) and how many times it had been
    delivered there (``deliveries``). On the wire the time travels in Unix milliseconds."""

    queue: str
    id: int
    enqueued_at: float
    deliveries: int

    def pack(self) -> bytes:
        return pack_origin(encode_name(self.queue)[1:], self.id, _ms(self.enqueued_at), self.deliveries)

    @classmethod
    def of(cls, raw: tuple[bytes, int, int, int]) -> Origin:
        """An origin from its wire fields (raw name, id, enqueue time in Unix ms, deliveries)."""
        queue, id_, enqueued_ms, deliveries = raw
        return cls(decode_name(queue), id_, enqueued_ms / 1000.0, deliveries)


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


@dataclass(frozen=True, slots=True)
class Message:
    """A message handed out by a read: confirm ``id`` before the read's timeout.

    ``deliveries`` counts how many times it has been handed out, this time included.
    ``origin`` says where a dead letter came from (None for any other message); a frame
    that carries one has the ORIGIN flag (`encode` sets it).

    ``data`` is the payload as stored. A message sent through the SQS API is
    stored as an envelope (`dbqueue.protocol.envelope`) that carries its body
    and its message attributes: `attributes` and `message_body` read them.
    """

    OPCODE: ClassVar[int] = Op.MESSAGE
    id: int
    data: bytes
    deliveries: int = 1
    origin: Origin | None = None

    @property
    def attributes(self) -> Mapping[str, MessageAttributeValue]:
        """The SQS message attributes this message was sent with, as a read-only mapping name -> value.

        Each value has its ``data_type`` (``String``, ``Number``, ``Binary``,
        with any custom label) and either ``string_value`` or ``binary_value``.
        Empty for a message sent by dbqueue's own clients (a payload that is no
        envelope) and for an SQS message sent without attributes. Read from
        ``data`` at each call; never raises.
        """
        return _attributes_of(self.data)

    @property
    def message_body(self) -> bytes:
        """The body alone: an SQS message's ``MessageBody`` (its UTF-8 bytes), else ``data`` as it is.

        A message sent through the SQS API carries its body in an envelope with
        its attributes and send time (``data`` is the envelope); one sent by
        dbqueue's own clients is its payload. Read from ``data`` at each call;
        never raises.
        """
        return _body_of(self.data)

    def body(self) -> bytes:
        if self.origin is not None:
            return MESSAGE_FIELDS.pack(self.id, self.deliveries) + self.origin.pack() + self.data
        return MESSAGE_FIELDS.pack(self.id, self.deliveries) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> Message:
        id_, deliveries, data = split_message(body)
        return cls(id_, data, deliveries)

    @classmethod
    def from_origin_body(cls, body: bytes) -> Message:
        """A MESSAGE body sent with the ORIGIN flag."""
        id_, deliveries, origin, data = split_message_with_origin(body)
        return cls(id_, data, deliveries, Origin.of(origin))


@dataclass(frozen=True, slots=True)
class Error:
    """A refused request: an `ErrorCode` and a readable reason."""

    OPCODE: ClassVar[int] = Op.ERROR
    code: int
    message: str

    def body(self) -> bytes:
        return ERROR_HEAD.pack(self.code) + self.message.encode("utf-8")

    @classmethod
    def from_body(cls, body: bytes) -> Error:
        if len(body) < ERROR_HEAD.size:
            raise InvalidRequest("ERROR body too short")
        return cls(ERROR_HEAD.unpack_from(body)[0], body[ERROR_HEAD.size :].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Purged:
    """How many messages a purge dropped."""

    OPCODE: ClassVar[int] = Op.PURGED
    count: int

    def body(self) -> bytes:
        return U64.pack(self.count)

    @classmethod
    def from_body(cls, body: bytes) -> Purged:
        return cls(*unpack_exact(U64, body, "PURGED"))


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
        if len(body) % U64.size:
            raise InvalidRequest(f"OBJECTS_QUEUED body is not a multiple of {U64.size} bytes")
        return cls(struct.unpack(f">{len(body) // U64.size}Q", body))


@dataclass(frozen=True, slots=True)
class Messages:
    """The messages of a batch read (none when the queue was empty)."""

    OPCODE: ClassVar[int] = Op.MESSAGES
    messages: tuple[Message, ...]

    def body(self) -> bytes:
        messages = self.messages
        body = pack_messages([m.id for m in messages], [m.deliveries for m in messages], [m.data for m in messages])
        if self.has_origins:
            origins = [_raw_origin(m.origin) if m.origin is not None else None for m in messages]
            body += pack_origins(origins)
        return body

    @property
    def has_origins(self) -> bool:
        """Whether any of its messages is a dead letter with an origin (its frame then has the ORIGIN flag)."""
        return any(m.origin is not None for m in self.messages)

    @classmethod
    def from_body(cls, body: bytes) -> Messages:
        ids, deliveries, payloads = split_messages(body)
        return cls(tuple(map(Message, ids, payloads, deliveries)))

    @classmethod
    def from_origin_body(cls, body: bytes) -> Messages:
        """A MESSAGES body sent with the ORIGIN flag."""
        ids, deliveries, payloads, origins = split_messages_with_origins(body)
        return cls(
            tuple(
                Message(id_, data, count, Origin.of(origin) if origin is not None else None)
                for id_, data, count, origin in zip(ids, payloads, deliveries, origins)
            )
        )


def _raw_origin(origin: Origin) -> tuple[bytes, int, int, int]:
    return encode_name(origin.queue)[1:], origin.id, _ms(origin.enqueued_at), origin.deliveries


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


PEEK_STATES = ("ready", "delayed", "in_flight")  # a PEEKED entry's state byte indexes this


@dataclass(frozen=True, slots=True)
class PeekedMessage:
    """A message seen by a peek, not delivered: ``state`` is "ready", "delayed" or "in_flight";
    ``deliveries`` how many times it has been handed out so far; ``enqueued_at`` when it was
    first enqueued (seconds since the epoch, to the millisecond); ``origin`` where a dead letter
    came from (else None)."""

    id: int
    data: bytes
    deliveries: int
    state: str
    enqueued_at: float
    origin: Origin | None = None

    def pack(self) -> bytes:
        head = PEEKED_ENTRY.pack(
            self.id,
            PEEK_STATES.index(self.state),
            self.deliveries,
            _ms(self.enqueued_at),
            len(self.data),
            self.origin is not None,
        )
        return head + (self.origin.pack() if self.origin is not None else b"") + self.data


@dataclass(frozen=True, slots=True)
class Peeked:
    """The messages a peek saw, oldest first (none when there were none)."""

    OPCODE: ClassVar[int] = Op.PEEKED
    messages: tuple[PeekedMessage, ...]

    def body(self) -> bytes:
        return BATCH_COUNT.pack(len(self.messages)) + b"".join([message.pack() for message in self.messages])

    @classmethod
    def from_body(cls, body: bytes) -> Peeked:
        if len(body) < BATCH_COUNT.size:
            raise InvalidRequest("PEEKED body has no message count")
        (count,) = BATCH_COUNT.unpack_from(body)
        pos = BATCH_COUNT.size
        messages: list[PeekedMessage] = []
        for _ in range(count):
            if len(body) < pos + PEEKED_ENTRY.size:
                raise InvalidRequest("PEEKED body cut short")
            id_, state, deliveries, enqueued_ms, size, has_origin = PEEKED_ENTRY.unpack_from(body, pos)
            pos += PEEKED_ENTRY.size
            if state >= len(PEEK_STATES) or has_origin > 1:
                raise InvalidRequest(f"PEEKED entry {id_} has state {state} and origin mark {has_origin}")
            origin = None
            if has_origin:
                raw, pos = split_origin(body, pos)
                origin = Origin.of(raw)
            if len(body) < pos + size:
                raise InvalidRequest("PEEKED payload runs past the end of the body")
            data = body[pos : pos + size]
            pos += size
            messages.append(PeekedMessage(id_, data, deliveries, PEEK_STATES[state], enqueued_ms / 1000.0, origin))
        if pos != len(body):
            raise InvalidRequest("PEEKED body has trailing bytes")
        return cls(tuple(messages))


@dataclass(frozen=True, slots=True)
class Moved:
    """How many messages a move moved."""

    OPCODE: ClassVar[int] = Op.MOVED
    count: int

    def body(self) -> bytes:
        return U64.pack(self.count)

    @classmethod
    def from_body(cls, body: bytes) -> Moved:
        return cls(*unpack_exact(U64, body, "MOVED"))


class _Bare:
    """A response with no body; its one instance is the class's ``INSTANCE``."""

    __slots__ = ()
    OPCODE: ClassVar[int]
    INSTANCE: ClassVar[Self]  # set for each subclass below

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        expect_empty(body, cls.__name__)
        return cls.INSTANCE

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


class DeadLettered(_Bare):
    """The in-flight message is stored in its queue's dead-letter queue, under a new id, with its origin."""

    OPCODE = Op.DEAD_LETTERED


for _bare in (
    QueueCreated, QueueDeleted, Confirmed, Requeued, Full, Empty, Touched, Released, Cancelled, DeadLettered,
):  # fmt: skip
    _bare.INSTANCE = _bare()

REQUEST_TYPES = (
    Hello, CreateQueue, DeleteQueue, Purge, Stats, ListQueues, Members,
    Enqueue, Read, Confirm, EnqueueBatch, ReadBatch, ConfirmBatch, Touch, Release, EnqueueDelayed, Cancel,
    Peek, Move, DeadLetter,
)  # fmt: skip
RESPONSE_TYPES = (
    HelloOk, QueueCreated, QueueDeleted, Purged, StatsReply, MembersReply,
    ObjectQueued, Message, Confirmed, Requeued, Full, Empty,
    ObjectsQueued, Messages, ConfirmResults, Touched, Released, Cancelled, Peeked, Moved, DeadLettered, Error,
)  # fmt: skip
# The same types as unions, spelled out for type checkers (a test keeps them equal to the tuples).
Request = (
    Hello | CreateQueue | DeleteQueue | Purge | Stats | ListQueues | Members
    | Enqueue | Read | Confirm | EnqueueBatch | ReadBatch | ConfirmBatch | Touch | Release | EnqueueDelayed | Cancel
    | Peek | Move | DeadLetter
)  # fmt: skip
Response = (
    HelloOk | QueueCreated | QueueDeleted | Purged | StatsReply | MembersReply
    | ObjectQueued | Message | Confirmed | Requeued | Full | Empty
    | ObjectsQueued | Messages | ConfirmResults | Touched | Released | Cancelled | Peeked | Moved | DeadLettered
    | Error
)  # fmt: skip

_REQUESTS: dict[int, type[Request]] = {cls.OPCODE: cls for cls in REQUEST_TYPES}
_RESPONSES: dict[int, type[Response]] = {cls.OPCODE: cls for cls in RESPONSE_TYPES}


def encode(request_id: int, message: Request | Response, flags: int = 0) -> bytes:
    """Return the whole frame for ``message`` (a Message or Messages that carries an origin gets
    the ORIGIN flag).

    Raises `InvalidQueueName` for a bad name, `ValueError` for a number that
    does not fit its field (a negative id, a capacity over 2**64-1...).
    """
    try:
        body = message.body()
    except struct.error as exc:
        raise ValueError(f"{type(message).__name__}: a field is out of range for the wire ({exc})") from None
    if (message.__class__ is Message and message.origin is not None) or (
        message.__class__ is Messages and message.has_origins
    ):
        flags |= Flag.ORIGIN
    return HEADER.pack(MAGIC, message.OPCODE, flags, request_id, len(body)) + body


def decode_request(opcode: int, body: bytes) -> Request:
    """Return the request a frame carries; raise `InvalidRequest` (or a subclass) if it does not parse."""
    cls = _REQUESTS.get(opcode)
    if cls is None:
        raise UnknownOpcode(f"unknown request opcode 0x{opcode:02x}")
    return cls.from_body(body)


def decode_response(opcode: int, body: bytes, flags: int = 0) -> Response:
    """Return the response a frame carries (``flags``: its header's); raise `InvalidRequest` if it
    does not parse."""
    if flags:
        if flags != Flag.ORIGIN or opcode not in (Op.MESSAGE, Op.MESSAGES):
            raise InvalidRequest(f"unexpected flags 0x{flags:04x} on response opcode 0x{opcode:02x}")
        return Message.from_origin_body(body) if opcode == Op.MESSAGE else Messages.from_origin_body(body)
    cls = _RESPONSES.get(opcode)
    if cls is None:
        raise InvalidRequest(f"unknown response opcode 0x{opcode:02x}")
    return cls.from_body(body)

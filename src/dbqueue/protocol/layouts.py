"""Body layouts: every struct and split helper of a frame's body, defined once.

Everything that reads or writes a body goes through the names here: the message
catalogue (`messages`), the server's bulk codecs (`codecs`), the server's fast
paths and the load test. Nothing else slices a body by offset: where hot code
must find a field inside a whole frame without cutting the body out first, it
adds one of the positions below to `HEADER_SIZE`.

All integers are big-endian. A queue name travels as a u8 length and that many
bytes of UTF-8 (1-255). Batch bodies are laid out in columns: a u32 count, then
each fixed-size field for every message, then a u32 length per message, then the
payloads back to back to the end of the body.
"""

from __future__ import annotations

import struct
from itertools import accumulate
from typing import Any

from ..errors import InvalidQueueName, InvalidRequest
from .frames import HEADER, HEADER_RAW_ID, MAX_QUEUE_NAME

__all__ = [
    "U8",
    "U16",
    "U32",
    "U64",
    "NAME_SIZE",
    "NO_NAME",
    "READ_TIMES",
    "READ_NAME",
    "CONFIRM_ID",
    "DEAD_LETTER_ID",
    "HELLO_HEAD",
    "HELLO_OK_HEAD",
    "CREATE_OPTIONS",
    "ID_AND_MS",
    "READ_BATCH_HEAD",
    "DELAY",
    "ERROR_HEAD",
    "BATCH_COUNT",
    "MESSAGE_FIELDS",
    "MESSAGE_ID",
    "MESSAGE_ENTRY",
    "ID_FRAME",
    "MESSAGE_HEAD",
    "MESSAGE_HEAD_RAW_ID",
    "ORIGIN_HEAD",
    "ORIGIN_INDEX",
    "PEEK_HEAD",
    "PEEK_DELAYED",
    "PEEK_IN_FLIGHT",
    "PEEKED_ENTRY",
    "MOVE_HEAD",
    "MAX_REPEAT",
    "repeated",
    "unpack_exact",
    "expect_empty",
    "encode_name",
    "decode_name",
    "split_name",
    "split_create_queue",
    "split_enqueue",
    "split_read",
    "split_enqueue_delayed",
    "split_message",
    "split_enqueue_batch",
    "pack_lengths",
    "cut_payloads",
    "pack_messages",
    "messages_columns",
    "split_messages",
    "pack_origin",
    "split_origin",
    "split_message_with_origin",
    "pack_origins",
    "split_messages_with_origins",
    "split_move",
]

U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")

# A queue name's length prefix: the name's bytes follow it.
NAME_SIZE = U8.size
NO_NAME = bytes(NAME_SIZE)  # where a name is optional (a dead-letter queue), a zero length stands for none

# --- the hot requests -----------------------------------------------------------------
# ENQUEUE: a queue name at 0, then the payload to the end of the body (`split_enqueue`).
# READ: timeout_ms and wait_ms, then a queue name up to the end of the body (`split_read`).
READ_TIMES = struct.Struct(">II")
READ_NAME = READ_TIMES.size  # where READ's queue name starts
# CONFIRM: the message id, and nothing else.
CONFIRM_ID = U64
DEAD_LETTER_ID = U64  # DEAD_LETTER: the id of a message this connection holds in flight, nothing else

# --- the other bodies with fixed fields -------------------------------------------------
HELLO_HEAD = U16  # HELLO: the protocol version; the token follows to the end
HELLO_OK_HEAD = struct.Struct(">HI")  # HELLO_OK: version, max_message_size; the server's name follows
# CREATE_QUEUE, after the name: capacity, max_deliveries, visibility_timeout_ms (0: the server's default)
CREATE_OPTIONS = struct.Struct(">QII")
ID_AND_MS = struct.Struct(">QI")  # TOUCH, RELEASE: id, milliseconds
READ_BATCH_HEAD = struct.Struct(">IIH")  # READ_BATCH: timeout_ms, wait_ms, max_messages; the name follows
DELAY = U32  # ENQUEUE_DELAYED, after the name: delay_ms; the payload follows to the end
ERROR_HEAD = U16  # ERROR: the error code; the reason follows in UTF-8
BATCH_COUNT = U32  # a batch body's message count, ahead of its columns

# MESSAGE: id and deliveries, then the payload to the end of the body.
MESSAGE_FIELDS = struct.Struct(">QI")
MESSAGE_ID = slice(0, U64.size)  # a MESSAGE body's id as its wire bytes (what a CONFIRM carries)
# What each message adds to a MESSAGES body besides its payload: id, deliveries and length.
MESSAGE_ENTRY = U64.size + U32.size + U32.size

# --- whole frames the server packs in one call on its hot path ---------------------------
ID_FRAME = struct.Struct(HEADER.format + "Q")  # header + one u64 id: ObjectQueued (and the bench's Confirm)
MESSAGE_HEAD = struct.Struct(HEADER.format + "QI")  # header + MESSAGE_FIELDS; the payload follows
MESSAGE_HEAD_RAW_ID = struct.Struct(HEADER_RAW_ID.format + "QI")  # the same, the request id as its 4 wire bytes

# --- where a dead letter came from, and the requests that look at and move messages -------
# An origin: the message's id in its source queue, its first enqueue time (Unix ms), how many times it
# had been delivered there; then the source queue's name. A MESSAGE with the ORIGIN flag carries one
# between its fields and its payload; a MESSAGES with the flag, one per dead letter after the payloads,
# each behind ORIGIN_INDEX (the message's place in the batch).
ORIGIN_HEAD = struct.Struct(">QQI")
ORIGIN_INDEX = U32
# PEEK: how many messages at most, which states besides ready; the queue name follows to the end.
PEEK_HEAD = struct.Struct(">HB")
PEEK_DELAYED = 0x01  # PEEK_HEAD's state bits
PEEK_IN_FLIGHT = 0x02
# PEEKED, after a u32 count, each entry: id, state (0 ready, 1 delayed, 2 in flight), deliveries,
# first enqueue time (Unix ms), payload length, whether an origin follows (0 or 1); then the origin if
# any, then the payload.
PEEKED_ENTRY = struct.Struct(">QBIQIB")
# MOVE: how many ready messages at most (0: all of them); the source's name, then the destination's.
MOVE_HEAD = U32


# --- layouts repeated per message or per frame -------------------------------------------

MAX_REPEAT = 256  # repetitions a cached layout is made for: longer runs of fields go another way
_repeated: dict[tuple[str, int], struct.Struct] = {}


def repeated(fields: str, count: int) -> struct.Struct:
    """A precompiled big-endian struct for ``count`` repetitions of ``fields`` (cached, the cache
    bounded). For counts up to `MAX_REPEAT`: the format string grows with the count."""
    layout = _repeated.get((fields, count))
    if layout is None:
        if len(_repeated) >= 512:
            _repeated.clear()
        layout = _repeated[fields, count] = struct.Struct(">" + fields * count)
    return layout


def unpack_exact(layout: struct.Struct, body: bytes, what: str) -> tuple[Any, ...]:
    """The fields of a body that is exactly ``layout``; raise `InvalidRequest` for any other size."""
    if len(body) != layout.size:
        raise InvalidRequest(f"{what} body must be {layout.size} bytes, got {len(body)}")
    return layout.unpack(body)


def expect_empty(body: bytes, what: str) -> None:
    """Raise `InvalidRequest` unless ``body`` is empty."""
    if body:
        raise InvalidRequest(f"{what} takes no body, got {len(body)} bytes")


# --- queue names ---------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """Return the wire form of a queue name (u8 length + UTF-8); raise `InvalidQueueName`."""
    try:
        raw = name.encode("utf-8") if isinstance(name, str) else b""
    except UnicodeEncodeError:  # a lone surrogate
        raw = b""
    if not 1 <= len(raw) <= MAX_QUEUE_NAME:
        raise InvalidQueueName(f"queue names are 1-{MAX_QUEUE_NAME} bytes of UTF-8, got {name!r}")
    return bytes((len(raw),)) + raw


def decode_name(raw: bytes) -> str:
    """A raw queue name as text; raise `InvalidQueueName` if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQueueName("queue name is not valid UTF-8") from None


def split_name(body: bytes, pos: int = 0) -> tuple[bytes, int]:
    """Return (raw name, position after it) of a name at ``pos``; raise `InvalidRequest`."""
    try:
        size = body[pos]
    except IndexError:
        raise InvalidRequest("body too short for a queue name") from None
    stop = pos + NAME_SIZE + size
    if size == 0:
        raise InvalidQueueName(f"queue names are 1-{MAX_QUEUE_NAME} bytes of UTF-8, got an empty name")
    if stop > len(body):
        raise InvalidRequest(f"a queue name of {size} bytes runs past the end of the body")
    return body[pos + NAME_SIZE : stop], stop


def split_create_queue(body: bytes) -> tuple[bytes, int, int, int, bytes]:
    """Return (raw name, capacity, max_deliveries, visibility_timeout_ms, raw dead-letter queue name
    or b"") of a CREATE_QUEUE body: a name, `CREATE_OPTIONS`, then a name or `NO_NAME`; raise
    `InvalidRequest`."""
    raw, stop = split_name(body)
    options_end = stop + CREATE_OPTIONS.size
    if len(body) < options_end + NAME_SIZE:
        raise InvalidRequest("CREATE_QUEUE body too short for its options")
    capacity, max_deliveries, visibility_ms = CREATE_OPTIONS.unpack_from(body, stop)
    dead_letter = b""
    if body[options_end]:
        dead_letter, options_end = split_name(body, options_end)
    else:
        options_end += NAME_SIZE
    if options_end != len(body):
        raise InvalidRequest("CREATE_QUEUE body has trailing bytes")
    return raw, capacity, max_deliveries, visibility_ms, dead_letter


# --- the hot bodies ------------------------------------------------------------------------


def split_enqueue(body: bytes) -> tuple[bytes, bytes]:
    """Return (raw queue name, payload) of an ENQUEUE body: name, then the payload to the end."""
    size = body[0] if body else 0
    stop = NAME_SIZE + size
    name = body[NAME_SIZE:stop]
    if not size or len(name) != size:
        split_name(body)  # raises the precise error
    return name, body[stop:]


def split_read(body: bytes) -> tuple[bytes, int, int]:
    """Return (raw queue name, timeout_ms, wait_ms) of a READ body: two u32, then the name to the end."""
    if len(body) <= READ_NAME + NAME_SIZE or body[READ_NAME] != len(body) - READ_NAME - NAME_SIZE:
        _bad_read(body)
    timeout_ms, wait_ms = READ_TIMES.unpack_from(body)
    return body[READ_NAME + NAME_SIZE :], timeout_ms, wait_ms


def _bad_read(body: bytes) -> None:
    if len(body) <= READ_NAME:
        raise InvalidRequest(f"READ body must hold timeout_ms, wait_ms and a queue name, got {len(body)} bytes")
    _, stop = split_name(body, READ_NAME)
    raise InvalidRequest(f"READ body has {len(body) - stop} bytes after the queue name")


def split_enqueue_delayed(body: bytes) -> tuple[bytes, int, bytes]:
    """Return (raw queue name, delay_ms, payload) of an ENQUEUE_DELAYED body; raise `InvalidRequest`."""
    raw, stop = split_name(body)
    if len(body) < stop + DELAY.size:
        raise InvalidRequest("ENQUEUE_DELAYED body too short for delay_ms")
    return raw, DELAY.unpack_from(body, stop)[0], body[stop + DELAY.size :]


def split_message(body: bytes) -> tuple[int, int, bytes]:
    """Return (id, deliveries, payload) of a MESSAGE body; raise `InvalidRequest`."""
    if len(body) < MESSAGE_FIELDS.size:
        raise InvalidRequest("MESSAGE body too short")
    id_, deliveries = MESSAGE_FIELDS.unpack_from(body)
    return id_, deliveries, body[MESSAGE_FIELDS.size :]


# --- batch bodies, in columns --------------------------------------------------------------


def pack_lengths(payloads: tuple[bytes, ...] | list[bytes]) -> bytes:
    """A batch's count and length column (the payloads follow them, back to back)."""
    return struct.pack(f">I{len(payloads)}I", len(payloads), *map(len, payloads))


def cut_payloads(body: bytes, start: int, fixed: int, what: str) -> tuple[bytes, ...]:
    """The payloads of a batch body laid out in columns from ``start``: a u32 count, ``fixed``
    bytes of other columns per message, a u32 length per message, then the payloads back to
    back up to the end of the body. One C-level pass cuts them: no Python loop per message."""
    if len(body) < start + BATCH_COUNT.size:
        raise InvalidRequest(f"{what} body has no message count")
    (count,) = BATCH_COUNT.unpack_from(body, start)
    payloads_start = start + BATCH_COUNT.size + (fixed + U32.size) * count
    if payloads_start > len(body):
        raise InvalidRequest(f"{what} body too short for the columns of {count} messages")
    lengths = struct.unpack_from(f">{count}I", body, payloads_start - U32.size * count)
    if sum(lengths) != len(body) - payloads_start:
        raise InvalidRequest(
            f"{what} payload lengths add up to {sum(lengths)} bytes, the body carries {len(body) - payloads_start}"
        )
    if 0 < count <= MAX_REPEAT and lengths.count(lengths[0]) == count:  # all of one size: one struct call
        return repeated(f"{lengths[0]}s", count).unpack_from(body, payloads_start)
    ends = list(accumulate(lengths, initial=payloads_start))
    return tuple([body[begin:end] for begin, end in zip(ends, ends[1:])])


def split_enqueue_batch(body: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """An ENQUEUE_BATCH body left in its columns, payloads not cut apart: (raw queue name, u32
    length column, payloads back to back, the longest payload's size). None for a body that
    `EnqueueBatch.from_body` would refuse: it says why."""
    size = body[0] if body else 0
    start = NAME_SIZE + size  # the message count
    if not size or len(body) < start + BATCH_COUNT.size:
        return None
    (count,) = BATCH_COUNT.unpack_from(body, start)
    lengths_start = start + BATCH_COUNT.size
    payloads_start = lengths_start + U32.size * count
    if not count or payloads_start > len(body):
        return None
    lengths = struct.unpack_from(f">{count}I", body, lengths_start)
    if sum(lengths) != len(body) - payloads_start:
        return None
    return body[NAME_SIZE:start], body[lengths_start:payloads_start], body[payloads_start:], max(lengths)


def pack_messages(ids: list[int], deliveries: list[int], payloads: list[bytes]) -> bytes:
    """A MESSAGES body from its columns: count, ids, delivery counts, lengths, payloads."""
    count = len(payloads)
    columns = struct.pack(f">I{count}Q{count}I{count}I", count, *ids, *deliveries, *map(len, payloads))
    return columns + b"".join(payloads)


def messages_columns(body: bytes) -> tuple[int, bytes, bytes, bytes, bytes]:
    """A MESSAGES body's columns as their wire bytes: (count, u64 ids, u32 delivery counts, u32
    lengths, payloads back to back). Raises `InvalidRequest` if the columns run past the body
    (the payloads' lengths are not checked: `split_messages` does)."""
    if len(body) < BATCH_COUNT.size:
        raise InvalidRequest("MESSAGES body has no message count")
    (count,) = BATCH_COUNT.unpack_from(body, 0)
    deliveries_start = BATCH_COUNT.size + U64.size * count
    lengths_start = deliveries_start + U32.size * count
    payloads_start = lengths_start + U32.size * count
    if payloads_start > len(body):
        raise InvalidRequest(f"MESSAGES body too short for the columns of {count} messages")
    return (
        count,
        body[BATCH_COUNT.size : deliveries_start],
        body[deliveries_start:lengths_start],
        body[lengths_start:payloads_start],
        body[payloads_start:],
    )


def split_messages(body: bytes) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bytes, ...]]:
    """(ids, delivery counts, payloads) of a MESSAGES body; raise `InvalidRequest`."""
    payloads = cut_payloads(body, 0, MESSAGE_FIELDS.size, "MESSAGES")
    count = len(payloads)
    ids = struct.unpack_from(f">{count}Q", body, BATCH_COUNT.size)
    deliveries = struct.unpack_from(f">{count}I", body, BATCH_COUNT.size + U64.size * count)
    return ids, deliveries, payloads


# --- origins, PEEK and MOVE ------------------------------------------------------------------

# An origin as its fields: (raw source queue name, id there, first enqueue time in Unix ms, deliveries there).
RawOrigin = tuple[bytes, int, int, int]


def pack_origin(queue: bytes, id_: int, enqueued_ms: int, deliveries: int) -> bytes:
    """An origin's wire form: `ORIGIN_HEAD`, then the source queue's name."""
    return ORIGIN_HEAD.pack(id_, enqueued_ms, deliveries) + bytes((len(queue),)) + queue


def split_origin(body: bytes, pos: int) -> tuple[RawOrigin, int]:
    """Return (origin fields, position after it) of an origin at ``pos``; raise `InvalidRequest`."""
    if len(body) < pos + ORIGIN_HEAD.size:
        raise InvalidRequest("body too short for a message's origin")
    id_, enqueued_ms, deliveries = ORIGIN_HEAD.unpack_from(body, pos)
    raw, stop = split_name(body, pos + ORIGIN_HEAD.size)
    return (raw, id_, enqueued_ms, deliveries), stop


def split_message_with_origin(body: bytes) -> tuple[int, int, RawOrigin, bytes]:
    """Return (id, deliveries, origin, payload) of a MESSAGE body sent with the ORIGIN flag."""
    if len(body) < MESSAGE_FIELDS.size:
        raise InvalidRequest("MESSAGE body too short")
    id_, deliveries = MESSAGE_FIELDS.unpack_from(body)
    origin, stop = split_origin(body, MESSAGE_FIELDS.size)
    return id_, deliveries, origin, body[stop:]


def pack_origins(origins: list[RawOrigin | None]) -> bytes:
    """The origin section of a MESSAGES body sent with the ORIGIN flag: for each message that has
    one, its place in the batch (`ORIGIN_INDEX`) and the origin."""
    return b"".join(
        [ORIGIN_INDEX.pack(index) + pack_origin(*origin) for index, origin in enumerate(origins) if origin is not None]
    )


def split_messages_with_origins(
    body: bytes,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bytes, ...], list[RawOrigin | None]]:
    """(ids, delivery counts, payloads, origins) of a MESSAGES body sent with the ORIGIN flag: the
    usual columns, whose payloads end where their lengths say, then the origin section to the end."""
    count, _, _, lengths, _ = messages_columns(body)
    payloads_start = BATCH_COUNT.size + MESSAGE_ENTRY * count
    size = sum(struct.unpack(f">{count}I", lengths))
    end = payloads_start + size
    if end > len(body):
        raise InvalidRequest(f"MESSAGES payload lengths add up to {size} bytes, past the end of the body")
    ids, deliveries, payloads = split_messages(body[:end])
    origins: list[RawOrigin | None] = [None] * count
    pos = end
    while pos < len(body):
        if len(body) < pos + ORIGIN_INDEX.size:
            raise InvalidRequest("MESSAGES origin section cut short")
        (index,) = ORIGIN_INDEX.unpack_from(body, pos)
        if index >= count or origins[index] is not None:
            raise InvalidRequest(f"MESSAGES origin for message {index} of {count} is out of place")
        origins[index], pos = split_origin(body, pos + ORIGIN_INDEX.size)
    return ids, deliveries, payloads, origins


def split_move(body: bytes) -> tuple[int, bytes, bytes]:
    """Return (count, raw source name, raw destination name) of a MOVE body; raise `InvalidRequest`."""
    if len(body) < MOVE_HEAD.size:
        raise InvalidRequest("MOVE body too short")
    (count,) = MOVE_HEAD.unpack_from(body)
    source, stop = split_name(body, MOVE_HEAD.size)
    destination, stop = split_name(body, stop)
    if stop != len(body):
        raise InvalidRequest("MOVE body has trailing bytes")
    return count, source, destination

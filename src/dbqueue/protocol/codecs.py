"""Bulk codecs: many frames cut or built in a few C-level calls, on the layouts of `layouts`.

The server's hot paths do not build a dataclass per request. They read requests
with `RequestReader` (the hot ones come out already split) or, for a buffer of
like requests, `cut_run` (one struct call); they answer with `id_frames`,
`bare_frames`, `message_frames` (a whole run's replies in one call) and the
batch frames below, built straight from columns. Every builder here gives the
bytes `messages.encode` gives for the same response (a test checks each).

`cut_alike` is the client side's counterpart for replies: whole frames of one
size, each header checked, in one struct call (the load test uses it).
"""

from __future__ import annotations

import struct
from itertools import chain, repeat
from operator import add
from typing import Any, NamedTuple

from .frames import HEADER, HEADER_RAW_ID, HEADER_SIZE, MAGIC, FrameReader, Op, framing_failure
from .layouts import (
    CONFIRM_ID,
    ID_FRAME,
    MAX_REPEAT,
    MESSAGE_FIELDS,
    MESSAGE_HEAD,
    MESSAGE_HEAD_RAW_ID,
    NAME_SIZE,
    READ_NAME,
    READ_TIMES,
    U32,
    U64,
    pack_messages,
    repeated,
)
from .messages import Error, encode

__all__ = [
    "OTHER",
    "RequestReader",
    "MAX_RUN",
    "Run",
    "cut_run",
    "ID_BODY",
    "pack_id_frame",
    "pack_message_head",
    "pack_bare_frame",
    "id_frames",
    "bare_frames",
    "message_frames",
    "messages_frame",
    "messages_frame_of_columns",
    "id_column",
    "objects_queued_frame",
    "confirm_results_frame",
    "error_frame",
    "Alike",
    "cut_alike",
]

_ENQUEUE, _READ, _CONFIRM, _MESSAGE = int(Op.ENQUEUE), int(Op.READ), int(Op.CONFIRM), int(Op.MESSAGE)
_MESSAGES, _OBJECTS_QUEUED, _CONFIRM_RESULTS = int(Op.MESSAGES), int(Op.OBJECTS_QUEUED), int(Op.CONFIRM_RESULTS)
_READ_NAME_SIZE = READ_NAME + NAME_SIZE  # READ's fixed part: the times and the name's length
# Header fields without the byte order, for layouts that repeat a frame (`layouts.repeated`).
_HEADER_FIELDS = HEADER.format[1:]
_HEADER_RAW_ID = HEADER_RAW_ID.format[1:]
_CONFIRM_FIELDS = _HEADER_RAW_ID + CONFIRM_ID.format[1:]

# --- reading requests ---------------------------------------------------------------------

OTHER = -1  # RequestReader's tag for frames off the hot path


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
    request; the layouts are `layouts.split_enqueue` / `split_read`'s, read in place.

    A feed cuts at most ``turn`` frames: the server handles a connection's requests a turn of
    the loop at a time, and cutting is part of the work a turn bounds.
    """

    __slots__ = ()

    def _scan(self, data: bytes) -> tuple[list[Any], int, int]:
        items: list[Any] = []
        append = items.append
        unpack = HEADER.unpack_from
        unpack_times = READ_TIMES.unpack_from
        unpack_id = CONFIRM_ID.unpack_from
        max_body = self.max_body
        left = self.turn
        self.more = False
        pos = 0
        end = len(data)
        while end - pos >= HEADER_SIZE:
            if not left:  # a turn's worth: the rest waits, whole or not
                self.more = True
                return items, pos, HEADER_SIZE
            left -= 1
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
                    name_end = start + NAME_SIZE + size
                    if size and name_end <= stop:
                        append((_ENQUEUE, request_id, data[start + NAME_SIZE : name_end], data[name_end:stop]))
                        continue
                elif opcode == _READ:
                    if length > _READ_NAME_SIZE and data[start + READ_NAME] == length - _READ_NAME_SIZE:
                        append((_READ, request_id, data[start + _READ_NAME_SIZE : stop], unpack_times(data, start)))
                        continue
                elif opcode == _CONFIRM and length == CONFIRM_ID.size:
                    append((_CONFIRM, request_id, unpack_id(data, start)[0], None))
                    continue
            append((OTHER, request_id, (opcode, flags, request_id, data[start:stop]), None))
        return items, pos, HEADER_SIZE


# --- runs: a buffer of like requests, cut in one call ----------------------------------------

MAX_RUN = MAX_REPEAT  # frames per run layout; longer buffers go frame by frame
# Where each frame's fields fall among a run layout's values, every ``width`` of them: the header's
# five, then the body's: ENQUEUE's name length, name and payload; READ's body whole; CONFIRM's id.
_MAGIC_AT, _OPCODE_AT, _FLAGS_AT, _ID_AT, _LENGTH_AT, _BODY_AT = range(6)


class Run(NamedTuple):
    """Pipelined requests alike, cut by `cut_run`: ``request_ids`` in order, each as its 4 wire
    bytes (replies copy them), and, by ``opcode``, ENQUEUE: ``key`` the raw queue name,
    ``values`` the payloads; READ: ``key`` the body they all share; CONFIRM: ``values`` the
    message ids."""

    opcode: int
    request_ids: tuple[bytes, ...]
    key: bytes
    values: tuple[Any, ...]


def cut_run(data: bytes) -> Run | None:
    """Cut ``data`` in one struct call if it is two or more whole frames of one size, all ENQUEUEs
    to one queue, all READs with one body, or all CONFIRMs, with no flags: what a client that
    pipelines sends. None for anything else (which `RequestReader` then cuts frame by frame).
    Frames are only cut here; whether their fields make sense is for the caller to check."""
    if len(data) < 2 * HEADER_SIZE:
        return None
    magic, opcode, _, _, length = HEADER.unpack_from(data)  # the first frame's
    if magic != MAGIC:
        return None
    count, rest = divmod(len(data), HEADER_SIZE + length)
    if rest or not 2 <= count <= MAX_RUN:
        return None
    if opcode == _ENQUEUE and length:
        name_size = data[HEADER_SIZE]
        if not 0 < name_size < length:
            return None
        fields, width = f"{_HEADER_RAW_ID}B{name_size}s{length - NAME_SIZE - name_size}s", _BODY_AT + 3
    elif opcode == _READ:
        fields, width = f"{_HEADER_RAW_ID}{length}s", _BODY_AT + 1
    elif opcode == _CONFIRM and length == CONFIRM_ID.size:
        fields, width = _CONFIRM_FIELDS, _BODY_AT + 1
    else:
        return None
    values = repeated(fields, count).unpack(data)
    if not (
        values[_MAGIC_AT::width].count(MAGIC) == values[_OPCODE_AT::width].count(opcode)
        == values[_FLAGS_AT::width].count(0) == values[_LENGTH_AT::width].count(length) == count
    ):  # fmt: skip
        return None
    request_ids = values[_ID_AT::width]
    if opcode == _CONFIRM:
        return Run(opcode, request_ids, b"", values[_BODY_AT::width])
    if opcode == _READ:
        bodies = values[_BODY_AT::width]
        return Run(opcode, request_ids, bodies[0], ()) if bodies.count(bodies[0]) == count else None
    names = values[_BODY_AT + 1 :: width]
    if names.count(names[0]) != count or values[_BODY_AT::width].count(name_size) != count:
        return None
    return Run(opcode, request_ids, names[0], values[_BODY_AT + 2 :: width])


# --- building replies ------------------------------------------------------------------------

# One reply frame in one call, for the paths that answer request by request.
ID_BODY = U64.size  # the body length of a frame with one u64 id (ObjectQueued)
pack_id_frame = ID_FRAME.pack  # (MAGIC, opcode, 0, request_id, ID_BODY, id)
# (MAGIC, Op.MESSAGE, 0, request_id, MESSAGE_FIELDS.size + payload size, id, deliveries); the payload follows
pack_message_head = MESSAGE_HEAD.pack
pack_bare_frame = HEADER.pack  # (MAGIC, opcode, 0, request_id, 0): a response with no body

# A header's first four bytes (magic, opcode, no flags) by opcode: packed as one field, a header's
# constant parts cost a copy rather than an integer conversion each.
_FRAME_STARTS = {int(opcode): HEADER.pack(MAGIC, opcode, 0, 0, 0)[:4] for opcode in Op}
_ID_BODY_LENGTH = U32.pack(ID_BODY)
_NO_BODY = U32.pack(0)


def id_frames(opcode: int, request_ids: tuple[bytes, ...], ids: list[int]) -> bytes:
    """One frame with a u64 id for each request (ObjectQueued), packed in one call. (The fields are
    laid out by slice assignment: zipping them made a tuple a frame and took half as long again.)"""
    count = len(request_ids)
    fields: list[Any] = [_FRAME_STARTS[opcode]] * (4 * count)
    fields[1::4] = request_ids
    fields[2::4] = [_ID_BODY_LENGTH] * count
    fields[3::4] = ids
    return repeated("4s4s4sQ", count).pack(*fields)


def bare_frames(opcode: int, request_ids: tuple[bytes, ...]) -> bytes:
    """One frame with no body for each request (Confirmed, Empty): the request ids joined by
    the bytes that stand between them (the rest of a header, the start of the next)."""
    if not request_ids:
        return b""
    start = _FRAME_STARTS[opcode]  # magic, opcode, flags; then the request id, then the length 0
    return start + (_NO_BODY + start).join(request_ids) + _NO_BODY


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
        fields[2::6] = [U32.pack(MESSAGE_FIELDS.size + size)] * count
        fields[3::6] = ids
        fields[4::6] = deliveries
        fields[5::6] = payloads
        return repeated(f"4s4s4sQI{size}s", count).pack(*fields)
    sizes = map(add, map(len, payloads), repeat(MESSAGE_FIELDS.size))  # each body: id, deliveries, payload
    heads = map(
        MESSAGE_HEAD_RAW_ID.pack, repeat(MAGIC), repeat(_MESSAGE), repeat(0), request_ids, sizes, ids, deliveries
    )
    return b"".join(chain.from_iterable(zip(heads, payloads)))


def messages_frame(request_id: int, ids: list[int], deliveries: list[int], payloads: list[bytes]) -> bytes:
    """A MESSAGES frame straight from its columns: the server's batch reads build no `Message`."""
    body = pack_messages(ids, deliveries, payloads)
    return HEADER.pack(MAGIC, _MESSAGES, 0, request_id, len(body)) + body


def messages_frame_of_columns(
    request_id: int,
    count: int,
    ids: tuple[bytes, ...],
    deliveries: list[bytes],
    lengths: tuple[bytes, ...],
    payloads: tuple[bytes, ...],
) -> bytes:
    """A MESSAGES frame from its columns already packed, each given as pieces: u64 ids, u32
    delivery counts, u32 lengths, payloads back to back (the server's slabs keep them so)."""
    parts = [b"", U32.pack(count), *ids, *deliveries, *lengths, *payloads]
    size = sum(map(len, parts))
    parts[0] = HEADER.pack(MAGIC, _MESSAGES, 0, request_id, size)
    return b"".join(parts)


# Per column length n: (ones, ramp), the integers whose 8n big-endian bytes are n u64s of 1 and of
# 0, 1, ..., n - 1. Batches come in a few sizes, so the table stays small; it is emptied if not,
# and longer columns are packed id by id, so that what it holds stays bounded whatever clients send.
_ID_PATTERNS: dict[int, tuple[int, int]] = {}
_MAX_ID_PATTERNS = 64
_MAX_PATTERN_IDS = 2048


def id_column(first: int, count: int) -> bytes:
    """The ids ``first`` to ``first + count - 1`` as a u64 column (big-endian), the OBJECTS_QUEUED
    body and a MESSAGES reply's id column of a batch kept in columns.

    Built as one integer, ``first * ones + ramp``, whose 8-byte digits are the ids (no digit
    carries into the next while the last id fits in a u64), so it costs a few C loops over the
    column's bytes instead of an int object and a conversion for each id: the server's slabs keep
    no id column and build it again for each batch read (see `core.segments`)."""
    patterns = _ID_PATTERNS.get(count)
    if patterns is None:
        if count > _MAX_PATTERN_IDS:
            return struct.pack(f">{count}Q", *range(first, first + count))
        if len(_ID_PATTERNS) >= _MAX_ID_PATTERNS:
            _ID_PATTERNS.clear()
        ramp = int.from_bytes(struct.pack(f">{count}Q", *range(count)), "big")
        patterns = _ID_PATTERNS[count] = (int.from_bytes(b"\0\0\0\0\0\0\0\1" * count, "big"), ramp)
    ones, ramp = patterns
    return (first * ones + ramp).to_bytes(8 * count, "big")


def objects_queued_frame(request_id: int, ids: bytes) -> bytes:
    """An OBJECTS_QUEUED frame for ids already packed as a u64 column."""
    return HEADER.pack(MAGIC, _OBJECTS_QUEUED, 0, request_id, len(ids)) + ids


def confirm_results_frame(request_id: int, outcomes: bytes) -> bytes:
    """A CONFIRM_RESULTS frame: one outcome byte per confirmed id."""
    return HEADER.pack(MAGIC, _CONFIRM_RESULTS, 0, request_id, len(outcomes)) + outcomes


def error_frame(request_id: int, code: int, message: str) -> bytes:
    """Return an ERROR frame (the server's one way to refuse a request)."""
    return encode(request_id, Error(code, message))


# --- reading replies in bulk (the load test) ----------------------------------------------------


class Alike(NamedTuple):
    """Whole frames of one size, as cut by `cut_alike`: a column per header field, and the bodies."""

    opcodes: tuple[int, ...]
    request_ids: tuple[int, ...]
    lengths: tuple[int, ...]
    bodies: tuple[bytes, ...]


def cut_alike(data: bytes, max_body: int, layouts: dict[tuple[int, int], Any]) -> Alike | None:
    """Cut ``data`` in one struct call if it is whole, well-formed frames (magic, no flags) of one
    size, at most `MAX_RUN` of them and no body over ``max_body``; None for anything else, which
    the caller then reads frame by frame (`FrameReader` reports what is wrong). ``layouts`` is the
    caller's cache of the struct layouts, by (body length, count)."""
    if len(data) < HEADER_SIZE:
        return None
    length = HEADER.unpack_from(data)[4]
    count, rest = divmod(len(data), HEADER_SIZE + length)
    if rest or count > MAX_RUN or length > max_body:
        return None
    layout = layouts.get((length, count))
    if layout is None:
        layout = layouts[length, count] = repeated(f"{_HEADER_FIELDS}{length}s", count)
    values = layout.unpack(data)
    # Every frame's magic, flags and length, checked at once.
    if values[0::6].count(MAGIC) == values[2::6].count(0) == values[4::6].count(length) == count:
        return Alike(values[1::6], values[3::6], values[4::6], values[5::6])
    return None

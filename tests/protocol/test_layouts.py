"""Layouts defined once: the split helpers agree with the catalogue, the bulk codecs with `encode`, and
no module outside the protocol reads a body at a literal offset."""

from __future__ import annotations

import ast
import random
import typing
from pathlib import Path

import pytest

import dbqueue
from dbqueue.errors import InvalidRequest
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    ConfirmResults,
    CreateQueue,
    Empty,
    EnqueueDelayed,
    Error,
    FrameReader,
    Message,
    Messages,
    ObjectQueued,
    ObjectsQueued,
    Request,
    Response,
    encode,
)
from dbqueue.protocol.codecs import (
    MAX_RUN,
    confirm_results_frame,
    cut_alike,
    error_frame,
    messages_frame,
    messages_frame_of_columns,
    objects_queued_frame,
)
from dbqueue.protocol.layouts import (
    MESSAGE_ID,
    U32,
    U64,
    messages_columns,
    split_create_queue,
    split_enqueue_delayed,
    split_message,
    split_messages,
)

# --- the catalogue's unions and tuples name the same types ----------------------------------------------


def test_the_unions_are_the_tuples() -> None:
    assert typing.get_args(Request) == REQUEST_TYPES
    assert typing.get_args(Response) == RESPONSE_TYPES


# --- split helpers against the dataclasses --------------------------------------------------------------


def test_split_helpers_read_what_the_dataclasses_write() -> None:
    assert split_message(Message(7, b"data", 3).body()) == (7, 3, b"data")
    assert split_enqueue_delayed(EnqueueDelayed("q", b"later", 250).body()) == (b"q", 250, b"later")
    assert split_create_queue(CreateQueue("q", 10, 3, "dead", 500).body()) == (b"q", 10, 3, 500, b"dead")
    assert split_create_queue(CreateQueue("q").body()) == (b"q", 0, 0, 0, b"")
    messages = Messages((Message(1, b"a", 1), Message(2, b"bcd", 4), Message(3, b"", 2)))
    assert split_messages(messages.body()) == ((1, 2, 3), (1, 4, 2), (b"a", b"bcd", b""))


def test_messages_columns_are_the_wire_columns() -> None:
    messages = Messages((Message(1, b"ab", 1), Message(2**64 - 1, b"cd", 9)))
    count, ids, deliveries, lengths, payloads = messages_columns(messages.body())
    assert count == 2
    assert ids == U64.pack(1) + U64.pack(2**64 - 1)
    assert deliveries == U32.pack(1) + U32.pack(9)
    assert lengths == U32.pack(2) * 2
    assert payloads == b"abcd"
    assert messages_columns(Messages(()).body()) == (0, b"", b"", b"", b"")
    assert Message(5, b"x").body()[MESSAGE_ID] == U64.pack(5)


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00", U32.pack(1) + bytes(15), U32.pack(2**32 - 1)])
def test_messages_columns_refuse_columns_past_the_body(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        messages_columns(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x01q", b"\x01q" + bytes(12), b"\x01q" + bytes(13) + b"x", b"\x01q" + bytes(12) + b"\x05ab"],
    ids=["empty", "no options", "no dead-letter byte", "trailing byte", "dead-letter name past the end"],
)
def test_split_create_queue_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        split_create_queue(body)


# --- the bulk codecs build what encode builds -------------------------------------------------------------


def test_batch_frames_match_encode() -> None:
    ids, deliveries, payloads = [1, 2**63, 3], [1, 2, 7], [b"", b"xyz", b"q" * 300]
    expected = encode(9, Messages(tuple(map(Message, ids, payloads, deliveries))))
    assert messages_frame(9, ids, deliveries, payloads) == expected
    # The same frame from columns already packed, in pieces (as slabs keep them).
    columns = messages_frame_of_columns(
        9,
        3,
        (U64.pack(1), U64.pack(2**63) + U64.pack(3)),
        [U32.pack(1) + U32.pack(2), U32.pack(7)],
        (U32.pack(0) + U32.pack(3), U32.pack(300)),
        (b"xyz", b"q" * 300),
    )
    assert columns == expected
    assert messages_frame(4, [], [], []) == encode(4, Messages(()))
    assert objects_queued_frame(5, U64.pack(10) + U64.pack(11)) == encode(5, ObjectsQueued((10, 11)))
    assert confirm_results_frame(6, bytes([0, 1, 2])) == encode(6, ConfirmResults((0, 1, 2)))
    assert error_frame(7, 3, "nope") == encode(7, Error(3, "nope"))


# --- cut_alike: frames of one size in one call, anything else left to the FrameReader ------------------


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    reader = FrameReader(1 << 20)
    frames = reader.feed(data)
    assert reader.failure is None and reader.buffered == 0
    return frames


def test_cut_alike_cuts_what_the_frame_reader_cuts() -> None:
    rng = random.Random(3)
    replies = [encode(rng.getrandbits(32), ObjectQueued(rng.getrandbits(64))) for _ in range(40)]
    data = b"".join(replies)
    layouts: dict[tuple[int, int], typing.Any] = {}
    alike = cut_alike(data, 100, layouts)
    assert alike is not None and layouts
    frames = frames_of(data)
    assert list(alike.opcodes) == [opcode for opcode, _, _, _ in frames]
    assert list(alike.request_ids) == [request_id for _, _, request_id, _ in frames]
    assert list(alike.lengths) == [len(body) for _, _, _, body in frames]
    assert list(alike.bodies) == [body for _, _, _, body in frames]


@pytest.mark.parametrize(
    "data, max_body",
    [
        (b"", 100),
        (encode(1, ObjectQueued(1)) + encode(2, Empty()), 100),  # two sizes
        (encode(1, ObjectQueued(1))[:-1], 100),  # a partial frame
        (encode(1, ObjectQueued(1)) * (MAX_RUN + 1), 100),  # more than one layout takes
        (encode(1, ObjectQueued(1)) * 2, 7),  # bodies over the limit
        (encode(1, ObjectQueued(1)) + b"\x00" + encode(2, ObjectQueued(2))[1:], 100),  # bad magic
        (encode(1, ObjectQueued(1)) + encode(2, ObjectQueued(2), flags=1), 100),  # flags
        (HEADER.pack(MAGIC, 0x90, 0, 1, 8) + bytes(8) + HEADER.pack(MAGIC, 0x90, 0, 2, 0) + bytes(8), 100),
    ],
    ids=["nothing", "two sizes", "partial", "too many", "over the limit", "magic", "flags", "a length lies"],
)
def test_cut_alike_leaves_anything_else(data: bytes, max_body: int) -> None:
    assert cut_alike(data, max_body, {}) is None


# --- nothing outside the protocol reads a body at a literal offset -----------------------------------------

SRC = Path(dbqueue.__file__).parent
# Modules that read or build frames besides the protocol package: they must use its layouts' names.
READERS = ["server/session.py", "server/fastpath.py", "server/admission.py", "server/host.py", "loadtest.py"]


def literal_offsets(source: str) -> list[str]:
    """Subscripts by an integer literal other than 0 and 1, or slices with a literal bound or step
    other than 0 (``data[20]``, ``data[21:]``, ``body[:8]``, ``values[1::6]``): offsets into a body,
    a header or a struct's fields, which only the protocol package may know."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Subscript):
            continue
        index = node.slice
        if isinstance(index, ast.Slice):
            literals = [part for part in (index.lower, index.upper, index.step) if part is not None]
            allowed = {0}
        else:
            literals, allowed = [index], {0, 1}
        for part in literals:
            if isinstance(part, ast.UnaryOp) and isinstance(part.op, ast.USub):
                part = part.operand
            if isinstance(part, ast.Constant) and type(part.value) is int and part.value not in allowed:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
                break
    return found


@pytest.mark.parametrize("module", READERS)
def test_no_literal_offsets_outside_the_protocol(module: str) -> None:
    assert literal_offsets((SRC / module).read_text(encoding="utf-8")) == []


def test_the_offset_check_catches_offsets() -> None:
    source = "a = data[20]\nb = data[21:]\nc = body[:8]\nd = values[1::6]\ne = x[-2]\nok = (replies[0], peer[1], y[i:])"
    assert len(literal_offsets(source)) == 5

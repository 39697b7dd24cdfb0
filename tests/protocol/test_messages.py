"""Every message type survives encode -> FrameReader -> decode; malformed bodies raise InvalidRequest."""

from __future__ import annotations

import struct

import pytest

from dbqueue.errors import ErrorCode, InvalidQueueName, InvalidRequest, UnknownOpcode
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Confirm,
    Confirmed,
    CreateQueue,
    DeleteQueue,
    Empty,
    Enqueue,
    Error,
    FrameReader,
    Full,
    Hello,
    HelloOk,
    Message,
    ObjectQueued,
    Op,
    QueueCreated,
    QueueDeleted,
    Read,
    Requeued,
    decode_request,
    decode_response,
    encode,
)
from dbqueue.protocol.messages import encode_name, split_enqueue, split_name, split_read

LONGEST_NAME = "n" * 255

REQUESTS = [
    Hello(),
    Hello(0),
    Hello(0xFFFF),
    CreateQueue("jobs"),
    CreateQueue("jobs", 10),
    CreateQueue(LONGEST_NAME, 2**64 - 1),
    CreateQueue("ünïcödé-名前"),
    DeleteQueue("jobs"),
    DeleteQueue(LONGEST_NAME),
    Enqueue("jobs", b""),
    Enqueue("jobs", b"hello"),
    Enqueue("q", bytes(range(256)) * 100),
    Read("jobs"),
    Read("jobs", 30_000),
    Read("q", 0xFFFFFFFF),
    Confirm(0),
    Confirm(1),
    Confirm(2**64 - 1),
]

RESPONSES = [
    HelloOk(PROTOCOL_VERSION, 1024 * 1024, "dbqueue/0.1.0"),
    HelloOk(1, 0, ""),
    QueueCreated(),
    QueueDeleted(),
    ObjectQueued(0),
    ObjectQueued(2**64 - 1),
    Message(1, b"data"),
    Message(2**64 - 1, b"", 0xFFFFFFFF),
    Message(5, bytes(range(256)), 3),
    Confirmed(),
    Requeued(),
    Full(),
    Empty(),
    Error(ErrorCode.NO_SUCH_QUEUE, "no queue named 'x'"),
    Error(ErrorCode.INTERNAL, ""),
    Error(0xFFFF, "ünïcödé"),
]


def _through_reader(frames: bytes, one_byte_at_a_time: bool) -> list[tuple[int, int, int, bytes]]:
    reader = FrameReader(64 * 1024 * 1024)
    if one_byte_at_a_time:
        out = [f for i in range(len(frames)) for f in reader.feed(frames[i : i + 1])]
    else:
        out = reader.feed(frames)
    assert reader.failure is None
    assert reader.buffered == 0
    return out


@pytest.mark.parametrize("one_byte_at_a_time", [False, True], ids=["whole", "bytewise"])
def test_every_request_round_trips(one_byte_at_a_time: bool) -> None:
    stream = b"".join(encode(i + 1, request) for i, request in enumerate(REQUESTS))
    frames = _through_reader(stream, one_byte_at_a_time)
    assert [request_id for _, _, request_id, _ in frames] == list(range(1, len(REQUESTS) + 1))
    assert [flags for _, flags, _, _ in frames] == [0] * len(REQUESTS)
    assert [opcode for opcode, _, _, _ in frames] == [type(r).OPCODE for r in REQUESTS]
    assert [decode_request(opcode, body) for opcode, _, _, body in frames] == REQUESTS


@pytest.mark.parametrize("one_byte_at_a_time", [False, True], ids=["whole", "bytewise"])
def test_every_response_round_trips(one_byte_at_a_time: bool) -> None:
    stream = b"".join(encode(1000 + i, response) for i, response in enumerate(RESPONSES))
    frames = _through_reader(stream, one_byte_at_a_time)
    assert [request_id for _, _, request_id, _ in frames] == [1000 + i for i in range(len(RESPONSES))]
    decoded = [decode_response(opcode, body) for opcode, _, _, body in frames]
    assert decoded == RESPONSES
    assert [type(d) for d in decoded] == [type(r) for r in RESPONSES]


def test_every_message_type_is_covered() -> None:
    """A new message type must join the round-trip lists above."""
    assert {type(r) for r in REQUESTS} == {Hello, CreateQueue, DeleteQueue, Enqueue, Read, Confirm}
    assert {type(r) for r in RESPONSES} == {
        HelloOk, QueueCreated, QueueDeleted, ObjectQueued, Message, Confirmed, Requeued, Full, Empty, Error,
    }


def test_encode_carries_flags_and_exact_layout() -> None:
    data = encode(0x01020304, Confirm(0x1122334455667788), flags=0xBEEF)
    assert data == bytes([0xDB, 0x12, 0xBE, 0xEF, 1, 2, 3, 4, 0, 0, 0, 8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88])
    assert encode(7, Read("ab", 258)) == HEADER.pack(MAGIC, Op.READ, 0, 7, 7) + b"\x00\x00\x01\x02\x02ab"
    assert encode(9, Empty()) == HEADER.pack(MAGIC, Op.EMPTY, 0, 9, 0)


def test_bare_responses_are_singletons_and_compare_by_type() -> None:
    assert decode_response(Op.FULL, b"") is Full.INSTANCE  # type: ignore[attr-defined]
    assert Full() == Full()
    assert Full() != Empty()
    assert hash(Confirmed()) == hash(Confirmed())
    assert repr(Requeued()) == "Requeued()"


def test_dataclasses_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Read("q").timeout_ms = 5  # type: ignore[misc]


# --- malformed request bodies ---------------------------------------------------------

MALFORMED = [
    # (opcode, body, exception class)
    (Op.READ, b"", InvalidRequest),  # truncated: no timeout
    (Op.READ, b"\x00\x00\x00", InvalidRequest),  # truncated timeout
    (Op.READ, b"\x00\x00\x00\x01", InvalidRequest),  # timeout, no name
    (Op.READ, b"\x00\x00\x00\x01\x00", InvalidQueueName),  # empty name
    (Op.READ, b"\x00\x00\x00\x01\x05abc", InvalidRequest),  # name length past the end
    (Op.READ, b"\x00\x00\x00\x01\x01ab", InvalidRequest),  # trailing bytes
    (Op.READ, b"\x00\x00\x00\x01\x02\xff\xfe", InvalidQueueName),  # bad UTF-8
    (Op.ENQUEUE, b"", InvalidRequest),  # no name at all
    (Op.ENQUEUE, b"\x00payload", InvalidQueueName),  # empty name
    (Op.ENQUEUE, b"\x09abc", InvalidRequest),  # name length past the end
    (Op.ENQUEUE, b"\x02\xc3\x28data", InvalidQueueName),  # bad UTF-8
    (Op.CREATE_QUEUE, b"\x00" + bytes(8), InvalidQueueName),
    (Op.CREATE_QUEUE, b"\x01q" + bytes(7), InvalidRequest),  # capacity too short
    (Op.CREATE_QUEUE, b"\x01q" + bytes(9), InvalidRequest),  # capacity too long
    (Op.CREATE_QUEUE, b"\x03q", InvalidRequest),
    (Op.CREATE_QUEUE, b"\x01\x80" + bytes(8), InvalidQueueName),
    (Op.DELETE_QUEUE, b"", InvalidRequest),
    (Op.DELETE_QUEUE, b"\x00", InvalidQueueName),
    (Op.DELETE_QUEUE, b"\x01qq", InvalidRequest),  # trailing bytes
    (Op.DELETE_QUEUE, b"\x01\xff", InvalidQueueName),
    (Op.CONFIRM, b"", InvalidRequest),
    (Op.CONFIRM, bytes(7), InvalidRequest),
    (Op.CONFIRM, bytes(9), InvalidRequest),
    (Op.HELLO, b"", InvalidRequest),
    (Op.HELLO, b"\x00\x01\x00", InvalidRequest),
    (0x00, b"", UnknownOpcode),
    (0x7F, b"abc", UnknownOpcode),
    (Op.MESSAGE, bytes(12), UnknownOpcode),  # a response opcode is no request
]


@pytest.mark.parametrize(("opcode", "body", "exc_class"), MALFORMED, ids=[repr(m[1]) for m in MALFORMED])
def test_malformed_request_bodies(opcode: int, body: bytes, exc_class: type[InvalidRequest]) -> None:
    with pytest.raises(exc_class) as info:
        decode_request(opcode, body)
    assert isinstance(info.value, InvalidRequest)
    # The class is exactly the expected one, not merely a relative.
    assert type(info.value) is exc_class


def test_malformed_error_codes_match_classes() -> None:
    assert InvalidRequest.code == ErrorCode.MALFORMED
    assert InvalidQueueName.code == ErrorCode.INVALID_QUEUE_NAME
    assert UnknownOpcode.code == ErrorCode.UNKNOWN_OPCODE


MALFORMED_RESPONSES = [
    (Op.HELLO_OK, b"\x00\x01\x00"),
    (Op.OBJECT_QUEUED, bytes(7)),
    (Op.MESSAGE, bytes(11)),
    (Op.ERROR, b"\x00"),
    (Op.EMPTY, b"x"),
    (Op.CONFIRMED, bytes(8)),
    (Op.HELLO, b"\x00\x01"),  # a request opcode is no response
    (0x00, b""),
]


@pytest.mark.parametrize(("opcode", "body"), MALFORMED_RESPONSES)
def test_malformed_response_bodies(opcode: int, body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_response(opcode, body)


# --- the body helpers the server's hot path uses --------------------------------------


def test_split_helpers_agree_with_the_dataclasses() -> None:
    assert split_enqueue(Enqueue("q1", b"\x00data").body()) == (b"q1", b"\x00data")
    assert split_read(Read("q1", 1234).body()) == (b"q1", 1234)
    assert split_name(b"xx\x02abyy", 2) == (b"ab", 5)


@pytest.mark.parametrize("name", ["", "x" * 256, "é" * 128])
def test_encode_name_refuses_bad_lengths(name: str) -> None:
    with pytest.raises(InvalidQueueName):
        encode_name(name)
    with pytest.raises(InvalidQueueName):
        encode(1, Enqueue(name, b"data"))


def test_encode_name_accepts_255_bytes_of_utf8() -> None:
    name = "é" * 127 + "x"  # 255 bytes
    assert encode_name(name) == b"\xff" + name.encode()
    assert decode_request(Op.DELETE_QUEUE, DeleteQueue(name).body()) == DeleteQueue(name)


def test_encode_name_refuses_unencodable_names() -> None:
    with pytest.raises(InvalidQueueName):
        encode_name("bad\udc80name")


def test_struct_layouts() -> None:
    # The fixed fields documented for each body.
    assert Read("q", 5).body()[:4] == struct.pack(">I", 5)
    assert Message(1, b"p", 2).body() == struct.pack(">QI", 1, 2) + b"p"
    assert HelloOk(1, 2, "s").body() == struct.pack(">HI", 1, 2) + b"s"
    assert Error(5, "m").body() == b"\x00\x05m"

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
from dbqueue.protocol.layouts import READ_BATCH_HEAD, encode_name, split_enqueue, split_name, split_read
from dbqueue.protocol.messages import (
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Cancel,
    Cancelled,
    ConfirmBatch,
    ConfirmResults,
    DeadLetter,
    DeadLettered,
    EnqueueBatch,
    EnqueueDelayed,
    ListQueues,
    Members,
    MembersReply,
    Messages,
    Move,
    Moved,
    ObjectsQueued,
    Origin,
    Peek,
    Peeked,
    PeekedMessage,
    Purge,
    Purged,
    ReadBatch,
    Release,
    Released,
    Stats,
    StatsReply,
    Touch,
    Touched,
)

LONGEST_NAME = "n" * 255

REQUESTS = [
    Cancel(7),
    Hello(1, b"s3cret-token"),
    Members(),
    Hello(),
    Hello(0),
    Hello(0xFFFF),
    CreateQueue("jobs"),
    CreateQueue("jobs", 10),
    CreateQueue(LONGEST_NAME, 2**64 - 1),
    CreateQueue("ünïcödé-名前"),
    CreateQueue("jobs", 10, 3, "dead"),
    CreateQueue("jobs", 0, 0xFFFFFFFF, LONGEST_NAME),
    CreateQueue("ünï", 0, 1, "名前"),
    DeleteQueue("jobs"),
    DeleteQueue(LONGEST_NAME),
    Enqueue("jobs", b""),
    Enqueue("jobs", b"hello"),
    Enqueue("q", bytes(range(256)) * 100),
    Read("jobs"),
    Read("jobs", 30_000),
    Read("q", 0xFFFFFFFF),
    Read("jobs", 0, 5_000),
    Read("q", 0xFFFFFFFF, 0xFFFFFFFF),
    Confirm(0),
    Confirm(1),
    Confirm(2**64 - 1),
    Purge("jobs"),
    Purge(LONGEST_NAME),
    Stats("jobs"),
    Stats("名前"),
    ListQueues(),
    EnqueueDelayed("jobs", b"later", 1_500),
    EnqueueDelayed("q", b"", 0),
    EnqueueDelayed(LONGEST_NAME, bytes(range(256)), 0xFFFFFFFF),
    EnqueueBatch("jobs", (b"one",)),
    EnqueueBatch("jobs", (b"", b"two", bytes(range(256)) * 3, b"")),
    ReadBatch("jobs", 1),
    ReadBatch("jobs", 0xFFFF, 30_000, 0xFFFFFFFF),
    ReadBatch(LONGEST_NAME, 7, 0, 250),
    ConfirmBatch((1,)),
    ConfirmBatch((0, 2**64 - 1, 5, 5)),
    Touch(1, 0),
    Touch(2**64 - 1, 0xFFFFFFFF),
    Release(1),
    Release(7, 250),
    Release(2**64 - 1, 0xFFFFFFFF),
    CreateQueue("jobs", 0, 0, "", 30_000),
    CreateQueue("jobs", 1, 2, "dead", 0xFFFFFFFF),
    Peek("jobs"),
    Peek("jobs", 0xFFFF, True, True),
    Peek(LONGEST_NAME, 1, False, True),
    Move("dead", "jobs"),
    Move(LONGEST_NAME, "名前", 0xFFFFFFFF),
    DeadLetter(0),
    DeadLetter(2**64 - 1),
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
    Purged(0),
    Purged(2**64 - 1),
    StatsReply({}),
    MembersReply(("127.0.0.1:3000", "10.0.0.2:3000"), 1),
    MembersReply((), 0),
    Cancelled.INSTANCE,
    StatsReply({"name": "名前", "ready": 3, "in_flight": 0, "dead_letter_queue": None}),
    StatsReply({"server": "dbqueue/0.1.0", "connections": 2, "queues": [{"name": "q", "ready": 1}]}),
    ObjectsQueued((1,)),
    ObjectsQueued((5, 6, 2**64 - 1)),
    Messages(()),
    Messages((Message(1, b"a"),)),
    Messages((Message(2, b"", 0xFFFFFFFF), Message(2**64 - 1, bytes(range(256)) * 3, 2), Message(4, b"x", 1))),
    ConfirmResults((0,)),
    ConfirmResults((0, 1, 2, 2, 0)),
    Touched(),
    Released(),
    Peeked(()),
    Peeked(
        (
            PeekedMessage(1, b"a", 0, "ready", 1_700_000_000.5),
            PeekedMessage(2**64 - 1, b"", 0xFFFFFFFF, "in_flight", 0.0, Origin("名前", 9, 1_600_000_000.25, 3)),
            PeekedMessage(3, bytes(range(256)), 1, "delayed", 1.001),
        )
    ),
    Moved(0),
    Moved(2**64 - 1),
    DeadLettered(),
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
    assert {type(r) for r in REQUESTS} == set(REQUEST_TYPES)
    assert {type(r) for r in RESPONSES} == set(RESPONSE_TYPES)
    # Every opcode is exactly one type's, and requests and responses stay on their sides of 0x80.
    assert len({cls.OPCODE for cls in REQUEST_TYPES + RESPONSE_TYPES}) == len(REQUEST_TYPES + RESPONSE_TYPES)
    assert all(cls.OPCODE < 0x80 for cls in REQUEST_TYPES)
    assert all(cls.OPCODE >= 0x80 for cls in RESPONSE_TYPES)
    assert {int(op) for op in Op} == {cls.OPCODE for cls in REQUEST_TYPES + RESPONSE_TYPES}


def test_encode_carries_flags_and_exact_layout() -> None:
    data = encode(0x01020304, Confirm(0x1122334455667788), flags=0xBEEF)
    assert data == bytes(
        [0xDB, 0x12, 0xBE, 0xEF, 1, 2, 3, 4, 0, 0, 0, 8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    )
    assert encode(7, Read("ab", 258, 0x01020304)) == (
        HEADER.pack(MAGIC, Op.READ, 0, 7, 11) + b"\x00\x00\x01\x02" + b"\x01\x02\x03\x04" + b"\x02ab"
    )
    assert encode(8, CreateQueue("q", 5, 3, "dl")) == (
        HEADER.pack(MAGIC, Op.CREATE_QUEUE, 0, 8, 21) + b"\x01q" + struct.pack(">QII", 5, 3, 0) + b"\x02dl"
    )
    assert encode(8, CreateQueue("q")) == HEADER.pack(MAGIC, Op.CREATE_QUEUE, 0, 8, 19) + b"\x01q" + bytes(17)
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

TIMES = bytes(8)  # READ's timeout_ms and wait_ms


def batch_of(*payloads: bytes) -> bytes:
    """An ENQUEUE_BATCH body after the name: u32 count, a u32 length each, the payloads."""
    return struct.pack(f">I{len(payloads)}I", len(payloads), *map(len, payloads)) + b"".join(payloads)


def messages_of(*entries: tuple[int, int, bytes]) -> bytes:
    """A MESSAGES body: u32 count, then the ids, deliveries and lengths columns, then the payloads."""
    ids, deliveries, payloads = zip(*entries) if entries else ((), (), ())
    count = len(entries)
    return struct.pack(f">I{count}Q{count}I{count}I", count, *ids, *deliveries, *map(len, payloads)) + b"".join(
        payloads
    )


NO_OPTIONS = bytes(17)  # CREATE_QUEUE's capacity, max_deliveries, visibility timeout and no dead-letter name

MALFORMED = [
    # (opcode, body, exception class)
    (Op.READ, b"", InvalidRequest),  # truncated: no timeout
    (Op.READ, b"\x00\x00\x00", InvalidRequest),  # truncated timeout
    (Op.READ, TIMES, InvalidRequest),  # timeout and wait, no name
    (Op.READ, TIMES[:7] + b"\x01q", InvalidRequest),  # truncated wait: the name byte is read as wait
    (Op.READ, b"\x00\x00\x00\x01\x01q", InvalidRequest),  # the old layout (no wait_ms)
    (Op.READ, TIMES + b"\x00", InvalidQueueName),  # empty name
    (Op.READ, TIMES + b"\x00ab", InvalidQueueName),  # empty name, then bytes
    (Op.READ, TIMES + b"\x05abc", InvalidRequest),  # name length past the end
    (Op.READ, TIMES + b"\x01ab", InvalidRequest),  # trailing bytes
    (Op.READ, TIMES + b"\x02\xff\xfe", InvalidQueueName),  # bad UTF-8
    (Op.ENQUEUE, b"", InvalidRequest),  # no name at all
    (Op.ENQUEUE, b"\x00payload", InvalidQueueName),  # empty name
    (Op.ENQUEUE, b"\x09abc", InvalidRequest),  # name length past the end
    (Op.ENQUEUE, b"\x02\xc3\x28data", InvalidQueueName),  # bad UTF-8
    (Op.CREATE_QUEUE, b"\x00" + NO_OPTIONS, InvalidQueueName),
    (Op.CREATE_QUEUE, b"\x01q", InvalidRequest),  # no options at all
    (Op.CREATE_QUEUE, b"\x01q" + bytes(7), InvalidRequest),  # capacity cut short
    (Op.CREATE_QUEUE, b"\x01q" + bytes(11), InvalidRequest),  # max_deliveries cut short
    (Op.CREATE_QUEUE, b"\x01q" + bytes(15), InvalidRequest),  # visibility timeout cut short
    (Op.CREATE_QUEUE, b"\x01q" + bytes(16), InvalidRequest),  # no dead-letter name byte
    (Op.CREATE_QUEUE, b"\x01q" + bytes(8), InvalidRequest),  # the old layout (capacity only)
    (Op.CREATE_QUEUE, b"\x01q" + bytes(13), InvalidRequest),  # version 2's layout, no visibility timeout
    (Op.CREATE_QUEUE, b"\x01q" + NO_OPTIONS + b"x", InvalidRequest),  # trailing bytes
    (Op.CREATE_QUEUE, b"\x01q" + bytes(16) + b"\x02d", InvalidRequest),  # dead-letter name past the end
    (Op.CREATE_QUEUE, b"\x01q" + bytes(16) + b"\x01dx", InvalidRequest),  # trailing bytes after it
    (Op.CREATE_QUEUE, b"\x01q" + bytes(16) + b"\x01\xff", InvalidQueueName),  # dead-letter name bad UTF-8
    (Op.CREATE_QUEUE, b"\x03q", InvalidRequest),
    (Op.CREATE_QUEUE, b"\x01\x80" + NO_OPTIONS, InvalidQueueName),
    (Op.DELETE_QUEUE, b"", InvalidRequest),
    (Op.DELETE_QUEUE, b"\x00", InvalidQueueName),
    (Op.DELETE_QUEUE, b"\x01qq", InvalidRequest),  # trailing bytes
    (Op.DELETE_QUEUE, b"\x01\xff", InvalidQueueName),
    (Op.PURGE, b"", InvalidRequest),
    (Op.PURGE, b"\x00", InvalidQueueName),
    (Op.PURGE, b"\x01qq", InvalidRequest),  # trailing bytes
    (Op.STATS, b"", InvalidRequest),
    (Op.STATS, b"\x02q", InvalidRequest),  # name past the end
    (Op.STATS, b"\x01\xff", InvalidQueueName),
    (Op.LIST_QUEUES, b"x", InvalidRequest),
    (Op.ENQUEUE_DELAYED, b"", InvalidRequest),
    (Op.ENQUEUE_DELAYED, b"\x01q", InvalidRequest),  # no delay_ms
    (Op.ENQUEUE_DELAYED, b"\x01q\x00\x00\x00", InvalidRequest),  # delay_ms cut short
    (Op.ENQUEUE_DELAYED, b"\x00" + bytes(4), InvalidQueueName),
    (Op.ENQUEUE_DELAYED, b"\x01\xff" + bytes(4), InvalidQueueName),
    (Op.ENQUEUE_BATCH, b"", InvalidRequest),
    (Op.ENQUEUE_BATCH, b"\x01q", InvalidRequest),  # no count
    (Op.ENQUEUE_BATCH, b"\x01q" + batch_of(), InvalidRequest),  # an empty batch
    (Op.ENQUEUE_BATCH, b"\x00" + batch_of(b"a"), InvalidQueueName),
    (Op.ENQUEUE_BATCH, b"\x01q\x00\x00\x00", InvalidRequest),  # count cut short
    (Op.ENQUEUE_BATCH, b"\x01q" + batch_of(b"a", b"b")[:10], InvalidRequest),  # length column cut short
    (Op.ENQUEUE_BATCH, b"\x01q" + batch_of(b"abcde")[:-1], InvalidRequest),  # payload past the end
    (Op.ENQUEUE_BATCH, b"\x01q" + batch_of(b"a") + b"x", InvalidRequest),  # a byte after the payloads
    (Op.ENQUEUE_BATCH, b"\x01q" + batch_of(b"a", b"bc")[:-1], InvalidRequest),  # the second one cut
    (Op.ENQUEUE_BATCH, b"\x01q" + struct.pack(">I", 0xFFFFFFFF), InvalidRequest),  # 4 G messages announced
    (Op.ENQUEUE_BATCH, b"\x01q" + struct.pack(">II", 1, 0xFFFFFFFF), InvalidRequest),  # 4 GiB announced
    (Op.READ_BATCH, b"", InvalidRequest),
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1)[:9], InvalidRequest),  # head cut short
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1), InvalidRequest),  # no name
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 0) + b"\x01q", InvalidRequest),  # max_messages 0
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1) + b"\x00", InvalidQueueName),
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1) + b"\x03ab", InvalidRequest),  # name past the end
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1) + b"\x01qx", InvalidRequest),  # trailing bytes
    (Op.READ_BATCH, READ_BATCH_HEAD.pack(0, 0, 1) + b"\x02\xc3\x28", InvalidQueueName),
    (Op.CONFIRM_BATCH, b"", InvalidRequest),  # no id
    (Op.CONFIRM_BATCH, bytes(7), InvalidRequest),  # not a multiple of 8
    (Op.CONFIRM_BATCH, bytes(9), InvalidRequest),
    (Op.CONFIRM_BATCH, bytes(23), InvalidRequest),
    (Op.TOUCH, b"", InvalidRequest),
    (Op.TOUCH, bytes(8), InvalidRequest),  # id only
    (Op.TOUCH, bytes(13), InvalidRequest),
    (Op.RELEASE, bytes(11), InvalidRequest),
    (Op.RELEASE, bytes(8), InvalidRequest),  # id only: delay_ms is not optional on the wire
    (Op.RELEASE, bytes(13), InvalidRequest),
    (Op.DEAD_LETTER, b"", InvalidRequest),
    (Op.DEAD_LETTER, bytes(7), InvalidRequest),
    (Op.DEAD_LETTER, bytes(12), InvalidRequest),  # no delay: the id and nothing else
    (Op.DEAD_LETTERED, b"", UnknownOpcode),  # a response opcode is no request
    (Op.PURGED, bytes(8), UnknownOpcode),  # a response opcode is no request
    (Op.CONFIRM, b"", InvalidRequest),
    (Op.CONFIRM, bytes(7), InvalidRequest),
    (Op.CONFIRM, bytes(9), InvalidRequest),
    (Op.HELLO, b"", InvalidRequest),
    (Op.HELLO, b"\x00", InvalidRequest),
    (0x00, b"", UnknownOpcode),
    (0x7F, b"abc", UnknownOpcode),
    (Op.MESSAGE, bytes(12), UnknownOpcode),  # a response opcode is no request
]


def _case_id(opcode: int, body: bytes) -> str:
    name = Op(opcode).name if opcode in Op._value2member_map_ else f"0x{opcode:02x}"
    return f"{name}-{body!r}"


@pytest.mark.parametrize(("opcode", "body", "exc_class"), MALFORMED, ids=[_case_id(*m[:2]) for m in MALFORMED])
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
    (Op.PURGED, bytes(7)),
    (Op.PURGED, bytes(9)),
    (Op.STATS_REPLY, b""),
    (Op.STATS_REPLY, b"not json"),
    (Op.STATS_REPLY, b"[1, 2]"),  # JSON, but not an object
    (Op.STATS_REPLY, b'"text"'),
    (Op.STATS_REPLY, b"\xff\xfe\x00"),  # not UTF-8
    (Op.OBJECTS_QUEUED, bytes(7)),
    (Op.OBJECTS_QUEUED, bytes(12)),
    (Op.MESSAGES, b""),  # no count
    (Op.MESSAGES, messages_of((1, 1, b"a"))[:15]),  # columns cut short
    (Op.MESSAGES, messages_of((1, 1, b"abcde"))[:-1]),  # payload past the end
    (Op.MESSAGES, messages_of((1, 1, b"a")) + b"x"),  # a byte after the payloads
    (Op.MESSAGES, messages_of((1, 1, b"a"), (2, 1, b"bc"))[:-1]),  # the second one cut
    (Op.CONFIRM_RESULTS, b"\x03"),  # outcomes are 0, 1, 2
    (Op.CONFIRM_RESULTS, b"\x00\x01\x02\xff"),
    (Op.TOUCHED, b"x"),
    (Op.RELEASED, bytes(8)),
    (Op.PURGE, b"\x01q"),  # a request opcode is no response
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
    assert split_read(Read("q1", 1234).body()) == (b"q1", 1234, 0)
    assert split_read(Read("q1", 1234, 0xFFFFFFFF).body()) == (b"q1", 1234, 0xFFFFFFFF)
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


def test_deeply_nested_stats_reply_is_refused_as_malformed() -> None:
    with pytest.raises(InvalidRequest):
        decode_response(Op.STATS_REPLY, b"[" * 100_000)


def test_struct_layouts() -> None:
    # The fixed fields documented for each body.
    assert Read("q", 5).body()[:8] == struct.pack(">II", 5, 0)
    assert Read("q", 5, 7).body() == struct.pack(">II", 5, 7) + b"\x01q"
    assert Message(1, b"p", 2).body() == struct.pack(">QI", 1, 2) + b"p"
    assert HelloOk(1, 2, "s").body() == struct.pack(">HI", 1, 2) + b"s"
    assert Error(5, "m").body() == b"\x00\x05m"


def test_new_struct_layouts() -> None:
    """The exact bytes of every body added with batches, delays, touch/release and stats."""
    u32, u64 = struct.Struct(">I").pack, struct.Struct(">Q").pack
    assert CreateQueue("q", 5, 3, "dl").body() == b"\x01q" + u64(5) + u32(3) + u32(0) + b"\x02dl"
    assert CreateQueue("q", 5).body() == b"\x01q" + u64(5) + u32(0) + u32(0) + b"\x00"
    assert Purge("q").body() == b"\x01q"
    assert Stats("ab").body() == b"\x02ab"
    assert ListQueues().body() == b""
    assert EnqueueDelayed("q", b"pay", 0x01020304).body() == b"\x01q\x01\x02\x03\x04pay"
    assert EnqueueBatch("q", (b"a", b"", b"bc")).body() == b"\x01q" + u32(3) + u32(1) + u32(0) + u32(2) + b"abc"
    assert ReadBatch("q", 3, 5, 7).body() == u32(5) + u32(7) + b"\x00\x03" + b"\x01q"
    assert ConfirmBatch((1, 2**64 - 1)).body() == u64(1) + u64(2**64 - 1)
    assert Touch(9, 5).body() == u64(9) + u32(5)
    assert Release(9).body() == u64(9) + u32(0)
    assert Release(9, 6).body() == u64(9) + u32(6)
    assert Purged(3).body() == u64(3)
    assert StatsReply({"a": 1, "b": [None]}).body() == b'{"a":1,"b":[null]}'
    assert ObjectsQueued((1, 2)).body() == u64(1) + u64(2)
    assert Messages((Message(1, b"ab", 2), Message(3, b"", 1))).body() == (
        u32(2) + u64(1) + u64(3) + u32(2) + u32(1) + u32(2) + u32(0) + b"ab"
    )
    assert Messages(()).body() == u32(0)
    assert ConfirmResults((0, 1, 2)).body() == b"\x00\x01\x02"
    assert Touched().body() == Released().body() == b""
    assert decode_response(Op.TOUCHED, b"") is Touched.INSTANCE  # type: ignore[attr-defined]
    assert Touched() != Released()


@pytest.mark.parametrize(
    "items",
    [
        (b"x" * 128,) * 100,  # one size: cut by one struct call
        (b"",) * 7,
        (b"ab",) * 256,
        (b"ab",) * 257,  # past the one-call limit: cut one by one
        (b"x" * 128,) * 99 + (b"y" * 127,),  # one odd size
        tuple(bytes([n]) * n for n in range(40)),
    ],
    ids=["128x100", "empty", "256", "257", "odd-one", "mixed"],
)
def test_batch_payloads_are_cut_whatever_their_sizes(items: tuple[bytes, ...]) -> None:
    """Batches of one payload size take a faster cut than mixed ones: both give the same payloads."""
    assert EnqueueBatch.from_body(EnqueueBatch("q", items).body()) == EnqueueBatch("q", items)
    messages = Messages(tuple(Message(id_, data, 1) for id_, data in enumerate(items, 1)))
    assert Messages.from_body(messages.body()) == messages

"""Protocol 3's new and changed layouts, byte by byte (the transcripts of docs/protocol.md), fed to a
reader one byte at a time, and their malformed bodies refused."""

from __future__ import annotations

import pytest

from dbqueue.errors import InvalidQueueName, InvalidRequest
from dbqueue.protocol import (
    NEVER_MS,
    OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ClientConnection,
    Flag,
    FrameReader,
    Op,
)
from dbqueue.protocol import messages as msg

ORIGIN = msg.Origin("jobs", 7, 1_700_000_000.123, 5)
# The origin's wire form: id u64, enqueued_at ms u64, deliveries u32, then the name.
ORIGIN_BYTES = bytes.fromhex("00000000000000070000018bcfe5687b00000005") + b"\x04jobs"


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    reader = FrameReader(1 << 20)
    frames = [frame for i in range(len(data)) for frame in reader.feed(data[i : i + 1])]
    assert reader.failure is None and reader.buffered == 0
    return frames


def test_version_3_only() -> None:
    assert (PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION, NEVER_MS) == (3, 3, 0xFFFFFFFF)
    assert msg.encode(1, msg.Hello()) == bytes.fromhex("db 01 0000 00000001 00000002 0003")


def test_create_queue_carries_the_visibility_timeout() -> None:
    frame = msg.encode(2, msg.CreateQueue("q", 10, 3, "dl", 30_000))
    assert frame == bytes.fromhex(
        "db 02 0000 00000002 00000015"  # header: 21 bytes of body
        "01 71"  # name "q"
        "000000000000000a"  # capacity 10
        "00000003"  # max_deliveries 3
        "00007530"  # visibility_timeout_ms 30000
        "02 646c"  # dead-letter queue "dl"
    )
    ((opcode, flags, request_id, body),) = frames_of(frame)
    assert msg.decode_request(opcode, body) == msg.CreateQueue("q", 10, 3, "dl", 30_000)


def test_read_with_never() -> None:
    assert msg.encode(3, msg.Read("q", NEVER_MS, 0)) == bytes.fromhex(
        "db 11 0000 00000003 0000000a ffffffff 00000000 0171"
    )


def test_peek_layout() -> None:
    frame = msg.encode(4, msg.Peek("q", 10, delayed=True, in_flight=True))
    assert frame == bytes.fromhex("db 1a 0000 00000004 00000005 000a 03 0171")
    assert msg.Peek.from_body(bytes.fromhex("0001 01 0171")) == msg.Peek("q", 1, True, False)
    assert msg.Peek.from_body(bytes.fromhex("0001 02 0171")) == msg.Peek("q", 1, False, True)


def test_peeked_layout() -> None:
    peeked = msg.Peeked(
        (
            msg.PeekedMessage(9, b"hi", 0, "ready", 1_700_000_000.5),
            msg.PeekedMessage(12, b"x", 2, "in_flight", 1_700_000_001.0, ORIGIN),
        )
    )
    frame = msg.encode(5, peeked)
    body = (
        bytes.fromhex("00000002")  # count
        + bytes.fromhex("0000000000000009 00 00000000 0000018bcfe569f4 00000002 00")  # id, ready, 0, time, len, none
        + b"hi"
        + bytes.fromhex("000000000000000c 02 00000002 0000018bcfe56be8 00000001 01")  # in flight, with an origin
        + ORIGIN_BYTES
        + b"x"
    )
    assert frame == bytes.fromhex("db 9c 0000 00000005") + len(body).to_bytes(4, "big") + body
    ((opcode, flags, _, got),) = frames_of(frame)
    assert (opcode, flags) == (Op.PEEKED, 0) and msg.decode_response(opcode, got) == peeked


def test_move_and_moved_layouts() -> None:
    assert msg.encode(6, msg.Move("dead", "jobs")) == bytes.fromhex(
        "db 1b 0000 00000006 0000000e 00000000 04 64656164 04 6a6f6273"
    )
    assert msg.encode(6, msg.Move("a", "b", 5)) == bytes.fromhex("db 1b 0000 00000006 00000008 00000005 0161 0162")
    assert msg.encode(6, msg.Moved(600)) == bytes.fromhex("db 9d 0000 00000006 00000008 0000000000000258")


def test_a_message_with_an_origin_has_the_flag() -> None:
    frame = msg.encode(7, msg.Message(3, b"data", 1, ORIGIN))
    body = bytes.fromhex("0000000000000003 00000001") + ORIGIN_BYTES + b"data"
    assert frame == bytes.fromhex("db 91 0001 00000007") + len(body).to_bytes(4, "big") + body
    ((opcode, flags, _, got),) = frames_of(frame)
    assert flags == Flag.ORIGIN
    assert msg.decode_response(opcode, got, flags) == msg.Message(3, b"data", 1, ORIGIN)
    # Without an origin the frame is version 2's, flags 0.
    assert msg.encode(7, msg.Message(3, b"data", 1))[2:4] == b"\x00\x00"


def test_messages_with_origins_list_them_after_the_payloads() -> None:
    messages = msg.Messages((msg.Message(1, b"a"), msg.Message(2, b"bc", 1, ORIGIN)))
    frame = msg.encode(8, messages)
    body = (
        bytes.fromhex("00000002 0000000000000001 0000000000000002 00000001 00000001 00000001 00000002")
        + b"abc"
        + bytes.fromhex("00000001")  # the origin of message 1 of the batch (the second)
        + ORIGIN_BYTES
    )
    assert frame == bytes.fromhex("db 97 0001 00000008") + len(body).to_bytes(4, "big") + body
    ((opcode, flags, _, got),) = frames_of(frame)
    assert msg.decode_response(opcode, got, flags) == messages


def test_the_client_connection_decodes_flagged_replies() -> None:
    connection = ClientConnection()
    frame = msg.encode(1, msg.Message(3, b"data", 1, ORIGIN))
    assert connection.receive_data(frame) == [(1, msg.Message(3, b"data", 1, ORIGIN))]


@pytest.mark.parametrize(
    ("opcode", "body", "error"),
    [
        (Op.PEEK, b"", InvalidRequest),
        (Op.PEEK, bytes.fromhex("0000 00 0171"), InvalidRequest),  # count 0
        (Op.PEEK, bytes.fromhex("0001 04 0171"), InvalidRequest),  # an unknown state bit
        (Op.PEEK, bytes.fromhex("0001 00 0171 00"), InvalidRequest),  # trailing bytes
        (Op.PEEK, bytes.fromhex("0001 00 00"), InvalidQueueName),
        (Op.MOVE, bytes.fromhex("000000"), InvalidRequest),
        (Op.MOVE, bytes.fromhex("00000000 0161"), InvalidRequest),  # no destination
        (Op.MOVE, bytes.fromhex("00000000 0161 0162 00"), InvalidRequest),  # trailing bytes
        (Op.MOVE, bytes.fromhex("00000000 0161 01ff"), InvalidQueueName),
    ],
)
def test_malformed_requests(opcode: int, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        msg.decode_request(opcode, body)


@pytest.mark.parametrize(
    ("opcode", "flags", "body"),
    [
        (Op.MESSAGE, Flag.ORIGIN, bytes.fromhex("0000000000000003 00000001") + ORIGIN_BYTES[:10]),  # origin cut
        (Op.MESSAGES, Flag.ORIGIN, bytes.fromhex("00000001 0000000000000001 00000001 00000001") + b"a" + b"\x00"),
        (  # an origin for a message the batch does not have
            Op.MESSAGES,
            Flag.ORIGIN,
            bytes.fromhex("00000001 0000000000000001 00000001 00000001") + b"a" + b"\x00\x00\x00\x01" + ORIGIN_BYTES,
        ),
        (Op.EMPTY, Flag.ORIGIN, b""),  # the flag means nothing there
        (Op.PEEKED, 0, bytes.fromhex("00000001 0000000000000009 03 00000000 0000000000000000 00000000 00")),  # state
        (Op.PEEKED, 0, bytes.fromhex("00000001 0000000000000009 00 00000000 0000000000000000 00000005 00")),  # short
        (Op.MOVED, 0, b"\x00"),
    ],
)
def test_malformed_responses(opcode: int, flags: int, body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        msg.decode_response(opcode, body, flags)


def test_dead_letter_layout() -> None:
    """DEAD_LETTER is an id and nothing else, answered by a bare DEAD_LETTERED (docs/protocol.md 7.20, 13.18)."""
    frame = msg.encode(6, msg.DeadLetter(1998348528189441))
    assert frame == bytes.fromhex("db1c 0000 00000006 00000008 0007197cc6290001")
    ((opcode, flags, request_id, body),) = frames_of(frame)
    assert (opcode, flags, request_id) == (Op.DEAD_LETTER, 0, 6)
    assert msg.decode_request(opcode, body) == msg.DeadLetter(0x0007197CC6290001)
    answer = bytes.fromhex("db9e 0000 00000006 00000000")
    assert msg.encode(6, msg.DeadLettered()) == answer
    ((opcode, flags, request_id, body),) = frames_of(answer)
    assert msg.decode_response(opcode, body, flags) is msg.DeadLettered.INSTANCE  # type: ignore[attr-defined]
    for bad in (b"", bytes(7), bytes(9), bytes(12)):
        with pytest.raises(InvalidRequest, match="DEAD_LETTER"):
            msg.decode_request(Op.DEAD_LETTER, bad)
    with pytest.raises(InvalidRequest):
        msg.decode_response(Op.DEAD_LETTERED, b"\x00")


def test_the_dead_letter_read_in_the_transcript_carries_its_origin() -> None:
    """The Read("dead") answer of docs/protocol.md 13.18: a new id, and the origin in "jobs"."""
    letter = bytes.fromhex(
        "db91 0001 00000008 00000027 0007197cc62a0001 00000001"
        "0007197cc6290001 000001a252230857 00000001 046a6f6273 6869"
    )
    ((opcode, flags, request_id, body),) = frames_of(letter)
    message = msg.decode_response(opcode, body, flags)
    assert isinstance(message, msg.Message) and (message.id, message.deliveries, message.data) == (
        0x0007197CC62A0001,
        1,
        b"hi",
    )
    assert message.origin == msg.Origin("jobs", 1998348528189441, 0x000001A252230857 / 1000.0, 1)
    assert msg.encode(8, message) == letter


def test_a_client_connection_answers_dead_letter_pipelined() -> None:
    connection = ClientConnection()
    first, _ = connection.send(msg.DeadLetter(5))
    second, frame = connection.send(msg.DeadLetter(6))
    assert frame == msg.encode(second, msg.DeadLetter(6))
    replies = msg.encode(second, msg.Requeued()) + msg.encode(first, msg.DeadLettered())
    answered = [event for i in range(len(replies)) for event in connection.receive_data(replies[i : i + 1])]
    assert answered == [(second, msg.Requeued()), (first, msg.DeadLettered())]

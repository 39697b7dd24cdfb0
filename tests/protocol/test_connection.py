"""ClientConnection: request ids, the local size limit, and response decoding."""

from __future__ import annotations

import pytest

from dbqueue.errors import MessageTooLarge, ProtocolError
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    ClientConnection,
    Confirm,
    Empty,
    Enqueue,
    Error,
    Message,
    ObjectQueued,
    Op,
    Read,
    encode,
)


def test_request_ids_count_up_from_one_and_frames_carry_them() -> None:
    connection = ClientConnection()
    first = connection.send(Read("q"))
    second = connection.send(Confirm(9))
    assert first == (1, encode(1, Read("q")))
    assert second == (2, encode(2, Confirm(9)))


def test_request_ids_wrap_past_u32_skipping_zero() -> None:
    connection = ClientConnection()
    connection._next_id = 0xFFFFFFFE
    assert [connection.next_request_id() for _ in range(4)] == [0xFFFFFFFE, 0xFFFFFFFF, 1, 2]


def test_oversized_enqueue_is_refused_before_anything_is_built() -> None:
    connection = ClientConnection(max_message_size=10)
    assert connection.send(Enqueue("q", b"x" * 10))[0] == 1
    with pytest.raises(MessageTooLarge):
        connection.send(Enqueue("q", b"x" * 11))
    # A refused request does not use up a request id.
    assert connection.send(Enqueue("q", b""))[0] == 2


def test_responses_come_out_with_their_request_ids_in_any_chunking() -> None:
    stream = encode(1, ObjectQueued(10)) + encode(3, Message(10, b"abc", 2)) + encode(2, Empty())
    connection = ClientConnection()
    got = []
    for i in range(len(stream)):
        got.extend(connection.receive_data(stream[i : i + 1]))
    assert got == [(1, ObjectQueued(10)), (3, Message(10, b"abc", 2)), (2, Empty())]


def test_bad_magic_from_the_server_is_a_protocol_error() -> None:
    connection = ClientConnection()
    with pytest.raises(ProtocolError):
        connection.receive_data(b"\x00" * 12)


def test_malformed_response_body_is_a_protocol_error() -> None:
    connection = ClientConnection()
    with pytest.raises(ProtocolError):
        connection.receive_data(HEADER.pack(MAGIC, Op.OBJECT_QUEUED, 0, 1, 3) + b"abc")


def test_error_response_decodes_as_a_value() -> None:
    connection = ClientConnection()
    assert connection.receive_data(encode(4, Error(5, "nope"))) == [(4, Error(5, "nope"))]


def test_a_server_limit_above_64_mib_lets_larger_responses_in() -> None:
    """After HelloOk raises the limit, a Message that large is awaited, not refused as broken framing."""
    connection = ClientConnection()
    big = 80 * 1024 * 1024
    header = HEADER.pack(MAGIC, Op.MESSAGE, 0, 1, big + 12)
    with pytest.raises(ProtocolError):
        ClientConnection().receive_data(header)  # over the default 64 MiB allowance
    connection.max_message_size = big
    assert connection.receive_data(header) == []  # waiting for the body
    assert connection.receive_data(b"\x00" * 12) == []

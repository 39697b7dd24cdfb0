"""Bytes no well-behaved client sends, over a plain socket to a real server.

Recoverable refusals get an Error frame and the connection goes on; broken
framing gets an Error frame and then the server closes the connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from dbqueue import Client, InvalidQueueName, InvalidRequest, PipelinedClient, ProtocolError, UnsupportedVersion
from dbqueue.errors import ErrorCode, error_for_code
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    Confirm,
    CreateQueue,
    Enqueue,
    Error,
    HelloOk,
    Message,
    Op,
    QueueCreated,
    Read,
    Request,
    decode_response,
    encode,
)
from dbqueue.protocol.frames import BODY_OVERHEAD, PROTOCOL_VERSION
from dbqueue.server.session import Session

if TYPE_CHECKING:
    from conftest import RawConnection, ServerThread

Raw = Callable[[], "RawConnection"]


def frame(opcode: int, body: bytes = b"", request_id: int = 1, flags: int = 0, length: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, opcode, flags, request_id, len(body) if length is None else length) + body


def expect_error(connection: RawConnection, request_id: int, code: ErrorCode) -> str:
    opcode, flags, rid, body = connection.recv_frame()
    response = decode_response(opcode, body)
    assert isinstance(response, Error), response
    assert (rid, flags, response.code) == (request_id, 0, code), response
    return response.message


def expect(connection: RawConnection, request_id: int, response: object) -> None:
    opcode, _, rid, body = connection.recv_frame()
    assert (rid, decode_response(opcode, body)) == (request_id, response)


def wait_for_eof(connection: RawConnection) -> None:
    assert connection.at_eof(), "the server should have closed the connection"


# --- fatal: the framing is lost ---------------------------------------------------------


def test_oversized_frame_gets_an_error_then_the_connection_closes(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(max_message_size=1024)
    with Client.connect(server.address) as bystander:
        bystander.create("q")
        ids = [bystander.send("q", b"keep-%d" % i) for i in range(3)]
        raw = server.raw()
        raw.send(frame(Op.CREATE_QUEUE, CreateQueue("other").body(), request_id=5))
        # Announce one byte past the limit; send only the header (nothing follows it).
        raw.send(frame(Op.ENQUEUE, request_id=77, length=1024 + BODY_OVERHEAD + 1))
        expect(raw, 5, QueueCreated())
        message = expect_error(raw, 77, ErrorCode.MESSAGE_TOO_LARGE)
        assert str(1024 + BODY_OVERHEAD + 1) in message
        wait_for_eof(raw)
        raw.close()
        # The bystander's messages are untouched and its connection works.
        assert [bystander.read("q").id for _ in ids] == ids
        assert bystander.read("q") is None


def test_oversized_announced_length_of_4gib(server: ServerThread, raw: Raw) -> None:
    connection = raw()
    connection.send(frame(Op.ENQUEUE, request_id=9, length=0xFFFFFFFF))
    expect_error(connection, 9, ErrorCode.MESSAGE_TOO_LARGE)
    wait_for_eof(connection)
    server.wait_until(lambda: not server.server.sessions, what="the session to go")


def test_payload_just_over_the_limit_is_a_recoverable_refusal(server_factory: Callable[..., ServerThread]) -> None:
    """A body within the framing allowance but a payload over the limit: Error, and the session goes on."""
    server = server_factory(max_message_size=1024)
    with Client.connect(server.address) as client:
        client.create("q")
    raw = server.raw()
    raw.send(frame(Op.ENQUEUE, Enqueue("q", b"x" * 1025).body(), request_id=3))
    expect_error(raw, 3, ErrorCode.MESSAGE_TOO_LARGE)
    raw.send(frame(Op.ENQUEUE, Enqueue("q", b"x" * 1024).body(), request_id=4))
    opcode, _, rid, body = raw.recv_frame()
    assert (opcode, rid) == (Op.OBJECT_QUEUED, 4)
    raw.close()


def test_bad_magic_gets_bad_frame_then_close(server: ServerThread, raw: Raw) -> None:
    connection = raw()
    connection.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    message = expect_error(connection, 0, ErrorCode.BAD_FRAME)
    assert "magic" in message
    wait_for_eof(connection)
    assert isinstance(error_for_code(ErrorCode.BAD_FRAME, message), ProtocolError)
    with Client.connect(server.address) as client:  # the server is fine
        client.create("q")


def test_frames_before_bad_bytes_are_answered_first(raw: Raw) -> None:
    connection = raw()
    connection.send(
        frame(Op.CREATE_QUEUE, CreateQueue("q").body(), request_id=1)
        + frame(Op.ENQUEUE, Enqueue("q", b"a").body(), request_id=2)
        + b"\x00" * 20
        + frame(Op.ENQUEUE, Enqueue("q", b"never").body(), request_id=3)
    )
    opcodes = [connection.recv_frame()[:3:2] for _ in range(2)]
    assert opcodes == [(Op.QUEUE_CREATED, 1), (Op.OBJECT_QUEUED, 2)]
    expect_error(connection, 0, ErrorCode.BAD_FRAME)
    wait_for_eof(connection)


def test_truncated_frame_then_close_leaves_the_server_fine(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("q")
        client.send("q", b"a")
        for cut in (3, 12, 20):
            raw = server.raw()
            raw.send(frame(Op.ENQUEUE, Enqueue("q", b"x" * 100).body(), request_id=1)[:cut])
            raw.close()
        server.wait_until(lambda: len(server.server.sessions) == 1, what="the truncated sessions to go")
        assert client.read("q").data == b"a"  # the half-sent messages never arrived
        assert client.read("q") is None


def test_abrupt_reset_while_holding_messages(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("q")
        client.send("q", b"a")
        raw = server.raw()
        raw.send(frame(Op.READ, Read("q").body(), request_id=1))
        assert raw.recv_frame()[0] == Op.MESSAGE
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()  # RST, not FIN
        server.wait_until(lambda: server.server.broker.queues[b"q"].ready == 1, what="the reset session's message")
        assert client.read("q").deliveries == 2


# --- recoverable: the session goes on ---------------------------------------------------


def test_unknown_opcode_is_refused_and_the_connection_stays_usable(raw: Raw) -> None:
    connection = raw()
    for request_id, opcode in ((11, 0x7F), (12, 0x00), (13, Op.MESSAGE), (14, Op.ERROR)):
        connection.send(frame(opcode, b"whatever", request_id=request_id))
        assert "opcode" in expect_error(connection, request_id, ErrorCode.UNKNOWN_OPCODE)
    connection.send(frame(Op.CREATE_QUEUE, CreateQueue("q").body(), request_id=15))
    assert connection.recv_frame()[:3:2] == (Op.QUEUE_CREATED, 15)


def test_malformed_bodies_are_refused_and_the_connection_stays_usable(raw: Raw) -> None:
    connection = raw()
    connection.send(frame(Op.CREATE_QUEUE, CreateQueue("q").body(), request_id=1))
    connection.recv_frame()
    cases = [
        (Op.READ, b"\x00\x00", ErrorCode.MALFORMED),
        (Op.READ, bytes(8) + b"\x09q", ErrorCode.MALFORMED),
        (Op.READ, b"\x00\x00\x00\x00\x01q", ErrorCode.MALFORMED),  # the old layout, without wait_ms
        (Op.CONFIRM, b"\x00" * 7, ErrorCode.MALFORMED),
        (Op.ENQUEUE, b"", ErrorCode.MALFORMED),
        (Op.CREATE_QUEUE, b"\x01q", ErrorCode.MALFORMED),
        (Op.CREATE_QUEUE, b"\x01q" + bytes(8), ErrorCode.MALFORMED),  # the old layout, capacity only
        (Op.CREATE_QUEUE, b"\x01q" + bytes(13), ErrorCode.MALFORMED),  # version 2's, without the visibility timeout
        (Op.CREATE_QUEUE, b"\x01q" + bytes(17) + b"x", ErrorCode.MALFORMED),  # trailing bytes
        (Op.HELLO, b"", ErrorCode.MALFORMED),
    ]
    # All pipelined in one write; answered in order.
    connection.send(b"".join(frame(op, body, request_id=100 + i) for i, (op, body, _) in enumerate(cases)))
    for i, (_, _, code) in enumerate(cases):
        expect_error(connection, 100 + i, code)
    assert isinstance(error_for_code(ErrorCode.MALFORMED, ""), InvalidRequest)
    connection.send(frame(Op.ENQUEUE, Enqueue("q", b"ok").body(), request_id=200))
    assert connection.recv_frame()[:3:2] == (Op.OBJECT_QUEUED, 200)


@pytest.mark.parametrize(
    "opcode, body",
    [
        (Op.CREATE_QUEUE, b"\x00" + bytes(17)),
        (Op.DELETE_QUEUE, b"\x00"),
        (Op.ENQUEUE, b"\x00data"),
        (Op.READ, bytes(8) + b"\x00"),
        (Op.CREATE_QUEUE, b"\x02\xff\xfe" + bytes(17)),
        (Op.CREATE_QUEUE, b"\x01q" + bytes(16) + b"\x02\xff\xfe"),
        (Op.DELETE_QUEUE, b"\x02\xc3\x28"),
    ],
    ids=[
        "create-empty",
        "delete-empty",
        "enqueue-empty",
        "read-empty",
        "create-bad-utf8",
        "create-dead-letter-bad-utf8",
        "delete-bad-utf8",
    ],  # fmt: skip
)
def test_invalid_queue_names_over_the_wire(raw: Raw, opcode: int, body: bytes) -> None:
    connection = raw()
    connection.send(frame(opcode, body, request_id=21))
    message = expect_error(connection, 21, ErrorCode.INVALID_QUEUE_NAME)
    assert isinstance(error_for_code(ErrorCode.INVALID_QUEUE_NAME, message), InvalidQueueName)
    connection.send(frame(Op.CREATE_QUEUE, CreateQueue("fine").body(), request_id=22))
    assert connection.recv_frame()[:3:2] == (Op.QUEUE_CREATED, 22)


@pytest.mark.parametrize(
    "opcode, body",
    [(Op.ENQUEUE, b"\x02\xff\xfedata"), (Op.READ, bytes(8) + b"\x02\xff\xfe")],
    ids=["enqueue", "read"],
)
def test_bad_utf8_names_on_the_hot_path(raw: Raw, opcode: int, body: bytes) -> None:
    connection = raw()
    connection.send(frame(opcode, body, request_id=31))
    expect_error(connection, 31, ErrorCode.INVALID_QUEUE_NAME)


@pytest.mark.parametrize(
    "request_",
    [CreateQueue("q"), Enqueue("q", b"x"), Read("q"), Confirm(1)],
    ids=lambda r: type(r).__name__,
)
def test_nonzero_flags_are_invalid_requests(address: str, request_: Request) -> None:
    with PipelinedClient.connect(address) as connection:
        connection.send_many([CreateQueue("q")])
        connection.receive(1)
        connection.send_bytes(encode(1000, request_, flags=0x0001))
        ((rid, response),) = connection.receive(1)
        assert rid == 1000
        assert isinstance(response, Error) and response.code == ErrorCode.MALFORMED
        assert type(error_for_code(response.code, response.message)) is InvalidRequest
        # Nothing happened: the queue is still empty, and the connection still works.
        ids = connection.send_many([Read("q")])
        assert connection.receive(1)[0][0] == ids[0]


def test_hello_versions(raw: Raw) -> None:
    connection = raw()
    connection.send(frame(Op.HELLO, b"\x00\x00", request_id=1))
    message = expect_error(connection, 1, ErrorCode.UNSUPPORTED_VERSION)
    assert isinstance(error_for_code(ErrorCode.UNSUPPORTED_VERSION, message), UnsupportedVersion)
    # A version 1 client: refused, and told why (confirms became per connection in version 2).
    connection.send(frame(Op.HELLO, b"\x00\x01", request_id=3))
    message = expect_error(connection, 3, ErrorCode.UNSUPPORTED_VERSION)
    assert "protocol version 1 is not supported" in message and "upgrade the client" in message
    # A version 2 client too (a visibility timeout of 0 means the queue's default since version 3).
    connection.send(frame(Op.HELLO, b"\x00\x02", request_id=4))
    message = expect_error(connection, 4, ErrorCode.UNSUPPORTED_VERSION)
    assert "protocol version 2 is not supported" in message and "upgrade the client" in message
    connection.send(frame(Op.HELLO, b"\x00\x09", request_id=2))  # a newer client: the server speaks its own
    opcode, _, rid, body = connection.recv_frame()
    ok = decode_response(opcode, body)
    assert rid == 2 and isinstance(ok, HelloOk)
    assert ok.version == PROTOCOL_VERSION == 3 and ok.max_message_size == 1024 * 1024
    assert ok.server.startswith("dbqueue/")


def test_requests_work_without_hello_and_split_across_writes(raw: Raw) -> None:
    connection = raw()
    data = frame(Op.CREATE_QUEUE, CreateQueue("q").body(), 1) + frame(Op.ENQUEUE, Enqueue("q", b"hi").body(), 2)
    data += frame(Op.READ, Read("q").body(), 3)
    for i in range(len(data)):  # one byte per write: the server reassembles
        connection.send(data[i : i + 1])
        if i % 8 == 0:
            time.sleep(0.0005)
    assert connection.recv_frame()[:3:2] == (Op.QUEUE_CREATED, 1)
    opcode, _, rid, body = connection.recv_frame()
    assert (opcode, rid) == (Op.OBJECT_QUEUED, 2)
    opcode, _, rid, body = connection.recv_frame()
    assert rid == 3 and decode_response(opcode, body).data == b"hi"  # type: ignore[union-attr]
    assert isinstance(decode_response(opcode, body), Message)


# --- pipelined runs: 32 like requests in one write, every reply byte checked -----------------------

NO_SUCH_MESSAGE_TEXT = (
    "message {} is not in flight (never read, already confirmed, held by another connection, or its queue was deleted)"
)


def bare(opcode: int, request_id: int) -> bytes:
    return HEADER.pack(MAGIC, opcode, 0, request_id, 0)


def queued(request_id: int, id_: int) -> bytes:
    return HEADER.pack(MAGIC, Op.OBJECT_QUEUED, 0, request_id, 8) + id_.to_bytes(8, "big")


def message(request_id: int, id_: int, deliveries: int, payload: bytes) -> bytes:
    head = HEADER.pack(MAGIC, Op.MESSAGE, 0, request_id, 12 + len(payload))
    return head + id_.to_bytes(8, "big") + deliveries.to_bytes(4, "big") + payload


def no_such_message(request_id: int, id_: int) -> bytes:
    body = int(ErrorCode.NO_SUCH_MESSAGE).to_bytes(2, "big") + NO_SUCH_MESSAGE_TEXT.format(id_).encode()
    return HEADER.pack(MAGIC, Op.ERROR, 0, request_id, len(body)) + body


def next_id(server: ServerThread) -> int:
    """The id the server hands out next (a new queue's first message takes it)."""
    return server.call(lambda: server.server.broker.allocate_ids(0))


def exchange(connection: RawConnection, requests: list[bytes], expected: list[bytes]) -> None:
    """Send ``requests`` in one write; the replies must be ``expected``, frame for frame, byte for byte."""
    connection.send(b"".join(requests))
    replies = []
    for _ in expected:
        opcode, flags, request_id, body = connection.recv_frame()
        replies.append(HEADER.pack(MAGIC, opcode, flags, request_id, len(body)) + body)
    assert replies == expected


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """(opcode, requests, answered as a batch) of every run the server's sessions are handed."""
    seen: list[tuple[int, int, bool]] = []
    handle_run = Session.handle_run

    def recorded(self: Session, run: Any) -> bytes | None:
        answer = handle_run(self, run)
        seen.append((run.opcode, len(run.request_ids), answer is not None))
        return answer

    monkeypatch.setattr(Session, "handle_run", recorded)
    return seen


def test_pipelined_runs_with_an_empty_tail_a_duplicate_and_an_unknown_id(
    server: ServerThread, raw: Raw, runs: list[tuple[int, int, bool]]
) -> None:
    producer, other = raw(), raw()
    exchange(producer, [frame(Op.CREATE_QUEUE, CreateQueue("q").body(), request_id=1)], [bare(Op.QUEUE_CREATED, 1)])
    first = next_id(server)
    payloads = [b"payload-%02d" % i for i in range(32)]  # one size: one run
    exchange(
        producer,
        [frame(Op.ENQUEUE, Enqueue("q", data).body(), request_id=100 + i) for i, data in enumerate(payloads)],
        [queued(100 + i, first + i) for i in range(32)],  # consecutive ids
    )
    # Another connection takes the first 12; then 32 reads find 20 messages and 12 Empty.
    exchange(
        other,
        [frame(Op.READ, Read("q").body(), request_id=200 + i) for i in range(12)],
        [message(200 + i, first + i, 1, payloads[i]) for i in range(12)],
    )
    exchange(
        producer,
        [frame(Op.READ, Read("q", 60_000).body(), request_id=300 + i) for i in range(32)],
        [message(300 + i, first + 12 + i, 1, payloads[12 + i]) for i in range(20)]
        + [bare(Op.EMPTY, 300 + i) for i in range(20, 32)],
    )
    # 32 confirms: its own 20, one of them again, an id nobody holds, and 10 the other connection holds
    # (on their first delivery: the producer cannot have held them, so no such message for it).
    ids = list(range(first + 12, first + 32)) + [first + 12, 999_999] + list(range(first, first + 10))
    expected = [bare(Op.CONFIRMED, 400 + i) for i in range(20)]
    expected += [no_such_message(420, first + 12), no_such_message(421, 999_999)]
    expected += [no_such_message(422 + i, first + i) for i in range(10)]
    confirms = [frame(Op.CONFIRM, Confirm(id_).body(), request_id=400 + i) for i, id_ in enumerate(ids)]
    exchange(producer, confirms, expected)
    stats = server.call(lambda: server.server.broker.queues[b"q"].stats())
    assert (stats["ready"], stats["in_flight"], stats["confirmed"], stats["consumers"]) == (0, 12, 20, 2)
    assert runs == [(Op.ENQUEUE, 32, True), (Op.READ, 12, True), (Op.READ, 32, True), (Op.CONFIRM, 32, True)]
    # The other connection still holds its 12 and confirms them; the producer goes on after its refusals.
    exchange(
        other,
        [frame(Op.CONFIRM, Confirm(first + i).body(), request_id=i) for i in range(12)],
        [bare(Op.CONFIRMED, i) for i in range(12)],
    )
    exchange(producer, [frame(Op.READ, Read("q").body(), request_id=9)], [bare(Op.EMPTY, 9)])


def test_pipelined_runs_of_empty_payloads_confirms_of_a_whole_block_and_requeued_confirms(
    server: ServerThread, raw: Raw, runs: list[tuple[int, int, bool]]
) -> None:
    connection = raw()
    exchange(connection, [frame(Op.CREATE_QUEUE, CreateQueue("q").body(), request_id=1)], [bare(Op.QUEUE_CREATED, 1)])
    first = next_id(server)
    exchange(
        connection,
        [frame(Op.ENQUEUE, Enqueue("q", b"").body(), request_id=i) for i in range(32)],  # request id 0 too
        [queued(i, first + i) for i in range(32)],
    )
    exchange(
        connection,
        [frame(Op.READ, Read("q", 60_000).body(), request_id=0xFFFFFFFF - i) for i in range(32)],
        [message(0xFFFFFFFF - i, first + i, 1, b"") for i in range(32)],
    )
    exchange(  # exactly the messages one run read: settled together
        connection,
        [frame(Op.CONFIRM, Confirm(first + i).body(), request_id=500 + i) for i in range(32)],
        [bare(Op.CONFIRMED, 500 + i) for i in range(32)],
    )
    exchange(
        connection,
        [frame(Op.ENQUEUE, Enqueue("q", b"m%02d" % i).body(), request_id=600 + i) for i in range(32)],
        [queued(600 + i, first + 32 + i) for i in range(32)],
    )
    exchange(
        connection,
        [frame(Op.READ, Read("q", 50).body(), request_id=700 + i) for i in range(32)],
        [message(700 + i, first + 32 + i, 1, b"m%02d" % i) for i in range(32)],
    )
    server.wait_until(lambda: server.server.broker.queues[b"q"].ready == 32, what="the 50 ms leases to run out")
    exchange(  # too late: each one went back to the queue
        connection,
        [frame(Op.CONFIRM, Confirm(first + 32 + i).body(), request_id=800 + i) for i in range(32)],
        [bare(Op.REQUEUED, 800 + i) for i in range(32)],
    )
    exchange(  # back in read order, each on its second delivery
        connection,
        [frame(Op.READ, Read("q").body(), request_id=900 + i) for i in range(32)],
        [message(900 + i, first + 32 + i, 2, b"m%02d" % i) for i in range(32)],
    )
    stats = server.call(lambda: server.server.broker.queues[b"q"].stats())
    assert (stats["ready"], stats["in_flight"], stats["confirmed"], stats["requeued"]) == (0, 32, 32, 32)
    assert runs == [(op, 32, True) for op in [Op.ENQUEUE, Op.READ, Op.CONFIRM] * 2 + [Op.READ]]

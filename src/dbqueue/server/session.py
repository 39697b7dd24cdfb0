"""One client connection: bytes in, requests handled, bytes out.

Theory of operation
-------------------
`Session` is an asyncio Protocol (callbacks, not streams: no task or future
per request). Each `data_received` cuts every complete frame out of the
received bytes, handles them all in one loop and answers them all with one
``transport.write``: a client that pipelines 32 requests costs one system call
each way, not 32.

Errors come in two kinds (as in NSQ). A request the server refuses (a missing
queue, a malformed body, an unknown opcode) gets an Error frame and the
session goes on. A frame that breaks the framing (bad magic, a body over the
limit) gets an Error frame and then the connection closes, because nothing
after it can be trusted to start at a frame boundary.

When the client stops reading and the transport's write buffer passes its high
mark, the session stops reading requests until the buffer drains, so a slow
consumer cannot make the server buffer without bound.

When the connection goes, every message it holds in flight goes back to the
front of its queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import (
    ErrorCode,
    InvalidQueueName,
    InvalidRequest,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    RequestError,
    UnsupportedVersion,
)
from ..protocol import frames as fr
from ..protocol import messages as msg
from .queues import InFlight, Outcome

if TYPE_CHECKING:
    from .app import Server

__all__ = ["Session"]

log = logging.getLogger("dbqueue.server")

_BARE_FRAME = fr.HEADER.pack  # (MAGIC, opcode, 0, request_id, 0): a response with no body
# Plain ints: comparing against an enum member looked up on its class costs ~6x more.
_ENQUEUE, _READ, _CONFIRM = int(fr.Op.ENQUEUE), int(fr.Op.READ), int(fr.Op.CONFIRM)  # as RequestReader tags them
_OBJECT_QUEUED, _MESSAGE, _FULL, _EMPTY = int(fr.Op.OBJECT_QUEUED), int(fr.Op.MESSAGE), int(fr.Op.FULL), int(fr.Op.EMPTY)
_CONFIRMED_OP, _REQUEUED_OP = int(fr.Op.CONFIRMED), int(fr.Op.REQUEUED)
_CONFIRMED, _REQUEUED = int(Outcome.CONFIRMED), int(Outcome.REQUEUED)


class Session(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.reader = msg.RequestReader(server.max_message_size + fr.BODY_OVERHEAD)
        self.held: dict[int, InFlight] = {}  # in-flight messages this connection read, in read order
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.sessions.add(self)
        log.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        frames = reader.feed(data)
        if frames:
            replies = self.handle(frames)
            self.transport.write(replies[0] if len(replies) == 1 else b"".join(replies))  # type: ignore[union-attr]
        if reader.failure is not None:
            failure = reader.failure
            log.warning("closing %s: %s", self.peer, failure.message)
            self.transport.write(msg.error_frame(failure.request_id, failure.code, failure.message))  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        if self.held:
            count = self.broker.release_all(self.held)
            log.debug("%s closed holding %d messages: requeued", self.peer, count)

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]

    # --- requests --------------------------------------------------------------------

    def handle(self, requests: list[tuple]) -> list[bytes]:
        """Answer a batch of requests from `RequestReader`; return the reply frames in request order."""
        queues = self.broker.queues
        deliver = self.broker.deliver
        confirm = self.broker.confirm
        held = self.held
        max_size = self.server.max_message_size
        now = self.server.clock()
        pack_queued = msg.ID_FRAME.pack
        pack_message = msg.MESSAGE_HEAD.pack
        bare = _BARE_FRAME
        magic = fr.MAGIC
        timed = False
        replies: list[bytes] = []
        append = replies.append
        for opcode, request_id, a, b in requests:
            if opcode == _ENQUEUE:
                queue = queues.get(a)
                if queue is None:
                    append(_refusal(request_id, _no_such_queue(a)))
                elif len(b) > max_size:
                    append(_refusal(request_id, _too_large(len(b), max_size)))
                else:
                    id_ = queue.push(b)
                    if id_ >= 0:
                        append(pack_queued(magic, _OBJECT_QUEUED, 0, request_id, 8, id_))
                    else:
                        append(bare(magic, _FULL, 0, request_id, 0))
            elif opcode == _READ:
                queue = queues.get(a)
                if queue is None:
                    append(_refusal(request_id, _no_such_queue(a)))
                    continue
                record = deliver(queue, b, held, now)
                if record is None:
                    append(bare(magic, _EMPTY, 0, request_id, 0))
                else:
                    timed = timed or b > 0
                    data = record.data
                    append(pack_message(magic, _MESSAGE, 0, request_id, 12 + len(data), record.id, record.deliveries))
                    append(data)
            elif opcode == _CONFIRM:
                outcome = confirm(a)
                if outcome == _CONFIRMED:
                    append(bare(magic, _CONFIRMED_OP, 0, request_id, 0))
                elif outcome == _REQUEUED:
                    append(bare(magic, _REQUEUED_OP, 0, request_id, 0))
                else:
                    append(_refusal(request_id, _no_such_message(a)))
            else:
                append(self._handle_other(a))
        if timed:
            self.server.schedule_expiry()
        return replies

    def _handle_other(self, frame: fr.Frame) -> bytes:
        """Answer a frame off the hot path; a refused request gets an Error frame."""
        opcode, flags, request_id, body = frame
        try:
            if flags:
                raise InvalidRequest(f"unsupported flags 0x{flags:04x} for opcode 0x{opcode:02x}")
            return msg.encode(request_id, self._answer(msg.decode_request(opcode, body)))
        except RequestError as exc:
            return _refusal(request_id, exc)

    def _answer(self, request: msg.Request) -> msg.Response:
        """Handle a decoded request off the hot path; raise `RequestError` to refuse it."""
        broker = self.broker
        if isinstance(request, msg.Hello):
            if request.version < 1:
                raise UnsupportedVersion(f"protocol version {request.version} is not supported (1-{fr.PROTOCOL_VERSION})")
            version = min(request.version, fr.PROTOCOL_VERSION)
            return msg.HelloOk(version, self.server.max_message_size, self.server.name)
        if isinstance(request, msg.CreateQueue):
            broker.create_queue(request.name.encode(), request.capacity)
            return msg.QueueCreated.INSTANCE  # type: ignore[attr-defined, no-any-return]
        if isinstance(request, msg.DeleteQueue):
            if not broker.delete_queue(request.name.encode()):
                raise _no_such_queue(request.name.encode())
            return msg.QueueDeleted.INSTANCE  # type: ignore[attr-defined, no-any-return]
        # A well-formed Enqueue, Read or Confirm never gets here: `handle` answers it.
        raise RequestError(f"no handler for {type(request).__name__}")


def _refusal(request_id: int, error: RequestError) -> bytes:
    return msg.error_frame(request_id, error.code, error.message)


def _too_large(size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"message of {size} bytes exceeds the limit of {limit} bytes")


def _no_such_queue(name: bytes) -> RequestError:
    # The hot path looks names up as raw bytes; only a miss pays for the UTF-8 check.
    try:
        return NoSuchQueue(f"no queue named {name.decode('utf-8')!r}")
    except UnicodeDecodeError:
        return InvalidQueueName("queue name is not valid UTF-8")


def _no_such_message(id_: int) -> NoSuchMessage:
    return NoSuchMessage(f"message {id_} is not in flight (never read, already confirmed, or its queue was deleted)")

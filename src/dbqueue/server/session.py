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

_OP = fr.Op
_BARE_FRAME = fr.HEADER.pack  # (MAGIC, opcode, 0, request_id, 0): a response with no body
_CONFIRM_ANSWER = {Outcome.CONFIRMED: _OP.CONFIRMED, Outcome.REQUEUED: _OP.REQUEUED}


class Session(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.reader = fr.FrameReader(server.max_message_size + fr.BODY_OVERHEAD)
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

    def handle(self, frames: list[fr.Frame]) -> list[bytes]:
        """Answer a batch of request frames; return the reply frames in request order."""
        queues = self.broker.queues
        deliver = self.broker.deliver
        confirm = self.broker.confirm
        held = self.held
        max_size = self.server.max_message_size
        now = self.server.clock()
        pack_queued = msg.ID_FRAME.pack
        pack_message = msg.MESSAGE_HEAD.pack
        split_enqueue = msg.split_enqueue
        split_read = msg.split_read
        unpack_id = msg.U64.unpack
        magic = fr.MAGIC
        timed = False
        replies: list[bytes] = []
        append = replies.append
        for opcode, flags, request_id, body in frames:
            try:
                if flags:
                    raise InvalidRequest(f"unsupported flags 0x{flags:04x} for opcode 0x{opcode:02x}")
                if opcode == _OP.ENQUEUE:
                    name, data = split_enqueue(body)
                    queue = queues.get(name)
                    if queue is None:
                        raise _no_such_queue(name)
                    if len(data) > max_size:
                        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the limit of {max_size} bytes")
                    id_ = queue.push(data)
                    if id_ >= 0:
                        append(pack_queued(magic, _OP.OBJECT_QUEUED, 0, request_id, 8, id_))
                    else:
                        append(_BARE_FRAME(magic, _OP.FULL, 0, request_id, 0))
                elif opcode == _OP.READ:
                    name, timeout_ms = split_read(body)
                    queue = queues.get(name)
                    if queue is None:
                        raise _no_such_queue(name)
                    record = deliver(queue, timeout_ms, held, now)
                    if record is None:
                        append(_BARE_FRAME(magic, _OP.EMPTY, 0, request_id, 0))
                    else:
                        timed = timed or timeout_ms > 0
                        data = record.data
                        append(pack_message(magic, _OP.MESSAGE, 0, request_id, 12 + len(data), record.id, record.deliveries))
                        append(data)
                elif opcode == _OP.CONFIRM:
                    if len(body) != 8:
                        raise InvalidRequest(f"CONFIRM body must be 8 bytes, got {len(body)}")
                    id_ = unpack_id(body)[0]
                    outcome = confirm(id_)
                    if outcome == Outcome.NO_SUCH_MESSAGE:
                        raise _no_such_message(id_)
                    append(_BARE_FRAME(magic, _CONFIRM_ANSWER[outcome], 0, request_id, 0))
                else:
                    append(msg.encode(request_id, self._handle_other(msg.decode_request(opcode, body))))
            except RequestError as exc:
                append(msg.error_frame(request_id, exc.code, exc.message))
        if timed:
            self.server.schedule_expiry()
        return replies

    def _handle_other(self, request: msg.Request) -> msg.Response:
        """The requests off the hot path: session and queue management."""
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
        # Enqueue, Read and Confirm never get here: `handle` answers them inline.
        return msg.Error(ErrorCode.INTERNAL, f"no handler for {type(request).__name__}")


def _no_such_queue(name: bytes) -> NoSuchQueue:
    return NoSuchQueue(f"no queue named {name.decode('utf-8', 'replace')!r}")


def _no_such_message(id_: int) -> NoSuchMessage:
    return NoSuchMessage(f"message {id_} is not in flight (never read, already confirmed, or its queue was deleted)")

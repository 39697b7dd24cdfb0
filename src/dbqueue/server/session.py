"""One client connection: bytes in, requests handled, bytes out.

Theory of operation
-------------------
`Session` is an asyncio Protocol (callbacks, not streams: no task or future
per request). Each `data_received` cuts every complete frame out of the
received bytes, handles them all in one loop and answers them all with one
``transport.write``: a client that pipelines 32 requests costs one system call
each way, not 32.

What an unpipelined client sends is one whole frame per buffer: `handle_one`
answers a lone ENQUEUE, READ or CONFIRM straight from its bytes, with the
reply `handle` would give, and leaves anything else (a wait, a refusal) to it.

What pipelining clients send most is a *run*: a buffer of whole frames alike,
32 ENQUEUEs to one queue, 32 READs of one queue with one timeout, or 32
CONFIRMs. `msg.cut_run` cuts such a buffer with one struct call and
`handle_run` answers it with the broker's batch operations (the reads take
their fresh messages as one in-flight `Block`), giving the replies the
requests would get one by one, in order. Anything that could make them
differ (an unknown or full queue, an oversized payload, sends to a queue
with waiting reads, reads that would wait or pass the in-flight or output
limit) sends the buffer down the frame-by-frame path instead, before
anything is changed.

Errors come in two kinds (as in NSQ). A request the server refuses (a missing
queue, a malformed body, an unknown opcode) gets an Error frame and the
session goes on. A frame that breaks the framing (bad magic, a body over the
limit) gets an Error frame and then the connection closes, because nothing
after it can be trusted to start at a frame boundary.

When the client stops reading and the transport's write buffer passes its high
mark, the session stops reading requests until the buffer drains, so a slow
consumer cannot make the server buffer without bound.

With a data directory, replies go out only after the store has committed the
changes they report (`Server.send`): "queued" then means "stored". An answer of
reads (a lone READ, a run of them) reports no change: when every message it hands
out is stored already, it is written at once (`Server.write`, `answer_now`); when
one is still being sent, it waits for that commit too, so a consumer never sees a
message a crash could undo.

A read that waits (``wait_ms``) on an empty queue is answered later, from the
broker's wake callback, by its request id; the session meanwhile goes on with
the requests behind it.

When the connection goes, every message it holds in flight goes back to the
front of its queue, and its waiting reads are retired.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, ClassVar

from ..core import NO_BYTE_LIMIT, Block, Entry, Holding, Outcome, Queue, Waiter, columns
from ..errors import (
    ErrorCode,
    InvalidQueueName,
    InvalidRequest,
    LimitExceeded,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    RequestError,
    UnsupportedVersion,
)
from ..protocol import frames as fr
from ..protocol import messages as msg
from .security import PRE_AUTH_MAX_BODY

if TYPE_CHECKING:
    from .app import Server

__all__ = ["Session"]

log = logging.getLogger("dbqueue.server")

_MAGIC = fr.MAGIC
_BARE_FRAME = fr.HEADER.pack  # (MAGIC, opcode, 0, request_id, 0): a response with no body
_PACK_ID_FRAME = msg.ID_FRAME.pack  # a header and a u64 id: ObjectQueued
_PACK_MESSAGE_HEAD = msg.MESSAGE_HEAD.pack  # a Message frame's header, id and deliveries; the payload follows
# Plain ints: comparing against an enum member looked up on its class costs ~6x more.
_ENQUEUE, _READ, _CONFIRM = int(fr.Op.ENQUEUE), int(fr.Op.READ), int(fr.Op.CONFIRM)  # as RequestReader tags them
_OBJECT_QUEUED, _MESSAGE, _FULL, _EMPTY = (
    int(fr.Op.OBJECT_QUEUED),
    int(fr.Op.MESSAGE),
    int(fr.Op.FULL),
    int(fr.Op.EMPTY),
)
_CONFIRMED_OP, _REQUEUED_OP = int(fr.Op.CONFIRMED), int(fr.Op.REQUEUED)
_DONE, _REQUEUED = int(Outcome.DONE), int(Outcome.REQUEUED)
_CONFIRM_RESULTS = int(fr.Op.CONFIRM_RESULTS)
_FIRST_DELIVERY = msg.U32.pack(1)  # a block's delivery count, each member's entry in a MESSAGES column


class Session(asyncio.Protocol):
    """The server side of one connection."""

    in_columns: ClassVar[dict[int, Callable[[Session, int, bytes, float], bytes | None]]]

    def __init__(self, server: Server) -> None:
        self.server = server
        self.broker = server.broker
        self.reader = msg.RequestReader(server.max_message_size + fr.BODY_OVERHEAD)
        self.held = Holding()  # in-flight messages this connection read, in read order
        self.waiting: dict[int, Waiter] = {}  # its waiting reads by request id (some may be retired)
        self.read_from: set[Queue] = set()  # queues it counts as a consumer of
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.authenticated = server.auth_token is None
        self.unadmitted = bytearray()  # the first frame, while it is incomplete and not yet authenticated
        self.done = False  # failed authentication or lost framing: read nothing more
        self.answer_now = False  # with a store: the answer just built is reads' of stored messages only
        self.last_active = 0.0

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        if len(server.sessions) >= server.max_connections:
            log.warning("refusing %s: %d connections open, the limit", self.peer, len(server.sessions))
            refusal = LimitExceeded(f"the server holds its limit of {server.max_connections} connections")
            transport.write(_refusal(0, refusal))  # type: ignore[attr-defined]
            transport.close()
            return
        server.sessions.add(self)
        self.last_active = server.clock()
        log.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if not self.authenticated:
            data = self._authenticate(data)
            if not data:
                return
        reader = self.reader
        stats = self.server.request_stats
        began = perf_counter() if stats is not None else 0.0
        answer = None
        if not reader.buffered:
            size = len(data)
            whole = fr.HEADER_SIZE + int.from_bytes(data[8:12], "big")  # what the first frame takes
            if size == whole:  # one whole frame: what an unpipelined client sends
                answer = self.handle_one(data)
                count = 1
            elif size > whole:
                run = msg.cut_run(data)
                if run is not None:
                    answer = self.handle_run(run)
                    count = len(run.request_ids)
        if answer is None:
            requests = reader.feed(data)
            count = len(requests)
            replies = self.handle(requests) if requests else ()
            answer = replies[0] if len(replies) == 1 else b"".join(replies)
        if count:
            if stats is not None:
                stats.record(count, perf_counter() - began)
            if answer and not self.done:
                if self.answer_now:  # see `_all_stored`
                    self.answer_now = False
                    self.server.write(self.transport, answer)
                else:
                    self.server.send(self.transport, answer)
        if reader.failure is not None:
            failure = reader.failure
            log.warning("closing %s: %s", self.peer, failure.message)
            self.server.send(self.transport, msg.error_frame(failure.request_id, failure.code, failure.message))
            self.server.close_after_send(self.transport)
            self.done = True

    def _overflow(self, size: int) -> None:
        """Cut off a client whose replies to one received buffer pass the unread-reply limit."""
        log.warning("closing %s: %d bytes of replies unread (limit %d)", self.peer, size, self.server.max_output_buffer)
        self.done = True
        self.transport.abort()  # type: ignore[union-attr]  # connection_lost gives its messages back

    def waiters_active(self) -> bool:
        """Whether a waiting read is parked for this connection (it is not idle then)."""
        return any(waiter.active for waiter in self.waiting.values())

    def _authenticate(self, data: bytes) -> bytes:
        """Before authentication: the first frame must be a Hello with the server's token.

        The first frame is cut here, bounded at `PRE_AUTH_MAX_BODY`, so an unauthenticated
        peer cannot make the server buffer a full-size message. Returns the bytes after it
        once the connection is admitted, else b"" (not complete yet, or refused: then the
        connection gets an error and is closed; the token itself is never logged).
        """
        pending = self.unadmitted
        pending += data
        if len(pending) < fr.HEADER_SIZE:
            return b""
        magic, opcode, flags, request_id, length = fr.HEADER.unpack_from(pending)
        if magic != fr.MAGIC:
            failure = fr.framing_failure(magic, request_id, length, PRE_AUTH_MAX_BODY)
            self._shut(failure.request_id, failure.code, failure.message, failure.message)
            return b""
        if length > PRE_AUTH_MAX_BODY:
            message = f"authentication failed: the first frame must be a Hello of at most {PRE_AUTH_MAX_BODY} bytes"
            self._shut(request_id, ErrorCode.NOT_AUTHENTICATED, message, f"a first frame of {length} bytes")
            return b""
        end = fr.HEADER_SIZE + length
        if len(pending) < end:
            return b""
        body, rest = bytes(pending[fr.HEADER_SIZE : end]), bytes(pending[end:])
        self.unadmitted = bytearray()
        return rest if self._admit(opcode, flags, request_id, body) else b""

    def _admit(self, opcode: int, flags: int, request_id: int, body: bytes) -> bool:
        """Answer the first frame: True if it is a Hello with the right token and a supported version."""
        hello = None
        if opcode == fr.Op.HELLO and not flags:
            try:
                hello = msg.Hello.from_body(body)
            except RequestError:
                hello = None
        token = self.server.auth_token or b""
        if hello is not None and hmac.compare_digest(hello.token, token):
            try:
                reply = msg.encode(request_id, self._hello(hello, request_id, 0.0))
            except RequestError as exc:  # an unsupported version: refused like any Hello
                self.server.send(self.transport, _refusal(request_id, exc))  # type: ignore[arg-type]
                return False
            self.authenticated = True
            self.server.send(self.transport, reply)  # type: ignore[arg-type]
            return True
        reason = (
            "a wrong token" if hello is not None and hello.token else "no token" if hello is not None else "no Hello"
        )
        message = "authentication failed: send Hello with the server's token"
        self._shut(request_id, ErrorCode.NOT_AUTHENTICATED, message, reason)
        return False

    def _shut(self, request_id: int, code: int, message: str, reason: str) -> None:
        """Refuse an unauthenticated connection: log ``reason``, answer an error, close."""
        log.warning("authentication failed from %s: %s", self.peer, reason)
        self.server.send(self.transport, msg.error_frame(request_id, code, message))  # type: ignore[arg-type]
        self.server.close_after_send(self.transport)  # type: ignore[arg-type]
        self.done = True
        self.unadmitted = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()

    def release(self) -> None:
        """Give back everything this connection holds: in-flight messages, waiting reads, consumer counts.

        Runs when the connection goes, or earlier when the server stops (so the
        store records the requeues before it closes); the second call does nothing.
        """
        self.server.sessions.discard(self)
        self.done = True
        broker = self.broker
        for waiter in self.waiting.values():
            broker.cancel_wait(waiter)
        self.waiting = {}
        for queue in self.read_from:
            queue.consumers -= 1
        self.read_from = set()
        if self.held:
            count = broker.release_all(self.held, self.server.clock())
            log.debug("%s closed holding messages: %d requeued", self.peer, count)
            self.server.schedule_expiry()

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]

    # --- requests --------------------------------------------------------------------

    def handle(self, requests: list[tuple]) -> list[bytes]:
        """Answer a batch of requests from `RequestReader`; return the reply frames in request order.

        A waiting read has no reply here: it is answered when it wakes.
        """
        # Few names bound up front: most calls carry one request (an unpipelined client), and
        # pipelined batches of like requests take `handle_run` instead.
        broker = self.broker
        queues = broker.queues
        held = self.held
        server = self.server
        output = 0  # payload bytes of the replies so far: bounded before they are built, not after
        now = self.last_active = server.clock()
        timed = False
        replies: list[bytes] = []
        append = replies.append
        for opcode, request_id, a, b in requests:
            if opcode == _ENQUEUE:
                queue = queues.get(a)
                if queue is None:
                    append(_refusal(request_id, _no_such_queue(a)))
                elif len(b) > server.max_message_size:
                    append(_refusal(request_id, _too_large(len(b), server.max_message_size)))
                else:
                    id_ = queue.push(b)
                    if id_ >= 0:
                        append(_PACK_ID_FRAME(_MAGIC, _OBJECT_QUEUED, 0, request_id, 8, id_))
                        if queue.waiters:
                            broker.feed_waiters(queue, now)
                            timed = True
                    else:
                        append(_BARE_FRAME(_MAGIC, _FULL, 0, request_id, 0))
            elif opcode == _READ:
                queue = queues.get(a)
                if queue is None:
                    append(_refusal(request_id, _no_such_queue(a)))
                    continue
                if queue not in self.read_from:
                    self._count_consumer(queue)
                if len(held) + held.extra >= server.max_in_flight:  # (`Holding.count` inlined)
                    append(_refusal(request_id, _too_many_in_flight(server.max_in_flight)))
                    continue
                timeout_ms, wait_ms = b
                record = queue.take(held)
                if record is not None:
                    if timeout_ms:
                        server.expire_by(broker.set_deadline(record, timeout_ms, now))
                    data = record.data
                    append(
                        _PACK_MESSAGE_HEAD(
                            _MAGIC, _MESSAGE, 0, request_id, 12 + len(data), record.id, record.deliveries
                        )
                    )
                    append(data)
                    output += len(data)
                    if output > server.max_output_buffer:
                        self._overflow(output)
                        break
                elif wait_ms:
                    self._wait(queue, request_id, timeout_ms, 0, wait_ms, now)
                    timed = True
                else:
                    append(_BARE_FRAME(_MAGIC, _EMPTY, 0, request_id, 0))
            elif opcode == _CONFIRM:
                append(_confirm_reply(request_id, a, broker.confirm(a)))
            else:
                reply = self._handle_other(a, now)
                if reply:
                    append(reply)
                    output += len(reply)
                    if output > server.max_output_buffer:
                        self._overflow(output)
                        break
                timed = True
        if timed:
            server.schedule_expiry()
        return replies

    def handle_one(self, data: bytes) -> bytes | None:
        """Answer one whole frame (an unpipelined client's request) if it is a plain ENQUEUE,
        READ or CONFIRM: the reply `handle` would give, without cutting it into a request first.
        None, having changed nothing, for anything else (a wait, a refusal, a full in-flight
        allowance, a queue with waiting reads), which then goes through `handle`."""
        magic, opcode, flags, request_id, length = fr.HEADER.unpack_from(data)
        if magic != _MAGIC or flags:
            return None
        server = self.server
        if opcode == _ENQUEUE:
            size = data[12] if length else 0  # the queue name's length
            queue = self.broker.queues.get(data[13 : 13 + size]) if size and size < length else None
            if queue is None or queue.waiters or length - 1 - size > server.max_message_size:
                return None
            self.last_active = server.clock()
            id_ = queue.push(data[13 + size :])
            if id_ < 0:
                return _BARE_FRAME(_MAGIC, _FULL, 0, request_id, 0)
            return _PACK_ID_FRAME(_MAGIC, _OBJECT_QUEUED, 0, request_id, 8, id_)
        if opcode == _READ:
            if length < 10 or data[20] != length - 9:
                return None
            queue = self.broker.queues.get(data[21:])
            held = self.held
            if queue is None or len(held) + held.extra >= server.max_in_flight:
                return None
            timeout_ms, wait_ms = msg.TIMES.unpack_from(data, fr.HEADER_SIZE)
            if wait_ms and not queue.ready:
                return None
            if queue not in self.read_from:
                self._count_consumer(queue)
            now = self.last_active = server.clock()
            record = queue.take(held)
            if record is None:
                return _BARE_FRAME(_MAGIC, _EMPTY, 0, request_id, 0)
            if timeout_ms:
                server.expire_by(self.broker.set_deadline(record, timeout_ms, now))
            payload = record.data
            if len(payload) > server.max_output_buffer:
                self._overflow(len(payload))
                return b""
            if server.store is not None:
                self.answer_now = server.store.committed(record.id)
            head = _PACK_MESSAGE_HEAD(_MAGIC, _MESSAGE, 0, request_id, 12 + len(payload), record.id, record.deliveries)
            return head + payload
        if opcode == _CONFIRM and length == 8:
            self.last_active = server.clock()
            id_ = int.from_bytes(data[12:], "big")
            return _confirm_reply(request_id, id_, self.broker.confirm(id_))
        return None

    def _all_stored(self, entries: list[Entry]) -> bool:
        # With a store, an answer of reads (`handle_one`'s, `_read_run`'s) that hands out only
        # stored messages reports no change: it is written at once (`answer_now`). One that hands
        # out a message whose send is not committed yet waits for the commit like any reply, so a
        # consumer never sees a message a crash could undo. A block's messages were added in id
        # order and commits keep that order: its newest one tells.
        committed = self.server.store.committed  # type: ignore[union-attr]
        for entry in entries:
            if entry.__class__ is Block:
                newest = entry.end - 1  # type: ignore[union-attr]
            else:
                newest = entry.id  # type: ignore[union-attr]
            if not committed(newest):
                return False
        return True

    def handle_run(self, run: msg.Run) -> bytes | None:
        """Answer a run of like requests (`msg.cut_run`) as one batch: the same replies, in the same
        order, as `handle` would give them one by one. None, having done nothing, when the run
        needs that path (see the module's docstring), or holds a request `handle` would refuse."""
        if run.opcode == _CONFIRM:
            self.last_active = self.server.clock()
            outcomes = self.broker.confirm_many(run.values)
            if outcomes.count(_DONE) != len(outcomes):
                return b"".join(map(_confirm_reply, map(int.from_bytes, run.request_ids), run.values, outcomes))
            return msg.bare_frames(_CONFIRMED_OP, run.request_ids)
        if run.opcode == _ENQUEUE:
            return self._enqueue_run(run.request_ids, run.key, run.values)
        return self._read_run(run.request_ids, run.key)

    def _enqueue_run(self, request_ids: tuple[bytes, ...], name: bytes, payloads: tuple[bytes, ...]) -> bytes | None:
        queue = self.broker.queues.get(name)
        if (
            queue is None
            or len(payloads[0]) > self.server.max_message_size  # every payload has the first one's size
            or not queue.has_room(len(payloads))
            or queue.waiters  # one by one, each message would wake a waiting read of its own
        ):
            return None
        self.last_active = now = self.server.clock()
        ids = self.broker.enqueue_batch(queue, list(payloads), now)
        return msg.id_frames(_OBJECT_QUEUED, request_ids, ids)  # type: ignore[arg-type]

    def _read_run(self, request_ids: tuple[bytes, ...], body: bytes) -> bytes | None:
        if len(body) < 10 or body[8] != len(body) - 9:
            return None
        timeout_ms, wait_ms = msg.TIMES.unpack_from(body)
        queue = self.broker.queues.get(body[9:])
        count = len(request_ids)
        server = self.server
        if (
            queue is None
            or self.held.count + count > server.max_in_flight
            or (wait_ms and queue.ready < count)
            or count * server.max_message_size > server.max_output_buffer  # `handle` would check as it goes
        ):
            return None
        if queue not in self.read_from:
            self._count_consumer(queue)
        now = self.last_active = server.clock()
        entries = queue.take_many(self.held, count, NO_BYTE_LIMIT)
        if entries and timeout_ms:
            server.expire_by(self.broker.set_deadlines(entries, timeout_ms, now))
        ids, deliveries, payloads = columns(entries)
        if server.store is not None:
            self.answer_now = self._all_stored(entries)
        taken = len(ids)
        return msg.message_frames(request_ids, ids, deliveries, payloads) + msg.bare_frames(_EMPTY, request_ids[taken:])

    def _handle_other(self, frame: fr.Frame, now: float) -> bytes:
        """Answer a frame off the hot path: a refused request gets an Error frame, a waiting read b""."""
        opcode, flags, request_id, body = frame
        in_columns = self.in_columns.get(opcode)
        if in_columns is not None and not flags:
            reply = in_columns(self, request_id, body, now)
            if reply is not None:
                return reply
        try:
            if flags:
                raise InvalidRequest(f"unsupported flags 0x{flags:04x} for opcode 0x{opcode:02x}")
            request = msg.decode_request(opcode, body)
            handler = _HANDLERS.get(type(request))
            if handler is None:  # a well-formed ENQUEUE, READ or CONFIRM is always answered by `handle`
                raise RequestError(f"no handler for {type(request).__name__}")
            response = handler(self, request, request_id, now)
        except RequestError as exc:
            return _refusal(request_id, exc)
        if response is None or isinstance(response, bytes):
            return response or b""
        return msg.encode(request_id, response)

    # --- one handler per request type off the hot path; each returns its response (or
    # --- its frame), None for an answer that comes later, or raises RequestError to refuse.

    def _hello(self, request: msg.Hello, request_id: int, now: float) -> msg.Response:
        if request.version < 1:
            raise UnsupportedVersion(f"protocol version {request.version} is not supported (1-{fr.PROTOCOL_VERSION})")
        return msg.HelloOk(min(request.version, fr.PROTOCOL_VERSION), self.server.max_message_size, self.server.name)

    def _create(self, request: msg.CreateQueue, request_id: int, now: float) -> msg.Response:
        dead_letter = request.dead_letter_queue.encode() or None
        self.broker.create_queue(request.name.encode(), request.capacity, request.max_deliveries, dead_letter)
        return msg.QueueCreated.INSTANCE  # type: ignore[attr-defined, no-any-return]

    def _delete(self, request: msg.DeleteQueue, request_id: int, now: float) -> msg.Response:
        if not self.broker.delete_queue(request.name.encode()):
            raise _no_such_queue(request.name.encode())
        return msg.QueueDeleted.INSTANCE  # type: ignore[attr-defined, no-any-return]

    def _purge(self, request: msg.Purge, request_id: int, now: float) -> msg.Response:
        return msg.Purged(self.broker.purge(self._queue(request.name)))

    def _stats(self, request: msg.Stats, request_id: int, now: float) -> msg.Response:
        return msg.StatsReply(self._queue(request.name).stats())

    def _list(self, request: msg.ListQueues, request_id: int, now: float) -> msg.Response:
        return msg.StatsReply(self.server.stats())

    def _members(self, request: msg.Members, request_id: int, now: float) -> msg.Response:
        return msg.MembersReply(tuple(self.server.members), self.server.member_index)

    def _enqueue_delayed(self, request: msg.EnqueueDelayed, request_id: int, now: float) -> msg.Response:
        queue = self._queue(request.queue)
        self._check_size(request.data)
        id_ = self.broker.enqueue_delayed(queue, request.data, request.delay_ms, now)
        return msg.ObjectQueued(id_) if id_ >= 0 else msg.Full.INSTANCE  # type: ignore[attr-defined]

    # --- batches kept in their columns: each answers what the decoded request would get, or
    # --- returns None, having changed nothing, to leave it to its handler (a refusal, a full queue).

    def _enqueue_columns(self, request_id: int, body: bytes, now: float) -> bytes | None:
        columns = msg.split_enqueue_batch(body)
        if columns is None:
            return None
        name, lengths, data, longest = columns
        queue = self.broker.queues.get(name)
        if queue is None or longest > self.server.max_message_size:
            return None
        ids = self.broker.enqueue_columns(queue, lengths, data, now)
        return msg.objects_queued_frame(request_id, ids) if ids is not None else None

    def _confirm_columns(self, request_id: int, body: bytes, now: float) -> bytes | None:
        if not self.broker.confirm_column(body):
            return None
        return fr.HEADER.pack(_MAGIC, _CONFIRM_RESULTS, 0, request_id, len(body) >> 3) + bytes(len(body) >> 3)

    def _enqueue_batch(self, request: msg.EnqueueBatch, request_id: int, now: float) -> msg.Response:
        queue = self._queue(request.queue)
        self._check_size(max(request.items, key=len))
        ids = self.broker.enqueue_batch(queue, list(request.items), now)
        return msg.ObjectsQueued(tuple(ids)) if ids is not None else msg.Full.INSTANCE  # type: ignore[attr-defined]

    def _read_batch(self, request: msg.ReadBatch, request_id: int, now: float) -> bytes | None:
        queue = self._queue(request.queue)
        if queue not in self.read_from:
            self._count_consumer(queue)
        allowance = self.server.max_in_flight - self.held.count
        if allowance <= 0:
            raise _too_many_in_flight(self.server.max_in_flight)
        count = min(request.max_messages, allowance)
        entries = self.broker.deliver_many(queue, count, request.timeout_ms, self.held, now)
        if not entries and request.wait_ms:
            self._wait(queue, request_id, request.timeout_ms, count, request.wait_ms, now)
            return None
        return _messages_frame(request_id, entries)

    def _confirm_batch(self, request: msg.ConfirmBatch, request_id: int, now: float) -> bytes:
        outcomes = self.broker.confirm_many(request.ids)
        return fr.HEADER.pack(fr.MAGIC, fr.Op.CONFIRM_RESULTS, 0, request_id, len(outcomes)) + outcomes

    def _cancel(self, request: msg.Cancel, request_id: int, now: float) -> msg.Response:
        waiter = self.waiting.pop(request.request_id, None)
        if waiter is not None and waiter.active:
            self.broker.cancel_wait(waiter)
            waiter.wake([])  # the read is answered now, as if its wait had ended
        return msg.Cancelled.INSTANCE  # type: ignore[attr-defined, no-any-return]

    def _touch(self, request: msg.Touch, request_id: int, now: float) -> msg.Response:
        outcome = self.broker.touch(request.id, request.timeout_ms, now)
        return _settled(outcome, request.id, msg.Touched.INSTANCE)  # type: ignore[attr-defined]

    def _release(self, request: msg.Release, request_id: int, now: float) -> msg.Response:
        outcome = self.broker.release(request.id, request.delay_ms, now)
        return _settled(outcome, request.id, msg.Released.INSTANCE)  # type: ignore[attr-defined]

    # --- helpers ---------------------------------------------------------------------

    def _queue(self, name: str) -> Queue:
        raw = name.encode()
        queue = self.broker.queues.get(raw)
        if queue is None:
            raise _no_such_queue(raw)
        return queue

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.server.max_message_size:
            raise _too_large(len(data), self.server.max_message_size)

    def _count_consumer(self, queue: Queue) -> None:
        self.read_from.add(queue)
        queue.consumers += 1

    def _wait(
        self, queue: Queue, request_id: int, timeout_ms: int, max_messages: int, wait_ms: int, now: float
    ) -> None:
        """Park a read; ``max_messages`` 0 means a single READ (answered with Message/Empty)."""
        if len(self.waiting) > 32:
            self.waiting = {rid: waiter for rid, waiter in self.waiting.items() if waiter.active}
        earlier = self.waiting.get(request_id)
        if earlier is not None and earlier.active:  # the client reused a request id: answer the older read now
            self.broker.cancel_wait(earlier)
            earlier.wake([])
        wake = partial(self._wake, request_id, max_messages)
        self.waiting[request_id] = self.broker.wait(queue, self.held, timeout_ms, max_messages or 1, wait_ms, now, wake)

    def _wake(self, request_id: int, max_messages: int, entries: list[Entry] | None) -> None:
        self.last_active = self.server.clock()  # an answered wait restarts the idle clock
        transport = self.transport
        if transport is None or transport.is_closing():
            # Woken while closing: these messages were never sent, so they do not count as delivered.
            if entries:
                records = self.broker.records_of(entries)
                for record in records:
                    record.deliveries -= 1
                self.broker.requeue(records, self.server.clock())  # type: ignore[arg-type]
            return
        if entries is None:
            reply = _refusal(request_id, NoSuchQueue("the queue was deleted while the read waited"))
        elif max_messages:
            reply = _messages_frame(request_id, entries)
        elif entries:
            (id_,), (deliveries,), (data,) = columns(entries)
            reply = msg.encode(request_id, msg.Message(id_, data, deliveries))
        else:
            reply = _BARE_FRAME(fr.MAGIC, _EMPTY, 0, request_id, 0)
        self.server.send(transport, reply)


# Batch requests answered from their columns first (see `_enqueue_columns`), by opcode.
Session.in_columns = {
    int(fr.Op.ENQUEUE_BATCH): Session._enqueue_columns,
    int(fr.Op.CONFIRM_BATCH): Session._confirm_columns,
}

_HANDLERS = {
    msg.Hello: Session._hello,
    msg.CreateQueue: Session._create,
    msg.DeleteQueue: Session._delete,
    msg.Purge: Session._purge,
    msg.Stats: Session._stats,
    msg.ListQueues: Session._list,
    msg.Members: Session._members,
    msg.EnqueueDelayed: Session._enqueue_delayed,
    msg.EnqueueBatch: Session._enqueue_batch,
    msg.ReadBatch: Session._read_batch,
    msg.ConfirmBatch: Session._confirm_batch,
    msg.Touch: Session._touch,
    msg.Release: Session._release,
    msg.Cancel: Session._cancel,
}


def _messages_frame(request_id: int, entries: list[Entry]) -> bytes:
    """The MESSAGES frame of a batch read: straight from the columns its messages were sent in
    when it took them from slabs (the usual case), else from their columns gathered."""
    if all(entry.__class__ is Block and entry.slab is not None for entry in entries):  # type: ignore[union-attr]
        slabs = [entry.slab for entry in entries]  # type: ignore[union-attr]
        count = sum(entry.end - entry.first_id for entry in entries)  # type: ignore[union-attr]
        ids, lengths, payloads = zip(*slabs) if slabs else ((), (), ())
        return msg.messages_frame_of_columns(request_id, count, ids, [_FIRST_DELIVERY * count], lengths, payloads)
    return msg.messages_frame(request_id, *columns(entries))


def _settled(outcome: Outcome, id_: int, done: msg.Response) -> msg.Response:
    if outcome == Outcome.DONE:
        return done
    if outcome == Outcome.REQUEUED:
        return msg.Requeued.INSTANCE  # type: ignore[attr-defined, no-any-return]
    raise _no_such_message(id_)


def _confirm_reply(request_id: int, id_: int, outcome: int) -> bytes:
    """The reply to a confirm of ``id_`` that had ``outcome``."""
    if outcome == _DONE:
        return _BARE_FRAME(_MAGIC, _CONFIRMED_OP, 0, request_id, 0)
    if outcome == _REQUEUED:
        return _BARE_FRAME(_MAGIC, _REQUEUED_OP, 0, request_id, 0)
    return _refusal(request_id, _no_such_message(id_))


def _refusal(request_id: int, error: RequestError) -> bytes:
    return msg.error_frame(request_id, error.code, error.message)


def _too_many_in_flight(limit: int) -> LimitExceeded:
    return LimitExceeded(f"this connection holds its limit of {limit} messages in flight: confirm some first")


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

"""One client connection: bytes in, requests handled, bytes out.

Theory of operation
-------------------
`Session` is an asyncio Protocol (callbacks, not streams: no task or future
per request). Each `data_received` cuts every complete frame out of the
received bytes, handles them all in one loop and answers them all with one
``transport.write``: a client that pipelines 32 requests costs one system call
each way, not 32.

Requests take one of two paths. The *general path* is this module: `handle`
answers what `codecs.RequestReader` cuts, frame by frame (ENQUEUE, READ and
CONFIRM inline, every other request decoded into its dataclass and given to
its handler). The *fast paths* (`fastpath`, a mixin of `Session`) answer the
common cases straight from their bytes: a lone ENQUEUE, READ or CONFIRM (what
an unpipelined client sends), a *run* of like requests (what a pipelining
client sends: 32 ENQUEUEs to one queue, 32 READs of one queue, 32 CONFIRMs,
cut with one struct call and answered as one batch), and batches kept in their
columns. A fast path gives the same reply bytes and the same state as the
general path, or declines before it changes anything and leaves the buffer to
`handle`; tests/server/test_runs.py checks that contract. Both paths admit a
request with the same check (`admission`: queue existence, message size,
queued bytes, the store, in-flight limit), so they cannot disagree on a limit.

Errors come in two kinds (as in NSQ). A request the server refuses (a missing
queue, a malformed body, an unknown opcode) gets an Error frame and the
session goes on. A frame that breaks the framing (bad magic, a body over the
limit) gets an Error frame and then the connection closes, because nothing
after it can be trusted to start at a frame boundary.

Turns. A received buffer may hold thousands of requests (a pipeline of
waiting reads, say). The reader cuts at most `TURN` frames at a time; the
session answers them, stops reading, and takes the next `TURN` in a later
turn of the loop, after the other connections' (`_pause_turns`), so no
connection holds the loop for more than a turn's work.

Strangers. With a token, a new connection is a *stranger* until its Hello
passes: strangers have a quota of their own (`Limits.max_unauthenticated`;
when it is full the oldest stranger is closed to make room, so a flood of
them cannot keep out a client whose Hello follows its connect) and a deadline
(`Limits.handshake_timeout`, a timer per stranger, at most the quota of
them). Only authenticated connections count against `Limits.max_connections`.

When the client stops reading and the transport's write buffer passes its high
mark, the session stops reading requests until the buffer drains, so a slow
consumer cannot make the server buffer without bound. Within one received
buffer, the replies' payloads are bounded by ``max_output_buffer`` as they are
built: a client whose replies pass it is cut off.

With a data directory, replies go out only after the store has committed the
changes they report (`Host.send`): "queued" then means "stored". An answer of
reads (a lone READ, a run of them) reports no change: when every message it hands
out is stored already, it is written at once (`Host.write`, ``answer_now``); when
one is still being sent, it waits for that commit too, so a consumer never sees a
message a crash could undo.

A read that waits (``wait_ms``) on an empty queue is answered later, from the
broker's wake callback, by its request id; the session meanwhile goes on with
the requests behind it. ``waiting`` lists a connection's waiting reads until
each is answered (O(1) each way), at most `Limits.max_waiting_reads` of them.

When the connection goes, every message it holds in flight goes back to the
front of its queue, and its waiting reads are retired.

The session knows its server only as a `Host` (`host`): what it reads of it
and calls on it, and nothing else.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import weakref
from collections.abc import Callable
from functools import partial
from struct import error as struct_error
from time import perf_counter
from typing import Any, cast

from ..core import Entry, Holding, Outcome, Queue, Waiter, columns
from ..errors import ErrorCode, InvalidRequest, LimitExceeded, NoSuchQueue, RequestError, UnsupportedVersion
from ..protocol import messages as msg
from ..protocol.codecs import (
    ID_BODY,
    RequestReader,
    confirm_results_frame,
    cut_run,
    error_frame,
    pack_bare_frame,
    pack_id_frame,
    pack_message_head,
)
from ..protocol.frames import (
    BODY_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    LENGTH_INDEX,
    MAGIC,
    NEVER_MS,
    OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Frame,
    Op,
    framing_failure,
)
from ..protocol.layouts import MESSAGE_FIELDS
from .admission import admit_change, admit_dead_letter, admit_queue, admit_read, admit_send, admit_wait
from .fastpath import (
    FastPaths,
    confirm_reply,
    message_of,
    messages_reply,
    no_such_message,
    origin_of,
    refusal,
    visibility,
)
from .host import Host
from .mover import Mover
from .security import PRE_AUTH_MAX_BODY

__all__ = ["Session"]

log = logging.getLogger("dbqueue.server")

# Plain ints: comparing against an enum member looked up on its class costs ~6x more.
_ENQUEUE, _READ, _CONFIRM = int(Op.ENQUEUE), int(Op.READ), int(Op.CONFIRM)  # as RequestReader tags them
_OBJECT_QUEUED, _MESSAGE, _FULL, _EMPTY = int(Op.OBJECT_QUEUED), int(Op.MESSAGE), int(Op.FULL), int(Op.EMPTY)
_MESSAGE_FIXED = MESSAGE_FIELDS.size  # a MESSAGE body's length besides its payload
_unpack_header = HEADER.unpack_from
_NO_BYTE_LIMIT = 1 << 62  # a byte limit that is off, as a number every sum stays below
# Requests one connection has handled in one turn of the loop at most, when a received buffer holds
# more (a turn of waiting reads costs a few milliseconds): the rest wait for the next turn.
TURN = 512

_SPOKEN = (
    f"version {PROTOCOL_VERSION}"
    if OLDEST_PROTOCOL_VERSION == PROTOCOL_VERSION
    else f"versions {OLDEST_PROTOCOL_VERSION}-{PROTOCOL_VERSION}"
)
_VERSION_REFUSED = (
    "protocol version {} is not supported: this server speaks " + _SPOKEN + " (since version 3 a visibility "
    "timeout of 0 means the queue's default, no longer never, and CREATE_QUEUE carries that default; since "
    "version 2 a confirm, touch or release settles only a message held by the connection that sends it): "
    "upgrade the client"
)

# Each server's connections that have not passed their Hello yet, oldest first (only a server with a
# token has any): kept here, beside the handshake they are in, rather than on the server.
_strangers: weakref.WeakKeyDictionary[Any, dict[Session, None]] = weakref.WeakKeyDictionary()

# A handler off the hot path: (session, decoded request, request id, now) -> its response, or its
# frame, or None for an answer that comes later; it raises RequestError to refuse.
Handler = Callable[["Session", Any, int, float], "msg.Response | bytes | None"]


class Session(FastPaths, asyncio.Protocol):
    """The server side of one connection (the fast paths come from `FastPaths`)."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.broker = server.broker
        self.reader = RequestReader(server.max_message_size + BODY_OVERHEAD, TURN)
        self.held = Holding()  # in-flight messages this connection read, in read order
        self.waiting: dict[int, Waiter] = {}  # its waiting reads by request id, each until it is answered
        self.read_from: set[Queue] = set()  # queues it counts as a consumer of
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.authenticated = server.auth_token is None
        self.unadmitted = bytearray()  # the first frame, while it is incomplete and not yet authenticated
        self.done = False  # failed authentication or lost framing: read nothing more
        self.answer_now = False  # with a store: the answer just built is reads' of stored messages only
        self.last_active = 0.0
        self.stirred = False  # a request came that did not read the clock (see `Server._reap_idle`)
        self.handshake: asyncio.TimerHandle | None = None  # the Hello's deadline, while it has not passed
        self.loop: asyncio.AbstractEventLoop | None = None  # set when made by a running loop
        self.writing_paused = False
        # Copies of the byte limits a send is admitted against (off: a number no sum reaches).
        limits = server.limits
        self.memory_budget = limits.memory_budget
        self.capacity_bytes = limits.default_capacity_bytes or _NO_BYTE_LIMIT

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = connected = cast(asyncio.Transport, transport)
        peer = connected.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand (tests, benchmarks): every buffer in one turn, no deadlines
            self.loop = None
        server = self.server
        if self.authenticated:
            if len(server.sessions) - len(_strangers.get(server, ())) >= server.max_connections:
                self._refuse(connected, 0, _too_many(server.max_connections))
                return
        else:  # a token is wanted: a stranger until its Hello passes, on a quota and a deadline of its own
            strangers = _strangers.get(server)
            if strangers is None:
                strangers = _strangers[server] = {}
            limits = server.limits
            if len(strangers) >= limits.max_unauthenticated:
                # Full: the oldest stranger makes room, not the newcomer, so that a flood of strangers
                # cannot keep out a client whose Hello follows its connect within a round trip.
                next(iter(strangers))._crowded_out(limits.max_unauthenticated)
            strangers[self] = None
            if self.loop is not None:
                self.handshake = self.loop.call_later(limits.handshake_timeout, self._too_slow)
        server.sessions.add(self)
        self.last_active = server.clock()
        log.debug("connection from %s", self.peer)

    def _refuse(self, transport: asyncio.Transport, request_id: int, why: str) -> None:
        """Refuse a connection the server has no place for: a LimitExceeded error, then close."""
        log.warning("refusing %s: %s", self.peer, why)
        transport.write(refusal(request_id, LimitExceeded(why)))
        transport.close()
        self.done = True

    def _too_slow(self) -> None:
        """The Hello's deadline passed: close a connection that has not authenticated by now."""
        self.handshake = None
        if self.authenticated or self.done or self.transport is None:
            return
        timeout = self.server.limits.handshake_timeout
        message = f"authentication failed: no Hello with the server's token within {timeout:g} s"
        self._shut(self.transport, 0, ErrorCode.NOT_AUTHENTICATED, message, "no Hello in time")

    def _crowded_out(self, quota: int) -> None:
        """Close this connection, the oldest one not authenticated yet, to make room for a newer one."""
        self._leave_strangers()
        if self.transport is not None and not self.done:
            message = f"authentication failed: {quota} newer connections are waiting for their Hello"
            self._shut(self.transport, 0, ErrorCode.NOT_AUTHENTICATED, message, "crowded out before its Hello")

    def _admitted(self) -> None:
        """The Hello passed: the connection leaves the strangers for the authenticated connections."""
        self.authenticated = True
        self._leave_strangers()

    def _leave_strangers(self) -> None:
        strangers = _strangers.get(self.server)
        if strangers is not None:
            strangers.pop(self, None)
        if self.handshake is not None:
            self.handshake.cancel()
            self.handshake = None

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if self.done or transport is None:
            return
        if not self.authenticated:
            data = self._authenticate(data, transport)
            if not data:
                return
        reader = self.reader
        stats = self.server.request_stats
        began = perf_counter() if stats is not None else 0.0
        answer = None
        if not reader.buffered:
            size = len(data)
            try:  # (free in the usual case, where a test of the size would not be)
                header = _unpack_header(data)  # unpacked once: `handle_one` takes it as it is
                whole = HEADER_SIZE + header[LENGTH_INDEX]  # what the first frame takes
            except struct_error:  # not even a header: the reader keeps it
                whole = size + 1
            if size == whole:  # one whole frame: what an unpipelined client sends
                answer = self.handle_one(data, header)
                if answer is not None:  # answered in place: the reader has seen none of it
                    if stats is not None:
                        stats.record(1, perf_counter() - began)
                    if answer and not self.done:
                        if self.answer_now:  # see `fastpath._all_stored`
                            self.answer_now = False
                            self.server.write(transport, answer)
                        else:
                            self.server.send(transport, answer)
                    return
            elif size > whole:
                run = cut_run(data)
                if run is not None:
                    answer = self.handle_run(run)
                    count = len(run.request_ids)
        if answer is None:
            requests = reader.feed(data)
            count = len(requests)
            replies = self.handle(requests) if requests else ()
            answer = replies[0] if len(replies) == 1 else b"".join(replies)
            if reader.more:  # a turn's worth: the rest after the other connections' turns
                if stats is not None:
                    stats.record(count, perf_counter() - began)
                self._pause_turns(transport, answer)
                return
        if count:
            if stats is not None:
                stats.record(count, perf_counter() - began)
            if answer and not self.done:
                if self.answer_now:  # see `fastpath._all_stored`
                    self.answer_now = False
                    self.server.write(transport, answer)
                else:
                    self.server.send(transport, answer)
        if reader.failure is not None:
            self._lost_framing(transport)

    def _lost_framing(self, transport: asyncio.Transport) -> None:
        """Answer the frame that broke the framing with its error, and close."""
        failure = self.reader.failure
        assert failure is not None  # called once it is set
        log.warning("closing %s: %s", self.peer, failure.message)
        self.server.send(transport, error_frame(failure.request_id, failure.code, failure.message))
        self.server.close_after_send(transport)
        self.done = True

    def _pause_turns(self, transport: asyncio.Transport, answer: bytes) -> None:
        """Answer the requests of this turn and keep the rest for later turns of the loop.

        The reader cuts at most `TURN` frames a feed (`RequestReader`): one connection's pipeline
        of thousands of requests then delays the others by a turn's work, not by all of it. The
        connection reads nothing more meanwhile, so its replies keep their order. Driven by hand
        (no loop), the turns follow one another at once."""
        if answer and not self.done:
            self.server.send(transport, answer)
        if self.loop is None:
            while self.reader.more and not self.done:
                self._next_turn()
            return
        transport.pause_reading()
        self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Handle the next turn's requests, already received; read again once none is left."""
        transport, reader = self.transport, self.reader
        if transport is None or self.done or transport.is_closing():
            return
        if self.writing_paused:
            return  # the client is not reading its replies: `resume_writing` goes on
        stats = self.server.request_stats
        began = perf_counter() if stats is not None else 0.0
        requests = reader.feed(b"")
        replies = self.handle(requests) if requests else []
        if stats is not None and requests:
            stats.record(len(requests), perf_counter() - began)
        if replies and not self.done:
            self.server.send(transport, b"".join(replies))
        if not self.done:  # (handling may have cut the connection off)
            if reader.more:
                if self.loop is not None:
                    self.loop.call_soon(self._next_turn)
            elif reader.failure is not None:  # the stream broke behind the requests just answered
                self._lost_framing(transport)
            elif self.loop is not None:
                transport.resume_reading()

    def _overflow(self, size: int) -> None:
        """Cut off a client whose replies to one received buffer pass the unread-reply limit."""
        log.warning("closing %s: %d bytes of replies unread (limit %d)", self.peer, size, self.server.max_output_buffer)
        self.done = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost gives its messages back

    def waiters_active(self) -> bool:
        """Whether a waiting read is parked for this connection (it is not idle then)."""
        return bool(self.waiting)

    def _authenticate(self, data: bytes, transport: asyncio.Transport) -> bytes:
        """Before authentication: the first frame must be a Hello with the server's token.

        The first frame is cut here, bounded at `PRE_AUTH_MAX_BODY`, so an unauthenticated
        peer cannot make the server buffer a full-size message. Returns the bytes after it
        once the connection is admitted, else b"" (not complete yet, or refused: then the
        connection gets an error and is closed; the token itself is never logged).
        """
        pending = self.unadmitted
        pending += data
        if len(pending) < HEADER_SIZE:
            return b""
        magic, opcode, flags, request_id, length = HEADER.unpack_from(pending)
        if magic != MAGIC:
            failure = framing_failure(magic, request_id, length, PRE_AUTH_MAX_BODY)
            self._shut(transport, failure.request_id, failure.code, failure.message, failure.message)
            return b""
        if length > PRE_AUTH_MAX_BODY:
            message = f"authentication failed: the first frame must be a Hello of at most {PRE_AUTH_MAX_BODY} bytes"
            self._shut(transport, request_id, ErrorCode.NOT_AUTHENTICATED, message, f"a first frame of {length} bytes")
            return b""
        end = HEADER_SIZE + length
        if len(pending) < end:
            return b""
        body, rest = bytes(pending[HEADER_SIZE:end]), bytes(pending[end:])
        self.unadmitted = bytearray()
        return rest if self._greet(transport, opcode, flags, request_id, body) else b""

    def _greet(self, transport: asyncio.Transport, opcode: int, flags: int, request_id: int, body: bytes) -> bool:
        """Answer the first frame: True if it is a Hello with the right token and a supported version."""
        hello = None
        if opcode == Op.HELLO and not flags:
            try:
                hello = msg.Hello.from_body(body)
            except RequestError:
                hello = None
        token = self.server.auth_token or b""
        if hello is not None and hmac.compare_digest(hello.token, token):
            try:
                reply = msg.encode(request_id, self._hello(hello, request_id, 0.0))
            except RequestError as exc:  # an unsupported version: refused like any Hello
                self.server.send(transport, refusal(request_id, exc))
                return False
            self._admitted()
            server = self.server
            if len(server.sessions) - len(_strangers[server]) > server.max_connections:
                self._refuse(transport, request_id, _too_many(server.max_connections))
                return False
            server.send(transport, reply)
            return True
        reason = (
            "a wrong token" if hello is not None and hello.token else "no token" if hello is not None else "no Hello"
        )
        message = "authentication failed: send Hello with the server's token"
        self._shut(transport, request_id, ErrorCode.NOT_AUTHENTICATED, message, reason)
        return False

    def _shut(self, transport: asyncio.Transport, request_id: int, code: int, message: str, reason: str) -> None:
        """Refuse an unauthenticated connection: log ``reason``, answer an error, close."""
        log.warning("authentication failed from %s: %s", self.peer, reason)
        self.server.send(transport, error_frame(request_id, code, message))
        self.server.close_after_send(transport)
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
        if not self.authenticated:
            self._leave_strangers()
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
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.reader.more:  # requests received already wait their turn: they come first
            if self.loop is not None:
                self.loop.call_soon(self._next_turn)
        elif self.transport is not None:
            self.transport.resume_reading()

    # --- requests: the general path ----------------------------------------------------

    def handle(self, requests: list[tuple[int, int, Any, Any]]) -> list[bytes]:
        """Answer a batch of requests from `RequestReader`; return the reply frames in request order.

        A waiting read has no reply here: it is answered when it wakes.
        """
        # Few names bound up front: most calls carry one request (an unpipelined client), and
        # pipelined batches of like requests take `handle_run` instead.
        broker = self.broker
        held = self.held
        server = self.server
        output = 0  # payload bytes of the replies so far: bounded before they are built, not after
        now = self.last_active = server.clock()
        timed = False
        replies: list[bytes] = []
        append = replies.append
        for opcode, request_id, a, b in requests:
            if opcode == _ENQUEUE:
                try:
                    queue = admit_send(self, a, len(b), len(b))
                except RequestError as exc:
                    append(refusal(request_id, exc))
                    continue
                id_ = queue.push(b, now)
                if id_ >= 0:
                    append(pack_id_frame(MAGIC, _OBJECT_QUEUED, 0, request_id, ID_BODY, id_))
                    if queue.waiters:
                        broker.feed_waiters(queue, now)
                        timed = True
                else:
                    append(pack_bare_frame(MAGIC, _FULL, 0, request_id, 0))
            elif opcode == _READ:
                try:
                    queue = admit_read(self, a, 1)
                except RequestError as exc:
                    append(refusal(request_id, exc))
                    continue
                timeout_ms, wait_ms = b
                timeout_ms = (timeout_ms or queue.visibility_ms) % NEVER_MS  # see `visibility`
                record = queue.take(held)
                if record is not None:
                    if timeout_ms:
                        server.expire_by(broker.set_deadline(record, timeout_ms, now))
                    data = record.data
                    origin = queue.origins.get(record.id) if queue.has_origins else None
                    if origin is None:
                        append(
                            pack_message_head(
                                MAGIC, _MESSAGE, 0, request_id, _MESSAGE_FIXED + len(data), record.id, record.deliveries
                            )
                        )
                        append(data)
                    else:
                        append(msg.encode(request_id, message_of(record.id, data, record.deliveries, origin)))
                    output += len(data)
                    if output > server.max_output_buffer:
                        self._overflow(output)
                        break
                elif wait_ms:
                    try:
                        admit_wait(self, request_id)
                    except RequestError as exc:
                        append(refusal(request_id, exc))
                        continue
                    self._wait(queue, request_id, timeout_ms, 0, wait_ms, now)
                    timed = True
                else:
                    append(pack_bare_frame(MAGIC, _EMPTY, 0, request_id, 0))
            elif opcode == _CONFIRM:
                append(confirm_reply(request_id, a, broker.confirm(a, held)))
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

    def _handle_other(self, frame: Frame, now: float) -> bytes:
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
            return refusal(request_id, exc)
        if response is None or isinstance(response, bytes):
            return response or b""
        return msg.encode(request_id, response)

    # --- one handler per request type off the hot path; each returns its response (or
    # --- its frame), None for an answer that comes later, or raises RequestError to refuse.

    def _hello(self, request: msg.Hello, request_id: int, now: float) -> msg.Response:
        if request.version < OLDEST_PROTOCOL_VERSION:
            raise UnsupportedVersion(_VERSION_REFUSED.format(request.version))
        return msg.HelloOk(min(request.version, PROTOCOL_VERSION), self.server.max_message_size, self.server.name)

    def _create(self, request: msg.CreateQueue, request_id: int, now: float) -> msg.Response:
        name = request.name.encode()
        if name not in self.broker.queues:  # creating an existing queue changes nothing
            admit_change(self)
        dead_letter = request.dead_letter_queue.encode() or None
        self.broker.create_queue(
            name, request.capacity, request.max_deliveries, dead_letter, request.visibility_timeout_ms
        )
        return msg.QueueCreated.INSTANCE

    def _delete(self, request: msg.DeleteQueue, request_id: int, now: float) -> msg.Response:
        name = request.name.encode()
        admit_queue(self, name)
        admit_change(self)
        self.broker.delete_queue(name)
        return msg.QueueDeleted.INSTANCE

    def _purge(self, request: msg.Purge, request_id: int, now: float) -> msg.Response:
        queue = admit_queue(self, request.name.encode())
        admit_change(self)
        return msg.Purged(self.broker.purge(queue))

    def _stats(self, request: msg.Stats, request_id: int, now: float) -> msg.Response:
        return msg.StatsReply(admit_queue(self, request.name.encode()).stats())

    def _list(self, request: msg.ListQueues, request_id: int, now: float) -> msg.Response:
        return msg.StatsReply(self.server.stats())

    def _members(self, request: msg.Members, request_id: int, now: float) -> msg.Response:
        members = self.server.members
        if any(map(_wildcard, members)):  # bound to 0.0.0.0 or ::, and not told an address to advertise
            sockname = None if self.transport is None else self.transport.get_extra_info("sockname")
            members = as_reached(members, sockname)
        return msg.MembersReply(tuple(members), self.server.member_index)

    def _enqueue_delayed(self, request: msg.EnqueueDelayed, request_id: int, now: float) -> msg.Response:
        queue = admit_send(self, request.queue.encode(), len(request.data), len(request.data))
        id_ = self.broker.enqueue_delayed(queue, request.data, request.delay_ms, now)
        return msg.ObjectQueued(id_) if id_ >= 0 else msg.Full.INSTANCE

    def _enqueue_batch(self, request: msg.EnqueueBatch, request_id: int, now: float) -> msg.Response:
        sizes = list(map(len, request.items))
        total = sum(sizes)
        queue = admit_send(self, request.queue.encode(), max(sizes), total)
        ids = self.broker.enqueue_batch(queue, list(request.items), now, total)
        return msg.ObjectsQueued(tuple(ids)) if ids is not None else msg.Full.INSTANCE

    def _read_batch(self, request: msg.ReadBatch, request_id: int, now: float) -> bytes | None:
        queue = admit_read(self, request.queue.encode(), 1)
        count = min(request.max_messages, self.server.max_in_flight - self.held.count)  # admitted: at least 1
        timeout_ms = visibility(request.timeout_ms, queue)
        entries = self.broker.deliver_many(queue, count, timeout_ms, self.held, now)
        if not entries and request.wait_ms:
            admit_wait(self, request_id)
            self._wait(queue, request_id, timeout_ms, count, request.wait_ms, now)
            return None
        return messages_reply(request_id, entries)

    def _confirm_batch(self, request: msg.ConfirmBatch, request_id: int, now: float) -> bytes:
        return confirm_results_frame(request_id, self.broker.confirm_many(request.ids, self.held))

    def _cancel(self, request: msg.Cancel, request_id: int, now: float) -> msg.Response:
        waiter = self.waiting.pop(request.request_id, None)
        if waiter is not None and waiter.active:
            self.broker.cancel_wait(waiter)
            waiter.wake([])  # the read is answered now, as if its wait had ended
        return msg.Cancelled.INSTANCE

    def _touch(self, request: msg.Touch, request_id: int, now: float) -> msg.Response:
        timeout_ms = request.timeout_ms
        # 0: the message's queue's default (the broker looks it up); NEVER_MS: no deadline.
        outcome = self.broker.touch(request.id, None if not timeout_ms else timeout_ms % NEVER_MS, now, self.held)
        return _settled(outcome, request.id, msg.Touched.INSTANCE)

    def _release(self, request: msg.Release, request_id: int, now: float) -> msg.Response:
        outcome = self.broker.release(request.id, request.delay_ms, now, self.held)
        return _settled(outcome, request.id, msg.Released.INSTANCE)

    def _dead_letter(self, request: msg.DeadLetter, request_id: int, now: float) -> msg.Response:
        admit_dead_letter(self)
        # The broker refuses (no dead-letter queue, or a full one) before it changes anything, so a
        # refused message stays in flight with this connection, its deadline as it was.
        outcome = self.broker.dead_letter(request.id, now, self.held)
        return _settled(outcome, request.id, msg.DeadLettered.INSTANCE)

    def _peek(self, request: msg.Peek, request_id: int, now: float) -> msg.Response:
        queue = admit_queue(self, request.queue.encode())
        # Bounded as a batch read's reply is: the broker stops past its batch bytes, and a reply
        # past the output limit cuts the connection off like any other (`handle` checks).
        seen = self.broker.peek(queue, request.count, now, delayed=request.delayed, in_flight=request.in_flight)
        return msg.Peeked(
            tuple(
                msg.PeekedMessage(
                    entry.id,
                    entry.data,
                    entry.deliveries,
                    entry.state,
                    entry.enqueued_ms / 1000.0,
                    origin_of(entry.origin) if entry.origin is not None else None,
                )
                for entry in seen
            )
        )

    def _move(self, request: msg.Move, request_id: int, now: float) -> msg.Response | None:
        source = admit_queue(self, request.source.encode())
        destination = admit_queue(self, request.destination.encode())
        admit_change(self)
        mover = Mover.between(self.server, source, destination, request.count or None)
        if mover.step():  # one step's worth: answered now, in order, as every other request
            return _moved(mover)
        # More: the rest a step a turn of the loop, the others' requests in between (`mover`); answered by id.
        mover.finish(self.loop, lambda mover: self._answer_move(request_id, mover))
        return None

    def _answer_move(self, request_id: int, mover: Mover) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the move went on without its client: what moved stays moved (Stats tell)
        try:
            reply = msg.encode(request_id, _moved(mover))
        except RequestError as exc:
            reply = refusal(request_id, exc)
        self.server.send(transport, reply)

    # --- waiting reads ---------------------------------------------------------------

    def _wait(
        self, queue: Queue, request_id: int, timeout_ms: int, max_messages: int, wait_ms: int, now: float
    ) -> None:
        """Park a read (admitted by `admit_wait`); ``max_messages`` 0 means a single READ (answered
        with Message/Empty). ``waiting`` lists it until it is answered (`_wake` takes it out)."""
        earlier = self.waiting.get(request_id)
        if earlier is not None:  # the client reused a request id: answer the older read now
            self.broker.cancel_wait(earlier)
            earlier.wake([])
        wake = partial(self._wake, request_id, max_messages)
        self.waiting[request_id] = self.broker.wait(queue, self.held, timeout_ms, max_messages or 1, wait_ms, now, wake)

    def _wake(self, request_id: int, max_messages: int, entries: list[Entry] | None) -> None:
        # Every read that stops waiting comes here (answered, timed out, cancelled, its queue
        # deleted, its request id reused), except on `release`, which forgets them all at once.
        self.waiting.pop(request_id, None)
        self.last_active = self.server.clock()  # an answered wait restarts the idle clock
        transport = self.transport
        if transport is None or transport.is_closing():
            # Woken while closing: these messages were never sent, so they do not count as delivered.
            if entries:
                records = self.broker.records_of(entries)
                for record in records:
                    record.deliveries -= 1
                self.broker.requeue([*records], self.server.clock())
            return
        if entries is None:
            reply = refusal(request_id, NoSuchQueue("the queue was deleted while the read waited"))
        elif max_messages:
            reply = messages_reply(request_id, entries)
        elif entries:
            (id_,), (deliveries,), (data,) = columns(entries)
            reply = msg.encode(request_id, message_of(id_, data, deliveries, entries[0].queue.origins.get(id_)))
        else:
            reply = pack_bare_frame(MAGIC, _EMPTY, 0, request_id, 0)
        self.server.send(transport, reply)


def as_reached(members: list[str], sockname: Any) -> list[str]:
    """``members`` ("host:port") as a client that reached this server at ``sockname`` (the connection's local
    address) can use them: a member whose host is a wildcard (``0.0.0.0``, ``::``, empty) gets the host the
    client reached, with its own port. Raises nothing; ``members`` as they are if ``sockname`` is no IP address.

    A server bound to every address and given no ``--advertise`` knows no address of its own to tell; a client
    on another machine that follows ``0.0.0.0`` connects to itself. The address the client reached is one it can
    reach again, whatever language it is written in; for the workers of one machine, every one of them.
    """
    if not isinstance(sockname, tuple) or not sockname or not isinstance(sockname[0], str):
        return members
    host = sockname[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return members
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        host = str(address.ipv4_mapped)  # an IPv4 client of a dual-stack socket reached an IPv4 address
    elif isinstance(address, ipaddress.IPv6Address):
        host = f"[{host}]"
    return [f"{host}:{member.rsplit(':', 1)[-1]}" if _wildcard(member) else member for member in members]


def _wildcard(member: str) -> bool:
    # Whether a member's host ("host:port", IPv6 in brackets or not) is no address a client can reach.
    host = member.rpartition(":")[0].strip("[]")
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a name


def _moved(mover: Mover) -> msg.Moved:
    """A finished move's answer: how many moved; a StoreUnavailable refusal if the store stopped it."""
    if mover.store_failed:
        raise mover.store_error()
    return msg.Moved(mover.moved)


_HANDLERS: dict[type, Handler] = {
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
    msg.DeadLetter: Session._dead_letter,
    msg.Cancel: Session._cancel,
    msg.Peek: Session._peek,
    msg.Move: Session._move,
}


def _too_many(limit: int) -> str:
    return f"the server holds its limit of {limit} connections"


def _settled(outcome: Outcome, id_: int, done: msg.Response) -> msg.Response:
    if outcome == Outcome.DONE:
        return done
    if outcome == Outcome.REQUEUED:
        return msg.Requeued.INSTANCE
    raise no_such_message(id_)

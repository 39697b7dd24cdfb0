"""The fast paths: common requests answered straight from their bytes, as a batch where they come as one.

Contract
--------
Every fast path gives **the same reply bytes and the same state as the general
path** (`Session.handle` and its handlers) would give for the same requests,
or it *declines*: it returns None and the general path answers the requests
instead. It declines before it changes anything, apart from what the general
path would change first in any case (the admission checks', `admission`). The
differential test in tests/server/test_runs.py guards this module: a server
fed through these paths and one fed with them declining must write the same
bytes and end in the same state after every step, over any sequence of runs,
lone frames, batches, timeouts and closed connections.

The paths
---------
* `FastPaths.handle_one`: one whole frame in a received buffer (what an
  unpipelined client sends): a plain ENQUEUE, READ or CONFIRM, read in place.
* `FastPaths.handle_run`: a *run*, a buffer of whole frames alike (ENQUEUEs to
  one queue, READs with one body, CONFIRMs) cut by `codecs.cut_run` in one
  struct call, answered with the broker's batch operations (reads take their
  fresh messages as one in-flight `Block`) and the replies packed in one call.
* `FastPaths.in_columns`: an ENQUEUE_BATCH kept in its columns as one slab,
  and a CONFIRM_BATCH of a whole block as read, never cut into messages.
* `messages_reply`: a batch read's MESSAGES frame straight from the slabs its
  messages were sent in.

They decline whatever could make the replies differ from the general path's:
a refused request (`admission`), a full queue, a run of sends that would
make the broker take back the queues' spare byte grants (near the memory
budget: room is then asked for one send at a time, as the general path asks
it), sends to a queue with waiting
reads (one by one, each message would wake a read of its own), reads that
would wait, or whose replies could pass the output limit, and reads of a
queue that has held a dead letter (``Queue.has_origins``: only the general
path writes a message's origin).

A read's visibility timeout field (ms) is resolved as the general path does it
(`visibility`): 0 is the queue's default, `NEVER_MS` none. Each path checks
admission with the same function as the general path.

Everything that knows a `Block` from a `Record` by its class, and every body
position read in place, stays in this module; the positions come from
`protocol.layouts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ..core import NO_BYTE_LIMIT, Block, Broker, Entry, Holding, Origin, Outcome, Queue, Waiter, columns
from ..errors import ErrorCode, InvalidRequest, NoSuchMessage, RequestError
from ..protocol.codecs import (
    ID_BODY,
    Run,
    bare_frames,
    confirm_results_frame,
    error_frame,
    id_frames,
    message_frames,
    messages_frame,
    messages_frame_of_columns,
    objects_queued_frame,
    pack_bare_frame,
    pack_id_frame,
    pack_message_head,
)
from ..protocol.frames import HEADER, HEADER_SIZE, MAGIC, NEVER_MS, Op
from ..protocol.layouts import (
    CONFIRM_ID,
    MESSAGE_FIELDS,
    NAME_SIZE,
    READ_NAME,
    READ_TIMES,
    U32,
    U64,
    split_enqueue_batch,
    split_read,
)
from ..protocol.messages import Message, Messages, encode
from ..protocol.messages import Origin as WireOrigin
from .admission import admit_read, admit_send
from .host import CommitLog, Host

__all__ = ["FastPaths", "confirm_reply", "messages_reply", "refusal", "no_such_message", "visibility"]

# Plain ints: comparing against an enum member looked up on its class costs ~6x more.
_ENQUEUE, _READ, _CONFIRM = int(Op.ENQUEUE), int(Op.READ), int(Op.CONFIRM)
_OBJECT_QUEUED, _MESSAGE, _FULL, _EMPTY = int(Op.OBJECT_QUEUED), int(Op.MESSAGE), int(Op.FULL), int(Op.EMPTY)
_CONFIRMED, _REQUEUED_OP = int(Op.CONFIRMED), int(Op.REQUEUED)
_DONE, _REQUEUED = int(Outcome.DONE), int(Outcome.REQUEUED)
_MESSAGE_FIXED = MESSAGE_FIELDS.size  # a MESSAGE body's length besides its payload
_MESSAGE_FRAME = HEADER_SIZE + _MESSAGE_FIXED  # a MESSAGE frame's length besides its payload
_FIRST_DELIVERY = U32.pack(1)  # a block's delivery count, each member's entry in a MESSAGES column
_unpack_header = HEADER.unpack_from
_unpack_times = READ_TIMES.unpack_from
_unpack_id = CONFIRM_ID.unpack_from

# Where a lone frame's body fields sit in the whole frame (`handle_one` reads them in place).
_ENQUEUE_NAME_SIZE = HEADER_SIZE  # ENQUEUE: the queue name's length byte...
_ENQUEUE_NAME = HEADER_SIZE + NAME_SIZE  # ...and its first byte
_READ_TIMES = HEADER_SIZE  # READ: timeout_ms, wait_ms
_READ_NAME_SIZE = HEADER_SIZE + READ_NAME  # READ: the queue name's length byte...
_READ_NAME = _READ_NAME_SIZE + NAME_SIZE  # ...and its first byte, up to the end of the frame
_READ_FIXED = READ_NAME + NAME_SIZE  # a READ body's length besides the name's bytes
_CONFIRM_BODY = CONFIRM_ID.size


class FastPaths:
    """The fast paths of a `Session` (a mixin: `Session` inherits them and provides the state below)."""

    # Batch requests answered from their columns first, by opcode (see `_enqueue_columns`).
    in_columns: ClassVar[dict[int, Callable[[FastPaths, int, bytes, float], bytes | None]]]

    # The session state the fast paths use (set by `Session.__init__`).
    server: Host
    broker: Broker
    held: Holding
    read_from: set[Queue]
    waiting: dict[int, Waiter]
    memory_budget: int
    capacity_bytes: int
    last_active: float
    stirred: bool  # set for a lone CONFIRM instead of reading the clock: the reaper reads it for all
    answer_now: bool  # with a store: the answer just built is reads' of stored messages only

    if TYPE_CHECKING:

        def _overflow(self, size: int) -> None: ...

    def handle_one(self, data: bytes, header: tuple[int, int, int, int, int]) -> bytes | None:
        """Answer one whole frame (an unpipelined client's request) if it is a plain ENQUEUE,
        READ or CONFIRM: the reply `handle` would give, without cutting it into a request first.
        ``header`` is the frame's header as `frames.HEADER` unpacks it (the caller unpacked it to
        find the frame whole). None, having changed nothing, for anything else (a wait, a refusal,
        a full in-flight allowance, a queue with waiting reads), which then goes through `handle`."""
        magic, opcode, flags, request_id, length = header
        if magic != MAGIC or flags:
            return None
        server = self.server
        if opcode == _ENQUEUE:
            size = data[_ENQUEUE_NAME_SIZE] if length else 0
            if not 0 < size < length:
                return None
            name_end = _ENQUEUE_NAME + size
            payload_size = length - NAME_SIZE - size
            try:
                queue = admit_send(self, data[_ENQUEUE_NAME:name_end], payload_size, payload_size)
            except RequestError:
                return None
            if queue.waiters:
                return None
            now = self.last_active = server.clock()
            id_ = queue.push(data[name_end:], now)
            if id_ < 0:
                return pack_bare_frame(MAGIC, _FULL, 0, request_id, 0)
            return pack_id_frame(MAGIC, _OBJECT_QUEUED, 0, request_id, ID_BODY, id_)
        if opcode == _READ:
            if length <= _READ_FIXED or data[_READ_NAME_SIZE] != length - _READ_FIXED:
                return None
            try:
                queue = admit_read(self, data[_READ_NAME:], 1)
            except RequestError:
                return None
            timeout_ms, wait_ms = _unpack_times(data, _READ_TIMES)
            if (wait_ms and not queue.ready) or queue.has_origins:
                return None
            now = self.last_active = server.clock()
            record = queue.take(self.held)
            if record is None:
                return pack_bare_frame(MAGIC, _EMPTY, 0, request_id, 0)
            timeout_ms = (timeout_ms or queue.visibility_ms) % NEVER_MS  # see `visibility`
            if timeout_ms and self.broker.set_deadline(record, timeout_ms, now) < server.expiry_due:
                server.schedule_expiry()  # (`Host.expire_by`, inlined: its call costs more than its test)
            payload = record.data
            if len(payload) > server.max_output_buffer:
                self._overflow(len(payload))
                return b""
            store = server.store
            if store is not None:
                self.answer_now = store.committed(record.id)
            head = pack_message_head(
                MAGIC, _MESSAGE, 0, request_id, _MESSAGE_FIXED + len(payload), record.id, record.deliveries
            )
            return head + payload
        if opcode == _CONFIRM and length == _CONFIRM_BODY:
            self.stirred = True  # (a confirm needs no time: a clock read only for the idle reaper costs more)
            (id_,) = _unpack_id(data, HEADER_SIZE)
            outcome = self.broker.confirm(id_, self.held)
            if outcome == _DONE:  # (`confirm_reply`'s first case, inlined: the usual one)
                return pack_bare_frame(MAGIC, _CONFIRMED, 0, request_id, 0)
            return confirm_reply(request_id, id_, outcome)
        return None

    def handle_run(self, run: Run) -> bytes | None:
        """Answer a run of like requests (`codecs.cut_run`) as one batch: the same replies, in the
        same order, as `handle` would give them one by one. None, having done nothing, when the run
        needs that path (see the module's docstring), or holds a request `handle` would refuse."""
        if run.opcode == _CONFIRM:
            self.last_active = self.server.clock()
            outcomes = self.broker.confirm_many(run.values, self.held)
            if outcomes.count(_DONE) != len(outcomes):
                return b"".join(map(confirm_reply, map(int.from_bytes, run.request_ids), run.values, outcomes))
            return bare_frames(_CONFIRMED, run.request_ids)
        if run.opcode == _ENQUEUE:
            return self._enqueue_run(run.request_ids, run.key, run.values)
        return self._read_run(run.request_ids, run.key)

    def _enqueue_run(self, request_ids: tuple[bytes, ...], name: bytes, payloads: tuple[bytes, ...]) -> bytes | None:
        size = len(payloads[0])  # every payload has the first one's size
        total = size * len(payloads)
        queue = self.broker.queues.get(name)
        if queue is None:
            return None
        missing = queue.payload_bytes + total - queue.grant
        if missing > 0 and self.broker.granted + missing > self.memory_budget:
            # Near the memory budget the broker, asked for room for the whole run, would take back
            # every queue's spare grant before it decides (`Broker.make_room`), which sends admitted
            # one by one need not have made it do (the first may fit this queue's spare): left to them.
            return None
        try:
            queue = admit_send(self, name, size, total)
        except RequestError:
            return None
        if not queue.has_room(len(payloads)) or queue.waiters:  # with waiting reads: each message wakes one
            return None
        self.last_active = now = self.server.clock()
        ids = self.broker.enqueue_batch(queue, list(payloads), now, total)
        if ids is None:  # not reached: `has_room` said there was room
            return None
        return id_frames(_OBJECT_QUEUED, request_ids, ids)

    def _read_run(self, request_ids: tuple[bytes, ...], body: bytes) -> bytes | None:
        try:
            name, timeout_ms, wait_ms = split_read(body)
        except InvalidRequest:
            return None
        count = len(request_ids)
        server = self.server
        if count * server.max_message_size > server.max_output_buffer:  # `handle` would check as it goes
            return None
        try:
            queue = admit_read(self, name, count)
        except RequestError:
            return None
        if (wait_ms and queue.ready < count) or queue.has_origins:
            return None
        now = self.last_active = server.clock()
        entries = queue.take_many(self.held, count, NO_BYTE_LIMIT)
        timeout_ms = (timeout_ms or queue.visibility_ms) % NEVER_MS  # see `visibility`
        if entries and timeout_ms:
            server.expire_by(self.broker.set_deadlines(entries, timeout_ms, now))
        ids, deliveries, payloads = columns(entries)
        store = server.store
        if store is not None:
            self.answer_now = _all_stored(store, entries)
        taken = len(ids)
        frames = message_frames(request_ids, ids, deliveries, payloads)
        if taken > 1 and len(entries) == 1:  # one block: its payload bytes, which the reply tells for nothing
            entries[0].size = len(frames) - taken * _MESSAGE_FRAME  # type: ignore[union-attr]  # a block: see above
        return frames + bare_frames(_EMPTY, request_ids[taken:])

    # --- batches kept in their columns: each answers what the decoded request would get, or
    # --- returns None, having changed nothing, to leave it to its handler (a refusal, a full queue).

    def _enqueue_columns(self, request_id: int, body: bytes, now: float) -> bytes | None:
        split = split_enqueue_batch(body)
        if split is None:
            return None
        name, lengths, data, longest = split
        try:
            queue = admit_send(self, name, longest, len(data))
        except RequestError:
            return None
        ids = self.broker.enqueue_columns(queue, lengths, data, now)
        return objects_queued_frame(request_id, ids) if ids is not None else None

    def _confirm_columns(self, request_id: int, body: bytes, now: float) -> bytes | None:
        if not self.broker.confirm_column(body, self.held):
            return None
        return confirm_results_frame(request_id, bytes(len(body) // U64.size))  # every outcome DONE


FastPaths.in_columns = {
    int(Op.ENQUEUE_BATCH): FastPaths._enqueue_columns,
    int(Op.CONFIRM_BATCH): FastPaths._confirm_columns,
}


def visibility(timeout_ms: int, queue: Queue) -> int:
    """The broker's timeout (0: none) for a wire's visibility timeout field: 0 is the queue's
    default, `NEVER_MS` never. (The fast paths inline it: ``x % NEVER_MS`` maps NEVER_MS to 0
    and leaves every other value of a u32 field as it is.)"""
    return (timeout_ms or queue.visibility_ms) % NEVER_MS


def messages_reply(request_id: int, entries: list[Entry]) -> bytes:
    """The MESSAGES frame of a batch read: straight from the columns its messages were sent in
    when it took them from slabs (the usual case), else from their columns gathered (with the
    ORIGIN flag and the origins of its dead letters, when it hands out any)."""
    slabs: list[tuple[bytes, bytes, bytes]] = []
    count = 0
    for entry in entries:
        if type(entry) is not Block or entry.slab is None:
            if entries and entries[0].queue.has_origins:
                return _messages_with_origins(request_id, entries)
            return messages_frame(request_id, *columns(entries))
        slabs.append(entry.slab)
        count += entry.end - entry.first_id
    if not slabs:
        return messages_frame(request_id, [], [], [])
    ids, lengths, payloads = zip(*slabs)
    return messages_frame_of_columns(request_id, count, ids, [_FIRST_DELIVERY * count], lengths, payloads)


def _messages_with_origins(request_id: int, entries: list[Entry]) -> bytes:
    """A MESSAGES frame for reads of a queue that has held dead letters: with their origins if any."""
    ids, deliveries, payloads = columns(entries)
    held = entries[0].queue.origins
    origins = [held.get(id_) for id_ in ids]
    messages = tuple(map(message_of, ids, payloads, deliveries, origins))
    return encode(request_id, Messages(messages))


def message_of(id_: int, data: bytes, deliveries: int, origin: Origin | None) -> Message:
    """A read message as the protocol's `Message`, its origin (Unix ms) as the protocol's."""
    if origin is None:
        return Message(id_, data, deliveries)
    return Message(id_, data, deliveries, origin_of(origin))


def origin_of(origin: Origin) -> WireOrigin:
    """A dead letter's origin as the protocol's `Origin` (its time in seconds)."""
    return WireOrigin(
        origin.queue.decode("utf-8", "replace"), origin.id, origin.enqueued_ms / 1000.0, origin.deliveries
    )


def _all_stored(store: CommitLog, entries: list[Entry]) -> bool:
    # With a store, an answer of reads (`handle_one`'s, `_read_run`'s) that hands out only
    # stored messages reports no change: it is written at once (`answer_now`). One that hands
    # out a message whose send is not committed yet waits for the commit like any reply, so a
    # consumer never sees a message a crash could undo. A block's messages were added in id
    # order and commits keep that order: its newest one tells.
    committed = store.committed
    for entry in entries:
        newest = entry.end - 1 if isinstance(entry, Block) else entry.id
        if not committed(newest):
            return False
    return True


def confirm_reply(request_id: int, id_: int, outcome: int) -> bytes:
    """The reply to a confirm of ``id_`` that had ``outcome``."""
    if outcome == _DONE:
        return pack_bare_frame(MAGIC, _CONFIRMED, 0, request_id, 0)
    if outcome == _REQUEUED:
        return pack_bare_frame(MAGIC, _REQUEUED_OP, 0, request_id, 0)
    return refusal(request_id, no_such_message(id_))


def refusal(request_id: int, error: RequestError) -> bytes:
    """The Error frame that refuses a request (a Full frame for a full queue: a send's answer
    when its queue has no room, in messages or in bytes)."""
    if error.code == ErrorCode.QUEUE_FULL:
        return pack_bare_frame(MAGIC, _FULL, 0, request_id, 0)
    return error_frame(request_id, error.code, error.message)


def no_such_message(id_: int) -> NoSuchMessage:
    """The refusal of a request naming a message that this connection does not hold in flight
    (nor held before it went back or on: then the answer is Requeued)."""
    return NoSuchMessage(
        f"message {id_} is not in flight (never read, already confirmed, held by another connection,"
        " or its queue was deleted)"
    )

"""The differential test of `dbqueue.server.fastpath` (and of `codecs.cut_run`): the fast paths against the
general path, request by request.

Theory of operation
-------------------
This file guards the contract stated in `dbqueue.server.fastpath`: every fast
path gives the same reply bytes, in the same order, and the same state
afterwards as the general path (`Session.handle` and its handlers) gives
request by request, or it declines having changed nothing the general path
would not change first (the frames then take the general path). The fast paths
are: a received buffer of two or more like requests (ENQUEUEs to one queue,
READs with one body, CONFIRMs), cut by `codecs.cut_run` in one struct call and
answered by `FastPaths.handle_run` as a batch; a lone ENQUEUE, READ or CONFIRM
frame (an unpipelined client's), answered by `FastPaths.handle_one`; and an
ENQUEUE_BATCH kept as a slab and a CONFIRM_BATCH of a whole block as read
(`FastPaths.in_columns`). The property test below drives them all at random;
the tests after it take each reason to decline, and each way to answer, one
by one, deterministically.

`Pair` holds two servers side by side, each with two in-process sessions on
fake transports and a fake event loop whose clock the test moves and which
fires the server's one expiry timer at its own time (so a run that forgot to
arm the timer shows up as messages that never come back). The *run* side gets
every pipelined batch in one `data_received`, where the run path applies. The
*reference* side gets the same bytes in a way where it cannot:

* ``declined``: the whole buffer, with every fast path of the session
  (`handle_run`, `handle_one` and `in_columns`) declining: exactly `handle`
  over the same requests, decoded, the contract's own words;
* ``frames``: frame by frame (a lone frame is never a run);
* ``tail``: all but the last byte, then the last byte (the reader holds a
  partial frame, so the buffer is never cut as a run).

Feeding in pieces also changes *when* some replies go out relative to others
on the same connection, run path or not: a read woken by the connection's own
enqueue, or an earlier waiting read answered Empty because a later one reused
its request id, is written at once, ahead of the replies to the requests
handled before it in the same piece. Such timing-sensitive steps are fed
whole to both sides, and only with ``declined``; with ``frames`` and ``tail``
the steps stay clear of them. The run side is sometimes fed a batch in two
pieces too (whole sub-runs, or a partial frame first), outside those steps.
Between the runs come single frames that change what the runs find: READ_BATCH
reads left waiting, RELEASE and TOUCH of any id, the clock moving on, and
connections closing; with ``declined``, the output limit is sometimes small.

After every step both sides must have written the same bytes to every
connection and show the same figures, in-flight ids (in read order, with
their delivery counts) and armed sweep; at the end every connection closes
and a fresh one reads every queue dry, so the order of the messages left and
their delivery counts are compared too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dbqueue.errors import ErrorCode
from dbqueue.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    Confirm,
    Confirmed,
    CreateQueue,
    Empty,
    Enqueue,
    FrameReader,
    Message,
    ObjectQueued,
    Op,
    Purge,
    Read,
    Release,
    Requeued,
    Touch,
    codecs,
    encode,
)
from dbqueue.protocol.codecs import MAX_RUN, Run, cut_run
from dbqueue.protocol.messages import ConfirmBatch, EnqueueBatch, EnqueueDelayed, ReadBatch
from dbqueue.server import Limits, Server
from dbqueue.server.session import Session
from fake_transport import FakeTransport

MAX_SIZE = 64  # the servers' max_message_size: payloads of 65 bytes are refused
NAMES = ["a", "b", "d", "x", "u"]  # "u" is never created; all one byte long, so a stray name keeps the frame size
TIMEOUTS = [0, 125, 250, 500]  # ms; with the clock on a 1/16 s grid every deadline is exact in binary
WAITS = [0, 0, 0, 125, 250]
STEPS = [0.0625, 0.125, 0.25, 0.5]  # seconds the clock moves in one step
UNKNOWN_IDS = [0, 999_999, 2**63]
FEEDINGS = ["declined", "frames", "tail"]

# DBQUEUE_RUN_EXAMPLES raises the count for a long run.
EXAMPLES = int(os.environ.get("DBQUEUE_RUN_EXAMPLES", "200"))


# --- fakes: a transport that records, a loop whose clock the test moves ------------------------------


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """What `Server.schedule_expiry` uses of a loop (``time``, ``call_at``), on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing every timer due on the way at its own time, as a loop would."""
        target = self.now + seconds
        while True:
            self.timers = [timer for timer in self.timers if not timer.cancelled]
            due = [timer for timer in self.timers if timer.when <= target]
            if not due:
                break
            timer = min(due, key=lambda timer: timer.when)  # min keeps the first of equals: call order
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = target

    def next_sweep(self) -> float | None:
        whens = [timer.when for timer in self.timers if not timer.cancelled]
        return min(whens) if whens else None


# --- one server, fed one way ----------------------------------------------------------------------------


def frames_of(data: bytes) -> list[tuple[str, int, bytes]]:
    """(opcode name, request id, body) of each whole frame in ``data``: what a failure prints."""
    reader = FrameReader(1 << 24)
    frames = [(Op(opcode).name, request_id, body) for opcode, _, request_id, body in reader.feed(bytes(data))]
    assert reader.buffered == 0 and reader.failure is None, "the server wrote a partial or broken frame"
    return frames


class Side:
    """One server with two connection slots, fed pipelined batches in one of the ways above."""

    def __init__(self, feeding: str, **options: Any) -> None:
        self.feeding = feeding  # "run" or one of FEEDINGS
        self.loop = FakeLoop()
        self.server = Server(port=0, limits=Limits(max_message_size=MAX_SIZE, **options))
        self.server._loop = self.loop  # type: ignore[assignment]  # only schedule_expiry uses it without a store
        self.server.clock = self.loop.time
        self.server.broker.set_clock(self.loop.time)  # as `Server.start` does with its loop's clock
        broker = self.server.broker
        broker.create_queue(b"x")
        broker.create_queue(b"a")
        broker.create_queue(b"b", capacity=6)
        broker.create_queue(b"d", max_deliveries=2, dead_letter=b"x")
        self.transports: list[list[FakeTransport]] = [[], []]  # per slot: one per connection it has had
        self.sessions = [self._connect(0), self._connect(1)]
        self.runs_answered: dict[int, int] = {}  # opcode -> runs handle_run answered itself
        self.runs_declined: dict[int, int] = {}

    def _connect(self, slot: int) -> Session:
        session = Session(self.server)
        if self.feeding == "declined":
            session.handle_run = lambda run: None  # type: ignore[method-assign]
            session.handle_one = lambda data, header: None  # type: ignore[method-assign]
            session.in_columns = {}  # batches decoded, never answered from their columns
        elif self.feeding == "run":
            session.handle_run = self._counted(session.handle_run)  # type: ignore[method-assign]
        transport = FakeTransport()
        self.transports[slot].append(transport)
        session.connection_made(transport)  # type: ignore[arg-type]
        return session

    def _counted(self, handle_run: Callable[[Run], bytes | None]) -> Callable[[Run], bytes | None]:
        def counted(run: Run) -> bytes | None:
            answer = handle_run(run)
            tally = self.runs_declined if answer is None else self.runs_answered
            tally[run.opcode] = tally.get(run.opcode, 0) + 1
            return answer

        return counted

    def feed(self, slot: int, frames: list[bytes], cut: int | None = None) -> None:
        """Feed one pipelined batch to a connection (``cut``: the run side gets it in two pieces)."""
        data = b"".join(frames)
        if self.feeding == "frames":
            chunks = frames
        elif self.feeding == "tail":
            chunks = [data[:-1], data[-1:]]
        elif self.feeding == "run" and cut is not None:
            chunks = [data[:cut], data[cut:]]
        else:
            chunks = [data]
        for chunk in chunks:
            self.sessions[slot].data_received(chunk)
        for other in (0, 1):  # a connection the server cut off (too many unread replies) goes, as the loop would
            if self.sessions[other].transport.is_closing():  # type: ignore[union-attr]
                self.reconnect(other)

    def reconnect(self, slot: int) -> None:
        """Close a connection (what it holds goes back to the front of its queues) and open another."""
        session = self.sessions[slot]
        session.transport.close()  # type: ignore[union-attr]
        session.connection_lost(None)
        self.sessions[slot] = self._connect(slot)

    def observe(self) -> dict[str, Any]:
        """Everything a client could tell apart, and the in-flight state behind it."""
        broker = self.server.broker
        entries = broker.entries()
        return {
            "queues": {name: queue.stats() for name, queue in broker.queues.items()},
            "held": [[(id_, entries[id_].deliveries) for id_ in session.held.ids()] for session in self.sessions],
            "held counts": [session.held.count for session in self.sessions],
            "waiting": [session.waiters_active() for session in self.sessions],
            "records": sorted(entries),
            "next deadline": broker.next_deadline(),
            "next sweep": self.loop.next_sweep(),
        }

    def written(self) -> list[list[bytes]]:
        return [[bytes(transport.written) for transport in transports] for transports in self.transports]


class Pair:
    """A run side and a reference side, driven in lockstep and compared after every step."""

    def __init__(self, feeding: str, **options: Any) -> None:
        self.feeding = feeding
        self.small_output = options.get("max_output_buffer", 64 << 20) < 1 << 20
        self.run = Side("run", **options)
        self.reference = Side(feeding, **options)
        # Both number their messages alike (a server's first id comes from the wall clock).
        ahead = max(side.server.broker.allocate_ids(0) for side in (self.run, self.reference))
        for side in (self.run, self.reference):
            side.server.broker.allocate_ids(ahead - side.server.broker.allocate_ids(0))
        # And map their (equal, fake) clocks to Unix time alike: enqueue times and origins go out in it.
        self.reference.server.broker.wall_offset_ms = self.run.server.broker.wall_offset_ms
        self.next_request_id = 1
        self.seen: list[int] = []  # every message id a reply has named, in order, no repeats
        self.last_read: list[list[int]] = [[], []]
        self.learnt: dict[int, int] = {}  # id() of a run-side transport -> bytes of it `_learn` has read
        self.log: list[str] = []  # the steps so far, for a failure's message

    # --- frames ---

    def request_ids(self, count: int, same: bool = False) -> list[int]:
        first = self.next_request_id
        self.next_request_id += count
        return [first] * count if same else list(range(first, first + count))

    def payloads(self, count: int, size: int) -> list[bytes]:
        """Payloads of one size, each telling its batch and place (as far as ``size`` allows)."""
        return [(b"%d.%d|" % (self.next_request_id, i) * MAX_SIZE)[:size] for i in range(count)]

    # --- steps ---

    def feed(self, slot: int, frames: list[bytes], cut: int | None = None, what: str = "") -> None:
        self.log.append(f"slot {slot}: {what or len(frames)}" + (f" (run side cut at {cut})" if cut else ""))
        self.run.feed(slot, frames, cut)
        self.reference.feed(slot, frames)
        self.check()

    def enqueue(self, slot: int, queue: str, count: int, size: int, **kwargs: Any) -> None:
        frames = [
            encode(rid, Enqueue(queue, data)) for rid, data in zip(self.request_ids(count), self.payloads(count, size))
        ]
        self.feed(slot, frames, what=f"{count} ENQUEUE {queue!r} of {size} bytes", **kwargs)

    def read(self, slot: int, queue: str, count: int, timeout_ms: int = 0, wait_ms: int = 0, **kwargs: Any) -> None:
        frames = [encode(rid, Read(queue, timeout_ms, wait_ms)) for rid in self.request_ids(count)]
        self.feed(slot, frames, what=f"{count} READ {queue!r} timeout {timeout_ms} wait {wait_ms}", **kwargs)

    def confirm(self, slot: int, ids: list[int], **kwargs: Any) -> None:
        frames = [encode(rid, Confirm(id_)) for rid, id_ in zip(self.request_ids(len(ids)), ids)]
        self.feed(slot, frames, what=f"CONFIRM {ids}", **kwargs)

    def advance(self, seconds: float) -> None:
        self.log.append(f"{seconds} s pass")
        self.run.loop.advance(seconds)
        self.reference.loop.advance(seconds)
        self.check()

    def reconnect(self, slot: int) -> None:
        self.log.append(f"slot {slot} reconnects")
        self.run.reconnect(slot)
        self.reference.reconnect(slot)
        self.last_read[slot] = []
        self.check()

    def _learn(self) -> None:
        """Note the message ids in every reply written since the last step (``last_read``: per slot,
        the ids handed out by its latest replies that handed any out)."""
        for slot, transports in enumerate(self.run.transports):
            transport = transports[-1]
            replies = frames_of(transport.written[self.learnt.get(id(transport), 0) :])
            self.learnt[id(transport)] = len(transport.written)
            read: list[int] = []
            for opcode, _, body in replies:
                if opcode in ("OBJECT_QUEUED", "MESSAGE"):
                    ids = list(struct.unpack_from(">Q", body))
                elif opcode == "MESSAGES":
                    ids = list(struct.unpack_from(f">{int.from_bytes(body[:4], 'big')}Q", body, 4))
                else:
                    continue
                self.seen += [id_ for id_ in ids if id_ not in self.seen]
                if opcode != "OBJECT_QUEUED":
                    read += ids
            if read:
                self.last_read[slot] = read

    # --- the comparison ---

    def check(self) -> None:
        self._learn()
        steps = "\n  ".join(self.log)
        run, reference = self.run.written(), self.reference.written()
        for slot in (0, 1):
            for connection, (got, want) in enumerate(zip(run[slot], reference[slot])):
                assert frames_of(got) == frames_of(want), (
                    f"replies to slot {slot} connection {connection} after:\n  {steps}"
                )
        assert run == reference, f"reply bytes after:\n  {steps}"
        assert self.run.observe() == self.reference.observe(), f"state after:\n  {steps}"

    def drain(self) -> None:
        """Close every connection, then read every queue dry, one READ and its CONFIRM at a time, on both sides."""
        self.reconnect(0)
        self.reconnect(1)
        self.advance(1.0)
        for name in NAMES[:-1]:
            for _ in range(1000):
                self.feed(0, [encode(self.request_ids(1)[0], Read(name))], what=f"drain {name!r}")
                opcode, _, body = frames_of(self.run.transports[0][-1].written)[-1]
                if opcode != "MESSAGE":
                    assert opcode == "EMPTY"
                    break
                self.feed(0, [encode(self.request_ids(1)[0], Confirm(struct.unpack_from(">Q", body)[0]))], what="drain")
            else:
                pytest.fail(f"queue {name!r} did not run dry")


# --- the property: any sequence of pipelined batches, two ways ------------------------------------------


@st.composite
def ids_to_confirm(draw: st.DrawFn, pair: Pair, slot: int) -> list[int]:
    """Ids for a run of confirms: what this connection just read (whole blocks: the fast path), what
    either connection holds, or any ids seen so far and unknown ones, with duplicates."""
    held = [session.held.ids() for session in pair.run.sessions]
    choices = ["sample"]
    if len(pair.last_read[slot]) >= 2:
        choices += ["last read"] * 3
    if len(held[slot]) >= 2:
        choices += ["held"] * 2
    if len(held[1 - slot]) >= 2:
        choices.append("other's")
    kind = draw(st.sampled_from(choices))
    if kind == "sample":
        return draw(st.lists(st.sampled_from(pair.seen + UNKNOWN_IDS), min_size=2, max_size=10))
    ids = {"last read": pair.last_read[slot], "held": held[slot], "other's": held[1 - slot]}[kind]
    start = draw(st.integers(0, len(ids) - 2))
    ids = ids[start : draw(st.integers(start + 2, len(ids)))]
    if draw(st.integers(0, 3)) == 0:  # a duplicate, or an id nobody holds, somewhere in the run
        extra = draw(st.sampled_from(ids + UNKNOWN_IDS))
        ids.insert(draw(st.integers(0, len(ids))), extra)
    return ids


def stray(draw: st.DrawFn, frames: list[bytes], odd: bytes) -> list[bytes]:
    """Sometimes put one frame that breaks the run (same size, another name, timeout or flags) among them."""
    if len(frames) < 2 or draw(st.integers(0, 7)):
        return frames
    frames = list(frames)
    frames[draw(st.integers(0, len(frames) - 1))] = odd
    return frames


def flagged(frame: bytes) -> bytes:
    return frame[:2] + b"\x00\x01" + frame[4:]


def step(draw: st.DrawFn, pair: Pair) -> None:
    kind = draw(
        st.sampled_from(
            ["enqueue"] * 4
            + ["read"] * 4
            + ["confirm"] * 3
            + ["time"] * 3
            + ["release", "touch", "reconnect", "batch read", "batch send", "batch send", "batch confirm"]
        )
    )
    slot = draw(st.integers(0, 1))
    count = draw(st.sampled_from([1, 2, 2, 3, 4, 5, 8, 12]))  # 1: a lone frame, `handle_one`'s on the run side
    # The run side gets the bytes in two pieces, cut where drawn below; not under a small output limit,
    # which `handle` counts over each received buffer.
    cut = not pair.small_output and draw(st.integers(0, 5)) == 0
    if kind == "enqueue":
        if pair.run.sessions[slot].waiters_active():  # timing-sensitive: see the module docstring
            if pair.feeding != "declined":
                if pair.run.sessions[1 - slot].waiters_active():
                    return
                slot = 1 - slot
            cut = False
        queue = draw(st.sampled_from(NAMES + ["a"] * 5))  # mostly one queue: steps build on each other
        sizes = [0, 1, 5, 5, 5, MAX_SIZE, MAX_SIZE + 1] + [MAX_SIZE] * 4 * pair.small_output  # fill the limit
        size = draw(st.sampled_from(sizes))
        rids = pair.request_ids(count, same=draw(st.integers(0, 9)) == 0)
        frames = [encode(rid, Enqueue(queue, data)) for rid, data in zip(rids, pair.payloads(count, size))]
        odd_name = draw(st.sampled_from([n for n in NAMES if n != queue]))
        frames = stray(
            draw,
            frames,
            draw(st.sampled_from([encode(rids[0], Enqueue(odd_name, pair.payloads(1, size)[0])), flagged(frames[0])])),
        )
        what = f"{count} ENQUEUE {queue!r} of {size} bytes"
    elif kind == "read":
        queue = draw(st.sampled_from(NAMES + ["a"] * 5))  # mostly one queue: steps build on each other
        timeout_ms, wait_ms = draw(st.sampled_from(TIMEOUTS)), draw(st.sampled_from(WAITS))
        # One request id for every read: a later wait then answers the earlier one at once (an Empty
        # written ahead of the Messages of the reads before it): timing-sensitive when they wait.
        same = draw(st.integers(0, 9)) == 0
        if same and wait_ms:
            same = pair.feeding == "declined"
            cut = False
        rids = pair.request_ids(count, same=same)
        frames = [encode(rid, Read(queue, timeout_ms, wait_ms)) for rid in rids]
        if draw(st.integers(0, 9)) == 0:  # a malformed body, the same in every frame: still a run to cut
            body = Read(queue, timeout_ms, wait_ms).body()
            bad = body[:8] + bytes([body[8] + 1]) + body[9:]
            frames = [HEADER.pack(MAGIC, Op.READ, 0, rid, len(bad)) + bad for rid in rids]
        other_timeout = draw(st.sampled_from([t for t in TIMEOUTS if t != timeout_ms]))
        frames = stray(
            draw,
            frames,
            draw(st.sampled_from([encode(rids[0], Read(queue, other_timeout, wait_ms)), flagged(frames[0])])),
        )
        what = f"{count} READ {queue!r} timeout {timeout_ms} wait {wait_ms}"
    elif kind == "confirm":
        ids = draw(ids_to_confirm(pair, slot))
        frames = [encode(rid, Confirm(id_)) for rid, id_ in zip(pair.request_ids(len(ids)), ids)]
        frames = stray(draw, frames, flagged(frames[0]))
        what = f"CONFIRM {ids}"
    elif kind == "time":
        pair.advance(draw(st.sampled_from(STEPS)))
        return
    elif kind == "reconnect":
        pair.reconnect(slot)
        return
    elif kind == "batch read":  # one READ_BATCH, often left waiting: enqueue runs must then wake it as one by one
        queue = draw(st.sampled_from(NAMES))
        request = ReadBatch(
            queue, draw(st.integers(1, 5)), draw(st.sampled_from(TIMEOUTS)), draw(st.sampled_from([0, 125, 500]))
        )
        frames = [encode(pair.request_ids(1)[0], request)]
        what = repr(request)
    elif kind == "batch send":  # one ENQUEUE_BATCH, kept as a slab on the run side (sometimes refused)
        queue = draw(st.sampled_from(NAMES + ["a"] * 3))
        sizes = draw(st.lists(st.sampled_from([0, 1, 5, MAX_SIZE, MAX_SIZE + 1]), min_size=1, max_size=12))
        payloads = [pair.payloads(1, size)[0] for size in sizes]
        if pair.run.sessions[slot].waiters_active():  # timing-sensitive: see the module docstring
            if pair.feeding != "declined":
                return
            cut = False
        request = EnqueueBatch(queue, tuple(payloads))
        frames = [encode(pair.request_ids(1)[0], request)]
        what = f"ENQUEUE_BATCH {queue!r} of {sizes}"
    elif kind == "batch confirm":  # one CONFIRM_BATCH: a whole batch as read (its ids column), or anything
        last = pair.last_read[slot]
        ids = list(last) if last and draw(st.booleans()) else draw(ids_to_confirm(pair, slot))
        frames = [encode(pair.request_ids(1)[0], ConfirmBatch(tuple(ids)))]
        what = f"CONFIRM_BATCH {ids}"
    else:  # one RELEASE (back to the front of its queue) or TOUCH (a block member on a deadline of its own)
        id_ = draw(st.sampled_from(pair.seen + UNKNOWN_IDS))
        request = Release(id_) if kind == "release" else Touch(id_, draw(st.sampled_from(TIMEOUTS)))
        frames = [encode(pair.request_ids(1)[0], request)]
        what = repr(request)
    pair.feed(slot, frames, draw(st.integers(1, len(b"".join(frames)) - 1)) if cut else None, what)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feeding=st.sampled_from(["declined", *FEEDINGS]),  # declined twice: the contract's own reference
    max_in_flight=st.sampled_from([4, 100_000]),
    data=st.data(),
)
def test_runs_answer_as_the_requests_one_by_one(feeding: str, max_in_flight: int, data: st.DataObject) -> None:
    # A small output limit, which `handle` counts over each received buffer: comparable with `declined` only.
    max_output_buffer = data.draw(st.sampled_from([64 << 20, 150, 150, 300] if feeding == "declined" else [64 << 20]))
    # Byte limits that a few sends reach: refusals (OverMemoryBudget, Full) on every send path.
    memory_budget = data.draw(st.sampled_from([1 << 40, 1 << 40, 700]))
    capacity_bytes = data.draw(st.sampled_from([0, 0, 250]))
    pair = Pair(
        feeding,
        max_in_flight=max_in_flight,
        max_output_buffer=max_output_buffer,
        memory_budget=memory_budget,
        default_capacity_bytes=capacity_bytes,
    )
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        step(data.draw, pair)
    pair.drain()
    for opcode in pair.run.runs_answered:
        event(f"a run answered as a batch: {Op(opcode).name}")
    for opcode in pair.run.runs_declined:
        event(f"a run declined: {Op(opcode).name}")


# --- the same, case by case: each reason to decline, and each way to answer ----------------------------


def answered(pair: Pair, opcode: Op) -> int:
    return pair.run.runs_answered.get(opcode, 0)


def declined(pair: Pair, opcode: Op) -> int:
    return pair.run.runs_declined.get(opcode, 0)


@pytest.fixture(params=FEEDINGS)
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(request.param)


def test_an_enqueue_run_is_answered_as_a_batch(pair: Pair) -> None:
    pair.enqueue(0, "a", 5, 5)
    pair.enqueue(0, "a", 3, 0)  # empty payloads
    pair.enqueue(0, "a", 2, MAX_SIZE)  # at the limit
    assert answered(pair, Op.ENQUEUE) == 3 and not declined(pair, Op.ENQUEUE)
    pair.drain()


@pytest.mark.parametrize(
    "queue, size, why",
    [("u", 5, "unknown queue"), ("a", MAX_SIZE + 1, "payload over the limit"), ("b", 1, "no room for all")],
)
def test_an_enqueue_run_the_batch_cannot_answer_goes_one_by_one(pair: Pair, queue: str, size: int, why: str) -> None:
    pair.enqueue(1, "b", 4, 1)  # b holds 4 of its 6
    pair.enqueue(0, queue, 3, size)
    assert declined(pair, Op.ENQUEUE) == 1, why
    replies = frames_of(pair.run.transports[0][-1].written)
    expected = {
        "unknown queue": ["ERROR"] * 3,
        "payload over the limit": ["ERROR"] * 3,
        "no room for all": ["OBJECT_QUEUED"] * 2 + ["FULL"],
    }
    assert [opcode for opcode, _, _ in replies] == expected[why]
    pair.drain()


def batch(pair: Pair, slot: int, request: Any) -> list[str]:
    """Feed one batch request to both sides; return the opcodes of the run side's replies to it."""
    transport = pair.run.transports[slot][-1]
    before = len(frames_of(transport.written))
    pair.feed(slot, [encode(pair.request_ids(1)[0], request)], what=repr(request))
    return [opcode for opcode, _, _ in frames_of(transport.written)[before:]]


def test_batches_in_columns_answer_as_decoded_ones(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []  # which batches the run side answered from their columns
    for opcode, handler in list(Session.in_columns.items()):

        def spy(session: Session, *args: Any, handler: Any = handler, name: str = Op(opcode).name) -> bytes | None:
            reply = handler(session, *args)
            if reply is not None and session.server is pair.run.server:
                taken.append(name)
            return reply

        monkeypatch.setitem(Session.in_columns, opcode, spy)
    assert batch(pair, 1, ReadBatch("a", 5, 250, 500)) == []  # left waiting
    assert batch(pair, 0, EnqueueBatch("a", (b"p", b"qq", b""))) == ["OBJECTS_QUEUED"]  # wakes it, as a slab
    assert batch(pair, 0, EnqueueBatch("a", tuple(b"%d" % i for i in range(8)))) == ["OBJECTS_QUEUED"]
    assert frames_of(pair.run.transports[1][-1].written)[-1][0] == "MESSAGES"
    first = pair.last_read[1]
    assert batch(pair, 1, ReadBatch("a", 3, 250)) == ["MESSAGES"]  # part of the second slab
    assert batch(pair, 1, ConfirmBatch(tuple(first))) == ["CONFIRM_RESULTS"]  # a whole block as read
    assert batch(pair, 1, ConfirmBatch(tuple(pair.last_read[1][::-1]))) == ["CONFIRM_RESULTS"]  # not as read
    assert batch(pair, 0, EnqueueBatch("b", (b"x",) * 7)) == ["FULL"]  # more than its capacity: declined
    assert batch(pair, 0, EnqueueBatch("u", (b"x",))) == ["ERROR"]
    assert batch(pair, 0, EnqueueBatch("a", (b"x" * (MAX_SIZE + 1),))) == ["ERROR"]
    pair.advance(0.25)  # the rest of the second block comes back
    assert taken == ["ENQUEUE_BATCH", "ENQUEUE_BATCH", "CONFIRM_BATCH"]
    pair.drain()


def test_a_read_run_past_the_messages_ends_in_empty(pair: Pair) -> None:
    pair.enqueue(0, "a", 3, 5)
    pair.read(1, "a", 5, timeout_ms=250)
    assert [opcode for opcode, _, _ in frames_of(pair.run.transports[1][-1].written)] == ["MESSAGE"] * 3 + ["EMPTY"] * 2
    pair.read(1, "a", 2)  # nothing left: all Empty
    pair.advance(0.25)  # the three come back, in read order, at the front
    pair.enqueue(0, "a", 2, 5)
    pair.read(0, "a", 4, timeout_ms=125)  # three redelivered (deliveries 2) then one fresh
    assert answered(pair, Op.READ) == 3
    pair.advance(0.125)  # every one of the four on its deadline comes back again
    pair.confirm(0, pair.last_read[0])  # all Requeued
    pair.drain()


def test_a_read_run_that_waits(pair: Pair) -> None:
    pair.enqueue(0, "a", 2, 5)
    pair.read(1, "a", 3, timeout_ms=125, wait_ms=250)  # two ready for three reads: one by one, one waits
    assert declined(pair, Op.READ) == 1
    pair.read(1, "a", 2, timeout_ms=125, wait_ms=250)  # both wait
    pair.enqueue(0, "a", 2, 5)  # wakes two of the three waiting reads
    pair.enqueue(0, "a", 3, 5)
    pair.read(1, "a", 2, wait_ms=250)  # enough ready: answered as a batch despite wait_ms
    assert answered(pair, Op.READ) == 1
    pair.advance(0.125)
    pair.advance(0.25)
    pair.drain()


@pytest.mark.parametrize("feeding", FEEDINGS)
def test_a_read_run_past_max_in_flight_goes_one_by_one(feeding: str) -> None:
    pair = Pair(feeding, max_in_flight=4)
    pair.enqueue(0, "a", 8, 5)
    pair.read(1, "a", 3)
    pair.read(1, "a", 3)  # 3 + 3 > 4: one more is taken, then the other two are refused
    assert (answered(pair, Op.READ), declined(pair, Op.READ)) == (1, 1)
    assert [opcode for opcode, _, _ in frames_of(pair.run.transports[1][-1].written)][3:] == [
        "MESSAGE",
        "ERROR",
        "ERROR",
    ]
    pair.read(1, "a", 4)
    pair.drain()


def last_replies(pair: Pair, slot: int, count: int) -> list[str]:
    """The opcodes of the run side's last ``count`` replies to ``slot``, an Error as its code's name."""
    replies = frames_of(pair.run.transports[slot][-1].written)[-count:]
    return [ErrorCode(int.from_bytes(body[:2], "big")).name if op == "ERROR" else op for op, _, body in replies]


@pytest.mark.parametrize("feeding", FEEDINGS)
def test_the_in_flight_limit_at_its_boundary_on_every_read_path(feeding: str) -> None:
    """One admission check for every read: refused when held + wanted > max_in_flight, whatever the path."""
    pair = Pair(feeding, max_in_flight=4)
    pair.enqueue(0, "a", 12, 5)
    pair.read(1, "a", 2)  # a run: 0 + 2 <= 4
    pair.read(1, "a", 1)  # lone: 2 + 1 <= 4
    pair.read(1, "a", 1)  # lone: 3 + 1 <= 4, the last one admitted
    assert last_replies(pair, 1, 4) == ["MESSAGE"] * 4
    pair.read(1, "a", 1)  # lone: 4 + 1 > 4
    assert batch(pair, 1, ReadBatch("a", 3)) == ["ERROR"]  # 4 + 1 > 4
    assert last_replies(pair, 1, 2) == ["LIMIT_EXCEEDED"] * 2
    pair.confirm(1, pair.run.sessions[1].held.ids()[:1])  # holds 3
    assert batch(pair, 1, ReadBatch("a", 3)) == ["MESSAGES"]  # 3 + 1 <= 4: admitted, and given one
    assert pair.run.sessions[1].held.count == 4
    pair.confirm(1, pair.run.sessions[1].held.ids())
    pair.read(1, "a", 4)  # a run: 0 + 4 <= 4
    assert last_replies(pair, 1, 4) == ["MESSAGE"] * 4
    assert answered(pair, Op.READ) == 2
    pair.drain()


@pytest.mark.parametrize("feeding", FEEDINGS)
def test_the_size_limit_at_its_boundary_on_every_send_path(feeding: str) -> None:
    """One admission check for every send: refused when a message is larger than max_message_size."""
    pair = Pair(feeding)
    for size, admitted in ((MAX_SIZE, True), (MAX_SIZE + 1, False)):
        pair.enqueue(0, "a", 1, size)  # lone
        pair.enqueue(0, "a", 3, size)  # a run
        replies = last_replies(pair, 0, 4)
        sent = [
            batch(pair, 0, EnqueueBatch("a", (b"x", pair.payloads(1, size)[0]))),  # in columns
            batch(pair, 0, EnqueueDelayed("a", pair.payloads(1, size)[0], 125)),
        ]
        if admitted:
            assert (replies, sent) == (["OBJECT_QUEUED"] * 4, [["OBJECTS_QUEUED"], ["OBJECT_QUEUED"]])
        else:
            assert (replies, sent) == (["MESSAGE_TOO_LARGE"] * 4, [["ERROR"], ["ERROR"]])
    pair.advance(0.125)
    pair.drain()


@pytest.mark.parametrize("feeding", FEEDINGS)
@pytest.mark.parametrize("limit", ["memory_budget", "default_capacity_bytes"])
def test_the_byte_limits_at_their_boundary_on_every_send_path(feeding: str, limit: str) -> None:
    """One admission check for every send: refused when queued bytes + the request's > the limit,
    with OverMemoryBudget (over the server) or Full (a queue's byte capacity), whatever the path."""
    pair = Pair(feeding, **{limit: 200})
    pair.enqueue(0, "a", 1, 40)  # lone: 40
    pair.enqueue(0, "a", 3, 40)  # a run: 160
    assert batch(pair, 0, EnqueueBatch("a", (b"x" * 20, b"y" * 20))) == ["OBJECTS_QUEUED"]  # in columns: 200
    refused = "OVER_MEMORY_BUDGET" if limit == "memory_budget" else "FULL"
    pair.enqueue(0, "a", 1, 1)  # lone: 201 > 200
    pair.enqueue(0, "a", 2, 1)  # a run
    assert last_replies(pair, 0, 3) == [refused] * 3
    assert batch(pair, 0, EnqueueBatch("a", (b"z",))) == ["FULL" if refused == "FULL" else "ERROR"]
    assert batch(pair, 0, EnqueueDelayed("a", b"z", 125)) == ["FULL" if refused == "FULL" else "ERROR"]
    pair.enqueue(0, "b", 1, 0)  # nothing is never too much
    pair.read(1, "a", 2, timeout_ms=125)  # in flight still counts...
    pair.enqueue(0, "a", 1, 1)
    pair.confirm(1, pair.last_read[1])  # ...until confirmed: 80 bytes freed
    pair.enqueue(0, "a", 2, 40)
    assert last_replies(pair, 0, 3) == [refused, "OBJECT_QUEUED", "OBJECT_QUEUED"]
    pair.drain()


def test_malformed_and_unknown_read_runs(pair: Pair) -> None:
    pair.enqueue(0, "a", 3, 5)
    body = Read("a", 125).body()
    for bad in (body[:8] + b"\x02a", body[:8] + b"\x00a", body[:9], b"", body + b"!"):
        pair.feed(
            1,
            [HEADER.pack(MAGIC, Op.READ, 0, rid, len(bad)) + bad for rid in pair.request_ids(3)],
            what=f"READ {bad!r}",
        )
    pair.read(1, "u", 3)
    assert not answered(pair, Op.READ)
    pair.drain()


def test_confirm_runs(pair: Pair) -> None:
    pair.enqueue(0, "a", 12, 5)
    pair.read(0, "a", 6, timeout_ms=500)
    pair.read(1, "a", 4, timeout_ms=125)
    mine, theirs = pair.last_read
    pair.confirm(0, mine[:2])  # part of a block: the fast path
    pair.confirm(0, [mine[2], mine[2]])  # members of one block, but twice the same: reply by reply
    pair.confirm(0, [mine[3], 999_999])  # an unknown id
    pair.confirm(0, [theirs[0], mine[4]])  # another connection's message: not this one's to confirm
    pair.advance(0.125)  # theirs[1:] expire and go back
    pair.confirm(0, theirs[1:] + [mine[0]])  # requeued, then already gone
    pair.read(1, "a", 3, timeout_ms=125)
    pair.confirm(1, pair.last_read[1])
    assert answered(pair, Op.CONFIRM) == 6
    pair.drain()


@pytest.mark.parametrize("count, payloads", [(3, 3), (4, 5), (2, 3)], ids=["all taken", "some left", "within"])
def test_a_read_run_whose_replies_could_pass_the_output_limit(count: int, payloads: int) -> None:
    """One by one, the read whose reply passes max_output_buffer is the last one taken and the
    connection is cut off; the messages behind it stay fresh (deliveries 1, never requeued). A run
    whose replies could pass the limit (found by this test: it took every message first) goes that way."""
    pair = Pair("declined", max_output_buffer=150)
    pair.enqueue(0, "a", payloads, MAX_SIZE)
    pair.read(1, "a", count)  # 3 x 64 bytes of payload > 150
    if count * MAX_SIZE > 150:
        assert declined(pair, Op.READ) == 1
        assert len(pair.run.transports[1]) == 2 and not pair.run.transports[1][0].written  # cut off, unanswered
    else:
        assert answered(pair, Op.READ) == 1
    pair.drain()


@pytest.mark.parametrize("max_messages", [1, 2, 10])
def test_an_enqueue_run_to_a_queue_with_a_waiting_batch_read(max_messages: int) -> None:
    """One by one, the first ENQUEUE wakes the waiting READ_BATCH with that one message (found by
    this test: as a batch, the waiter got every message of the run)."""
    pair = Pair("declined")
    pair.feed(1, [encode(pair.request_ids(1)[0], ReadBatch("a", max_messages, 125, 500))], what="READ_BATCH, waits")
    pair.enqueue(0, "a", 3, 5)
    assert declined(pair, Op.ENQUEUE) == 1
    ((opcode, _, body),) = frames_of(pair.run.transports[1][-1].written)
    assert (opcode, body[:4]) == ("MESSAGES", b"\x00\x00\x00\x01")  # one message
    pair.enqueue(0, "a", 3, 5)  # nobody waits any more: a batch
    assert answered(pair, Op.ENQUEUE) == 1
    pair.advance(0.125)
    pair.drain()


def test_a_run_split_across_receives(pair: Pair) -> None:
    """The run side gets the bytes in two pieces: whole sub-runs, or a partial frame first."""
    pair.enqueue(0, "a", 6, 5, cut=HEADER_SIZE + 7 + 3)  # mid-frame: neither piece is a run
    pair.enqueue(0, "a", 6, 5, cut=3 * (HEADER_SIZE + 7))  # on a frame boundary: two runs of three
    pair.read(1, "a", 6, timeout_ms=125, cut=HEADER_SIZE + 10 + 20)
    pair.read(1, "a", 6, timeout_ms=125, cut=2 * (HEADER_SIZE + 10))
    pair.confirm(1, pair.run.sessions[1].held.ids()[:6], cut=5)
    # The rest of a partial frame that looks like a run (this payload is two CONFIRM frames) is no run.
    inner = b"".join(encode(rid, Confirm(id_)) for rid, id_ in enumerate(pair.run.sessions[1].held.ids()[:2]))
    pair.feed(
        0, [encode(pair.request_ids(1)[0], Enqueue("a", inner))], cut=HEADER_SIZE + 2, what="ENQUEUE of CONFIRM frames"
    )
    assert pair.run.sessions[1].held.count == 6
    pair.drain()


# --- cut_run: the frames it cuts and the ones it leaves -----------------------------------------------------


def enqueues(count: int, queue: str = "q", size: int = 3, first: int = 1) -> list[bytes]:
    return [encode(first + i, Enqueue(queue, bytes([65 + i % 26]) * size)) for i in range(count)]


def reads(count: int, queue: str = "q", timeout_ms: int = 100, wait_ms: int = 0) -> list[bytes]:
    return [encode(1 + i, Read(queue, timeout_ms, wait_ms)) for i in range(count)]


def confirms(count: int) -> list[bytes]:
    return [encode(1 + i, Confirm(1000 + i)) for i in range(count)]


def wire(*request_ids: int) -> tuple[bytes, ...]:
    """Request ids as a `Run` holds them: their 4 wire bytes."""
    return tuple(request_id.to_bytes(4, "big") for request_id in request_ids)


def test_cut_run_cuts_enqueues() -> None:
    run = cut_run(b"".join(enqueues(4, first=7)))
    assert run == Run(Op.ENQUEUE, wire(7, 8, 9, 10), b"q", (b"AAA", b"BBB", b"CCC", b"DDD"))
    assert cut_run(b"".join(enqueues(2, size=0))) == Run(Op.ENQUEUE, wire(1, 2), b"q", (b"", b""))
    name = "n" * 255
    assert cut_run(b"".join(enqueues(2, name, size=1))) == Run(Op.ENQUEUE, wire(1, 2), name.encode(), (b"A", b"B"))
    big = [encode(2**32 - 1, Enqueue("q", b"z")), encode(0, Enqueue("q", b"y"))]
    assert cut_run(b"".join(big)) == Run(Op.ENQUEUE, wire(2**32 - 1, 0), b"q", (b"z", b"y"))


def test_cut_run_cuts_reads_and_confirms() -> None:
    body = Read("q", 100).body()
    assert cut_run(b"".join(reads(3))) == Run(Op.READ, wire(1, 2, 3), body, ())
    assert cut_run(b"".join(confirms(3))) == Run(Op.CONFIRM, wire(1, 2, 3), b"", (1000, 1001, 1002))
    # READ bodies are only compared, not checked: an ill-formed one, the same in each frame, is still a run.
    bad = [HEADER.pack(MAGIC, Op.READ, 0, rid, 3) + b"odd" for rid in (1, 2)]
    assert cut_run(b"".join(bad)) == Run(Op.READ, wire(1, 2), b"odd", ())


def test_cut_run_takes_up_to_max_run_frames() -> None:
    run = cut_run(b"".join(confirms(MAX_RUN)))
    assert run is not None and len(run.request_ids) == MAX_RUN
    assert cut_run(b"".join(confirms(MAX_RUN + 1))) is None
    assert cut_run(b"".join(enqueues(MAX_RUN + 1))) is None


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(enqueues(1), id="one frame"),
        pytest.param(confirms(1), id="one confirm"),
        pytest.param([], id="nothing"),
        pytest.param([encode(1, Enqueue("q", bytes(9))), encode(2, Read("qq"))], id="mixed opcodes, one size"),
        pytest.param([encode(1, Confirm(5)), encode(2, Purge("abcdefg"))], id="confirm and an 8-byte purge"),
        pytest.param(enqueues(2) + enqueues(1, size=4), id="different sizes"),
        pytest.param(enqueues(3) + [enqueues(1)[0][:-1]], id="trailing partial frame"),
        pytest.param(enqueues(3) + [enqueues(1)[0][:5]], id="trailing partial header"),
        pytest.param(enqueues(2) + [flagged(enqueues(1)[0])], id="flags on one enqueue"),
        pytest.param([flagged(frame) for frame in confirms(2)], id="flags on every confirm"),
        pytest.param(reads(2) + [flagged(reads(1)[0])], id="flags on one read"),
        pytest.param([encode(1, Enqueue("q1", b"abc")), encode(2, Enqueue("q2", b"abc"))], id="two names, one length"),
        pytest.param(reads(2) + reads(1, timeout_ms=200), id="read bodies differ"),
        pytest.param(reads(2) + reads(1, queue="r"), id="read names differ"),
        pytest.param(reads(2, wait_ms=5) + reads(1), id="read waits differ"),
        pytest.param(confirms(MAX_RUN + 1), id="more than MAX_RUN"),
        pytest.param([encode(1, CreateQueue("q"))] * 2, id="another opcode"),
        pytest.param([HEADER.pack(MAGIC, Op.ENQUEUE, 0, rid, 0) for rid in (1, 2)], id="empty enqueue bodies"),
        pytest.param([HEADER.pack(MAGIC, Op.ENQUEUE, 0, rid, 3) + b"\x00ab" for rid in (1, 2)], id="empty name"),
        pytest.param(
            [HEADER.pack(MAGIC, Op.ENQUEUE, 0, rid, 3) + b"\x03ab" for rid in (1, 2)], id="name past the body"
        ),
        pytest.param(
            [HEADER.pack(MAGIC, Op.ENQUEUE, 0, 1, 4) + b"\x01qab", HEADER.pack(MAGIC, Op.ENQUEUE, 0, 2, 4) + b"\x02qa"],
            id="name lengths differ",
        ),
        pytest.param([HEADER.pack(MAGIC, Op.CONFIRM, 0, rid, 7) + bytes(7) for rid in (1, 2)], id="short confirms"),
        pytest.param([HEADER.pack(MAGIC, Op.CONFIRM, 0, rid, 9) + bytes(9) for rid in (1, 2)], id="long confirms"),
        pytest.param(confirms(2) + [b"\x00" + confirms(1)[0][1:]], id="bad magic in a later frame"),
        pytest.param(confirms(1) + [HEADER.pack(MAGIC, Op.CONFIRM, 0, 2, 0) + bytes(8)], id="a later length disagrees"),
        pytest.param(
            reads(1) + [HEADER.pack(MAGIC, Op.READ, 0, 2, 4) + Read("q", 100).body()],
            id="a later read length disagrees",
        ),
        pytest.param([b"\x00" + confirms(1)[0][1:]] + confirms(2), id="bad magic first"),
        pytest.param(
            # Four frames in 64 bytes, as four 4-byte enqueues would be, but with bodies of 4, 0, 8 and 4.
            [
                HEADER.pack(MAGIC, Op.ENQUEUE, 0, 1, 4) + b"\x01qab",
                HEADER.pack(MAGIC, Op.ENQUEUE, 0, 2, 0),
                HEADER.pack(MAGIC, Op.ENQUEUE, 0, 3, 8) + b"\x01qabcdef",
                HEADER.pack(MAGIC, Op.ENQUEUE, 0, 4, 4) + b"\x01qab",
            ],
            id="lengths differ, the total fits",
        ),
    ],
)
def test_cut_run_leaves_anything_else(frames: list[bytes]) -> None:
    assert cut_run(b"".join(frames)) is None


# cut_run against a plain reading of the frames: a Run exactly when the definition says so.

HOT = [Op.ENQUEUE, Op.READ, Op.CONFIRM]


@st.composite
def near_runs(draw: st.DrawFn) -> bytes:
    """Frames built from one template, some of them changed in one field: most buffers are runs or nearly."""
    opcode = draw(st.sampled_from(HOT * 3 + [Op.PURGE]))
    body = draw(st.binary(max_size=12))
    if opcode == Op.ENQUEUE and body and draw(st.booleans()):
        body = bytes([draw(st.integers(1, 3))]) + body[1:]  # a name length that often fits
    if opcode == Op.CONFIRM and draw(st.booleans()):
        body = draw(st.binary(min_size=8, max_size=8))
    count = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 4, 5, 6, MAX_RUN, MAX_RUN + 1]))
    frames = []
    for _ in range(count):
        frame_opcode, flags, this = opcode, 0, body
        change = draw(st.integers(0, 8 * count))
        if change == 0:
            frame_opcode = draw(st.sampled_from(HOT))
        elif change == 1:
            flags = draw(st.integers(1, 0xFFFF))
        elif change == 2:
            this = draw(st.binary(min_size=len(body), max_size=len(body)))  # same size, other bytes
        elif change == 3:
            this = draw(st.binary(max_size=12))
        elif change == 4 and body:
            this = body[:-1] + bytes([body[-1] ^ 1])
        length = len(this)
        if change == 5:
            length = draw(st.integers(0, 20))  # a header that lies about its body
        frames.append(HEADER.pack(MAGIC, frame_opcode, flags, draw(st.integers(0, 2**32 - 1)), length) + this)
    data = b"".join(frames)
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(min_size=1, max_size=HEADER_SIZE + 12))
    return data


def expected_run(data: bytes) -> Run | None:
    """The definition of a run, written out frame by frame."""
    reader = FrameReader(1 << 20)
    frames = reader.feed(data)
    if reader.failure is not None or reader.buffered or not 2 <= len(frames) <= MAX_RUN:
        return None
    opcode, _, _, body = frames[0]
    if any((op, flags, len(b)) != (opcode, 0, len(body)) for op, flags, _, b in frames):
        return None
    request_ids = wire(*(request_id for _, _, request_id, _ in frames))
    if opcode == Op.CONFIRM and len(body) == 8:
        return Run(opcode, request_ids, b"", tuple(struct.unpack(">Q", b)[0] for _, _, _, b in frames))
    if opcode == Op.READ and all(b == body for _, _, _, b in frames):
        return Run(opcode, request_ids, body, ())
    if opcode == Op.ENQUEUE and body and 0 < body[0] < len(body):
        name = body[: 1 + body[0]]
        if all(b.startswith(name) for _, _, _, b in frames):
            return Run(opcode, request_ids, name[1:], tuple(b[len(name) :] for _, _, _, b in frames))
    return None


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=near_runs())
def test_cut_run_follows_the_definition(data: bytes) -> None:
    run = cut_run(data)
    expected = expected_run(data)
    event("a run" if expected is not None else "not a run")
    assert run == expected


def test_the_reply_builders_match_encode() -> None:
    rids = (5, 2**32 - 1, 0)
    assert codecs.id_frames(Op.OBJECT_QUEUED, wire(*rids), [10, 2**64 - 1, 12]) == b"".join(
        encode(rid, ObjectQueued(id_)) for rid, id_ in zip(rids, [10, 2**64 - 1, 12])
    )
    assert codecs.bare_frames(Op.CONFIRMED, wire(*rids)) == b"".join(encode(rid, Confirmed()) for rid in rids)
    assert codecs.bare_frames(Op.EMPTY, ()) == b""
    assert codecs.bare_frames(Op.REQUEUED, wire(9)) == encode(9, Requeued())
    payloads = [b"", b"x", b"yy" * 40]
    assert codecs.message_frames(wire(*rids), [1, 2, 3], [1, 4, 1], payloads) == b"".join(
        encode(rid, Message(id_, data, deliveries))
        for rid, id_, deliveries, data in zip(rids, [1, 2, 3], [1, 4, 1], payloads)
    )
    # Fewer messages than requests: the first requests get them (the rest are answered Empty by the caller).
    assert codecs.message_frames(wire(*rids), [1], [1], [b"z"]) == encode(5, Message(1, b"z"))
    assert codecs.bare_frames(Op.EMPTY, wire(*rids[1:])) == encode(2**32 - 1, Empty()) + encode(0, Empty())

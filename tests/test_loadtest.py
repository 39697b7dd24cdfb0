"""The load generator (`dbqueue.loadtest`): its figures add up, and wrong data fails the run.

Runs go against real servers on port 0 (conftest's ``server_factory``) from a
fresh client-side loop (`dbqueue.server.new_event_loop`, so uvloop when
installed) that fails the test on any unhandled exception it sees. The reply
reader and the driver's checks are pure: they are fed frames built with
`dbqueue.protocol.messages.encode`. Loads are kept to a few hundred messages.
Fan-in runs (`run_fan_in`) fork their client processes from the test process;
one also runs against bench/floor.py, the fan-in benchmark's framing-only server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from dbqueue import Client
from dbqueue.loadtest import (
    BenchConfig,
    BenchFailure,
    BenchResult,
    DbQueueDriver,
    FanInResult,
    Ledger,
    Replies,
    _ColumnReader,
    run_fan_in,
    run_load,
    run_round_trips,
)
from dbqueue.protocol import frames as fr
from dbqueue.protocol import messages as msg
from dbqueue.server import new_event_loop

if TYPE_CHECKING:
    from conftest import ServerThread

T = TypeVar("T")

QUEUE = "bench"
PAYLOAD = 64
PIPELINE = 8


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coroutine`` on a fresh client-side loop; fail on any unhandled exception that loop sees.

    The check runs whether the coroutine returned or raised: a failed run must not leave
    callbacks that blow up behind it either.
    """
    loop = new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
    finally:
        loop.close()
        assert errors == [], "the client's loop saw unhandled exceptions:\n" + "\n".join(
            f"  {context.get('message')}: {context.get('exception')!r}" for context in errors
        )


def small_config(*servers: ServerThread, **overrides: Any) -> BenchConfig:
    """The brief's small load: 2 producers, 2 consumers, pipeline 8, 20 iterations, 64-byte payloads."""
    options: dict[str, Any] = {
        "producers": 2, "consumers": 2, "pipeline": PIPELINE, "iterations": 20, "payload": PAYLOAD,
        "queue": QUEUE, "time_limit": 10.0,
    }  # fmt: skip
    options.update(overrides)
    return BenchConfig(addresses=[server.host_port for server in servers], **options)


def queue_stats(server: ServerThread, name: str = QUEUE) -> dict[str, Any]:
    broker = server.server.broker
    return server.call(lambda: broker.queues[name.encode()].stats())


def assert_all_confirmed(server: ServerThread, count: int) -> None:
    stats = queue_stats(server)
    assert (stats["enqueued"], stats["confirmed"], stats["ready"], stats["in_flight"]) == (count, count, 0, 0), stats


# --- 1. run_load against real servers ----------------------------------------------------


def test_run_load_confirms_every_message_it_sends(server: ServerThread) -> None:
    config = small_config(server)
    result = run(run_load(DbQueueDriver(config)))

    assert isinstance(result, BenchResult)
    assert result.system == "dbqueue"
    assert result.messages == config.messages == 2 * 20 * PIPELINE
    # One send and one confirm per message, and at least one read: reads that found the queue empty count too.
    sends = config.producers * config.iterations * config.pipeline
    reads = result.requests - sends - result.messages
    assert result.requests >= 3 * result.messages
    assert reads >= result.messages and reads % config.pipeline == 0, reads
    # A latency per producer batch, and one per consumer batch that read something (at most a pipeline each).
    assert len(result.latencies) >= 2 * config.producers * config.iterations
    assert all(latency > 0 for latency in result.latencies)
    assert result.seconds > 0 and result.client_cpu_seconds >= 0
    assert result.as_dict()["messages_per_second"] > 0
    assert_all_confirmed(server, result.messages)


def test_run_load_in_batches(server: ServerThread) -> None:
    config = small_config(server, batch=10)
    result = run(run_load(DbQueueDriver(config)))

    assert result.messages == config.messages == 2 * 20 * PIPELINE * 10
    # Per request batch of 10: one send, one confirm, at least one read.
    sends = config.producers * config.iterations * config.pipeline
    assert result.requests >= 3 * result.messages // config.batch
    assert result.requests - sends >= 2 * result.messages // config.batch
    assert len(result.latencies) >= config.producers * config.iterations + 1
    assert all(latency > 0 for latency in result.latencies)
    assert result.seconds > 0
    assert_all_confirmed(server, result.messages)


def test_run_load_spreads_over_two_servers(server_factory: Callable[..., ServerThread]) -> None:
    servers = [server_factory(), server_factory()]
    config = small_config(*servers)
    result = run(run_load(DbQueueDriver(config)))

    assert result.messages == config.messages
    # Two producers over two servers: each server gets one producer's messages, and all are confirmed there.
    per_server = config.iterations * config.pipeline
    for handle in servers:
        assert_all_confirmed(handle, per_server)


def test_run_load_one_producer_one_consumer_over_two_servers(server_factory: Callable[..., ServerThread]) -> None:
    servers = [server_factory(), server_factory()]
    config = small_config(*servers, producers=1, consumers=1, iterations=5, time_limit=0.5)
    result = run(run_load(DbQueueDriver(config)))
    assert result.messages == config.messages


# --- 2. run_round_trips ------------------------------------------------------------------


def test_run_round_trips_times_send_read_and_confirm(server: ServerThread) -> None:
    config = small_config(server, iterations=10)
    result = run(run_round_trips(DbQueueDriver(config)))

    assert result.messages == 10
    assert len(result.latencies) == 3 * 10 == result.requests
    assert all(latency > 0 for latency in result.latencies)
    assert result.seconds >= sum(result.latencies) > 0
    assert_all_confirmed(server, 10)


def test_run_round_trips_in_batches(server: ServerThread) -> None:
    config = small_config(server, iterations=3, batch=5)
    result = run(run_round_trips(DbQueueDriver(config)))
    assert len(result.latencies) == 3 * 3


# --- 3. _ColumnReader: one buffer, a byte at a time, random chunks ------------------------


Frame = tuple[int, msg.Response]  # (request id, response)


def mixed_replies(rng: random.Random, count: int = 32) -> list[Frame]:
    """ObjectQueued, Message (payloads of 0-300 bytes), Confirmed and Empty replies, with random request ids."""
    makers: list[Callable[[], msg.Response]] = [
        lambda: msg.ObjectQueued(rng.getrandbits(64)),
        lambda: msg.Message(rng.getrandbits(64), rng.randbytes(rng.randrange(0, 300)), rng.randrange(1, 4)),
        lambda: msg.Confirmed(),
        lambda: msg.Empty(),
    ]
    return [(rng.getrandbits(32), makers[i % 4]()) for i in range(count)]


def equal_replies(count: int = 32) -> list[Frame]:
    """Replies whose frames are all 20 bytes: the reader's one-struct-call path."""
    return [(i, msg.ObjectQueued(1000 + i)) for i in range(1, count + 1)]


def wire(frames: list[Frame]) -> bytes:
    return b"".join(msg.encode(request_id, response) for request_id, response in frames)


def columns(frames: list[Frame]) -> Replies:
    """The columns a reader must produce, from the responses themselves (not from parsing the bytes)."""
    bodies = [response.body() for _, response in frames]
    return Replies(
        [int(response.OPCODE) for _, response in frames],
        [request_id for request_id, _ in frames],
        [len(body) for body in bodies],
        bodies,
    )


def chunked(data: bytes, sizes: Callable[[], int]) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        size = sizes()
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def read_all(chunks: list[bytes], max_body: int = 4096) -> tuple[_ColumnReader, Replies]:
    """Feed ``chunks`` to a new reader; check its counts never go down; return it and what it took."""
    reader = _ColumnReader(max_body)
    complete = 0
    for chunk in chunks:
        now = reader.feed(chunk)
        assert now >= complete, "a reader's count of complete replies went down"
        complete = now
    replies = reader.take()
    assert complete == len(replies.opcodes)
    assert reader.take() == Replies([], [], [], []), "take must hand the replies over, not copy them"
    return reader, replies


def feeds(data: bytes, seed: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    return {
        "whole": [data],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "random 1-40": chunked(data, lambda: rng.randint(1, 40)),
        "random 1-500": chunked(data, lambda: rng.randint(1, 500)),
        "halves": [data[: len(data) // 2], data[len(data) // 2 :]],
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_column_reader_mixed_sizes_any_chunking(seed: int) -> None:
    frames = mixed_replies(random.Random(seed))
    expected = columns(frames)
    for how, chunks in feeds(wire(frames), seed).items():
        _, replies = read_all(chunks)
        assert replies == expected, how


def test_column_reader_equal_sizes_any_chunking() -> None:
    frames = equal_replies()
    expected = columns(frames)
    data = wire(frames)
    reader, replies = read_all([data])
    assert replies == expected
    assert reader.layouts, "32 frames of one size should have taken the one-struct-call path"
    # Whole frames four at a time (the fast path each time), and every other chunking.
    assert read_all([data[i : i + 80] for i in range(0, len(data), 80)])[1] == expected
    for how, chunks in feeds(data, 7).items():
        assert read_all(chunks)[1] == expected, how


def test_column_reader_equal_sized_messages() -> None:
    payload = bytes(range(PAYLOAD))
    frames: list[Frame] = [(i, msg.Message(i << 40, payload, 1 + i % 3)) for i in range(1, 33)]
    expected = columns(frames)
    reader, replies = read_all([wire(frames)])
    assert replies == expected and reader.layouts
    assert read_all(feeds(wire(frames), 11)["random 1-40"])[1] == expected


def test_column_reader_more_frames_than_one_layout_takes() -> None:
    frames = equal_replies(_ColumnReader.MAX_RUN + 44)
    _, replies = read_all([wire(frames)])
    assert replies == columns(frames)


def test_column_reader_body_over_the_limit_is_a_failure() -> None:
    frames: list[Frame] = [(1, msg.Message(1, b"x" * 100)), (2, msg.Empty())]
    with pytest.raises(BenchFailure, match="exceeds the limit"):
        _ColumnReader(50).feed(wire(frames))


def corrupt(data: bytes, frame: int, frame_size: int, what: str) -> bytes:
    """Break one frame's header: its magic byte, or its flags."""
    corrupted = bytearray(data)
    start = frame * frame_size
    if what == "magic":
        corrupted[start] = 0xDA
    else:
        corrupted[start + 2 : start + 4] = (0x8001).to_bytes(2, "big")
    return bytes(corrupted)


@pytest.mark.parametrize("what", ["magic", "flags"])
@pytest.mark.parametrize("frame", [0, 1, 17, 31])
def test_column_reader_refuses_a_bad_header_among_equal_frames(frame: int, what: str) -> None:
    data = corrupt(wire(equal_replies()), frame, 20, what)
    reader = _ColumnReader(4096)
    with pytest.raises(BenchFailure, match="magic byte 0xda" if what == "magic" else "flags 0x8001"):
        reader.feed(data)
    # Whatever was collected before the failure, the broken frame is not among it.
    assert len(reader.columns.opcodes) <= frame


@pytest.mark.parametrize("what", ["magic", "flags"])
def test_column_reader_refuses_a_bad_header_fed_bytewise(what: str) -> None:
    frames = mixed_replies(random.Random(5))
    data = wire(frames)
    start = len(wire(frames[:9]))  # frame 9's header
    data = data[:start] + corrupt(data[start:], 0, 0, what)
    reader = _ColumnReader(4096)
    with pytest.raises(BenchFailure):
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    assert reader.take() == columns(frames[:9])


def test_column_reader_stays_failed_after_a_framing_failure() -> None:
    data = wire(equal_replies())
    reader = _ColumnReader(4096)
    with pytest.raises(BenchFailure):
        reader.feed(corrupt(data, 3, 20, "magic"))
    reader.take()
    try:
        reader.feed(data)
    except BenchFailure:
        return
    assert reader.take() == Replies([], [], [], []), "frames were accepted after the framing was lost"


# --- 4. the driver's checks: wrong data is a BenchFailure naming the request -------------


def driver(batch: int = 1) -> DbQueueDriver:
    return DbQueueDriver(BenchConfig(pipeline=PIPELINE, payload=PAYLOAD, queue=QUEUE, batch=batch))


PAYLOAD_BYTES = driver().payload
OTHER_PAYLOAD = bytes([PAYLOAD_BYTES[0] ^ 0xFF]) + PAYLOAD_BYTES[1:]
BATCH = 3


def replies_of(checker: DbQueueDriver, responses: list[msg.Response], order: list[int] | None = None) -> Replies:
    """``responses`` as the driver's own reader returns them; request ids 1..n, or ``order``."""
    ids = order or list(range(1, len(responses) + 1))
    reader = checker.new_reader()
    assert reader.feed(wire(list(zip(ids, responses)))) == len(responses)
    return reader.take()


def swapped(count: int, a: int, b: int) -> list[int]:
    ids = list(range(1, count + 1))
    ids[a - 1], ids[b - 1] = ids[b - 1], ids[a - 1]
    return ids


def queued(count: int = PIPELINE) -> list[msg.Response]:
    return [msg.ObjectQueued(100 + i) for i in range(count)]


def read(count: int = PIPELINE, payload: bytes = PAYLOAD_BYTES) -> list[msg.Response]:
    return [msg.Message(1000 + i, payload) for i in range(count)]


def batches_queued(count: int = PIPELINE) -> list[msg.Response]:
    return [msg.ObjectsQueued(tuple(range(10 * i, 10 * i + BATCH))) for i in range(count)]


def batches_read(count: int = PIPELINE, payload: bytes = PAYLOAD_BYTES) -> list[msg.Response]:
    return [msg.Messages(tuple(msg.Message(10 * i + j, payload) for j in range(BATCH))) for i in range(count)]


def replace(responses: list[msg.Response], position: int, response: msg.Response) -> list[msg.Response]:
    """``responses`` with the reply to request ``position`` (1-based) replaced."""
    return responses[: position - 1] + [response] + responses[position:]


def test_driver_accepts_right_replies() -> None:
    # The control for the failure cases below: the same builders, nothing wrong.
    checker = driver()
    checker.check_sent(replies_of(checker, queued()))
    ids = checker.take_messages(replies_of(checker, read()))
    assert ids == [struct.pack(">Q", 1000 + i) for i in range(PIPELINE)]
    some = replace(replace(read(), 2, msg.Empty()), 8, msg.Empty())
    assert checker.take_messages(replies_of(checker, some)) == [ids[0], *ids[2:7]]
    assert checker.take_messages(replies_of(checker, [msg.Empty()] * PIPELINE)) == []
    checker.check_confirmed(replies_of(checker, [msg.Confirmed()] * PIPELINE))
    checker.check_confirmed(replies_of(checker, [msg.Confirmed()] * 3))  # fewer messages read, fewer confirms

    batched = driver(BATCH)
    batched.check_sent(replies_of(batched, batches_queued()))
    ids = batched.take_messages(replies_of(batched, batches_read()))
    assert ids == [struct.pack(">Q", 10 * i + j) for i in range(PIPELINE) for j in range(BATCH)]
    partial = replace(batches_read(), 4, msg.Messages((msg.Message(7, PAYLOAD_BYTES),)))
    assert len(batched.take_messages(replies_of(batched, replace(partial, 5, msg.Messages(()))))) == 6 * BATCH + 1
    batched.check_confirmed(replies_of(batched, [msg.ConfirmResults((0, 0, 0))] * 2 + [msg.ConfirmResults((0,))]))


ERROR = msg.Error(1, "no")
WRONG = [
    # (batch, check, responses, request id order or None for 1..n, what the failure must say); the id is the case
    pytest.param(1, "check_sent", replace(queued(), 5, msg.Full()), None, r"\bsend 5\b", id="send: Full"),
    pytest.param(1, "check_sent", replace(queued(), 1, ERROR), None, r"\bsend 1\b", id="send: Error"),
    pytest.param(1, "check_sent", queued(), swapped(PIPELINE, 3, 4), r"\bsend 3\b.*request 4", id="send: order"),
    pytest.param(1, "check_sent", queued(7), [*range(1, 7), 8], r"\bsend 7\b.*request 8", id="send: id skipped"),
    pytest.param(1, "take_messages", replace(read(), 2, msg.ObjectQueued(5)), None, r"\bread 2\b", id="read: opcode"),
    pytest.param(1, "take_messages", replace(read(), 7, ERROR), None, r"\bread 7\b", id="read: Error"),
    pytest.param(1, "take_messages", read(), swapped(PIPELINE, 1, 2), r"\bread 1\b.*request 2", id="read: order"),
    pytest.param(
        1, "take_messages", replace(read(), 3, msg.Empty()), swapped(PIPELINE, 5, 6), r"\bread 5\b.*request 6",
        id="read: order, some empty",
    ),
    pytest.param(
        1, "take_messages", replace(read(), 4, msg.Message(4, PAYLOAD_BYTES[:-1])), None, r"\bread 4\b",
        id="read: payload cut short",
    ),
    pytest.param(
        1, "take_messages", replace(replace(read(), 3, msg.Empty()), 6, msg.Message(6, OTHER_PAYLOAD)), None,
        r"\bread 6\b.*payload corrupted", id="read: payload corrupted, some empty",
    ),
    pytest.param(
        1, "take_messages", replace(read(), 6, msg.Message(6, OTHER_PAYLOAD)), None, r"\bread 6\b.*payload corrupted",
        id="read: payload corrupted, none empty",
    ),
    pytest.param(1, "check_confirmed", replace([msg.Confirmed()] * 8, 2, msg.Requeued()), None, r"\bconfirm 2\b",
                 id="confirm: Requeued"),
    pytest.param(1, "check_confirmed", [msg.Confirmed()] * 8, swapped(PIPELINE, 7, 8), r"\bconfirm 7\b.*request 8",
                 id="confirm: order"),
    pytest.param(BATCH, "check_sent", replace(batches_queued(), 2, msg.ObjectsQueued((1, 2))), None,
                 r"\bsend batch 2\b", id="send batch: ids missing"),
    pytest.param(BATCH, "check_sent", replace(batches_queued(), 1, msg.ObjectQueued(1)), None, r"\bsend batch 1\b",
                 id="send batch: opcode"),
    pytest.param(BATCH, "take_messages", replace(batches_read(), 2, batches_read(1, OTHER_PAYLOAD)[0]), None,
                 r"\bread batch 2\b.*payload corrupted", id="read batch: payload corrupted"),
    pytest.param(BATCH, "take_messages", replace(batches_read(), 5, batches_read(1, PAYLOAD_BYTES + b"!")[0]), None,
                 r"\bread batch 5\b", id="read batch: payload too long"),
    pytest.param(BATCH, "take_messages", batches_read(), swapped(PIPELINE, 1, 2), r"\bread batch 1\b.*request 2",
                 id="read batch: order"),
    pytest.param(BATCH, "take_messages", replace(batches_read(), 8, msg.Empty()), None, r"\bread batch 8\b",
                 id="read batch: opcode"),
    pytest.param(BATCH, "check_confirmed", [msg.Confirmed()], None, r"\bconfirm batch 1\b",
                 id="confirm batch: opcode"),
    pytest.param(BATCH, "check_confirmed", [msg.ConfirmResults((0, 0, 0)), msg.ConfirmResults((0, 1, 0))], None,
                 r"\bconfirm batch 2\b", id="confirm batch: requeued"),
]  # fmt: skip


@pytest.mark.parametrize(("batch", "check", "responses", "order", "names"), WRONG)
def test_driver_refuses_wrong_replies(
    batch: int, check: str, responses: list[msg.Response], order: list[int] | None, names: str
) -> None:
    checker = driver(batch)
    replies = replies_of(checker, responses, order)
    with pytest.raises(BenchFailure) as caught:
        getattr(checker, check)(replies)
    assert re.search(names, str(caught.value)), f"{caught.value} does not name the request ({names})"


def test_driver_refuses_confirm_results_without_outcomes() -> None:
    checker = driver(BATCH)
    with pytest.raises(BenchFailure):
        checker.check_confirmed(replies_of(checker, [msg.ConfirmResults(())]))


# --- 4b. a whole run against a real server fails on wrong data ---------------------------


class ForeignMessagesFirst(DbQueueDriver):
    """Puts messages with another payload of the same size in the queue once it is ready, before any consumer."""

    def __init__(self, config: BenchConfig, count: int = 3) -> None:
        super().__init__(config)
        self.count = count

    async def prepare(self, address: tuple[str, int]) -> None:
        await super().prepare(address)
        # A blocking client on the bench's loop is fine: the server runs on its own thread.
        with Client.connect(address) as client:
            for _ in range(self.count):
                client.send(self.config.queue, OTHER_PAYLOAD)


class SendsAnotherPayload(DbQueueDriver):
    """Producers send a payload that differs in one byte from the one consumers check for."""

    def send_frames(self, count: int) -> bytes:
        expected, self.payload = self.payload, OTHER_PAYLOAD
        try:
            return super().send_frames(count)
        finally:
            self.payload = expected


class NeverConfirms(DbQueueDriver):
    """Checks every read, then drops what it read: the run can only end at its time limit."""

    def take_messages(self, replies: Replies) -> list[bytes]:
        super().take_messages(replies)
        return []


@pytest.mark.parametrize("batch", [1, 4])
def test_run_load_fails_on_foreign_messages_in_the_queue(server: ServerThread, batch: int) -> None:
    config = small_config(server, batch=batch)
    with pytest.raises(BenchFailure, match="payload corrupted"):
        run(run_load(ForeignMessagesFirst(config)))
    assert queue_stats(server)["enqueued"] >= 3  # the foreign messages did reach the queue


@pytest.mark.parametrize("batch", [1, 4])
def test_run_load_fails_when_consumers_expect_another_payload(server: ServerThread, batch: int) -> None:
    config = small_config(server, batch=batch)
    with pytest.raises(BenchFailure, match="payload corrupted"):
        run(run_load(SendsAnotherPayload(config)))
    assert queue_stats(server)["confirmed"] == 0


def test_run_round_trips_fails_when_it_reads_another_payload(server: ServerThread) -> None:
    config = small_config(server, iterations=3)
    with pytest.raises(BenchFailure, match="payload corrupted"):
        run(run_round_trips(SendsAnotherPayload(config)))


def test_run_load_fails_at_its_time_limit(server: ServerThread) -> None:
    config = small_config(server, iterations=2, time_limit=0.3)
    with pytest.raises(BenchFailure, match=rf"time limit passed with 0 of {config.messages} messages confirmed"):
        run(run_load(NeverConfirms(config)))


class FailsWhileOthersWait(NeverConfirms):
    """Fails a check once consumers have spun on the empty queue for a while (each waits 1 ms after an empty read)."""

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.reads = 0

    def take_messages(self, replies: Replies) -> list[bytes]:
        self.reads += 1
        if self.reads == 5 * self.config.consumers:
            raise BenchFailure("read: a planted failure")
        return super().take_messages(replies)


def test_a_failed_run_leaves_no_callbacks_behind(server: ServerThread) -> None:
    async def fail_then_keep_the_loop(config: BenchConfig) -> None:
        with pytest.raises(BenchFailure, match="planted"):
            await run_load(FailsWhileOthersWait(config))
        await asyncio.sleep(0.05)

    # Whether some consumer is between an empty read and its next one when the run fails is a matter of timing:
    # most runs show it (about 5 in 6 here), five in a row all but always. Each on a queue of its own: a failed
    # run leaves its messages behind, and the load test does not use a queue that holds some.
    for round_ in range(5):
        run(fail_then_keep_the_loop(small_config(server, producers=1, consumers=6, iterations=1, queue=f"q{round_}")))


# --- 5. confirm_frames -------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, PIPELINE])
def test_confirm_frames_one_confirm_per_id(count: int) -> None:
    rng = random.Random(count)
    ids = [rng.getrandbits(64) for _ in range(count)]
    checker = driver()
    handles = [struct.pack(">Q", id_) for id_ in ids]
    assert checker.confirm_frames(handles) == b"".join(msg.encode(i, msg.Confirm(id_)) for i, id_ in enumerate(ids, 1))
    assert checker.confirm_replies(handles) == count


@pytest.mark.parametrize("count", [1, BATCH, 10, BATCH * PIPELINE])
def test_confirm_frames_in_batches(count: int) -> None:
    rng = random.Random(count)
    ids = [rng.getrandbits(64) for _ in range(count)]
    checker = driver(BATCH)
    handles = [struct.pack(">Q", id_) for id_ in ids]
    chunks = [tuple(ids[i : i + BATCH]) for i in range(0, count, BATCH)]
    expected = b"".join(msg.encode(i, msg.ConfirmBatch(chunk)) for i, chunk in enumerate(chunks, 1))
    assert checker.confirm_frames(handles) == expected
    assert checker.confirm_replies(handles) == len(chunks) == -(-count // BATCH)


def test_confirm_frames_take_the_handles_take_messages_returns() -> None:
    checker = driver()
    handles = checker.take_messages(replies_of(checker, read()))
    expected = b"".join(msg.encode(i, msg.Confirm(1000 + i - 1)) for i in range(1, PIPELINE + 1))
    assert checker.confirm_frames(handles) == expected


# --- 6. unique payloads ----------------------------------------------------------------------


def sent_payloads(frames: bytes) -> list[bytes]:
    """The payloads of ENQUEUE frames, cut by the protocol's own reader."""
    reader = fr.FrameReader(1 << 20)
    payloads = []
    for opcode, _, _, body in reader.feed(frames):
        assert opcode == fr.Op.ENQUEUE
        payloads.append(msg.Enqueue.from_body(body).data)
    return payloads


def test_every_send_carries_a_payload_of_its_own() -> None:
    checker = driver()
    payloads = sent_payloads(checker.send_frames(PIPELINE)) + sent_payloads(checker.send_frames(PIPELINE))
    assert len(set(payloads)) == len(payloads) == 2 * PIPELINE
    # The template, numbered in its last bytes: each one is intact, and numbered from 0 on.
    assert all(map(checker.intact, payloads))
    assert [int.from_bytes(p[-8:], "big") for p in payloads] == list(range(2 * PIPELINE))
    assert [p[:-8] for p in payloads] == [PAYLOAD_BYTES[:-8]] * len(payloads)
    # The frames are what the protocol's own encoder gives for those payloads.
    again = driver()
    assert again.send_frames(3) == b"".join(msg.encode(i, msg.Enqueue(QUEUE, p)) for i, p in enumerate(payloads[:3], 1))


def test_batches_of_sends_carry_payloads_of_their_own() -> None:
    checker = driver(BATCH)
    frames = checker.send_frames(2)
    expected = [PAYLOAD_BYTES[:-8] + n.to_bytes(8, "big") for n in range(2 * BATCH)]
    assert frames == b"".join(
        msg.encode(i, msg.EnqueueBatch(QUEUE, tuple(expected[(i - 1) * BATCH : i * BATCH]))) for i in (1, 2)
    )
    # A read batch of them checks out: the label differs, the rest is the template.
    reply = msg.Messages(tuple(msg.Message(10 + n, p) for n, p in enumerate(expected[:BATCH])))
    assert len(checker.take_messages(replies_of(checker, [reply]))) == BATCH


@pytest.mark.parametrize("size", [0, 3, 8, 9])
def test_short_payloads_keep_the_label_that_fits(size: int) -> None:
    checker = DbQueueDriver(BenchConfig(pipeline=2, payload=size, queue=QUEUE))
    payloads = checker.payloads(300)
    assert {len(p) for p in payloads} == {size}
    assert len(set(payloads)) == min(300, 256 ** min(size, 8))
    assert all(map(checker.intact, payloads))


class RecordsPayloads(DbQueueDriver):
    """Checks every read as usual, and keeps every payload it read."""

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.seen: list[bytes] = []

    def take_messages(self, replies: Replies) -> list[bytes]:
        ids = super().take_messages(replies)
        self.seen += [body[12:] for opcode, body in zip(replies.opcodes, replies.bodies) if opcode == fr.Op.MESSAGE]
        return ids


def test_a_run_reads_back_every_payload_once(server: ServerThread) -> None:
    recorder = RecordsPayloads(small_config(server))
    result = run(run_load(recorder))
    assert len(recorder.seen) == len(set(recorder.seen)) == result.messages


# --- 7. fan-in: one request in flight per connection, over client processes -----------------


def fan_in_config(*servers: ServerThread, **overrides: Any) -> BenchConfig:
    return small_config(*servers, **{"producers": 3, "consumers": 3, "pipeline": 1, "iterations": 20, **overrides})


def test_run_fan_in_over_two_processes_confirms_every_message(server: ServerThread) -> None:
    config = fan_in_config(server)
    marks: list[str] = []
    result = run_fan_in(
        DbQueueDriver, config, new_event_loop, 2, on_start=lambda: marks.append("start"),
        on_end=lambda: marks.append("end"),
    )  # fmt: skip

    assert isinstance(result, FanInResult)
    assert marks == ["start", "end"]
    assert result.messages == config.messages == 3 * 20
    assert len(result.process_cpu_seconds) == 2 and result.client_cpu_seconds == sum(result.process_cpu_seconds)
    # One send and one confirm per message, at least one read each; every round trip is timed, empty reads too.
    assert result.requests >= 3 * result.messages
    assert len(result.latencies) == result.requests
    assert all(latency > 0 for latency in result.latencies)
    assert result.seconds > 0
    assert_all_confirmed(server, result.messages)


def test_run_fan_in_with_more_processes_than_connections_of_a_kind(server: ServerThread) -> None:
    # One producer and three consumers over three processes: two processes only consume, and still stop.
    config = fan_in_config(server, producers=1, consumers=3, iterations=10)
    result = run_fan_in(DbQueueDriver, config, new_event_loop, 3)
    assert result.messages == 10 and len(result.process_cpu_seconds) == 3
    assert_all_confirmed(server, 10)


def test_run_fan_in_takes_one_request_in_flight_only(server: ServerThread) -> None:
    with pytest.raises(ValueError, match="pipeline and batch must be 1"):
        run_fan_in(DbQueueDriver, small_config(server), new_event_loop, 1)
    with pytest.raises(ValueError, match="pipeline and batch must be 1"):
        run_fan_in(DbQueueDriver, fan_in_config(server, batch=2), new_event_loop, 1)


class PlantedFailure(DbQueueDriver):
    """Fails its tenth read check, in whichever process gets there."""

    def __init__(self, config: BenchConfig) -> None:
        super().__init__(config)
        self.reads = 0

    def take_messages(self, replies: Replies) -> list[bytes]:
        self.reads += 1
        if self.reads == 10:
            raise BenchFailure("read: a planted failure")
        return super().take_messages(replies)


def test_run_fan_in_fails_when_a_process_fails(server: ServerThread) -> None:
    config = fan_in_config(server, iterations=50, time_limit=60.0)
    began = time.monotonic()
    with pytest.raises(BenchFailure, match=r"client process \d: BenchFailure: read: a planted failure"):
        run_fan_in(PlantedFailure, config, new_event_loop, 2)
    assert time.monotonic() - began < 30, "the other process was not stopped: it ran on towards its time limit"
    assert not multiprocessing.active_children()


def test_run_fan_in_fails_when_it_cannot_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    # Nothing listens there: the queue cannot even be prepared.
    with pytest.raises(OSError):
        run_fan_in(DbQueueDriver, BenchConfig(addresses=[address], pipeline=1), new_event_loop, 2)


def test_fan_in_times_each_request_in_one_process(server: ServerThread) -> None:
    config = fan_in_config(server, fan_in=True)
    result = run(run_load(DbQueueDriver(config)))
    assert len(result.latencies) == result.requests >= 3 * result.messages


def test_ledger_sums_every_process_slot() -> None:
    slots = multiprocessing.get_context("fork").RawArray("q", 3)
    ledgers = [Ledger(slots, index, 100) for index in range(3)]
    ledgers[0].note(10)
    ledgers[2].note(5)
    ledgers[0].note(30)
    assert [ledger.confirmed() for ledger in ledgers] == [35, 35, 35]


class FloorDriver(DbQueueDriver):
    """bench/floor.py answers ENQUEUE, READ and CONFIRM only: nothing to prepare."""

    name = "floor"

    async def prepare(self, address: tuple[str, int]) -> None:
        return None


def test_the_floor_passes_the_fan_in_checks() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    floor = Path(__file__).resolve().parent.parent / "bench" / "floor.py"
    process = subprocess.Popen([sys.executable, str(floor), "--port", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "floor.py did not start"
                time.sleep(0.05)
        config = BenchConfig(addresses=[("127.0.0.1", port)], producers=2, consumers=2, pipeline=1, iterations=25)
        result = run_fan_in(FloorDriver, config, new_event_loop, 2)
        assert result.messages == 50 and result.requests >= 150
    finally:
        process.terminate()
        assert process.wait(10) == 0

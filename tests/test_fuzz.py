"""Hostile input against the server: a property test of one session, and a fuzz soak of a live server.

The property test feeds a `Session` (no socket: a fake transport and a fake
clock) any stream of valid, mutated and random frames in any chunking, and
checks that it never raises, that everything it writes is well-formed, and
that when the connection goes it holds nothing.

The soak runs a `dbqueue serve` process and, for a bounded time, has many
connections at once send it valid, mutated, random, truncated and oversized
frames, read or never read the replies, and end by closing, resetting or
half-closing. Afterwards the server must answer, another client's messages
queued before the soak must all be there unchanged, no reply may have been
malformed, the log must show no exception, and the server's memory must be
back near where it started.

Environment: ``DBQUEUE_FUZZ_SECONDS`` (default 5), ``DBQUEUE_FUZZ_CONNECTIONS``
(concurrent connections, default 50), ``DBQUEUE_FUZZ_SEED`` (default: random,
printed), ``DBQUEUE_FUZZ_REPORT`` (a path: the figures are written there as JSON),
``DBQUEUE_SESSION_EXAMPLES`` (the property test's examples, default 200).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from child_server import ChildServer
from dbqueue import AsyncClient, Client, DbQueueError
from dbqueue.core import Holding
from dbqueue.errors import ProtocolError
from dbqueue.protocol import (
    HEADER,
    MAGIC,
    Cancel,
    ClientConnection,
    Confirm,
    CreateQueue,
    DeleteQueue,
    Enqueue,
    FrameReader,
    Hello,
    ListQueues,
    Members,
    Message,
    Messages,
    ObjectQueued,
    ObjectsQueued,
    Read,
    decode_response,
    encode,
)
from dbqueue.protocol.frames import BODY_OVERHEAD
from dbqueue.protocol.messages import (
    ConfirmBatch,
    EnqueueBatch,
    EnqueueDelayed,
    Purge,
    ReadBatch,
    Release,
    Stats,
    Touch,
)
from dbqueue.server import Limits, Server
from dbqueue.server.session import Session
from fake_transport import FakeTransport

U32 = 0xFFFFFFFF


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """``edits`` random edits: flip a byte, rewrite a header field, cut, insert, drop or repeat a slice."""
    out = bytearray(data)
    for _ in range(edits):
        kind = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[at % len(out)] ^= rng.randrange(1, 256)
        elif kind == 1 and len(out) >= 12:  # the length field: a lie, small or large
            lie = rng.choice([rng.randrange(64), rng.randrange(U32 + 1), max(0, len(out) - 12 + rng.randrange(-3, 4))])
            out[8:12] = lie.to_bytes(4, "big")
        elif kind == 2 and len(out) >= 2:  # the opcode
            out[1] = rng.randrange(256)
        elif kind == 3:
            del out[at:]
        elif kind == 4:
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif kind == 5 and out:
            del out[at % len(out) : at % len(out) + rng.randrange(1, 8)]
        elif kind == 6 and out:
            out[at:at] = out[: rng.randrange(1, len(out) + 1)]
    return bytes(out)


class Vocabulary:
    """Valid requests about a few queues, ids near the ones the server hands out, and awkward numbers."""

    def __init__(self, rng: random.Random, names: list[str], token: bytes, max_message: int) -> None:
        self.rng = rng
        self.names = names
        self.token = token
        self.max_message = max_message
        self.ids: collections.deque[int] = collections.deque(maxlen=2000)  # ids seen in replies

    def name(self) -> str:
        rng = self.rng
        if rng.random() < 0.9:
            return rng.choice(self.names)
        return "".join(rng.choice("abcxyz0123é") for _ in range(rng.randrange(1, 9)))

    def id(self) -> int:
        rng = self.rng
        if self.ids and rng.random() < 0.7:
            return rng.choice(self.ids)
        return rng.choice([rng.randrange(1, 5000), rng.randrange(1 << 64), 0, (1 << 64) - 1])

    def ms(self) -> int:
        return self.rng.choice([0, 0, 0, 1, 5, 50, 200, 2000, U32])

    def payload(self) -> bytes:
        rng = self.rng
        size = rng.choice([0, 1, 16, 100, 1000, rng.randrange(4096), rng.randrange(self.max_message + 1)])
        return rng.randbytes(size)

    def request(self) -> Any:
        rng = self.rng
        kind = rng.randrange(18)
        name = self.name()
        if kind == 0:
            return Hello(rng.choice([1, 1, 0, 2, 0xFFFF]), rng.choice([self.token, self.token, b"", b"wrong"]))
        if kind == 1:
            dead = rng.choice(["", "", *self.names])
            capacity, max_deliveries = rng.choice([0, 0, 1, 10, 1000]), rng.choice([0, 0, 1, 3])
            return CreateQueue(name, capacity, max_deliveries, dead if dead != name else "")
        if kind == 2:
            return DeleteQueue(name) if rng.random() < 0.2 else Stats(name)
        if kind == 3:
            return rng.choice([Purge(name), ListQueues(), Members()])
        if kind in (4, 5, 6):
            return Enqueue(name, self.payload())
        if kind in (7, 8, 9):
            return Read(name, self.ms(), rng.choice([0, 0, 0, 10, 100]))
        if kind in (10, 11):
            return Confirm(self.id())
        if kind == 12:
            return EnqueueBatch(name, tuple(self.payload()[:512] for _ in range(rng.randrange(1, 6))))
        if kind == 13:
            return ReadBatch(name, rng.choice([1, 5, 100, 0xFFFF]), self.ms(), rng.choice([0, 0, 20]))
        if kind == 14:
            return ConfirmBatch(tuple(self.id() for _ in range(rng.randrange(1, 10))))
        if kind == 15:
            return Touch(self.id(), self.ms())
        if kind == 16:
            return Release(self.id(), self.ms()) if rng.random() < 0.7 else Cancel(rng.randrange(0, 50))
        return EnqueueDelayed(name, self.payload()[:1024], self.ms())

    def frame(self) -> bytes:
        return encode(self.rng.randrange(U32 + 1), self.request())


# --- one session, no socket: a property test ----------------------------------------------------------


SessionInput = tuple[bytes | None, list[tuple[bytes, float]]]


@st.composite
def session_input(draw: st.DrawFn) -> SessionInput:
    """A server token (or None) and a list of (bytes, seconds to let pass after them).

    Most streams open the way a client would (Hello, queues, some messages) so
    that the hostile part finds state to break; the rest start hostile at once.
    """
    rng = random.Random(draw(st.integers(0, 2**32)))
    token = draw(st.sampled_from([None, b"sesame"]))
    vocabulary = Vocabulary(rng, ["q", "r", "dl"], token or b"", 256)
    vocabulary.ids.extend(range(1, 40))
    opening = b""
    if draw(st.integers(0, 9)):
        opening = encode(1, Hello(token=token or b"")) + b"".join(
            encode(2, CreateQueue(name, 0, draw(st.sampled_from([0, 2])))) for name in ("dl", "q", "r")
        )
        opening += encode(3, EnqueueBatch("q", tuple(b"m%d" % i for i in range(draw(st.integers(1, 20))))))
    steps = [(opening, 0.0)]
    styles = st.sampled_from(["valid"] * 8 + ["mutated"] * 2 + ["random", "oversized"])
    for _ in range(draw(st.integers(1, 12))):
        style = draw(styles)
        if style == "valid":
            data = b"".join(vocabulary.frame() for _ in range(rng.randrange(1, 6)))
        elif style == "mutated":
            data = mutate(vocabulary.frame(), rng, rng.randrange(1, 4))
        elif style == "random":
            data = rng.randbytes(rng.randrange(1, 64))
        else:
            data = HEADER.pack(MAGIC, rng.randrange(256), 0, 1, rng.randrange(256 + BODY_OVERHEAD + 1, U32 + 1))
        cut = draw(st.integers(0, len(data)))
        steps.append((data[:cut], 0.0))
        steps.append((data[cut:], draw(st.sampled_from([0.0, 0.0, 0.003, 0.06, 3.0]))))
    return token, steps


SESSION_EXAMPLES = int(os.environ.get("DBQUEUE_SESSION_EXAMPLES", "200"))


@settings(max_examples=SESSION_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=session_input())
def test_a_session_takes_any_input_and_leaves_nothing_behind(case: SessionInput) -> None:
    token, steps = case
    loop = asyncio.new_event_loop()  # never run: the server only schedules its sweep on it
    now = [1000.0]
    try:
        server = Server(port=0, limits=Limits(max_message_size=256, max_queues=6, max_in_flight=8), auth_token=token)
        server._loop = loop
        server.clock = lambda: now[0]
        kept = [b"kept-%d" % i for i in range(5)]
        keep = server.broker.create_queue(b"keep")
        for data in kept:
            server.broker.enqueue(keep, data, now[0])
        transport = FakeTransport()
        session = Session(server)

        async def connect() -> None:  # from a callback of the loop, as a server's sessions are made
            session.connection_made(transport)  # type: ignore[arg-type]

        loop.run_until_complete(connect())
        for data, pause in steps:
            if transport.closed:
                break
            session.data_received(data)
            now[0] += pause
            server.broker.expire(now[0])  # what the sweep timer would do
        session.connection_lost(None)
        # Everything written is whole frames of well-formed responses.
        reader = FrameReader(1 << 20)
        for opcode, flags, _, body in reader.feed(bytes(transport.written)):
            assert flags == 0
            decode_response(opcode, body)
        assert reader.failure is None and reader.buffered == 0
        # Gone: it holds nothing, waits for nothing, and the queue it never named is untouched.
        assert not server.sessions
        for queue in server.broker.queues.values():
            assert (queue.in_flight, queue.waiting) == (0, 0), queue.stats()
        assert all(record.held is None for record in server.broker.entries().values())
        held = Holding()
        assert [keep.take(held).data for _ in kept] == kept  # type: ignore[union-attr]
    finally:
        loop.close()


# --- a live server under fire: the soak ---------------------------------------------------------------

SECONDS = float(os.environ.get("DBQUEUE_FUZZ_SECONDS", "5"))
CONCURRENCY = int(os.environ.get("DBQUEUE_FUZZ_CONNECTIONS", "50"))
SEED = int(os.environ.get("DBQUEUE_FUZZ_SEED", "0")) or random.randrange(1, 2**31)
REPORT = os.environ.get("DBQUEUE_FUZZ_REPORT")
MAX_MESSAGE = 64 * 1024
FUZZ_QUEUES = ["fz0", "fz1", "fz2", "fz3"]
KINDS = {  # what a connection does, and how often
    "valid": 3, "mutated": 4, "random": 2, "truncated": 2, "oversized": 1, "no-read": 1, "unauthenticated": 1,
}  # fmt: skip
ENDINGS = ["close", "reset", "half-close"]


class Tally(collections.Counter):  # type: ignore[type-arg]
    pass


async def _drain(reader: asyncio.StreamReader, vocabulary: Vocabulary, tally: Tally) -> None:
    """Read the replies of one connection: count them, learn their ids, and note any malformed one."""
    connection = ClientConnection()
    while True:
        try:
            data = await reader.read(1 << 16)
        except (ConnectionError, OSError):
            tally["server resets seen"] += 1
            return
        if not data:
            tally["server closes seen"] += 1
            return
        tally["reply bytes"] += len(data)
        try:
            replies = connection.receive_data(data)
        except ProtocolError as exc:
            tally["malformed replies"] += 1
            tally.setdefault("malformed examples", []).append(str(exc)[:200])  # type: ignore[arg-type]
            return
        tally["replies"] += len(replies)
        for _, reply in replies:
            if isinstance(reply, (Message, ObjectQueued)):
                vocabulary.ids.append(reply.id)
            elif isinstance(reply, Messages):
                vocabulary.ids.extend(m.id for m in reply.messages)
            elif isinstance(reply, ObjectsQueued):
                vocabulary.ids.extend(reply.ids)


def _payload_for(kind: str, vocabulary: Vocabulary, tally: Tally) -> bytes:
    rng = vocabulary.rng
    if kind == "valid":
        count = rng.randrange(1, 30)
        tally["valid frames"] += count
        return b"".join(vocabulary.frame() for _ in range(count))
    if kind in ("mutated", "unauthenticated"):
        parts = []
        for _ in range(rng.randrange(1, 20)):
            if rng.random() < 0.5:
                parts.append(mutate(vocabulary.frame(), rng, rng.randrange(1, 4)))
                tally["mutated frames"] += 1
            else:
                parts.append(vocabulary.frame())
                tally["valid frames"] += 1
        return b"".join(parts)
    if kind == "random":
        tally["random blobs"] += 1
        data = rng.randbytes(rng.randrange(1, 3000))
        return bytes([MAGIC]) + data if rng.random() < 0.4 else data
    if kind == "truncated":
        data = b"".join(vocabulary.frame() for _ in range(rng.randrange(1, 6)))
        tally["truncated streams"] += 1
        return data[: rng.randrange(len(data))]
    if kind == "oversized":
        tally["oversized frames"] += 1
        choice = rng.randrange(4)
        name = rng.choice(FUZZ_QUEUES)
        if choice == 0:  # a header announcing more than the limit: refused at the header, connection closed
            length = rng.randrange(MAX_MESSAGE + BODY_OVERHEAD + 1, U32 + 1)
            return HEADER.pack(MAGIC, rng.randrange(256), 0, 7, length) + rng.randbytes(rng.randrange(100))
        if choice == 1:  # a payload just over the limit, inside the framing allowance: refused, connection goes on
            return encode(8, Enqueue(name, rng.randbytes(MAX_MESSAGE + rng.randrange(1, 200))))
        if choice == 2:
            return encode(9, EnqueueDelayed(name, rng.randbytes(MAX_MESSAGE + 1), 10))
        return encode(10, EnqueueBatch(name, (b"x", rng.randbytes(MAX_MESSAGE + 1))))
    # no-read: pipeline reads of everything, and never read a reply
    tally["unread reads"] += 1
    return b"".join(
        encode(i, rng.choice([Read(rng.choice(FUZZ_QUEUES)), ReadBatch(rng.choice(FUZZ_QUEUES), 1000)]))
        for i in range(rng.randrange(10, 200))
    )


async def _connection(port: int, vocabulary: Vocabulary, tally: Tally) -> None:
    rng = vocabulary.rng
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (TimeoutError, OSError):
        tally["connect failures"] += 1
        await asyncio.sleep(0.05)
        return
    tally["connections"] += 1
    tally[f"connections: {kind}"] += 1
    drain = None if kind == "no-read" else asyncio.ensure_future(_drain(reader, vocabulary, tally))
    try:
        if kind != "unauthenticated":
            writer.write(encode(1, Hello(token=vocabulary.token)))
        for _ in range(rng.randrange(1, 6)):
            data = _payload_for(kind, vocabulary, tally)
            writer.write(data)
            tally["bytes sent"] += len(data)
            await asyncio.wait_for(writer.drain(), 2)
            if kind == "truncated":
                break
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.02]))
    except (TimeoutError, OSError):
        tally["sends cut short"] += 1
    ending = rng.choice(ENDINGS)
    tally[f"ended by {ending}"] += 1
    try:
        if ending == "reset":
            linger = bytes([1, 0, 0, 0, 0, 0, 0, 0])  # on, 0 s: close() sends RST
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
        elif ending == "half-close" and writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
            if drain is not None:
                await asyncio.wait([drain], timeout=0.3)
            writer.close()
        else:
            writer.close()
    except OSError:
        pass
    if drain is not None:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)


async def _janitor(address: str, token: str, deadline: float, tally: Tally) -> None:
    """Purge and delete the fuzz queues now and then, while the fuzzers use them."""
    rng = random.Random(SEED + 1)
    client = await AsyncClient.connect(address, token=token)
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            for queue in await client.list_queues():
                name = queue["name"]
                if name.startswith("bystander"):
                    continue
                try:
                    if name in FUZZ_QUEUES and rng.random() < 0.8:
                        await client.purge(name)
                        tally["janitor purges"] += 1
                    else:
                        await client.delete(name)
                        tally["janitor deletes"] += 1
                except DbQueueError:
                    pass
    finally:
        await client.close()


async def _soak(address: str, port: int, token: str, seconds: float, tally: Tally) -> None:
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        vocabulary = Vocabulary(random.Random(SEED * 1000 + n), FUZZ_QUEUES, token.encode(), MAX_MESSAGE)
        while time.monotonic() < deadline:
            await _connection(port, vocabulary, tally)

    await asyncio.gather(_janitor(address, token, deadline, tally), *(worker(n) for n in range(CONCURRENCY)))


def _wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


def test_fuzz_soak_against_a_live_server(tmp_path: Path) -> None:
    token = "fuzz-" + secrets.token_hex(8)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    flags = [
        "--auth-token-file", str(token_file), "--max-message-size", str(MAX_MESSAGE), "--max-queues", "300",
        "--default-capacity", "5000", "--max-in-flight", "2000", "--max-output-buffer", str(4 << 20),
        "--max-connections", str(CONCURRENCY * 4 + 100), "--log-level", "error",
    ]  # fmt: skip
    tally = Tally()
    rng = random.Random(SEED)
    bystander_queue = "bystander-" + secrets.token_hex(6)
    kept = [b"bystander-%03d-" % i + rng.randbytes(rng.randrange(0, 2000)) for i in range(200)]
    with ChildServer(tmp_path, *flags) as server:
        with Client.connect(server.address, token=token) as bystander:
            bystander.create(bystander_queue)
            kept_ids = [bystander.send(bystander_queue, data) for data in kept]
            rss_start = server.rss()
            started = time.monotonic()
            asyncio.run(_soak(server.address, server.port, token, SECONDS, tally))
            elapsed = time.monotonic() - started
            rss_after_soak = server.rss()
            assert server.running(), server.log_tail()
            with Client.connect(server.address, token=token) as checker:
                # Every fuzz connection is gone; then clear away what the fuzzers left.
                def others_gone() -> bool:
                    checker.connection.send_many([ListQueues()])
                    return checker.connection.receive(1)[0][1].stats["connections"] == 2  # type: ignore[union-attr]

                _wait_for(others_gone, 10, "the fuzz connections to close")
                leftovers = [q["name"] for q in checker.list_queues() if q["name"] != bystander_queue]
                for name in leftovers:
                    checker.delete(name)
                # The bystander's messages are all there, never delivered, byte for byte.
                figures = bystander.stats(bystander_queue)
                assert (figures["ready"], figures["in_flight"], figures["enqueued"]) == (len(kept), 0, len(kept))
                messages: list[Message] = []
                while batch := bystander.read_batch(bystander_queue, 1000):  # (each batch stops at 64 KiB)
                    messages.extend(batch)
                assert [(m.id, m.data, m.deliveries) for m in messages] == [(i, d, 1) for i, d in zip(kept_ids, kept)]
                assert bystander.confirm_batch(kept_ids) == [None] * len(kept)
                # And the server serves as before.
                checker.create("after")
                id_ = checker.send("after", b"still here")
                assert checker.read("after", visibility_timeout=1.0).id == id_
                checker.confirm(id_)
                checker.delete("after")
            time.sleep(0.2)
            rss_end = server.rss()
            peak = server.peak_rss()
        server.stop()
    errors = server.error_records()
    assert not errors, "\n".join(errors[:5])
    server.assert_no_unhandled_errors()
    figures = {
        "seed": SEED,
        "seconds": round(elapsed, 1),
        "concurrent connections": CONCURRENCY,
        **{key: value for key, value in sorted(tally.items()) if key != "malformed examples"},
        "queues left by the fuzzers (deleted)": len(leftovers),
        "server RSS MiB: start / right after / after cleanup / peak": [
            round(x / 2**20, 1) for x in (rss_start, rss_after_soak, rss_end, peak)
        ],
        "bystander messages intact": f"{len(kept)}/{len(kept)}",
    }
    print("\nfuzz soak:", json.dumps(figures, indent=1))
    if REPORT:
        Path(REPORT).write_text(json.dumps(figures, indent=1))
    assert tally["malformed replies"] == 0, tally.get("malformed examples")
    assert tally["connections"] >= CONCURRENCY
    # Memory: back near the start once the fuzzers' queues are gone (the allocator keeps some pages).
    assert rss_end - rss_start < 64 * 2**20, figures

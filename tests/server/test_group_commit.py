"""Group commit: with a data directory, a reply that reports a stored change waits for the commit.

An in-process session on a fake transport, inside a real event loop: the commit
runs as the loop's next callback, so what the transport holds before the loop
turns is what went out ahead of the commit. Sends and confirms are answered only
once the store holds their change. Reads change nothing in the store: a read
(alone or a pipelined run) that hands out only stored messages is answered at
once, and one that hands out a message whose send is not committed yet waits for
that commit, so a consumer never sees a message a crash could undo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from dbqueue import Server
from dbqueue.protocol import ClientConnection, Confirm, Confirmed, Enqueue, Message, ObjectQueued, Read
from dbqueue.protocol import messages as msg
from dbqueue.server.session import Session
from fake_transport import FakeTransport


def with_durable_session(tmp_path: Path, body: Callable[[Server, Session, FakeTransport], Awaitable[None]]) -> None:
    async def main() -> None:
        server = Server(port=0, data_dir=tmp_path)
        await server.start()
        session = Session(server)
        transport = FakeTransport()
        session.connection_made(transport)  # type: ignore[arg-type]
        server.broker.create_queue(b"q")
        await asyncio.sleep(0)  # the queue's creation is committed
        try:
            await body(server, session, transport)
        finally:
            await server.stop()

    asyncio.run(main())


def frames(*requests: object, first_id: int = 1) -> bytes:
    return b"".join(msg.encode(first_id + i, request) for i, request in enumerate(requests))  # type: ignore[arg-type]


def replies(transport: FakeTransport) -> list[type]:
    """The types of the replies written so far, in order; the transport is emptied."""
    got = [type(response) for _, response in ClientConnection().receive_data(bytes(transport.written))]
    transport.written.clear()
    return got


def stored_ids(server: Server) -> list[int]:
    assert server.store is not None
    return [message[0] for queue in server.store.load().queues for message in queue.messages]


def test_sends_and_confirms_wait_for_the_commit_reads_do_not(tmp_path: Path) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport) -> None:
        for sends in (frames(Enqueue("q", b"a")), frames(Enqueue("q", b"b"), Enqueue("q", b"c"), first_id=2)):
            session.data_received(sends)  # a lone frame, then a run
            assert transport.written == b""
            await asyncio.sleep(0)
            assert replies(transport) == [ObjectQueued] * sends.count(b"\x01q")  # one each, now stored
        ids = stored_ids(server)
        assert len(ids) == 3

        for reads in (frames(Read("q", 60_000), first_id=4), frames(Read("q", 60_000), Read("q", 60_000), first_id=5)):
            session.data_received(reads)  # a lone frame, then a run: answered before any commit
            assert replies(transport) == [Message] * reads.count(b"\x01q")

        session.data_received(frames(Confirm(ids[0]), Confirm(ids[1]), first_id=7))
        assert transport.written == b""
        assert stored_ids(server) == ids  # not confirmed on disk yet: so not answered yet
        await asyncio.sleep(0)
        assert replies(transport) == [Confirmed, Confirmed]
        assert stored_ids(server) == ids[2:]

    with_durable_session(tmp_path, body)


def test_a_read_of_a_message_not_committed_yet_waits_for_the_commit(tmp_path: Path) -> None:
    async def body(server: Server, session: Session, transport: FakeTransport) -> None:
        consumer = Session(server)
        consumer_transport = FakeTransport()
        consumer.connection_made(consumer_transport)  # type: ignore[arg-type]
        for count in (1, 3):  # a lone read, then a run of reads
            session.data_received(frames(*[Enqueue("q", b"m")] * count))
            consumer.data_received(frames(*[Read("q", 60_000)] * count))  # before the commit
            assert transport.written == consumer_transport.written == b""
            await asyncio.sleep(0)
            assert replies(transport) == [ObjectQueued] * count
            assert replies(consumer_transport) == [Message] * count

    with_durable_session(tmp_path, body)


def test_a_mixed_buffer_waits_for_the_commit(tmp_path: Path) -> None:
    # A read behind a send in one buffer: the buffer's answer goes out whole, after the commit.
    async def body(server: Server, session: Session, transport: FakeTransport) -> None:
        session.data_received(frames(Enqueue("q", b"a"), Read("q", 60_000)))
        assert transport.written == b""
        await asyncio.sleep(0)
        assert replies(transport) == [ObjectQueued, Message]

    with_durable_session(tmp_path, body)

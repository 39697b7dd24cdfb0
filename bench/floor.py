"""The floor: a server that speaks dbqueue's framing and does no queue work, for the fan-in benchmark.

    python bench/floor.py --port 3010

Theory of operation
-------------------
What does a Python server on this machine spend per request before it does
anything a queue does? This one is the smallest honest answer: an
`asyncio.Protocol` on the same event loop as dbqueue's server (uvloop when
installed, `dbqueue.server.new_event_loop`), with the same garbage collector
settings, that cuts frames with the server's own reader
(`protocol.codecs.RequestReader`) and answers each with a reply of the right
kind, packed by the server's own codecs: ObjectQueued for an ENQUEUE, a
Message for a READ, Confirmed for a CONFIRM, an Error for anything else.
Everything that arrives in one buffer is answered with one write, as dbqueue
does.

The Message a READ gets carries the payload of the last ENQUEUE this floor
saw (any connection's), so that a load generator's checks pass. The floor
counts the messages sent and not yet read, and nothing else: a READ when that
count is 0 gets Empty, so that consumers see the queue empty as often as they
would at a real one, and confirm no more messages than were sent. Nothing is
stored or timed; the replies' ids are a running number. What dbqueue's server spends beyond this floor on
the same load is its queue work, its checks, and whatever its own structure
costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from typing import cast

from dbqueue.protocol.codecs import (
    ID_BODY,
    RequestReader,
    error_frame,
    pack_bare_frame,
    pack_id_frame,
    pack_message_head,
)
from dbqueue.protocol.frames import BODY_OVERHEAD, DEFAULT_MAX_MESSAGE_SIZE, MAGIC, Op
from dbqueue.protocol.layouts import MESSAGE_FIELDS
from dbqueue.server import new_event_loop

_ENQUEUE, _READ, _CONFIRM = int(Op.ENQUEUE), int(Op.READ), int(Op.CONFIRM)
_OBJECT_QUEUED, _MESSAGE, _CONFIRMED, _EMPTY = int(Op.OBJECT_QUEUED), int(Op.MESSAGE), int(Op.CONFIRMED), int(Op.EMPTY)
_UNSUPPORTED = 1  # an Error code: the floor answers only the three requests above


class Floor:
    """What every connection of one floor server shares: the last payload sent, how many are unread, the next id."""

    def __init__(self) -> None:
        self.payload = b""
        self.unread = 0
        self.next_id = 1


class FloorSession(asyncio.Protocol):
    """One connection: cut frames, answer each with a canned reply of its kind, one write per buffer."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.reader = RequestReader(DEFAULT_MAX_MESSAGE_SIZE + BODY_OVERHEAD)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        floor = self.floor
        replies: list[bytes] = []
        for opcode, request_id, _, b in self.reader.feed(data):
            if opcode == _ENQUEUE:
                floor.payload = b
                floor.unread += 1
                replies.append(pack_id_frame(MAGIC, _OBJECT_QUEUED, 0, request_id, ID_BODY, floor.next_id))
                floor.next_id += 1
            elif opcode == _READ:
                if floor.unread:
                    floor.unread -= 1
                    payload = floor.payload
                    size = MESSAGE_FIELDS.size + len(payload)
                    replies.append(pack_message_head(MAGIC, _MESSAGE, 0, request_id, size, floor.next_id, 1))
                    replies.append(payload)
                    floor.next_id += 1
                else:
                    replies.append(pack_bare_frame(MAGIC, _EMPTY, 0, request_id, 0))
            elif opcode == _CONFIRM:
                replies.append(pack_bare_frame(MAGIC, _CONFIRMED, 0, request_id, 0))
            else:
                replies.append(error_frame(request_id, _UNSUPPORTED, "the floor answers ENQUEUE, READ, CONFIRM only"))
        if self.transport is not None and replies:
            self.transport.write(replies[0] if len(replies) == 1 else b"".join(replies))
        if self.reader.failure is not None and self.transport is not None:
            self.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3010)
    args = parser.parse_args(argv)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    floor = Floor()

    async def serve() -> None:
        listener = await loop.create_server(
            lambda: FloorSession(floor), args.host, args.port, backlog=4096, reuse_address=True
        )
        gc.freeze()  # as dbqueue's server does (`dbqueue.server.app.run`)
        gc.set_threshold(50_000, 20, 1000)
        stopping = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stopping.done() or stopping.set_result(None))
        await stopping
        listener.close()

    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

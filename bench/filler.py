"""Fill a queue fast, and take messages in flight and keep them there: the setup of memory.py and inflight.py.

Theory of operation
-------------------
Both speak through a `dbqueue.loadtest.Driver`, so the bytes are the ones the
load test sends: a driver with ``config.batch`` = B turns one send into a
batch of B messages (dbqueue ``ENQUEUE_BATCH``, Redis ``RPUSH`` with B
values) and one read into a batch read (dbqueue ``READ_BATCH``). `fill`
spreads the requests over a few connections, keeps ``pipeline`` of them
outstanding on each (one write per window) and checks every reply with the
driver, so a refused batch stops the run instead of shrinking the count.
`hold` takes everything in the queue with batch reads on a few connections
and leaves those connections open: until `Holders.close`, the server keeps
every message they took in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from dbqueue.loadtest import BenchFailure, Driver

__all__ = ["Holders", "fill", "hold"]


class _Link:
    """One connection: write a window of frames, then collect as many replies."""

    def __init__(self, driver: Driver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.replies = driver.new_reader()
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, driver: Driver, address: tuple[str, int]) -> _Link:
        reader, writer = await asyncio.open_connection(*address, limit=1 << 22)
        return cls(driver, reader, writer)

    async def exchange(self, frames: bytes, count: int) -> Any:
        self.writer.write(frames)
        complete = 0
        while complete < count:
            data = await self.reader.read(1 << 20)
            if not data:
                raise BenchFailure("the server closed the connection")
            complete = self.replies.feed(data)
        if complete != count:
            raise BenchFailure(f"expected {count} replies, got {complete}")
        return self.replies.take()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def fill(
    driver: Driver, address: tuple[str, int], requests: int, *, connections: int = 4, pipeline: int = 8
) -> float:
    """Send ``requests`` sends (each ``driver.config.batch`` messages) to the driver's queue.

    Returns the seconds it took.

    The caller prepares the queue. Raises `BenchFailure` on any reply that is not a success.
    """
    links = [await _Link.open(driver, address) for _ in range(connections)]
    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    started = time.perf_counter()

    async def send(link: _Link, share: int) -> None:
        window = driver.send_frames(pipeline)
        while share:
            count = min(pipeline, share)
            frames = window if count == pipeline else driver.send_frames(count)
            driver.check_sent(await link.exchange(frames, count))
            share -= count

    try:
        await asyncio.gather(*(send(link, share) for link, share in zip(links, shares)))
    finally:
        for link in links:
            await link.close()
    return time.perf_counter() - started


@dataclass
class Holders:
    """Connections that hold messages in flight; `close` gives them back (the server requeues them)."""

    links: list[_Link] = field(default_factory=list)
    messages: int = 0
    seconds: float = 0.0

    async def close(self) -> None:
        for link in self.links:
            await link.close()
        self.links = []


async def hold(
    driver: Driver,
    address: tuple[str, int],
    *,
    connections: int = 4,
    pipeline: int = 4,
    limit: int | None = None,
) -> Holders:
    """Take every message of the driver's queue in flight with batch reads (``driver.config.batch`` each,
    ``driver.config.visibility_timeout``) on ``connections`` connections, and keep them open.

    Returns `Holders`, which the caller must `close`. A connection stops once a
    window of reads comes back short (the queue was empty for its last read),
    so no other client may feed the queue meanwhile, or once another window
    could take it past ``limit`` messages (the server's in-flight cap per
    connection). Raises `BenchFailure` if every connection stopped at its
    limit with messages still queued: more connections are needed.
    """
    holders = Holders()
    wanted = pipeline * driver.config.batch
    frames = driver.read_frames(pipeline)
    started = time.perf_counter()
    full = 0  # connections that stopped at their limit

    async def take(link: _Link) -> int:
        nonlocal full
        taken = 0
        while True:
            if limit is not None and taken + wanted > limit:
                full += 1
                return taken
            got = len(driver.take_messages(await link.exchange(frames, pipeline)))
            taken += got
            if got < wanted:
                return taken

    try:
        for _ in range(connections):
            holders.links.append(await _Link.open(driver, address))
        counts = await asyncio.gather(*(take(link) for link in holders.links))
    except BaseException:
        await holders.close()
        raise
    holders.messages = sum(counts)
    holders.seconds = time.perf_counter() - started
    if full == connections:
        await holders.close()
        raise BenchFailure(
            f"{connections} connections took {holders.messages} messages, {limit} each at most, and the queue is "
            "not empty: use more connections"
        )
    return holders

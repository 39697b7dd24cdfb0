"""A move of many messages between queues, in steps, so that the server goes on serving meanwhile.

Theory of operation
-------------------
`Broker.move` moves what it is asked in one step of the server. A dead-letter
queue of a million messages moved back that way holds the event loop for
seconds (every message is re-homed and, with a store, journaled), and every
other client waits. A `Mover` takes at most `MOVE_STEP` messages a turn of
the loop and lets the other connections' requests in between. What it moved
is in its new queue at once (readable there, committed with the turn's group
commit); the rest are still in the source, in order, so that at any moment
each message is in exactly one queue and a crash loses or doubles none.

What it moves is fixed when it begins: ``count`` messages, or every message
ready in the source then. New arrivals in a live dead-letter queue cannot keep
it going. It ends early when the source has no more ready messages or the
destination is full (a route's step says so), when a queue it moves between
is deleted, or when the store stops committing or the broker is replaced (a
reload after a failed commit): `failure` then says why, and what had moved
before stays where it went.

A move of at most one step is done when `step` first returns: the callers
answer it at once, as before. Driven without a loop (a session fed by hand),
the remaining steps follow one another at once.

The routes: `Mover.between` moves from the front of one queue to the back of
another (MOVE, the console, SQS's move task with a destination); the SQS API
gives one of its own that sends each message back to the queue it came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..core import Queue
from ..errors import InvalidRequest, StoreUnavailable
from .host import Host

__all__ = ["MOVE_STEP", "Mover", "Route"]

MOVE_STEP = 2_000  # messages a turn of the loop moves: a few milliseconds of server time in memory

# A route moves up to ``limit`` messages (a step's worth) and returns how many it moved and, if it cannot
# go on (the source has no ready message left, the destination is full, a message has nowhere to go),
# why, or "" when the source simply ran out.
Route = Callable[[int], tuple[int, str | None]]


class Mover:
    """One move under way: `step` takes a step; `finish` takes the rest, one a turn of the loop."""

    def __init__(
        self, host: Host, source: Queue, route: Route, count: int | None, also: tuple[Queue, ...] = ()
    ) -> None:
        self.host = host
        self.broker = host.broker  # a reload replaces it: this move then stops (see the module's docstring)
        self.queues = (source, *also)
        self.route = route
        self.left = source.ready if count is None else count
        self.moved = 0
        self.done = self.left <= 0
        self.failure: str | None = None  # why it stopped before moving what it was asked, if it did
        self.store_failed = False  # it stopped because the store could not commit what it moved
        self.cancelled = False
        self._handle: asyncio.Handle | None = None

    @classmethod
    def between(cls, host: Host, source: Queue, destination: Queue, count: int | None) -> Mover:
        """A move from the front of ``source`` to the back of ``destination`` (`Broker.move`'s, in steps).

        Raises `InvalidRequest` when ``source`` is ``destination``, as `Broker.move` does.
        """
        if source is destination:
            raise InvalidRequest("a queue cannot be moved into itself")
        broker = host.broker

        def route(limit: int) -> tuple[int, str | None]:
            moved = broker.move(source, destination, limit, host.clock())
            if moved == limit:
                return moved, None
            return moved, "" if not source.ready else f"The queue {destination.name.decode(errors='replace')} is full."

        return cls(host, source, route, count, also=(destination,))

    def step(self) -> bool:
        """Move up to `MOVE_STEP` more messages; return whether the move is over."""
        if self.done:
            return True
        why = self._cannot_go_on()
        if why is not None:
            return self._stop(why)
        limit = min(MOVE_STEP, self.left)
        try:
            moved, why = self.route(limit)
        finally:
            self.host.schedule_expiry()  # moved messages may have woken reads, whose deadlines the timer must cover
        self.moved += moved
        self.left -= moved
        if why is not None:
            return self._stop(why)
        if self.left <= 0:
            self.done = True
        return self.done

    def finish(self, loop: asyncio.AbstractEventLoop | None, then: Callable[[Mover], None]) -> None:
        """Take the remaining steps, one a turn of ``loop`` (all at once without a loop), then call ``then``."""
        if loop is None:
            while not self.step():
                pass
            then(self)
            return

        def turn() -> None:
            self._handle = None
            if self.step():
                then(self)
            else:
                self._handle = loop.call_soon(turn)

        self._handle = loop.call_soon(turn)

    def cancel(self) -> None:
        """Stop after the steps taken so far: what moved stays moved. ``then`` is not called."""
        self.cancelled = True
        self._stop("cancelled")
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def store_error(self) -> StoreUnavailable:
        """What a move the store stopped answers (`store_failed`): how far it got, and that it may be less."""
        return StoreUnavailable(
            f"{(self.failure or '').rstrip('.')} (the move stopped after {self.moved} messages; those of its last"
            " steps may be back in the source if their commit failed)"
        )

    def _cannot_go_on(self) -> str | None:
        host = self.host
        if host.broker is not self.broker or host.store_unavailable is not None:
            self.store_failed = True
            reason = host.store_unavailable or "it failed, and the server went back to its last commit"
            return f"The store cannot commit: {reason}."
        for queue in self.queues:
            if queue.deleted:
                return f"The queue {queue.name.decode(errors='replace')} was deleted."
        return None

    def _stop(self, why: str) -> bool:
        self.done = True
        if why:
            self.failure = why
        return True

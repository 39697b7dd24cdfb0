"""What the console's buttons do: the native protocol's own requests, done on the server's broker.

Theory of operation
-------------------
`Actions` is the console's side of the server, below HTTP and beside the
native sessions and the SQS API: each action is the request a native client
would send, admitted by the same checks (`admission`: the queue exists, the
message size, the memory budget and byte capacity, a store that cannot
commit) and done by the same `Broker` call, with the same arguments, as the
session's handler for that request, on the same event loop. A purge here is
a purge there: the queue's figures, the store and every waiting read see
exactly what a native PURGE does. Queue names are checked by the protocol's
own rule (`encode_name`: 1-255 bytes of UTF-8).

For admission the console is one `admission.Connection`: it holds no message
in flight and never waits (peeking delivers nothing), so the only limits that
apply to it are those of sends and of changes to the store.

With a store, an action is answered only once what it changed is committed:
`committed` waits for the server's next group commit (`host.committed`, as
the SQS API does); if that commit failed, the action is answered as refused
(`StoreUnavailable`).

Refusals are the broker's and admission's own `RequestError`s, whose
messages are the ones a native client reads; the web layer shows them as
they are.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from ...core import NO_BYTE_LIMIT, Broker, Holding, Queue
from ...core.broker import Peeked
from ...errors import InvalidRequest, NoSuchQueue, QueueFull, RequestError, StoreUnavailable
from ...protocol.frames import NEVER_MS
from ...protocol.layouts import encode_name
from ..admission import admit_change, admit_queue, admit_send
from ..host import Host
from ..host import committed as host_committed
from ..mover import Mover

__all__ = ["Actions", "committed"]

_MS_MAX = 0xFFFFFFFF  # the wire's 32-bit milliseconds: the longest delay a native client can ask for


async def committed(server: Host) -> None:
    """Return once ``server``'s next commit is done (at once without a store); raise `StoreUnavailable` if it
    failed."""
    if not await host_committed(server):
        reason = server.store_unavailable or "the store failed"
        raise StoreUnavailable(f"the store cannot commit ({reason}): the change may not have been kept")


def _milliseconds(seconds: float, what: str) -> int:
    """Seconds from a form as the wire's milliseconds, rounded up (a client's rule for delays)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"{what} must be a number of seconds, 0 or more")
    ms = math.ceil(seconds * 1000)
    if ms > _MS_MAX:
        raise InvalidRequest(f"{what} must be at most {_MS_MAX / 1000:g} seconds")
    return ms


class Actions:
    """The console's actions on ``server``'s broker (the one it holds at each call).

    Every method raises the `RequestError` a native client would get for the same request.
    """

    def __init__(self, server: Host) -> None:
        self.server = server
        self.broker = server.broker  # the server's at each action (`_follow`): it replaces it after a failed commit
        self.held = Holding()  # never holds anything: the console reads nothing
        self.read_from: set[Queue] = set()
        self.waiting: dict[int, Any] = {}
        self.memory_budget = server.limits.memory_budget
        self.capacity_bytes = server.limits.default_capacity_bytes or NO_BYTE_LIMIT

    def _follow(self) -> Broker:
        broker = self.broker = self.server.broker
        return broker

    def queue(self, name: bytes) -> Queue:
        """The queue called ``name``; raises `NoSuchQueue`."""
        self._follow()
        return admit_queue(self, name)

    async def create(
        self,
        name: str,
        *,
        capacity: int = 0,
        max_deliveries: int = 0,
        dead_letter_queue: str = "",
        visibility_timeout: float | None = None,
    ) -> bool:
        """CREATE_QUEUE: make queue ``name`` with these options; return False if it existed (it keeps its own).

        ``capacity`` 0: the server's default; ``max_deliveries`` 0: no limit;
        ``dead_letter_queue`` "": none; ``visibility_timeout`` (seconds) None: the
        server's default, ``math.inf``: never.
        """
        raw = encode_name(name)[1:]  # the protocol's rule for names
        dead_letter = encode_name(dead_letter_queue)[1:] if dead_letter_queue else None
        for value, what in ((capacity, "capacity"), (max_deliveries, "max deliveries")):
            if not 0 <= value <= _MS_MAX:
                raise InvalidRequest(f"{what} must be 0 to {_MS_MAX}")
        if visibility_timeout is None:
            visibility_ms = 0  # the server's default
        elif visibility_timeout == math.inf:
            visibility_ms = NEVER_MS
        else:
            visibility_ms = max(1, _milliseconds(visibility_timeout, "the visibility timeout"))
            if visibility_ms >= NEVER_MS:
                raise InvalidRequest(f"the visibility timeout must be under {NEVER_MS / 1000:g} seconds (or never)")
        broker = self._follow()
        if raw in broker.queues:
            return False
        admit_change(self)
        broker.create_queue(raw, capacity, max_deliveries, dead_letter, visibility_ms)
        await committed(self.server)
        return True

    async def send(self, name: bytes, data: bytes, *, delay: float = 0.0) -> int:
        """ENQUEUE (ENQUEUE_DELAYED with a ``delay`` in seconds): add ``data`` to queue ``name``; return its id.

        Raises `QueueFull` when the queue holds its capacity.
        """
        delay_ms = _milliseconds(delay, "the delay")
        broker = self._follow()
        queue = admit_send(self, name, len(data), len(data))
        now = self.server.clock()
        try:
            id_ = broker.enqueue_delayed(queue, data, delay_ms, now) if delay_ms else broker.enqueue(queue, data, now)
        finally:
            self.server.schedule_expiry()  # a delay end, or a woken read's deadline, the timer must cover
        if id_ < 0:
            raise QueueFull(f"queue {name.decode('utf-8', 'replace')!r} is full: it holds its capacity")
        await committed(self.server)
        return id_

    async def purge(self, name: bytes) -> int:
        """PURGE: drop every ready and delayed message of queue ``name``; return how many."""
        self._follow()
        queue = admit_queue(self, name)
        admit_change(self)
        dropped = self.broker.purge(queue)
        await committed(self.server)
        return dropped

    async def delete(self, name: bytes) -> None:
        """DELETE_QUEUE: drop queue ``name`` and every message it holds."""
        self._follow()
        admit_queue(self, name)
        admit_change(self)
        self.broker.delete_queue(name)
        await committed(self.server)

    def peek(self, queue: Queue, count: int, *, in_flight: bool = False, delayed: bool = False) -> list[Peeked]:
        """PEEK: up to ``count`` messages of ``queue`` (ready, then with ``in_flight`` and ``delayed`` those too),
        delivered to no one and changing no count; their payloads bounded as a batch read's reply is."""
        return self._follow().peek(queue, count, self.server.clock(), delayed=delayed, in_flight=in_flight)

    async def move(self, source: bytes, destination: bytes, *, count: int | None = None) -> int:
        """MOVE: up to ``count`` ready messages (None: every one) from the front of queue ``source`` to the back
        of ``destination``; return how many moved (a destination with a capacity takes what fits)."""
        self._follow()
        taken = admit_queue(self, source)
        given = admit_queue(self, destination)
        admit_change(self)
        mover = Mover.between(self.server, taken, given, count)
        if not mover.step():  # more than a step's worth: the rest a step a turn of the loop (`server.mover`)
            loop = asyncio.get_running_loop()
            over: asyncio.Future[None] = loop.create_future()

            def finished(_: Mover) -> None:
                if not over.done():  # (a page that went away meanwhile cancelled it)
                    over.set_result(None)

            mover.finish(loop, finished)
            await over
        if mover.store_failed:
            raise mover.store_error()
        await committed(self.server)
        return mover.moved

    def sources_of(self, name: bytes) -> list[bytes]:
        """The queues whose dead-letter queue is ``name``, by name."""
        return sorted(queue.name for queue in self._follow().queues.values() if queue.dead_letter == name)


def refusal_text(error: RequestError) -> str:
    """What a refusal says to the operator (its message; a missing queue's by its kind)."""
    if isinstance(error, NoSuchQueue):
        return str(error) or "no such queue"
    return str(error) or type(error).__name__

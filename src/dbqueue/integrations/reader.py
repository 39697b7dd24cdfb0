"""Reading for the frameworks: a batch from one queue or from several at once, held until confirmed.

Theory of operation
-------------------
A framework's worker consumes a set of queues and may hold ``room`` more
messages (its prefetch). `Reader.read` first asks every queue at once, in one
pipelined round trip and without waiting, sharing ``room`` out among them
(the queue asked first turns round, so no queue starves another). Only if all
are empty does it wait: one waiting read per queue, all sent together on the
same connection; the first answer ends the wait and the reads still waiting
are abandoned, which the server cancels (a message that one of them brings
meanwhile is given back by the client). On one queue, once a read has come
back empty the next goes straight to the waiting read. An idle worker thus
costs the server a request or two per queue per ``wait``, never a busy poll.

Messages are read on the connection that must later confirm them (the server
settles a message only for the connection that holds it), so the reader and
the acknowledgements share one thread-safe `Client`. If that connection
closes, because the worker died, the server puts every message it held back
at the front of its queue at once, whatever their visibility timeouts.

The waiting read on several queues uses the blocking client's own parts for
the group client's waiting read (`PipelinedClient._submit`, `wait_for_any`):
this module is the only place in the integrations that touches them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..client import Client, Message
from ..client.commands import result_of, visibility_ms
from ..client.commands import wait_ms as to_wait_ms
from ..client.sync import wait_for_any
from ..errors import ConnectionLost, NoSuchQueue
from ..protocol import messages as msg

__all__ = ["Reader", "shares"]


def shares(queues: Sequence[str], room: int, turn: int) -> list[tuple[str, int]]:
    """Split ``room`` messages among ``queues`` starting at position ``turn``: each queue asked gets
    at least one, and no more than ``room`` in all. Returns (queue, count) pairs, none with 0."""
    if not queues or room <= 0:
        return []
    start = turn % len(queues)
    order = [*queues[start:], *queues[:start]]
    asked = order[: min(room, len(order))]
    base, extra = divmod(room, len(asked))
    return [(queue, base + (1 if index < extra else 0)) for index, queue in enumerate(asked)]


class Reader:
    """Reads for one worker connection. ``visibility_timeout``: seconds a read message is held
    before the server hands it to someone else (None: the queue's default; `NEVER`: until this
    connection closes)."""

    def __init__(self, client: Client, visibility_timeout: float | None) -> None:
        self.client = client
        self.visibility_timeout = visibility_timeout
        self._turn = 0
        self._idle = False  # the last read came back empty

    def read(self, queues: Sequence[str], room: int, wait: float) -> list[tuple[str, Message]]:
        """Take up to ``room`` messages from ``queues``, waiting up to ``wait`` seconds if all are
        empty. Returns (queue, message) pairs, empty if none came.

        A queue that does not exist counts as empty (a worker may start before anything was
        sent). Raises `ConnectionLost` if the connection fails.
        """
        plan = shares(queues, room, self._turn)
        self._turn += 1
        return self.read_plan(plan, wait)

    def read_plan(self, plan: Sequence[tuple[str, int]], wait: float) -> list[tuple[str, Message]]:
        """Take up to ``count`` messages from each (queue, count) of ``plan``, waiting as `read` does."""
        plan = [(queue, count) for queue, count in plan if count > 0]
        if not plan:
            return []
        found = self._read(plan, wait)
        self._idle = not found
        return found

    def _read(self, plan: Sequence[tuple[str, int]], wait: float) -> list[tuple[str, Message]]:
        # Several queues: first every queue at once without waiting, so that a waiting read on them rarely
        # ends with one queue's messages while another's are on their way (given back, a delivery spent).
        # One queue, idle (the last read came back empty): straight to the waiting read, which answers at
        # once anyway when a message is ready.
        if not (self._idle and wait > 0 and len(plan) == 1):
            found = self._try_each(plan)
            if found or wait <= 0:
                return found
        if len(plan) == 1:
            queue, count = plan[0]
            try:
                batch = self.client.read_batch(queue, count, visibility_timeout=self.visibility_timeout, wait=wait)
            except NoSuchQueue:
                time.sleep(wait)  # nothing sent there yet: look again after the wait, as a waiting read would
                return []
            return [(queue, message) for message in batch]
        return self._wait_any(plan, wait)

    def _try_each(self, plan: Sequence[tuple[str, int]]) -> list[tuple[str, Message]]:
        pipeline = self.client.pipeline()
        for queue, count in plan:
            pipeline.read_batch(queue, count, visibility_timeout=self.visibility_timeout)
        found: list[tuple[str, Message]] = []
        for (queue, _), answer in zip(plan, pipeline.execute(), strict=True):
            if isinstance(answer, ConnectionLost):
                raise answer
            if isinstance(answer, list):
                found.extend((queue, message) for message in answer)
        return found

    def _wait_any(self, plan: Sequence[tuple[str, int]], wait: float) -> list[tuple[str, Message]]:
        connection = self.client.connection
        visibility = visibility_ms(self.visibility_timeout)
        waited = to_wait_ms(wait)
        calls = connection._submit([msg.ReadBatch(queue, count, visibility, waited) for queue, count in plan])
        timeout = connection.timeout if connection.timeout is not None else 60.0
        deadline = time.monotonic() + wait + timeout
        try:
            answered = wait_for_any([(connection, call) for call in calls], deadline)
        finally:
            # A read still waiting is abandoned: the server ends it, and a late message is given back.
            done = [connection._forsake(call) for call in calls]
        found: list[tuple[str, Message]] = []
        missing = False
        for (queue, _), call, finished in zip(plan, calls, done, strict=True):
            if not finished:
                continue
            if call.error is not None:
                raise call.error
            try:
                answer = result_of(call.response, msg.Messages)
            except NoSuchQueue:
                missing = True
                continue
            found.extend((queue, message) for message in answer.messages)
        if not answered and not found:
            raise ConnectionLost("no answer to a waiting read in time")
        if not found and missing:
            time.sleep(wait)  # a queue nobody created yet answered at once: do not spin on it
        return found

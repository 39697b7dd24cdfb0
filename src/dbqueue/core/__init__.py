"""The queue logic: queues, messages in flight, deadlines, waiting reads. No I/O, no asyncio, no store:
changes go to a `Journal`, time comes in as ``now``.

Modules, lowest first: `journal` (what changes are written to), `segments` (runs and slabs: how a queue
keeps its ready messages), `queue` (one queue, the records and blocks it hands out, the `Holding` that
keeps them in flight, the reads that wait on it), `deadlines` (in-flight deadlines, in lanes), `broker`
(every queue and record of a server, and the requests that move them).
"""

from .broker import DEFAULT_VISIBILITY_MS, Broker, Outcome, Peeked
from .journal import Journal, Origin, Snapshot, StoredMessage, StoredQueue, now_ms
from .queue import ID_BLOCK, NO_BYTE_LIMIT, Block, Entry, Holding, Queue, Record, Waiter, columns, read_order

__all__ = [
    "DEFAULT_VISIBILITY_MS",
    "Origin",
    "Peeked",
    "ID_BLOCK",
    "NO_BYTE_LIMIT",
    "Block",
    "Broker",
    "Entry",
    "Holding",
    "Journal",
    "Outcome",
    "Queue",
    "Record",
    "Snapshot",
    "StoredMessage",
    "StoredQueue",
    "Waiter",
    "columns",
    "now_ms",
    "read_order",
]

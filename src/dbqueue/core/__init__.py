"""The queue logic: queues, messages in flight, deadlines, waiting reads. No I/O, no asyncio, no store:
changes go to a `Journal`, time comes in as ``now``."""

from .journal import Journal, Snapshot, StoredMessage, StoredQueue, now_ms
from .queues import (
    ID_BLOCK,
    NO_BYTE_LIMIT,
    Block,
    Broker,
    Entry,
    Holding,
    Outcome,
    Queue,
    Record,
    Waiter,
    columns,
)

__all__ = [
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
]

"""What the queue logic writes its changes to, and what a store gives back at a start.

The core never imports a store: it talks to any object with the `Journal` methods
below (the SQLite store implements them today). A journal only *buffers* each change;
the server commits the buffer once per loop iteration, before it sends the replies
that report those changes, so "queued" means "stored".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# A stored message as `Journal.load` returns it: (id, data, deliveries, due_ms). A plain
# tuple, straight from the store: a snapshot may hold millions of them.
StoredMessage = tuple[int, bytes, int, int]


@dataclass(frozen=True, slots=True)
class StoredQueue:
    """One queue as stored; ``messages`` in the order they were added."""

    name: bytes
    capacity: int  # 0: unbounded
    max_deliveries: int  # 0: no limit
    dead_letter: bytes | None
    messages: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a store found at a start: queues in creation order, and the first id that is free."""

    queues: list[StoredQueue]
    next_id: int


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, the unit of stored due times."""
    return time.time_ns() // 1_000_000


class Journal(Protocol):
    """The changes the queue logic reports; each call buffers, `commit` (the server's) makes them durable."""

    def create_queue(self, name: bytes, capacity: int, max_deliveries: int, dead_letter: bytes | None) -> None: ...

    def delete_queue(self, name: bytes) -> None: ...

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None: ...

    def add(self, queue: bytes, id_: int, data: bytes, due_ms: int = 0, deliveries: int = 0) -> None: ...

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes]) -> None: ...

    def add_columns(self, queue: bytes, first_id: int, sizes: bytes, data: bytes) -> None: ...

    def remove(self, id_: int) -> None: ...

    def remove_many(self, ids: Sequence[int]) -> None: ...

    def set_deliveries(self, id_: int, deliveries: int) -> None: ...

    def set_due(self, id_: int, due_ms: int) -> None: ...

    def reserve_ids(self, upto: int) -> None: ...

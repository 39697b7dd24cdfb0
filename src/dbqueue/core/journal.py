"""What the queue logic writes its changes to, and what a store gives back at a start.

The core never imports a store: it talks to any object with the `Journal` methods
below (the SQLite store implements them today). A journal only *buffers* each change;
the server commits the buffer once per loop iteration, before it sends the replies
that report those changes, so "queued" means "stored".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class Origin(NamedTuple):
    """Where a dead letter came from: its source ``queue`` (raw name) and its ``id`` there, its first
    enqueue time there (``enqueued_ms``, Unix ms) and how many times it had been delivered there."""

    queue: bytes
    id: int
    enqueued_ms: int
    deliveries: int


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
    visibility_timeout_ms: int = 0  # as asked at create: 0 the server's default, 0xFFFFFFFF never
    # Each message's first enqueue time (Unix ms), in the order of ``messages``; empty if the store
    # does not know them (they are then taken as the time of the restore).
    enqueued_ms: list[int] = field(default_factory=list)
    origins: dict[int, Origin] = field(default_factory=dict)  # the dead letters' origins, by id
    # What a layer above the broker keeps with the queue (`Broker.annotations`): opaque bytes, b"" for none.
    annotations: bytes = b""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a store found at a start: queues in creation order, and the first id that is free."""

    queues: list[StoredQueue]
    next_id: int


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, the unit of stored due times."""
    return time.time_ns() // 1_000_000


class Journal(Protocol):
    """The changes the queue logic reports; each call buffers, `commit` (the server's) makes them durable.

    ``enqueued_ms`` is a message's first enqueue time in Unix ms; 0 lets the journal stamp it (the
    time of the batch it is committed with). A message that moves to another queue (`Broker.move`)
    is a `remove` of its id followed, in the same batch, by an `add` of the same id to its new queue
    with everything it carries: the journal applies removals before additions. A message added
    with an ``origin`` is a dead letter, which keeps it across restarts. A queue's settings
    changed while it lives (`Broker.alter_queue`, `Broker.annotate`) are an `alter_queue` with all
    of them, in call order with the queue's creation, deletion and purges.
    """

    def create_queue(
        self, name: bytes, capacity: int, max_deliveries: int, dead_letter: bytes | None, visibility_timeout_ms: int = 0
    ) -> None: ...

    def alter_queue(
        self,
        name: bytes,
        max_deliveries: int,
        dead_letter: bytes | None,
        visibility_timeout_ms: int,
        annotations: bytes,
    ) -> None:
        """The settings of queue ``name`` are these from now on (its capacity stays as created), and so is
        what a layer above the broker keeps with it (``annotations``, opaque, b"" for none)."""

    def delete_queue(self, name: bytes) -> None: ...

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> None: ...

    def add(
        self,
        queue: bytes,
        id_: int,
        data: bytes,
        due_ms: int = 0,
        deliveries: int = 0,
        enqueued_ms: int = 0,
        origin: Origin | None = None,
    ) -> None: ...

    def add_many(self, queue: bytes, ids: Sequence[int], items: Sequence[bytes], enqueued_ms: int = 0) -> None: ...

    def add_columns(self, queue: bytes, first_id: int, sizes: bytes, data: bytes, enqueued_ms: int = 0) -> None: ...

    def remove(self, id_: int) -> None: ...

    def remove_many(self, ids: Sequence[int]) -> None: ...

    def set_deliveries(self, id_: int, deliveries: int) -> None: ...

    def set_due(self, id_: int, due_ms: int) -> None: ...

    def reserve_ids(self, upto: int) -> None: ...

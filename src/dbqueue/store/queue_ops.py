"""The queue operations a store buffers: creations, changes of settings, deletions and purges, in call order.

Theory of operation
-------------------
Every store (`store.sqlite`, `store.postgres`) refers to a queue by a small
integer, its *qid*, given at creation in creation order, so that a message
row does not repeat its queue's name. `QueueOps` keeps the name -> qid map of
one store and the queue operations of the `core.journal.Journal` buffered
since the last commit, as typed tuples (`Create`, `Alter`, `Delete`, `Purge`)
in the order they were called. A store drains `QueueOps.ops` in its own write,
before its message changes (see `store.sqlite` for why that order is right),
and calls `QueueOps.clear` once the write is committed; a failed write keeps
them, so the next one retries them with whatever came since.

The qid map changes when an operation is buffered, not when it is written: a
queue created and then named by a message in the same batch must have its qid
at once. A store that throws its buffer away (`discard`) reads its map back
from what it last committed, with a fresh `QueueOps`.

An `Alter` carries every setting a queue may change while it lives and the
annotations of the layer above the broker (`core.broker.Broker.annotate`):
a store writes it as it is, and a later one in the same batch supersedes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["Alter", "Create", "Delete", "Purge", "QueueOp", "QueueOps"]


class Create(NamedTuple):
    """A new queue, with its options as created (``visibility_timeout_ms`` in ms as asked, 0 the server's default)."""

    qid: int
    name: bytes
    capacity: int
    max_deliveries: int
    dead_letter: bytes | None
    visibility_timeout_ms: int


class Alter(NamedTuple):
    """A live queue's settings from now on (all of them), and the annotations kept with it (b"": none)."""

    qid: int
    max_deliveries: int
    dead_letter: bytes | None
    visibility_timeout_ms: int
    annotations: bytes


class Delete(NamedTuple):
    """A queue gone, with every message it held."""

    qid: int


class Purge(NamedTuple):
    """Every message of a queue gone but those in ``kept`` (in flight when it was purged); the queue stays."""

    qid: int
    kept: frozenset[int]


QueueOp = Create | Alter | Delete | Purge


class QueueOps:
    """The name -> qid map of one store's queues, and the queue operations buffered since its last commit.

    ``qids`` is the map as last committed (every queue the store holds); ``next_qid`` the qid the next
    creation gets (creation order: above every qid ever stored, in case of a stored map with gaps).
    """

    __slots__ = ("next_qid", "ops", "qids")

    def __init__(self, qids: dict[bytes, int]) -> None:
        self.qids = qids
        self.next_qid = max(qids.values(), default=0) + 1
        self.ops: list[QueueOp] = []

    def create(
        self, name: bytes, capacity: int, max_deliveries: int, dead_letter: bytes | None, visibility_timeout_ms: int
    ) -> int:
        """Buffer the creation of queue ``name``; return its qid. Raises `ValueError` if it is already stored."""
        if name in self.qids:
            raise ValueError(f"queue {name!r} is already stored")
        qid = self.qids[name] = self.next_qid
        self.next_qid = qid + 1
        self.ops.append(Create(qid, name, capacity, max_deliveries, dead_letter, visibility_timeout_ms))
        return qid

    def alter(
        self,
        name: bytes,
        max_deliveries: int,
        dead_letter: bytes | None,
        visibility_timeout_ms: int,
        annotations: bytes,
    ) -> int:
        """Buffer new settings and annotations of queue ``name``; return its qid. Raises `KeyError` for an unknown
        queue."""
        qid = self.qids[name]
        self.ops.append(Alter(qid, max_deliveries, dead_letter, visibility_timeout_ms, annotations))
        return qid

    def delete(self, name: bytes) -> int:
        """Buffer the deletion of queue ``name``; return its qid. Raises `KeyError` for an unknown queue."""
        qid = self.qids.pop(name)
        self.ops.append(Delete(qid))
        return qid

    def purge(self, name: bytes, keep: Iterable[int] = ()) -> Purge:
        """Buffer the purge of queue ``name`` but the ids in ``keep``; return it. Raises `KeyError` for an
        unknown queue."""
        op = Purge(self.qids[name], frozenset(keep))
        self.ops.append(op)
        return op

    def clear(self) -> None:
        """Forget the buffered operations: they are committed (the map already says what they did)."""
        self.ops = []

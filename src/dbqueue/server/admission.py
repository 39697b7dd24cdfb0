"""Admission: one check per request kind, called by every path that answers a request of that kind.

A request is *admitted* when the server may act on it at all. Each check
returns what acting on it needs (the queue) or raises the `RequestError` the
client is to get. The general path (`Session.handle` and its handlers) turns
that error into an Error reply; a fast path (`fastpath`) declines instead and
leaves the request to the general path, which then refuses it. Either way the
limit is compared in one place, with one comparison, so no two paths can
disagree on it.

* **send** (`admit_send`: ENQUEUE, alone or in a run, ENQUEUE_BATCH,
  ENQUEUE_DELAYED): the queue exists, no message in the request is larger
  than ``max_message_size``, the store can commit (``store_unavailable``:
  `StoreUnavailable`), and the request's payload bytes fit: within the
  server's ``memory_budget`` over every queue (`OverMemoryBudget`: refused
  when ``queued + request > budget``) and within the queue's byte capacity
  (`QueueFull`, answered with a Full frame like a queue full of messages:
  refused when ``queue's bytes + request > capacity``). Queued bytes are
  every payload the queues hold, ready, in flight or delayed, counted by the
  queue logic as they come and go (`Queue.payload_bytes`), so reads and
  confirms, never refused for bytes, drain them. The check is one comparison,
  the queue's bytes against the grant the broker gave it; past its grant,
  `Broker.make_room` decides against both limits.
* **read** (`admit_read`: READ, alone or in a run, READ_BATCH): the queue
  exists, and taking ``count`` more messages keeps the connection within
  ``max_in_flight``: refused when ``held + count > max_in_flight``. A read of
  an existing queue makes the connection one of its consumers, admitted or
  not (the queue's stats count it from the first read).
* **a wait** (`admit_wait`: a READ or READ_BATCH that found nothing and would
  wait): one more waiting read keeps the connection within
  ``max_waiting_reads``: refused when ``waiting + 1 > max_waiting_reads``.
* **a queue itself** (`admit_queue`: PURGE, STATS; `admit_change` for CREATE,
  DELETE and PURGE, which change the store): the queue exists; the store can
  commit.
* Confirms, touches, releases and cancels name an id, not a queue: an id that
  this connection does not hold in flight is an outcome of the request
  (Requeued or NoSuchMessage), not a refusal, so there is nothing to admit.
  They never change the store in a way a full disk forbids: they free room.
* **a dead letter** (`admit_dead_letter`: DEAD_LETTER) names an id too, but
  stores a new message (the dead letter, with its origin): the store can
  commit. Whether the message's queue has a dead-letter queue with room is the
  broker's to say (`Broker.dead_letter`), since only it finds the message's
  queue; it refuses before changing anything, as admission does.

What a fast path checks besides (a full queue, waiting reads, the output
limit) are not refusals: they are the cases it leaves to the general path
because there the replies could differ from a batch's.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core import Broker, Holding, Queue
from ..errors import (
    InvalidQueueName,
    LimitExceeded,
    MessageTooLarge,
    NoSuchQueue,
    OverMemoryBudget,
    QueueFull,
    RequestError,
    StoreUnavailable,
)
from .host import Host

__all__ = [
    "Connection", "admit_change", "admit_dead_letter", "admit_queue", "admit_send", "admit_read", "admit_wait",
    "no_such_queue", "too_large", "too_many_in_flight",
]  # fmt: skip


class Connection(Protocol):
    """What admission reads and updates of the connection a request came on (a `Session`)."""

    server: Host
    broker: Broker
    held: Holding  # the messages it holds in flight
    read_from: set[Queue]  # the queues it counts as a consumer of
    waiting: dict[int, Any]  # its waiting reads, by request id
    memory_budget: int  # `Limits.memory_budget`, copied
    capacity_bytes: int  # `Limits.default_capacity_bytes`, copied (off: a number no sum reaches)


def admit_queue(connection: Connection, name: bytes) -> Queue:
    """Admit a request about queue ``name`` itself (PURGE, STATS); return the queue.

    Raises `NoSuchQueue` (`InvalidQueueName` for a name that is not UTF-8).
    """
    queue = connection.broker.queues.get(name)
    if queue is None:
        raise no_such_queue(name)
    return queue


def admit_change(connection: Connection) -> None:
    """Admit a request that changes the store (CREATE, DELETE, PURGE; sends check it in `admit_send`).

    Raises `StoreUnavailable` while the store cannot commit.
    """
    reason = connection.server.store_unavailable
    if reason is not None:
        raise store_unavailable(reason)


def admit_dead_letter(connection: Connection) -> None:
    """Admit a DEAD_LETTER: a change of the store (a dead letter added), like CREATE or MOVE.

    Raises `StoreUnavailable` while the store cannot commit (the message stays in flight).
    """
    admit_change(connection)


def admit_send(connection: Connection, name: bytes, largest: int, total: int) -> Queue:
    """Admit a send of messages up to ``largest`` bytes each, ``total`` in all, to queue ``name``;
    return the queue.

    Raises `NoSuchQueue` (`InvalidQueueName` for a name that is not UTF-8), `MessageTooLarge`,
    `StoreUnavailable`, `OverMemoryBudget` or `QueueFull` (no room for ``total`` more bytes).
    """
    broker = connection.broker
    queue = broker.queues.get(name)
    if queue is None:
        raise no_such_queue(name)
    server = connection.server
    limit = server.max_message_size
    if largest > limit:
        raise too_large(largest, limit)
    reason = server.store_unavailable
    if reason is not None:
        raise store_unavailable(reason)
    if queue.payload_bytes + total > queue.grant:  # past what its grant covers: the broker decides
        refused = broker.make_room(queue, total, connection.memory_budget, connection.capacity_bytes)
        if refused is not None:
            if refused == "budget":
                raise over_budget(connection.memory_budget)
            raise full_of_bytes(name, connection.capacity_bytes)
    return queue


def admit_read(connection: Connection, name: bytes, count: int) -> Queue:
    """Admit a read of ``count`` more messages from queue ``name``; return the queue.

    Raises `NoSuchQueue` (`InvalidQueueName` for a name that is not UTF-8) or `LimitExceeded`.
    """
    queue = connection.broker.queues.get(name)
    if queue is None:
        raise no_such_queue(name)
    read_from = connection.read_from
    if queue not in read_from:
        read_from.add(queue)
        queue.consumers += 1
    held = connection.held
    limit = connection.server.max_in_flight
    if len(held) + held.extra + count > limit:  # `Holding.count`, inlined
        raise too_many_in_flight(limit)
    return queue


def admit_wait(connection: Connection, request_id: int) -> None:
    """Admit a read that would wait: one more waiting read (a reused request id replaces its
    older read, so it adds none) keeps the connection within ``max_waiting_reads``.

    Raises `LimitExceeded`.
    """
    waiting = connection.waiting
    limit = connection.server.limits.max_waiting_reads
    if len(waiting) >= limit and request_id not in waiting:
        raise LimitExceeded(f"this connection has its limit of {limit} waiting reads: wait for some to end first")


def no_such_queue(name: bytes) -> RequestError:
    """The refusal of a request naming a queue that does not exist."""
    # Hot paths look names up as raw bytes; only a miss pays for the UTF-8 check.
    try:
        return NoSuchQueue(f"no queue named {name.decode('utf-8')!r}")
    except UnicodeDecodeError:
        return InvalidQueueName("queue name is not valid UTF-8")


def too_large(size: int, limit: int) -> MessageTooLarge:
    """The refusal of a message over the server's size limit."""
    return MessageTooLarge(f"message of {size} bytes exceeds the limit of {limit} bytes")


def too_many_in_flight(limit: int) -> LimitExceeded:
    """The refusal of a read by a connection that holds its limit of messages in flight."""
    return LimitExceeded(f"this connection holds its limit of {limit} messages in flight: confirm some first")


def over_budget(budget: int) -> OverMemoryBudget:
    """The refusal of a send that would take the queued payloads past the server's memory budget."""
    return OverMemoryBudget(
        f"the server's queues hold their memory budget of {budget} bytes of messages: "
        "retry once consumers have drained some"
    )


def store_unavailable(reason: str) -> StoreUnavailable:
    """The refusal of a change the store cannot commit now."""
    return StoreUnavailable(f"the store cannot commit ({reason}): nothing was changed")


def full_of_bytes(name: bytes, capacity: int) -> QueueFull:
    """The refusal of a send to a queue whose payloads would pass its byte capacity."""
    return QueueFull(f"queue {name.decode('utf-8', 'replace')!r} holds its limit of {capacity} bytes of messages")

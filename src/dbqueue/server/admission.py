"""Admission: one check per request kind, called by every path that answers a request of that kind.

A request is *admitted* when the server may act on it at all. Each check
returns what acting on it needs (the queue) or raises the `RequestError` the
client is to get. The general path (`Session.handle` and its handlers) turns
that error into an Error reply; a fast path (`fastpath`) declines instead and
leaves the request to the general path, which then refuses it. Either way the
limit is compared in one place, with one comparison, so no two paths can
disagree on it.

* **send** (`admit_send`: ENQUEUE, alone or in a run, ENQUEUE_BATCH,
  ENQUEUE_DELAYED): the queue exists, and no message in the request is larger
  than ``max_message_size``.
* **read** (`admit_read`: READ, alone or in a run, READ_BATCH): the queue
  exists, and taking ``count`` more messages keeps the connection within
  ``max_in_flight``: refused when ``held + count > max_in_flight``. A read of
  an existing queue makes the connection one of its consumers, admitted or
  not (the queue's stats count it from the first read).
* **a queue itself** (`admit_queue`: PURGE, STATS): the queue exists.
* Confirms, touches, releases and cancels name an id, not a queue: an id that
  is not in flight is an outcome of the request, not a refusal, so there is
  nothing to admit.

What a fast path checks besides (a full queue, waiting reads, the output
limit) are not refusals: they are the cases it leaves to the general path
because there the replies could differ from a batch's.
"""

from __future__ import annotations

from typing import Protocol

from ..core import Broker, Holding, Queue
from ..errors import InvalidQueueName, LimitExceeded, MessageTooLarge, NoSuchQueue, RequestError
from .host import Host

__all__ = ["Connection", "admit_queue", "admit_send", "admit_read", "no_such_queue", "too_large", "too_many_in_flight"]


class Connection(Protocol):
    """What admission reads and updates of the connection a request came on (a `Session`)."""

    server: Host
    broker: Broker
    held: Holding  # the messages it holds in flight
    read_from: set[Queue]  # the queues it counts as a consumer of


def admit_queue(connection: Connection, name: bytes) -> Queue:
    """Admit a request about queue ``name`` itself (PURGE, STATS); return the queue.

    Raises `NoSuchQueue` (`InvalidQueueName` for a name that is not UTF-8).
    """
    queue = connection.broker.queues.get(name)
    if queue is None:
        raise no_such_queue(name)
    return queue


def admit_send(connection: Connection, name: bytes, largest: int) -> Queue:
    """Admit a send of messages up to ``largest`` bytes to queue ``name``; return the queue.

    Raises `NoSuchQueue` (`InvalidQueueName` for a name that is not UTF-8) or `MessageTooLarge`.
    """
    queue = connection.broker.queues.get(name)
    if queue is None:
        raise no_such_queue(name)
    limit = connection.server.max_message_size
    if largest > limit:
        raise too_large(largest, limit)
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

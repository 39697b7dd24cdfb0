"""A Dramatiq broker on dbqueue: ``dramatiq.set_broker(DbQueueBroker("dbqueue://127.0.0.1:3003"))``.

Theory of operation
-------------------
Each Dramatiq queue ``q`` is a dbqueue queue of the same name, created with a
dead-letter queue ``q.XQ`` (Dramatiq's name for it) and ``max_deliveries``
(by default one more than the most retries an actor of ``q`` may make: its
``max_retries``, else the `Retries` middleware's). A
message is Dramatiq's own encoding as the message's bytes. Every process has
one thread-safe `Client` (made on first use, and again after a fork or a lost
connection), shared by the senders, every consumer and the worker threads
that acknowledge.

* **In flight until done.** A consumer reads with the broker's
  ``visibility_timeout`` (`NEVER` by default, as Dramatiq's Redis broker never
  times a message out): `Consumer.ack` confirms it. A worker that dies closes
  its connection, and the server puts back at once every message it held
  (those being processed and those prefetched); a live worker keeps its
  messages for as long as it runs them.
* **Retries are the server's deliveries.** On each delivery the message's
  ``retries`` option is set from the server's count (``deliveries - 1``), so
  the `Retries` middleware counts every delivery, a crashed worker's too. When
  it asks for a retry (it enqueues the message it is processing again, with a
  backoff), the broker does not send a copy: it releases the message it holds
  with that delay, and the acknowledgement that follows is skipped. When a
  message has been delivered ``max_deliveries`` times, that release (or the
  reject of its last failure) makes the server move it to ``q.XQ``, in one
  step: never in both queues, never in neither.
* **Delays are the server's.** ``send_with_options(delay=...)`` sends the
  message with a dbqueue delay: there are no delay queues, and no worker holds
  a message before it is due.
* **Rejects** (`Consumer.nack`): the broker asks the server to dead-letter the
  message it holds (`Client.dead_letter`), whatever its delivery count: one
  whose deliveries are spent, and one that fails for good earlier (``throws``,
  ``retry_when``, an actor's ``max_retries`` below the queue's budget, a
  message that does not decode). The server moves it to ``q.XQ`` in one step,
  with its origin (``q``, its id there, its first enqueue time and delivery
  count): never in both queues, never in neither. A queue created elsewhere
  without a dead-letter queue (or whose ``.XQ`` was deleted, or is full)
  cannot take it: the message is then confirmed and the drop logged, as the
  server drops a spent message it cannot dead-letter.
* `DbQueueBroker.join` waits until a queue has nothing ready, delayed or in
  flight, as Dramatiq's tests expect.

Prefetch: a consumer holds at most ``prefetch`` messages (read and not yet
acknowledged); it reads with a waiting read of up to the worker's timeout, so
an idle worker sends one request per queue per second.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from dramatiq import errors as dramatiq_errors
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware, Retries

from ..client import Client
from ..errors import ConnectionLost, NoSuchMessage, NoSuchQueue, RequestError, Requeued
from .address import parse_url
from .reader import Reader

__all__ = ["DbQueueBroker"]

NEVER = math.inf

# Dramatiq's error constructors and logger factory are untyped: called through Any.
ConnectionClosed: Any = dramatiq_errors.ConnectionClosed
QueueJoinTimeout: Any = dramatiq_errors.QueueJoinTimeout
log = logging.getLogger(__name__)


class _Delivery(MessageProxy):
    """A message as a consumer hands it out: Dramatiq's proxy, plus what the server knows of it."""

    def __init__(self, message: Message[Any], id_: int, deliveries: int) -> None:
        super().__init__(message)
        self.dbqueue_id = id_
        self.deliveries = deliveries
        self.retry_delay: float | None = None  # seconds, once the Retries middleware asked for one


class DbQueueBroker(Broker):
    """Dramatiq's broker on a dbqueue server at ``url`` (``dbqueue://[:TOKEN@]HOST[:PORT]``).

    ``max_deliveries``: deliveries before the server dead-letters a message
    (None: per queue, one more than the most retries its actors may make);
    ``visibility_timeout``: seconds a read message is held (`NEVER`: until the
    worker's connection closes); ``token`` and ``tls`` as for `Client.connect`.
    """

    def __init__(
        self,
        url: str = "dbqueue://127.0.0.1:3003",
        *,
        middleware: list[Middleware] | None = None,
        max_deliveries: int | None = None,
        visibility_timeout: float | None = NEVER,
        token: str | None = None,
        tls: Any = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.address = parse_url(url, {"token": token, "tls": tls})
        self.visibility_timeout = visibility_timeout
        self._max_deliveries = max_deliveries
        self.queues: set[str] = set()
        self._created: set[str] = set()
        self._budgets: dict[str, int] = {}  # queue -> its max_deliveries on the server (0: none)
        self._held: dict[int, _Delivery] = {}  # messages this process's consumers handed out, by dbqueue id
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._pid = 0

    # --- the connection ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """This process's client: connected on first use, and again after a fork or a failure.

        Raises `dramatiq.errors.ConnectionClosed` if the server cannot be reached.
        """
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                try:
                    self._client = self.address.connect()
                except ConnectionLost as exc:
                    raise ConnectionClosed(exc) from exc
                self._pid = os.getpid()
                self._created.clear()
            return self._client

    def _lost(self, exc: ConnectionLost) -> Exception:
        """Forget a failed connection (the next use reconnects) and return Dramatiq's error for it."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
        closed: Exception = ConnectionClosed(exc)
        return closed

    def close(self) -> None:
        """Close this process's connection; what it holds goes back to its queues. Raises nothing."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    def budget(self, queue_name: str) -> int:
        """Deliveries after which the server moves a message of ``queue_name`` to its ``.XQ`` (0: never):
        the broker's ``max_deliveries`` if given, else one more than the most retries an actor of that
        queue may make (its ``max_retries``, else the Retries middleware's)."""
        if self._max_deliveries is not None:
            return self._max_deliveries
        default: int | None = 20
        for middleware in self.middleware:
            if isinstance(middleware, Retries):
                default = middleware.max_retries
        actors = [actor for actor in self.actors.values() if actor.queue_name == queue_name]
        budgets: list[int | None] = [actor.options.get("max_retries", default) for actor in actors] or [default]
        limited = [int(budget) for budget in budgets if budget is not None]
        if len(limited) < len(budgets):
            return 0  # an actor retries for ever: the server never dead-letters
        return max(limited) + 1

    def max_deliveries(self, queue_name: str) -> int:
        """The budget of ``queue_name`` as the server holds it (a queue made earlier keeps its own)."""
        self._ensure(queue_name)
        return self._budgets.get(queue_name, 0)

    # --- queues --------------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare ``queue_name``. Nothing is sent yet (actors are declared at import, perhaps before the
        server is up): the queue and its ``.XQ`` are created on the server by the first send or consumer."""
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)

    def _ensure(self, queue_name: str) -> None:
        client = self.client
        if queue_name in self._created:
            return
        try:
            client.create(xq_name(queue_name))
            client.create(queue_name, max_deliveries=self.budget(queue_name), dead_letter_queue=xq_name(queue_name))
            self._budgets[queue_name] = int(client.stats(queue_name)["max_deliveries"])
        except ConnectionLost as exc:
            raise self._lost(exc) from exc
        self._created.add(queue_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        return set()  # delays are the server's: there are no delay queues

    def flush(self, queue_name: str) -> None:
        """Drop the ready and delayed messages of ``queue_name`` and its ``.XQ``."""
        for name in (queue_name, xq_name(queue_name)):
            try:
                self.client.purge(name)
            except NoSuchQueue:
                pass
            except ConnectionLost as exc:
                raise self._lost(exc) from exc

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(
        self, queue_name: str, min_successes: int = 1, idle_time: int = 100, *, timeout: int | None = None
    ) -> None:
        """Wait until ``queue_name`` holds nothing ready, delayed or in flight, ``min_successes`` looks
        in a row ``idle_time`` ms apart. Raises `QueueJoinTimeout` after ``timeout`` ms."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        successes = 0
        while successes < min_successes:
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            try:
                stats = self.client.stats(queue_name)
            except NoSuchQueue:
                stats = {"ready": 0, "delayed": 0, "in_flight": 0}
            except ConnectionLost as exc:
                raise self._lost(exc) from exc
            idle = stats["ready"] == stats["delayed"] == stats["in_flight"] == 0
            successes = successes + 1 if idle else 0
            if successes < min_successes:
                time.sleep(idle_time / 1000)

    # --- messages ------------------------------------------------------------------------

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Send ``message``, readable after ``delay`` ms. A retry of a message this process holds
        (the Retries middleware enqueues the message it is processing) is that message released
        with the delay when it is acknowledged, not a copy. Raises `ConnectionClosed`."""
        held: object = self._held.get(getattr(message, "dbqueue_id", -1))
        if held is not None and held is message:
            assert isinstance(held, _Delivery)
            held.retry_delay = (delay or 0) / 1000
            return message
        if isinstance(message, MessageProxy):
            message = message._message
        queue_name = message.queue_name
        if queue_name not in self.queues:
            self.declare_queue(queue_name)
        message = message.copy(options={key: value for key, value in message.options.items() if key != "eta"})
        self.emit_before("enqueue", message, delay)
        try:
            self._ensure(queue_name)
            self.client.send(queue_name, message.encode(), delay=(delay or 0) / 1000)
        except NoSuchQueue:
            self._created.discard(queue_name)
            self._ensure(queue_name)
            self.client.send(queue_name, message.encode(), delay=(delay or 0) / 1000)
        except ConnectionLost as exc:
            raise self._lost(exc) from exc
        self.emit_after("enqueue", message, delay)
        return message

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """A consumer of ``queue_name`` holding at most ``prefetch`` messages, each ``__next__`` waiting up
        to ``timeout`` ms. Raises `ConnectionClosed`."""
        self._ensure(queue_name)
        return _DbQueueConsumer(self, queue_name, prefetch, timeout)


class _DbQueueConsumer(Consumer):
    """Reads one queue for a worker's consumer thread; acknowledged by its worker threads."""

    def __init__(self, broker: DbQueueBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout / 1000
        self.reader = Reader(broker.client, broker.visibility_timeout)
        self.client = self.reader.client  # acknowledgements go where the reads went
        self.buffer: collections.deque[_Delivery] = collections.deque()
        self.outstanding = 0  # read and not yet acknowledged, buffered ones too
        self.lock = threading.Lock()
        self.room = threading.Event()

    def __next__(self) -> MessageProxy | None:
        if self.buffer:
            return self.buffer.popleft()
        self.room.clear()
        with self.lock:
            room = self.prefetch - self.outstanding
        if room <= 0:
            self.room.wait(self.timeout)  # the prefetch is full: nothing to read until an ack
            return None
        try:
            found = self.reader.read([self.queue_name], room, self.timeout)
        except ConnectionLost as exc:
            raise self.broker._lost(exc) from exc
        with self.lock:
            self.outstanding += len(found)
        for _, message in found:
            try:
                decoded = Message.decode(message.data)
            except DecodeError:
                self._dead_letter(message.id)
                self._done()
                continue
            delivery = _Delivery(decoded, message.id, message.deliveries)
            delivery.options["retries"] = message.deliveries - 1  # the server's count: crashes count too
            self.broker._held[message.id] = delivery
            self.buffer.append(delivery)
        return self.buffer.popleft() if self.buffer else None

    def ack(self, message: MessageProxy) -> None:
        delivery = self._delivery(message)
        try:
            if delivery.retry_delay is not None:
                self._settle(self.client.release, delivery.dbqueue_id, delivery.retry_delay)
            else:
                self._settle(self.client.confirm, delivery.dbqueue_id)
        finally:
            self._forget(delivery)

    def nack(self, message: MessageProxy) -> None:
        delivery = self._delivery(message)
        try:
            self._dead_letter(delivery.dbqueue_id)
        finally:
            self._forget(delivery)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        for message in messages:
            delivery = self._delivery(message)
            try:
                self._settle(self.client.release, delivery.dbqueue_id)
            finally:
                self._forget(delivery)

    def close(self) -> None:
        # Prefetched messages nobody started go back now rather than when the connection closes.
        while self.buffer:
            delivery = self.buffer.popleft()
            try:
                self._settle(self.client.release, delivery.dbqueue_id)
            finally:
                self._forget(delivery)

    def _delivery(self, message: MessageProxy) -> _Delivery:
        if not isinstance(message, _Delivery):
            raise TypeError(f"not a message of this broker: {message!r}")
        return message

    def _forget(self, delivery: _Delivery) -> None:
        self.broker._held.pop(delivery.dbqueue_id, None)
        self._done()

    def _done(self) -> None:
        with self.lock:
            self.outstanding -= 1
        self.room.set()

    def _dead_letter(self, id_: int) -> None:
        """Have the server move message ``id_`` to the queue's ``.XQ``, in one step and with its origin;
        if the server cannot (no dead-letter queue, or a deleted or full one), confirm it and log the drop."""
        try:
            self._settle(self.client.dead_letter, id_)
        except RequestError as exc:
            log.warning("dbqueue: message %d of %r dropped, not dead-lettered: %s", id_, self.queue_name, exc)
            self._settle(self.client.confirm, id_)

    def _settle(self, call: Any, id_: int, delay: float | None = None) -> None:
        try:
            if delay is None:
                call(id_)
            else:
                call(id_, delay=delay)
        except (Requeued, NoSuchMessage) as exc:
            # No longer ours (its connection closed, or its visibility timeout passed): it comes back anyway.
            log.warning("dbqueue: message %d was not settled: %s", id_, exc)
        except ConnectionLost as exc:
            raise self.broker._lost(exc) from exc

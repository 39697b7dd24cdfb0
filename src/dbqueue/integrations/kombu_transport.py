"""A kombu virtual transport on dbqueue: what Celery runs on with ``broker_url="dbqueue://host:port"``.

Theory of operation
-------------------
Each kombu connection is one dbqueue `Client` (thread-safe: Celery
acknowledges from other threads than the one that reads). A kombu queue is a
dbqueue queue of the same name, created when kombu declares it; a message is
kombu's usual JSON envelope (body, headers, properties) as the message's bytes.

* **Acknowledgements are the server's.** A read takes a message in flight for
  ``visibility_timeout`` seconds (3600 by default, as kombu's Redis and SQS
  transports); `Channel.basic_ack` confirms it by its dbqueue id, carried in the
  delivery info. A message whose worker dies is never lost: its connection
  closes and the server puts it back at once; a worker that hangs past the
  visibility timeout loses it to another worker. Nothing is copied back by the
  client: a requeue (a reject with ``requeue=True``, a channel closed with
  unacknowledged messages, `basic_recover`) is a dbqueue release of the same
  message, which goes back to the front of its queue.
* **Delays are the server's.** A Celery task message whose ``eta`` header
  (``countdown`` and ``eta`` both set it) lies ahead is sent with a dbqueue
  delay, so no worker holds it meanwhile; it becomes readable when due (never
  before: delays round up to whole milliseconds) and the worker runs it at once.
  Retries are Celery's: a new message with its countdown, so delayed the same way.
* **Reading.** `Transport.drain_events` reads for every channel of the
  connection at once (Celery's task consumer and, if any, others), as many
  messages as the channels' prefetch leaves room for, through `reader.Reader`:
  one pipelined round trip over the consumed queues, then, if all are empty, a
  waiting read on all of them (``wait_time_seconds``, capped by the caller's
  timeout). An idle worker costs one request per wait. With its prefetch full,
  the loop sleeps until an acknowledgement makes room.
* **Dead letters.** A queue may be declared with ``max_deliveries`` and a
  ``dead_letter_queue`` (transport options, for every queue or per queue): a
  message handed out that many times without an acknowledgement (its workers
  keep dying on it) is moved by the server, atomically. A reject with
  ``requeue=False`` (Celery's final failure of an ``acks_late`` task with
  ``task_acks_on_failure_or_timeout=False``) is different: dbqueue has no
  request that dead-letters one held message, so the transport sends a copy
  to the dead-letter queue and then confirms the original; a crash between the
  two leaves the task both in the dead-letter queue and redelivered.
* **Exchanges** are kombu's virtual ones, kept in the process: Celery's
  default routing (a task to a queue by its name) and direct routing to
  queues this process declared work. Fanout exchanges (Celery's ``inspect`` and
  ``control`` broadcasts) are not supported: ``supports_fanout`` is False, as
  for kombu's SQS transport (see docs/frameworks.md).

Transport options (``broker_transport_options``): ``visibility_timeout``
(seconds, or ``dbqueue.NEVER``), ``wait_time_seconds`` (longest waiting read,
default 10), ``max_batch`` (most messages one read takes, default 100),
``token`` and ``tls`` (else the URL's), ``max_deliveries``,
``dead_letter_queue``, and ``queue_options`` (a dict of queue name to a dict
of ``max_deliveries``, ``dead_letter_queue``, ``capacity``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from queue import Empty
from typing import Any

from kombu.transport import virtual

from ..client import Client, Message
from ..errors import ConnectionLost, NoSuchMessage, NoSuchQueue, RequestError, Requeued
from .address import DEFAULT_PORT, Address
from .reader import Reader

__all__ = ["Channel", "Transport", "delay_of"]

log = logging.getLogger(__name__)

DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # kombu's Redis and SQS transports' default
DEFAULT_WAIT = 10.0
DEFAULT_BATCH = 100
ID_KEY = "dbqueue_id"  # where a delivered message's dbqueue id rides, in its delivery info


def delay_of(payload: Mapping[str, Any], now: datetime | None = None) -> float:
    """Seconds until a Celery message's ``eta`` header (0 when it has none or it has passed).

    A naive eta is taken as UTC, Celery's default (``enable_utc``). Raises nothing:
    an eta that does not parse means no delay (the worker still honours it).
    """
    headers = payload.get("headers") or {}
    eta = headers.get("eta")
    if not eta:
        return 0.0
    try:
        due = datetime.fromisoformat(str(eta))
    except ValueError:
        return 0.0
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    return max(0.0, (due - (now or datetime.now(UTC))).total_seconds())


def _tls_of(option: Any) -> bool | ssl.SSLContext | None:
    """The client's ``tls`` for kombu's ``ssl`` setting (Celery's ``broker_use_ssl``): True, an
    `ssl.SSLContext`, a dict of ``ca_certs``/``certfile``/``keyfile``/``cert_reqs``, or a URL's string."""
    if isinstance(option, ssl.SSLContext) or option in (None, False, True):
        return option  # type: ignore[no-any-return]  # narrowed by the test above
    if isinstance(option, str):
        return option.lower() in ("1", "true", "yes", "on")
    if isinstance(option, Mapping):
        context = ssl.create_default_context(cafile=option.get("ca_certs"))
        if option.get("certfile"):
            context.load_cert_chain(option["certfile"], option.get("keyfile"))
        if option.get("cert_reqs") == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
    return bool(option)


# kombu's virtual classes are mostly untyped: seen as Any here, so their methods may be called and overridden.
_VirtualChannel: Any = virtual.Channel
_VirtualTransport: Any = virtual.Transport


class Channel(_VirtualChannel):  # type: ignore[misc]  # subclassing Any: kombu's untyped virtual channel
    """A kombu channel: queues, publishing, acknowledgements on the transport's dbqueue client."""

    connection: Transport
    supports_fanout = False

    # --- queues --------------------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.connection.ensure_queue(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        try:
            self.connection.dbqueue.stats(queue)
        except NoSuchQueue:
            return False
        return True

    def _size(self, queue: str) -> int:
        try:
            return int(self.connection.dbqueue.stats(queue)["ready"])
        except NoSuchQueue:
            return 0

    def _purge(self, queue: str) -> int:
        try:
            return self.connection.dbqueue.purge(queue)
        except NoSuchQueue:
            return 0

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.connection.forget_queue(queue)
        with contextlib.suppress(NoSuchQueue):
            self.connection.dbqueue.delete(queue)

    # --- messages ------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.connection.send(queue, json.dumps(message).encode(), delay_of(message))

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        found = self.connection.reader.read([queue], 1, 0.0)
        if not found:
            raise Empty()
        return self.connection.payload(*found[0])

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        id_ = self._held_id(delivery_tag)
        if id_ is not None:
            self.connection.settle("confirm", self.connection.dbqueue.confirm, id_)
        super().basic_ack(delivery_tag)
        self.connection.room.set()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        id_ = self._held_id(delivery_tag)
        if id_ is not None and not requeue:
            self._dead_letter(self.qos.get(delivery_tag), id_)
            self.qos.ack(delivery_tag)  # settled: only the bookkeeping is left
        else:
            super().basic_reject(delivery_tag, requeue=requeue)  # a requeue is `_restore`: a release
        self.connection.room.set()

    def _restore(self, message: Any) -> None:
        id_ = (message.delivery_info or {}).get(ID_KEY)
        if id_ is None:
            super()._restore(message)
            return
        self.connection.settle("release", self.connection.dbqueue.release, id_)

    def _held_id(self, delivery_tag: Any) -> int | None:
        try:
            message = self.qos.get(delivery_tag)
        except KeyError:
            return None
        id_: int | None = (message.delivery_info or {}).get(ID_KEY)
        return id_

    def _dead_letter(self, message: Any, id_: int) -> None:
        queue = (message.delivery_info or {}).get("routing_key") or ""
        target = self.connection.queue_option(queue, "dead_letter_queue")
        if target:
            payload = message.serializable()
            payload["headers"]["x-dbqueue-dead-letter-from"] = queue
            payload["properties"]["delivery_info"].pop(ID_KEY, None)
            self.connection.send(target, json.dumps(payload).encode(), 0.0)
        self.connection.settle("confirm", self.connection.dbqueue.confirm, id_)


class Transport(_VirtualTransport):  # type: ignore[misc]  # subclassing Any: kombu's untyped virtual transport
    """kombu's transport for ``dbqueue://[:TOKEN@]HOST:PORT`` (see the module docstring)."""

    Channel = Channel
    default_port = DEFAULT_PORT
    driver_type = "dbqueue"
    driver_name = "dbqueue"
    implements = _VirtualTransport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct"]), heartbeats=False
    )
    connection_errors = (*_VirtualTransport.connection_errors, ConnectionLost)
    channel_errors = (*_VirtualTransport.channel_errors, RequestError)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options: Mapping[str, Any] = client.transport_options or {}
        self.options = options
        visibility = options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
        self.visibility_timeout: float | None = None if visibility is None else float(visibility)
        self.wait = float(options.get("wait_time_seconds", DEFAULT_WAIT))
        self.batch = int(options.get("max_batch", DEFAULT_BATCH))
        self.address = Address(
            host=client.hostname or "127.0.0.1",
            port=int(client.port or DEFAULT_PORT),
            token=options.get("token") or client.password or None,
            tls=_tls_of(options["tls"]) if options.get("tls") is not None else _tls_of(client.ssl),
            timeout=float(client.connect_timeout or 10.0),
        )
        self.room = threading.Event()  # set by every acknowledgement: a full prefetch may take more
        self._client: Client | None = None
        self._reader: Reader | None = None
        self._queues: set[str] = set()
        self._queues_lock = threading.Lock()

    # --- the connection ------------------------------------------------------------------

    @property
    def dbqueue(self) -> Client:
        """The connection's client; raises `ConnectionLost` once it is closed."""
        if self._client is None:
            raise ConnectionLost("the kombu connection to dbqueue is not open")
        return self._client

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            raise ConnectionLost("the kombu connection to dbqueue is not open")
        return self._reader

    def establish_connection(self) -> Transport:
        self._client = self.address.connect()
        self._reader = Reader(self._client, self.visibility_timeout)
        return super().establish_connection()  # type: ignore[no-any-return]  # kombu's: the transport itself

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)  # channels give back what they hold unacknowledged
        finally:
            client, self._client, self._reader = self._client, None, None
            if client is not None:
                client.close()

    def verify_connection(self, connection: Any) -> bool:
        return self._client is not None

    # --- queues --------------------------------------------------------------------------

    def queue_option(self, queue: str, name: str) -> Any:
        """The option ``name`` of ``queue``: its ``queue_options`` entry, else the transport's."""
        own = (self.options.get("queue_options") or {}).get(queue) or {}
        return own.get(name, self.options.get(name))

    def ensure_queue(self, queue: str) -> None:
        """Create ``queue`` on the server (and its dead-letter queue first), once per connection."""
        if queue in self._queues:
            return
        dead_letter = self.queue_option(queue, "dead_letter_queue")
        if dead_letter == queue:
            dead_letter = None  # the dead-letter queue itself, declared like any other
        if dead_letter:
            self.dbqueue.create(dead_letter)
        self.dbqueue.create(
            queue,
            capacity=self.queue_option(queue, "capacity"),
            max_deliveries=self.queue_option(queue, "max_deliveries") if dead_letter else None,
            dead_letter_queue=dead_letter or None,
        )
        with self._queues_lock:
            self._queues.add(queue)

    def forget_queue(self, queue: str) -> None:
        with self._queues_lock:
            self._queues.discard(queue)

    def send(self, queue: str, data: bytes, delay: float) -> None:
        """Send ``data`` to ``queue`` after ``delay`` seconds, creating the queue if it is missing."""
        try:
            self.dbqueue.send(queue, data, delay=delay)
        except NoSuchQueue:
            self.forget_queue(queue)
            self.ensure_queue(queue)
            self.dbqueue.send(queue, data, delay=delay)

    def settle(self, what: str, call: Callable[[int], None], id_: int) -> None:
        """Confirm or release message ``id_``; if the server no longer holds it for us, log why and go on:
        it is (or will be) delivered again, which acks_late allows."""
        try:
            call(id_)
        except (Requeued, NoSuchMessage) as exc:
            log.warning("dbqueue: %s of message %d refused (%s): it will be delivered again", what, id_, exc)
        except ConnectionLost as exc:
            log.warning("dbqueue: %s of message %d lost with the connection (%s): it comes back", what, id_, exc)

    # --- reading -------------------------------------------------------------------------

    def payload(self, queue: str, message: Message) -> dict[str, Any]:
        """kombu's message dict for a dbqueue message read from ``queue``, carrying its id."""
        payload: dict[str, Any] = json.loads(message.data)
        properties = payload.setdefault("properties", {})
        properties["delivery_tag"] = f"{message.id}.{message.deliveries}"  # one per delivery
        info = properties.setdefault("delivery_info", {})
        info[ID_KEY] = message.id
        info["redelivered"] = message.deliveries > 1
        info.setdefault("routing_key", queue)
        payload["redelivered"] = message.deliveries > 1
        return payload

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what the consumed queues hold, waiting up to ``timeout`` seconds (None: until something
        comes). Raises `socket.timeout` when nothing came in time, `ConnectionLost` if the connection fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.wait if deadline is None else min(self.wait, max(0.0, deadline - time.monotonic()))
            self.room.clear()  # before the prefetch is looked at: an ack from now on wakes the wait below
            queues: list[str] = []
            room = 0
            for channel in self.channels:
                if channel._consumers and channel.qos.can_consume():
                    estimate = channel.qos.can_consume_max_estimate()
                    room += self.batch if estimate is None else estimate
                    queues.extend(queue for queue in channel._active_queues if queue not in queues)
            if queues:
                found = self.reader.read(queues, min(room, self.batch), wait)
                if found:
                    self._deliver_all(found)
                    return
            else:
                self.room.wait(wait)  # the prefetch is full: nothing to read until an ack
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()  # socket.timeout, what kombu's callers expect

    def _deliver_all(self, found: list[tuple[str, Message]]) -> None:
        for position, (queue, message) in enumerate(found):
            try:
                self._deliver(self.payload(queue, message), queue)
            except BaseException:
                # Hand back what this read took and nobody got, rather than hold it a visibility timeout.
                for _, rest in found[position + 1 :]:
                    self.settle("release", self.dbqueue.release, rest.id)
                raise

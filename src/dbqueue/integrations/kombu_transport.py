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
  connection at once (Celery's task consumer and its mailbox), each channel
  within its own prefetch, through `reader.Reader`: one pipelined round trip
  over the consumed queues, then, if all are empty, a waiting read on all of
  them (``wait_time_seconds``, capped by the caller's timeout). An idle worker
  costs one request per wait. While a channel's prefetch is full (its tasks
  run), the loop reads the other channels' queues without waiting and sleeps
  until an acknowledgement makes room (or ``FULL_POLL``).
* **Shutdown.** A batch read is handed to kombu one message at a time, and
  Celery's synchronous loop may block in a hand-off (its pool full: the task
  waits for a process), so the rest of a batch is read but not handed over.
  When Celery's worker begins to shut down (its ``worker_shutting_down``
  signal, sent by the SIGTERM handler, or its ``should_stop`` flag, seen at
  the next drain) the transport takes nothing more, and what it read and has
  not handed over goes back to the server at once (released: to the front of
  its queue, from a thread of its own, since the main thread may be blocked in
  that hand-off). What Celery was already handed is Celery's: it runs or is
  restored when the channel closes. Celery's Redis transport gives back the
  same messages, but only at the exit.
* **Dead letters.** A queue may be declared with ``max_deliveries`` and a
  ``dead_letter_queue`` (transport options, for every queue or per queue): a
  message handed out that many times without an acknowledgement (its workers
  keep dying on it) is moved by the server, atomically. So is a reject with
  ``requeue=False`` (Celery's final failure of an ``acks_late`` task with
  ``task_acks_on_failure_or_timeout=False``): the transport asks the server to
  dead-letter the message it holds (`Client.dead_letter`), which moves it in
  one step, with its origin (source queue, id, first enqueue time, deliveries),
  never a copy. A queue the server knows no dead-letter queue for (or whose
  dead-letter queue is deleted or full) cannot take it: the transport then
  confirms it, as a reject without a dead-letter exchange drops a message in
  AMQP, and logs it.
* **Exchanges and bindings.** kombu's virtual exchanges (direct, topic,
  fanout) route in the publishing process, so every process must see the same
  bindings: each binding is kept on the server as an empty queue named
  ``_kombu.binding|TYPE|EXCHANGE|ROUTING KEY|QUEUE`` (as kombu's Redis
  transport keeps them in Redis sets), listed again when older than
  ``TABLE_TTL`` or when a lookup finds nothing. A fanout publish sends one copy
  to each bound queue. That is what Celery's ``inspect`` and ``control``
  commands need (each worker's mailbox queue is bound to the ``celery.pidbox``
  fanout exchange; replies go to the caller's queue through a direct exchange),
  and mingle and gossip too. Queues declared ``auto_delete`` (mailboxes,
  reply queues) hold at most ``TRANSIENT_CAPACITY`` messages, as a worker
  killed with SIGKILL leaves its mailbox behind, and are deleted with their
  bindings when their channel closes; a message older than its queue's
  ``x-message-ttl`` (kombu's ``message_ttl``) is dropped when read. Messages
  of a consumer declared without acknowledgements (``no_ack``) are confirmed
  as they are read.

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
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from queue import Empty
from typing import Any

from kombu.transport import virtual

from ..client import Client, Message
from ..errors import ConnectionLost, DbQueueError, NoSuchMessage, NoSuchQueue, QueueFull, RequestError, Requeued
from ..protocol import MAX_QUEUE_NAME as MAX_NAME
from .address import DEFAULT_PORT, Address
from .reader import Reader, shares

__all__ = ["Channel", "Transport", "delay_of"]

log = logging.getLogger(__name__)

DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # kombu's Redis and SQS transports' default
DEFAULT_WAIT = 10.0
DEFAULT_BATCH = 100
ID_KEY = "dbqueue_id"  # where a delivered message's dbqueue id rides, in its delivery info
QUEUE_KEY = "dbqueue_queue"  # and the queue it was read from
SENT_KEY = "dbqueue_sent_at"  # when it was sent (seconds since the epoch): for x-message-ttl
BINDING = "_kombu.binding"  # a binding is an empty queue named BINDING|type|exchange|routing key|queue
SEP = "|"
TABLE_TTL = 1.0  # seconds a process trusts the bindings it listed; a lookup that finds nothing lists again
FULL_POLL = 0.25  # seconds between looks at the other queues while a channel's prefetch is full
TRANSIENT_CAPACITY = 1000  # most messages an auto-delete queue holds (its consumer may die without deleting it)
Table = list[tuple[str, str | None, str]]  # kombu's routing table: (routing key, pattern, queue)
_TYPES = {"DirectExchange": "direct", "TopicExchange": "topic", "FanoutExchange": "fanout"}
_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()  # this process's transports: Celery's shutdown stops them
_HOOKED = False  # whether `_celery_shutting_down` is connected to Celery's signal


def _celery_stopping() -> bool:
    """Whether this process is a Celery worker that has begun to shut down (its SIGTERM, SIGINT or SIGQUIT).

    Celery's flags hold the exit code, 0 for a warm shutdown: set is "not None and not False".
    """
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return False
    return any(getattr(state, flag, None) not in (None, False) for flag in ("should_stop", "should_terminate"))


def _celery_shutting_down(**_: Any) -> None:
    """Celery's ``worker_shutting_down`` receiver: every transport of the process stops taking messages."""
    for transport in list(_LIVE):
        transport.stop_taking()


def _hook_celery() -> None:
    """Connect `_celery_shutting_down` to Celery's signal, once, if Celery is there."""
    global _HOOKED
    if _HOOKED:
        return
    try:
        from celery.signals import worker_shutting_down  # type: ignore[import-untyped]  # Celery ships no types
    except ImportError:  # kombu without Celery: only `stop_taking` stops a transport
        return
    worker_shutting_down.connect(_celery_shutting_down, weak=False, dispatch_uid="dbqueue.kombu_transport")
    _HOOKED = True


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
    supports_fanout = True

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._auto_delete: set[str] = set()  # declared here with auto_delete: deleted when this channel closes
        self._ttl: dict[str, float] = {}  # queue -> seconds a message lives (x-message-ttl), declared here

    # --- queues --------------------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        arguments = kwargs.get("arguments") or {}
        transient = bool(kwargs.get("auto_delete"))
        self.connection.ensure_queue(queue, transient=transient)
        if transient:
            self._auto_delete.add(queue)
        if arguments.get("x-message-ttl"):
            self._ttl[queue] = float(arguments["x-message-ttl"]) / 1000

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> None:
        if if_empty and self._size(queue):
            return
        self.connection.unbind_all(queue)  # bindings made by any process, kept on the server
        self._delete(queue)
        self.state.queue_bindings_delete(queue)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        self.connection.bind(self.typeof(exchange).__class__.__name__, exchange, routing_key, queue)

    def queue_unbind(
        self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)
        self.connection.unbind(exchange or "amq.direct", routing_key, queue)

    def get_table(self, exchange: str) -> Table:
        return self.connection.table(exchange)

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        if exchange in self.state.exchanges:
            return super().typeof(exchange, default)
        # Declared by another process only: the bindings on the server know its type.
        return self.exchange_types[self.connection.exchange_type(exchange) or default]

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        found: list[str] = super()._lookup(exchange, routing_key, default)
        if not found and exchange:
            self.connection.forget_table(exchange)  # bound a moment ago, by another process?
            found = super()._lookup(exchange, routing_key, default)
        return found

    def close(self) -> None:
        transient, self._auto_delete = self._auto_delete, set()
        transport = self.connection
        super().close()  # gives back what it holds unacknowledged; forgets its transport
        if transport is None or transport._client is None:
            return
        for queue in transient:
            with contextlib.suppress(DbQueueError):
                transport.unbind_all(queue)
                transport.drop_queue(queue)

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
        self.connection.drop_queue(queue)

    # --- messages ------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        message["properties"][SENT_KEY] = time.time()
        self.connection.send(queue, json.dumps(message).encode(), delay_of(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        message["properties"][SENT_KEY] = time.time()
        data = json.dumps(message).encode()
        for _, _, queue in self.get_table(exchange):
            # A broadcast to a queue that is gone or full (its consumer died) is dropped, as a fanout drops it.
            with contextlib.suppress(NoSuchQueue, QueueFull):
                self.connection.dbqueue.send(queue, data)

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        if no_ack:
            self.connection.no_ack.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def expired(self, queue: str, payload: dict[str, Any]) -> bool:
        """Whether a message read from ``queue`` outlived the x-message-ttl this channel declared it with."""
        ttl = self._ttl.get(queue)
        sent = payload.get("properties", {}).get(SENT_KEY)
        return ttl is not None and sent is not None and time.time() - float(sent) > ttl

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
        """Have the server move rejected message ``id_`` to its queue's dead-letter queue, in one step and
        with its origin; if the server has none for it, drop it (confirm) as AMQP drops a reject."""
        connection = self.connection
        try:
            connection.settle("dead letter", connection.dbqueue.dead_letter, id_)
        except RequestError as exc:  # no dead-letter queue on the server, or a deleted or full one
            queue = (message.delivery_info or {}).get(QUEUE_KEY) or ""
            # Expected when no dead-letter queue was asked for; worth a warning when one was.
            level = logging.WARNING if connection.queue_option(queue, "dead_letter_queue") else logging.INFO
            log.log(level, "dbqueue: rejected message %d of %r dropped: %s", id_, queue, exc)
            connection.settle("confirm", connection.dbqueue.confirm, id_)


class Transport(_VirtualTransport):  # type: ignore[misc]  # subclassing Any: kombu's untyped virtual transport
    """kombu's transport for ``dbqueue://[:TOKEN@]HOST:PORT`` (see the module docstring)."""

    Channel = Channel
    default_port = DEFAULT_PORT
    driver_type = "dbqueue"
    driver_name = "dbqueue"
    implements = _VirtualTransport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic", "fanout"]), heartbeats=False
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
        self._tables: dict[str, tuple[float, Table]] = {}  # exchange -> (listed at, bindings)
        self._turn = 0  # which queue of a channel is asked first: turns round, so none starves
        self.no_ack: set[str] = set()  # queues consumed without acknowledgements: confirmed as they are read
        self.stopped = threading.Event()  # set by `stop_taking`: nothing more is read
        # Read and not yet handed to kombu (the rest of a batch): given back if the transport stops meanwhile.
        self._unsent: deque[tuple[str, Message]] = deque()
        self._unsent_lock = threading.Lock()
        _LIVE.add(self)
        _hook_celery()

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

    def stop_taking(self) -> None:
        """Read nothing more, and give back at once what was read and not yet handed to kombu.

        Called when Celery's worker begins to shut down; safe from a signal
        handler: the messages are released by a thread of its own (the main
        thread may hold the connection, or be blocked handing a task over).
        """
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.room.set()  # a drain waiting for room looks again, and stops
        threading.Thread(target=self._give_back, name="dbqueue-give-back", daemon=True).start()

    def _give_back(self) -> None:
        """Release every message read and not handed over (to the front of its queue)."""
        with self._unsent_lock:
            unsent = list(self._unsent)
            self._unsent.clear()
        client = self._client
        if client is None or not unsent:
            return  # closed: the server gave them back with the connection
        for _, message in unsent:
            self.settle("release", client.release, message.id)
        log.info("gave back %d message(s) read and not yet handed over: the worker is stopping", len(unsent))

    # --- queues --------------------------------------------------------------------------

    def queue_option(self, queue: str, name: str) -> Any:
        """The option ``name`` of ``queue``: its ``queue_options`` entry, else the transport's."""
        own = (self.options.get("queue_options") or {}).get(queue) or {}
        return own.get(name, self.options.get(name))

    def ensure_queue(self, queue: str, transient: bool = False) -> None:
        """Create ``queue`` on the server (and its dead-letter queue first), once per connection.
        ``transient`` (kombu's auto_delete): bounded, as its consumer may die without deleting it."""
        if queue in self._queues:
            return
        dead_letter = self.queue_option(queue, "dead_letter_queue")
        if dead_letter == queue:
            dead_letter = None  # the dead-letter queue itself, declared like any other
        if dead_letter:
            self.dbqueue.create(dead_letter)
        capacity = self.queue_option(queue, "capacity") or (TRANSIENT_CAPACITY if transient else None)
        self.dbqueue.create(
            queue,
            capacity=capacity,
            max_deliveries=self.queue_option(queue, "max_deliveries") if dead_letter else None,
            dead_letter_queue=dead_letter or None,
        )
        with self._queues_lock:
            self._queues.add(queue)

    def forget_queue(self, queue: str) -> None:
        with self._queues_lock:
            self._queues.discard(queue)

    def drop_queue(self, queue: str) -> None:
        """Delete ``queue`` on the server (gone already is fine)."""
        self.forget_queue(queue)
        with contextlib.suppress(NoSuchQueue):
            self.dbqueue.delete(queue)

    # --- bindings, kept on the server so that every process routes alike ------------------

    def bind(self, kind: str, exchange: str, routing_key: str, queue: str) -> None:
        """Record a binding on the server, as an empty queue whose name says it all."""
        name = SEP.join((BINDING, _TYPES.get(kind, "direct"), exchange, routing_key, queue))
        if SEP in exchange + routing_key + queue or len(name.encode()) > MAX_NAME:
            log.warning("dbqueue: binding of %r to %r (%r) kept in this process only", queue, exchange, routing_key)
            return
        self.dbqueue.create(name)
        self.forget_table(exchange)

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        for name, (_, bound_exchange, key, bound) in self._bindings().items():
            if (bound_exchange, key, bound) == (exchange, routing_key, queue):
                with contextlib.suppress(NoSuchQueue):
                    self.dbqueue.delete(name)
        self.forget_table(exchange)

    def unbind_all(self, queue: str) -> None:
        """Delete every binding of ``queue``, whoever made it."""
        for name, (_, exchange, _, bound) in self._bindings().items():
            if bound == queue:
                with contextlib.suppress(NoSuchQueue):
                    self.dbqueue.delete(name)
                self.forget_table(exchange)

    def table(self, exchange: str) -> Table:
        """kombu's routing table of ``exchange`` (routing key, pattern, queue), as the server holds it."""
        listed = self._tables.get(exchange)
        if listed is not None and time.monotonic() - listed[0] < TABLE_TTL:
            return listed[1]
        bindings = list(self._bindings().values())
        now = time.monotonic()
        for kind, name in {(kind, name) for kind, name, _, _ in bindings}:
            rows = [(key, _pattern(kind, key), queue) for k, n, key, queue in bindings if (k, n) == (kind, name)]
            self._tables[name] = (now, rows)
        if exchange not in {name for _, name, _, _ in bindings}:
            self._tables[exchange] = (now, [])
        return self._tables[exchange][1]

    def exchange_type(self, exchange: str) -> str | None:
        """The type the server's bindings give ``exchange`` (None: no binding)."""
        for kind, name, _, _ in self._bindings().values():
            if name == exchange:
                return kind
        return None

    def forget_table(self, exchange: str) -> None:
        self._tables.pop(exchange, None)

    def _bindings(self) -> dict[str, tuple[str, str, str, str]]:
        """Every binding on the server: queue name -> (type, exchange, routing key, queue)."""
        found = {}
        for entry in self.dbqueue.list_queues():
            parts = entry["name"].split(SEP)
            if len(parts) == 5 and parts[0] == BINDING:
                found[entry["name"]] = (parts[1], parts[2], parts[3], parts[4])
        return found

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
        info[QUEUE_KEY] = queue
        payload["redelivered"] = message.deliveries > 1
        return payload

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what the consumed queues hold, waiting up to ``timeout`` seconds (None: until something
        comes). Raises `socket.timeout` when nothing came in time, `ConnectionLost` if the connection fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.stopped.is_set() or _celery_stopping():
                self.stop_taking()
                pause = FULL_POLL if deadline is None else min(FULL_POLL, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)  # nothing will come: not a busy loop for a caller that keeps draining
                raise TimeoutError()
            wait = self.wait if deadline is None else min(self.wait, max(0.0, deadline - time.monotonic()))
            self.room.clear()  # before the prefetch is looked at: an ack from now on wakes the wait below
            plan, full = self._plan()
            if not plan:
                self.room.wait(min(wait, FULL_POLL))  # nothing may be read now: no consumer, or none with room
            elif full:
                # A channel's prefetch is full (its tasks run): read the others' queues without waiting,
                # then wait for an ack, or a short while, so that a control command is not held up long.
                found = self.reader.read_plan(plan, 0.0)
                if found:
                    self._deliver_all(found)
                    return
                self.room.wait(min(wait, FULL_POLL))
            else:
                found = self.reader.read_plan(plan, wait)
                if found:
                    self._deliver_all(found)
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()  # socket.timeout, what kombu's callers expect

    def _plan(self) -> tuple[list[tuple[str, int]], bool]:
        """What to read: (queue, count) for every queue a channel consumes, within that channel's
        prefetch; and whether some consuming channel's prefetch is full."""
        self._turn += 1
        plan: dict[str, int] = {}
        full = False
        for channel in self.channels:
            if not channel._consumers:
                continue
            if not channel.qos.can_consume():
                full = True
                continue
            estimate = channel.qos.can_consume_max_estimate()
            room = self.batch if estimate is None else min(estimate, self.batch)
            for queue, count in shares(channel._active_queues, room, self._turn):
                plan[queue] = max(plan.get(queue, 0), count)
        return list(plan.items()), full

    def _deliver_all(self, found: list[tuple[str, Message]]) -> None:
        """Hand ``found`` to kombu one message at a time, until the transport stops (the rest is given back)."""
        unsent, lock = self._unsent, self._unsent_lock
        with lock:
            unsent.extend(found)
        while True:
            if _celery_stopping():  # Celery's flag, for a process whose signal receiver is not connected
                self.stop_taking()
            with lock:
                if self.stopped.is_set() or not unsent:
                    break
                queue, message = unsent.popleft()
            try:
                payload = self.payload(queue, message)
                if queue in self.no_ack or self._expired(queue, payload):
                    # Taken for good as it is read (kombu's no_ack), or dropped: past its queue's message TTL.
                    self.settle("confirm", self.dbqueue.confirm, message.id)
                    payload["properties"]["delivery_info"].pop(ID_KEY, None)
                    if queue not in self.no_ack:
                        continue
                self._deliver(payload, queue)  # Celery's synchronous loop may block here (its pool is full)
            except BaseException:
                # Hand back what this read took and nobody got, rather than hold it a visibility timeout.
                self._give_back()
                raise
        if self.stopped.is_set():
            self._give_back()  # whatever `stop_taking`'s thread has not taken yet

    def _expired(self, queue: str, payload: dict[str, Any]) -> bool:
        return any(channel.expired(queue, payload) for channel in self.channels)


def _pattern(kind: str, routing_key: str) -> str | None:
    """The pattern kombu's virtual exchange of ``kind`` keeps beside a binding's routing key."""
    if kind == "topic":
        return str(_TOPIC.key_to_pattern(routing_key))
    return None


_TopicExchange: Any = virtual.exchange.TopicExchange
_TOPIC = _TopicExchange(None)

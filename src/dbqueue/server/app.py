"""The Server: the listening socket, its sessions, and the timers that serve them all.

Theory of operation
-------------------
Each connection is a `Session`, and every session works on the server's one
`Broker` (the queue logic of `dbqueue.core`, which takes the time as an
argument: here, the loop's clock). The server keeps every timer, one of each
kind for all connections, never one per message or per connection:

* the expiry timer fires at the earliest in-flight deadline, but no sooner
  than `Limits.sweep_resolution` from now, and the broker requeues whatever
  is due (`schedule_expiry` moves it up, never back);
* with `Limits.idle_timeout`, the reaper closes connections that sent
  nothing for that long;
* with a store, the reclaimer gives freed pages back to the file system
  every `Limits.reclaim_interval` (and, while the store cannot write, probes
  it instead: see below);
* once every `WALL_CHECK_INTERVAL`, the broker's mapping from the loop's
  clock to Unix time is checked against the wall clock and taken again if
  the wall clock stepped (`Broker.follow_wall`): enqueue times, and the ages
  clients read from them, stay right on a server up for months.

Connections. Over TLS the listener is plain TCP and a `security.TlsGate`
runs the handshakes: at most `Limits.max_unauthenticated` at once, each within
`Limits.handshake_timeout`; a connection becomes a `Session`, and counts
against `Limits.max_connections`, once its handshake is done. Strangers who
never finish a handshake so never take the place of a client who did.

Replies. In memory, `send` writes a reply at once. With a store, a reply that
reports a change waits in the outbox until the change is committed:
everything handled in one loop iteration, over every connection, is one
transaction (group commit: the iteration's first such reply schedules
`_commit`), and the replies go out after it. Replies that report no change to
the store (`write`: reads) go out at once.

Unread replies. A connection whose unread replies pass
`Limits.max_output_buffer` is cut off (its messages in flight go back). Over
all connections, the server keeps a running total of the replies waiting in
transports' buffers, updated only from writes that leave a buffer non-empty
(a client that reads costs one size check per write); when the total passes
`Limits.max_output_total`, the sizes are read afresh and the connections
with the most unread bytes are cut off, largest first, until it is back
under the limit.

A store that cannot write (a full disk, an I/O error). Nothing acknowledged
is lost and the server stays up. When a commit fails, no reply waiting for it
goes out: each request it answered gets a `StoreUnavailable` error instead
(the outbox holds reply frames, which name their requests). The changes of
that batch live only in memory, so the server brings the memory back to what
the store holds: it cuts every connection (their messages in flight would go
back anyway) and reloads the broker from the store's last commit, as a start
does. It then runs *degraded*: `store_unavailable` holds the reason, the
admission checks refuse changes that add data up front, the store gives back
the room it keeps for this (`Store.release_room`) so that confirms, which
free space, can still be written, and every `Limits.reclaim_interval` a probe
(`Store.probe`) checks whether the store can write again with its room kept;
when it can, `store_unavailable` goes back to None. A failed reclaim round
makes the server degraded the same way (nothing waits on it, so nothing is
reloaded). A start on a full disk serves what the store holds, degraded.
Only a store that cannot even be read back (damage) stops the server: `failed`
tells `run` to stop the process.

PostgreSQL (``store=URL``, `store.postgres`). The same group commit, the
store a `PostgresStore` holding the part of the group numbered
`member_index` (the part is taken, fenced, before the listener accepts
anything). The group's addresses live in the database: every
`PART_CHECK_INTERVAL` a timer checks that the part is still ours (a fenced
round trip) and reads every part's owner into `members`, so MEMBERS from any
member names the current owners. That check, the start's claim and read,
and a standby's watch and takeover run on threads of their own
(`_off_loop`): a slow or unreachable database does not stall the clients
meanwhile (commits are asyncio calls already). A part taken over by another
server (`PartLost`) stops this one, like a damaged store: it must not serve
what it no longer owns. A database that cannot be reached is handled as a failed
commit: sends refused, connections cut, and the part read back once the
database answers again (`PostgresStore.reload` retries for
`store.postgres.RECONNECT_SECONDS`, through every host of a multi-host URL,
blocking the loop meanwhile: nothing is answered while the store is unsure).
With ``standby=True`` the server binds its port but accepts nothing: every
`STANDBY_POLL_INTERVAL` it looks for a part whose lock no session has held
for `store.postgres.ORPHAN_GRACE` (`OrphanWatch`), takes it, and once it has one it serves it under that
member index, restored from the database, so the ids consumers hold keep
routing to it.

Ids. Every start numbers messages from an epoch read off the wall clock
(`first_id`), above every id an earlier run handed out, so that a confirm
retried across a restart can never name another message, even in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import operator
import os
import signal
import ssl as ssl_module
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .._version import __version__
from ..core import Broker
from ..core.journal import Snapshot, now_ms
from ..errors import ErrorCode
from ..protocol.codecs import error_frame
from ..protocol.frames import HEADER, HEADER_SIZE, MAX_MEMBERS, MEMBER_SHIFT
from ..store import Store, StoreError
from ..store.postgres_parts import PartLost
from .http import HttpListener
from .limits import Limits
from .metrics import MetricsEndpoint, RequestStats
from .security import TlsGate
from .session import Session

if TYPE_CHECKING:
    from ..store.postgres import Batch, PostgresStore

    AnyStore: TypeAlias = Store | PostgresStore

__all__ = [
    "Server",
    "run",
    "new_event_loop",
    "first_id",
    "PART_CHECK_INTERVAL",
    "STANDBY_POLL_INTERVAL",
    "WALL_CHECK_INTERVAL",
]

log = logging.getLogger("dbqueue.server")

# Ids: each start numbers from ``ID_STEPS_PER_MS`` ids for every millisecond of wall-clock time since
# ``ID_ORIGIN_MS`` (2025-01-01 UTC). A start thus comes above every id an earlier run of the same
# member handed out, provided that run handed out fewer than ID_STEPS_PER_MS ids per millisecond of
# its life on average (32.8 million a second; ids a queue takes in blocks and does not use count) and
# the wall clock did not go back between the two starts (nothing is remembered across a restart in
# memory, so nothing can detect it). Room: 2**41 ms after the origin is 2094-09-07, and
# 2**41 * ID_STEPS_PER_MS = 2**56, the ids below a member's index byte (`MEMBER_SHIFT`).
ID_ORIGIN_MS = 1_735_689_600_000
ID_STEPS_PER_MS = 1 << 15
_ID_ROOM = 1 << MEMBER_SHIFT
_NEVER = float("inf")  # `Server.expiry_due` with no sweep pending

# Seconds between two checks of the broker's mapping to Unix time against the wall clock (`Broker.follow_wall`).
WALL_CHECK_INTERVAL = 1.0

# With a PostgreSQL store: seconds between two checks of the part and reads of the members,
# and between two attempts of a standby to take a part whose owner is gone.
PART_CHECK_INTERVAL = 1.0
STANDBY_POLL_INTERVAL = 0.2
# A PostgreSQL call off the loop (`_off_loop`) that has not answered after this many seconds is logged, again
# every as many seconds, while the loop goes on serving; keepalives and tcp_user_timeout end it on a dead link.
PG_CALL_WARNING = 5.0

T = TypeVar("T")


class Server:
    """A dbqueue server inside the running asyncio loop.

    ``port=0`` picks a free port; `port` holds the real one after `start`.
    ``limits`` holds every limit and tuning setting (`Limits`: message size,
    queues, connections, messages in flight, unread replies, idle timeout...).
    ``metrics_port`` serves Prometheus metrics on ``host:metrics_port/metrics``.
    ``http_port`` serves the SQS API and ``/metrics`` on ``host:http_port``
    (`http.HttpListener`; 0 picks a free port, `http_port` holds it after
    `start`): with ``sqs_credentials`` (access key id -> secret access key)
    every SQS request must be signed with one of them; without them but with
    ``auth_token``, signed with the token as the secret of access key id
    ``dbqueue`` (`http.TOKEN_ACCESS_KEY_ID`); with neither, unsigned requests
    are accepted and ``host`` must be loopback unless ``insecure``.
    ``data_dir`` keeps every queue and unconfirmed message in a SQLite store
    there; ``sync`` is "os" (a commit reaches the OS before the reply: survives
    a crash of the process) or "disk" (fsync first: survives a power cut).
    ``store`` (a libpq URL or connection string, multi-host allowed) keeps
    them in PostgreSQL instead, as the part ``member_index`` of a group sharing
    that database; ``members`` then comes from the database. ``standby`` (with
    ``store``) waits for a part whose owner is gone and takes it over.
    ``members`` lists every server of its group ("host:port", this one
    included, at ``member_index``): clients discover the group from any member,
    and the top byte of every id says which member handed it out.
    ``auth_token`` makes every connection start with a Hello carrying it;
    ``ssl`` serves TLS.

    Raises `ValueError` for a ``sync`` or ``member_index`` out of range, both
    ``data_dir`` and ``store``, ``standby`` without ``store``, or an
    ``http_port`` on a non-loopback ``host`` without ``sqs_credentials`` or ``insecure``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3003,
        *,
        limits: Limits | None = None,
        metrics_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        sync: str = "os",
        members: list[str] | None = None,
        member_index: int = 0,
        auth_token: bytes | None = None,
        ssl: ssl_module.SSLContext | None = None,
        http_port: int | None = None,
        sqs_credentials: Mapping[str, str] | None = None,
        insecure: bool = False,
        store: str | None = None,
        standby: bool = False,
        advertise: str | None = None,
    ) -> None:
        if data_dir is not None and store is not None:
            raise ValueError("data_dir and store are exclusive: a server keeps its messages in one store")
        if standby and store is None:
            raise ValueError("standby needs a PostgreSQL store: it takes over a part kept there")
        if sync not in ("os", "disk"):
            raise ValueError(f"sync must be 'os' or 'disk', got {sync!r}")
        if advertise is not None and not _is_host_port(advertise):
            raise ValueError(f"advertise must be HOST:PORT, got {advertise!r}")
        if not 0 <= member_index < MAX_MEMBERS:
            raise ValueError(f"member_index must be 0 .. {MAX_MEMBERS - 1}, got {member_index}")
        self.host = host
        self.port = port
        # The address clients are told (MEMBERS, a PostgreSQL group's table): the bound one unless given,
        # which a server bound to 0.0.0.0 or behind a NAT must be.
        self.advertise = advertise
        self.limits = limits = limits or Limits()
        # Copies of the limits read most often (sessions read the first four on every request).
        self.max_message_size = limits.max_message_size
        self.max_connections = limits.max_connections
        self.max_in_flight = limits.max_in_flight
        self.max_output_buffer = limits.max_output_buffer
        self.idle_timeout = limits.idle_timeout
        self.max_output_total = limits.max_output_total
        self.name = f"dbqueue/{__version__}"
        self.members = list(members or [])
        self.member_index = member_index
        self.broker = self._new_broker()
        self.auth_token = auth_token or None
        self.ssl = ssl
        self._tls: TlsGate | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._wall_check: asyncio.TimerHandle | None = None
        # Set to the error when the server cannot go on (its store cannot be read back): `run` then stops.
        self.failed: asyncio.Future[BaseException] | None = None
        # Why the store cannot write (None: it can). While set, sends and creations are refused.
        self.store_unavailable: str | None = None
        # Unread replies: the bytes each transport known to be buffering had at its last write, and their sum.
        self._buffering: dict[asyncio.Transport, int] = {}
        self._unsent = 0
        self._buffering_checked = 0  # how many `_buffering` held when its stale entries were last dropped
        self.sessions: set[Session] = set()
        self.clock: Callable[[], float] = _unstarted_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0
        # When the pending expiry sweep fires; infinity with none pending (read in place by `fastpath`).
        self.expiry_due = _NEVER
        self.metrics_port = metrics_port
        self.request_stats: RequestStats | None = (
            RequestStats() if metrics_port is not None or http_port is not None else None
        )
        self._metrics: MetricsEndpoint | None = None
        self.data_dir = data_dir
        self.sync = sync
        self.store: AnyStore | None = None
        self.store_url = store
        self.standby = standby
        self._part_check: asyncio.TimerHandle | None = None
        self._part_checking: asyncio.Task[None] | None = None
        self._pg_calls: set[asyncio.Future[Any]] = set()  # PostgreSQL calls under way on threads (`_off_loop`)
        self._pg_threads: set[threading.Thread] = set()  # their threads, while they run
        # PostgreSQL: commits are written without blocking the loop (`_write`), up to `store.postgres.WRITERS` at
        # once; meanwhile, `_held` counts each connection's replies waiting for a commit, so that `write` keeps
        # their order.
        self._writes_async = False
        self._writes: deque[_Write] = deque()  # in the order they began
        self._write_error: StoreError | None = None
        self._held: dict[asyncio.Transport, int] = {}
        self._standby_task: asyncio.Task[None] | None = None
        self._outbox: list[tuple[asyncio.Transport, bytes]] = []  # replies waiting for the next commit
        self._closing: list[asyncio.Transport] = []
        self._commit_scheduled = False
        self._reclaimer: asyncio.TimerHandle | None = None
        # Made now, so that a listener refused (a public host without credentials) stops the server before it starts.
        self.http_port = http_port
        self._http: HttpListener | None = (
            HttpListener(self, http_port, credentials=sqs_credentials, token=self.auth_token, insecure=insecure)
            if http_port is not None
            else None
        )

    def _new_broker(self) -> Broker:
        limits = self.limits
        return Broker(
            default_capacity=limits.default_capacity,
            max_batch_bytes=limits.max_message_size,
            first_id=(self.member_index << MEMBER_SHIFT) + 1,
            max_queues=limits.max_queues,
            max_queue_name=limits.max_queue_name,
            max_in_flight=limits.max_in_flight,
            default_visibility_ms=limits.default_visibility_ms,
        )

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """The address clients are given for this server: ``advertise`` if set, else `address`."""
        return self.advertise or self.address

    @property
    def tls_handshakes(self) -> int:
        """TLS connections whose handshake is under way (they count against `Limits.max_unauthenticated`)."""
        return 0 if self._tls is None else self._tls.in_progress

    @property
    def unsent_bytes(self) -> int:
        """Replies waiting in transports' buffers over all connections, as last counted (it may be stale high)."""
        return self._unsent

    def output_room(self) -> int:
        """Bytes of replies that may still wait unread, over all connections, before `Limits.max_output_total`
        is passed (0 if none): for code that builds large replies and can stop before it passes it."""
        room = self.max_output_total - self._unsent
        if room <= 0 and self._buffering:
            self._recount()  # the running total drifts high as buffers drain unseen
            room = self.max_output_total - self._unsent
        return max(room, 0)

    async def start(self) -> None:
        """Bind and start accepting connections; raise `OSError` if the address is taken."""
        loop = self._loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.broker.set_clock(self.clock)  # its enqueue times and figures read the loop's clock
        self.failed = loop.create_future()
        self._number_from_now(self.broker)
        if self.data_dir is not None and self.store is None:
            self._open_store(self.data_dir, loop)
        factory: Callable[[], asyncio.Protocol]
        if self.ssl is None:
            factory = self._session
        else:
            limits = self.limits
            factory = self._tls = TlsGate(self.ssl, limits.handshake_timeout, limits.max_unauthenticated, self._session)
        # With PostgreSQL the port is bound first (the part's row names it), and accepts once the part is ours.
        self._listener = await loop.create_server(
            factory,
            self.host,
            self.port,
            backlog=self.limits.backlog,
            reuse_address=True,
            start_serving=self.store_url is None,
        )
        if self.idle_timeout:
            self._reap_idle(self.idle_timeout, loop)
        self._wall_check = loop.call_later(WALL_CHECK_INTERVAL, self._follow_wall, loop)
        self.port = self._listener.sockets[0].getsockname()[1]
        if self.store_url is not None:
            if self.standby:
                self._standby_task = loop.create_task(self._await_part(self.store_url, loop))
            else:
                store = await self._off_loop(self._claim, self.store_url, what="taking the part")
                try:
                    snapshot, members = await self._off_loop(_read_part, store, what="reading the part")
                except BaseException:
                    store.close()
                    raise
                self._open_postgres(store, snapshot, members, loop)
                await self._listener.start_serving()
        if not self.members:
            self.members = [self.advertised]
        if self.metrics_port is not None:
            assert self.request_stats is not None  # made with a metrics port
            self._metrics = MetricsEndpoint(
                self.host, self.metrics_port, self.request_stats, self._queue_figures, self._connection_count
            )
            await self._metrics.start()
            self.metrics_port = self._metrics.port
        if self._http is not None:
            await self._http.start()
            self.http_port = self._http.port
        advertised = f", advertised as {self.advertise}" if self.advertise else ""
        log.info("dbqueue listening on %s%s (max message %d bytes)", self.address, advertised, self.max_message_size)

    def _session(self) -> Session:
        return Session(self)

    def _number_from_now(self, broker: Broker) -> None:
        # Ids from the wall clock's epoch on (`first_id`): a snapshot of nothing but the
        # first free id is how a broker learns where an earlier run's ids end.
        broker.restore(Snapshot(queues=[], next_id=first_id(self.member_index, now_ms())), self.clock())

    async def stop(self) -> None:
        """Stop accepting, close every connection (their in-flight messages go back) and wait."""
        if self._listener is not None:
            self._listener.close()
        if self._tls is not None:
            self._tls.close()
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None
        if self._http is not None:
            await self._http.stop()  # before the store closes: what SQS held goes back to its queues
        for session in list(self.sessions):
            session.release()  # now, not at connection_lost: the store must hear of it before it closes
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)  # let each closed session's connection_lost run
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
            self.expiry_due = _NEVER
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._wall_check is not None:
            self._wall_check.cancel()
            self._wall_check = None
        if self._standby_task is not None:
            self._standby_task.cancel()
            self._standby_task = None
        if self._part_check is not None:
            self._part_check.cancel()
            self._part_check = None
        if self._part_checking is not None:
            self._part_checking.cancel()
            self._part_checking = None
        if self._pg_calls:  # the store's session is free again before it commits and closes (bounded: keepalives)
            await asyncio.wait(list(self._pg_calls), timeout=2 * PG_CALL_WARNING)
        while self._writes:  # their replies go out (or their errors) before the store closes
            await asyncio.wait([record.task for record in self._writes if record.task is not None])
        if self.store is not None:
            self._commit(reload=False, blocking=True)
            if self._reclaimer is not None:
                self._reclaimer.cancel()
            try:
                self.store.close()
            except StoreError as exc:  # what it failed to write was never acknowledged
                log.error("closing the store: %s; the next start reads it as last committed", exc)
            self.store = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        log.info("dbqueue on %s stopped", self.address)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Start if needed and serve until cancelled."""
        if self._listener is None:
            await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # --- replies and group commit ----------------------------------------------------

    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write a reply now in memory; with a store, after the next commit (group commit)."""
        if self.store is None:
            transport.write(data)
            unsent = transport.get_write_buffer_size()
            if unsent:
                self._buffered(transport, unsent)
            elif self._buffering:
                self._drained(transport)
            return
        self._outbox.append((transport, data))
        if self._writes_async:
            held = self._held
            held[transport] = held.get(transport, 0) + 1
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self._loop.call_soon(self._commit)  # type: ignore[union-attr]  # set by start, before any session

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write a reply now, even with a store: for replies that report no change to it (reads).

        With writes under way (PostgreSQL), a connection that has replies waiting for a commit gets
        this one after them: replies keep the order of their requests."""
        if self._held and transport in self._held:
            self.send(transport, data)
            return
        self._write_out(transport, data)

    def _write_out(self, transport: asyncio.Transport, data: bytes) -> None:
        transport.write(data)
        unsent = transport.get_write_buffer_size()
        if unsent:
            self._buffered(transport, unsent)
        elif self._buffering:
            self._drained(transport)

    def _buffered(self, transport: asyncio.Transport, unsent: int) -> None:
        # A write left ``unsent`` bytes in the transport's buffer: bound them, for this
        # connection and over all connections (the running total moves by this one's change).
        if unsent > self.max_output_buffer:
            self._cut_off(transport, unsent, f"limit {self.max_output_buffer} per connection")
            return
        buffering = self._buffering
        self._unsent += unsent - buffering.get(transport, 0)
        buffering[transport] = unsent
        if self._unsent > self.max_output_total:
            self._shed()
        elif len(buffering) > 2 * self._buffering_checked + 64:
            self._recount()  # drop the entries of transports that drained or went, now and then

    def _drained(self, transport: asyncio.Transport) -> None:
        # A write left nothing unsent: the transport no longer counts.
        unsent = self._buffering.pop(transport, None)
        if unsent is not None:
            self._unsent -= unsent

    def _recount(self) -> None:
        # Read every buffering transport's size afresh (the total drifts high as buffers
        # drain unseen) and forget those with nothing unsent. O(transports buffering).
        buffering = {}
        for transport in self._buffering:
            unsent = transport.get_write_buffer_size()
            if unsent:
                buffering[transport] = unsent
        self._buffering = buffering
        self._buffering_checked = len(buffering)
        self._unsent = sum(buffering.values())

    def _shed(self) -> None:
        # Unread replies over all connections passed max_output_total: cut off the
        # connections with the most of them, largest first, until the rest fit.
        self._recount()
        limit = self.max_output_total
        if self._unsent <= limit:
            return
        for transport, unsent in sorted(self._buffering.items(), key=operator.itemgetter(1), reverse=True):
            self._cut_off(transport, unsent, f"{self._unsent} over all connections, limit {limit}")
            if self._unsent <= limit:
                break

    def _cut_off(self, transport: asyncio.Transport, unsent: int, limit: str) -> None:
        # A client that stops reading while its replies pile up is cut off (its
        # messages in flight go back) before it can exhaust the server's memory.
        log.warning("closing %s: %d bytes of replies unread (%s)", transport.get_extra_info("peername"), unsent, limit)
        transport.abort()
        self._drained(transport)

    def _reap_idle(self, idle_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        # Close connections that sent nothing for idle_timeout seconds: one timer for all. A lone
        # CONFIRM does not read the clock: it marks its session stirred, and this sweep dates the
        # request to now (it came since the last sweep): never early, and late by at most a sweep's
        # interval more. Run every eighth of the timeout (0.05 s at the shortest), a connection
        # goes a quarter of the timeout late at most.
        now = self.clock()
        cutoff = now - idle_timeout
        for session in list(self.sessions):
            if session.stirred:
                session.stirred = False
                session.last_active = now
            elif session.last_active < cutoff and session.transport is not None and not session.waiters_active():
                log.info("closing %s: idle for %g s", session.peer, idle_timeout)
                session.transport.close()
        self._reaper = loop.call_later(max(0.05, idle_timeout / 8), self._reap_idle, idle_timeout, loop)

    def _follow_wall(self, loop: asyncio.AbstractEventLoop) -> None:
        moved = self.broker.follow_wall()
        if moved:
            log.info("the wall clock stepped %+.0f ms: enqueue times are mapped to it anew", moved)
        self._wall_check = loop.call_later(WALL_CHECK_INTERVAL, self._follow_wall, loop)

    def close_after_send(self, transport: asyncio.Transport) -> None:
        """Close a connection once the replies already sent to it are out."""
        if self.store is None:
            transport.close()
        else:
            self._closing.append(transport)

    def _commit(self, reload: bool = True, blocking: bool = False) -> None:
        # Everything handled since the last commit, across every connection, in one
        # transaction; then the replies it allows. Runs once per loop iteration at most.
        self._commit_scheduled = False
        store = self.store
        if store is None:
            return
        if self._writes_async and not blocking:
            assert not isinstance(store, Store)  # `_writes_async` only with a PostgresStore
            if self._write_error is not None:
                return  # a write failed: the others under way end first (`_settle`)
            if store.pending():
                if store.can_begin():
                    self._start_write(store)
                return  # else it begins when a write under way ends (`_settle`)
            if self._writes:  # nothing to write, but these replies may report what a write under way holds
                last = self._writes[-1]
                last.outbox += self._outbox
                last.closing += self._closing
                self._outbox = []
                self._closing = []
                return
        try:
            if store.pending():
                store.commit()
        except StoreError as exc:
            self._commit_failed(store, exc, reload)
            return
        outbox, self._outbox = self._outbox, []
        self._flush(outbox)
        closing, self._closing = self._closing, []
        for transport in closing:
            transport.close()

    def _flush(self, outbox: list[tuple[asyncio.Transport, bytes]]) -> None:
        # The replies a commit allows, in the order they were made.
        held = self._held
        for transport, data in outbox:
            if held:
                count = held.pop(transport, 0) - 1
                if count > 0:
                    held[transport] = count
            if not transport.is_closing():
                self._write_out(transport, data)

    def _start_write(self, store: PostgresStore) -> None:
        # Async group commit (PostgreSQL): the batch is written while the loop goes on handling requests;
        # its replies (and connections to close after them) wait for it, those of later requests for later ones.
        record = _Write(store.begin(), self._outbox, self._closing)
        self._outbox = []
        self._closing = []
        self._writes.append(record)
        record.task = self._loop.create_task(self._write(store, record))  # type: ignore[union-attr]  # set by start

    async def _write(self, store: PostgresStore, record: _Write) -> None:
        try:
            await store.write(record.batch)
        except StoreError as exc:
            record.error = exc
            if self._write_error is None:
                self._write_error = exc
        finally:
            record.done = True
            store.finish(record.batch, written=record.error is None)
        self._settle(store)

    def _settle(self, store: PostgresStore) -> None:
        # Writes finish in any order; their replies go out in the order the writes began. After a failure,
        # once every write under way is over, the rest is answered with errors and the part read back.
        writes = self._writes
        while writes and writes[0].done and writes[0].error is None:
            record = writes.popleft()
            self._flush(record.outbox)
            for transport in record.closing:
                transport.close()
        failure = self._write_error
        if failure is not None:
            if any(not record.done for record in writes):
                return
            self._write_error = None
            self._outbox[:0] = [reply for record in writes for reply in record.outbox]
            self._closing[:0] = [transport for record in writes for transport in record.closing]
            writes.clear()
            self._commit_failed(store, failure, reload=True)
            return
        if self._outbox or self._closing or store.pending():
            self._commit()

    def _commit_failed(self, store: AnyStore, exc: StoreError, reload: bool) -> None:
        # Nothing of the batch was written: every reply waiting for it becomes a StoreUnavailable
        # error for the request it answered, and the memory goes back to the store's last commit.
        reason = str(exc)
        outbox, self._outbox = self._outbox, []
        self._held.clear()
        log.error("the store cannot commit, %d replies answered StoreUnavailable: %s", len(outbox), reason)
        for transport, data in outbox:
            if not transport.is_closing():
                transport.write(_unavailable(data, reason))
        self._degrade(store, reason)
        if reload:
            self._reload(store)
            return
        try:  # stopping: the store closes next, with nothing of the batch
            store.discard()
        except StoreError as unreadable:
            log.error("the store cannot be read back: %s", unreadable)

    def _degrade(self, store: AnyStore, reason: str) -> None:
        # From now on sends are refused up front, and the room the store kept is given back for the
        # writes that free space (confirms); the reclaimer probes the store until it writes again.
        if self.store_unavailable is None:
            log.error("sends refused until the store can write again: %s", reason)
        self.store_unavailable = reason
        store.release_room()

    def _join_pg_threads(self) -> None:
        # Before the loop's own blocking calls on the store's session (a reload or a probe may close it and open
        # another): the calls on threads end first, so that no thread is inside libpq on a connection the loop
        # closes. Bounded: a dead link fails them within seconds (keepalives, tcp_user_timeout).
        for thread in list(self._pg_threads):
            thread.join(2 * PG_CALL_WARNING)

    def _reload(self, store: AnyStore) -> None:
        # Bring the memory back to the store's last commit, as a start does. Every connection is
        # cut first (its messages in flight would come back anyway): none may go on with a broker
        # that is gone. The old broker is detached from the store before they give back what they held.
        self._join_pg_threads()
        old = self.broker
        old.journal = None
        for queue in old.queues.values():
            queue.journal = None
        closing = list(self._closing)
        self._closing = []
        for session in list(self.sessions):
            session.release()
            if session.transport is not None:
                closing.append(session.transport)
        for transport in closing:
            transport.close()  # after the StoreUnavailable errors already written to it
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
            self.expiry_due = _NEVER
        try:
            snapshot = store.reload()
        except StoreError as exc:
            self._fail(exc)
            return
        self.broker = self._new_broker()
        self.broker.set_clock(self.clock)
        self._number_from_now(self.broker)
        restored = self.broker.restore(snapshot, self.clock())
        self.broker.attach(store)
        if self._http is not None:
            self._http.rebind()  # what SQS held or parked on the old broker is gone with it
        self.schedule_expiry()
        log.warning(
            "reloaded the store's last commit: %d queues, %d messages; %d connections cut",
            len(snapshot.queues),
            restored,
            len(closing),
        )
        if self.store_url is not None:
            self._probe(store)  # the database answered the reload: sends need not wait for the next round
        self._loop.call_later(1.0, self._forget, closing)  # type: ignore[union-attr]  # set by start

    def _forget(self, cut: list[asyncio.Transport]) -> None:
        # The broker a reload replaced is garbage once the connections it served are gone, but its
        # queues and records point at each other, and `run` froze what lived at the start out of the
        # collector's reach: give it back now. A connection cut then that still has not taken its
        # errors goes without them.
        for transport in cut:
            transport.abort()
        self._loop.call_soon(_collect_garbage)  # type: ignore[union-attr]  # after their connection_lost

    def _fail(self, exc: StoreError) -> None:
        # The store cannot even be read back (damage): cut every connection, stop accepting,
        # and let `run` stop the process, which exits non-zero.
        log.critical("the store failed; stopping so that nothing is served that the disk does not hold", exc_info=exc)
        self._outbox.clear()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        if self._listener is not None:
            self._listener.close()
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(exc)

    def _open_store(self, data_dir: str | os.PathLike[str], loop: asyncio.AbstractEventLoop) -> None:
        store = self.store = Store.open(data_dir, self.sync)
        snapshot = store.load()
        restored = self.broker.restore(snapshot, self.clock())
        self.broker.attach(store)
        log.info(
            "store %s: %d queues and %d messages restored (sync=%s)",
            self.data_dir,
            len(snapshot.queues),
            restored,
            self.sync,
        )
        self.schedule_expiry()
        try:
            store.keep_room()
        except StoreError as exc:  # a start on a full disk serves what the store holds
            self._degrade(store, str(exc))
        self._reclaim(loop)

    def _reclaim(self, loop: asyncio.AbstractEventLoop) -> None:
        # Give the space of confirmed messages back to the file system, a little at a time,
        # on a timer of its own; while the store cannot write, probe it too. A failed round
        # is logged and the next one tries again; a failed server gets no more rounds.
        self._commit()
        store = self.store
        if store is None or (self.failed is not None and self.failed.done()):
            return
        try:
            store.reclaim(self.limits.reclaim_pages)  # without its room, the store compacts nothing
        except StoreError as exc:
            try:
                store.discard()  # a compaction it could not commit: the store's bookkeeping goes back with it
            except StoreError as unreadable:
                self._fail(unreadable)
                return
            self._degrade(store, str(exc))
        else:
            if self.store_unavailable is not None:
                self._probe(store)
        self._reclaimer = loop.call_later(self.limits.reclaim_interval, self._reclaim, loop)

    def _probe(self, store: AnyStore) -> None:
        # Degraded: can the store write again, with its room kept? Then sends are accepted again.
        self._join_pg_threads()
        try:
            store.probe()
        except PartLost as exc:
            self._fail(exc)
            return
        except StoreError as exc:
            self.store_unavailable = str(exc)
            log.debug("the store cannot write yet: %s", exc)
            return
        log.warning("the store writes again: sends accepted (it was: %s)", self.store_unavailable)
        self.store_unavailable = None

    # --- PostgreSQL: the part, the members, the standby -------------------------------------

    def _claim(self, url: str) -> PostgresStore:
        from ..store.postgres import PostgresStore  # psycopg is needed only with a PostgreSQL store

        return PostgresStore.open(url, part=self.member_index, address=self.advertised)

    def _open_postgres(
        self, store: PostgresStore, snapshot: Snapshot, members: list[str], loop: asyncio.AbstractEventLoop
    ) -> None:
        # The part is ours, read by `_read_part` off the loop: serve it under its member index.
        if store.part != self.member_index:
            self.member_index = store.part
            self.broker = self._new_broker()
            self.broker.set_clock(self.clock)
            self._number_from_now(self.broker)
        self.store = store
        self._writes_async = True
        restored = self.broker.restore(snapshot, self.clock())
        self.broker.attach(store)
        self.members = members
        log.info(
            "store %s: %d queues and %d messages restored (epoch %d)",
            store.where,
            len(snapshot.queues),
            restored,
            store.epoch,
        )
        self.schedule_expiry()
        self._reclaim(loop)
        self._part_check = loop.call_later(PART_CHECK_INTERVAL, self._check_part, loop)

    async def _off_loop(self, call: Callable[..., T], *args: Any, what: str) -> T:
        # ``call(*args)`` on a daemon thread of its own (a psycopg call that may wait on the database), while
        # the loop goes on; logged every PG_CALL_WARNING seconds it has not answered. A daemon thread, not the
        # loop's executor: one stuck on a dead database must not hold the process at exit. Cancelling the
        # awaiting task leaves the call to finish (`stop` waits for it a while before closing the store).
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]  # call's own result: T, None only if T is

        def target() -> None:
            try:
                result = call(*args)
            except BaseException as exc:  # handed to the loop, which raises it in the awaiting task
                deliver: tuple[T | None, BaseException | None] = (None, exc)
            else:
                deliver = (result, None)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(settle, *deliver)

        self._pg_calls.add(future)
        future.add_done_callback(self._pg_calls.discard)
        thread = threading.Thread(target=target, name=f"dbqueue-postgres: {what}", daemon=True)
        self._pg_threads.add(thread)
        future.add_done_callback(lambda _: self._pg_threads.discard(thread))
        thread.start()
        started = time.monotonic()
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), PG_CALL_WARNING)
            except TimeoutError:
                log.warning("%s: the database has not answered for %.0f s", what, time.monotonic() - started)

    async def _await_part(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        # A standby: watch for a part whose owner has been gone for the grace period, take it, serve it.
        from ..store.postgres import OrphanWatch, PostgresStore

        log.info("standby on %s: waiting for a part whose owner is gone", self.address)
        watch: OrphanWatch | None = None
        store: PostgresStore | None = None
        try:
            while store is None:
                try:
                    if watch is None:
                        watch = await self._off_loop(PostgresStore.watch, url, what="standby: watching")
                    store = await self._off_loop(
                        watch.poll, self.advertised, time.monotonic(), what="standby: looking for a part"
                    )
                except StoreError as exc:
                    log.warning("standby: %s", exc)
                if store is None:
                    await asyncio.sleep(STANDBY_POLL_INTERVAL)
        finally:
            if watch is not None:
                watch.close()
        log.warning("standby on %s: taking over part %d (epoch %d)", self.address, store.part, store.epoch)
        try:
            snapshot, members = await self._off_loop(_read_part, store, what="reading the part taken over")
            self._open_postgres(store, snapshot, members, loop)
        except StoreError as exc:
            self._fail(exc)
            return
        self._standby_task = None
        assert self._listener is not None  # bound by start
        await self._listener.start_serving()

    def _check_part(self, loop: asyncio.AbstractEventLoop) -> None:
        # Is the part still ours, and who owns the others? Asked off the loop (`_check_part_now`).
        self._part_check = None
        store = self.store
        if store is None or (self.failed is not None and self.failed.done()):
            return
        from ..store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)  # the timer runs with a PostgreSQL store only
        self._part_checking = loop.create_task(self._check_part_now(store, loop))

    async def _check_part_now(self, store: PostgresStore, loop: asyncio.AbstractEventLoop) -> None:
        # A part taken over stops this server; a database that does not answer is handled as a failed commit
        # (sends refused, reloaded once it answers). The next check is due PART_CHECK_INTERVAL after this one ends.
        try:
            members = await self._off_loop(store.check, what="checking the part")
        except PartLost as exc:
            if self.store is store:
                self._fail(exc)
            return
        except StoreError as exc:
            if self.store is not store:
                return
            self._degrade(store, str(exc))
            if not self._writes:  # else the writes under way fail too, and reload
                self._reload(store)
        else:
            if members and self.store is store:
                self.members = members
        finally:
            self._part_checking = None
        if self.store is store and (self.failed is None or not self.failed.done()):
            self._part_check = loop.call_later(PART_CHECK_INTERVAL, self._check_part, loop)

    def stats(self) -> dict[str, object]:
        """Server-wide figures and every queue's, as LIST_QUEUES answers them."""
        return {"server": self.name, "connections": len(self.sessions), "queues": self._queue_figures()}

    def _queue_figures(self) -> list[dict[str, Any]]:
        return [queue.stats() for queue in self.broker.queues.values()]

    def _connection_count(self) -> int:
        return len(self.sessions)

    # --- deadlines -------------------------------------------------------------------

    def expire_by(self, deadline: float) -> None:
        """Make sure the timer fires by ``deadline``, one just set: usually a timer is
        already due sooner, and nothing needs computing."""
        if deadline < self.expiry_due:
            self.schedule_expiry()

    def schedule_expiry(self) -> None:
        """Make sure the timer fires by the earliest in-flight deadline."""
        deadline = self.broker.next_deadline()
        if deadline is None:
            return
        when = max(deadline, self.clock() + self.limits.sweep_resolution)
        if self._expiry is not None:
            if self.expiry_due <= when:  # never postpone a pending sweep
                return
            self._expiry.cancel()
        self._expiry_at = self.expiry_due = when
        self._expiry = self._loop.call_at(when, self._expire)  # type: ignore[union-attr]  # set by start

    def _expire(self) -> None:
        self._expiry = None
        self.expiry_due = _NEVER
        count = self.broker.expire(self.clock())
        if count:
            log.debug("requeued %d messages whose timeout passed", count)
        self.schedule_expiry()


class _Write:
    # A batch being written (`Server._write`) and what waits for it: replies, and connections to close after them.
    __slots__ = ("batch", "outbox", "closing", "task", "done", "error")

    def __init__(self, batch: Batch, outbox: list[tuple[asyncio.Transport, bytes]], closing: list[asyncio.Transport]):
        self.batch = batch
        self.outbox = outbox
        self.closing = closing
        self.task: asyncio.Task[None] | None = None
        self.done = False
        self.error: StoreError | None = None


def _unstarted_clock() -> float:
    raise RuntimeError("the server has not been started")


def first_id(member_index: int, now_ms: int) -> int:
    """The first id a server numbered ``member_index`` hands out when it starts at ``now_ms`` (Unix ms).

    Above every id of an earlier start of the same member, within the guarantee
    given at `ID_STEPS_PER_MS`. A wall clock before the origin starts at 1; one
    past the room for ids raises `ValueError` (the server refuses to start
    rather than hand out ids of another member).
    """
    steps = max(0, now_ms - ID_ORIGIN_MS) * ID_STEPS_PER_MS
    if steps + ID_STEPS_PER_MS >= _ID_ROOM:  # not even this millisecond's ids would fit
        raise ValueError(f"the wall clock reads {now_ms} ms, past the ids' room (until 2094): ids would overflow")
    return (member_index << MEMBER_SHIFT) + steps + 1


def _collect_garbage() -> None:
    # A full collection, frozen objects included; those alive after it are frozen again.
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()


def _unavailable(replies: bytes, reason: str) -> bytes:
    # The reply frames of a batch whose commit failed, each turned into a StoreUnavailable error
    # for the request it answered (a frame's header names its request).
    errors = []
    offset = 0
    while offset + HEADER_SIZE <= len(replies):
        _, _, _, request_id, length = HEADER.unpack_from(replies, offset)
        errors.append(error_frame(request_id, ErrorCode.STORE_UNAVAILABLE, reason))
        offset += HEADER_SIZE + length
    return b"".join(errors)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the stdlib's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(server: Server) -> None:
    """Run ``server`` in a new event loop until SIGINT or SIGTERM, then shut down cleanly.

    Raises the server's fatal error (`StoreError`) if it had to stop on its own.
    """
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        await server.start()
        # Everything alive now lives as long as the server: keep it out of every
        # garbage collection. Records and heap entries are the only container
        # objects made at speed, and almost all die by reference counting, so
        # collect the young generation less often than the default 700. A full
        # collection walks every live record (long, with many messages in flight)
        # to find cycles the young passes missed, which only long-lived connections
        # leave: run it after 1000 old-generation passes, not the default 10.
        gc.freeze()
        gc.set_threshold(50_000, 20, 1000)
        stopping: asyncio.Future[None] = loop.create_future()

        def stop() -> None:
            if not stopping.done():
                stopping.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        failed = server.failed
        assert failed is not None  # made by start
        either: list[asyncio.Future[Any]] = [stopping, failed]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            log.critical("shutting down: %s", failed.result())
        else:
            log.info("signal received, shutting down")
        await server.stop()
        if failed.done():
            raise failed.result()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _read_part(store: PostgresStore) -> tuple[Snapshot, list[str]]:
    # What a server needs of a part it took, read on a thread (`Server._off_loop`): its contents, the members.
    return store.load(), store.members()


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536

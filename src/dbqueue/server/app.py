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
  every `Limits.reclaim_interval`.

Replies. In memory, `send` writes a reply at once. With a store, a reply that
reports a change waits in the outbox until the change is committed:
everything handled in one loop iteration, over every connection, is one
transaction (group commit: the iteration's first such reply schedules
`_commit`), and the replies go out after it. Replies that report no change to
the store (`write`: reads) go out at once. A connection whose unread replies
pass `Limits.max_output_buffer` is cut off. If the store cannot commit, no
waiting reply goes out: every connection is cut, and `failed` tells `run` to
stop the process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl as ssl_module
from collections.abc import Callable
from typing import Any

from .._version import __version__
from ..core import Broker
from ..protocol.frames import MAX_MEMBERS, MEMBER_SHIFT
from ..store import Store, StoreError
from .limits import Limits
from .metrics import MetricsEndpoint, RequestStats
from .session import Session

__all__ = ["Server", "run", "new_event_loop"]

log = logging.getLogger("dbqueue.server")


class Server:
    """A dbqueue server inside the running asyncio loop.

    ``port=0`` picks a free port; `port` holds the real one after `start`.
    ``limits`` holds every limit and tuning setting (`Limits`: message size,
    queues, connections, messages in flight, unread replies, idle timeout...).
    ``metrics_port`` serves Prometheus metrics on ``host:metrics_port/metrics``.
    ``data_dir`` keeps every queue and unconfirmed message in a SQLite store
    there; ``sync`` is "os" (a commit reaches the OS before the reply: survives
    a crash of the process) or "disk" (fsync first: survives a power cut).
    ``members`` lists every server of its group ("host:port", this one
    included, at ``member_index``): clients discover the group from any member,
    and the top byte of every id says which member handed it out.
    ``auth_token`` makes every connection start with a Hello carrying it;
    ``ssl`` serves TLS.

    Raises `ValueError` for a ``sync`` or ``member_index`` out of range.
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
    ) -> None:
        if sync not in ("os", "disk"):
            raise ValueError(f"sync must be 'os' or 'disk', got {sync!r}")
        if not 0 <= member_index < MAX_MEMBERS:
            raise ValueError(f"member_index must be 0 .. {MAX_MEMBERS - 1}, got {member_index}")
        self.host = host
        self.port = port
        self.limits = limits = limits or Limits()
        # Copies of the limits read most often (sessions read the first four on every request).
        self.max_message_size = limits.max_message_size
        self.max_connections = limits.max_connections
        self.max_in_flight = limits.max_in_flight
        self.max_output_buffer = limits.max_output_buffer
        self.idle_timeout = limits.idle_timeout
        self.name = f"dbqueue/{__version__}"
        self.members = list(members or [])
        self.member_index = member_index
        self.broker = Broker(
            default_capacity=limits.default_capacity,
            max_batch_bytes=limits.max_message_size,
            first_id=(member_index << MEMBER_SHIFT) + 1,
            max_queues=limits.max_queues,
            max_queue_name=limits.max_queue_name,
            max_in_flight=limits.max_in_flight,
        )
        self.auth_token = auth_token or None
        self.ssl = ssl
        self._reaper: asyncio.TimerHandle | None = None
        # Set to the error when the server cannot go on (its store cannot commit): `run` then stops.
        self.failed: asyncio.Future[BaseException] | None = None
        self.sessions: set[Session] = set()
        self.clock: Callable[[], float] = _unstarted_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0
        self.metrics_port = metrics_port
        self.request_stats: RequestStats | None = RequestStats() if metrics_port is not None else None
        self._metrics: MetricsEndpoint | None = None
        self.data_dir = data_dir
        self.sync = sync
        self.store: Store | None = None
        self._outbox: list[tuple[asyncio.Transport, bytes]] = []  # replies waiting for the next commit
        self._closing: list[asyncio.Transport] = []
        self._commit_scheduled = False
        self._reclaimer: asyncio.TimerHandle | None = None

    @property
    def address(self) -> str:
        """``host:port`` as a client would connect to it."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections; raise `OSError` if the address is taken."""
        loop = self._loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.failed = loop.create_future()
        if self.data_dir is not None and self.store is None:
            self._open_store(self.data_dir, loop)
        self._listener = await loop.create_server(
            lambda: Session(self), self.host, self.port, backlog=self.limits.backlog, reuse_address=True, ssl=self.ssl
        )
        if self.idle_timeout:
            self._reap_idle(self.idle_timeout, loop)
        self.port = self._listener.sockets[0].getsockname()[1]
        if not self.members:
            self.members = [self.address]
        if self.metrics_port is not None:
            assert self.request_stats is not None  # made with a metrics port
            self._metrics = MetricsEndpoint(
                self.host, self.metrics_port, self.request_stats, self._queue_figures, self._connection_count
            )
            await self._metrics.start()
            self.metrics_port = self._metrics.port
        log.info("dbqueue listening on %s (max message %d bytes)", self.address, self.max_message_size)

    async def stop(self) -> None:
        """Stop accepting, close every connection (their in-flight messages go back) and wait."""
        if self._listener is not None:
            self._listener.close()
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None
        for session in list(self.sessions):
            session.release()  # now, not at connection_lost: the store must hear of it before it closes
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)  # let each closed session's connection_lost run
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self.store is not None:
            self._commit()
            if self._reclaimer is not None:
                self._reclaimer.cancel()
            self.store.close()
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
            if transport.get_write_buffer_size() > self.max_output_buffer:
                self._cut_off(transport)
            return
        self._outbox.append((transport, data))
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self._loop.call_soon(self._commit)  # type: ignore[union-attr]  # set by start, before any session

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write a reply now, even with a store: for replies that report no change to it (reads)."""
        transport.write(data)
        if transport.get_write_buffer_size() > self.max_output_buffer:
            self._cut_off(transport)

    def _cut_off(self, transport: asyncio.Transport) -> None:
        # A client that stops reading while its replies pile up is cut off (its
        # messages in flight go back) before it can exhaust the server's memory.
        log.warning(
            "closing %s: %d bytes of replies unread (limit %d)",
            transport.get_extra_info("peername"),
            transport.get_write_buffer_size(),
            self.max_output_buffer,
        )
        transport.abort()

    def _reap_idle(self, idle_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        # Close connections that sent nothing for idle_timeout seconds: one timer for all, run every
        # quarter of the timeout (0.05 s at the shortest), so a connection goes that much late at most.
        cutoff = self.clock() - idle_timeout
        for session in list(self.sessions):
            if session.last_active < cutoff and session.transport is not None and not session.waiters_active():
                log.info("closing %s: idle for %g s", session.peer, idle_timeout)
                session.transport.close()
        self._reaper = loop.call_later(max(0.05, idle_timeout / 4), self._reap_idle, idle_timeout, loop)

    def close_after_send(self, transport: asyncio.Transport) -> None:
        """Close a connection once the replies already sent to it are out."""
        if self.store is None:
            transport.close()
        else:
            self._closing.append(transport)

    def _commit(self) -> None:
        # Everything handled since the last commit, across every connection, in one
        # transaction; then the replies it allows. Runs once per loop iteration at most.
        self._commit_scheduled = False
        store = self.store
        if store is None:
            return
        try:
            if store.pending():
                store.commit()
        except StoreError as exc:
            self._fail(exc)
            return
        outbox, self._outbox = self._outbox, []
        for transport, data in outbox:
            if not transport.is_closing():
                self.write(transport, data)
        closing, self._closing = self._closing, []
        for transport in closing:
            transport.close()

    def _fail(self, exc: StoreError) -> None:
        # The store cannot write: drop every reply still waiting for a commit, cut every
        # connection, stop accepting, and let `run` stop the process, which exits non-zero.
        log.critical("the store failed; stopping so that no reply promises what the disk lacks", exc_info=exc)
        self._outbox.clear()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        if self._listener is not None:
            self._listener.close()
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(exc)

    def _open_store(self, data_dir: str | os.PathLike[str], loop: asyncio.AbstractEventLoop) -> None:
        self.store = Store.open(data_dir, self.sync)
        snapshot = self.store.load()
        restored = self.broker.restore(snapshot, self.clock())
        self.broker.attach(self.store)
        log.info(
            "store %s: %d queues and %d messages restored (sync=%s)",
            self.data_dir,
            len(snapshot.queues),
            restored,
            self.sync,
        )
        self.schedule_expiry()
        self._reclaim(loop)

    def _reclaim(self, loop: asyncio.AbstractEventLoop) -> None:
        # Give the space of confirmed messages back to the file system, a little at a time,
        # on a timer of its own; a failed store gets no more rounds.
        self._commit()
        store = self.store
        if store is None or (self.failed is not None and self.failed.done()):
            return
        try:
            store.reclaim(self.limits.reclaim_pages)
        except StoreError as exc:
            self._fail(exc)
            return
        self._reclaimer = loop.call_later(self.limits.reclaim_interval, self._reclaim, loop)

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
        if self._expiry is None or self._expiry_at > deadline:
            self.schedule_expiry()

    def schedule_expiry(self) -> None:
        """Make sure the timer fires by the earliest in-flight deadline."""
        deadline = self.broker.next_deadline()
        if deadline is None:
            return
        when = max(deadline, self.clock() + self.limits.sweep_resolution)
        if self._expiry is not None:
            if self._expiry_at <= when:  # never postpone a pending sweep
                return
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = self._loop.call_at(when, self._expire)  # type: ignore[union-attr]  # set by start

    def _expire(self) -> None:
        self._expiry = None
        count = self.broker.expire(self.clock())
        if count:
            log.debug("requeued %d messages whose timeout passed", count)
        self.schedule_expiry()


def _unstarted_clock() -> float:
    raise RuntimeError("the server has not been started")


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

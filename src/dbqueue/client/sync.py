"""Blocking clients: `PipelinedClient` (the connection), `Client`, and `Pipeline`.

Theory of operation
-------------------
A `PipelinedClient` owns the socket and the sans-I/O `ClientConnection`; any
number of threads may send requests through it at once, as redis-py's users
share one client across a thread pool. Every request is matched to its answer
by request id (docs/protocol.md, section 3), so answers may come in any order
(a waiting read's comes after those of requests sent behind it) and no thread
ever takes another's answer. `Client` and `Pipeline` are the typed commands
of `Commands` over one connection, and differ only in their ``_call``: the
one sends and waits, the other queues.

* **Writing.** A thread allocates its request id and encodes its frame under
  the state lock and parks a `_Call` under that id. If nobody is writing it
  sends the frame itself; else it appends the frame to the outbox and goes
  on, and the thread that holds the write lock sends the outbox before it
  lets go (it looks again after letting go, so a frame added at that moment
  is not left behind). No request ever waits for the write lock, and under
  contention frames leave, and are answered, in batches.
* **Reading: leader and followers.** No thread reads in the background. A
  thread that needs an answer and finds nobody reading takes the *read
  role*: it reads the socket and hands every answer to its `_Call`, waking
  the thread that waits for it, until its own answer is in; then it hands
  the role to one of the threads still waiting. The others sleep on a lock
  of their own. So one thread alone reads its own answers with no thread
  switch, taking the state lock twice a request (when it registers, taking
  the free read role then too, and when its answer is in, giving it up);
  and a thread in a long waiting read (``wait``) reads for everyone while
  it waits.
* **Timeouts are per request**: the connection's ``timeout``, plus a waiting
  read's ``wait``, from the moment it is sent. A request not answered in
  time is *abandoned* (`ClientConnection.abandon`): its late answer is
  dropped when it comes, the messages it brings are released, and a waiting
  read is cancelled on the server. Its thread gets `Timeout` (a
  `ConnectionLost`); the others go on. Sends are bounded by ``timeout`` too; one that cannot finish
  leaves a partial frame behind, so it fails the connection.
* **Failure.** A socket error, the end of the stream, broken framing or a
  refusal of the whole connection (request id 0) fails every waiting thread
  and every later request with that error; so does `close`, from any thread
  (with `ConnectionLost`). The file descriptor itself is closed by the last
  thread that is inside a read or a write, so that it is never reused while
  one of them still polls it.
* **Fork.** A child process inherits the socket and the request-id counter:
  using them from both processes would mix their answers. A hook run in the
  child after each ``fork`` (`os.register_at_fork`) fails every connection
  alive then (they are kept in a `weakref.WeakSet`), so the child's first use
  raises `ConnectionLost` saying so, and no request pays a check; it closes
  the child's copy of the descriptor, never shuts the socket down, so the
  parent's connection goes on untouched.
* **Sockets are non-blocking**, and each wait is a ``poll`` with the waiting
  thread's own deadline: a socket timeout is one value for all threads.
  OpenSSL forbids using one TLS connection from two threads at once, so each
  TLS read and write holds a lock; non-blocking, it holds it only while
  bytes are copied.

Locks: ``_lock`` guards the state (the `ClientConnection`, the parked calls,
the outbox, the read role, the sleepers) and is never held across I/O or a
wait; ``_write_lock`` is held across writes. The server stops reading a
connection whose answers go unread (docs/protocol.md, section 3), so a
write may wait for a read: a thread holding the read role never waits for
the write lock (the holder sends its frames), and one that holds both and
finds no room to write reads while it waits. Only the raw methods, whose
thread does not read meanwhile, wait for the write lock, as they always
waited for their writes.

The raw methods (`send_many`, `receive`, `receive_some`, `abandon`) keep
their single-owner contract: answers to requests sent by `send_many` are
kept apart, in arrival order, for whoever calls `receive`. They may be used
alongside threads that send through `request`, but not by two threads at once.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Self, TypeVar

from ..errors import ConnectionLost, DbQueueError, ProtocolError, RequestError, Timeout, error_for_code
from ..protocol import messages as msg
from ..protocol.connection import ClientConnection
from .commands import Commands, Decode, as_token, parse_address, result_of, tls_context, tls_failure

__all__ = ["PipelinedClient", "Client", "Pipeline"]

_RECV_SIZE = 256 * 1024

_monotonic = time.monotonic  # looked up once: every request reads the clock

# A TLS write that must first read (a renegotiation) waits this long for the read role to pass the bytes on.
_TLS_RETRY_SECONDS = 0.01

T = TypeVar("T")

FORKED = "this client was connected in another process before a fork: connect anew in this one"
"""The failure of every connection a child process inherits (see the module docstring)."""


class _Default(enum.Enum):
    """`PipelinedClient.request`'s timeout when none is given: the connection's, plus the request's wait."""

    TIMEOUT = "the connection's timeout"


class _Call:
    """One request a thread waits for: its answer, or the error that ended the wait.

    ``wake`` is set while the thread sleeps (`PipelinedClient._wait`): whoever
    completes the call, or hands the read role on, calls it once and clears it.
    A ``_Call`` with request id 0 stands for a thread waiting for raw answers.
    """

    __slots__ = ("request_id", "wait_ms", "response", "error", "wake")

    def __init__(self, request_id: int, wait_ms: int = 0) -> None:
        self.request_id = request_id
        self.wait_ms = wait_ms
        self.response: msg.Response | None = None
        self.error: DbQueueError | None = None
        self.wake: Callable[[], Any] | None = None

    def done(self) -> bool:
        return self.response is not None or self.error is not None


def _fresh(error: DbQueueError) -> DbQueueError:
    """A new instance of a shared failure: one exception object raised in several threads would
    collect all their tracebacks."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


class _Waker:
    """A socket pair a thread polls beside the sockets it reads, so that other threads can wake it
    (the group's waiting read, `wait_for_any`)."""

    def __init__(self) -> None:
        self._in, self._out = socket.socketpair()
        self._in.setblocking(False)
        self._out.setblocking(False)

    def fileno(self) -> int:
        return self._in.fileno()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake is pending already
            self._out.send(b"\0")

    def drain(self) -> None:
        try:
            while self._in.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._in.close()
        self._out.close()


class PipelinedClient:
    """One connection to a server, shared by any number of threads (see the module docstring).

    `request` sends one request and waits for its answer; it is what `Client`
    and `Pipeline` use, and it is thread-safe. The raw methods serve load
    generators and batch jobs: `send_many` returns the request ids, `receive`
    returns (request id, response) pairs in arrival order; they expect one
    thread at a time. Responses are protocol messages (`dbqueue.protocol`),
    errors included. `close` may be called from any thread.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientConnection()
        self.timeout = sock.gettimeout()  # for each send, and each wait for an answer (plus its wait_ms)
        sock.setblocking(False)
        self._lock = threading.Lock()  # the state below; never held across I/O or a wait
        self._write_lock = threading.Lock()  # held across a write
        self._calls: dict[int, _Call] = {}  # request id -> the thread waiting for its answer
        self._outbox: list[bytes] = []  # frames to write, in order
        self._reading = False  # whether a thread holds the read role
        self._sleepers: dict[_Call, None] = {}  # threads asleep while another reads, oldest first
        self._failure: DbQueueError | None = None  # set once: the connection is unusable
        self._ready: list[tuple[int, msg.Response]] = []  # answers to raw requests, in arrival order
        self._outstanding = 0  # raw requests sent and not yet received
        self._longest_wait = 0.0  # the longest wait_ms among them, in seconds: the server may hold those
        # Whether a request was ever abandoned: only then may an answer make the connection queue
        # Releases (`ClientConnection.data_to_send`), so only then does the reader ask for them.
        self._abandoned = False
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._tls_lock = threading.Lock()  # around each TLS read and write: OpenSSL allows one thread at a time
        if self._tls is None:
            self._recv: Callable[[int], bytes] = sock.recv
            self._send: Callable[[Any], int] = sock.send
        else:
            self._recv = self._recv_tls
            self._send = self._send_tls
        # One poll object per role, as two threads may not poll one object at once.
        self._poll_in = select.poll()  # the read role's
        self._poll_in.register(sock, select.POLLIN)
        self._poll_out = select.poll()  # the write lock's
        self._poll_out.register(sock, select.POLLOUT)
        self._poll_both = select.poll()  # a thread's that holds both
        self._poll_both.register(sock, select.POLLIN | select.POLLOUT)
        _live.add(self)

    @classmethod
    def connect(
        cls,
        address: str | tuple[str, int],
        timeout: float | None = 10.0,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
    ) -> Self:
        """Connect, say Hello and return the connection. Raises `ConnectionLost` (an `OSError`) if the
        server is not there, `AuthenticationFailed` if it wants another ``token``, `TlsHandshakeFailed`
        (a `ConnectionLost`, and an `ssl.SSLError` too, its ``__cause__``) if TLS fails.

        ``timeout`` bounds the connect, each send, and each wait for an answer
        (plus the ``wait`` of a waiting read); None waits for ever. ``tls``:
        True for the system's trusted CAs, or an `ssl.SSLContext` (own CA, client certificate).
        """
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            context = tls_context(tls)
            if context is not None:
                try:
                    sock = context.wrap_socket(sock, server_hostname=host)
                except ssl.SSLError as exc:
                    raise tls_failure(exc, host, port) from exc
                except OSError as exc:  # a timeout or a reset during the handshake
                    raise ConnectionLost(f"cannot connect to {host}:{port}: TLS handshake: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        try:
            client = cls(sock)
            client.hello(token)
        except Timeout as exc:
            sock.close()
            raise Timeout(f"{host}:{port} did not answer the handshake within {timeout} s") from exc
        except ConnectionLost as exc:
            sock.close()
            # The usual causes, which the server cannot say on a connection it will not speak on.
            if context is None:
                hint = "does it serve TLS? connect with tls=True or an ssl.SSLContext"
            else:
                hint = "does it require a client certificate? load one into the ssl.SSLContext"
            raise ConnectionLost(
                f"{host}:{port} ended the connection during the dbqueue handshake ({hint}): {exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        return client

    def hello(self, token: str | bytes | None = None) -> msg.HelloOk:
        """Exchange versions (and the token); the server's message-size limit then applies locally.

        Returns the server's `HelloOk`. Raises `UnsupportedVersion`,
        `AuthenticationFailed`, `ConnectionLost`, `LimitExceeded` (the server
        holds its most connections).
        """
        ok = result_of(self.request(msg.Hello(token=as_token(token))), msg.HelloOk)
        with self._lock:
            self.protocol.max_message_size = ok.max_message_size
        return ok

    # --- requests, from any thread -----------------------------------------------------

    def request(
        self, request: msg.Request, timeout: float | None | Literal[_Default.TIMEOUT] = _Default.TIMEOUT
    ) -> msg.Response:
        """Send ``request`` and return its answer (an error answer too, as a value). Thread-safe.

        ``timeout``: seconds to wait for the answer in all; by default the
        connection's ``timeout`` plus the request's wait. An answer that
        comes later is dropped (and the messages it brings released).

        Raises `MessageTooLarge` (nothing is sent), `ConnectionLost` (the
        connection failed or was closed), `Timeout` (a `ConnectionLost`: no
        answer came in time; the connection stays usable, and the request may
        have been carried out), `ProtocolError`.
        """
        wait_ms = getattr(request, "wait_ms", 0)
        if timeout is _Default.TIMEOUT:
            timeout = self.timeout
            if timeout is not None and wait_ms:
                timeout += wait_ms / 1000.0
        # Every command passes here, so the uncontended path takes the state lock twice in all: here,
        # and once its answer is in (`_pump`); explicit acquire and release cost less than `with`.
        # The thread takes the free read role now, as it will read next anyway: holding it while
        # writing is safe, as `_send_rest` reads while it waits.
        lock = self._lock
        lock.acquire()
        try:
            if self._failure is not None:
                raise _fresh(self._failure)
            request_id, frame = self.protocol.send(request)
            call = self._calls[request_id] = _Call(request_id, wait_ms)
            reading = not self._reading
            if reading:
                self._reading = True
            # Nobody writing and nothing queued: write it now, without the outbox.
            direct = not self._outbox and self._write_lock.acquire(False)
            if not direct:
                self._outbox.append(frame)
        finally:
            lock.release()
        try:
            if direct:
                self._write(frame, reading)
            else:
                self._flush(block=False, reading=reading)  # else the write lock's holder sends it
        except BaseException:
            if reading:
                self._step_down()
            self._forsake(call)
            raise
        deadline = None if timeout is None else _monotonic() + timeout
        try:
            answered = self._read_for(call, deadline) if reading else self._wait(call, deadline)
        except BaseException:
            self._forsake(call)
            raise
        response = call.response
        return self._settle(call, answered) if response is None else response

    def _peer_closed(self) -> bool:
        """Whether the server is known to have closed this connection, seen without taking a byte off
        it: a failure met already, or (plain TCP) a peek that finds the end of the stream. Over TLS only
        the first. Lets a group client route a call elsewhere before sending it on a dead connection,
        rather than after, when its outcome would be unknown. Raises nothing."""
        if self._failure is not None:
            return True
        if self._tls is not None:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # open, nothing to read
        except OSError:
            return True  # reset, or closed here

    def _exchange(self, requests: Sequence[msg.Request]) -> list[msg.Response]:
        """Send ``requests`` in one write and return their answers in request order (`Pipeline.execute`).

        Each may take the connection's ``timeout`` plus the longest wait
        among them. Raises as `request`; on any error, the requests still
        unanswered are abandoned.
        """
        calls = self._submit(requests)
        deadline = None
        if self.timeout is not None:
            deadline = time.monotonic() + self.timeout + max(call.wait_ms for call in calls) / 1000.0
        try:
            return [self._result(call, deadline) for call in calls]
        except BaseException:
            for call in calls:
                self._forsake(call)
            raise

    def _submit(self, requests: Iterable[msg.Request]) -> list[_Call]:
        """Park a `_Call` for each request and send them all in one write; return the calls (to wait
        for with `_result`, or `wait_for_any`).

        Raises `MessageTooLarge` (nothing is sent), or the connection's failure.
        """
        calls = []
        frames = []
        with self._lock:
            if self._failure is not None:
                raise _fresh(self._failure)
            send = self.protocol.send
            for request in requests:
                request_id, frame = send(request)
                calls.append(_Call(request_id, getattr(request, "wait_ms", 0)))
                frames.append(frame)
            parked = self._calls
            for call in calls:
                parked[call.request_id] = call
            self._outbox.append(b"".join(frames))
        self._flush(block=False)
        return calls

    def _result(self, call: _Call, deadline: float | None) -> msg.Response:
        """Wait for ``call``'s answer until ``deadline`` and return it.

        Raises its error, or `ConnectionLost` when the deadline passes (the call
        is then abandoned). Any other way out (KeyboardInterrupt) abandons it too,
        so that a read never leaves a message in flight on this connection.
        """
        try:
            answered = self._wait(call, deadline)
        except BaseException:
            self._forsake(call)
            raise
        return self._settle(call, answered)

    def _settle(self, call: _Call, answered: bool) -> msg.Response:
        """Return ``call``'s answer, or raise its error; ``answered``: whether the wait for it ended
        in time (if not, it is abandoned, unless the answer came meanwhile, and `Timeout` raised)."""
        if not answered and not self._forsake(call):
            raise Timeout(
                f"no answer to request {call.request_id} in time: it may still have been carried out "
                "(a send may be queued); the connection stays usable"
            )
        if call.error is not None:
            raise _fresh(call.error)
        assert call.response is not None
        return call.response

    def _forsake(self, call: _Call) -> bool:
        """Stop waiting for ``call``, unless it is done: return whether it is. Its answer will be dropped
        (its messages released) and a waiting read cancelled on the server. Raises nothing."""
        with self._lock:
            if call.done():
                return True
            call.error = ConnectionLost(f"request {call.request_id} was abandoned")
            if self._calls.pop(call.request_id, None) is None or self._failure is not None:
                return False
            self.protocol.abandon(call.request_id, cancel=call.wait_ms > 0)
            self._abandoned = True
            pending = self.protocol.data_to_send()
            if pending:
                self._outbox.append(pending)
        # If the write lock is taken, its holder sends it; if the connection failed, the server
        # gives back what the read held.
        with contextlib.suppress(DbQueueError):
            self._flush(block=False)
        return False

    # --- raw requests, one thread at a time --------------------------------------------

    def send_many(self, requests: Iterable[msg.Request]) -> list[int]:
        """Send ``requests`` in one write; return their request ids in order. Their answers are for
        `receive`.

        Raises `MessageTooLarge` (nothing is sent) or `ConnectionLost`.
        """
        ids = []
        frames = []
        with self._lock:
            if self._failure is not None:
                raise _fresh(self._failure)
            longest = self._longest_wait
            for request in requests:
                request_id, frame = self.protocol.send(request)
                ids.append(request_id)
                frames.append(frame)
                longest = max(longest, getattr(request, "wait_ms", 0) / 1000.0)
            self._longest_wait = longest
            self._outstanding += len(ids)
            self._outbox.append(b"".join(frames))
        self._flush()
        return ids

    def send_bytes(self, data: bytes) -> None:
        """Write prebuilt frames as they are; their answers are for `receive`. Returns None; raises
        `ConnectionLost`."""
        with self._lock:
            if self._failure is not None:
                raise _fresh(self._failure)
            self._outbox.append(bytes(data))
        self._flush()

    def receive(self, count: int) -> list[tuple[int, msg.Response]]:
        """Block until ``count`` answers to raw requests (`send_many`, `send_bytes`) have arrived; return
        them in arrival order.

        Raises `ConnectionLost` if the connection fails, `Timeout` if no answer comes in
        time (the connection's ``timeout`` plus the longest wait outstanding),
        `ProtocolError` if the server breaks the framing.
        """
        ready = self._ready
        if len(ready) < count and not self._wait(_Call(0), self._raw_deadline(), lambda: len(ready) >= count):
            raise Timeout("no response came in time (the connection stays usable)")
        with self._lock:
            taken, self._ready[:count] = ready[:count], []
            self._outstanding -= count
            if self._outstanding <= 0:
                self._outstanding = 0
                self._longest_wait = 0.0
        return taken

    def receive_some(self) -> list[tuple[int, msg.Response]]:
        """Block for one read from the socket (or until another thread's read brings answers to raw
        requests); return the raw answers that are in (maybe none), in arrival order.

        Responses to abandoned requests are not returned (see `abandon`).
        Raises as `receive`.
        """
        ready = self._ready
        if not ready and not self._wait(_Call(0), self._raw_deadline(), lambda: bool(ready), once=True):
            raise Timeout("no response came in time (the connection stays usable)")
        with self._lock:
            taken, self._ready[:] = ready[:], []
        return taken

    def _raw_deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout + self._longest_wait

    def abandon(self, request_id: int, cancel: bool = False) -> None:
        """Stop waiting for a raw request: its response is dropped, and a message it brings is released.

        ``cancel`` (for a waiting read) also tells the server to end the wait now.
        Returns None; raises `ConnectionLost`.
        """
        with self._lock:
            self.protocol.abandon(request_id, cancel)
            self._abandoned = True
            self._outstanding = max(0, self._outstanding - 1)
            pending = self.protocol.data_to_send()
            if pending:
                self._outbox.append(pending)
        self._flush()

    # --- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection, from any thread: every thread waiting on it gets `ConnectionLost`, and the
        server requeues whatever this connection holds in flight. Returns None; raises nothing."""
        with self._lock:
            self._fail(ConnectionLost("the client closed the connection"))
        # The plain socket's shutdown, even under TLS: it wakes a thread polling the socket, and leaves
        # the TLS object alone, which another thread may be using. OSError: not connected any more.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        self._close_if_idle()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _forked(self) -> None:
        """In a child process, just forked: fail this connection with `FORKED` and close this process's
        copy of the socket (no shutdown, which would end the parent's connection too). The locks may
        have been held by threads that do not exist here: they are made anew. Raises nothing."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._tls_lock = threading.Lock()
        self._calls = {}
        self._sleepers = {}
        self._outbox = []
        self._ready = []
        self._reading = False
        if self._failure is None:
            self._failure = ConnectionLost(FORKED)
        with contextlib.suppress(OSError):
            self.sock.close()  # the descriptor only: an SSLSocket's close sends no TLS close_notify

    def _fail(self, error: DbQueueError) -> DbQueueError:
        """Mark the connection failed (the first failure stays), fail every call and wake every
        sleeper; return a fresh copy of the failure, to raise. The caller holds ``_lock``."""
        if self._failure is None:
            self._failure = error
        failure = self._failure
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.error = failure
        sleepers, self._sleepers = self._sleepers, {}
        for sleeper in sleepers:
            wake, sleeper.wake = sleeper.wake, None
            if wake is not None:
                wake()
        return _fresh(failure)

    def _fail_and_close(self, error: DbQueueError) -> DbQueueError:
        """`_fail`, taking the lock, then close the socket if no other thread is in I/O; return the
        failure to raise."""
        with self._lock:
            failure = self._fail(error)
        self._close_if_idle()
        return failure

    def _close_if_idle(self) -> None:
        """Close the file descriptor of a failed connection unless a thread is reading or writing:
        that thread closes it when it leaves (`_step_down`, `_write`)."""
        with self._lock:
            busy = self._reading or self._write_lock.locked()
        if not busy:
            self.sock.close()

    # --- writing -----------------------------------------------------------------------

    def _flush(self, block: bool = True, reading: bool = False) -> None:
        """Send the outbox, and whatever others add to it meanwhile. Without ``block``, only if the write
        lock is free: else its holder sends it before it lets go. ``reading``: this thread holds the
        read role. Raises the connection's failure."""
        if self._write_lock.acquire(block):
            self._write(None, reading)

    def _write(self, data: bytes | None, reading: bool) -> None:
        """Holding the write lock: send ``data`` (if any) and the outbox, then let go of the lock.

        Raises the connection's failure.
        """
        write_lock = self._write_lock
        while True:
            try:
                if data is not None:
                    self._send_all(data, reading)
                while self._outbox:
                    with self._lock:
                        if self._failure is not None:
                            raise _fresh(self._failure)
                        frames, self._outbox = self._outbox, []
                    self._send_all(frames[0] if len(frames) == 1 else b"".join(frames), reading)
            finally:
                write_lock.release()
                if self._failure is not None:
                    self._close_if_idle()
            # Frames added after our last look, whose owner found the lock taken, are ours to send.
            if not self._outbox or not write_lock.acquire(False):
                return
            data = None

    def _send_all(self, data: bytes, reading: bool) -> None:
        """Write ``data`` whole (the caller holds the write lock). Raises `ConnectionLost`, having failed
        the connection, if that takes longer than the connection's ``timeout`` without progress."""
        try:
            sent = self._send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as exc:
            raise self._fail_and_close(ConnectionLost(f"connection lost while sending: {exc}")) from exc
        if sent < len(data):
            self._send_rest(memoryview(data), sent, reading)

    def _send_rest(self, view: memoryview, sent: int, reading: bool) -> None:
        """`_send_all` once the socket's buffer is full: wait for room, the connection's ``timeout`` at
        most without progress.

        A thread that holds the read role reads meanwhile: the server stops
        reading requests while its answers pile up unread, so waiting for room
        without reading could wait for ever.
        """
        poller = self._poll_both if reading else self._poll_out
        timeout = self.timeout
        deadline = None if timeout is None else _monotonic() + timeout
        while sent < len(view):
            remaining = None if deadline is None else (deadline - _monotonic()) * 1000.0
            events = poller.poll(remaining) if remaining is None or remaining > 0 else []
            if not events:
                raise self._fail_and_close(ConnectionLost(f"could not send within {timeout} s"))
            flags = events[0][1]
            if reading and flags & ~select.POLLOUT:
                self._pump()  # an error or the end of the stream fails the connection here
            if not flags & ~select.POLLIN:
                continue  # only answers came: no room yet
            try:
                sent += self._send(view[sent:])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                continue
            except ssl.SSLWantReadError:
                time.sleep(_TLS_RETRY_SECONDS)  # the read role takes the bytes TLS waits for
                continue
            except OSError as exc:
                raise self._fail_and_close(ConnectionLost(f"connection lost while sending: {exc}")) from exc
            if timeout is not None:
                deadline = _monotonic() + timeout

    def _send_tls(self, data: Any) -> int:
        with self._tls_lock:
            return self.sock.send(data)

    # --- reading -----------------------------------------------------------------------

    def _wait(
        self, sleeper: _Call, deadline: float | None, done: Callable[[], bool] | None = None, once: bool = False
    ) -> bool:
        """Wait until ``sleeper`` is done (or ``done()`` holds, if given): read the socket while nobody
        else does (`_read_for`), else sleep until woken.

        Returns True once it is (or, with ``once``, after one read of the
        socket), False if ``deadline`` passes first. ``sleeper`` is how other
        threads wake this one. Raises the connection's failure.
        """
        lock = self._lock
        asleep: threading.Lock | None = None  # made the first time this thread must sleep
        slept = False  # whether this thread went to sleep and has not held the read role since
        try:
            while True:
                with lock:
                    if done() if done else sleeper.response is not None or sleeper.error is not None:
                        return True
                    if self._failure is not None:
                        raise _fresh(self._failure)
                    reading = not self._reading
                    if reading:
                        self._reading = True
                        slept = False
                    else:
                        if asleep is None:
                            asleep = threading.Lock()
                            asleep.acquire()
                        sleeper.wake = asleep.release
                        self._sleepers[sleeper] = None
                        slept = True
                if reading:
                    return self._read_for(sleeper, deadline, done, once)
                assert asleep is not None
                remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if not asleep.acquire(True, remaining):
                    with lock:
                        return done() if done else sleeper.response is not None or sleeper.error is not None
        finally:
            if slept:
                with lock:
                    if sleeper.wake is not None:  # nobody woke it
                        sleeper.wake = None
                        del self._sleepers[sleeper]
                    elif not self._reading:
                        # Woken, maybe to take the free read role, and leaving instead: pass it on.
                        self._hand_off()

    def _read_for(
        self, sleeper: _Call, deadline: float | None, done: Callable[[], bool] | None = None, once: bool = False
    ) -> bool:
        """Holding the read role: read and hand out answers until ``sleeper`` is done (or ``done()``
        holds, if given; or after one read, with ``once``), then give the role up. Returns False if
        ``deadline`` passes first. Raises the connection's failure."""
        reading = True
        try:
            poll = self._poll_in.poll
            until = None if done else sleeper  # `_pump` gives the role up in the same hold of the lock
            while not (done() if done else sleeper.response is not None or sleeper.error is not None):
                if self._tls is None or not self._buffered():
                    if deadline is None:
                        poll()
                    else:
                        remaining = deadline - _monotonic()
                        if remaining <= 0 or not poll(remaining * 1000.0):
                            return False
                if self._pump(until):
                    reading = False
                    return True
                if once:
                    return True
            return True
        finally:
            if reading:
                self._step_down()

    def _pump(self, until: _Call | None = None) -> bool:
        """Holding the read role: read what the socket has, and hand each answer to its call.

        If ``until`` is done then, give up the read role (in the same hold of
        the lock) and return True; else return False. Raises the connection's
        failure (having failed it) if the socket fails or closes, or the server
        breaks the framing.
        """
        try:
            data = self._recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return False
        except ssl.SSLWantWriteError:
            select.select([], [self.sock], [], _TLS_RETRY_SECONDS)  # not _poll_out: the write lock's holder polls it
            return False
        except OSError as exc:
            raise self._fail_and_close(ConnectionLost(f"connection lost while waiting for a response: {exc}")) from exc
        if not data:
            raise self._fail_and_close(ConnectionLost("the server closed the connection"))
        lock = self._lock
        lock.acquire()  # not `with`: this is on every command's path, and costs less
        try:
            try:
                responses = self.protocol.receive_data(data)
            except ProtocolError as exc:
                raise self._fail(exc) from None
            releases = self.protocol.data_to_send() if self._abandoned else b""
            if releases:
                self._outbox.append(releases)
            calls = self._calls
            raw = False
            for request_id, response in responses:
                call = calls.pop(request_id, None)
                if call is not None:
                    call.response = response
                    wake = call.wake
                    if wake is not None:
                        call.wake = None
                        del self._sleepers[call]
                        wake()
                    continue
                self._ready.append((request_id, response))
                raw = True
                if request_id == 0 and isinstance(response, msg.Error):
                    # Not an answer to a request: the server refuses the connection (limit, lost framing).
                    self._fail(error_for_code(response.code, response.message))
            if raw:
                for sleeper in [sleeper for sleeper in self._sleepers if sleeper.request_id == 0]:
                    wake = sleeper.wake
                    sleeper.wake = None
                    del self._sleepers[sleeper]
                    if wake is not None:
                        wake()
            stepped = until is not None and (until.response is not None or until.error is not None)
            if stepped:
                self._reading = False
                if self._sleepers:
                    self._hand_off()
            failed = self._failure is not None
        finally:
            lock.release()
        if releases:
            # Never wait for a writer: it may be waiting for us to read. A failure reaches every caller anyway.
            with contextlib.suppress(DbQueueError):
                self._flush(block=False, reading=not stepped)
        if stepped and failed:
            self._close_if_idle()
        return stepped

    def _step_down(self) -> None:
        """Give up the read role, waking a sleeper to take it; close a failed connection's socket."""
        with self._lock:
            self._reading = False
            if self._sleepers:
                self._hand_off()
            failed = self._failure is not None
        if failed:
            self._close_if_idle()

    def _hand_off(self) -> None:
        """Wake the oldest sleeper, if any, to take the free read role. The caller holds ``_lock``."""
        if self._sleepers:
            sleeper = next(iter(self._sleepers))
            del self._sleepers[sleeper]
            wake, sleeper.wake = sleeper.wake, None
            if wake is not None:
                wake()

    def _recv_tls(self, size: int) -> bytes:
        with self._tls_lock:
            return self.sock.recv(size)

    def _buffered(self) -> bool:
        """Whether TLS holds decrypted bytes not read yet: the socket's poll cannot see them."""
        if self._tls is None:
            return False
        with self._tls_lock:
            return self._tls.pending() > 0


_live: weakref.WeakSet[PipelinedClient] = weakref.WeakSet()
"""Every connection alive in this process: those a fork's child must fail (`PipelinedClient._forked`)."""


def _fail_inherited() -> None:
    for connection in list(_live):
        connection._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_fail_inherited)


def wait_for_any(pending: Sequence[tuple[PipelinedClient, _Call]], deadline: float | None) -> bool:
    """Wait until one of several calls, on one connection or several, is done; return False if
    ``deadline`` passes first. For the group's waiting read on every member at once.

    The calling thread takes the read role of every connection nobody reads,
    and polls their sockets together; on the others it sleeps, as in
    `PipelinedClient._wait`, but on a `_Waker` it polls beside them. Raises nothing
    of its own: a connection that fails fails its calls, which are then done.
    """
    claimed: list[PipelinedClient] = []
    waker: _Waker | None = None
    try:
        while True:
            for connection, call in pending:
                if connection in claimed:
                    continue
                with connection._lock:
                    if call.done():
                        return True
                    if not connection._reading:
                        connection._reading = True
                        claimed.append(connection)
                        if call.wake is not None:
                            call.wake = None
                            del connection._sleepers[call]
                    elif call.wake is None:
                        waker = waker or _Waker()
                        call.wake = waker.wake
                        connection._sleepers[call] = None
            ready = [connection for connection in claimed if connection._buffered()]
            if not ready:
                remaining = None if deadline is None else (deadline - time.monotonic()) * 1000.0
                if remaining is not None and remaining <= 0:
                    return False
                poller = select.poll()
                for connection in claimed:
                    poller.register(connection.sock, select.POLLIN)
                if waker is not None:
                    poller.register(waker.fileno(), select.POLLIN)
                readable = {fd for fd, _ in poller.poll(remaining)}
                if waker is not None and waker.fileno() in readable:
                    waker.drain()
                ready = [connection for connection in claimed if connection.sock.fileno() in readable]
            for connection in ready:
                with contextlib.suppress(DbQueueError):  # that connection failed: its call carries the error
                    connection._pump()
            if any(call.done() for _, call in pending):
                return True
    finally:
        for connection, call in pending:
            if connection in claimed:
                continue
            with connection._lock:
                if call.wake is not None:
                    call.wake = None
                    connection._sleepers.pop(call, None)
                elif not connection._reading:
                    connection._hand_off()
        for connection in claimed:
            connection._step_down()
        if waker is not None:
            waker.close()


class Client(Commands):
    """A blocking client: each command sends one request and waits for its answer.

    Thread-safe: any number of threads may share one client (and its one
    connection); each command's answer is matched to it by request id, a
    waiting read in one thread does not hold up the others, and `close` from
    any thread fails the commands still waiting with `ConnectionLost`. A
    command not answered within ``timeout`` (plus its ``wait``) raises
    `Timeout` (a `ConnectionLost`): the request may still have been carried
    out (a send queued), the connection stays usable, and the late answer is
    dropped.

    A client belongs to the process that connected it: after ``os.fork()``
    (multiprocessing, prefork servers) the child's first command raises
    `ConnectionLost`, and the child connects its own; the parent's goes on.

    >>> with Client.connect("127.0.0.1:3003") as client:
    ...     client.create("jobs")
    ...     id_ = client.send("jobs", b"hello")
    ...     message = client.read("jobs", visibility_timeout=30.0)
    ...     if message is not None:  # None: the queue was empty
    ...         client.confirm(message.id)
    """

    def __init__(self, connection: PipelinedClient) -> None:
        _refuse_address(type(self), connection)
        self.connection = connection

    @classmethod
    def connect(
        cls,
        address: str | tuple[str, int],
        timeout: float | None = 10.0,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
    ) -> Self:
        """Connect to ``"host:port"`` and return the client (see `PipelinedClient.connect` for
        ``timeout``, ``token`` and ``tls``).

        Raises `ConnectionLost` (a `ConnectionError`), `TlsHandshakeFailed` (a `ConnectionLost`) or
        `AuthenticationFailed`.
        """
        return cls(PipelinedClient.connect(address, timeout, token=token, tls=tls))

    def _call(self, request: msg.Request, decode: Decode[T]) -> T:
        return decode(self.connection.request(request))

    def pipeline(self) -> Pipeline:
        """Return a new pipeline on this connection: queue commands, then `Pipeline.execute` sends
        them in one write. Raises nothing."""
        return Pipeline(self.connection)

    def close(self) -> None:
        """Close the connection, from any thread; messages it holds in flight go back to their
        queues, and commands still waiting raise `ConnectionLost`. Returns None; raises nothing."""
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Pipeline(Commands):
    """Commands queued without waiting; `execute` sends them all and returns their results.

    Each command returns the pipeline, so calls chain. Results come back in
    request order; a refused request's result is its exception instance (not
    raised) unless ``execute(raise_on_error=True)``.

    A pipeline belongs to the thread that fills it: it is not thread-safe.
    Any number of threads may each run their own pipelines over one client
    at once (`execute` is as thread-safe as the client's commands).
    """

    def __init__(self, connection: PipelinedClient) -> None:
        _refuse_address(type(self), connection)
        self.connection = connection
        self._queued: list[tuple[msg.Request, Decode[Any]]] = []

    def _call(self, request: msg.Request, decode: Decode[Any]) -> Self:
        self._queued.append((request, decode))
        return self

    def __len__(self) -> int:
        return len(self._queued)

    def execute(self, raise_on_error: bool = False) -> list[object]:
        """Send every queued command in one write; return their results in request order.

        Each result is what the blocking `Client` returns for that command, or
        the `RequestError` instance for a refused one. They are typed `object`:
        which command sits at which place is not something the type checker can
        follow, so narrow each (``isinstance(result, Message)``) before use.

        Raises the first refused request's error if ``raise_on_error``; raises
        `ConnectionLost` if the connection fails, or `Timeout` (a `ConnectionLost`)
        if an answer does not come within the connection's ``timeout`` plus the
        longest ``wait`` queued (the results are then lost; the requests may
        have been carried out).
        """
        queued, self._queued = self._queued, []
        if not queued:
            return []
        responses = self.connection._exchange([request for request, _ in queued])
        results: list[object] = []
        for (_, decode), response in zip(queued, responses):
            try:
                results.append(decode(response))
            except RequestError as exc:
                if raise_on_error:
                    raise
                results.append(exc)
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queued.clear()


def _refuse_address(kind: type, connection: object) -> None:
    """``Client("host:port")`` is a natural first guess: say how to connect instead of failing at the first call."""
    if isinstance(connection, (str, bytes, tuple)):
        raise TypeError(
            f"{kind.__name__}() wraps an open connection; to connect, use {kind.__name__}.connect({connection!r})"
        )

"""The asyncio client: many coroutines share one connection, their requests pipelined.

Theory of operation
-------------------
Each command allocates a request id, parks a future under it and queues its
frame. Frames queued during one loop iteration leave in one write (flushed by
a single ``call_soon``), so concurrent coroutines pipeline without asking.
Responses are matched to futures by request id, in whatever order they come.
If the connection fails, every waiting future gets `ConnectionLost`.

A request not answered in time raises `Timeout` and closes the connection (a
server that does not answer is not trusted with the next request). A child
process forked while a client is connected must not use it: the socket, the
request ids and the TLS state are the parent's. A hook run in the child
(`os.register_at_fork`) marks every client alive then as failed, so its first
command raises `ConnectionLost` saying so, and its `close` leaves the
transport alone (closing it would shut the parent's TLS session down, and the
event loop is the parent's anyway).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import weakref
from functools import partial
from typing import Self, TypeVar, cast

from ..errors import ConnectionLost, DbQueueError, Timeout, error_for_code
from ..protocol import messages as msg
from ..protocol.connection import ClientConnection
from .commands import Commands, Decode, as_token, parse_address, result_of, tls_context, tls_failure
from .sync import FORKED

__all__ = ["AsyncClient"]

T = TypeVar("T")


class _ClientProtocol(asyncio.Protocol):
    transport: asyncio.Transport  # set by connection_made, before anything else is called

    def __init__(self) -> None:
        self.connection = ClientConnection()
        self.pending: dict[int, asyncio.Future[msg.Response]] = {}
        self.outgoing: list[bytes] = []
        self.failure: DbQueueError | None = None
        self.closing = False  # set by AsyncClient.close: "you closed it", not "the peer broke it"
        self._flush_scheduled = False
        self.forked = False  # set in a child process after a fork: the transport is the parent's
        _live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.connection.receive_data(data)
        except DbQueueError as exc:
            self._fail(exc)
            self.transport.close()
            return
        releases = self.connection.data_to_send()
        if releases:
            self.transport.write(releases)
        pending = self.pending
        for request_id, response in responses:
            if request_id == 0 and isinstance(response, msg.Error):
                # Not an answer to a request: the server refuses the connection (limit, lost framing).
                self._fail(error_for_code(response.code, response.message))
                continue
            future = pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closing:
            self._fail(ConnectionLost("the client closed the connection"))
        else:
            self._fail(ConnectionLost(f"connection lost: {exc}" if exc else "the server closed the connection"))

    def _fail(self, error: DbQueueError) -> None:
        if self.failure is None:
            self.failure = error
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self.failure)

    def submit(self, request: msg.Request) -> tuple[int, asyncio.Future[msg.Response]]:
        if self.failure is not None:
            raise self.failure
        request_id, frame = self.connection.send(request)
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.outgoing.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return request_id, future

    def abandon(self, request_id: int, future: asyncio.Future[msg.Response], cancel: bool) -> None:
        """A caller stopped waiting: drop its response when it comes, releasing any message in it.

        If the response came already (the caller was cancelled before it resumed),
        release its messages now. ``cancel`` also ends a waiting read on the server.
        """
        if self.pending.pop(request_id, None) is not None:
            self.connection.abandon(request_id, cancel)
        elif future.done() and not future.cancelled() and future.exception() is None:
            self.connection.give_back(future.result())
        data = self.connection.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.outgoing and self.failure is None:
            data = b"".join(self.outgoing)
            self.outgoing.clear()
            self.transport.write(data)


_live: weakref.WeakSet[_ClientProtocol] = weakref.WeakSet()
"""Every connection alive in this process: those a fork's child must fail."""


def _fail_inherited() -> None:
    for protocol in list(_live):
        protocol.forked = True
        if protocol.failure is None:
            protocol.failure = ConnectionLost(FORKED)
        protocol.pending = {}  # the parent's futures, on the parent's loop
        protocol.outgoing = []


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_fail_inherited)


class AsyncClient(Commands):
    """An asyncio client; every command is a coroutine.

    Any number of tasks may use one client at once: their requests share the
    connection and are matched to their answers by request id. The client
    belongs to the event loop it was connected on, like any asyncio object:
    it is not thread-safe. Threads share a blocking `Client` instead; a
    thread that must reach an async client hands it a coroutine with
    `asyncio.run_coroutine_threadsafe`.

    A command not answered within ``timeout`` (plus its ``wait``) raises
    `Timeout` (a `ConnectionLost`) and closes the connection; the request may
    still have been carried out (a send queued). After ``os.fork()`` the
    child's first command raises `ConnectionLost`: connect anew there.
    """

    def __init__(self, protocol: _ClientProtocol, timeout: float | None = None) -> None:
        if isinstance(protocol, (str, bytes, tuple)):  # `AsyncClient("host:port")`: say how to connect
            raise TypeError(
                f"AsyncClient() wraps an open connection; to connect, use await AsyncClient.connect({protocol!r})"
            )
        self._protocol = protocol
        self._timeout = timeout  # for each answer (plus a waiting read's wait); None: wait for ever

    @classmethod
    async def connect(
        cls,
        address: str | tuple[str, int],
        timeout: float | None = 10.0,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
    ) -> Self:
        """Connect to ``"host:port"`` and say Hello (``token`` and ``tls`` as for `Client.connect`);
        return the connected client.

        ``timeout`` bounds the connect and each answer (a waiting read gets its
        ``wait`` on top); on expiry the connection is closed and `Timeout` (a `ConnectionLost`) raised.

        Raises `ConnectionLost` (a `ConnectionError`), `AuthenticationFailed`, `TlsHandshakeFailed`
        (a `ConnectionLost`, and an `ssl.SSLError` too, its ``__cause__``).
        """
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        context = tls_context(tls)
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    _ClientProtocol, host, port, ssl=context, server_hostname=host if context else None
                ),
                timeout,
            )
        except ssl.SSLError as exc:
            raise tls_failure(exc, host, port) from exc
        except (TimeoutError, OSError) as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc!r}") from exc
        client = cls(protocol, timeout)
        try:
            ok = await client._call(msg.Hello(token=as_token(token)), partial(result_of, expected=msg.HelloOk))
        except BaseException:
            await client.close()
            raise
        protocol.connection.max_message_size = ok.max_message_size
        return client

    async def _call(self, request: msg.Request, decode: Decode[T]) -> T:
        request_id, future = self._protocol.submit(request)
        waits = getattr(request, "wait_ms", 0) / 1000.0
        limit = None if self._timeout is None else self._timeout + waits
        try:
            async with asyncio.timeout(limit):
                response = await future
        except asyncio.CancelledError:
            # A cancelled read must not leave a message in flight on this connection.
            self._protocol.abandon(request_id, future, cancel=waits > 0)
            raise
        except TimeoutError:
            self._protocol.abandon(request_id, future, cancel=False)
            # A server that does not answer is not to be trusted with the next request.
            self._protocol.transport.close()
            raise Timeout(
                f"no answer within {limit:g} s: it may still have been carried out (a send may be queued); "
                "the connection is closed"
            ) from None
        return decode(response)

    def _peer_closed(self) -> bool:
        """Whether the connection is known to have failed or been closed (the loop saw it): a group client
        then routes a call elsewhere before sending it. Raises nothing."""
        return self._protocol.failure is not None

    async def close(self) -> None:
        """Close the connection; messages it holds in flight go back to their queues. Returns None;
        raises nothing."""
        if self._protocol.forked:
            return  # the transport is the parent process's: leave it to the parent
        transport = self._protocol.transport
        self._protocol.closing = True
        if not transport.is_closing():
            self._protocol._flush()
            transport.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

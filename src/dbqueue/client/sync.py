"""Blocking clients: `PipelinedClient` (raw requests and responses), `Client`, and `Pipeline`.

`PipelinedClient` owns the socket and the sans-I/O `ClientConnection`; `Client`
and `Pipeline` are the typed commands of `Commands` over one of those, and
differ only in their ``_call``: the one sends and waits, the other queues.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import Any, Self, TypeVar

from ..errors import ConnectionLost, ProtocolError, RequestError
from ..protocol import messages as msg
from ..protocol.connection import ClientConnection
from .commands import Commands, Decode, as_token, parse_address, result_of, tls_context

__all__ = ["PipelinedClient", "Client", "Pipeline"]

_RECV_SIZE = 256 * 1024

T = TypeVar("T")


class PipelinedClient:
    """A blocking connection that sends many requests at once and reads responses as they come.

    The lower-level form, for load generators and batch jobs: `send_many`
    returns the request ids, `receive` returns (request id, response) pairs.
    Responses are protocol messages (`dbqueue.protocol`), errors included.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientConnection()
        self.timeout = sock.gettimeout()  # for each send and each wait for a response
        self._ready: list[tuple[int, msg.Response]] = []
        self._outstanding = 0  # requests sent and not yet answered
        self._longest_wait = 0.0  # the longest wait_ms among them, in seconds: the server may hold those

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
        server is not there, `AuthenticationFailed` if it wants another ``token``, `ssl.SSLError` if TLS fails.

        ``timeout`` bounds the connect and each wait for a response (plus the
        ``wait_ms`` of a waiting read); None waits for ever. ``tls``: True for
        the system's trusted CAs, or an `ssl.SSLContext` (own CA, client certificate).
        """
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = tls_context(tls)
        try:
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
            client = cls(sock)
            client.hello(token)
        except BaseException:
            sock.close()
            raise
        return client

    def hello(self, token: str | bytes | None = None) -> msg.HelloOk:
        """Exchange versions (and the token); the server's message-size limit then applies locally.

        Returns the server's `HelloOk`. Raises `UnsupportedVersion`,
        `AuthenticationFailed`, `ConnectionLost`.
        """
        self.send_many([msg.Hello(token=as_token(token))])
        ok = result_of(self.receive(1)[0][1], msg.HelloOk)
        self.protocol.max_message_size = ok.max_message_size
        return ok

    def send_many(self, requests: Iterable[msg.Request]) -> list[int]:
        """Send ``requests`` in one write; return their request ids in order.

        Raises `MessageTooLarge` (nothing is sent) or `ConnectionLost`.
        """
        ids = []
        frames = []
        for request in requests:
            request_id, frame = self.protocol.send(request)
            ids.append(request_id)
            frames.append(frame)
            self._longest_wait = max(self._longest_wait, getattr(request, "wait_ms", 0) / 1000.0)
        self.send_bytes(b"".join(frames))
        self._outstanding += len(ids)
        return ids

    def send_bytes(self, data: bytes) -> None:
        """Write prebuilt frames as they are. Returns None; raises `ConnectionLost`."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"connection lost while sending: {exc}") from exc

    def receive(self, count: int) -> list[tuple[int, msg.Response]]:
        """Block until ``count`` responses have arrived; return them in arrival order.

        Raises `ConnectionLost` if the connection fails or no response comes in
        time, `ProtocolError` if the server breaks the framing.
        """
        ready = self._ready
        if self.timeout is not None:
            self.sock.settimeout(self.timeout + self._longest_wait)
        while len(ready) < count:
            ready.extend(self.receive_some())
        taken, self._ready = ready[:count], ready[count:]
        self._outstanding -= count
        if self._outstanding <= 0:
            self._outstanding = 0
            self._longest_wait = 0.0
        return taken

    def receive_some(self) -> list[tuple[int, msg.Response]]:
        """Block for one read from the socket; return the responses it completed (maybe none).

        Responses to abandoned requests are not returned (see `abandon`).
        Raises as `receive`.
        """
        try:
            data = self.sock.recv(_RECV_SIZE)
        except OSError as exc:
            raise ConnectionLost(f"connection lost while waiting for a response: {exc}") from exc
        if not data:
            raise ConnectionLost("the server closed the connection")
        responses = self.protocol.receive_data(data)
        releases = self.protocol.data_to_send()
        if releases:
            self.send_bytes(releases)
        return responses

    def abandon(self, request_id: int, cancel: bool = False) -> None:
        """Stop waiting for a request: its response is dropped, and a message it brings is released.

        ``cancel`` (for a waiting read) also tells the server to end the wait now.
        Returns None; raises `ConnectionLost`.
        """
        self.protocol.abandon(request_id, cancel)
        self._outstanding = max(0, self._outstanding - 1)
        pending = self.protocol.data_to_send()
        if pending:
            self.send_bytes(pending)

    def close(self) -> None:
        """Close the socket; the server requeues whatever this connection holds in flight. Returns None;
        raises nothing."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client(Commands):
    """A blocking client: each command sends one request and waits for its answer.

    >>> with Client.connect("127.0.0.1:3003") as client:
    ...     client.create("jobs")
    ...     id_ = client.send("jobs", b"hello")
    ...     message = client.read("jobs", timeout_ms=30_000)
    ...     if message is not None:  # None: the queue was empty
    ...         client.confirm(message.id)
    """

    def __init__(self, connection: PipelinedClient) -> None:
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

        Raises `ConnectionLost` (a `ConnectionError`) or `AuthenticationFailed`.
        """
        return cls(PipelinedClient.connect(address, timeout, token=token, tls=tls))

    def _call(self, request: msg.Request, decode: Decode[T]) -> T:
        (request_id,) = self.connection.send_many((request,))
        ((answered, response),) = self.connection.receive(1)
        if answered != request_id:
            raise ProtocolError(f"expected the answer to request {request_id}, got one to {answered}")
        return decode(response)

    def pipeline(self) -> Pipeline:
        """Return a new pipeline on this connection: queue commands, then `Pipeline.execute` sends
        them in one write. Raises nothing."""
        return Pipeline(self.connection)

    def close(self) -> None:
        """Close the connection; messages it holds in flight go back to their queues. Returns None;
        raises nothing."""
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
    """

    def __init__(self, connection: PipelinedClient) -> None:
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
        `ConnectionLost` if the connection fails (the results are then lost).
        """
        queued, self._queued = self._queued, []
        if not queued:
            return []
        ids = self.connection.send_many(request for request, _ in queued)
        # Matched by request id: the server may answer out of order.
        responses = dict(self.connection.receive(len(queued)))
        results: list[object] = []
        for (_, decode), request_id in zip(queued, ids):
            try:
                results.append(decode(responses[request_id]))
            except RequestError as exc:
                if raise_on_error:
                    raise
                results.append(exc)
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queued.clear()

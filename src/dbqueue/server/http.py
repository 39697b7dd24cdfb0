"""The HTTP listener: the SQS API, ``/metrics`` and the web console on one port, served by aiohttp on the server's loop.

Theory of operation
-------------------
`HttpListener` runs aiohttp's low-level server (its C request parser, no
router) in the loop that runs the `Server`, and shares its `Broker`: an SQS
request is answered by `sqs_api.SqsService` between two of the sessions'
callbacks, never beside them, so the broker needs no lock, and a message sent
over SQS is read over dbqueue's own protocol and the other way round.

Each accepted connection is an `sqs_api.SqsConnection` around the handler
aiohttp would have used: plain JSON-protocol requests are answered straight
from their bytes (the SQS fast path, `dbqueue.sqs.fastpath`), with the same
answers and the same checks as below; the first request of any other shape
hands the connection to aiohttp for good. What follows is that general path.

Each request goes, in order, through:

1. the body limit, checked against ``Content-Length`` before anything is
   buffered (aiohttp's ``client_max_size`` bounds a chunked body as it comes);
   a body over it is refused with an SQS-shaped error and the connection closed;
2. the body, read within `HttpSettings.body_timeout` (a slow body closes the
   connection);
3. the signature (SigV4, `dbqueue.sqs.SignatureVerifier`) against the SQS
   credentials; a server with a token and no SQS credentials takes its token as
   the one secret (access key id `TOKEN_ACCESS_KEY_ID`), so that the SQS API is
   no way around the token the native port and the console ask for; with
   neither, the listener accepts unsigned requests, and refuses to bind
   anything but loopback unless told it is on a trusted network (the rule of
   the native port without a token);
4. the SQS layer: `dbqueue.sqs.wire` decodes, `SqsService` acts, `wire` encodes;
   every refusal is answered in the request's protocol (JSON or XML).

``GET`` and ``HEAD /metrics`` answer from the metrics registry (`metrics`), with
format and compression negotiated by prometheus_client. They ask for no
signature and no token, as the ``--metrics-port`` endpoint: a Prometheus
scrape is read-only (names and figures of queues, never a message) and
scrapers are rarely set up to sign.

The web console (`console`) answers ``GET``/``HEAD /`` without a query (an
SQS request always has one: an action in its query or its body) and every
path under ``/console/``; it has its own guards (the server's token, a
session cookie, CSRF), not the SQS signature, and the listener starts and
stops its sampler with itself (`console.Sampler`: one timer, once a second).

Connections: one that sends no complete request within
`HttpSettings.idle_timeout` is closed, whether it never sent one (one sweep
for all new connections, every quarter of the timeout: aiohttp closes such
connections itself only since 3.14) or is idle between two (aiohttp's
keep-alive timeout, which also cuts a header trickled a byte at a time);
header lines are bounded in length and number. An idle connection costs a
parser and a parked task, no thread, so thousands of them do not hold up the
others; beyond the server's ``max_connections`` open HTTP connections, a new
one is answered 503 and closed. A long poll is a parked future (see
`sqs_api`): it holds nothing else up either.

Receipt handles are authenticated under a secret (`dbqueue.sqs.ReceiptHandles`)
that must outlive the process, or every handle out becomes invalid at a
restart (a delete with one refused, where SQS answers success). `receipt_secret`
says where it comes from: given; else a file named by ``receipt_secret_file``
or ``DBQUEUE_SQS_RECEIPT_SECRET_FILE`` (servers given one file share their
handles); else ``sqs-receipt-secret`` in the server's data directory; else, a
server that keeps nothing, fresh randomness (its messages do not outlive it
either). A file missing is created once, from `os.urandom`, readable by its
owner alone.

Stopping: the listening socket closes, parked receives are answered with no
messages, open requests get `HttpSettings.shutdown_timeout` to finish, and
every message in flight through SQS goes back to its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl as ssl_module
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from ..errors import StoreError
from ..sqs import (
    ACCOUNT_ID,
    MAX_MESSAGE_SIZE,
    ErrorCode,
    HttpReply,
    ReceiptHandles,
    SignatureVerifier,
    SqsError,
    decode_request,
    encode_error,
    encode_result,
    protocol_of,
)
from .console import Console
from .metrics import RequestStats, SqsStats, build_registry, serve_metrics
from .security import is_loopback
from .sqs_api import SqsConnection, SqsHost, SqsService

__all__ = [
    "HttpHost",
    "HttpListener",
    "HttpSettings",
    "MAX_BODY",
    "read_credentials",
    "token_credentials",
    "TOKEN_ACCESS_KEY_ID",
    "ACCESS_KEY_VARIABLE",
    "SECRET_KEY_VARIABLE",
    "RECEIPT_SECRET_VARIABLE",
    "RECEIPT_SECRET_NAME",
    "receipt_secret",
]

log = logging.getLogger("dbqueue.server")

MAX_BODY = 3 * MAX_MESSAGE_SIZE + 65_536
"""The largest request body accepted: a full batch (1 MiB of message) as the most verbose encoding writes it.

A form percent-encodes each byte of UTF-8 as three characters, and JSON writes
a 2-byte character as a 6-character escape: three times the message, and room
for the parameters around it.
"""

ACCESS_KEY_VARIABLE = "DBQUEUE_SQS_ACCESS_KEY_ID"
SECRET_KEY_VARIABLE = "DBQUEUE_SQS_SECRET_ACCESS_KEY"
RECEIPT_SECRET_VARIABLE = "DBQUEUE_SQS_RECEIPT_SECRET_FILE"
RECEIPT_SECRET_NAME = "sqs-receipt-secret"
"""The receipt-handle secret's file in a server's data directory (see `receipt_secret`)."""
_MIN_SECRET = 16

TOKEN_ACCESS_KEY_ID = "dbqueue"
"""The access key id of the server's token when it is the SQS secret (a server with a token and no SQS credentials)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """The listener's timeouts and body limit.

    ``idle_timeout``: seconds a connection may go without a complete request
    (before its first, or between two) before it is closed; ``body_timeout``:
    seconds a request's body may take to arrive; ``max_body``: the largest body
    accepted, in bytes; ``shutdown_timeout``: seconds open requests get to
    finish when the listener stops.
    """

    idle_timeout: float = 60.0
    body_timeout: float = 30.0
    max_body: int = MAX_BODY
    shutdown_timeout: float = 1.0


class HttpHost(SqsHost, Protocol):
    """What the listener uses of the server besides what the SQS service uses: its address, TLS, connections."""

    @property
    def host(self) -> str: ...

    @property
    def ssl(self) -> ssl_module.SSLContext | None: ...

    @property
    def max_connections(self) -> int: ...

    # Its open sessions of dbqueue's own protocol (counted for /metrics).
    @property
    def sessions(self) -> set[Any]: ...

    @property
    def request_stats(self) -> RequestStats | None: ...


def read_credentials(path: str | os.PathLike[str] | None, environment: Mapping[str, str]) -> dict[str, str]:
    """Return the SQS credentials (access key id -> secret access key) of a file and of the environment.

    The file holds one ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` a line (split at the
    first colon; blank lines and lines starting with ``#`` are skipped). The
    environment may add one pair: `ACCESS_KEY_VARIABLE` and `SECRET_KEY_VARIABLE`
    (``DBQUEUE_SQS_ACCESS_KEY_ID``, ``DBQUEUE_SQS_SECRET_ACCESS_KEY``), both or
    neither. Returns an empty dict when there are none. Raises `ValueError` for a
    malformed line (named by its number, never showing a secret), an empty key
    or secret, or one of the two variables without the other; `OSError` if the
    file cannot be read.
    """
    credentials: dict[str, str] = {}
    if path is not None:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            access_key, colon, secret = line.partition(":")
            access_key, secret = access_key.strip(), secret.strip()
            if not colon or not access_key or not secret:
                raise ValueError(f"{path}, line {number}: expected ACCESS_KEY_ID:SECRET_ACCESS_KEY")
            credentials[access_key] = secret
    access_key = environment.get(ACCESS_KEY_VARIABLE, "").strip()
    secret = environment.get(SECRET_KEY_VARIABLE, "").strip()
    if bool(access_key) != bool(secret):
        raise ValueError(f"{ACCESS_KEY_VARIABLE} and {SECRET_KEY_VARIABLE} go together: set both or neither")
    if access_key:
        credentials[access_key] = secret
    return credentials


def token_credentials(token: bytes) -> dict[str, str]:
    """The SQS credentials of a server whose token is the secret: `TOKEN_ACCESS_KEY_ID` -> the token as text.

    A token that is not UTF-8 cannot be an SDK's secret key: it gets no
    credentials at all, so that every SQS request is refused (never accepted
    unsigned). An empty one has none either (`read_token` refuses it anyway).
    """
    try:
        secret = token.decode()
    except UnicodeDecodeError:
        log.warning("the server's token is not UTF-8: no SQS client can sign with it, every SQS request is refused")
        return {}
    return {TOKEN_ACCESS_KEY_ID: secret} if secret else {}


class _PeerFaults(logging.Filter):
    """aiohttp logs a request it cannot parse as an error with a traceback; it is the peer's fault: one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_peer_log = logging.getLogger("dbqueue.server.http")
_peer_log.addFilter(_PeerFaults())


class _Connections(web.Server):
    """aiohttp's low-level server, counting its open connections (its own list is copied at each look) and
    keeping those that have not sent a whole request yet, oldest first, with when they came."""

    def __init__(self, handler: Callable[[web.BaseRequest], Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.open = 0
        self.unproven: dict[RequestHandler, float] = {}
        self._clock = asyncio.get_running_loop().time

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open += 1
        self.unproven[handler] = self._clock()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.open -= 1
        self.unproven.pop(handler, None)

    def sweep(self, cutoff: float) -> None:
        """Close the connections that came before ``cutoff`` and have not sent a whole request since."""
        unproven = self.unproven
        while unproven:
            handler, since = next(iter(unproven.items()))
            if since >= cutoff:
                return
            del unproven[handler]
            log.info("closing %s: no request within the idle timeout", handler.peername)
            handler.force_close()


def receipt_secret(
    file: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None, environment: Mapping[str, str]
) -> bytes:
    """The secret that keys the receipt handles: read from a file kept across restarts, made there the first time.

    The file is ``file``, else ``environment``'s `RECEIPT_SECRET_VARIABLE`, else
    `RECEIPT_SECRET_NAME` in ``data_dir``; with none of them the secret is
    random (a server without a store loses its messages at a restart anyway).
    Its bytes, surrounding whitespace stripped, are the secret (any file of at
    least 16 bytes, such as ``openssl rand -hex 32``'s output). A file missing
    is written with 32 random bytes in hex, mode 0600, and linked into place in
    one step, so that servers starting together on one file all read the same.
    Raises `ValueError` for a file shorter than 16 bytes, `OSError` for one
    that cannot be read or made.
    """
    chosen = file or environment.get(RECEIPT_SECRET_VARIABLE) or None
    if chosen is None:
        if data_dir is None:
            return secrets.token_bytes(32)
        chosen = Path(data_dir) / RECEIPT_SECRET_NAME
    path = Path(chosen)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(os.urandom(32).hex() + "\n")
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another server made it first: theirs is the one
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    secret = path.read_bytes().strip()
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"the SQS receipt-handle secret in {path} is shorter than {_MIN_SECRET} bytes")
    return secret


class _Refused(asyncio.Protocol):
    """A connection over the limit: answered 503 and closed before anything is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        transport.close()


class HttpListener:
    """The SQS API, ``/metrics`` and the console over HTTP on ``host:port`` (0: any free port, `port` after `start`).

    ``server`` is the `Server` (any `HttpHost`), started, whose loop runs this
    listener and whose broker it shares; ``host`` defaults to the server's.
    ``credentials`` maps access key ids to secret access keys: with any, every
    SQS request must be signed (SigV4) with one of them. Without, ``token``
    (the server's, the native port's Hello) stands for them: requests must be
    signed with it as the secret of `TOKEN_ACCESS_KEY_ID`. With neither,
    unsigned requests are accepted. Without credentials, a ``host`` that is
    not loopback is refused unless ``insecure``. ``/metrics`` asks for
    neither. TLS is the server's (``server.ssl``). ``receipt_secret`` keys
    the receipt handles; without it, `start` reads the secret from
    ``receipt_secret_file`` (or `RECEIPT_SECRET_VARIABLE`, or the server's
    data directory; see `receipt_secret`), so that handles outlive a restart.
    ``fast_path`` (on by default) makes each connection an `sqs_api.SqsConnection`,
    which answers plain JSON requests from their bytes; off, aiohttp serves
    every request (the general path alone: for comparisons, such as the SQS
    benchmark's ``--fast-path off``).

    Raises `ValueError` for a non-loopback ``host`` without credentials or ``insecure`` (a token is not
    enough there: the rule of ``dbqueue serve``, which asks for SQS keys on any public SQS API).
    """

    def __init__(
        self,
        server: HttpHost,
        port: int,
        *,
        host: str | None = None,
        credentials: Mapping[str, str] | None = None,
        token: bytes | None = None,
        insecure: bool = False,
        settings: HttpSettings | None = None,
        receipt_secret: bytes | None = None,
        receipt_secret_file: str | os.PathLike[str] | None = None,
        fast_path: bool = True,
    ) -> None:
        self.server = server
        self.fast_path = fast_path
        self.host = server.host if host is None else host
        self.port = port
        self.settings = settings or HttpSettings()
        if not credentials and not insecure and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve the SQS API on {self.host} without credentials: anyone who can reach it could read "
                "and delete every message. Give it keys with --sqs-credentials FILE (or DBQUEUE_SQS_ACCESS_KEY_ID and "
                "DBQUEUE_SQS_SECRET_ACCESS_KEY), or pass --insecure if the network is trusted."
            )
        # What signs: the SQS credentials, else the token (`token_credentials`; a token that cannot be a secret
        # leaves the table empty, and every request is refused), else nothing (unsigned requests accepted).
        self.signed_by = "credentials" if credentials else "token" if token else None
        table = dict(credentials) if credentials else token_credentials(token) if token else None
        self.verifier = (
            SignatureVerifier(table, allow_unsigned_payload=server.ssl is not None) if table is not None else None
        )
        self.scheme = "https" if server.ssl is not None else "http"
        # The secret is read at `start`, once the server has made its data directory; none is issued before.
        self._receipt_secret = receipt_secret
        self.receipt_secret_file = receipt_secret_file
        self.service = SqsService(server, ReceiptHandles(receipt_secret or secrets.token_bytes(32)))
        self.stats = SqsStats(self.connection_count)
        self.registry = build_registry(
            server.request_stats or RequestStats(),
            lambda: [queue.stats() for queue in server.broker.queues.values()],
            lambda: len(server.sessions),
            self.stats,
        )
        self.console = Console.for_listener(server, self.host, self.scheme, self.settings.body_timeout)
        self._web: _Connections | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def connection_count(self) -> int:
        """The open HTTP connections."""
        return self._web.open if self._web is not None else 0

    async def start(self) -> None:
        """Bind and start answering; raise `OSError` if the address is taken, `StoreError` if the receipt
        secret's file cannot be read or made, or is too short."""
        loop = asyncio.get_running_loop()
        if self._receipt_secret is None:
            data_dir = getattr(self.server, "data_dir", None)  # a `Server`'s; a test host may have none
            try:
                secret = receipt_secret(self.receipt_secret_file, data_dir, os.environ)
            except (OSError, ValueError) as exc:
                # A file the server keeps across restarts, as its store: refused as the store would be.
                raise StoreError(f"cannot use the SQS receipt-handle secret: {exc}") from exc
            self.service.handles = ReceiptHandles(secret)
        max_body = self.settings.max_body

        def make_request(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_body)

        self._web = web_server = _Connections(
            self._handle,
            request_factory=make_request,
            handler_cancellation=True,  # a long poll whose client went away gives its messages back
            keepalive_timeout=self.settings.idle_timeout,
            lingering_time=0,  # a refused body is not drained: the connection closes
            access_log=None,
            logger=_peer_log,
        )
        limit = self.server.max_connections
        fast_path = self.fast_path

        def protocol() -> asyncio.BaseProtocol:
            if web_server.open >= limit:
                return _Refused()
            if not fast_path:
                return web_server()
            return SqsConnection(web_server(), self, web_server.unproven)

        self._listener = await loop.create_server(
            protocol, self.host, self.port, reuse_address=True, ssl=self.server.ssl, backlog=4096
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        self._sweep(loop)
        self.console.start()
        log.info("web console on %s://%s:%d/ (%s)", self.scheme, self.host, self.port, self.console.access)
        log.info(
            "SQS API and metrics on %s://%s:%d (%s)",
            self.scheme,
            self.host,
            self.port,
            {
                "credentials": "signed requests only",
                "token": f"signed requests only: access key id {TOKEN_ACCESS_KEY_ID}, the server's token as secret key",
                None: "unsigned requests accepted",
            }[self.signed_by],
        )

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer for every connection still to send its first request.
        if self._web is None:
            return
        idle = self.settings.idle_timeout
        self._web.sweep(loop.time() - idle)
        self._sweeper = loop.call_later(max(0.05, idle / 4), self._sweep, loop)

    async def stop(self) -> None:
        """Stop answering: close the socket, end parked receives, let open requests finish, give messages back."""
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.service.stop_waiting()
        self.console.stop()  # before the shutdown: its event streams end now, not at the shutdown's timeout
        if self._web is not None:
            await self._web.shutdown(self.settings.shutdown_timeout)
            self._web = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        self.service.close()

    def rebind(self) -> None:
        """Follow the server to a new broker (it reloaded its store after a failed commit): see `SqsService.rebind`."""
        self.service.rebind()

    # --- requests --------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._web is not None:
            self._web.unproven.pop(request.protocol, None)
        path, _, query = request.raw_path.partition("?")
        if path == "/metrics":
            return serve_metrics(request, self.registry)
        if Console.routes(request.method, path, query):
            return await self.console.handle(request, path, query)
        return await self._sqs(request, path, query)

    async def _sqs(self, request: web.BaseRequest, path: str, query: str) -> web.StreamResponse:
        headers = request.headers
        target = headers.get("X-Amz-Target")
        protocol = protocol_of(headers.get("Content-Type"), target)
        request_id = str(uuid.uuid4())
        stats = self.stats
        length = request.content_length
        if length is not None and length > self.settings.max_body:
            return self._too_large(protocol, request_id, length)
        if headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(protocol, request_id, None)
        except TimeoutError:
            log.info("closing %s: its request body took over %g s", request.remote, self.settings.body_timeout)
            response = web.Response(status=408, text="request body too slow\n")
            response.force_close()
            return response
        try:
            sender = self._authenticate(request, path, query, body)
            decoded = decode_request(protocol, path, query, body, target)
            stats.actions[decoded.action] = stats.actions.get(decoded.action, 0) + 1
            result = await self.service.act(decoded, self._endpoint(request), sender)
            reply = encode_result(protocol, decoded.action, result, request_id)
        except SqsError as error:
            stats.errors[error.shape] = stats.errors.get(error.shape, 0) + 1
            reply = encode_error(protocol, error, request_id)
        except Exception:
            log.exception("SQS request %s from %s failed", request_id, request.remote)
            stats.errors["InternalError"] = stats.errors.get("InternalError", 0) + 1
            reply = encode_error(protocol, SqsError(ErrorCode.INTERNAL_ERROR), request_id)
        return _response(reply)

    def _authenticate(self, request: web.BaseRequest, path: str, query: str, body: bytes) -> str:
        """Return the access key id that signed the request (`ACCOUNT_ID` when unsigned requests are accepted);
        raise `SqsError` for a request unsigned or wrongly signed when a signature is asked for."""
        verifier = self.verifier
        if verifier is None:
            return ACCOUNT_ID
        try:
            return verifier.verify(request.method, path, query, request.headers.items(), body, time.time())
        except SqsError as error:
            log.warning("SQS request from %s refused: %s", request.remote, error.shape)
            raise

    def _endpoint(self, request: web.BaseRequest) -> str:
        """The server as the client addressed it, for the queue URLs it is given."""
        host = request.headers.get("Host")
        if not host:
            sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
            host = f"{sockname[0]}:{sockname[1]}" if isinstance(sockname, tuple) else f"{self.host}:{self.port}"
        return f"{self.scheme}://{host}"

    def _too_large(self, protocol: Any, request_id: str, length: int | None) -> web.Response:
        size = f"of {length} bytes " if length is not None else ""
        error = SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE,
            f"The request body {size}is over the limit of {self.settings.max_body} bytes.",
        )
        self.stats.errors[error.shape] = self.stats.errors.get(error.shape, 0) + 1
        response = _response(encode_error(protocol, error, request_id), status=413)
        response.force_close()  # the body is not read: nothing after it on this connection can be trusted
        return response


def _response(reply: HttpReply, status: int | None = None) -> web.Response:
    return web.Response(status=status or reply.status, body=reply.body, headers=reply.headers)

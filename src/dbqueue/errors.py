"""One error tree for the whole package, and the table from wire error code to class.

Errors fall in two families, as in trio and h11:

* *the server refused a request* (`RequestError` and its subclasses): the
  connection is fine and the caller may go on using it;
* *the connection is unusable* (`ProtocolError`, `ConnectionLost`): the peer
  sent bytes that break the framing, or the socket went away.

Two kinds of `ConnectionLost` say more: `Timeout`, no answer came in time (the
blocking clients' connection stays usable, and the request may still have
been carried out), and `TlsHandshakeFailed`, the connection never came up
because TLS failed (the `ssl` error is its ``__cause__``).
"""

from __future__ import annotations

__all__ = [
    "DbQueueError",
    "RequestError",
    "NoSuchQueue",
    "NoSuchMessage",
    "QueueFull",
    "Requeued",
    "InvalidRequest",
    "UnknownOpcode",
    "MessageTooLarge",
    "InvalidQueueName",
    "UnsupportedVersion",
    "LimitExceeded",
    "OverMemoryBudget",
    "StoreUnavailable",
    "AuthenticationFailed",
    "ProtocolError",
    "ConnectionLost",
    "Timeout",
    "TlsHandshakeFailed",
    "StoreError",
    "ErrorCode",
    "error_for_code",
]

import enum


class ErrorCode(enum.IntEnum):
    """Codes carried by the wire `Error` response (see docs/protocol.md)."""

    MALFORMED = 1  # the body does not parse for its opcode
    UNKNOWN_OPCODE = 2
    MESSAGE_TOO_LARGE = 3
    INVALID_QUEUE_NAME = 4
    NO_SUCH_QUEUE = 5
    NO_SUCH_MESSAGE = 6
    UNSUPPORTED_VERSION = 7
    BAD_FRAME = 8  # framing lost: the server closes the connection after it
    QUEUE_FULL = 9  # only used client-side; the wire answers with a Full frame
    REQUEUED = 10  # only used client-side; the wire answers with a Requeued frame
    LIMIT_EXCEEDED = 11  # a configured server limit (queues, connections, in flight...)
    NOT_AUTHENTICATED = 12  # no or wrong token: the server closes the connection after it
    OVER_MEMORY_BUDGET = 13  # a send refused: queued payloads fill the server's memory budget
    STORE_UNAVAILABLE = 14  # a change refused or undone: the store cannot commit (full disk, I/O error)
    INTERNAL = 99


class DbQueueError(Exception):
    """Root of every error dbqueue raises."""


class RequestError(DbQueueError):
    """The server refused one request; the connection stays usable."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0])


class NoSuchQueue(RequestError, LookupError):
    """No queue has that name."""

    code = ErrorCode.NO_SUCH_QUEUE


class NoSuchMessage(RequestError, LookupError):
    """No message with that id is in flight (never read, already confirmed, or its queue was deleted)."""

    code = ErrorCode.NO_SUCH_MESSAGE


class QueueFull(RequestError):
    """The queue holds as many messages as its capacity allows."""

    code = ErrorCode.QUEUE_FULL


class Requeued(RequestError):
    """The message's timeout passed before the confirm: it went back to its queue."""

    code = ErrorCode.REQUEUED


class InvalidRequest(RequestError, ValueError):
    """The request was malformed or used an unknown opcode."""

    code = ErrorCode.MALFORMED


class UnknownOpcode(InvalidRequest):
    """The opcode is not one this server knows (a newer client?)."""

    code = ErrorCode.UNKNOWN_OPCODE


class MessageTooLarge(InvalidRequest):
    """The message is larger than the server's limit."""

    code = ErrorCode.MESSAGE_TOO_LARGE


class InvalidQueueName(InvalidRequest):
    """Queue names are 1-255 bytes of UTF-8."""

    code = ErrorCode.INVALID_QUEUE_NAME


class UnsupportedVersion(RequestError):
    """The server and the client share no protocol version."""

    code = ErrorCode.UNSUPPORTED_VERSION


class LimitExceeded(RequestError):
    """A configured server limit was reached (queues, in-flight messages per connection, connections)."""

    code = ErrorCode.LIMIT_EXCEEDED


class OverMemoryBudget(RequestError):
    """The server's queued payloads fill its memory budget: sends are refused until consumers drain
    the backlog (reads and confirms keep working). Retry later, with a backoff."""

    code = ErrorCode.OVER_MEMORY_BUDGET


class StoreUnavailable(RequestError):
    """The store cannot commit (a full disk, an I/O error): this change was not stored and did not
    happen. Reads keep working; retry once the operator has made room."""

    code = ErrorCode.STORE_UNAVAILABLE


class AuthenticationFailed(DbQueueError, PermissionError):
    """The server wants a token this client did not give, or gave wrong; it closes the connection."""


class ProtocolError(DbQueueError):
    """The peer sent bytes that break the framing; the connection cannot go on."""


class ConnectionLost(DbQueueError, ConnectionError):
    """The connection closed or failed before the answer arrived."""


class Timeout(ConnectionLost, TimeoutError):
    """No answer came in time. The request may still have been carried out: a send that timed out
    may be queued (a retry may queue it twice), a confirm done. The blocking clients' connection
    stays usable (the late answer is dropped); the asyncio client's is closed.

    A `ConnectionLost`, so that ``except ConnectionLost`` still catches it, and a `TimeoutError`."""


class TlsHandshakeFailed(ConnectionLost):
    """The TLS handshake failed while connecting (an untrusted certificate, a server that does not
    speak TLS, a client certificate refused): nothing was sent. The `ssl.SSLError` is the
    ``__cause__``; what the clients raise is also an instance of that error's class, for code
    that catches `ssl.SSLError`."""


class StoreError(DbQueueError):
    """The store cannot be opened or written: the message names the file and says why."""


_CLASS_FOR_CODE: dict[int, type[RequestError]] = {
    ErrorCode.MALFORMED: InvalidRequest,
    ErrorCode.UNKNOWN_OPCODE: UnknownOpcode,
    ErrorCode.MESSAGE_TOO_LARGE: MessageTooLarge,
    ErrorCode.INVALID_QUEUE_NAME: InvalidQueueName,
    ErrorCode.NO_SUCH_QUEUE: NoSuchQueue,
    ErrorCode.NO_SUCH_MESSAGE: NoSuchMessage,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    ErrorCode.QUEUE_FULL: QueueFull,
    ErrorCode.REQUEUED: Requeued,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.OVER_MEMORY_BUDGET: OverMemoryBudget,
    ErrorCode.STORE_UNAVAILABLE: StoreUnavailable,
}


def error_for_code(code: int, message: str) -> DbQueueError:
    """Return the exception instance for a wire error code (unknown codes give a plain `RequestError`)."""
    if code == ErrorCode.BAD_FRAME:
        return ProtocolError(message)
    if code == ErrorCode.NOT_AUTHENTICATED:
        return AuthenticationFailed(message)
    return _CLASS_FOR_CODE.get(code, RequestError)(message)

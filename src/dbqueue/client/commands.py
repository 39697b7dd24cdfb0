"""Every client command, written once.

Theory of operation
-------------------
Each wire operation is one method of `Commands`: it checks its arguments,
builds the request, and hands it to ``self._call`` with the function that
turns the server's answer into the command's result (its decoder). Each
client kind has one ``_call(request, decode)`` that does the I/O, and that is
all they differ in:

* the blocking `Client` sends, waits, and returns ``decode(answer)``;
* the `AsyncClient`'s ``_call`` is a coroutine of the same;
* the `Pipeline`'s queues the pair and returns the pipeline, for chaining.

Types
-----
A command's result type depends on the command (``send`` gives an ``int``)
and on the client kind (an ``int``, a coroutine of one, or the pipeline).
Python's type system cannot say "``F[int]`` for the client's ``F``" (it has
no higher-kinded types), and a stub per kind would copy every signature three
times and drift. So each method is written once, returning ``Result[int]``
("an ``int``, in the client kind's form"), and the `command` decorator types
it as a `Command`: a descriptor type whose parameters and result come from
that one definition, and whose ``__get__`` maps the result through the
``_call`` of the client it is read from. A ``_call`` that returns what
``decode`` returns gives the result itself; one that returns a coroutine of
it gives a coroutine of the result; one that returns anything else (the
pipeline) gives that. Nothing of this exists at run time: `command` returns
the method unchanged, so a command costs what a plain method costs.
tests/typing runs ``mypy --strict`` on a program that uses every command of
every kind, and on one that it must reject.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeAlias, TypeVar, cast, overload

from ..errors import (
    NoSuchMessage,
    ProtocolError,
    QueueFull,
    RequestError,
    Requeued,
    TlsHandshakeFailed,
    error_for_code,
)
from ..protocol import messages as msg

__all__ = [
    "REQUESTS",
    "Command",
    "Commands",
    "Decode",
    "Message",
    "Result",
    "as_token",
    "command",
    "delay_ms",
    "message_id",
    "parse_address",
    "result_of",
    "tls_context",
    "tls_failure",
    "visibility_ms",
    "wait_ms",
]

Message = msg.Message

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
C_co = TypeVar("C_co", covariant=True)

Decode: TypeAlias = Callable[[msg.Response], T]
"""Turns a server's answer into a command's result, or raises the error the answer means."""


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """Return the (host, port) pair that ``"host:port"`` (or a (host, port) pair) names.

    ``"[::1]:3003"`` gives ``("::1", 3003)``; an empty host means 127.0.0.1.
    Raises `ValueError` if there is no ``:port``.
    """
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def as_token(token: str | bytes | None) -> bytes:
    """Return a token as the Hello carries it (UTF-8; empty for none). Raises nothing."""
    if token is None:
        return b""
    return token.encode() if isinstance(token, str) else bytes(token)


def tls_context(tls: bool | ssl.SSLContext | None) -> ssl.SSLContext | None:
    """Return the client TLS context for a ``tls`` argument (True: the system's trusted CAs; None or
    False: no TLS). Raises `ssl.SSLError` if the system's CAs cannot be loaded."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    return tls


class _TlsRefused(TlsHandshakeFailed, ssl.SSLError):
    """A TLS handshake that failed, as raised: a `TlsHandshakeFailed`, and an `ssl.SSLError` as it
    was before dbqueue wrapped it."""

    def __str__(self) -> str:
        return str(self.args[0])  # not `ssl.SSLError`'s, which shows the arguments tuple


class _TlsUntrusted(TlsHandshakeFailed, ssl.SSLCertVerificationError):
    """An untrusted server certificate, as raised: a `TlsHandshakeFailed`, and an
    `ssl.SSLCertVerificationError` as it was before dbqueue wrapped it."""

    def __str__(self) -> str:
        return str(self.args[0])


def tls_failure(error: ssl.SSLError, host: str, port: int) -> TlsHandshakeFailed:
    """The `TlsHandshakeFailed` to raise (``from error``) for a TLS handshake with ``host:port``
    that failed with ``error``: a message that says what failed, and the ssl attributes
    (``reason``, ``verify_message``...) copied, as code that caught the ssl error reads them.
    Raises nothing."""
    if isinstance(error, ssl.SSLCertVerificationError):
        failure: TlsHandshakeFailed = _TlsUntrusted(
            f"TLS: the certificate of {host}:{port} is not trusted ({error.verify_message}): pass tls= an "
            "ssl.SSLContext that trusts the CA that signed it (ssl.create_default_context(cafile=...))"
        )
    else:
        reason = getattr(error, "reason", None)
        if reason == "WRONG_VERSION_NUMBER":
            hint = ": the server does not seem to speak TLS there (connect without tls)"
        else:
            hint = " (does the server require a client certificate? load one into the ssl.SSLContext)"
        failure = _TlsRefused(f"TLS handshake with {host}:{port} failed: {reason or error}{hint}")
    for name in ("library", "reason", "verify_code", "verify_message"):
        if hasattr(error, name):
            setattr(failure, name, getattr(error, name))
    return failure


def result_of(response: object, expected: type[R]) -> R:
    """Return ``response`` if it is an ``expected``; raise the error it means otherwise.

    Raises the `RequestError` subclass an `Error` answer names, `QueueFull`
    for Full, `Requeued` for Requeued, and `ProtocolError` for any other answer.
    """
    if isinstance(response, expected):
        return response
    if isinstance(response, msg.Error):
        raise error_for_code(response.code, response.message)
    if isinstance(response, msg.Full):
        raise QueueFull("the queue is at capacity; the message was not accepted")
    if isinstance(response, msg.Requeued):
        raise Requeued("the timeout passed before the confirm: the message went back to its queue")
    raise ProtocolError(f"expected {expected.__name__}, got {response!r}")


# --- decoders: one per kind of answer -----------------------------------------------------


def _nothing(expected: type[object]) -> Decode[None]:
    """A decoder for commands whose success carries nothing: it returns None."""

    def decode(response: object) -> None:
        result_of(response, expected)

    return decode


_created = _nothing(msg.QueueCreated)
_deleted = _nothing(msg.QueueDeleted)
_confirmed = _nothing(msg.Confirmed)
_touched = _nothing(msg.Touched)
_released = _nothing(msg.Released)


def _dead_lettered(response: object) -> None:
    if isinstance(response, msg.Full):  # not a send refused: the dead-letter queue has no room
        raise QueueFull("the dead-letter queue is at capacity: the message stays in flight")
    result_of(response, msg.DeadLettered)


def _queued_id(response: object) -> int:
    return result_of(response, msg.ObjectQueued).id


def _queued_ids(response: object) -> list[int]:
    return list(result_of(response, msg.ObjectsQueued).ids)


def _message_or_none(response: object) -> msg.Message | None:
    if isinstance(response, msg.Empty):
        return None
    return result_of(response, msg.Message)


def _messages(response: object) -> list[msg.Message]:
    return list(result_of(response, msg.Messages).messages)


def _confirm_results(response: object) -> list[RequestError | None]:
    outcomes = result_of(response, msg.ConfirmResults).outcomes
    return [_OUTCOME_ERRORS[outcome]() if outcome else None for outcome in outcomes]


_OUTCOME_ERRORS: dict[int, Callable[[], RequestError]] = {
    1: lambda: Requeued("the timeout passed before the confirm: the message went back to its queue"),
    2: lambda: NoSuchMessage("the message is not in flight (never read, already confirmed, or its queue was deleted)"),
}


def _peeked(response: object) -> list[msg.PeekedMessage]:
    return list(result_of(response, msg.Peeked).messages)


def _moved(response: object) -> int:
    return result_of(response, msg.Moved).count


def _purged(response: object) -> int:
    return result_of(response, msg.Purged).count


def _stats(response: object) -> dict[str, Any]:
    return result_of(response, msg.StatsReply).stats


def _queue_list(response: object) -> list[dict[str, Any]]:
    queues: list[dict[str, Any]] = _stats(response)["queues"]
    return queues


def _members(response: object) -> msg.MembersReply:
    return result_of(response, msg.MembersReply)


_U32_MAX = 0xFFFFFFFF
_NEVER_MS = _U32_MAX  # the wire's "never times out" (docs/protocol.md)
_QUEUE_DEFAULT_MS = 0  # the wire's "the queue's default visibility timeout"


def _seconds(name: str, value: float) -> float:
    """``value`` checked as a duration in seconds: a real number, not negative, not NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds (int or float), got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _ms_up(seconds: float) -> float:
    """``seconds`` in whole milliseconds, rounded up; infinity stays infinite. The product is rounded
    to a nanosecond first, so that 1.1 s is 1100 ms and not 1101 (1.1 * 1000 is 1100.0000000000002)."""
    return seconds if seconds == math.inf else math.ceil(round(seconds * 1000, 6))


def _finite_ms(name: str, ms: float, seconds: float, top: int, never: bool = False) -> int:
    """``ms`` as an int, if at most ``top``; ``never``: whether this duration may be `NEVER` instead
    (a visibility timeout), which the error then says. Raises `ValueError`."""
    if not ms <= top:  # inf included: only a visibility timeout may be NEVER
        hint = "for no timeout, use dbqueue.NEVER" if never else "dbqueue.NEVER is only a visibility timeout"
        raise ValueError(f"{name} must be at most {top / 1000} s ({hint}), got {seconds!r}")
    return int(ms)


_U64_MAX = 2**64 - 1  # message ids are 64-bit unsigned on the wire


def message_id(id: int) -> int:
    """``id`` checked as a message id: an int 0 .. 2**64-1. Raises `ValueError` out of range (the
    wire would refuse it with a message about its own encoding)."""
    if isinstance(id, int) and not 0 <= id <= _U64_MAX:
        raise ValueError(f"message id must be 0 .. 2**64-1, got {id!r}")
    return id


def visibility_ms(seconds: float | None, name: str = "visibility_timeout") -> int:
    """The wire's visibility timeout for ``seconds``: None -> 0 (the queue's default), `NEVER`
    (``math.inf``) -> 0xFFFFFFFF (never), else whole milliseconds rounded up (at least 1).

    Raises `ValueError` for 0, a negative number, NaN or more than 0xFFFFFFFE ms; `TypeError` for
    anything but a number.
    """
    if seconds is None:
        return _QUEUE_DEFAULT_MS
    value = _seconds(name, seconds)
    if value == math.inf:
        return _NEVER_MS
    if value == 0:
        # 0 on the wire means the queue's default: a zero timeout would be read as something else.
        raise ValueError(f"{name} must be more than 0 seconds (None: the queue's default; dbqueue.NEVER: never)")
    return _finite_ms(name, _ms_up(value), value, _NEVER_MS - 1, never=True)


def delay_ms(seconds: float, name: str = "delay") -> int:
    """The wire's delay for ``seconds``: whole milliseconds rounded up (so a message is never
    readable before it is due). Raises `ValueError` for a negative number, NaN, infinity or more
    than 0xFFFFFFFF ms; `TypeError` for anything but a number."""
    value = _seconds(name, seconds)
    return _finite_ms(name, _ms_up(value), value, _U32_MAX)


def wait_ms(seconds: float, name: str = "wait") -> int:
    """The wire's wait for ``seconds``: whole milliseconds rounded to the nearest. Raises as `delay_ms`."""
    value = _seconds(name, seconds)
    return _finite_ms(name, value * 1000 if value == math.inf else round(value * 1000), value, _U32_MAX)


# --- the command type ----------------------------------------------------------------------


class Result(Protocol[T_co]):
    """What a command returns, in its client kind's form: a ``T_co``, a coroutine of one, or the
    pipeline. Only the type checker sees it, and only inside `Commands`: every value fits it,
    and `Command` resolves it for each client kind."""


class _Returns(Protocol):
    """A client whose ``_call`` returns the decoded result: the blocking `Client`."""

    def _call(self, request: msg.Request, decode: Decode[T]) -> T: ...


class _Awaits(Protocol):
    """A client whose ``_call`` returns a coroutine of the decoded result: the `AsyncClient`."""

    def _call(self, request: msg.Request, decode: Decode[T]) -> Coroutine[Any, Any, T]: ...


class _Queues(Protocol[C_co]):
    """A client whose ``_call`` returns something else, the same for every command: the `Pipeline`."""

    def _call(self, request: msg.Request, decode: Decode[Any]) -> C_co: ...


class Command(Protocol[P, T_co]):
    """A command as the type checker sees it: read from a client, it is a method taking ``P``
    and returning what that client's ``_call`` makes of the result ``T_co``."""

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, client: _Returns, owner: type[Any]) -> Callable[P, T_co]: ...
    @overload
    def __get__(self, client: _Awaits, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T_co]]: ...
    @overload
    def __get__(self, client: _Queues[C_co], owner: type[Any]) -> Callable[P, C_co]: ...


def command(method: Callable[Concatenate[Any, P], Result[T]]) -> Command[P, T]:
    """Return ``method`` itself, typed as a `Command` (see the module docstring). Raises nothing."""
    # A function is a descriptor already: `Command` only tells the type checker what binding it gives.
    return cast("Command[P, T]", method)


# --- the commands --------------------------------------------------------------------------


class Commands:
    """The wire operations, one method each; ``_call`` decides what each returns.

    Every method documents its result as the blocking `Client` returns it; the
    `AsyncClient` returns a coroutine of the same, and a `Pipeline` queues the
    command and returns itself (a refusal then comes back from
    `Pipeline.execute` as a value). Every command raises `ValueError` for an
    argument out of its range before anything is sent, and `ConnectionLost`
    (a `ConnectionError`) if the connection fails.
    """

    def _call(self, request: msg.Request, decode: Decode[T]) -> Result[T]:
        raise NotImplementedError

    # --- queues ----------------------------------------------------------------------

    @command
    def create(
        self,
        name: str,
        *,
        capacity: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
        visibility_timeout: float | None = None,
    ) -> Result[None]:
        """Create queue ``name`` (no-op if it exists: the existing queue keeps its options).

        ``capacity`` bounds the messages it holds (ready, in flight and delayed);
        a message delivered ``max_deliveries`` times without a confirm moves to
        ``dead_letter_queue`` (which must exist), or is dropped if none is set.
        ``visibility_timeout`` (seconds, or `NEVER`) is the queue's default: what
        a read or touch that names none gets (None: the server's default,
        `Limits.default_visibility_timeout`, 30 s unless set otherwise).
        Returns None. Raises `InvalidQueueName`, `NoSuchQueue` (no such
        dead-letter queue), `InvalidRequest` (a dead-letter loop), `LimitExceeded`
        (the server holds its most queues), `ValueError` (a visibility timeout
        of 0 or below).
        """
        request = msg.CreateQueue(
            name,
            capacity or 0,
            max_deliveries or 0,
            dead_letter_queue or "",
            visibility_timeout_ms=visibility_ms(visibility_timeout),
        )
        return self._call(request, _created)

    @command
    def delete(self, name: str) -> Result[None]:
        """Delete queue ``name`` and every message it holds. Returns None. Raises `NoSuchQueue`."""
        return self._call(msg.DeleteQueue(name), _deleted)

    @command
    def purge(self, name: str) -> Result[int]:
        """Drop every ready and delayed message of ``name`` (in-flight ones stay).

        Returns how many were dropped. Raises `NoSuchQueue`.
        """
        return self._call(msg.Purge(name), _purged)

    @command
    def stats(self, name: str) -> Result[dict[str, Any]]:
        """Return queue ``name``'s figures as a dict (ready, in_flight, delayed, totals...).

        Raises `NoSuchQueue`.
        """
        return self._call(msg.Stats(name), _stats)

    @command
    def list_queues(self) -> Result[list[dict[str, Any]]]:
        """Return every queue's figures, a list of dicts as `stats` returns them. Raises nothing else."""
        return self._call(msg.ListQueues(), _queue_list)

    @command
    def members(self) -> Result[msg.MembersReply]:
        """Return the server's group: ``.members`` ("host:port" list) and ``.index`` (its own place).

        Raises nothing else.
        """
        return self._call(msg.Members(), _members)

    # --- sending ---------------------------------------------------------------------

    @command
    def send(self, queue: str, data: bytes, *, delay: float = 0.0) -> Result[int]:
        """Append ``data`` to ``queue``; with ``delay`` (seconds) it is readable only after that delay.

        Returns the message id. Raises `NoSuchQueue`, `QueueFull`, `MessageTooLarge`,
        `ValueError` (a negative delay, or over 0xFFFFFFFF ms).
        """
        delay_ = delay_ms(delay)
        if delay_:
            return self._call(msg.EnqueueDelayed(queue, bytes(data), delay_), _queued_id)
        return self._call(msg.Enqueue(queue, bytes(data)), _queued_id)

    @command
    def send_batch(self, queue: str, items: Iterable[bytes]) -> Result[list[int]]:
        """Append every message of ``items`` in one request, all or none. Returns their ids in order.

        Raises `NoSuchQueue`, `QueueFull` (none was accepted), `MessageTooLarge`
        (the batch must fit in the server's message-size limit), `ValueError` (empty).
        """
        batch = tuple(bytes(item) for item in items)
        if not batch:
            raise ValueError("send_batch needs at least one message (an empty batch: skip the call)")
        return self._call(msg.EnqueueBatch(queue, batch), _queued_ids)

    # --- reading ---------------------------------------------------------------------

    @command
    def read(
        self, queue: str, *, visibility_timeout: float | None = None, wait: float = 0.0
    ) -> Result[msg.Message | None]:
        """Take the next message of ``queue`` and return it: a `Message`, or None when there is none.

        Confirm it within ``visibility_timeout`` seconds, or it goes back to the
        queue for another reader (None: the queue's default, 30 s unless set at
        `create`; `NEVER`: it comes back only if this connection closes). With
        ``wait`` (seconds) the server waits up to that long for a message before
        answering None. Raises `NoSuchQueue`, `ValueError` (a duration out of range).
        """
        return self._call(msg.Read(queue, visibility_ms(visibility_timeout), wait_ms(wait)), _message_or_none)

    @command
    def read_batch(
        self, queue: str, max_messages: int, *, visibility_timeout: float | None = None, wait: float = 0.0
    ) -> Result[list[msg.Message]]:
        """Take up to ``max_messages`` (1-65535) messages of ``queue``, each to confirm within
        ``visibility_timeout`` (as for `read`).

        Returns a list, empty when none came (after ``wait`` seconds at most, as
        for `read`). Raises `NoSuchQueue`, `ValueError`.
        """
        if not isinstance(max_messages, int) or not 1 <= max_messages <= 0xFFFF:
            raise ValueError(f"max_messages must be 1 .. 65535, got {max_messages!r}")
        return self._call(
            msg.ReadBatch(queue, max_messages, visibility_ms(visibility_timeout), wait_ms(wait)), _messages
        )

    @command
    def peek(
        self, queue: str, count: int = 10, *, delayed: bool = False, in_flight: bool = False
    ) -> Result[list[msg.PeekedMessage]]:
        """Look at up to ``count`` (1-65535) messages of ``queue`` without taking them.

        Returns `PeekedMessage`s, the ready ones first in the order a read
        would take them; with ``delayed`` and ``in_flight`` those are listed too,
        each marked by its ``state``. Nothing changes on the server: no delivery
        is counted, no deadline moves. Raises `NoSuchQueue`, `ValueError`.
        """
        if not isinstance(count, int) or not 1 <= count <= 0xFFFF:
            raise ValueError(f"count must be 1 .. 65535, got {count!r}")
        return self._call(msg.Peek(queue, count, delayed=delayed, in_flight=in_flight), _peeked)

    @command
    def move(self, source: str, destination: str, *, count: int | None = None) -> Result[int]:
        """Move up to ``count`` ready messages (None: all those ready when it begins) from the front of
        ``source`` to the back of ``destination``, 2,000 a step on the server (other clients are served
        between steps; up to 2,000 is one step): once it answers they are stored in ``destination``,
        and a connection lost meanwhile leaves each message in one queue or the other, never both or
        neither. Redrives a dead-letter queue: ``move("jobs-dead", "jobs")``.

        Moved messages keep their ids, data, delivery counts, enqueue times and
        origins. A ``destination`` with a capacity takes what fits; the rest
        stay in ``source``. Returns how many moved. Raises `NoSuchQueue`,
        `InvalidRequest` (the same queue twice), `StoreUnavailable` (the store stopped committing
        during the move: the message says how far it got), `ValueError`.
        """
        if count is not None and (not isinstance(count, int) or not 1 <= count <= _U32_MAX):
            raise ValueError(f"count must be None (all) or 1 .. {_U32_MAX}, got {count!r}")
        return self._call(msg.Move(source, destination, count or 0), _moved)

    # --- settling --------------------------------------------------------------------

    @command
    def confirm(self, id: int) -> Result[None]:
        """Confirm message ``id``: the server forgets it. Returns None.

        Raises `Requeued` (its timeout passed first), `NoSuchMessage`, `ValueError` (``id`` is not
        0 .. 2**64-1).
        """
        return self._call(msg.Confirm(message_id(id)), _confirmed)

    @command
    def confirm_batch(self, ids: Iterable[int]) -> Result[list[RequestError | None]]:
        """Confirm several messages in one request. Returns one result per id, in order:
        None when confirmed, else the `Requeued` or `NoSuchMessage` instance (not raised).

        Raises `ValueError` if ``ids`` is empty (as `send_batch`: skip the call) or an id is out of range.
        """
        batch = tuple(ids)
        if not batch:
            raise ValueError("confirm_batch needs at least one id (an empty batch: skip the call)")
        for id in batch:
            message_id(id)
        return self._call(msg.ConfirmBatch(batch), _confirm_results)

    @command
    def touch(self, id: int, *, visibility_timeout: float | None = None) -> Result[None]:
        """Give in-flight message ``id`` ``visibility_timeout`` seconds more, counted from now (None:
        the queue's default; `NEVER`: no timeout). Returns None.

        Raises `Requeued` (too late), `NoSuchMessage`, `ValueError`.
        """
        return self._call(msg.Touch(message_id(id), visibility_ms(visibility_timeout)), _touched)

    @command
    def release(self, id: int, *, delay: float = 0.0) -> Result[None]:
        """Give in-flight message ``id`` back now (to the front of its queue) or after ``delay``
        seconds (to the back). Counts as a delivery for ``max_deliveries``. Returns None.

        Raises `Requeued` (too late), `NoSuchMessage`, `ValueError`.
        """
        return self._call(msg.Release(message_id(id), delay_ms(delay)), _released)

    @command
    def dead_letter(self, id: int) -> Result[None]:
        """Move in-flight message ``id`` to its queue's dead-letter queue now, in one step on the
        server, whatever its delivery count: once this returns it is stored there (a new id, its
        origin kept: this queue, ``id``, its first enqueue time and delivery count), and a connection
        lost meanwhile leaves it in one queue or the other, never both. Returns None.

        Raises `Requeued` (too late), `NoSuchMessage`, `InvalidRequest` (its queue has no
        dead-letter queue), `NoSuchQueue` (that queue was deleted), `QueueFull` (it has no room);
        refused, the message stays in flight with this connection.
        """
        return self._call(msg.DeadLetter(message_id(id)), _dead_lettered)


class _Requests(Commands):
    """The commands as (request, decoder) pairs that nobody sends yet: the group clients check
    arguments and build requests with it, and the group pipeline routes each before it is sent."""

    def _call(self, request: msg.Request, decode: Decode[Any]) -> tuple[msg.Request, Decode[Any]]:
        return request, decode


REQUESTS = _Requests()
"""`Commands` that return the (request, decoder) pair they would send; raise as the commands do."""

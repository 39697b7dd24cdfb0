"""Every client command, written once.

`Commands` defines each wire operation as a method that builds a request and
hands it, with the function that turns the response into a result, to
``self._call``. The blocking `Client` sends and waits, the `Pipeline` queues,
the `AsyncClient` returns a coroutine: they differ only in ``_call``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import NoSuchMessage, ProtocolError, QueueFull, RequestError, Requeued, error_for_code
from ..protocol import messages as msg

__all__ = ["Commands", "Message", "parse_address", "result_of", "as_token", "tls_context"]

Message = msg.Message
Convert = Callable[[msg.Response], Any]


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """Turn ``"host:port"`` (or a (host, port) pair) into a (host, port) pair; raise `ValueError`."""
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def as_token(token: str | bytes | None) -> bytes:
    """A token as the Hello carries it."""
    if token is None:
        return b""
    return token.encode() if isinstance(token, str) else bytes(token)


def tls_context(tls: bool | ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The client TLS context for a ``tls`` argument: True means the system's trusted CAs."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    return tls


def result_of(response: msg.Response, expected: type) -> msg.Response:
    """Return ``response`` if it is an ``expected``; raise the matching error otherwise."""
    if isinstance(response, expected):
        return response
    if isinstance(response, msg.Error):
        raise error_for_code(response.code, response.message)
    if isinstance(response, msg.Full):
        raise QueueFull("the queue is at capacity; the message was not accepted")
    if isinstance(response, msg.Requeued):
        raise Requeued("the timeout passed before the confirm: the message went back to its queue")
    raise ProtocolError(f"expected {expected.__name__}, got {response!r}")


def _ignore(expected: type) -> Convert:
    """A converter for commands whose success carries nothing: it returns None."""

    def convert(response: msg.Response) -> None:
        result_of(response, expected)

    return convert


_created = _ignore(msg.QueueCreated)
_deleted = _ignore(msg.QueueDeleted)
_confirmed = _ignore(msg.Confirmed)
_touched = _ignore(msg.Touched)
_released = _ignore(msg.Released)


def _queued_id(response: msg.Response) -> int:
    return result_of(response, msg.ObjectQueued).id  # type: ignore[union-attr, no-any-return]


def _queued_ids(response: msg.Response) -> list[int]:
    return list(result_of(response, msg.ObjectsQueued).ids)  # type: ignore[union-attr]


def _message_or_none(response: msg.Response) -> msg.Message | None:
    if isinstance(response, msg.Empty):
        return None
    return result_of(response, msg.Message)  # type: ignore[return-value]


def _messages(response: msg.Response) -> list[msg.Message]:
    return list(result_of(response, msg.Messages).messages)  # type: ignore[union-attr]


def _confirm_results(response: msg.Response) -> list[RequestError | None]:
    outcomes = result_of(response, msg.ConfirmResults).outcomes  # type: ignore[union-attr]
    return [_OUTCOME_ERRORS[outcome]() if outcome else None for outcome in outcomes]


_OUTCOME_ERRORS = {
    1: lambda: Requeued("the timeout passed before the confirm: the message went back to its queue"),
    2: lambda: NoSuchMessage("the message is not in flight (never read, already confirmed, or its queue was deleted)"),
}


def _purged(response: msg.Response) -> int:
    return result_of(response, msg.Purged).count  # type: ignore[union-attr, no-any-return]


def _stats(response: msg.Response) -> dict[str, Any]:
    return result_of(response, msg.StatsReply).stats  # type: ignore[union-attr, no-any-return]


def _queue_list(response: msg.Response) -> list[dict[str, Any]]:
    return _stats(response)["queues"]  # type: ignore[no-any-return]


def _members(response: msg.Response) -> msg.MembersReply:
    return result_of(response, msg.MembersReply)  # type: ignore[return-value]


def _milliseconds(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name} must be an int in 0 .. {_U32_MAX}, got {value!r}")
    return value


_U32_MAX = 0xFFFFFFFF


class Commands:
    """The wire operations, one method each; ``_call`` decides what each returns.

    Every method below documents its result as the blocking `Client` returns
    it; the `AsyncClient` returns a coroutine of the same, and a `Pipeline`
    queues the command and returns itself.
    """

    def _call(self, request: msg.Request, convert: Convert) -> Any:
        raise NotImplementedError

    # --- queues ----------------------------------------------------------------------

    def create(
        self,
        name: str,
        capacity: int | None = None,
        *,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
    ) -> Any:
        """Create queue ``name`` (no-op if it exists: the existing queue keeps its options).

        ``capacity`` bounds the messages it holds (ready, in flight and delayed);
        a message delivered ``max_deliveries`` times without a confirm moves to
        ``dead_letter_queue`` (which must exist), or is dropped if none is set.
        Returns None. Raises `InvalidQueueName`, `NoSuchQueue` (no such
        dead-letter queue), `InvalidRequest` (a dead-letter loop).
        """
        return self._call(msg.CreateQueue(name, capacity or 0, max_deliveries or 0, dead_letter_queue or ""), _created)

    def delete(self, name: str) -> Any:
        """Delete queue ``name`` and every message it holds. Returns None. Raises `NoSuchQueue`."""
        return self._call(msg.DeleteQueue(name), _deleted)

    def purge(self, name: str) -> Any:
        """Drop every ready and delayed message of ``name`` (in-flight ones stay). Returns how many."""
        return self._call(msg.Purge(name), _purged)

    def stats(self, name: str) -> Any:
        """Return queue ``name``'s figures as a dict (ready, in_flight, delayed, totals...)."""
        return self._call(msg.Stats(name), _stats)

    def list_queues(self) -> Any:
        """Return every queue's figures, a list of dicts as `stats` returns them."""
        return self._call(msg.ListQueues(), _queue_list)

    def members(self) -> Any:
        """Return the server's group: ``.members`` ("host:port" list) and ``.index`` (its own place)."""
        return self._call(msg.Members(), _members)

    # --- sending ---------------------------------------------------------------------

    def send(self, name: str, data: bytes, *, delay_ms: int = 0) -> Any:
        """Append ``data`` to queue ``name``; with ``delay_ms`` it is readable only after that delay.

        Returns the message id. Raises `NoSuchQueue`, `QueueFull`, `MessageTooLarge`.
        """
        if _milliseconds("delay_ms", delay_ms):
            return self._call(msg.EnqueueDelayed(name, bytes(data), delay_ms), _queued_id)
        return self._call(msg.Enqueue(name, bytes(data)), _queued_id)

    def send_batch(self, name: str, items: Iterable[bytes]) -> Any:
        """Append every message of ``items`` in one request, all or none. Returns their ids in order.

        Raises `NoSuchQueue`, `QueueFull` (none was accepted), `MessageTooLarge`
        (the batch must fit in the server's message-size limit), `ValueError` (empty).
        """
        batch = tuple(bytes(item) for item in items)
        if not batch:
            raise ValueError("send_batch needs at least one message")
        return self._call(msg.EnqueueBatch(name, batch), _queued_ids)

    # --- reading ---------------------------------------------------------------------

    def read(self, name: str, timeout_ms: int = 0, *, wait_ms: int = 0) -> Any:
        """Take the next message of queue ``name``: a `Message`, or None when there is none.

        Confirm it within ``timeout_ms`` (0: no timeout; it comes back only if
        this connection closes). With ``wait_ms`` the server waits up to that
        long for a message before answering None. Raises `NoSuchQueue`.
        """
        _milliseconds("timeout_ms", timeout_ms)
        _milliseconds("wait_ms", wait_ms)
        return self._call(msg.Read(name, timeout_ms, wait_ms), _message_or_none)

    def read_batch(self, name: str, max_messages: int, timeout_ms: int = 0, *, wait_ms: int = 0) -> Any:
        """Take up to ``max_messages`` (1-65535) messages of ``name``; returns a list, empty when none came."""
        if not isinstance(max_messages, int) or not 1 <= max_messages <= 0xFFFF:
            raise ValueError(f"max_messages must be 1 .. 65535, got {max_messages!r}")
        _milliseconds("timeout_ms", timeout_ms)
        _milliseconds("wait_ms", wait_ms)
        return self._call(msg.ReadBatch(name, max_messages, timeout_ms, wait_ms), _messages)

    # --- settling --------------------------------------------------------------------

    def confirm(self, id: int) -> Any:
        """Confirm message ``id``: the server forgets it. Returns None.

        Raises `Requeued` (its timeout passed first) or `NoSuchMessage`.
        """
        return self._call(msg.Confirm(id), _confirmed)

    def confirm_batch(self, ids: Iterable[int]) -> Any:
        """Confirm several messages in one request. Returns one result per id, in order:
        None when confirmed, else the `Requeued` or `NoSuchMessage` instance (not raised)."""
        batch = tuple(ids)
        if not batch:
            raise ValueError("confirm_batch needs at least one id")
        return self._call(msg.ConfirmBatch(batch), _confirm_results)

    def touch(self, id: int, timeout_ms: int) -> Any:
        """Give in-flight message ``id`` ``timeout_ms`` more from now (0: no timeout). Returns None.

        Raises `Requeued` (too late) or `NoSuchMessage`.
        """
        _milliseconds("timeout_ms", timeout_ms)
        return self._call(msg.Touch(id, timeout_ms), _touched)

    def release(self, id: int, delay_ms: int = 0) -> Any:
        """Give in-flight message ``id`` back now (to the front of its queue) or after ``delay_ms``
        (to the back). Counts as a delivery for ``max_deliveries``. Returns None.

        Raises `Requeued` (too late) or `NoSuchMessage`.
        """
        _milliseconds("delay_ms", delay_ms)
        return self._call(msg.Release(id, delay_ms), _released)

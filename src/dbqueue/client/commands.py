"""Every client command, written once.

`Commands` defines each wire operation as a method that builds a request and
hands it, with the function that turns the response into a result, to
``self._call``. The blocking `Client` sends and waits, the `Pipeline` queues,
the `AsyncClient` returns a coroutine: they differ only in ``_call``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError, QueueFull, Requeued, error_for_code
from ..protocol import messages as msg

__all__ = ["Commands", "Message", "parse_address", "result_of"]

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


def _created(response: msg.Response) -> None:
    result_of(response, msg.QueueCreated)


def _deleted(response: msg.Response) -> None:
    result_of(response, msg.QueueDeleted)


def _queued_id(response: msg.Response) -> int:
    return result_of(response, msg.ObjectQueued).id  # type: ignore[union-attr]


def _message_or_none(response: msg.Response) -> msg.Message | None:
    if isinstance(response, msg.Empty):
        return None
    return result_of(response, msg.Message)  # type: ignore[return-value]


def _confirmed(response: msg.Response) -> None:
    result_of(response, msg.Confirmed)


class Commands:
    """The wire operations, one method each; ``_call`` decides what each returns."""

    def _call(self, request: msg.Request, convert: Convert) -> Any:
        raise NotImplementedError

    def create(self, name: str, capacity: int | None = None) -> Any:
        """Create queue ``name`` (no-op if it exists). ``capacity`` bounds ready + in-flight messages.

        Returns None. Raises `InvalidQueueName`.
        """
        return self._call(msg.CreateQueue(name, capacity or 0), _created)

    def delete(self, name: str) -> Any:
        """Delete queue ``name`` and every message it holds. Returns None. Raises `NoSuchQueue`."""
        return self._call(msg.DeleteQueue(name), _deleted)

    def send(self, name: str, data: bytes) -> Any:
        """Append ``data`` to queue ``name``. Returns the message id.

        Raises `NoSuchQueue`, `QueueFull`, `MessageTooLarge`.
        """
        return self._call(msg.Enqueue(name, bytes(data)), _queued_id)

    def read(self, name: str, timeout_ms: int = 0) -> Any:
        """Take the next message of queue ``name``: a `Message`, or None when the queue is empty.

        Confirm it within ``timeout_ms`` (0: no timeout; it comes back only if this
        connection closes). Raises `NoSuchQueue`.
        """
        if not 0 <= timeout_ms <= 0xFFFFFFFF:
            raise ValueError(f"timeout_ms must be 0 .. 2**32-1, got {timeout_ms}")
        return self._call(msg.Read(name, timeout_ms), _message_or_none)

    def confirm(self, id: int) -> Any:  # noqa: A002 - the wire's name for it
        """Confirm message ``id``: the server forgets it. Returns None.

        Raises `Requeued` (its timeout passed first) or `NoSuchMessage`.
        """
        return self._call(msg.Confirm(id), _confirmed)

"""The client side of a connection, without I/O: request ids out, responses in.

Every I/O flavour (the blocking `Client`, the `AsyncClient`, load generators)
is a thin loop around `ClientConnection`: ``send`` returns the bytes to write,
``receive_data`` takes the bytes that arrived and returns the responses they
complete, each tagged with the request id it answers.

A caller that stops waiting for a response (a cancelled task, a group read
won by another member) *abandons* its request id. When that response comes,
it is not returned: if it hands out messages, the connection queues Release
requests for them (`data_to_send`), so an abandoned read holds nothing.
"""

from __future__ import annotations

from ..errors import InvalidRequest, MessageTooLarge, ProtocolError
from .frames import BODY_OVERHEAD, DEFAULT_MAX_MESSAGE_SIZE, HEADER_SIZE, FrameReader
from .messages import Cancel, Enqueue, Message, Messages, Release, Request, Response, decode_response, encode

__all__ = ["ClientConnection"]

_MAX_REQUEST_ID = 0xFFFFFFFF


class ClientConnection:
    """Request-id allocation and response decoding for one connection."""

    __slots__ = ("_next_id", "_reader", "_max_message_size", "_abandoned", "_to_send")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._next_id = 1
        # Until the server's HelloOk says its limit, accept responses up to 64 MiB.
        self._reader = FrameReader(64 * 1024 * 1024 + BODY_OVERHEAD)
        self._max_message_size = 0
        self.max_message_size = max_message_size
        self._abandoned: set[int] = set()
        self._to_send: list[bytes] = []

    @property
    def max_message_size(self) -> int:
        """The server's message-size limit: larger sends are refused locally."""
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        self._max_message_size = size
        self._reader.max_body = max(self._reader.max_body, size + BODY_OVERHEAD)

    def next_request_id(self) -> int:
        """Allocate a request id (1 .. 2**32-1, wrapping)."""
        request_id = self._next_id
        self._next_id = request_id + 1 if request_id < _MAX_REQUEST_ID else 1
        return request_id

    def send(self, request: Request) -> tuple[int, bytes]:
        """Return (request id, frame) for ``request``.

        Raises `InvalidQueueName` for a bad name and `MessageTooLarge` for a
        message, or a whole batch frame, over the server's limit, before
        anything is sent (the server would close the connection on such a frame).
        """
        if isinstance(request, Enqueue) and len(request.data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(request.data)} bytes exceeds the server's limit of {self.max_message_size} bytes"
            )
        request_id = self.next_request_id()
        frame = encode(request_id, request)
        if len(frame) - HEADER_SIZE > self.max_message_size + BODY_OVERHEAD:
            raise MessageTooLarge(
                f"{type(request).__name__} of {len(frame) - HEADER_SIZE} bytes exceeds the server's limit of "
                f"{self.max_message_size + BODY_OVERHEAD} bytes a frame: split it"
            )
        return request_id, frame

    def receive_data(self, data: bytes) -> list[tuple[int, Response]]:
        """Return the (request id, response) pairs completed by ``data``; raise `ProtocolError` on garbage."""
        frames = self._reader.feed(data)
        try:
            responses = [
                (request_id, decode_response(opcode, body, flags)) for opcode, flags, request_id, body in frames
            ]
        except InvalidRequest as exc:
            raise ProtocolError(f"the server sent a malformed frame: {exc}") from None
        failure = self._reader.failure
        if failure is not None:
            raise ProtocolError(f"the server's byte stream is broken: {failure.message}")
        if self._abandoned:
            responses = [(rid, response) for rid, response in responses if not self._swallow(rid, response)]
        return responses

    def abandon(self, request_id: int, cancel: bool = False) -> None:
        """Stop waiting for ``request_id``: its response will be dropped, its messages released.

        ``cancel`` also asks the server to end the read's wait now (a waiting
        read would otherwise take the next message that arrives), by queuing a
        Cancel for `data_to_send`.
        """
        self._abandoned.add(request_id)
        if cancel:
            cancel_id, frame = self.send(Cancel(request_id))
            self._abandoned.add(cancel_id)
            self._to_send.append(frame)

    def give_back(self, response: Response) -> None:
        """Queue Releases (for `data_to_send`) for every message ``response`` hands out."""
        if isinstance(response, Message):
            ids = [response.id]
        elif isinstance(response, Messages):
            ids = [message.id for message in response.messages]
        else:
            return
        for id_ in ids:
            release_id, frame = self.send(Release(id_))
            self._abandoned.add(release_id)
            self._to_send.append(frame)

    def data_to_send(self) -> bytes:
        """Bytes the connection itself needs written (Releases for abandoned reads); b"" if none."""
        data = b"".join(self._to_send)
        self._to_send.clear()
        return data

    def _swallow(self, request_id: int, response: Response) -> bool:
        if request_id not in self._abandoned:
            return False
        self._abandoned.discard(request_id)
        self.give_back(response)
        return True

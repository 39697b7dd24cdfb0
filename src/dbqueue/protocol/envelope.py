"""The envelope's layout: how an SQS message and everything SQS says about it fit in one dbqueue payload.

A dbqueue message is bytes; an SQS message is a text body plus message
attributes, an ``AWSTraceHeader``, the time it was sent and who sent it. The
SQS listener stores each message it is sent as an envelope in the payload, so
all of it travels with the message wherever dbqueue moves it: back to the
front of its queue after a timeout, into a dead-letter queue, into the store
and back after a restart. Nothing is kept beside the payload.

The layout is defined here, once, below the SQS front end
(`dbqueue.sqs.envelope` writes and reads envelopes with these functions) so
that dbqueue's own clients read the same bytes: `dbqueue.Message.attributes`
and `dbqueue.Message.message_body` are `message_attributes` and `message_body`
of a message's payload.

Layout, version 1 (integers big-endian)::

    magic  b"\\xffSQS" | version u8 | sent_ms u64
    queue   u16 length | UTF-8       the queue it was sent to
    sender  u16 length | UTF-8       the access key id that sent it
    system attributes  u8 count | attribute*      (``AWSTraceHeader``)
    message attributes u8 count | attribute*
    body    the rest, UTF-8

    attribute: name u16 length | UTF-8, data type u16 length | UTF-8,
               kind u8 (1 text, 2 binary), value u32 length | bytes

The body comes last, so a consumer on dbqueue's own protocol finds it at the
end (`open_envelope` reads the whole thing). The first byte, 0xFF, never
begins UTF-8 text: a text payload sent by dbqueue's own clients is never taken
for an envelope, and is received through SQS as its body. A payload that
begins with the magic but does not parse to the end is not an envelope either.

The queue it was sent to is what makes ``DeadLetterQueueSourceArn`` possible:
dbqueue moves a dead letter's payload unchanged, so a message received from a
queue other than the one in its envelope came there as a dead letter.

A new layout gets a new version; this reader keeps reading version 1.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "MAGIC",
    "MessageAttributeValue",
    "Envelope",
    "seal",
    "open_envelope",
    "message_attributes",
    "message_body",
    "plain_prefix",
    "seal_plain",
    "seal_plain_many",
    "open_plain",
    "plain_body",
]

MAGIC = b"\xffSQS"
_VERSION = 1
_HEAD = struct.Struct(">4sBQ")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TEXT = 1
_BINARY = 2


@dataclass(frozen=True, slots=True)
class MessageAttributeValue:
    """One message attribute (or message system attribute) value.

    ``data_type`` is ``String``, ``Number`` or ``Binary``, optionally followed by
    a custom label (``Number.int``, ``String.json``). String and Number values
    are in ``string_value``, Binary ones in ``binary_value``: exactly one is set.
    """

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """An SQS message as the listener stores it: the body and what SQS reports about it.

    ``sent_ms`` is the send time in epoch milliseconds; ``queue`` the queue it
    was sent to; ``sender`` the access key id that sent it.
    """

    body: str
    sent_ms: int
    queue: str
    sender: str
    message_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    system_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)


def seal(envelope: Envelope) -> bytes:
    """Return the payload that carries ``envelope``.

    Raises ValueError for a field that does not fit its length (a queue name
    or sender over 65,535 bytes, more than 255 attributes), which no request
    SQS accepts can hold.
    """
    try:
        parts = [
            _HEAD.pack(MAGIC, _VERSION, envelope.sent_ms),
            *_text(envelope.queue),
            *_text(envelope.sender),
            *_attributes(envelope.system_attributes),
            *_attributes(envelope.message_attributes),
            envelope.body.encode(),
        ]
    except struct.error as error:
        raise ValueError(f"the envelope does not fit its layout: {error}") from None
    return b"".join(parts)


def plain_prefix(queue: str, sender: str) -> bytes:
    """The bytes between the send time and the body of the envelope of a message with no attributes.

    The fast path (`seal_plain`) keeps it per queue and sender, so that sealing
    a plain message is one ``struct`` call and two concatenations.
    """
    return b"".join((*_text(queue), *_text(sender), b"\x00\x00"))


def seal_plain(prefix: bytes, sent_ms: int, body: bytes) -> bytes:
    """``seal(Envelope(body.decode(), sent_ms, queue, sender))`` for ``prefix = plain_prefix(queue, sender)``."""
    return _HEAD.pack(MAGIC, _VERSION, sent_ms) + prefix + body


def seal_plain_many(prefix: bytes, sent_ms: int, bodies: list[bytes]) -> list[bytes]:
    """`seal_plain` of each of ``bodies``, all sent at ``sent_ms``."""
    return list(map((_HEAD.pack(MAGIC, _VERSION, sent_ms) + prefix).__add__, bodies))


_PLAIN_START = MAGIC + _U8.pack(_VERSION)


def open_plain(payload: bytes) -> tuple[int, bytes, str] | None:
    """The send time, the queue (UTF-8) and the body of an envelope with no attributes; None for any other payload.

    What `open_envelope` would return for it, read without building an
    `Envelope` (the sender, which a receive reports only when asked, is not
    read); an envelope with attributes, or no envelope, is left to `open_envelope`.
    """
    if not payload.startswith(_PLAIN_START):
        return None
    try:
        queue_end = 15 + (payload[13] << 8 | payload[14])
        sender_end = queue_end + 2 + (payload[queue_end] << 8 | payload[queue_end + 1])
        if payload[sender_end] or payload[sender_end + 1]:
            return None
        queue = payload[15:queue_end]
        queue.decode()  # as `open_envelope` reads them: a name or sender that is not UTF-8 makes no envelope
        payload[queue_end + 2 : sender_end].decode()
        body = payload[sender_end + 2 :].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    return _HEAD.unpack_from(payload)[2], queue, body


def plain_body(payload: bytes) -> tuple[bytes, str] | None:
    """The body of an envelope with no attributes, as its UTF-8 bytes and as text; None for any other payload.

    The body `open_plain` reads, for a receive that reports nothing else of
    the message (the send time and the queue are not read); checked as
    `open_envelope` checks it.
    """
    if not payload.startswith(_PLAIN_START):
        return None
    try:
        queue_end = 15 + (payload[13] << 8 | payload[14])
        sender_end = queue_end + 2 + (payload[queue_end] << 8 | payload[queue_end + 1])
        if payload[sender_end] or payload[sender_end + 1]:
            return None
        payload[15:queue_end].decode()  # a name or sender that is not UTF-8 makes no envelope
        payload[queue_end + 2 : sender_end].decode()
        body = payload[sender_end + 2 :]
        return body, body.decode()
    except (IndexError, UnicodeDecodeError):
        return None


def _text(text: str) -> tuple[bytes, bytes]:
    encoded = text.encode()
    return _U16.pack(len(encoded)), encoded


def _attributes(attributes: Mapping[str, MessageAttributeValue]) -> list[bytes]:
    parts = [_U8.pack(len(attributes))]
    for name, value in attributes.items():
        parts += _text(name)
        parts += _text(value.data_type)
        if value.binary_value is not None:
            data, kind = value.binary_value, _BINARY
        else:
            data, kind = (value.string_value or "").encode(), _TEXT
        parts += (_U8.pack(kind), _U32.pack(len(data)), data)
    return parts


class _Malformed(Exception):
    """The payload is not a whole envelope."""


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise _Malformed
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def number(self, layout: struct.Struct) -> int:
        value: int = layout.unpack(self.take(layout.size))[0]
        return value

    def text(self) -> str:
        return self.take(self.number(_U16)).decode()

    def attributes(self) -> dict[str, MessageAttributeValue]:
        attributes = {}
        for _ in range(self.number(_U8)):
            name = self.text()
            data_type = self.text()
            kind = self.number(_U8)
            data = self.take(self.number(_U32))
            if kind == _TEXT:
                attributes[name] = MessageAttributeValue(data_type, string_value=data.decode())
            elif kind == _BINARY:
                attributes[name] = MessageAttributeValue(data_type, binary_value=data)
            else:
                raise _Malformed
        return attributes


def open_envelope(payload: bytes) -> Envelope | None:
    """Return the envelope ``payload`` carries, or None if it carries none (a message sent by dbqueue's own clients).

    Never raises: a payload that is not a whole envelope of a known version is
    not one, whatever its first bytes.
    """
    if not payload.startswith(MAGIC) or len(payload) < _HEAD.size:
        return None
    _, version, sent_ms = _HEAD.unpack_from(payload)
    if version != _VERSION:
        return None
    reader = _Reader(payload, _HEAD.size)
    try:
        queue = reader.text()
        sender = reader.text()
        system_attributes = reader.attributes()
        message_attributes = reader.attributes()
        body = payload[reader.offset :].decode()
    except (_Malformed, UnicodeDecodeError):
        return None
    return Envelope(body, sent_ms, queue, sender, message_attributes, system_attributes)


_NO_ATTRIBUTES: Mapping[str, MessageAttributeValue] = MappingProxyType({})


def message_attributes(payload: bytes) -> Mapping[str, MessageAttributeValue]:
    """The message attributes of the envelope ``payload`` carries, as a read-only mapping name -> value.

    Empty for a payload that carries no envelope (a message sent by dbqueue's
    own clients) and for an envelope without attributes. Never raises.
    """
    if not payload.startswith(MAGIC):
        return _NO_ATTRIBUTES
    envelope = open_envelope(payload)
    if envelope is None or not envelope.message_attributes:
        return _NO_ATTRIBUTES
    return MappingProxyType(dict(envelope.message_attributes))


def message_body(payload: bytes) -> bytes:
    """The body of the envelope ``payload`` carries (its UTF-8 bytes), or ``payload`` itself if it carries none.

    For a message sent through SQS, this is the ``MessageBody`` it was sent
    with; for one sent by dbqueue's own clients, the payload as sent. Never raises.
    """
    if not payload.startswith(MAGIC):
        return payload
    envelope = open_envelope(payload)
    return payload if envelope is None else envelope.body.encode()

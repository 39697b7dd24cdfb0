"""The envelope: how an SQS message and everything SQS says about it fit in one dbqueue payload.

The layout, its reader and its writer are `dbqueue.protocol.envelope`'s,
defined once below the SQS front end so that dbqueue's own clients read the
same bytes (`dbqueue.Message.attributes`); this module re-exports them for the
SQS side and adds what only SQS needs: how a payload that carries no envelope
(a message sent by dbqueue's own clients) is received through SQS (`bare_body`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from ..protocol.envelope import (
    MAGIC,
    Envelope,
    MessageAttributeValue,
    open_envelope,
    open_plain,
    plain_body,
    plain_prefix,
    seal,
    seal_plain,
    seal_plain_many,
)
from .decoding import check_body
from .errors import SqsError

__all__ = [
    "MAGIC",
    "ENCODING_ATTRIBUTE",
    "Envelope",
    "seal",
    "open_envelope",
    "bare_body",
    "plain_prefix",
    "seal_plain",
    "seal_plain_many",
    "open_plain",
    "plain_body",
]

ENCODING_ATTRIBUTE = "DbQueue.Encoding"
"""The message attribute that marks a body as the base64 of a payload that is not SQS text (see `bare_body`)."""
_BASE64 = {ENCODING_ATTRIBUTE: MessageAttributeValue("String", string_value="base64")}


def bare_body(payload: bytes) -> tuple[str, Mapping[str, MessageAttributeValue]]:
    """Return the body, and the message attributes, SQS receives for a payload without an envelope.

    A payload that is UTF-8 text SQS allows in a body is that body, with no
    attributes. Any other (binary data, control characters, an empty payload)
    is sent as its base64 text, with the message attribute `ENCODING_ATTRIBUTE`
    (``DbQueue.Encoding``, a String, ``base64``) saying so; that attribute is
    returned whatever the receive asked for, since the body cannot be read
    without it.
    """
    try:
        body = payload.decode()
        check_body(body)
    except (UnicodeDecodeError, SqsError):
        return base64.b64encode(payload).decode("ascii"), _BASE64
    return body, {}

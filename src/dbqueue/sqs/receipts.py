"""Receipt handles and message ids: how SQS names a message and one delivery of it.

A **receipt handle** names one delivery: the queue, the message's dbqueue id and
its delivery number (``Message.deliveries``, 1 for the first). The client gets
one from ``ReceiveMessage`` and returns it to ``DeleteMessage`` or
``ChangeMessageVisibility``. The server needs nothing per handle: everything
it needs is in the handle, authenticated with a 128-bit MAC (keyed BLAKE2b)
under a server secret, so a forged or altered handle is refused
with ``ReceiptHandleIsInvalid`` before the server looks anything up, and a
handle for one queue cannot be replayed against another. Servers that share
a secret (a group) accept each other's handles; a new secret invalidates
every handle out (their messages come back when their visibility timeout
ends, as SQS's do when a handle is lost).

Layout, then URL-safe base64 without padding::

    version u8 | message id u64 | delivery u32 | queue (UTF-8) | mac[16]

``version`` 2 (issued): the MAC is BLAKE2b keyed with the secret, 16 bytes of
digest, over everything before it (one call, about half the cost of an HMAC);
version 1 (still accepted): HMAC-SHA256 truncated to 16 bytes. A handle of
another version is invalid (a new layout gets a new version and this reader
keeps accepting the old ones).

A **message id** is dbqueue's 64-bit id written as SQS writes its ids, a
UUID-shaped string: ``00000000-0000-0000-hhhh-hhhhhhhhhhhh`` (the id's 16 hex
digits in the last two groups), so SDKs and tools that expect a UUID accept it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from .errors import ErrorCode, SqsError

__all__ = ["Receipt", "ReceiptHandles", "message_id_text", "message_id_of_text"]

_VERSION = 2
_HMAC_VERSION = 1
_HEAD = struct.Struct(">BQI")
_MAC_SIZE = 16
_MIN_SIZE = _HEAD.size + 1 + _MAC_SIZE
# A handle of the longest queue name dbqueue allows (255 bytes), in base64.
_MAX_TEXT = (_HEAD.size + 255 + _MAC_SIZE) * 4 // 3 + 4
_MESSAGE_ID = re.compile(r"00000000-0000-0000-([0-9a-f]{4})-([0-9a-f]{12})")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a valid receipt handle names: a queue, a message id, a delivery number."""

    queue: str
    message_id: int
    delivery: int


class ReceiptHandles:
    """Issues and opens receipt handles under one server secret.

    ``secret`` must be at least 16 bytes of randomness kept by the server (and
    shared by the members of a group). The object holds no other state.
    """

    __slots__ = ("_mac", "_keyed")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the receipt-handle secret must be at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        # BLAKE2b takes keys of up to 64 bytes: a longer secret is hashed to one.
        key = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()
        # The keyed hash before any message: a copy of it hashes a handle as a new keyed hash would, without
        # hashing the key's block again.
        self._keyed = hashlib.blake2b(key=key, digest_size=_MAC_SIZE)

    def issue(self, queue: str, message_id: int, delivery: int) -> str:
        """Return the receipt handle of delivery ``delivery`` of message ``message_id`` in ``queue``.

        Raises ValueError for an id or delivery number that does not fit its field.
        """
        try:
            signed = _HEAD.pack(_VERSION, message_id, delivery) + queue.encode()
        except struct.error as error:
            raise ValueError(f"message id {message_id} or delivery {delivery} out of range") from error
        mac = self._keyed.copy()
        mac.update(signed)
        return _b2a_base64(signed + mac.digest(), newline=False).translate(_URL_SAFE).rstrip(b"=").decode("ascii")

    def open(self, handle: str, queue: str | None = None) -> Receipt:
        """Return what ``handle`` names, after checking its MAC (in constant time).

        With ``queue``, the handle must also belong to that queue (the queue
        the request's URL names). Raises `SqsError` (``ReceiptHandleIsInvalid``)
        for anything else: a malformed, truncated, altered or forged handle,
        another version's, or another queue's.
        """
        if len(handle) > _MAX_TEXT:
            raise _invalid(handle)
        try:
            raw = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
        except ValueError:
            raise _invalid(handle) from None
        # One handle, one spelling: base64 leaves spare bits in a last character
        # that other spellings would set; re-encoding refuses those.
        if len(raw) < _MIN_SIZE or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != handle:
            raise _invalid(handle)
        signed, tag = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        version, message_id, delivery = _HEAD.unpack_from(signed)
        if version == _VERSION:
            keyed = self._keyed.copy()
            keyed.update(signed)
            expected = keyed.digest()
        elif version == _HMAC_VERSION:
            mac = self._mac.copy()
            mac.update(signed)
            expected = mac.digest()[:_MAC_SIZE]
        else:
            raise _invalid(handle)
        if not hmac.compare_digest(expected, tag):
            raise _invalid(handle)
        try:
            name = signed[_HEAD.size :].decode()
        except UnicodeDecodeError:
            raise _invalid(handle) from None
        if queue is not None and name != queue:
            raise _invalid(handle)
        return Receipt(name, message_id, delivery)


def _invalid(handle: str) -> SqsError:
    shown = handle if len(handle) <= _MAX_TEXT else handle[:_MAX_TEXT] + "..."
    return SqsError(
        ErrorCode.RECEIPT_HANDLE_IS_INVALID, f'The input receipt handle "{shown}" is not a valid receipt handle.'
    )


_b2a_base64 = binascii.b2a_base64
_URL_SAFE = bytes.maketrans(b"+/", b"-_")  # base64's alphabet to the URL-safe one, as `base64.urlsafe_b64encode`


def message_id_text(message_id: int) -> str:
    """Return the ``MessageId`` string of dbqueue message id ``message_id`` (0 .. 2**64-1)."""
    if not 0 <= message_id < 1 << 64:
        raise ValueError(f"message id {message_id} out of range")
    return f"00000000-0000-0000-{message_id >> 48:04x}-{message_id & 0xFFFF_FFFF_FFFF:012x}"


def message_id_of_text(text: str) -> int | None:
    """Return the dbqueue id a ``MessageId`` string names, or None if it is not one of ours."""
    match = _MESSAGE_ID.fullmatch(text)
    if match is None:
        return None
    return int(match[1], 16) << 48 | int(match[2], 16)

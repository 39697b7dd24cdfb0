"""The MD5 digests SQS returns, the size it counts, and which attributes a receive returns.

SDKs that check messages (Java, Go, .NET, Ruby, JavaScript, Kotlin) recompute
``MD5OfMessageBody`` / ``MD5OfBody`` and ``MD5OfMessageAttributes`` from what
they sent or received and fail the call on a mismatch, so these must be
bit-exact with SQS's own:

* the body digest is the MD5 of the body's UTF-8 bytes, in lower-case hex;
* the attribute digest (the same function serves message attributes and message
  system attributes) hashes, for each attribute in order of name: the name, the
  data type, then a transport byte (1 for a string value, 2 for a binary one)
  and the value, each of the three as a 4-byte big-endian length and the bytes
  (UTF-8 for text).

Names are compared as Python strings (code points). The SDKs sort UTF-16
code units; the two orders differ only above U+FFFF, which attribute names
(letters, digits, ``_``, ``-``, ``.``) never contain.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from .requests import MessageAttributeValue

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["md5", "md5_of_body", "md5_of_attributes", "attributes_size", "select_attributes"]

md5: Callable[..., _Hash]
"""The MD5 constructor the listener uses: ``md5(data, usedforsecurity=False).hexdigest()``."""
try:
    # CPython's own MD5: for the small bodies of most messages about half the cost of OpenSSL's (no EVP set-up),
    # and about the same for large ones. The digests are MD5's either way.
    md5 = importlib.import_module("_md5").md5
except ImportError:  # an interpreter built without it
    md5 = hashlib.md5

_LENGTH = struct.Struct(">I")
_STRING = b"\x01"
_BINARY = b"\x02"


def md5_of_body(body: str) -> str:
    """Return ``MD5OfMessageBody``: the hex MD5 of the body's UTF-8 encoding."""
    return md5(body.encode(), usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: Mapping[str, MessageAttributeValue]) -> str:
    """Return ``MD5OfMessageAttributes`` (or ``MD5OfMessageSystemAttributes``) of ``attributes``.

    The caller passes only the attributes it returns: a receive that asks for
    some of a message's attributes gets the digest of those alone.
    """
    parts: list[bytes] = []
    pack = _LENGTH.pack
    for name in sorted(attributes):
        value = attributes[name]
        encoded_name = name.encode()
        data_type = value.data_type.encode()
        if value.binary_value is not None:
            payload = value.binary_value
            kind = _BINARY
        else:
            payload = (value.string_value or "").encode()
            kind = _STRING
        parts += (
            pack(len(encoded_name)),
            encoded_name,
            pack(len(data_type)),
            data_type,
            kind,
            pack(len(payload)),
            payload,
        )
    return md5(b"".join(parts), usedforsecurity=False).hexdigest()


def attributes_size(attributes: Mapping[str, MessageAttributeValue]) -> int:
    """Return how many bytes ``attributes`` add to a message's size: names, types and values, as SQS counts."""
    size = 0
    for name, value in attributes.items():
        size += len(name.encode()) + len(value.data_type.encode())
        if value.binary_value is not None:
            size += len(value.binary_value)
        elif value.string_value is not None:
            size += len(value.string_value.encode())
    return size


def select_attributes(
    attributes: Mapping[str, MessageAttributeValue], names: Iterable[str]
) -> Mapping[str, MessageAttributeValue]:
    """Return the attributes a receive's ``MessageAttributeNames`` select.

    ``All`` and ``.*`` select every attribute, ``prefix.*`` those whose name
    starts with ``prefix.``, any other entry the attribute of that exact name;
    names that match nothing are ignored, as SQS ignores them.
    """
    wanted = tuple(names)
    if not wanted or not attributes:
        return {}
    if "All" in wanted or ".*" in wanted:
        return attributes
    prefixes = tuple(name[:-1] for name in wanted if name.endswith(".*"))
    exact = frozenset(wanted)
    return {
        name: value for name, value in attributes.items() if name in exact or (prefixes and name.startswith(prefixes))
    }

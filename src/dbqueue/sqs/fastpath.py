"""The SQS API's fast path: plain JSON requests framed from their bytes, the hot actions' answers written as bytes.

Theory of operation
-------------------
Most of an SQS workload is three actions of the JSON protocol:
``SendMessageBatch``, ``ReceiveMessage`` and ``DeleteMessageBatch`` (and their
single-message forms), each a small ``POST /`` with a handful of headers. The
general path (aiohttp's request objects, `wire.decode_request` into frozen
dataclasses, `wire.encode_result` through dictionaries) costs several times
what the work itself does. This module holds the pieces that skip it, sans
I/O like the rest of the package:

* `frame` cuts one HTTP/1.1 request out of a connection's received bytes,
  but only a request of a deliberately narrow shape: ``POST`` of a path with
  no query, ASCII header lines that are plain tokens and values, a
  ``Content-Length``, the JSON protocol's content type and an
  ``X-Amz-Target``. Anything else (``Transfer-Encoding``, ``Expect``,
  ``Connection`` other than keep-alive, a query string, a duplicate
  ``Content-Length``, a body over the caller's limit, the Query protocol,
  ``/metrics``, a malformed line) is `OTHER`: the caller hands the
  connection to the general HTTP stack, which applies every rule of its own;
  nothing is half-parsed twice.
* `decode_params` decodes a body's JSON: with orjson when it is installed
  (its C parser is several times the standard library's), else with `json`.
  Where the two could read a body differently, orjson refuses it (a lone
  surrogate, a number out of range, NaN) or reads a float where `json` reads
  an integer too large for any parameter: the fast path then gives the
  request to the general path, which refuses it as it always does.
* `plain_send_entries`, `plain_delete_entries` and `plain_receive` read the
  decoded JSON parameters of the hot actions when they are of the common
  shape (no message attributes, no per-entry delay, no FIFO fields), checked
  by the same rules and patterns as `decoding` (a batch's entries all at
  once: its ids by one match of a pattern built from `decoding`'s, its
  bodies by one search); they return None for any other shape *and for
  anything the general path would refuse*, so that errors are always
  written by the general path.
* ``*_reply`` functions write the answers' JSON, byte for byte what
  `json_protocol` writes for the same result.

Contract: for a request the fast path answers, the reply's bytes (but for the
request id and the ``Date`` header) and the server's state afterwards are
those of the general path (`tests/sqs/test_sqs_fastpath.py` checks it on a
real server, request by request, against a connection served by the general
path).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring  # the C escaper json.dumps uses
from operator import itemgetter
from typing import Any

from .decoding import _BATCH_ENTRY_ID, _FORBIDDEN_CHARACTER, MAX_MESSAGE_SIZE

__all__ = [
    "decode_params",
    "MORE",
    "OTHER",
    "HttpRequest",
    "frame",
    "response_head",
    "ok_head",
    "plain_send_entries",
    "plain_delete_entries",
    "plain_receive",
    "send_batch_reply",
    "send_reply",
    "receive_reply",
    "received_message",
    "batch_reply",
]

MORE = 0
"""`frame`: the request is not whole yet; call again with more bytes."""
OTHER = 1
"""`frame`: not a request of the fast path's shape: hand the connection to the general HTTP stack."""

MAX_HEAD = 16_384
"""The longest request head the fast path waits for; a longer one goes to the general stack."""
MAX_FAST_BODY = 262_144
"""The largest body the fast path buffers; a larger one goes to the general stack (its body timeout applies)."""

_JSON_TYPE = "application/x-amz-json-1.0"
_TARGET_PREFIX = "AmazonSQS."
# Headers whose presence means a framing or connection rule the fast path leaves to the general stack.
_NOT_OURS = frozenset({"transfer-encoding", "expect", "upgrade", "te", "trailer"})


class HttpRequest:
    """One framed request: its path, headers (name as sent, value), action, host, body, and where it ends."""

    __slots__ = ("path", "headers", "action", "host", "body", "end")

    def __init__(
        self, path: str, headers: list[tuple[str, str]], action: str, host: str | None, body: bytes, end: int
    ) -> None:
        self.path = path
        self.headers = headers
        self.action = action
        self.host = host
        self.body = body
        self.end = end


# The head's shape, checked by one match: the request line, then header lines of a name (letters, digits and
# dashes: a subset of HTTP's tokens), a colon and a value of printable ASCII (no tab, no bare CR or LF, no
# control character). `_FIELD` then reads each (name, value), the one space after the colon left out.
_HEAD = re.compile(r"POST (/[!-~]*) HTTP/1\.1(?:\r\n[A-Za-z0-9-]+:[ -~]*)+")
_FIELD = re.compile(r"\r\n([A-Za-z0-9-]+): ?([ -~]*)")


def frame(buffer: bytes | bytearray, start: int, max_body: int) -> HttpRequest | int:
    """Return the request that begins at ``buffer[start:]``, `MORE` or `OTHER` (see the module's docstring).

    ``max_body`` is the listener's body limit: a body over it (or over
    `MAX_FAST_BODY`) is `OTHER`, so that the general stack refuses or reads it.
    """
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        return MORE if len(buffer) - start <= MAX_HEAD else OTHER
    head_end = end + 4
    if head_end - start > MAX_HEAD:
        return OTHER
    # Latin-1 maps every byte to a character: anything not ASCII is then refused by `_HEAD`.
    text = buffer[start:end].decode("latin-1")
    shape = _HEAD.fullmatch(text)
    if shape is None:
        return OTHER
    path = shape[1]
    if "?" in path or "#" in path or path == "/metrics":
        return OTHER
    headers = _FIELD.findall(text)
    if ":  " in text or " \r\n" in text or text[-1] == " ":  # a value with spaces around it: rare, and taken off
        headers = [(name, value.strip(" ")) for name, value in headers]
    named = {name.lower(): value for name, value in headers}
    # No name twice (whatever its case), and none of a rule the general stack applies.
    if len(named) != len(headers) or not _NOT_OURS.isdisjoint(named):
        return OTHER
    connection = named.get("connection")
    if connection is not None and connection.lower() != "keep-alive":
        return OTHER
    content_length = named.get("content-length")
    if content_length is None or not content_length.isdigit() or len(content_length) > 10:
        return OTHER
    length = int(content_length)
    target = named.get("x-amz-target")
    if (
        target is None
        or named.get("content-type") != _JSON_TYPE
        or not target.startswith(_TARGET_PREFIX)
        or length > max_body
        or length > MAX_FAST_BODY
    ):
        return OTHER
    body_end = head_end + length
    if len(buffer) < body_end:
        return MORE
    return HttpRequest(
        path, headers, target[len(_TARGET_PREFIX) :], named.get("host"), bytes(buffer[head_end:body_end]), body_end
    )


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: " + _JSON_TYPE.encode() + b"\r\nx-amzn-RequestId: "


def ok_head(request_id: str, length: int, tail: bytes) -> bytes:
    """``response_head(200, "OK", [("Content-Type", JSON), ("x-amzn-RequestId", request_id)], length, tail)``."""
    return b"%s%s\r\nContent-Length: %d\r\n%s\r\n" % (_OK, request_id.encode(), length, tail)


def response_head(status: int, reason: str, headers: Sequence[tuple[str, str]], length: int, tail: bytes) -> bytes:
    """The head of an answer: status line, ``headers``, ``Content-Length``, then ``tail`` (``Date`` and
    ``Server`` lines, as the general stack writes them) and the blank line."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append(f"Content-Length: {length}\r\n")
    return "".join(lines).encode("latin-1") + tail + b"\r\n"


# --- requests ---------------------------------------------------------------------------------------------------


def _json_params(body: bytes) -> Any:
    return _json_decode(body.decode())


_json_decode = json.JSONDecoder().decode
decode_params: Callable[[bytes], Any]
"""The JSON a request's body holds; raises ValueError for a body that is not JSON (see the module's docstring)."""
try:
    from orjson import loads as decode_params
except ImportError:  # an optional speed-up: without it the standard library's parser does the same work
    decode_params = _json_params


def _queue_url(params: dict[str, Any], allowed: frozenset[str]) -> str | None:
    url = params.get("QueueUrl")
    if type(url) is not str or not url or not allowed.issuperset(params):
        return None
    return url


_SEND_BATCH_KEYS = frozenset({"QueueUrl", "Entries"})
_RECEIVE_KEYS = frozenset({"QueueUrl", "MaxNumberOfMessages", "WaitTimeSeconds", "VisibilityTimeout"})
_SEND_KEYS = frozenset({"QueueUrl", "MessageBody"})


def _plain_body(body: object) -> bytes | None:
    if type(body) is not str or not body or _FORBIDDEN_CHARACTER.search(body) is not None:
        return None
    return body.encode()


# The ids of a batch, each followed by a line feed (which no valid id holds): all checked by one match.
_ID_LINES = re.compile(f"(?:{_BATCH_ENTRY_ID.pattern}\n)+")
_ONLY_TEXT = {str}
_ID = itemgetter("Id")
_TWO = {2}


def _entry_fields(entries: object, field: str) -> tuple[list[str], list[Any]] | None:
    """The ids, and the values of ``field``, of a batch's entries: each entry an object of ``Id`` and ``field``,
    1 to 10 of them, their ids distinct and each of `decoding`'s id pattern; else None.

    Each check is made over the whole batch at once (``map`` and one match
    of the joined ids), not entry by entry: the same rules as the general
    path's, at a fraction of the cost.
    """
    if type(entries) is not list or not 0 < len(entries) <= 10:
        return None
    # Objects of two members each, both of them found: exactly ``Id`` and ``field``.
    try:
        if set(map(len, entries)) != _TWO:
            return None
        ids = list(map(_ID, entries))
        values = list(map(itemgetter(field), entries))
    except (TypeError, KeyError):  # an entry that is not an object (or has no length), or lacks a member
        return None
    if set(map(type, ids)) != _ONLY_TEXT or len(set(ids)) != len(ids):
        return None
    lines = "\n".join(ids) + "\n"
    # As many line feeds as ids: an id that held one would otherwise read as two valid ids.
    if lines.count("\n") != len(ids) or _ID_LINES.fullmatch(lines) is None:
        return None
    return ids, values


def plain_send_entries(params: dict[str, Any], limit: int) -> tuple[str, list[str], list[bytes]] | None:
    """The queue URL, the entries' ids and their UTF-8 bodies, of a ``SendMessageBatch`` of the common shape.

    ``limit`` is the queue's ``MaximumMessageSize``. None for any other
    shape, and for anything the general path would refuse or fail an entry
    for (ids, bodies, sizes), so that it answers those.
    """
    url = _queue_url(params, _SEND_BATCH_KEYS)
    if url is None:
        return None
    fields = _entry_fields(params.get("Entries"), "MessageBody")
    if fields is None:
        return None
    ids, bodies = fields
    # Text, not empty, no character SQS forbids (the pattern is of one character: joining the bodies makes
    # no match that one of them has not).
    if set(map(type, bodies)) != _ONLY_TEXT or not all(bodies) or _FORBIDDEN_CHARACTER.search("".join(bodies)):
        return None
    encoded = list(map(str.encode, bodies))
    sizes = list(map(len, encoded))
    if max(sizes) > limit or sum(sizes) > MAX_MESSAGE_SIZE:
        return None
    return url, ids, encoded


def plain_send(params: dict[str, Any], limit: int) -> tuple[str, bytes] | None:
    """The queue URL and the UTF-8 body of a ``SendMessage`` of the common shape (see `plain_send_entries`)."""
    url = _queue_url(params, _SEND_KEYS)
    if url is None:
        return None
    body = _plain_body(params["MessageBody"])
    if body is None or len(body) > limit:
        return None
    return url, body


def plain_delete_entries(params: dict[str, Any]) -> tuple[str, list[str], list[str]] | None:
    """The queue URL, the entries' ids and their receipt handles, of a ``DeleteMessageBatch``; or None."""
    url = _queue_url(params, _SEND_BATCH_KEYS)
    if url is None:
        return None
    fields = _entry_fields(params.get("Entries"), "ReceiptHandle")
    if fields is None:
        return None
    ids, handles = fields
    if set(map(type, handles)) != _ONLY_TEXT or not all(handles):
        return None
    return url, ids, handles


def plain_receive(params: dict[str, Any]) -> tuple[str, int, int | None, int | None] | None:
    """The queue URL, count, visibility timeout and wait (None: the queue's) of a plain ``ReceiveMessage``.

    A plain receive asks for no attributes; None for any other, or for a number out of its range.
    """
    url = _queue_url(params, _RECEIVE_KEYS)
    if url is None:
        return None
    count = params.get("MaxNumberOfMessages", 1)
    visibility = params.get("VisibilityTimeout")
    wait = params.get("WaitTimeSeconds")
    if (
        type(count) is not int
        or not 1 <= count <= 10
        or (visibility is not None and not (type(visibility) is int and 0 <= visibility <= 43_200))
        or (wait is not None and not (type(wait) is int and 0 <= wait <= 20))
    ):
        return None
    return url, count, visibility, wait


# --- answers ----------------------------------------------------------------------------------------------------


def send_batch_reply(entry_ids: Sequence[str], message_ids: Sequence[str], md5s: Sequence[str]) -> bytes:
    """The ``SendMessageBatch`` answer of entries (their ids, message ids and body MD5s), all successful."""
    return (
        '{"Successful":['
        + ",".join(
            [
                f'{{"Id":"{entry_id}","MessageId":"{message_id}","MD5OfMessageBody":"{md5}"}}'
                for entry_id, message_id, md5 in zip(entry_ids, message_ids, md5s)
            ]
        )
        + '],"Failed":[]}'
    ).encode()


def send_reply(message_id: str, md5: str) -> bytes:
    """The ``SendMessage`` answer of a message without attributes."""
    return f'{{"MessageId":"{message_id}","MD5OfMessageBody":"{md5}"}}'.encode()


def received_message(message_id: str, handle: str, md5: str, body: str) -> str:
    """One message of a ``ReceiveMessage`` answer that returns no attributes, as JSON text."""
    escaped = encode_basestring(body)
    return f'{{"MessageId":"{message_id}","ReceiptHandle":"{handle}","MD5OfBody":"{md5}","Body":{escaped}}}'


def receive_reply(messages: Sequence[str]) -> bytes:
    """The ``ReceiveMessage`` answer of messages already written as JSON text (`received_message`)."""
    if not messages:
        return b"{}"
    return ('{"Messages":[' + ",".join(messages) + "]}").encode()


def batch_reply(ids: Sequence[str]) -> bytes:
    """The answer of a ``DeleteMessageBatch`` whose entries all succeeded."""
    return ('{"Successful":[{"Id":"' + '"},{"Id":"'.join(ids) + '"}],"Failed":[]}').encode()

"""One HTTP request in, one HTTP answer out: the SQS layer as the HTTP listener calls it.

Theory of operation. The listener owns the socket and the HTTP parsing; for
each request it calls, in order::

    protocol = protocol_of(content_type, target)          # never fails
    try:
        access_key = verifier.verify(...)                 # signature.SignatureVerifier
        request = decode_request(protocol, path, query, body, target)
        result = ...                                      # the server acts on the typed request
        reply = encode_result(protocol, request.action, result, request_id)
    except SqsError as error:
        reply = encode_error(protocol, error, request_id)

and writes ``reply.status``, ``reply.headers`` and ``reply.body``. The protocol
is settled first because even a request that fails to decode must be refused
in the shape its client parses: JSON for the JSON protocol, XML for Query.
Nothing here keeps state between requests, reads a clock or draws random
numbers: the request id (any unique string; SQS uses UUIDs) and the time are
the caller's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import SqsError
from .json_protocol import CONTENT_TYPE as JSON_CONTENT_TYPE
from .json_protocol import decode_json, encode_json_error, encode_json_result
from .query_protocol import CONTENT_TYPE as XML_CONTENT_TYPE
from .query_protocol import decode_query, encode_xml_error, encode_xml_result
from .requests import Request
from .results import Result

__all__ = ["Protocol", "HttpReply", "protocol_of", "decode_request", "encode_result", "encode_error"]

REQUEST_ID_HEADER = "x-amzn-RequestId"


class Protocol(enum.Enum):
    """The two wire protocols SQS speaks."""

    JSON = "json"
    """AWS JSON 1.0: current SDKs and the aws CLI."""
    QUERY = "query"
    """The Query protocol (form parameters in, XML out): older SDKs and CLIs."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    """An HTTP answer: status, headers (name, value) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def protocol_of(content_type: str | None, target: str | None) -> Protocol:
    """Return the protocol of a request from its ``Content-Type`` and ``X-Amz-Target`` headers (None if absent).

    A JSON content type (``application/x-amz-json-1.0``) or a target means
    JSON; anything else (a form, a GET with a query string, no body) means Query.
    """
    if target is not None or (content_type is not None and content_type.startswith("application/x-amz-json")):
        return Protocol.JSON
    return Protocol.QUERY


def decode_request(protocol: Protocol, path: str, query: str, body: bytes, target: str | None = None) -> Request:
    """Return the typed request in an HTTP request of ``protocol``.

    ``path`` is the request's path (``/`` or a queue's ``/<account>/<queue>``),
    ``query`` its raw query string (without ``?``), ``body`` its body, and
    ``target`` its ``X-Amz-Target`` header. Raises `SqsError` for anything SQS
    would refuse (see `decoding`).
    """
    if protocol is Protocol.JSON:
        return decode_json(target, body)
    return decode_query(path, query, body)


def encode_result(protocol: Protocol, action: str, result: Result, request_id: str) -> HttpReply:
    """Return the 200 answer to ``action`` with ``result`` (None for the actions that return nothing)."""
    if protocol is Protocol.JSON:
        return HttpReply(
            200,
            (("Content-Type", JSON_CONTENT_TYPE), (REQUEST_ID_HEADER, request_id)),
            encode_json_result(result),
        )
    return HttpReply(
        200,
        (("Content-Type", XML_CONTENT_TYPE), (REQUEST_ID_HEADER, request_id)),
        encode_xml_result(action, result, request_id),
    )


def encode_error(protocol: Protocol, error: SqsError, request_id: str) -> HttpReply:
    """Return the answer refusing a request with ``error``, with the error's HTTP status."""
    if protocol is Protocol.JSON:
        body, query_error = encode_json_error(error)
        return HttpReply(
            error.status,
            (("Content-Type", JSON_CONTENT_TYPE), (REQUEST_ID_HEADER, request_id), ("x-amzn-query-error", query_error)),
            body,
        )
    return HttpReply(
        error.status,
        (("Content-Type", XML_CONTENT_TYPE), (REQUEST_ID_HEADER, request_id)),
        encode_xml_error(error, request_id),
    )

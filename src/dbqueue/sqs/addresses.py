"""Queue URLs, queue ARNs and queue names: built and parsed here and nowhere else.

SQS names a queue three ways, and a client may hand back any of them:

* its URL, ``http://host:port/<account>/<queue>``: what `CreateQueue` and
  `GetQueueUrl` return and what every later request carries (as ``QueueUrl``,
  or, in the Query protocol, as the request's path);
* its ARN, ``arn:aws:sqs:<region>:<account>:<queue>``: in a ``RedrivePolicy``,
  ``RedriveAllowPolicy`` and the message-move tasks;
* its bare name, in `CreateQueue` and `GetQueueUrl`.

dbqueue has one namespace of queues and no accounts, so every queue belongs to
one fixed account, `ACCOUNT_ID` (twelve zeros, as the local SQS emulators use:
tools that build URLs or ARNs by hand already expect it). A URL or ARN naming
another account names no queue here. The host part of a URL is not checked:
the same queue is reachable under every name of the server (localhost, its
address, a load balancer), so whatever host the client used is the right one.

A URL carries the queue name percent-encoded; the names SQS allows (letters,
digits, ``-`` and ``_``) need no encoding, but queues created through dbqueue's
own protocol may have any name of 1-255 bytes, and they stay reachable.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from .errors import ErrorCode, SqsError

__all__ = [
    "ACCOUNT_ID",
    "DEFAULT_REGION",
    "MAX_QUEUE_NAME",
    "check_queue_name",
    "queue_url",
    "queue_of_url",
    "queue_of_path",
    "queue_arn",
    "queue_of_arn",
]

ACCOUNT_ID = "000000000000"
"""The one account every queue belongs to."""

DEFAULT_REGION = "us-east-1"
"""The region ARNs name when the caller has none (requests may be signed for any region)."""

MAX_QUEUE_NAME = 80
"""SQS's limit on a queue name's length, in characters."""

_SQS_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ACCOUNT = re.compile(r"[0-9]{12}")


def check_queue_name(name: str) -> str:
    """Return ``name`` if SQS allows it for a new queue; raise `SqsError` otherwise.

    A name ending in ``.fifo`` asks for a FIFO queue, which dbqueue does not
    have: it is refused with ``InvalidParameterValue`` saying so, rather than
    created as a standard queue whose ordering would surprise its users.
    """
    if _SQS_NAME.fullmatch(name) is not None:
        return name
    if name.endswith(".fifo"):
        raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "FIFO queues are not supported.")
    raise SqsError(
        ErrorCode.INVALID_PARAMETER_VALUE,
        "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
    )


def queue_url(endpoint: str, queue: str) -> str:
    """Return the URL of ``queue`` at ``endpoint`` (``http://host:port``, no trailing slash)."""
    if _SQS_NAME.fullmatch(queue) is None:
        queue = quote(queue, safe="")
    return f"{endpoint}/{ACCOUNT_ID}/{queue}"


def queue_of_url(url: str) -> str:
    """Return the queue name a queue URL names.

    Raises `SqsError`: ``QueueDoesNotExist`` for a well-formed URL of another
    account, ``InvalidAddress`` for anything that is not a queue URL.
    """
    head, slash, name = url.rpartition("/")
    rest, slash_before, account = head.rpartition("/")
    if account == ACCOUNT_ID and name and slash_before:
        return unquote(name) if "%" in name else name
    if slash and slash_before and name and _ACCOUNT.fullmatch(account) is not None:
        raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
    raise SqsError(ErrorCode.INVALID_ADDRESS, f"The address {url} is not valid for this endpoint.")


def queue_of_path(path: str) -> str | None:
    """Return the queue a request path names (``/<account>/<queue>``), or None for any other path.

    The Query protocol lets a client send its request to the queue's URL
    instead of carrying ``QueueUrl`` as a parameter; this reads that form.
    Raises `SqsError` (``QueueDoesNotExist``) for a queue path of another account.
    """
    if path.count("/") != 2 or not path.startswith("/"):
        return None
    _, account, name = path.split("/")
    if not name or _ACCOUNT.fullmatch(account) is None:
        return None
    if account != ACCOUNT_ID:
        raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
    return unquote(name) if "%" in name else name


def queue_arn(queue: str, region: str = DEFAULT_REGION) -> str:
    """Return the ARN of ``queue`` in ``region``."""
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{queue}"


def queue_of_arn(arn: str) -> str | None:
    """Return the queue an SQS queue ARN names, or None if ``arn`` is not one of this account's.

    Any partition (``aws``, ``aws-cn``, ...) and any region is accepted: the
    region is part of how a client addresses the server, not of the queue.
    Callers raise their own error, because SQS words it for the parameter
    that carried the ARN.
    """
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sqs" or parts[4] != ACCOUNT_ID or not parts[5]:
        return None
    return parts[5]

"""Pages of queue names for ``ListQueues`` and ``ListDeadLetterSourceQueues``.

SQS answers at most 1,000 names; a client that sets ``MaxResults`` gets that
many at most, and a ``NextToken`` while more remain. The token here is the
last name of the page, base64-encoded: the next page starts after it in name
order, so queues created or deleted between two pages shift nothing else
(a name is listed at most once, and every queue that exists throughout is
listed). The server keeps no state per listing.
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Iterable

from .errors import ErrorCode, SqsError

__all__ = ["MAX_LISTED", "paginate"]

MAX_LISTED = 1000
"""The most names one answer holds."""


def paginate(
    names: Iterable[str], prefix: str = "", max_results: int | None = None, next_token: str | None = None
) -> tuple[list[str], str | None]:
    """Return one page of ``names`` that start with ``prefix``, in name order, and the token of the next page.

    Without ``max_results``, the page holds up to `MAX_LISTED` names and there is
    no token (as SQS does). Raises `SqsError` (``InvalidParameterValue``) for a
    token this function did not make.
    """
    chosen = sorted(name for name in names if name.startswith(prefix))
    start = 0
    if next_token is not None:
        try:
            after = base64.urlsafe_b64decode(next_token.encode("ascii")).decode()
        except (binascii.Error, UnicodeError, ValueError):
            raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "Invalid NextToken value.") from None
        start = bisect_right(chosen, after)
    if max_results is None:
        return chosen[start : start + MAX_LISTED], None
    page = chosen[start : start + max_results]
    if start + max_results < len(chosen):
        return page, base64.urlsafe_b64encode(page[-1].encode()).decode("ascii")
    return page, None

"""What a connection needs of the server that hosts it, as a `typing.Protocol`.

`Session`, its fast paths and the admission checks are typed against `Host`,
never against `Server` itself: the session modules import nothing of
`server.app` or `server.metrics`, so the server can import them without an
import circle, and a test can host a session on anything that has these
members. `Server` provides them all (a type checker checks it where a server
makes a session).

Members are read-only properties here unless a session assigns them: the server
may keep them as plain attributes, of these types or narrower ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ..core import Broker
from .limits import Limits

__all__ = ["Host", "RequestRecorder", "CommitLog"]


class RequestRecorder(Protocol):
    """Where sessions add what they handled: a count of requests and the seconds it took, per buffer."""

    def record(self, requests: int, seconds: float) -> None: ...


class CommitLog(Protocol):
    """The store, as a session sees it: whether a message's addition has been committed."""

    def committed(self, id_: int) -> bool: ...


class Host(Protocol):
    """The members of the server a `Session` uses: its broker, its limits, its replies and its timer."""

    @property
    def broker(self) -> Broker: ...

    # --- every limit; the server copies those read on every request to the plain attributes below
    @property
    def limits(self) -> Limits: ...

    # --- limits (read on every request: plain attributes on the server)
    @property
    def max_message_size(self) -> int: ...

    @property
    def max_in_flight(self) -> int: ...

    @property
    def max_output_buffer(self) -> int: ...

    @property
    def max_connections(self) -> int: ...

    # --- who it is
    @property
    def auth_token(self) -> bytes | None: ...

    @property
    def name(self) -> str: ...

    @property
    def members(self) -> list[str]: ...

    @property
    def member_index(self) -> int: ...

    # --- its state
    # Its open sessions; of Any, because naming `Session` here would close an import circle.
    @property
    def sessions(self) -> set[Any]: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def request_stats(self) -> RequestRecorder | None: ...

    @property
    def store(self) -> CommitLog | None: ...

    # None while the store can commit, else why it cannot ("the disk is full"): sends, creates, deletes
    # and purges are refused with StoreUnavailable meanwhile.
    @property
    def store_unavailable(self) -> str | None: ...

    def stats(self) -> dict[str, object]:
        """Server-wide figures and every queue's, as LIST_QUEUES answers them."""
        ...

    # --- replies: written now, or after the store's next commit
    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write a reply; with a store, once the changes it reports are committed."""
        ...

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write a reply now, even with a store (it reports no change)."""
        ...

    def close_after_send(self, transport: asyncio.Transport) -> None:
        """Close the connection once the replies already sent to it are out."""
        ...

    # --- the one expiry timer
    expiry_due: float  # when the pending sweep fires; infinity with none pending

    def expire_by(self, deadline: float) -> None:
        """Make sure the timer fires by ``deadline``, one just set."""
        ...

    def schedule_expiry(self) -> None:
        """Make sure the timer fires by the earliest in-flight deadline."""
        ...

"""What a connection needs of the server that hosts it, as a `typing.Protocol`.

`Session`, its fast paths and the admission checks are typed against `Host`,
never against `Server` itself: the session modules import nothing of
`server.app` or `server.metrics`, so the server can import them without an
import circle, and a test can host a session on anything that has these
members. `Server` provides them all (a type checker checks it where a server
makes a session).

Members are read-only properties here unless a session assigns them: the server
may keep them as plain attributes, of these types or narrower ones.

`committed` is how a request served outside a session (the SQS API, the
console) waits for the store's group commit: it hands `Host.send` a stand-in
transport (`_CommitSignal`) and a frame of no request (id 0), which the
server writes back as it is once its next commit is done, or turns into an
error frame if that commit failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ..core import Broker
from ..protocol.frames import HEADER, MAGIC, Op
from .limits import Limits

__all__ = ["Host", "RequestRecorder", "CommitLog", "committed"]


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


# The frame `committed` hands `Host.send`: of no request (id 0), so no client could be waiting for it.
_COMMIT_MARK = HEADER.pack(MAGIC, int(Op.EMPTY), 0, 0, 0)


class _CommitSignal(asyncio.Transport):
    """A stand-in transport for `Host.send`: its ``write`` says how the server's next commit went."""

    def __init__(self, done: asyncio.Future[bool]) -> None:
        super().__init__()
        self._done = done

    def write(self, data: bytes | bytearray | memoryview[int]) -> None:
        if not self._done.done():
            self._done.set_result(bytes(data) == _COMMIT_MARK)  # anything else: the refusal of a failed commit

    def is_closing(self) -> bool:
        return self._done.done()

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._done.done():
            self._done.set_result(False)


async def committed(host: Host) -> bool:
    """Wait for ``host``'s next commit of what was changed before the call; return whether it succeeded.

    True at once without a store. False if the commit failed, or if the
    server's store failed meanwhile (its ``failed`` future, which a server
    with a store has and a test host need not have, is done): the caller
    answers its request as refused (``host.store_unavailable`` says why).
    Cancelling the caller cancels nothing of the server's.
    """
    if host.store is None:
        return True
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    host.send(_CommitSignal(done), _COMMIT_MARK)
    if not done.done():
        failed: asyncio.Future[Any] | None = getattr(host, "failed", None)
        waiting: list[asyncio.Future[Any]] = [done] if failed is None else [done, failed]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not done.done():
                done.set_result(False)
    return done.result()

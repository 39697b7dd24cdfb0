"""The group in the console: every member's figures, and the group's totals, seen from any one member.

Theory of operation
-------------------
A server started by ``dbqueue serve --workers N`` is one member of a group:
each member holds its own part of every queue (see `server.workers`), and
knows every member's address (`Host.members`). A member's console samples its
own broker (`sampler`); for the others, `GroupView` asks each member for LIST_QUEUES once a
second, over dbqueue's own protocol (a `MemberConnection` per member: the
protocol's sans-I/O `ClientConnection` on an asyncio stream, with the
server's own token; the server does not load the client package), and keeps
the last answer and the one before it (whose difference gives each member's
rates).

It asks only while someone looks: `wanted` is called whenever the overview is
built (at most once a tick, and only when a viewer asked for it), and the
polling task ends `IDLE_AFTER` seconds after the last call, its connections
closed. A server alone in its group never starts it. A member that does not
answer within `TIMEOUT` is shown with its error, and asked again a second
later, on a fresh connection.

Over TLS the members are not asked: the server holds a server's certificate,
not a client's trust in its peers', so each member's console shows its own
part only (the overview says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import DbQueueError
from ...protocol import messages as msg
from ...protocol.connection import ClientConnection

__all__ = ["GroupView", "IDLE_AFTER", "MemberConnection", "TIMEOUT"]

log = logging.getLogger("dbqueue.server")

IDLE_AFTER = 10.0  # seconds without a viewer after which the members are no longer asked
TIMEOUT = 2.0  # seconds a member has to answer
_COUNTERS = ("enqueued", "confirmed", "requeued", "dead_lettered")


class MemberConnection:
    """A connection to another member that says Hello and asks LIST_QUEUES: nothing else is needed here."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.connection = ClientConnection()

    @classmethod
    async def open(cls, address: str, token: bytes | None) -> MemberConnection:
        """Connect to ``address`` ("host:port") and say Hello; raise `DbQueueError` or `OSError`."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        member = cls(reader, writer)
        try:
            answer = await member.call(msg.Hello(token=token or b""))
            if not isinstance(answer, msg.HelloOk):
                raise DbQueueError(_refusal(answer))
        except BaseException:
            await member.close()
            raise
        return member

    async def call(self, request: msg.Request) -> msg.Response:
        """Send ``request`` and return its answer (one request at a time)."""
        request_id, frame = self.connection.send(request)
        self.writer.write(frame)
        await self.writer.drain()
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("the member closed the connection")
            for answered, response in self.connection.receive_data(data):
                if answered == request_id:
                    return response

    async def list_queues(self) -> list[dict[str, Any]]:
        """Every queue's figures on that member, as LIST_QUEUES answers them."""
        answer = await self.call(msg.ListQueues())
        if not isinstance(answer, msg.StatsReply):
            raise DbQueueError(_refusal(answer))
        queues = answer.stats.get("queues", [])
        return [queue for queue in queues if isinstance(queue, dict)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _refusal(answer: msg.Response) -> str:
    return answer.message if isinstance(answer, msg.Error) else f"unexpected answer {type(answer).__name__}"


@dataclass(slots=True)
class Member:
    """What the console knows of one other member: its last figures (by queue name) and when they came."""

    index: int
    address: str
    client: MemberConnection | None = None
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    at: float = 0.0  # monotonic time of the last answer
    error: str | None = "not asked yet"


class GroupView:
    """The other members of ``members`` (this server at ``index``), asked with ``token`` while someone looks."""

    def __init__(
        self,
        members: list[str],
        index: int,
        token: bytes | None,
        *,
        tls: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.token = token
        self.tls = tls
        self.clock = clock
        self.members = [Member(number, address) for number, address in enumerate(members) if number != index]
        self.addresses = list(members)
        self._task: asyncio.Task[None] | None = None
        self._viewed = 0.0

    @property
    def active(self) -> bool:
        """Whether this server is in a group of more than itself."""
        return bool(self.members)

    def wanted(self) -> None:
        """Someone looks at the overview: ask the members (from now on, until `IDLE_AFTER` without a call)."""
        self._viewed = self.clock()
        if self.members and not self.tls and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dbqueue-console-group")

    async def _run(self) -> None:
        try:
            while self.clock() - self._viewed < IDLE_AFTER:
                await asyncio.gather(*(self._ask(member) for member in self.members))
                await asyncio.sleep(1.0)
        finally:
            await self._close()

    async def _ask(self, member: Member) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                if member.client is None:
                    member.client = await MemberConnection.open(member.address, self.token)
                queues = await member.client.list_queues()
        except (DbQueueError, OSError, TimeoutError, ValueError) as error:
            member.error = str(error) or type(error).__name__
            client, member.client = member.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            return
        now = self.clock()
        figures = {str(queue["name"]): queue for queue in queues}
        elapsed = now - member.at if member.at else 0.0
        rates: dict[str, dict[str, float]] = {}
        for name, queue in figures.items():
            before = member.queues.get(name)
            if before is None or elapsed <= 0:
                continue
            rates[name] = {
                counter: round(max(0, int(queue.get(counter, 0)) - int(before.get(counter, 0))) / elapsed, 2)
                for counter in _COUNTERS
            }
        member.queues, member.rates, member.at, member.error = figures, rates, now, None

    async def _close(self) -> None:
        for member in self.members:
            client, member.client = member.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    def stop(self) -> None:
        """Stop asking; the polling task closes its connections to the members as it ends."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    def snapshot(self, own: list[dict[str, Any]]) -> dict[str, Any]:
        """The group as the overview shows it: each member (``own``: this member's queue figures, with their
        rates) and, for each queue name, the group's totals."""
        now = self.clock()
        members: list[dict[str, Any]] = []
        for number, address in enumerate(self.addresses):
            if number == self.index:
                members.append({"index": number, "address": address, "self": True, "error": None, "queues": own})
                continue
            member = next(m for m in self.members if m.index == number)
            queues = [{**figures, "rates": member.rates.get(name)} for name, figures in sorted(member.queues.items())]
            error = member.error
            if self.tls:
                error = "not asked over TLS: see that member's own console"
            members.append(
                {
                    "index": number,
                    "address": address,
                    "self": False,
                    "error": error,
                    "age": round(now - member.at, 1) if member.at else None,
                    "queues": queues,
                }
            )
        totals: dict[str, dict[str, Any]] = {}
        for member_figures in members:
            for queue in member_figures["queues"]:
                total = totals.setdefault(
                    queue["name"],
                    {"name": queue["name"], "ready": 0, "in_flight": 0, "delayed": 0, "waiting": 0, "consumers": 0,
                     "rates": dict.fromkeys(("sent", "confirmed", "requeued", "dead_lettered"), 0.0),
                     "members": {}},
                )  # fmt: skip
                for figure in ("ready", "in_flight", "delayed", "waiting", "consumers"):
                    total[figure] += int(queue.get(figure) or 0)
                total["members"][str(member_figures["index"])] = int(queue.get("ready") or 0)
                rates = queue.get("rates") or {}
                for counter, rate in rates.items():
                    name = "sent" if counter == "enqueued" else counter
                    if name in total["rates"]:
                        total["rates"][name] = round(total["rates"][name] + float(rate), 2)
        return {"members": members, "queues": [totals[name] for name in sorted(totals)]}

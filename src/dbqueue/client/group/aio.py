"""The asyncio group client, `AsyncGroupClient`: the routing of `plans` over `AsyncClient` members.

Calls to every member run at once (``asyncio.gather``); a waiting read on every
member is one task per member, and the answers that one ``asyncio.wait`` round
brings are taken together. Reconnects run as background tasks, and so do
the MEMBERS checks that follow a down member's part to its new owner (as
`sync` says); a confirm, touch or release whose member is down waits for it,
up to the client's timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar

from ...errors import DbQueueError, RequestError
from ...protocol import messages as msg
from ..aio import AsyncClient
from ..commands import REQUESTS, delay_ms, parse_address
from .plans import (
    ANSWERS_AS_VALUES,
    CONNECTION_FAILURES,
    ConfirmBatch,
    Failover,
    Members,
    MembersUnreached,
    MovePass,
    QueueOptions,
    ReadPass,
    WaitingRead,
    create_result,
    delete_result,
    discovered,
    fan_out_answers,
    list_queues_result,
    peek_result,
    purge_result,
    raise_or,
    stats_result,
    unreached_members,
)

__all__ = ["AsyncGroupClient"]

T = TypeVar("T")

HOLDER_POLL_SECONDS = 0.05  # while waiting for a message's member to come back: how often to look
MAX_HOLDER_WAIT = 10.0  # that wait, for a client made without a timeout


class AsyncGroupClient:
    """The asyncio form of `GroupClient`: the same routing; every command is a coroutine.

    Any number of tasks may use one client at once. Like `AsyncClient`, it
    belongs to the event loop it was connected on and is not thread-safe;
    threads share a `GroupClient` instead. ``require_every_member``: as for
    `GroupClient` (``create``, ``delete``, ``purge``, ``move`` raise
    `MembersUnreached` when they missed a member).
    """

    def __init__(
        self,
        members: Members[AsyncClient],
        timeout: float | None,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
        require_every_member: bool = False,
    ) -> None:
        self._members = members
        self._timeout = timeout
        self._token = token  # for every member
        self._tls = tls
        self._require_every_member = require_every_member
        self._attempts: set[asyncio.Future[None]] = set()  # reconnects under way
        self._closed = False

    @classmethod
    async def connect(
        cls,
        addresses: str | list[str],
        timeout: float | None = 10.0,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
        require_every_member: bool = False,
    ) -> Self:
        """Connect to every member and return the group client; as `GroupClient.connect`.

        Raises `ConnectionLost` if no member can be reached, `AuthenticationFailed`
        if none lets this client in.
        """
        if isinstance(addresses, str):
            first = await AsyncClient.connect(addresses, timeout, token=token, tls=tls)
            try:
                addresses = discovered(await first.members(), addresses)
            finally:
                await first.close()
        members: Members[AsyncClient] = Members([f"{host}:{port}" for host, port in map(parse_address, addresses)])
        group = cls(members, timeout, token=token, tls=tls, require_every_member=require_every_member)
        await group._reconnect(wait=True)
        members.raise_if_unreachable(addresses)
        return group

    @property
    def addresses(self) -> list[str]:
        """The members' addresses, ``"host:port"``, in the order given."""
        return list(self._members.addresses)

    @property
    def down(self) -> list[str]:
        """The addresses of the members not connected now (down, or not reached yet): a call that
        fans out over the group (``stats``, ``list_queues``, ``purge``...) answered for the others only."""
        members = self._members
        return [address for address, client in zip(members.addresses, members.clients) if client is None]

    # --- plumbing ----------------------------------------------------------------------

    async def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry, as background tasks (``wait``: awaited, at connect).
        While a member is down, also ask a live one (`Members.claim_members_check`) who serves its part now."""
        if self._closed:
            return
        now = time.monotonic()
        positions = self._members.claim_retries(now)
        attempts = [asyncio.ensure_future(self._connect_member(position)) for position in positions]
        asked = self._members.claim_members_check(now)
        if asked is not None:
            attempts.append(asyncio.ensure_future(self._follow(asked)))
        self._attempts.update(attempts)
        for attempt in attempts:
            attempt.add_done_callback(self._attempts.discard)
        if wait and attempts:
            await asyncio.wait(attempts)

    async def _follow(self, asked: AsyncClient) -> None:
        """Ask ``asked`` for MEMBERS; a down member whose part is served elsewhere now is reconnected there."""
        try:
            owners = (await asked.members()).members
        except (DbQueueError, OSError):
            return  # that member failed too: its caller marks it down; the next check asks another
        if self._members.follow(owners, time.monotonic()):
            await self._reconnect()

    async def _wait_for_holder(self, position: int) -> AsyncClient:
        """The client of the member at ``position``; while it is down, wait for it (its part may be taken
        over, `_follow`) at most the client's timeout. Raises `ConnectionLost` if it is still down then."""
        deadline = time.monotonic() + (self._timeout if self._timeout is not None else MAX_HOLDER_WAIT)
        while True:
            client = self._members.clients[position]
            if client is not None:
                return client
            if self._closed or time.monotonic() >= deadline:
                return self._members.client(position)  # raises ConnectionLost, naming the member
            await self._reconnect()
            await asyncio.sleep(HOLDER_POLL_SECONDS)

    async def _connect_member(self, position: int) -> None:
        members = self._members
        client = None
        address = members.addresses[position]
        try:
            client = await AsyncClient.connect(address, self._timeout, token=self._token, tls=self._tls)
            index = (await client.members()).index
            for name, options in list(members.created.items()):
                await client.create(name, **options._asdict())
        except (DbQueueError, OSError) as exc:
            if client is not None:  # connected, then refused: the next retry opens a new one
                await client.close()
            members.connect_failed(position, exc, time.monotonic(), address)
            return
        if self._closed or not members.connected(position, client, index, address):
            await client.close()  # closed, or the member moved (or was reached) meanwhile: not this client

    async def _on_member(self, position: int, call: Callable[[AsyncClient], Awaitable[T]], holder: bool = False) -> T:
        """Return what ``call`` of the member at ``position``'s client awaits to; a connection failure
        marks it down and is raised, as is a refusal. ``holder``: the call names messages by id, so a
        member that is down is waited for (`_wait_for_holder`)."""
        client = await self._wait_for_holder(position) if holder else self._members.client(position)
        if holder and client._peer_closed():
            # The member closed the connection before this call went out: wait for the part's owner.
            await client.close()
            if self._members.clients[position] is client:
                self._members.mark_down(position, time.monotonic())
            client = await self._wait_for_holder(position)
        try:
            return await call(client)
        except CONNECTION_FAILURES:
            await client.close()
            if self._members.clients[position] is client:  # not a connection made since by another task
                self._members.mark_down(position, time.monotonic())
            raise

    async def _answer(self, position: int, call: Callable[[AsyncClient], Awaitable[T]]) -> T | Exception:
        """`_on_member`, but a refusal or a connection failure is returned as a value for a plan to judge."""
        try:
            return await self._on_member(position, call)
        except ANSWERS_AS_VALUES as exc:
            return exc

    async def _on_every_member(self, call: Callable[[AsyncClient], Awaitable[T]]) -> list[T | RequestError]:
        """``call`` on every live member at once; see `plans.fan_out_answers`."""
        return (await self._fan_out(call))[0]

    async def _fan_out(
        self, call: Callable[[AsyncClient], Awaitable[T]]
    ) -> tuple[list[T | RequestError], list[tuple[str, str]]]:
        """`_on_every_member`, and the members it did not reach (`plans.unreached_members`)."""
        await self._reconnect()
        addresses = list(self._members.addresses)
        up = self._members.up()
        outcomes = await asyncio.gather(*(self._on_member(position, call) for position in up), return_exceptions=True)
        return fan_out_answers(outcomes), unreached_members(addresses, up, list(outcomes))

    def _whole(self, operation: str, result: T, unreached: list[tuple[str, str]]) -> T:
        """Return ``result``; raise `MembersUnreached` if a member was missed and every one is required."""
        if unreached and self._require_every_member:
            raise MembersUnreached(operation, result, unreached)
        return result

    # --- queues ------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        capacity: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
        visibility_timeout: float | None = None,
    ) -> None:
        """Create the queue on every member; as `GroupClient.create`."""
        options = QueueOptions(capacity, max_deliveries, dead_letter_queue, visibility_timeout)
        REQUESTS.create(name, **options._asdict())  # a bad option raises here, before any member is asked
        self._members.created[name] = options
        answers, unreached = await self._fan_out(lambda client: client.create(name, **options._asdict()))
        create_result(answers)
        self._whole(f"create {name}", None, unreached)

    async def delete(self, name: str) -> None:
        """Delete the queue on every member; as `GroupClient.delete`."""
        self._members.created.pop(name, None)
        answers, unreached = await self._fan_out(lambda client: client.delete(name))
        delete_result(answers)
        self._whole(f"delete {name}", None, unreached)

    async def purge(self, name: str) -> int:
        """Purge the queue on every member and return how many were dropped; as `GroupClient.purge`."""
        answers, unreached = await self._fan_out(lambda client: client.purge(name))
        return self._whole(f"purge {name}", purge_result(answers), unreached)

    async def stats(self, name: str) -> dict[str, Any]:
        """Return the queue's figures summed over the group; as `GroupClient.stats`."""
        return stats_result(await self._on_every_member(lambda client: client.stats(name)))

    async def list_queues(self) -> list[dict[str, Any]]:
        """Return every queue of the group with its summed figures; as `GroupClient.list_queues`."""
        return list_queues_result(await self._on_every_member(lambda client: client.list_queues()))

    # --- messages ----------------------------------------------------------------------

    async def send(self, queue: str, data: bytes, *, delay: float = 0.0, key: bytes | str | None = None) -> int:
        """Send to one member, failing over to the others, and return the id; as `GroupClient.send`."""
        delay_ms(delay)  # a bad delay raises here, not as a member's failure
        return await self._send(lambda client: client.send(queue, data, delay=delay), key)

    async def send_batch(self, queue: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        """Send a batch to one member and return the ids; as `GroupClient.send_batch`."""
        batch = list(items)
        return await self._send(lambda client: client.send_batch(queue, batch), key)

    async def _send(self, call: Callable[[AsyncClient], Awaitable[T]], key: bytes | str | None) -> T:
        await self._reconnect()
        failover = Failover(self._members, key)
        while True:
            answer = await self._answer(failover.next_member(), call)
            if not (failover.failed(answer) or failover.missing(answer)):
                return raise_or(answer)

    async def read(
        self, queue: str, *, visibility_timeout: float | None = None, wait: float = 0.0
    ) -> msg.Message | None:
        """Return a message from any member, or None; as `GroupClient.read`."""
        found = await self.read_batch(queue, 1, visibility_timeout=visibility_timeout, wait=wait)
        return found[0] if found else None

    async def read_batch(
        self, queue: str, max_messages: int, *, visibility_timeout: float | None = None, wait: float = 0.0
    ) -> list[msg.Message]:
        """Return up to ``max_messages`` messages: the members are asked in turn, and if none has a
        message, waited on all at once. As `GroupClient.read_batch`."""
        REQUESTS.read_batch(queue, max_messages, visibility_timeout=visibility_timeout, wait=wait)  # checks
        await self._reconnect()
        up = self._members.up()
        read = ReadPass(queue, max_messages, up, self._members.next_turn())
        for position in read.order:
            if read.take(await self._read_from(position, queue, read.wanted(), visibility_timeout)):
                return read.found
        if not read.must_wait(wait):
            return read.found
        return await self._wait_everywhere(up, queue, max_messages, visibility_timeout, wait)

    async def _read_from(
        self, position: int, queue: str, count: int, visibility_timeout: float | None
    ) -> list[msg.Message] | Exception:
        return await self._answer(
            position, lambda client: client.read_batch(queue, count, visibility_timeout=visibility_timeout)
        )

    async def _wait_everywhere(
        self, up: list[int], queue: str, max_messages: int, visibility_timeout: float | None, wait: float
    ) -> list[msg.Message]:
        """`WaitingRead` over tasks: the answers of one ``asyncio.wait`` round are taken together."""
        read = WaitingRead(max_messages)

        def waiting_read(client: AsyncClient) -> Awaitable[list[msg.Message]]:
            return client.read_batch(queue, max_messages, visibility_timeout=visibility_timeout, wait=wait)

        tasks = {asyncio.ensure_future(self._on_member(position, waiting_read)) for position in up}
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:  # a member that failed just ends its wait
                        read.take(task.result())
                if read.over:
                    for extra in read.extras():
                        await self.release(extra.id)
                    return read.kept()
            return []
        finally:
            for task in tasks:
                task.cancel()  # a cancelled read is abandoned: a message it brings is released

    async def peek(
        self, queue: str, count: int = 10, *, delayed: bool = False, in_flight: bool = False
    ) -> list[msg.PeekedMessage]:
        """Look at up to ``count`` messages of the queue, the oldest of every member's; as `GroupClient.peek`."""
        REQUESTS.peek(queue, count, delayed=delayed, in_flight=in_flight)  # a bad argument raises here
        answers = await self._on_every_member(
            lambda client: client.peek(queue, count, delayed=delayed, in_flight=in_flight)
        )
        return peek_result(answers, count)

    async def move(self, source: str, destination: str, *, count: int | None = None) -> int:
        """Move up to ``count`` ready messages (None: all), each member its own part, one member after
        the other; return how many moved. As `GroupClient.move`."""
        REQUESTS.move(source, destination, count=count)  # a bad argument raises here
        await self._reconnect()
        plan = MovePass(count)
        addresses = list(self._members.addresses)
        asked: list[int] = []
        outcomes: list[object] = []
        for position in self._members.up():
            wanted = plan.wanted()
            if wanted == 0:
                break

            def move_there(client: AsyncClient, wanted: int | None = wanted) -> Awaitable[int]:
                return client.move(source, destination, count=wanted)

            answer = await self._answer(position, move_there)
            asked.append(position)
            outcomes.append(answer)
            plan.take(answer)
        moved = plan.result()
        # Once the count has moved, a member missed does not matter: nothing more was to move.
        unreached = [] if plan.wanted() == 0 else unreached_members(addresses, asked, outcomes)
        return self._whole(f"move {source} to {destination}", moved, unreached)

    async def confirm(self, id: int) -> None:
        """Confirm at the member that handed the message out; as `GroupClient.confirm`."""
        await self._on_member(self._members.holder(id), lambda client: client.confirm(id), holder=True)

    async def touch(self, id: int, *, visibility_timeout: float | None = None) -> None:
        """Touch at the member that handed the message out; as `GroupClient.touch`."""
        await self._on_member(
            self._members.holder(id),
            lambda client: client.touch(id, visibility_timeout=visibility_timeout),
            holder=True,
        )

    async def release(self, id: int, *, delay: float = 0.0) -> None:
        """Release at the member that handed the message out; as `GroupClient.release`."""
        await self._on_member(self._members.holder(id), lambda client: client.release(id, delay=delay), holder=True)

    async def dead_letter(self, id: int) -> None:
        """Dead-letter at the member that handed the message out; as `GroupClient.dead_letter`."""
        await self._on_member(self._members.holder(id), lambda client: client.dead_letter(id), holder=True)

    async def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        """Confirm each id at its member; one result per id, in order. As `GroupClient.confirm_batch`."""
        batch = ConfirmBatch(self._members, ids)
        for position, member_ids in batch.calls:
            batch.take(member_ids, await self._confirm_at(position, member_ids))
        return batch.results()

    async def _confirm_at(self, position: int, ids: list[int]) -> list[RequestError | None]:
        return await self._on_member(position, lambda client: client.confirm_batch(ids), holder=True)

    async def close(self) -> None:
        """Stop reconnecting and close every member's connection; messages they hold in flight go
        back to their queues. Returns None; raises nothing."""
        self._closed = True
        for attempt in list(self._attempts):
            attempt.cancel()
        for position in self._members.up():
            await self._members.client(position).close()
            self._members.clients[position] = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

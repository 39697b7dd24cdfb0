"""Clients for a group of servers that share their queues: `GroupClient` and `AsyncGroupClient`.

Theory of operation
-------------------
A group is independent servers, each holding its own part of every queue
(NSQ's model): there is no coordination between members on the hot path. The
group client makes them look like one server:

* ``create`` / ``delete`` / ``purge`` reach every member (the queue is
  remembered and created again on a member that comes back);
* ``send`` picks a member round-robin, or by ``key`` so that related messages
  stay in order on one member; a member that is down is skipped;
* ``read`` asks the members in turn without waiting; when none has a message
  and ``wait_ms`` is set, it waits on *every* member at once and takes the
  first message; a message another member hands out meanwhile is released at
  once (abandoned reads release themselves: `ClientConnection.abandon`);
* ``confirm`` / ``touch`` / ``release`` go to the member that handed the
  message out: the top byte of its id (`MEMBER_SHIFT`) is that member's index.

Members come from the addresses given, or from any one member's MEMBERS
answer. A member whose connection fails is marked down and retried after
`RETRY_SECONDS` (doubling while it stays down), in the background (a thread,
or a task), so a member that hangs never stalls a call; meanwhile the others
carry on. FIFO holds within a member,
best-effort across members; delivery stays at least once.

The routing decisions are pure functions shared by both clients
(`_member_for_send`, `_merge_stats`, `_split_by_member`); only the waiting
differs: selectors for the blocking client, ``asyncio.wait`` for the other.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any

from ..errors import (
    AuthenticationFailed,
    ConnectionLost,
    DbQueueError,
    NoSuchMessage,
    NoSuchQueue,
    ProtocolError,
    RequestError,
)
from ..protocol import messages as msg
from .aio import AsyncClient
from .commands import parse_address, result_of
from .sync import Client

__all__ = ["GroupClient", "AsyncGroupClient", "MEMBER_SHIFT"]

MEMBER_SHIFT = 56  # the same as the server's: an id's top byte is its member's index
RETRY_SECONDS = 1.0  # first wait before reconnecting to a member that went down; doubles up to:
MAX_RETRY_SECONDS = 30.0
_SUMMED = (
    "ready", "in_flight", "delayed", "waiting", "consumers",
    "enqueued", "confirmed", "requeued", "dead_lettered", "purged",
)  # fmt: skip


def member_of(id_: int) -> int:
    """The index of the member that handed out message ``id_``."""
    return id_ >> MEMBER_SHIFT


def _member_for_send(key: bytes | str | None, turn: int, up: list[int]) -> int:
    """A live member for a send: by a stable hash of ``key``, else round-robin."""
    if not up:
        raise ConnectionLost("no member of the group is reachable")
    if key is None:
        return up[turn % len(up)]
    raw = key.encode() if isinstance(key, str) else key
    return up[zlib.crc32(raw) % len(up)]


def _merge_stats(per_member: list[dict[str, Any]]) -> dict[str, Any]:
    """One queue's figures over the group: counts summed, options from the first member."""
    merged = dict(per_member[0])
    for field in _SUMMED:
        merged[field] = sum(stats[field] for stats in per_member)
    merged["members"] = len(per_member)
    return merged


def _merge_lists(per_member: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for queues in per_member:
        for stats in queues:
            by_name.setdefault(stats["name"], []).append(stats)
    return [_merge_stats(stats) for stats in by_name.values()]


def _split_by_member(ids: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for id_ in ids:
        groups.setdefault(member_of(id_), []).append(id_)
    return groups


class _Members:
    """The member addresses, their clients, which are down, and the queues to recreate on reconnect.

    Positions follow the addresses given; a member's *index* (the top byte of
    its ids) is what it says in its MEMBERS answer, learned at each connect.
    """

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.clients: list[Any] = [None] * len(addresses)
        self.retry_at = [0.0] * len(addresses)
        self.backoff = [RETRY_SECONDS] * len(addresses)
        self.position_of_index: dict[int, int] = {}
        self.created: dict[str, tuple[Any, ...]] = {}  # name -> create() arguments
        self.turn = 0

    def up(self) -> list[int]:
        return [i for i, client in enumerate(self.clients) if client is not None]

    def due_for_retry(self) -> list[int]:
        now = time.monotonic()
        return [i for i, client in enumerate(self.clients) if client is None and self.retry_at[i] <= now]

    def connected(self, position: int, client: Any, index: int) -> None:
        self.clients[position] = client
        self.position_of_index[index] = position
        self.backoff[position] = RETRY_SECONDS

    def mark_down(self, position: int) -> None:
        # Retry later, and later again while it stays down: a member that accepts
        # connections but never answers must not stall every call.
        self.clients[position] = None
        self.retry_at[position] = time.monotonic() + self.backoff[position]
        self.backoff[position] = min(self.backoff[position] * 2, MAX_RETRY_SECONDS)

    def holder(self, id_: int) -> int:
        """The position of the member that handed out message ``id_``."""
        index = member_of(id_)
        if index not in self.position_of_index:
            raise NoSuchMessage(f"message {id_} comes from group member {index}, which this client does not know")
        return self.position_of_index[index]

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn


def _discovered(reply: msg.MembersReply, asked: str) -> list[str]:
    # A server alone answers with its bind address (maybe 0.0.0.0): keep the one that reached it.
    return list(reply.members) if len(reply.members) > 1 else [asked]


class GroupClient:
    """A blocking client for a group of servers; see the module docstring for the routing.

    >>> group = GroupClient.connect(["127.0.0.1:3000", "127.0.0.1:3001"])
    >>> group.create("jobs"); group.send("jobs", b"x"); message = group.read("jobs", 30_000, wait_ms=5000)
    """

    def __init__(self, members: _Members, timeout: float | None, **options: Any) -> None:
        self._members = members
        self._timeout = timeout
        self._options = options  # token, tls: for every member
        self._refusal: AuthenticationFailed | None = None

    @classmethod
    def connect(
        cls, addresses: str | list[str], timeout: float | None = 10.0, *, token: Any = None, tls: Any = None
    ) -> GroupClient:
        """Connect to every member. One address: ask it for the group (MEMBERS) first.

        ``token`` and ``tls`` apply to every member. Raises `ConnectionLost` if
        no member can be reached, `AuthenticationFailed`.
        """
        if isinstance(addresses, str):
            with Client.connect(addresses, timeout, token=token, tls=tls) as first:
                addresses = _discovered(first.members(), addresses)
        group = cls(_Members([f"{h}:{p}" for h, p in map(parse_address, addresses)]), timeout, token=token, tls=tls)
        group._reconnect(wait=True)
        if not group._members.up():
            if group._refusal is not None:
                raise group._refusal
            raise ConnectionLost(f"no member of {addresses} is reachable")
        return group

    @property
    def addresses(self) -> list[str]:
        return list(self._members.addresses)

    # --- plumbing ----------------------------------------------------------------------

    def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry: in the background, so that a member that
        accepts connections but does not answer never stalls a call (``wait``: inline, at connect)."""
        members = self._members
        for position in members.due_for_retry():
            members.retry_at[position] = float("inf")  # one attempt at a time
            if wait:
                self._connect_member(position)
            else:
                threading.Thread(target=self._connect_member, args=(position,), daemon=True).start()

    def _connect_member(self, position: int) -> None:
        members = self._members
        try:
            client = Client.connect(members.addresses[position], self._timeout, **self._options)
            index = client.members().index
            for name, args in list(members.created.items()):
                client.create(name, args[0], max_deliveries=args[1], dead_letter_queue=args[2])
        except AuthenticationFailed as exc:
            self._refusal = exc
            members.mark_down(position)
            return
        except (DbQueueError, OSError):
            members.mark_down(position)
            return
        members.connected(position, client, index)

    def _on(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on member ``index``; a connection failure marks it down and re-raises."""
        client = self._members.clients[index]
        if client is None:
            raise ConnectionLost(f"member {self._members.addresses[index]} is down")
        try:
            return getattr(client, method)(*args, **kwargs)
        except (ConnectionLost, ProtocolError, OSError):
            client.close()
            self._members.mark_down(index)
            raise

    def _everywhere(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every live member; return the results (exceptions as values)."""
        self._reconnect()
        results = []
        for index in self._members.up():
            try:
                results.append(self._on(index, method, *args, **kwargs))
            except (ConnectionLost, ProtocolError, OSError):
                continue
            except RequestError as exc:
                results.append(exc)
        if not results:
            raise ConnectionLost("no member of the group is reachable")
        return results

    # --- queues ------------------------------------------------------------------------

    def create(self, name: str, capacity: int | None = None, *, max_deliveries: int | None = None,
               dead_letter_queue: str | None = None) -> None:  # fmt: skip
        """Create the queue on every member (capacity applies per member). Raises as `Client.create`."""
        self._members.created[name] = (capacity, max_deliveries, dead_letter_queue)
        for result in self._everywhere(
            "create", name, capacity, max_deliveries=max_deliveries, dead_letter_queue=dead_letter_queue
        ):
            if isinstance(result, Exception):
                raise result

    def delete(self, name: str) -> None:
        """Delete the queue on every member; raise `NoSuchQueue` only if no member had it."""
        self._members.created.pop(name, None)
        results = self._everywhere("delete", name)
        if all(isinstance(result, NoSuchQueue) for result in results):
            raise results[0]

    def purge(self, name: str) -> int:
        """Purge the queue on every member; return how many messages were dropped in all."""
        return sum(_raise_or(result) for result in self._everywhere("purge", name))

    def stats(self, name: str) -> dict[str, Any]:
        """The queue's figures summed over the group (``members``: how many answered)."""
        return _merge_stats([_raise_or(result) for result in self._everywhere("stats", name)])

    def list_queues(self) -> list[dict[str, Any]]:
        return _merge_lists([_raise_or(result) for result in self._everywhere("list_queues")])

    # --- messages ----------------------------------------------------------------------

    def send(self, name: str, data: bytes, *, delay_ms: int = 0, key: bytes | str | None = None) -> int:
        """Send to one member (by ``key``, else round-robin), failing over to the others."""
        return self._send("send", name, data, key, delay_ms=delay_ms)  # type: ignore[no-any-return]

    def send_batch(self, name: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        """Send a batch to one member (all or none), failing over to the others."""
        return self._send("send_batch", name, list(items), key)  # type: ignore[no-any-return]

    def _send(self, method: str, name: str, payload: Any, key: bytes | str | None, **kwargs: Any) -> Any:
        self._reconnect()
        members = self._members
        tried: set[int] = set()
        while True:
            up = [i for i in members.up() if i not in tried]
            index = _member_for_send(key, members.next_turn(), up)
            try:
                return self._on(index, method, name, payload, **kwargs)
            except (ConnectionLost, ProtocolError, OSError):
                tried.add(index)

    def read(self, name: str, timeout_ms: int = 0, *, wait_ms: int = 0) -> msg.Message | None:
        """A message from any member, or None. With ``wait_ms``, waits on every member at once."""
        found = self._read_batch(name, 1, timeout_ms, wait_ms)
        return found[0] if found else None

    def read_batch(self, name: str, max_messages: int, timeout_ms: int = 0, *, wait_ms: int = 0) -> list[msg.Message]:
        """Up to ``max_messages`` messages, gathered from the members in turn."""
        return self._read_batch(name, max_messages, timeout_ms, wait_ms)

    def _read_batch(self, name: str, max_messages: int, timeout_ms: int, wait_ms: int) -> list[msg.Message]:
        self._reconnect()
        members = self._members
        up = members.up()
        start = members.next_turn()
        found: list[msg.Message] = []
        missing = 0
        for step in range(len(up)):
            index = up[(start + step) % len(up)]
            try:
                found += self._on(index, "read_batch", name, max_messages - len(found), timeout_ms)
            except NoSuchQueue:
                missing += 1
            except (ConnectionLost, ProtocolError, OSError):
                continue
            if len(found) >= max_messages:
                return found
        if missing == len(up) and up:
            raise NoSuchQueue(f"no queue named {name!r} on any member")
        if found or not wait_ms:
            return found
        return self._wait_everywhere(name, max_messages, timeout_ms, wait_ms)

    def _wait_everywhere(self, name: str, max_messages: int, timeout_ms: int, wait_ms: int) -> list[msg.Message]:
        members = self._members
        request = msg.ReadBatch(name, max_messages, timeout_ms, wait_ms)
        waiting: dict[int, tuple[Any, int]] = {}  # member index -> (its PipelinedClient, request id)
        with selectors.DefaultSelector() as selector:
            for index in members.up():
                connection = members.clients[index].connection
                try:
                    (request_id,) = connection.send_many([request])
                except (ConnectionLost, OSError):
                    members.mark_down(index)
                    continue
                waiting[index] = (connection, request_id)
                selector.register(connection.sock, selectors.EVENT_READ, index)
            deadline = time.monotonic() + wait_ms / 1000.0 + (self._timeout or 60.0)
            while waiting:
                for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                    index = key.data
                    connection, request_id = waiting[index]
                    try:
                        answers = dict(connection.receive_some())
                    except (ConnectionLost, ProtocolError, OSError):
                        selector.unregister(connection.sock)
                        del waiting[index]
                        members.mark_down(index)
                        continue
                    if request_id not in answers:
                        continue
                    selector.unregister(connection.sock)
                    del waiting[index]
                    messages = list(result_of(answers[request_id], msg.Messages).messages)  # type: ignore[union-attr]
                    if messages:
                        for other_connection, other_id in waiting.values():
                            # The server ends that wait now; a message it already sent is released.
                            other_connection.abandon(other_id, cancel=True)
                        return messages
                if time.monotonic() > deadline:
                    raise ConnectionLost("no member answered a waiting read in time")
        return []

    def confirm(self, id: int) -> None:  # noqa: A002
        """Confirm at the member that handed the message out. Raises as `Client.confirm`."""
        self._on(self._members.holder(id), "confirm", id)

    def touch(self, id: int, timeout_ms: int) -> None:  # noqa: A002
        self._on(self._members.holder(id), "touch", id, timeout_ms)

    def release(self, id: int, delay_ms: int = 0) -> None:  # noqa: A002
        self._on(self._members.holder(id), "release", id, delay_ms)

    def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        """Confirm each id at its member; one result per id, in order (as `Client.confirm_batch`)."""
        ids = list(ids)
        outcome: dict[int, RequestError | None] = {}
        for index, member_ids in _split_by_member(ids).items():
            if index not in self._members.position_of_index:
                outcome.update((id_, self._unknown(id_)) for id_ in member_ids)
                continue
            outcome.update(zip(member_ids, self._on(self._members.holder(member_ids[0]), "confirm_batch", member_ids)))
        return [outcome[id_] for id_ in ids]

    @staticmethod
    def _unknown(id_: int) -> RequestError:
        return NoSuchMessage(f"message {id_} comes from a group member this client does not know")

    def pipeline(self) -> GroupPipeline:
        """Queue commands without waiting; `GroupPipeline.execute` sends them member by member."""
        return GroupPipeline(self)

    def close(self) -> None:
        for index in self._members.up():
            self._members.clients[index].close()
            self._members.clients[index] = None

    def __enter__(self) -> GroupClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GroupPipeline:
    """Sends, reads and confirms queued for a group, sent as one pipeline per member.

    Results come back in request order, errors as values (as `Pipeline`).
    Reads go to members in turn and do not wait.
    """

    def __init__(self, group: GroupClient) -> None:
        self._group = group
        self._queued: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] = []

    def _add(self, index: int, method: str, *args: Any, **kwargs: Any) -> GroupPipeline:
        self._queued.append((index, method, args, kwargs))
        return self

    def send(self, name: str, data: bytes, *, delay_ms: int = 0, key: bytes | str | None = None) -> GroupPipeline:
        members = self._group._members
        return self._add(_member_for_send(key, members.next_turn(), members.up()), "send", name, data, delay_ms=delay_ms)

    def read(self, name: str, timeout_ms: int = 0) -> GroupPipeline:
        members = self._group._members
        return self._add(_member_for_send(None, members.next_turn(), members.up()), "read", name, timeout_ms)

    def confirm(self, id: int) -> GroupPipeline:  # noqa: A002
        return self._add(self._group._members.holder(id), "confirm", id)

    def execute(self) -> list[Any]:
        queued, self._queued = self._queued, []
        results: list[Any] = [None] * len(queued)
        by_member: dict[int, list[int]] = {}
        for position, (index, *_) in enumerate(queued):
            by_member.setdefault(index, []).append(position)
        for index, positions in by_member.items():
            client = self._group._members.clients[index]
            if client is None:
                for position in positions:
                    results[position] = ConnectionLost(f"member {self._group._members.addresses[index]} is down")
                continue
            with client.pipeline() as pipeline:
                for position in positions:
                    _, method, args, kwargs = queued[position]
                    getattr(pipeline, method)(*args, **kwargs)
                try:
                    answers = pipeline.execute()
                except (ConnectionLost, ProtocolError, OSError) as exc:
                    client.close()
                    self._group._members.mark_down(index)
                    answers = [exc] * len(positions)
                for position, result in zip(positions, answers):
                    results[position] = result
        return results

    def __enter__(self) -> GroupPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queued.clear()


class AsyncGroupClient:
    """The asyncio form of `GroupClient`: the same routing; every command is a coroutine."""

    def __init__(self, members: _Members, timeout: float | None, **options: Any) -> None:
        self._members = members
        self._timeout = timeout
        self._options = options
        self._attempts: set[asyncio.Future[None]] = set()  # reconnects under way
        self._refusal: AuthenticationFailed | None = None

    @classmethod
    async def connect(
        cls, addresses: str | list[str], timeout: float | None = 10.0, *, token: Any = None, tls: Any = None
    ) -> AsyncGroupClient:
        if isinstance(addresses, str):
            first = await AsyncClient.connect(addresses, timeout, token=token, tls=tls)
            try:
                addresses = _discovered(await first.members(), addresses)
            finally:
                await first.close()
        group = cls(_Members([f"{h}:{p}" for h, p in map(parse_address, addresses)]), timeout, token=token, tls=tls)
        await group._reconnect(wait=True)
        if not group._members.up():
            if group._refusal is not None:
                raise group._refusal
            raise ConnectionLost(f"no member of {addresses} is reachable")
        return group

    async def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry, as background tasks (``wait``: awaited, at connect)."""
        members = self._members
        attempts = []
        for position in members.due_for_retry():
            members.retry_at[position] = float("inf")  # one attempt at a time
            attempts.append(asyncio.ensure_future(self._connect_member(position)))
        self._attempts.update(attempts)
        for attempt in attempts:
            attempt.add_done_callback(self._attempts.discard)
        if wait and attempts:
            await asyncio.wait(attempts)

    async def _connect_member(self, position: int) -> None:
        members = self._members
        try:
            client = await AsyncClient.connect(members.addresses[position], self._timeout, **self._options)
            index = (await client.members()).index
            for name, args in list(members.created.items()):
                await client.create(name, args[0], max_deliveries=args[1], dead_letter_queue=args[2])
        except AuthenticationFailed as exc:
            self._refusal = exc
            members.mark_down(position)
            return
        except (DbQueueError, OSError):
            members.mark_down(position)
            return
        members.connected(position, client, index)

    async def _on(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._members.clients[index]
        if client is None:
            raise ConnectionLost(f"member {self._members.addresses[index]} is down")
        try:
            return await getattr(client, method)(*args, **kwargs)
        except (ConnectionLost, ProtocolError, OSError):
            await client.close()
            self._members.mark_down(index)
            raise

    async def _everywhere(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        await self._reconnect()
        up = self._members.up()
        outcomes = await asyncio.gather(*(self._on(i, method, *args, **kwargs) for i in up), return_exceptions=True)
        results = [o for o in outcomes if not isinstance(o, (ConnectionLost, ProtocolError, OSError))]
        if not results:
            raise ConnectionLost("no member of the group is reachable")
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, RequestError):
                raise result
        return results

    async def create(self, name: str, capacity: int | None = None, *, max_deliveries: int | None = None,
                     dead_letter_queue: str | None = None) -> None:  # fmt: skip
        self._members.created[name] = (capacity, max_deliveries, dead_letter_queue)
        for result in await self._everywhere(
            "create", name, capacity, max_deliveries=max_deliveries, dead_letter_queue=dead_letter_queue
        ):
            if isinstance(result, Exception):
                raise result

    async def delete(self, name: str) -> None:
        self._members.created.pop(name, None)
        results = await self._everywhere("delete", name)
        if all(isinstance(result, NoSuchQueue) for result in results):
            raise results[0]

    async def purge(self, name: str) -> int:
        return sum(_raise_or(result) for result in await self._everywhere("purge", name))

    async def stats(self, name: str) -> dict[str, Any]:
        return _merge_stats([_raise_or(result) for result in await self._everywhere("stats", name)])

    async def list_queues(self) -> list[dict[str, Any]]:
        return _merge_lists([_raise_or(result) for result in await self._everywhere("list_queues")])

    async def send(self, name: str, data: bytes, *, delay_ms: int = 0, key: bytes | str | None = None) -> int:
        return await self._send("send", name, data, key, delay_ms=delay_ms)  # type: ignore[no-any-return]

    async def send_batch(self, name: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        return await self._send("send_batch", name, list(items), key)  # type: ignore[no-any-return]

    async def _send(self, method: str, name: str, payload: Any, key: bytes | str | None, **kwargs: Any) -> Any:
        await self._reconnect()
        members = self._members
        tried: set[int] = set()
        while True:
            up = [i for i in members.up() if i not in tried]
            index = _member_for_send(key, members.next_turn(), up)
            try:
                return await self._on(index, method, name, payload, **kwargs)
            except (ConnectionLost, ProtocolError, OSError):
                tried.add(index)

    async def read(self, name: str, timeout_ms: int = 0, *, wait_ms: int = 0) -> msg.Message | None:
        found = await self.read_batch(name, 1, timeout_ms, wait_ms=wait_ms)
        return found[0] if found else None

    async def read_batch(
        self, name: str, max_messages: int, timeout_ms: int = 0, *, wait_ms: int = 0
    ) -> list[msg.Message]:
        """Ask the members in turn; if none has a message, wait on all of them at once."""
        await self._reconnect()
        members = self._members
        up = members.up()
        start = members.next_turn()
        found: list[msg.Message] = []
        missing = 0
        for step in range(len(up)):
            index = up[(start + step) % len(up)]
            try:
                found += await self._on(index, "read_batch", name, max_messages - len(found), timeout_ms)
            except NoSuchQueue:
                missing += 1
            except (ConnectionLost, ProtocolError, OSError):
                continue
            if len(found) >= max_messages:
                return found
        if missing == len(up) and up:
            raise NoSuchQueue(f"no queue named {name!r} on any member")
        if found or not wait_ms:
            return found
        tasks = {
            asyncio.ensure_future(self._on(i, "read_batch", name, max_messages, timeout_ms, wait_ms=wait_ms))
            for i in up
        }
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None and task.result():
                        found += task.result()
                if found:
                    for extra in found[max_messages:]:  # members that answered in the same round
                        await self.release(extra.id)
                    return found[:max_messages]
            return []
        finally:
            for task in tasks:
                task.cancel()  # a cancelled read is abandoned: a message it brings is released

    async def confirm(self, id: int) -> None:  # noqa: A002
        await self._on(self._members.holder(id), "confirm", id)

    async def touch(self, id: int, timeout_ms: int) -> None:  # noqa: A002
        await self._on(self._members.holder(id), "touch", id, timeout_ms)

    async def release(self, id: int, delay_ms: int = 0) -> None:  # noqa: A002
        await self._on(self._members.holder(id), "release", id, delay_ms)

    async def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        ids = list(ids)
        outcome: dict[int, RequestError | None] = {}
        for index, member_ids in _split_by_member(ids).items():
            if index not in self._members.position_of_index:
                outcome.update((id_, GroupClient._unknown(id_)) for id_ in member_ids)
                continue
            position = self._members.holder(member_ids[0])
            outcome.update(zip(member_ids, await self._on(position, "confirm_batch", member_ids)))
        return [outcome[id_] for id_ in ids]

    @property
    def addresses(self) -> list[str]:
        return list(self._members.addresses)

    async def close(self) -> None:
        for attempt in list(self._attempts):
            attempt.cancel()
        for index in self._members.up():
            await self._members.clients[index].close()
            self._members.clients[index] = None

    async def __aenter__(self) -> AsyncGroupClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _raise_or(result: Any) -> Any:
    if isinstance(result, Exception):
        raise result
    return result

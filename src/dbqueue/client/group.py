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

Every decision is written once, without I/O, and shared by both clients (the
h11 way; redis-py's near-copied sync and async parsers are what this avoids):
`_Failover` picks the member for a send and the next one when it fails;
`_ReadPass` and `_WaitingRead` decide a read (which member to ask next, what
each answer means, which surplus messages to release); `_fan_out_answers` and
the ``_*_result`` functions turn every member's answer into one result or
error; `_ConfirmBatch` routes confirms by id; `_Members` keeps the reconnect
and backoff bookkeeping. Each client keeps only its I/O loop around them:
selectors and threads for the blocking client, tasks for the other.
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
from ..protocol.frames import MEMBER_SHIFT
from .aio import AsyncClient
from .commands import parse_address, result_of
from .sync import Client

__all__ = ["GroupClient", "AsyncGroupClient", "MEMBER_SHIFT"]

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


def _raise_or(result: Any) -> Any:
    if isinstance(result, Exception):
        raise result
    return result


def _unknown_holder(id_: int) -> RequestError:
    return NoSuchMessage(f"message {id_} comes from a group member this client does not know")


# --- plans: what each member's answer means, without I/O ------------------------------

# A member that fails so is down, not refusing: the caller goes on with the others.
_CONNECTION_FAILURES = (ConnectionLost, ProtocolError, OSError)
# What a client's `_outcome` hands back as a value, for the plans below to judge.
_ANSWERS_AS_VALUES = (RequestError, *_CONNECTION_FAILURES)


def _fan_out_answers(outcomes: list[Any]) -> list[Any]:
    """The answers of the members reached, in member order: results, and `RequestError` as values.

    ``outcomes`` holds one result or exception per member asked. Raises
    `ConnectionLost` if no member was reached, or the first other error raised.
    """
    answers = [outcome for outcome in outcomes if not isinstance(outcome, _CONNECTION_FAILURES)]
    if not answers:
        raise ConnectionLost("no member of the group is reachable")
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, RequestError):
            raise answer
    return answers


def _create_result(answers: list[Any]) -> None:
    """Raise the first refusal: the queue must exist on every member reached."""
    for answer in answers:
        _raise_or(answer)


def _delete_result(answers: list[Any]) -> None:
    """Raise `NoSuchQueue` only if no member had the queue: deleting is done once it is gone everywhere."""
    if all(isinstance(answer, NoSuchQueue) for answer in answers):
        raise answers[0]


def _purge_result(answers: list[Any]) -> int:
    return sum(_raise_or(answer) for answer in answers)


def _stats_result(answers: list[Any]) -> dict[str, Any]:
    return _merge_stats([_raise_or(answer) for answer in answers])


def _list_queues_result(answers: list[Any]) -> list[dict[str, Any]]:
    return _merge_lists([_raise_or(answer) for answer in answers])


class _Failover:
    """Where a send goes: a live member (by key, else round-robin), then another for each that fails."""

    def __init__(self, members: _Members, key: bytes | str | None) -> None:
        self._members = members
        self._key = key
        self._tried: set[int] = set()
        self._current = -1

    def next_member(self) -> int:
        """A live member not tried yet. Raises `ConnectionLost` when none is left."""
        untried = [i for i in self._members.up() if i not in self._tried]
        self._current = _member_for_send(self._key, self._members.next_turn(), untried)
        return self._current

    def done(self, answer: Any) -> bool:
        """Whether ``answer`` (the last member's result or error) ends the send; raises a refusal."""
        if isinstance(answer, _CONNECTION_FAILURES):
            self._tried.add(self._current)
            return False
        _raise_or(answer)
        return True


class _ReadPass:
    """The first step of a group read: ask the members in turn, without waiting.

    Each member is asked for what is still wanted, starting one further round
    the group at every read so that no member is always drained first. A
    member that is down is skipped; one without the queue is counted, so the
    read fails only if no member has it.
    """

    def __init__(self, name: str, max_messages: int, up: list[int], start: int) -> None:
        self.name = name
        self.max_messages = max_messages
        self.order = [up[(start + step) % len(up)] for step in range(len(up))]
        self.found: list[msg.Message] = []
        self._missing = 0

    def wanted(self) -> int:
        return self.max_messages - len(self.found)

    def take(self, answer: list[msg.Message] | BaseException) -> bool:
        """Record one member's answer (messages, or the error it raised); True once enough are found.

        Raises a refusal other than `NoSuchQueue`.
        """
        if isinstance(answer, NoSuchQueue):
            self._missing += 1
        elif isinstance(answer, RequestError):
            raise answer
        elif isinstance(answer, BaseException):
            return False  # that member is down; the others may still have messages
        else:
            self.found += answer
        return len(self.found) >= self.max_messages

    def must_wait(self, wait_ms: int) -> bool:
        """After every member was asked: whether to wait on all of them (`_WaitingRead`).

        Raises `NoSuchQueue` if no member has the queue.
        """
        if self.order and self._missing == len(self.order):
            raise NoSuchQueue(f"no queue named {self.name!r} on any member")
        return not self.found and bool(wait_ms)


class _WaitingRead:
    """The second step of a group read: a waiting read on every member at once.

    The first answers that bring messages end the read. Answers that arrive
    together are all taken first; then up to ``max_messages`` are kept and the
    rest must be released (`extras`), and the reads still waiting cancelled.
    An empty answer only ends that member's wait.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._found: list[msg.Message] = []

    def take(self, messages: list[msg.Message]) -> None:
        self._found += messages

    @property
    def over(self) -> bool:
        return bool(self._found)

    def kept(self) -> list[msg.Message]:
        return self._found[: self.max_messages]

    def extras(self) -> list[msg.Message]:
        return self._found[self.max_messages :]


class _ConfirmBatch:
    """Confirms of many ids: one CONFIRM_BATCH per member that handed some out, results in the ids' order.

    Ids from a member this client does not know get `NoSuchMessage` without a request.
    """

    def __init__(self, members: _Members, ids: Iterable[int]) -> None:
        self.ids = list(ids)
        self.calls: list[tuple[int, list[int]]] = []  # (member position, its ids)
        self._outcome: dict[int, RequestError | None] = {}
        for index, member_ids in _split_by_member(self.ids).items():
            if index in members.position_of_index:
                self.calls.append((members.holder(member_ids[0]), member_ids))
            else:
                self._outcome.update((id_, _unknown_holder(id_)) for id_ in member_ids)

    def take(self, member_ids: list[int], answers: list[RequestError | None]) -> None:
        self._outcome.update(zip(member_ids, answers))

    def results(self) -> list[RequestError | None]:
        return [self._outcome[id_] for id_ in self.ids]


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
        self.refusal: AuthenticationFailed | None = None  # kept to explain a group that no member lets in

    def up(self) -> list[int]:
        return [i for i, client in enumerate(self.clients) if client is not None]

    def due_for_retry(self) -> list[int]:
        now = time.monotonic()
        return [i for i, client in enumerate(self.clients) if client is None and self.retry_at[i] <= now]

    def claim_retries(self) -> list[int]:
        """The members due for a reconnect, each claimed until its attempt ends: one attempt at a time."""
        due = self.due_for_retry()
        for position in due:
            self.retry_at[position] = float("inf")
        return due

    def connected(self, position: int, client: Any, index: int) -> None:
        self.clients[position] = client
        self.position_of_index[index] = position
        self.backoff[position] = RETRY_SECONDS

    def connect_failed(self, position: int, exc: BaseException) -> None:
        if isinstance(exc, AuthenticationFailed):
            self.refusal = exc
        self.mark_down(position)

    def mark_down(self, position: int) -> None:
        # Retry later, and later again while it stays down: a member that accepts
        # connections but never answers must not stall every call.
        self.clients[position] = None
        self.retry_at[position] = time.monotonic() + self.backoff[position]
        self.backoff[position] = min(self.backoff[position] * 2, MAX_RETRY_SECONDS)

    def raise_if_unreachable(self, addresses: list[str]) -> None:
        """After the first connects: raise the refusal met, else `ConnectionLost`, if no member is up."""
        if not self.up():
            if self.refusal is not None:
                raise self.refusal
            raise ConnectionLost(f"no member of {addresses} is reachable")

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
        group._members.raise_if_unreachable(addresses)
        return group

    @property
    def addresses(self) -> list[str]:
        return list(self._members.addresses)

    # --- plumbing ----------------------------------------------------------------------

    def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry: in the background, so that a member that
        accepts connections but does not answer never stalls a call (``wait``: inline, at connect)."""
        for position in self._members.claim_retries():
            if wait:
                self._connect_member(position)
            else:
                threading.Thread(target=self._connect_member, args=(position,), daemon=True).start()

    def _connect_member(self, position: int) -> None:
        members = self._members
        client = None
        try:
            client = Client.connect(members.addresses[position], self._timeout, **self._options)
            index = client.members().index
            for name, args in list(members.created.items()):
                client.create(name, args[0], max_deliveries=args[1], dead_letter_queue=args[2])
        except (DbQueueError, OSError) as exc:
            if client is not None:  # connected, then refused: the next retry opens a new one
                client.close()
            members.connect_failed(position, exc)
            return
        members.connected(position, client, index)

    def _on(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on member ``index``; a connection failure marks it down and re-raises."""
        client = self._members.clients[index]
        if client is None:
            raise ConnectionLost(f"member {self._members.addresses[index]} is down")
        try:
            return getattr(client, method)(*args, **kwargs)
        except _CONNECTION_FAILURES:
            client.close()
            self._members.mark_down(index)
            raise

    def _outcome(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """`_on`, but a refusal or a connection failure is returned as a value for a plan to judge."""
        try:
            return self._on(index, method, *args, **kwargs)
        except _ANSWERS_AS_VALUES as exc:
            return exc

    def _everywhere(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every live member, one after the other; see `_fan_out_answers`."""
        self._reconnect()
        return _fan_out_answers([self._outcome(index, method, *args, **kwargs) for index in self._members.up()])

    # --- queues ------------------------------------------------------------------------

    def create(self, name: str, capacity: int | None = None, *, max_deliveries: int | None = None,
               dead_letter_queue: str | None = None) -> None:  # fmt: skip
        """Create the queue on every member (capacity applies per member). Raises as `Client.create`."""
        self._members.created[name] = (capacity, max_deliveries, dead_letter_queue)
        _create_result(
            self._everywhere(
                "create", name, capacity, max_deliveries=max_deliveries, dead_letter_queue=dead_letter_queue
            )
        )

    def delete(self, name: str) -> None:
        """Delete the queue on every member; raise `NoSuchQueue` only if no member had it."""
        self._members.created.pop(name, None)
        _delete_result(self._everywhere("delete", name))

    def purge(self, name: str) -> int:
        """Purge the queue on every member; return how many messages were dropped in all."""
        return _purge_result(self._everywhere("purge", name))

    def stats(self, name: str) -> dict[str, Any]:
        """The queue's figures summed over the group (``members``: how many answered)."""
        return _stats_result(self._everywhere("stats", name))

    def list_queues(self) -> list[dict[str, Any]]:
        """Every queue of the group, each with its figures summed over the members that have it."""
        return _list_queues_result(self._everywhere("list_queues"))

    # --- messages ----------------------------------------------------------------------

    def send(self, name: str, data: bytes, *, delay_ms: int = 0, key: bytes | str | None = None) -> int:
        """Send to one member (by ``key``, else round-robin), failing over to the others."""
        return self._send("send", name, data, key, delay_ms=delay_ms)  # type: ignore[no-any-return]

    def send_batch(self, name: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        """Send a batch to one member (all or none), failing over to the others."""
        return self._send("send_batch", name, list(items), key)  # type: ignore[no-any-return]

    def _send(self, method: str, name: str, payload: Any, key: bytes | str | None, **kwargs: Any) -> Any:
        self._reconnect()
        failover = _Failover(self._members, key)
        while True:
            answer = self._outcome(failover.next_member(), method, name, payload, **kwargs)
            if failover.done(answer):
                return answer

    def read(self, name: str, timeout_ms: int = 0, *, wait_ms: int = 0) -> msg.Message | None:
        """A message from any member, or None. With ``wait_ms``, waits on every member at once."""
        found = self._read_batch(name, 1, timeout_ms, wait_ms)
        return found[0] if found else None

    def read_batch(self, name: str, max_messages: int, timeout_ms: int = 0, *, wait_ms: int = 0) -> list[msg.Message]:
        """Up to ``max_messages`` messages, gathered from the members in turn."""
        return self._read_batch(name, max_messages, timeout_ms, wait_ms)

    def _read_batch(self, name: str, max_messages: int, timeout_ms: int, wait_ms: int) -> list[msg.Message]:
        self._reconnect()
        read = _ReadPass(name, max_messages, self._members.up(), self._members.next_turn())
        for index in read.order:
            if read.take(self._outcome(index, "read_batch", name, read.wanted(), timeout_ms)):
                return read.found
        if not read.must_wait(wait_ms):
            return read.found
        return self._wait_everywhere(name, max_messages, timeout_ms, wait_ms)

    def _wait_everywhere(self, name: str, max_messages: int, timeout_ms: int, wait_ms: int) -> list[msg.Message]:
        """`_WaitingRead` over selectors: each member's answer is taken as soon as it arrives."""
        members = self._members
        read = _WaitingRead(max_messages)
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
                    read.take(list(result_of(answers[request_id], msg.Messages).messages))  # type: ignore[union-attr]
                    if read.over:
                        for other_connection, other_id in waiting.values():
                            # The server ends that wait now; a message it already sent is released.
                            other_connection.abandon(other_id, cancel=True)
                        for extra in read.extras():
                            self.release(extra.id)
                        return read.kept()
                if time.monotonic() > deadline:
                    raise ConnectionLost("no member answered a waiting read in time")
        return []

    def confirm(self, id: int) -> None:
        """Confirm at the member that handed the message out. Raises as `Client.confirm`."""
        self._on(self._members.holder(id), "confirm", id)

    def touch(self, id: int, timeout_ms: int) -> None:
        self._on(self._members.holder(id), "touch", id, timeout_ms)

    def release(self, id: int, delay_ms: int = 0) -> None:
        self._on(self._members.holder(id), "release", id, delay_ms)

    def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        """Confirm each id at its member; one result per id, in order (as `Client.confirm_batch`)."""
        batch = _ConfirmBatch(self._members, ids)
        for position, member_ids in batch.calls:
            batch.take(member_ids, self._on(position, "confirm_batch", member_ids))
        return batch.results()

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
        return self._add(
            _member_for_send(key, members.next_turn(), members.up()), "send", name, data, delay_ms=delay_ms
        )

    def read(self, name: str, timeout_ms: int = 0) -> GroupPipeline:
        members = self._group._members
        return self._add(_member_for_send(None, members.next_turn(), members.up()), "read", name, timeout_ms)

    def confirm(self, id: int) -> GroupPipeline:
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
                except _CONNECTION_FAILURES as exc:
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
        group._members.raise_if_unreachable(addresses)
        return group

    async def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry, as background tasks (``wait``: awaited, at connect)."""
        attempts = [asyncio.ensure_future(self._connect_member(position)) for position in self._members.claim_retries()]
        self._attempts.update(attempts)
        for attempt in attempts:
            attempt.add_done_callback(self._attempts.discard)
        if wait and attempts:
            await asyncio.wait(attempts)

    async def _connect_member(self, position: int) -> None:
        members = self._members
        client = None
        try:
            client = await AsyncClient.connect(members.addresses[position], self._timeout, **self._options)
            index = (await client.members()).index
            for name, args in list(members.created.items()):
                await client.create(name, args[0], max_deliveries=args[1], dead_letter_queue=args[2])
        except (DbQueueError, OSError) as exc:
            if client is not None:  # connected, then refused: the next retry opens a new one
                await client.close()
            members.connect_failed(position, exc)
            return
        members.connected(position, client, index)

    async def _on(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._members.clients[index]
        if client is None:
            raise ConnectionLost(f"member {self._members.addresses[index]} is down")
        try:
            return await getattr(client, method)(*args, **kwargs)
        except _CONNECTION_FAILURES:
            await client.close()
            self._members.mark_down(index)
            raise

    async def _outcome(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """`_on`, but a refusal or a connection failure is returned as a value for a plan to judge."""
        try:
            return await self._on(index, method, *args, **kwargs)
        except _ANSWERS_AS_VALUES as exc:
            return exc

    async def _everywhere(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every live member at once; see `_fan_out_answers`."""
        await self._reconnect()
        calls = (self._on(index, method, *args, **kwargs) for index in self._members.up())
        return _fan_out_answers(await asyncio.gather(*calls, return_exceptions=True))

    async def create(self, name: str, capacity: int | None = None, *, max_deliveries: int | None = None,
                     dead_letter_queue: str | None = None) -> None:  # fmt: skip
        """As `GroupClient.create`."""
        self._members.created[name] = (capacity, max_deliveries, dead_letter_queue)
        _create_result(
            await self._everywhere(
                "create", name, capacity, max_deliveries=max_deliveries, dead_letter_queue=dead_letter_queue
            )
        )

    async def delete(self, name: str) -> None:
        """As `GroupClient.delete`."""
        self._members.created.pop(name, None)
        _delete_result(await self._everywhere("delete", name))

    async def purge(self, name: str) -> int:
        """As `GroupClient.purge`."""
        return _purge_result(await self._everywhere("purge", name))

    async def stats(self, name: str) -> dict[str, Any]:
        """As `GroupClient.stats`."""
        return _stats_result(await self._everywhere("stats", name))

    async def list_queues(self) -> list[dict[str, Any]]:
        """As `GroupClient.list_queues`."""
        return _list_queues_result(await self._everywhere("list_queues"))

    async def send(self, name: str, data: bytes, *, delay_ms: int = 0, key: bytes | str | None = None) -> int:
        return await self._send("send", name, data, key, delay_ms=delay_ms)  # type: ignore[no-any-return]

    async def send_batch(self, name: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        return await self._send("send_batch", name, list(items), key)  # type: ignore[no-any-return]

    async def _send(self, method: str, name: str, payload: Any, key: bytes | str | None, **kwargs: Any) -> Any:
        await self._reconnect()
        failover = _Failover(self._members, key)
        while True:
            answer = await self._outcome(failover.next_member(), method, name, payload, **kwargs)
            if failover.done(answer):
                return answer

    async def read(self, name: str, timeout_ms: int = 0, *, wait_ms: int = 0) -> msg.Message | None:
        found = await self.read_batch(name, 1, timeout_ms, wait_ms=wait_ms)
        return found[0] if found else None

    async def read_batch(
        self, name: str, max_messages: int, timeout_ms: int = 0, *, wait_ms: int = 0
    ) -> list[msg.Message]:
        """Ask the members in turn; if none has a message, wait on all of them at once."""
        await self._reconnect()
        up = self._members.up()
        read = _ReadPass(name, max_messages, up, self._members.next_turn())
        for index in read.order:
            if read.take(await self._outcome(index, "read_batch", name, read.wanted(), timeout_ms)):
                return read.found
        if not read.must_wait(wait_ms):
            return read.found
        return await self._wait_everywhere(up, name, max_messages, timeout_ms, wait_ms)

    async def _wait_everywhere(
        self, up: list[int], name: str, max_messages: int, timeout_ms: int, wait_ms: int
    ) -> list[msg.Message]:
        """`_WaitingRead` over tasks: the answers of one ``asyncio.wait`` round are taken together."""
        read = _WaitingRead(max_messages)
        tasks = {
            asyncio.ensure_future(self._on(i, "read_batch", name, max_messages, timeout_ms, wait_ms=wait_ms))
            for i in up
        }
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

    async def confirm(self, id: int) -> None:
        await self._on(self._members.holder(id), "confirm", id)

    async def touch(self, id: int, timeout_ms: int) -> None:
        await self._on(self._members.holder(id), "touch", id, timeout_ms)

    async def release(self, id: int, delay_ms: int = 0) -> None:
        await self._on(self._members.holder(id), "release", id, delay_ms)

    async def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        """As `GroupClient.confirm_batch`."""
        batch = _ConfirmBatch(self._members, ids)
        for position, member_ids in batch.calls:
            batch.take(member_ids, await self._on(position, "confirm_batch", member_ids))
        return batch.results()

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

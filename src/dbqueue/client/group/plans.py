"""The group's routing decisions, without I/O: written once, used by `GroupClient` and `AsyncGroupClient`.

Theory of operation
-------------------
A group client asks one member or several, and must decide where each request
goes and what the answers mean. Every such decision lives here, as plain
functions and small objects that never touch a socket, a thread or a loop
(the h11 way; redis-py's near-copied sync and async parsers are what this
avoids). A client's own code is only its I/O loop around them:

* `Members` is the bookkeeping: each member's client, which are down and
  when to retry them (backoff doubling up to `MAX_RETRY_SECONDS`), which
  member *index* (the top byte of the ids it hands out) sits at which
  *position* (the order of the addresses given), and the queues to create
  again on a member that comes back. Time is passed in. While a member is
  down, a live one is asked for MEMBERS at most every
  `MEMBERS_CHECK_SECONDS` (`claim_members_check`); `follow` moves a down
  member to the address its part is served at now (a standby took it over,
  on a PostgreSQL store), due for a reconnect at once, whatever its backoff
  and even while an attempt at its old address is still under way (a dead
  machine's address may take the whole connect timeout to fail). An attempt
  that ends at an address the member has left since changes nothing: its
  failure marks nothing down, its connection is refused (`connected`).
* `member_for_send` and `Failover` pick the member for a send, then another
  for each that fails.
* `ReadPass` and `WaitingRead` decide a read: which member to ask next, what
  each answer means, which surplus messages to release.
* `fan_out_answers` and the ``*_result`` functions turn every member's answer
  into one result or one error.
* `ConfirmBatch` routes confirms by id.

A member's answer reaches a plan as a value: its result, or the exception its
call raised. A connection failure (`CONNECTION_FAILURES`) means the member is
down, not that it refused: the plans go on with the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from ...errors import (
    AuthenticationFailed,
    ConnectionLost,
    DbQueueError,
    NoSuchMessage,
    NoSuchQueue,
    ProtocolError,
    RequestError,
)
from ...protocol import messages as msg
from ...protocol.frames import MEMBER_SHIFT
from ..commands import parse_address

__all__ = [
    "CONNECTION_FAILURES",
    "ANSWERS_AS_VALUES",
    "MAX_RETRY_SECONDS",
    "MEMBERS_CHECK_SECONDS",
    "MEMBER_SHIFT",
    "RETRY_SECONDS",
    "ConfirmBatch",
    "Failover",
    "Members",
    "MembersUnreached",
    "MovePass",
    "QueueOptions",
    "ReadPass",
    "WaitingRead",
    "create_result",
    "delete_result",
    "discovered",
    "fan_out_answers",
    "list_queues_result",
    "member_for_send",
    "member_of",
    "merge_stats",
    "peek_result",
    "purge_result",
    "raise_or",
    "stats_result",
    "unreached_members",
]

T = TypeVar("T")
C = TypeVar("C")  # a member's client: `Client` or `AsyncClient`

RETRY_SECONDS = 1.0  # first wait before reconnecting to a member that went down; doubles up to:
MAX_RETRY_SECONDS = 30.0
# While a member is down: how often to ask a live one who serves its part now. A standby takes a part over
# within seconds; asking more often would only load the members, less often would delay the follow.
MEMBERS_CHECK_SECONDS = 1.0

# A member that fails so is down, not refusing: the caller goes on with the others.
CONNECTION_FAILURES = (ConnectionLost, ProtocolError, OSError)
# What a client hands back as a value for the plans below to judge.
ANSWERS_AS_VALUES = (RequestError, *CONNECTION_FAILURES)

_SUMMED = (
    "ready", "in_flight", "delayed", "waiting", "consumers",
    "enqueued", "confirmed", "requeued", "dead_lettered", "dropped", "purged", "moved",
)  # fmt: skip
_OLDEST = ("oldest_ready_age_ms",)  # the group's is its oldest member's


def member_of(id_: int) -> int:
    """Return the index of the member that handed out message ``id_`` (the top byte of the id)."""
    return id_ >> MEMBER_SHIFT


def member_for_send(key: bytes | str | None, turn: int, up: list[int]) -> int:
    """Return the position of a live member for a send: by a stable hash of ``key``, else round-robin
    by ``turn``. ``up`` holds the live positions. Raises `ConnectionLost` if it is empty."""
    if not up:
        raise ConnectionLost("no member of the group is reachable")
    if key is None:
        return up[turn % len(up)]
    raw = key.encode() if isinstance(key, str) else key
    return up[zlib.crc32(raw) % len(up)]


def discovered(reply: msg.MembersReply, asked: str) -> list[str]:
    """Return the member addresses a MEMBERS answer gives, asked of the member at ``asked``.

    A server alone answers with its bind address (maybe 0.0.0.0): the one that reached it is kept.
    """
    return list(reply.members) if len(reply.members) > 1 else [asked]


def raise_or(answer: T | BaseException) -> T:
    """Return ``answer``, or raise it if it is an exception."""
    if isinstance(answer, BaseException):
        raise answer
    return answer


# --- answers from every member -------------------------------------------------------------


def fan_out_answers(outcomes: Iterable[T | BaseException]) -> list[T | RequestError]:
    """Return the answers of the members reached, in member order: results, and refusals as values.

    ``outcomes`` holds one result or exception per member asked. Raises
    `ConnectionLost` if no member was reached, or the first error that is
    neither a refusal nor a connection failure.
    """
    answers: list[T | RequestError] = []
    for outcome in outcomes:
        if isinstance(outcome, CONNECTION_FAILURES):
            continue
        if isinstance(outcome, BaseException) and not isinstance(outcome, RequestError):
            raise outcome
        answers.append(outcome)
    if not answers:
        raise ConnectionLost("no member of the group is reachable")
    return answers


class MembersUnreached(DbQueueError):
    """A call meant for every member of the group (``create``, ``delete``, ``purge``, ``move``) reached
    only some of them; raised only by a group client made with ``require_every_member=True``.

    The members reached did their part: ``result`` is what they answered
    together (how many were purged or moved; None for ``create`` and
    ``delete``). ``unreached`` holds the ``(address, reason)`` of each member
    that was down or failed: until the call is made again with every member
    up, the group is not what it was asked to be (a queue missing on, or left
    on, those members; their messages not purged or moved).
    """

    def __init__(self, operation: str, result: object, unreached: list[tuple[str, str]]) -> None:
        where = "; ".join(f"{address}: {reason}" for address, reason in unreached)
        super().__init__(f"{operation} did not reach {len(unreached)} member(s) of the group ({where})")
        self.operation = operation
        self.result = result
        self.unreached = unreached


def unreached_members(addresses: list[str], asked: list[int], outcomes: Sequence[object]) -> list[tuple[str, str]]:
    """Return the ``(address, reason)`` of each member a call on every member did not reach: those not
    ``asked`` (down when it started) and those whose outcome (in the order of ``asked``) is a connection
    failure. ``addresses``: every member's, by position."""
    failed = {
        position: outcome for position, outcome in zip(asked, outcomes) if isinstance(outcome, CONNECTION_FAILURES)
    }
    missed: list[tuple[str, str]] = []
    for position, address in enumerate(addresses):
        if position in failed:
            missed.append((address, str(failed[position]) or type(failed[position]).__name__))
        elif position not in asked:
            missed.append((address, "down"))
    return missed


def create_result(answers: list[None | RequestError]) -> None:
    """Return None, or raise the first refusal: the queue must exist on every member reached."""
    for answer in answers:
        raise_or(answer)


def delete_result(answers: list[None | RequestError]) -> None:
    """Return None, or raise `NoSuchQueue` if no member had the queue: deleting is done once it is
    gone everywhere."""
    if all(isinstance(answer, NoSuchQueue) for answer in answers):
        raise_or(answers[0])


def purge_result(answers: list[int | RequestError]) -> int:
    """Return how many messages the members dropped in all; raise the first refusal."""
    return sum(raise_or(answer) for answer in answers)


def merge_stats(per_member: list[dict[str, Any]]) -> dict[str, Any]:
    """Return one queue's figures over the group: counts summed, ages the oldest of any member,
    options from the first member, ``members`` how many answered."""
    merged = dict(per_member[0])
    for field in _SUMMED:
        merged[field] = sum(stats.get(field, 0) for stats in per_member)
    for field in _OLDEST:
        if field in merged:
            merged[field] = max(stats.get(field, 0) for stats in per_member)
    merged["members"] = len(per_member)
    return merged


def stats_result(answers: list[dict[str, Any] | RequestError]) -> dict[str, Any]:
    """Return the queue's figures summed over the members (`merge_stats`); raise the first refusal."""
    return merge_stats([raise_or(answer) for answer in answers])


def list_queues_result(answers: list[list[dict[str, Any]] | RequestError]) -> list[dict[str, Any]]:
    """Return every queue any member has, each with its figures summed over the members that have it."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for answer in answers:
        for stats in raise_or(answer):
            by_name.setdefault(stats["name"], []).append(stats)
    return [merge_stats(stats) for stats in by_name.values()]


def peek_result(answers: list[list[msg.PeekedMessage] | RequestError], count: int) -> list[msg.PeekedMessage]:
    """Return what a peek of the group shows: the oldest ``count`` of what the members showed
    (each was asked for ``count``), oldest first. Raises `NoSuchQueue` only if no member has the
    queue, else the first other refusal."""
    if all(isinstance(answer, NoSuchQueue) for answer in answers):
        raise_or(answers[0])
    seen: list[msg.PeekedMessage] = []
    for answer in answers:
        if not isinstance(answer, NoSuchQueue):
            seen += raise_or(answer)
    return sorted(seen, key=lambda message: message.enqueued_at)[:count]


class MovePass:
    """A move across a group: each member moves its own part of the source queue, one after the
    other, each asked for what is still to move (every ready message when no count is given).

    Messages never cross members: a member's messages move to its own part of
    the destination, so a group move is as atomic as each member's, member by
    member. A member that is down keeps its part (move again once it is back);
    one without the source queue is skipped, and the move fails only if no
    member has it.
    """

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.moved = 0
        self._reached = 0  # members that answered
        self._missing: list[NoSuchQueue] = []  # their answers that they have no such queue

    def wanted(self) -> int | None:
        """Return how many messages the next member should move (None: all), or 0 once done."""
        return None if self.count is None else self.count - self.moved

    def take(self, answer: int | BaseException) -> None:
        """Record one member's answer: how many it moved, or the error it raised.

        Raises a refusal other than `NoSuchQueue`.
        """
        if isinstance(answer, NoSuchQueue):
            self._missing.append(answer)
        elif isinstance(answer, RequestError):
            raise answer
        elif isinstance(answer, BaseException):
            return  # that member is down: its part stays where it is
        else:
            self.moved += answer
        self._reached += 1

    def result(self) -> int:
        """Return how many moved in all. Raises `NoSuchQueue` if no member reached has the source,
        `ConnectionLost` if no member was reached."""
        if not self._reached:
            raise ConnectionLost("no member of the group is reachable")
        if len(self._missing) == self._reached:
            raise self._missing[0]
        return self.moved


# --- sends ---------------------------------------------------------------------------------


class Failover:
    """Where a send goes: a live member (by key, else round-robin), then another for each that fails.

    A member that is down, or that answers `NoSuchQueue` (a group left
    inconsistent: the queue was created, or deleted, while some member was
    down), is passed over for the next: neither answer means anything was
    queued, so trying another cannot send a message twice. The send fails
    with `NoSuchQueue` only if no member reached has the queue.
    """

    def __init__(self, members: Members[Any], key: bytes | str | None) -> None:
        self._members = members
        self._key = key
        self._tried: set[int] = set()
        self._current = -1
        self._missing: NoSuchQueue | None = None  # a member's answer that it has no such queue

    def next_member(self) -> int:
        """Return the position of a live member not tried yet. Raises `NoSuchQueue` when none is left and
        some member said it has no such queue, else `ConnectionLost` when none is left."""
        untried = [position for position in self._members.up() if position not in self._tried]
        if not untried and self._missing is not None:
            raise self._missing
        self._current = member_for_send(self._key, self._members.next_turn(), untried)
        return self._current

    def failed(self, answer: object) -> bool:
        """Whether ``answer`` (the last member's result or error) is a connection failure: then try
        another member. Anything else ends the send (`raise_or` gives its result), unless `missing`."""
        if isinstance(answer, CONNECTION_FAILURES):
            self._tried.add(self._current)
            return True
        return False

    def missing(self, answer: object) -> bool:
        """Whether ``answer`` is `NoSuchQueue`: then try another member, which may have the queue
        (`next_member` raises this answer once none is left)."""
        if isinstance(answer, NoSuchQueue):
            self._missing = answer
            self._tried.add(self._current)
            return True
        return False


# --- reads ---------------------------------------------------------------------------------


class ReadPass:
    """The first step of a group read: ask the members in turn, without waiting.

    Each member is asked for what is still wanted, starting one further round
    the group at every read so that no member is always drained first. A
    member that is down is skipped; one without the queue is counted, so the
    read fails only if no member has it.
    """

    def __init__(self, name: str, max_messages: int, up: list[int], start: int) -> None:
        self.name = name
        self.max_messages = max_messages
        self.order = [up[(start + step) % len(up)] for step in range(len(up))]  # positions, in asking order
        self.found: list[msg.Message] = []
        self._missing = 0

    def wanted(self) -> int:
        """Return how many messages to ask the next member for."""
        return self.max_messages - len(self.found)

    def take(self, answer: list[msg.Message] | BaseException) -> bool:
        """Record one member's answer (messages, or the error it raised); return True once enough are found.

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

    def must_wait(self, wait: float) -> bool:
        """After every member was asked: return whether to wait on all of them (`WaitingRead`).

        Raises `NoSuchQueue` if no member has the queue.
        """
        if self.order and self._missing == len(self.order):
            raise NoSuchQueue(f"no queue named {self.name!r} on any member")
        return not self.found and bool(wait)


class WaitingRead:
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
        """Record one member's answer."""
        self._found += messages

    @property
    def over(self) -> bool:
        """Whether the read is over: some answer brought messages."""
        return bool(self._found)

    def kept(self) -> list[msg.Message]:
        """Return the messages the read returns (``max_messages`` at most)."""
        return self._found[: self.max_messages]

    def extras(self) -> list[msg.Message]:
        """Return the messages beyond ``max_messages``, for the caller to release."""
        return self._found[self.max_messages :]


# --- confirms ------------------------------------------------------------------------------


class ConfirmBatch:
    """Confirms of many ids: one CONFIRM_BATCH per member that handed some out, results in the ids' order.

    Ids from a member this client does not know get `NoSuchMessage` without a request.
    """

    def __init__(self, members: Members[Any], ids: Iterable[int]) -> None:
        self.ids = list(ids)
        self.calls: list[tuple[int, list[int]]] = []  # (member position, its ids)
        self._outcome: dict[int, RequestError | None] = {}
        by_index: dict[int, list[int]] = {}
        for id_ in self.ids:
            by_index.setdefault(member_of(id_), []).append(id_)
        for index, member_ids in by_index.items():
            position = members.position_of_index.get(index)
            if position is None:
                self._outcome.update((id_, _unknown_holder(id_)) for id_ in member_ids)
            else:
                self.calls.append((position, member_ids))

    def take(self, member_ids: list[int], answers: list[RequestError | None]) -> None:
        """Record one member's results for ``member_ids``."""
        self._outcome.update(zip(member_ids, answers))

    def results(self) -> list[RequestError | None]:
        """Return one result per id, in the order given: None, or the error as a value."""
        return [self._outcome[id_] for id_ in self.ids]


def _unknown_holder(id_: int) -> RequestError:
    return NoSuchMessage(f"message {id_} comes from a group member this client does not know")


# --- members -------------------------------------------------------------------------------


class QueueOptions(NamedTuple):
    """A queue's `create` options, kept to create it again on a member that comes back."""

    capacity: int | None
    max_deliveries: int | None
    dead_letter_queue: str | None
    visibility_timeout: float | None  # seconds


class Members(Generic[C]):
    """The member addresses, their clients, which are down, and the queues to recreate on reconnect.

    *Positions* follow the addresses given; a member's *index* (the top byte of
    its ids) is what it says in its MEMBERS answer, learned at each connect.
    """

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.clients: list[C | None] = [None] * len(addresses)  # by position; None while down
        self.retry_at = [0.0] * len(addresses)
        self.backoff = [RETRY_SECONDS] * len(addresses)
        self.position_of_index: dict[int, int] = {}
        self.created: dict[str, QueueOptions] = {}
        self.turn = 0
        self.refusal: AuthenticationFailed | None = None  # kept to explain a group that no member lets in
        self.members_check_at = 0.0  # when a live member may next be asked who serves the down ones' parts

    def up(self) -> list[int]:
        """Return the positions of the members connected now."""
        return [position for position, client in enumerate(self.clients) if client is not None]

    def client(self, position: int) -> C:
        """Return the client of the member at ``position``. Raises `ConnectionLost` if it is down."""
        client = self.clients[position]
        if client is None:
            raise ConnectionLost(f"member {self.addresses[position]} is down")
        return client

    def claim_retries(self, now: float) -> list[int]:
        """Return the positions due for a reconnect at ``now``, each claimed until its attempt ends
        (`connected` or `connect_failed`): one attempt at a time per member."""
        due = [
            position
            for position, client in enumerate(self.clients)
            if client is None and self.retry_at[position] <= now
        ]
        for position in due:
            self.retry_at[position] = float("inf")
        return due

    def claim_members_check(self, now: float) -> C | None:
        """Return a live member's client to ask for MEMBERS, or None: only while some member is down and
        another up, and at most once every `MEMBERS_CHECK_SECONDS` (the answer goes to `follow`)."""
        up = self.up()
        if not up or len(up) == len(self.clients) or now < self.members_check_at:
            return None
        self.members_check_at = now + MEMBERS_CHECK_SECONDS
        client = self.clients[up[self.next_turn() % len(up)]]
        assert client is not None  # up() lists connected members only
        return client

    def follow(self, owners: Iterable[str], now: float) -> list[int]:
        """Take a MEMBERS answer (part ``i`` served at ``owners[i]``; empty: nobody) and return the
        positions whose address changed.

        A member that is down while its part is served at another address (a
        standby took it over) moves there, due for a reconnect at ``now`` with
        its backoff reset, even while an attempt at its old address is under
        way (that one's outcome is then ignored: `connect_failed`, `connected`):
        the ids consumers hold keep routing to that part. A member that is up
        keeps its connection: if it lost its part it stops serving, is marked
        down, and is followed then. A part this client has never seen, at an
        address it does not know, becomes a new member.
        """
        changed: list[int] = []
        known = {parse_address(address) for address in self.addresses}
        for index, owner in enumerate(owners):
            if not owner:
                continue
            host, port = parse_address(owner)
            address = f"{host}:{port}"
            position = self.position_of_index.get(index)
            if position is None:
                if (host, port) in known:
                    continue  # a member given to this client that it has not reached yet
                self.addresses.append(address)
                self.clients.append(None)
                self.retry_at.append(now)
                self.backoff.append(RETRY_SECONDS)
                changed.append(len(self.addresses) - 1)
            elif self.clients[position] is None and (host, port) != parse_address(self.addresses[position]):
                self.addresses[position] = address
                self.retry_at[position] = now  # an attempt at the old address may still run: it is stale now
                self.backoff[position] = RETRY_SECONDS
                changed.append(position)
        return changed

    def connected(self, position: int, client: C, index: int, address: str | None = None) -> bool:
        """Record that the member at ``position`` is up, with ``client`` (connected to ``address``); it says
        it is member ``index``. Return False, recording nothing, if the member has moved to another address
        since (`follow`) or another attempt connected it first: the caller closes ``client``."""
        if self.clients[position] is not None or (address is not None and address != self.addresses[position]):
            return False
        self.clients[position] = client
        self.position_of_index[index] = position
        self.backoff[position] = RETRY_SECONDS
        return True

    def connect_failed(self, position: int, exc: BaseException, now: float, address: str | None = None) -> None:
        """Record a failed (re)connect to ``address``: the member stays down until its next retry. An
        attempt at an address the member has left since (`follow`), or one that another attempt beat,
        changes nothing."""
        if isinstance(exc, AuthenticationFailed):
            self.refusal = exc
        if self.clients[position] is not None or (address is not None and address != self.addresses[position]):
            return
        self.mark_down(position, now)

    def mark_down(self, position: int, now: float) -> None:
        """Forget the member's client; retry it after its backoff, which doubles while it stays down.

        A member that accepts connections but never answers must not stall every call.
        """
        self.clients[position] = None
        self.retry_at[position] = now + self.backoff[position]
        self.backoff[position] = min(self.backoff[position] * 2, MAX_RETRY_SECONDS)

    def raise_if_unreachable(self, addresses: list[str]) -> None:
        """After the first connects: raise the refusal met, else `ConnectionLost`, if no member is up."""
        if not self.up():
            if self.refusal is not None:
                raise self.refusal
            raise ConnectionLost(f"no member of {addresses} is reachable")

    def holder(self, id_: int) -> int:
        """Return the position of the member that handed out message ``id_``.

        Raises `NoSuchMessage` if no member this client knows has that index.
        """
        index = member_of(id_)
        position = self.position_of_index.get(index)
        if position is None:
            raise NoSuchMessage(f"message {id_} comes from group member {index}, which this client does not know")
        return position

    def next_turn(self) -> int:
        """Return the next turn, for round-robin choices."""
        self.turn += 1
        return self.turn

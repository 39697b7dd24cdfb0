"""The blocking group client, `GroupClient`, and its pipeline, `GroupPipeline`.

Each member has a blocking `Client`; the routing is `plans`. A waiting read on
every member at once sends one to each and waits for the first answer
(`sync.wait_for_any`). Members due for a reconnect are retried on threads of
their own, so a member that accepts connections but never answers does not
stall the caller.

Threads: any number may share one `GroupClient`. Each member's `Client` is
thread-safe already; what the group adds is its bookkeeping (`plans.Members`:
which member is up, the round-robin turn, the queues to create again), which
the plans leave to their caller to guard. It is read and changed under one
lock, held only while no I/O runs. A member found broken is marked down only
if it still has the client that failed: a thread that fails late on a member's
old connection must not mark down the new one another thread made meanwhile.

Following a part (a group on a PostgreSQL store with a standby): while a
member is down, every call that starts the due reconnects also asks a live
member for MEMBERS, once a second at most, on a thread (`_follow`); a down
member whose part is now served at another address is moved there and
connected at once (its queues created again). A confirm, touch or release
names a message by id, so its member cannot be skipped: while it is down the
call waits for it, up to the client's timeout, then raises `ConnectionLost`
(nothing was sent). A confirm sent to the new owner for a message that was in
flight at the death is answered `NoSuchMessage` or `Requeued`: the new owner
restored it as ready, so it will be delivered again; never a false success.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Self, TypeVar

from ...errors import ConnectionLost, DbQueueError, RequestError
from ...protocol import messages as msg
from ..commands import REQUESTS, Decode, delay_ms, parse_address, result_of
from ..sync import Client, _Call, wait_for_any
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
    member_for_send,
    peek_result,
    purge_result,
    raise_or,
    stats_result,
    unreached_members,
)

__all__ = ["GroupClient", "GroupPipeline"]

T = TypeVar("T")

HOLDER_POLL_SECONDS = 0.05  # while waiting for a message's member to come back: how often to look
MAX_HOLDER_WAIT = 10.0  # that wait, for a client made without a timeout


class GroupClient:
    """A blocking client for a group of servers; see `dbqueue.client.group` for the routing.

    Thread-safe: any number of threads may share one group client, as they
    may a `Client`; a waiting read in one thread holds up none of the others,
    and `close` from any thread fails the calls still waiting with `ConnectionLost`.

    ``create``, ``delete``, ``purge`` and ``move`` go to every member that is
    up and, by default, succeed with what those did (a long-lived client
    creates its queues again on a member that comes back). Made with
    ``require_every_member=True`` (a one-shot tool such as the ``dbqueue``
    command), they raise `MembersUnreached` instead when some member was
    down or failed, carrying the others' result and the members missed.

    >>> group = GroupClient.connect(["127.0.0.1:3000", "127.0.0.1:3001"])
    >>> group.create("jobs"); group.send("jobs", b"x"); message = group.read("jobs", wait=5.0)
    """

    def __init__(
        self,
        members: Members[Client],
        timeout: float | None,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
        require_every_member: bool = False,
    ) -> None:
        self._members = members  # read and changed under _lock only
        self._lock = threading.Lock()  # never held across I/O
        self._closed = False
        self._timeout = timeout
        self._token = token  # for every member
        self._tls = tls
        self._require_every_member = require_every_member

    @classmethod
    def connect(
        cls,
        addresses: str | list[str],
        timeout: float | None = 10.0,
        *,
        token: str | bytes | None = None,
        tls: bool | ssl.SSLContext | None = None,
        require_every_member: bool = False,
    ) -> Self:
        """Connect to every member and return the group client. One address: ask it for the group
        (MEMBERS) first.

        ``timeout``, ``token`` and ``tls`` apply to every member, as for
        `Client.connect`. ``require_every_member``: see the class. Raises
        `ConnectionLost` if no member can be reached, `AuthenticationFailed`
        if none lets this client in.
        """
        if isinstance(addresses, str):
            with Client.connect(addresses, timeout, token=token, tls=tls) as first:
                addresses = discovered(first.members(), addresses)
        members: Members[Client] = Members([f"{host}:{port}" for host, port in map(parse_address, addresses)])
        group = cls(members, timeout, token=token, tls=tls, require_every_member=require_every_member)
        group._reconnect(wait=True)
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
        with self._lock:
            return [address for address, client in zip(members.addresses, members.clients) if client is None]

    # --- plumbing ----------------------------------------------------------------------

    def _reconnect(self, wait: bool = False) -> None:
        """Reconnect to members due for a retry: in the background, so that a member that
        accepts connections but does not answer never stalls a call (``wait``: inline, at connect).
        While a member is down, also ask a live one (`Members.claim_members_check`) who serves its part now."""
        now = time.monotonic()
        with self._lock:
            due = [] if self._closed else self._members.claim_retries(now)
            asked = None if self._closed else self._members.claim_members_check(now)
        for position in due:
            if wait:
                self._connect_member(position)
            else:
                threading.Thread(target=self._connect_member, args=(position,), daemon=True).start()
        if asked is not None:
            threading.Thread(target=self._follow, args=(asked,), daemon=True).start()

    def _follow(self, asked: Client) -> None:
        """Ask ``asked`` for MEMBERS; a down member whose part is served elsewhere now is reconnected there."""
        try:
            owners = asked.members().members
        except (DbQueueError, OSError):
            return  # that member failed too: its caller marks it down; the next check asks another
        with self._lock:
            moved = self._members.follow(owners, time.monotonic())
        if moved:
            self._reconnect()

    def _holder_client(self, position: int) -> Client:
        """`_wait_for_holder`; and if the member has closed that connection already (killed, stopped),
        nothing is sent on it: the member is marked down and waited for again, so the call reaches the
        part's owner instead of failing with an unknown outcome. Raises `ConnectionLost`."""
        client = self._wait_for_holder(position)
        if client.connection._peer_closed():
            self._member_failed(position, client)
            client = self._wait_for_holder(position)
        return client

    def _wait_for_holder(self, position: int) -> Client:
        """The client of the member at ``position``, which holds messages by their ids; while it is down,
        wait for it (its part may be taken over by a standby, `_follow`) at most the client's timeout.

        Raises `ConnectionLost` if it is still down then: nothing was sent, so nothing took effect.
        """
        deadline = time.monotonic() + (self._timeout if self._timeout is not None else MAX_HOLDER_WAIT)
        while True:
            with self._lock:
                client = self._members.clients[position]
                closed = self._closed
            if client is not None:
                return client
            if closed or time.monotonic() >= deadline:
                return self._client(position)  # raises ConnectionLost, naming the member
            self._reconnect()
            time.sleep(HOLDER_POLL_SECONDS)

    def _connect_member(self, position: int) -> None:
        members = self._members
        client = None
        with self._lock:
            address = members.addresses[position]
        try:
            client = Client.connect(address, self._timeout, token=self._token, tls=self._tls)
            index = client.members().index
            created: dict[str, QueueOptions] = {}
            while True:
                # Queues created meanwhile (on the members that were up) are created here too.
                with self._lock:
                    missing = {
                        name: options for name, options in members.created.items() if created.get(name) != options
                    }
                    if not missing:
                        if self._closed or not members.connected(position, client, index, address):
                            break  # closed, or the member moved (or was reached) meanwhile: not this client
                        return
                for name, options in missing.items():
                    client.create(name, **options._asdict())
                created.update(missing)
        except (DbQueueError, OSError) as exc:
            if client is not None:  # connected, then refused: the next retry opens a new one
                client.close()
            with self._lock:
                members.connect_failed(position, exc, time.monotonic(), address)
            return
        client.close()  # the group was closed, or the member moved, while this attempt was connecting

    def _client(self, position: int) -> Client:
        """The client of the member at ``position``. Raises `ConnectionLost` if it is down."""
        with self._lock:
            return self._members.client(position)

    def _up(self) -> list[int]:
        with self._lock:
            return self._members.up()

    def _next_member(self, key: bytes | str | None) -> int:
        """A live member for a send or a pipelined read (by ``key``, else round-robin). Raises `ConnectionLost`."""
        with self._lock:
            return member_for_send(key, self._members.next_turn(), self._members.up())

    def _holder(self, id_: int) -> int:
        with self._lock:
            return self._members.holder(id_)

    def _member_failed(self, position: int, client: Client) -> None:
        """Close the member's broken client and mark the member down, unless another thread did so
        already, or has connected to it again since. Raises nothing."""
        client.close()
        with self._lock:
            if self._members.clients[position] is client:
                self._members.mark_down(position, time.monotonic())

    def _on_member(self, position: int, call: Callable[[Client], T], holder: bool = False) -> T:
        """Return ``call`` of the member at ``position``'s client; a connection failure marks it down
        and is raised, as is a refusal. ``holder``: the call names messages by id, so a member that is
        down is waited for (`_wait_for_holder`) rather than skipped."""
        client = self._holder_client(position) if holder else self._client(position)
        try:
            return call(client)
        except CONNECTION_FAILURES:
            self._member_failed(position, client)
            raise

    def _answer(self, position: int, call: Callable[[Client], T]) -> T | Exception:
        """`_on_member`, but a refusal or a connection failure is returned as a value for a plan to judge."""
        try:
            return self._on_member(position, call)
        except ANSWERS_AS_VALUES as exc:
            return exc

    def _on_every_member(self, call: Callable[[Client], T]) -> list[T | RequestError]:
        """``call`` on every live member, one after the other; see `plans.fan_out_answers`."""
        return self._fan_out(call)[0]

    def _fan_out(self, call: Callable[[Client], T]) -> tuple[list[T | RequestError], list[tuple[str, str]]]:
        """`_on_every_member`, and the members it did not reach (`plans.unreached_members`)."""
        self._reconnect()
        with self._lock:
            addresses = list(self._members.addresses)
            up = self._members.up()
        outcomes = [self._answer(position, call) for position in up]
        return fan_out_answers(outcomes), unreached_members(addresses, up, outcomes)

    def _whole(self, operation: str, result: T, unreached: list[tuple[str, str]]) -> T:
        """Return ``result``; raise `MembersUnreached` if a member was missed and every one is required."""
        if unreached and self._require_every_member:
            raise MembersUnreached(operation, result, unreached)
        return result

    # --- queues ------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        capacity: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
        visibility_timeout: float | None = None,
    ) -> None:
        """Create the queue on every member (``capacity`` applies per member); a member that comes
        back gets it again. Returns None. Raises as `Client.create`, `ConnectionLost` if no
        member is reachable, `MembersUnreached` (see the class) if one was not."""
        options = QueueOptions(capacity, max_deliveries, dead_letter_queue, visibility_timeout)
        REQUESTS.create(name, **options._asdict())  # a bad option raises here, before any member is asked
        with self._lock:
            self._members.created[name] = options
        answers, unreached = self._fan_out(lambda client: client.create(name, **options._asdict()))
        create_result(answers)
        self._whole(f"create {name}", None, unreached)

    def delete(self, name: str) -> None:
        """Delete the queue on every member. Returns None. Raises `NoSuchQueue` only if no member had
        it, `ConnectionLost` if no member is reachable, `MembersUnreached` (see the class) if one was not."""
        with self._lock:
            self._members.created.pop(name, None)
        answers, unreached = self._fan_out(lambda client: client.delete(name))
        delete_result(answers)
        self._whole(f"delete {name}", None, unreached)

    def purge(self, name: str) -> int:
        """Purge the queue on every member; return how many messages were dropped in all.

        Raises `NoSuchQueue`, `ConnectionLost` if no member is reachable, `MembersUnreached` (see the
        class) if one was not.
        """
        answers, unreached = self._fan_out(lambda client: client.purge(name))
        return self._whole(f"purge {name}", purge_result(answers), unreached)

    def stats(self, name: str) -> dict[str, Any]:
        """Return the queue's figures summed over the group (``members``: how many answered).

        Raises `NoSuchQueue`, `ConnectionLost` if no member is reachable.
        """
        return stats_result(self._on_every_member(lambda client: client.stats(name)))

    def list_queues(self) -> list[dict[str, Any]]:
        """Return every queue of the group, each with its figures summed over the members that have it.

        Raises `ConnectionLost` if no member is reachable.
        """
        return list_queues_result(self._on_every_member(lambda client: client.list_queues()))

    # --- messages ----------------------------------------------------------------------

    def send(self, queue: str, data: bytes, *, delay: float = 0.0, key: bytes | str | None = None) -> int:
        """Send to one member (by ``key``, else round-robin), failing over to the others; return the id.

        Raises as `Client.send`, or `ConnectionLost` if no member is reachable.
        """
        delay_ms(delay)  # a bad delay raises here, not as a member's failure
        return self._send(lambda client: client.send(queue, data, delay=delay), key)

    def send_batch(self, queue: str, items: Iterable[bytes], *, key: bytes | str | None = None) -> list[int]:
        """Send a batch to one member (all or none), failing over to the others; return the ids in order.

        Raises as `Client.send_batch`, or `ConnectionLost` if no member is reachable.
        """
        batch = list(items)
        return self._send(lambda client: client.send_batch(queue, batch), key)

    def _send(self, call: Callable[[Client], T], key: bytes | str | None) -> T:
        self._reconnect()
        failover = Failover(self._members, key)
        while True:
            with self._lock:
                position = failover.next_member()
            answer = self._answer(position, call)
            if not (failover.failed(answer) or failover.missing(answer)):
                return raise_or(answer)

    def read(self, queue: str, *, visibility_timeout: float | None = None, wait: float = 0.0) -> msg.Message | None:
        """Return a message from any member, or None (durations as `Client.read`). With ``wait``,
        waits on every member at once.

        Raises `NoSuchQueue` if no member has the queue, `ConnectionLost` if none is reachable.
        """
        found = self._read_batch(queue, 1, visibility_timeout, wait)
        return found[0] if found else None

    def read_batch(
        self, queue: str, max_messages: int, *, visibility_timeout: float | None = None, wait: float = 0.0
    ) -> list[msg.Message]:
        """Return up to ``max_messages`` messages, gathered from the members in turn (empty: none).

        With ``wait``, and none found, waits on every member at once. Raises as `read`.
        """
        return self._read_batch(queue, max_messages, visibility_timeout, wait)

    def _read_batch(
        self, queue: str, max_messages: int, visibility_timeout: float | None, wait: float
    ) -> list[msg.Message]:
        # Built first, for its checks: a bad argument raises here, before any member is asked.
        waiting, _ = REQUESTS.read_batch(queue, max_messages, visibility_timeout=visibility_timeout, wait=wait)
        self._reconnect()
        with self._lock:
            read = ReadPass(queue, max_messages, self._members.up(), self._members.next_turn())
        for position in read.order:
            if read.take(self._read_from(position, queue, read.wanted(), visibility_timeout)):
                return read.found
        if not read.must_wait(wait):
            return read.found
        return self._wait_everywhere(waiting, max_messages, wait)

    def _read_from(
        self, position: int, queue: str, count: int, visibility_timeout: float | None
    ) -> list[msg.Message] | Exception:
        return self._answer(
            position, lambda client: client.read_batch(queue, count, visibility_timeout=visibility_timeout)
        )

    def _wait_everywhere(self, request: msg.Request, max_messages: int, wait: float) -> list[msg.Message]:
        """`WaitingRead`: a waiting read sent to every member, each answer taken as soon as it arrives.

        Once the read is over, the reads still waiting are abandoned (cancelled
        on their members; a message one brings meanwhile is released).
        """
        read = WaitingRead(max_messages)
        waiting: dict[int, tuple[Client, _Call]] = {}  # position -> (its client, the call sent to it)
        for position in self._up():
            try:
                client = self._client(position)
            except ConnectionLost:
                continue  # down since we looked
            try:
                (call,) = client.connection._submit([request])
            except CONNECTION_FAILURES:
                self._member_failed(position, client)
                continue
            waiting[position] = (client, call)
        deadline = time.monotonic() + wait + (self._timeout or 60.0)
        try:
            while waiting and not read.over:
                answered = [position for position, (_, call) in waiting.items() if call.done()]
                if not answered:
                    pending = [(client.connection, call) for client, call in waiting.values()]
                    if not wait_for_any(pending, deadline):
                        raise ConnectionLost("no member answered a waiting read in time")
                    continue
                for position in answered:
                    client, call = waiting.pop(position)
                    try:
                        response = client.connection._result(call, deadline)
                    except CONNECTION_FAILURES:
                        self._member_failed(position, client)
                        continue
                    read.take(list(result_of(response, msg.Messages).messages))
        finally:
            for client, call in waiting.values():
                client.connection._forsake(call)  # the member ends that wait now
        if not read.over:
            return []
        for extra in read.extras():
            self.release(extra.id)
        return read.kept()

    def peek(
        self, queue: str, count: int = 10, *, delayed: bool = False, in_flight: bool = False
    ) -> list[msg.PeekedMessage]:
        """Look at up to ``count`` messages of the queue without taking them (as `Client.peek`): every
        member is asked for ``count``, and the oldest ``count`` of all they show are returned, oldest
        first. Raises `NoSuchQueue` if no member has the queue, `ConnectionLost` if none is reachable."""
        REQUESTS.peek(queue, count, delayed=delayed, in_flight=in_flight)  # a bad argument raises here
        answers = self._on_every_member(lambda client: client.peek(queue, count, delayed=delayed, in_flight=in_flight))
        return peek_result(answers, count)

    def move(self, source: str, destination: str, *, count: int | None = None) -> int:
        """Move up to ``count`` ready messages (None: all) from ``source`` to ``destination``; return
        how many moved. Each member moves its own part, in one step of its own, one member after the
        other until ``count`` have moved (see `plans.MovePass`): a message never changes member, and
        a member that is down keeps its part. Raises as `Client.move`, `NoSuchQueue` only if no
        member has the queue, `ConnectionLost` if none is reachable, `MembersUnreached` (see the
        class) if one was not while messages were still to move."""
        REQUESTS.move(source, destination, count=count)  # a bad argument raises here
        self._reconnect()
        plan = MovePass(count)
        with self._lock:
            addresses = list(self._members.addresses)
            up = self._members.up()
        asked: list[int] = []
        outcomes: list[object] = []
        for position in up:
            wanted = plan.wanted()
            if wanted == 0:
                break

            def move_there(client: Client, wanted: int | None = wanted) -> int:
                return client.move(source, destination, count=wanted)

            answer = self._answer(position, move_there)
            asked.append(position)
            outcomes.append(answer)
            plan.take(answer)
        moved = plan.result()
        # Once the count has moved, a member missed does not matter: nothing more was to move.
        unreached = [] if plan.wanted() == 0 else unreached_members(addresses, asked, outcomes)
        return self._whole(f"move {source} to {destination}", moved, unreached)

    def confirm(self, id: int) -> None:
        """Confirm at the member that handed the message out. Returns None. Raises as `Client.confirm`
        (`NoSuchMessage` also for an id from a member this client does not know)."""
        self._on_member(self._holder(id), lambda client: client.confirm(id), holder=True)

    def touch(self, id: int, *, visibility_timeout: float | None = None) -> None:
        """Touch at the member that handed the message out. Returns None. Raises as `Client.touch`."""
        self._on_member(
            self._holder(id), lambda client: client.touch(id, visibility_timeout=visibility_timeout), holder=True
        )

    def release(self, id: int, *, delay: float = 0.0) -> None:
        """Release at the member that handed the message out. Returns None. Raises as `Client.release`."""
        self._on_member(self._holder(id), lambda client: client.release(id, delay=delay), holder=True)

    def dead_letter(self, id: int) -> None:
        """Move the message to its queue's dead-letter queue at the member that handed it out (the
        dead letter stays on that member). Returns None. Raises as `Client.dead_letter`."""
        self._on_member(self._holder(id), lambda client: client.dead_letter(id), holder=True)

    def confirm_batch(self, ids: Iterable[int]) -> list[RequestError | None]:
        """Confirm each id at its member; return one result per id, in order (as `Client.confirm_batch`).

        Raises `ConnectionLost` if a member holding some of the ids is down.
        """
        with self._lock:
            batch = ConfirmBatch(self._members, ids)
        for position, member_ids in batch.calls:
            batch.take(member_ids, self._confirm_at(position, member_ids))
        return batch.results()

    def _confirm_at(self, position: int, ids: list[int]) -> list[RequestError | None]:
        return self._on_member(position, lambda client: client.confirm_batch(ids), holder=True)

    def pipeline(self) -> GroupPipeline:
        """Return a new pipeline: queue commands without waiting; `GroupPipeline.execute` sends them
        member by member. Raises nothing."""
        return GroupPipeline(self)

    def close(self) -> None:
        """Close every member's connection, from any thread; messages they hold in flight go back to their
        queues, and calls still waiting raise `ConnectionLost`. No member is connected again after.
        Returns None; raises nothing."""
        with self._lock:
            self._closed = True
            clients = [client for client in self._members.clients if client is not None]
            self._members.clients = [None] * len(self._members.clients)
        for client in clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GroupPipeline:
    """Sends, reads and confirms queued for a group, sent as one pipeline per member.

    Each command returns the pipeline, so calls chain. Results come back in
    request order, errors as values (as `Pipeline`); a command queued for a
    member that is down gets `ConnectionLost`. Reads go to the members in turn
    and do not wait.

    A pipeline belongs to the thread that fills it: it is not thread-safe.
    Any number of threads may each run their own pipelines over one group
    client at once.
    """

    def __init__(self, group: GroupClient) -> None:
        self._group = group
        self._queued: list[tuple[int, tuple[msg.Request, Decode[Any]]]] = []  # (member position, the command)
        self._holders: set[int] = set()  # positions some queued command names messages of (by id)

    def send(self, queue: str, data: bytes, *, delay: float = 0.0, key: bytes | str | None = None) -> Self:
        """Queue a send to one member (by ``key``, else round-robin); its result is the id.

        Returns the pipeline. Raises `ValueError` for a bad ``delay``,
        `ConnectionLost` if no member is up.
        """
        call = REQUESTS.send(queue, data, delay=delay)
        self._queued.append((self._group._next_member(key), call))
        return self

    def read(self, queue: str, *, visibility_timeout: float | None = None) -> Self:
        """Queue a read of the next member in turn; its result is a `Message` or None (no wait).

        Returns the pipeline. Raises `ValueError` for a bad ``visibility_timeout``,
        `ConnectionLost` if no member is up.
        """
        call = REQUESTS.read(queue, visibility_timeout=visibility_timeout)
        self._queued.append((self._group._next_member(None), call))
        return self

    def confirm(self, id: int) -> Self:
        """Queue a confirm at the member that handed the message out; its result is None.

        Returns the pipeline. Raises `NoSuchMessage` for an id from a member
        this client does not know.
        """
        position = self._group._holder(id)
        self._queued.append((position, REQUESTS.confirm(id)))
        self._holders.add(position)
        return self

    def __len__(self) -> int:
        return len(self._queued)

    def execute(self) -> list[object]:
        """Send every queued command, one pipeline per member; return their results in request order.

        Each result is what `GroupClient` returns for that command, or the
        error as a value: a refusal, or `ConnectionLost` for a member that is
        down or failed. Typed `object` as for `Pipeline.execute`. Raises nothing else.
        """
        queued, self._queued = self._queued, []
        holders, self._holders = self._holders, set()
        self._group._reconnect()  # members due for a retry, and the parts of down ones followed
        results: list[object] = [None] * len(queued)
        by_member: dict[int, list[int]] = {}  # member position -> places in the request order
        for place, (position, _) in enumerate(queued):
            by_member.setdefault(position, []).append(place)
        group = self._group
        for position, places in by_member.items():
            try:
                # A member holding messages this pipeline confirms is waited for (its part may be taken over).
                client = group._holder_client(position) if position in holders else group._client(position)
            except ConnectionLost as down:
                for place in places:
                    results[place] = down
                continue
            with client.pipeline() as pipeline:
                for place in places:
                    pipeline._call(*queued[place][1])  # the member's own pipeline, handed the routed command
                try:
                    answers = pipeline.execute()
                except CONNECTION_FAILURES as exc:
                    group._member_failed(position, client)
                    answers = [exc] * len(places)
            for place, result in zip(places, answers):
                results[place] = result
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queued.clear()
        self._holders.clear()

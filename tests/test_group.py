"""A group of three real servers (one loop thread each) behind `GroupClient` and `AsyncGroupClient`.

Most tests run twice, through the blocking `GroupClient` and through the
`AsyncGroupClient` on a loop of its own (`AsyncGroup` drives it from the test
thread, so both flavours answer the same calls). Every member is checked
through a plain `Client` of its own: what the group client says is never taken
as proof of where a message went.

Tests marked ``xfail(strict=True)`` with a reason starting "BUG:" pin a fault
in the group clients that is still open; they start failing (XPASS) the day it
is fixed, and the mark can go.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from conftest import ServerThread
from dbqueue import NEVER, AsyncClient, Client, Message, NoSuchMessage
from dbqueue.client.group import AsyncGroupClient, GroupClient, member_of
from dbqueue.client.group import plans as group_plans
from dbqueue.protocol import Enqueue
from dbqueue.server import new_event_loop

T = TypeVar("T")

MEMBERS = 3
CALL_TIMEOUT = 10.0


# --- the group and the two client flavours ----------------------------------------------


class Group:
    """Three `ServerThread` members that know one another, and a plain `Client` on each."""

    def __init__(self, server_factory: Callable[..., ServerThread]) -> None:
        self._factory = server_factory
        self.handles = [server_factory(member_index=i) for i in range(MEMBERS)]
        self.addresses = [handle.address for handle in self.handles]
        for handle in self.handles:  # ports were picked at start: tell every member the group now
            handle.call(lambda handle=handle: setattr(handle.server, "members", list(self.addresses)))
        self.direct = [Client.connect(address, timeout=5.0) for address in self.addresses]
        self._restarted: list[ServerThread] = []

    def stats(self, queue: str) -> list[dict[str, Any]]:
        """Each member's figures for ``queue``, in member order."""
        return [client.stats(queue) for client in self.direct]

    def column(self, queue: str, field: str) -> list[int]:
        return [stats[field] for stats in self.stats(queue)]

    def wait_for(self, queue: str, field: str, expected: list[int], within: float = 3.0) -> None:
        """Poll every member until ``field`` reads ``expected``; fail with the last reading."""
        deadline = time.monotonic() + within
        while (seen := self.column(queue, field)) != expected:
            if time.monotonic() > deadline:
                pytest.fail(f"{field} per member is {seen}, expected {expected} within {within}s")
            time.sleep(0.01)

    def stop(self, index: int) -> None:
        """Stop member ``index`` (its memory-only queues go with it)."""
        self.direct[index].close()
        self.handles[index].stop()

    def restart(self, index: int, **options: Any) -> None:
        """Start a fresh, empty server in member ``index``'s place: same port, same member index."""
        handle = ServerThread(member_index=index, members=list(self.addresses), **options)
        handle.server.port = self.handles[index].server.port
        handle.start()
        self._restarted.append(handle)
        self.handles[index] = handle
        self.direct[index] = Client.connect(handle.address, timeout=5.0)

    def close(self) -> None:
        for client in self.direct:
            client.close()
        errors = []
        for handle in self._restarted:
            handle.stop()
            errors.extend(handle.errors)
        assert errors == [], f"a restarted member's loop saw unhandled exceptions: {errors}"


@pytest.fixture
def group(server_factory: Callable[..., ServerThread]) -> Iterator[Group]:
    members = Group(server_factory)
    yield members
    members.close()


class AsyncGroup:
    """An `AsyncGroupClient` on a loop thread of its own, called like the blocking client.

    Each call runs the coroutine on that loop and waits for its result, so
    tests written for `GroupClient` drive the asyncio client unchanged. The
    loop keeps running between calls, as an application's would.
    """

    def __init__(self, addresses: str | list[str], timeout: float) -> None:
        self.call_timeout = CALL_TIMEOUT
        self.loop = new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self._thread = threading.Thread(target=self.loop.run_forever, name="async-group-client", daemon=True)
        self._thread.start()
        self.client: AsyncGroupClient = self.run(AsyncGroupClient.connect(addresses, timeout))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(self.call_timeout)
        except TimeoutError:
            future.cancel()  # no task left hanging on the loop
            raise

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self.loop.close()
        assert self.errors == [], f"the client's loop saw unhandled exceptions: {self.errors}"


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(addresses)``: a GroupClient, or an AsyncGroupClient behind `AsyncGroup`; closed after the test."""
    opened: list[Any] = []

    def open_group(addresses: str | list[str], timeout: float = 5.0) -> Any:
        if request.param == "sync":
            client: Any = GroupClient.connect(addresses, timeout)
        else:
            client = AsyncGroup(addresses, timeout)
        opened.append(client)
        return client

    yield open_group
    for client in opened:
        client.close()


@pytest.fixture
def flavour(request: pytest.FixtureRequest, connect: Callable[..., Any]) -> str:
    """ "sync" or "async": which client ``connect`` opens in this test."""
    return request.node.callspec.params["connect"]  # type: ignore[no-any-return]


def in_thread(function: Callable[[], T]) -> Callable[[], T]:
    """Start ``function`` on a thread; return a callable that joins it and returns (or raises) its outcome."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised in the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> T:
        thread.join(CALL_TIMEOUT)
        assert not thread.is_alive(), "the call did not return"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    return join


def wait_until_waiting(group: Group, queue: str, per_member: int = 1) -> None:
    """Until every member holds ``per_member`` waiting reads on ``queue``."""
    group.wait_for(queue, "waiting", [per_member] * MEMBERS)


# --- discovery, queues, sends -----------------------------------------------------------


def test_every_member_answers_members_with_the_group_and_its_own_index(group: Group) -> None:
    for index, client in enumerate(group.direct):
        reply = client.members()
        assert list(reply.members) == group.addresses
        assert reply.index == index


def test_discovery_from_one_address_reaches_every_member(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses[1])  # any member will do
    client.create("q")
    assert group.column("q", "ready") == [0, 0, 0]  # stats raises NoSuchQueue where it is missing
    ids = [client.send("q", b"%d" % i) for i in range(6)]
    assert sorted(member_of(id_) for id_ in ids) == [0, 0, 1, 1, 2, 2]


def test_create_and_delete_reach_every_member(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q", capacity=5)
    assert group.column("q", "capacity") == [5, 5, 5]
    client.delete("q")
    assert [queues for queues in (direct.list_queues() for direct in group.direct)] == [[], [], []]


def test_send_round_robin_spreads_over_every_member(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    ids = [client.send("q", b"m%d" % i) for i in range(30)]
    assert group.column("q", "ready") == [10, 10, 10]
    for index, direct in enumerate(group.direct):
        held = direct.read_batch("q", 100)
        assert [member_of(message.id) for message in held] == [index] * 10  # an id names its member
    assert len(set(ids)) == 30
    merged = client.stats("q")
    assert (merged["members"], merged["enqueued"], merged["in_flight"]) == (3, 30, 30)


def test_send_with_a_key_stays_on_one_member_in_order(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    sent: dict[str, list[int]] = {}
    for i in range(20):
        for key in ("alpha", "beta", "gamma"):
            sent.setdefault(key, []).append(client.send("q", f"{key}-{i}".encode(), key=key))
    held = [direct.read_batch("q", 100) for direct in group.direct]  # each member's messages, in its order
    for key, ids in sent.items():
        (member,) = {member_of(id_) for id_ in ids}
        in_member_order = [m for m in held[member] if m.data.startswith(key.encode())]
        assert [m.id for m in in_member_order] == ids
        assert [m.data for m in in_member_order] == [f"{key}-{i}".encode() for i in range(20)]


# --- reads ------------------------------------------------------------------------------


def test_read_takes_messages_from_every_member(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    sent = {direct.send("q", b"at-%d-%d" % (index, i)) for index, direct in enumerate(group.direct) for i in range(4)}
    got = [client.read("q", visibility_timeout=10.0) for _ in range(12)]
    assert {message.id for message in got} == sent
    assert client.read("q") is None
    assert client.read_batch("q", 5) == []


def test_read_batch_gathers_from_several_members(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    for index, direct in enumerate(group.direct):
        direct.send_batch("q", [b"%d" % index] * 2)
    got = client.read_batch("q", 6, visibility_timeout=10.0)
    assert sorted(message.data for message in got) == [b"0", b"0", b"1", b"1", b"2", b"2"]


@pytest.mark.parametrize("member", range(MEMBERS))
def test_a_waiting_read_is_woken_by_a_send_to_any_member(
    group: Group, connect: Callable[..., Any], member: int
) -> None:
    client = connect(group.addresses)
    client.create("q")
    started = time.monotonic()
    read = in_thread(lambda: client.read("q", visibility_timeout=10.0, wait=5.0))
    wait_until_waiting(group, "q")
    id_ = group.direct[member].send("q", b"wake up")
    assert read() == Message(id_, b"wake up", 1)
    assert time.monotonic() - started < 2.0, "the read waited for its wait_ms instead of the message"
    group.wait_for("q", "in_flight", [1 if i == member else 0 for i in range(MEMBERS)])
    client.confirm(id_)
    group.wait_for("q", "in_flight", [0, 0, 0])


def test_a_waiting_read_returns_empty_after_wait_ms(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    started = time.monotonic()
    assert client.read("q", visibility_timeout=1.0, wait=0.3) is None
    assert 0.25 < time.monotonic() - started < 2.0


def test_a_waiting_read_holds_one_message_when_every_member_answers(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    read = in_thread(lambda: client.read("q", visibility_timeout=NEVER, wait=5.0))  # held until confirmed
    wait_until_waiting(group, "q")
    for direct in group.direct:  # one message on every member: all three waiting reads answer
        direct.send("q", b"x")
        time.sleep(0.1)  # one after the other (two answers in one turn: see the asyncio-only faults below)
    message = read()
    assert message is not None
    # The client then stays idle (a consumer at work): the two extra messages must be back by now.
    group.wait_for("q", "in_flight", [1 if i == member_of(message.id) else 0 for i in range(MEMBERS)], within=1.0)
    assert sum(group.column("q", "ready")) == 2
    client.confirm(message.id)


def test_an_abandoned_waiting_read_does_not_starve_another_consumer(group: Group, connect: Callable[..., Any]) -> None:
    # Consumer A's waiting read is won by member 0; A then works on its message.
    # Consumer B waits next; a message sent to member 1 must reach B, not A's stale wait there.
    first, second = connect(group.addresses), connect(group.addresses)
    first.create("q")
    read = in_thread(lambda: first.read("q", visibility_timeout=NEVER, wait=3.0))
    wait_until_waiting(group, "q")
    group.direct[0].send("q", b"for A")
    assert read().data == b"for A"
    read = in_thread(lambda: second.read("q", visibility_timeout=NEVER, wait=1.0))
    time.sleep(0.2)  # B's waits are registered (A's stale ones, if any, too)
    id_ = group.direct[1].send("q", b"for B")
    started = time.monotonic()
    got = read()
    assert got is not None and got.id == id_, f"B got {got!r} after {time.monotonic() - started:.2f}s"


# --- settling ---------------------------------------------------------------------------


def test_confirm_touch_and_release_go_to_the_member_that_handed_the_message_out(
    group: Group, connect: Callable[..., Any]
) -> None:
    client = connect(group.addresses)
    client.create("q")
    for direct in group.direct:
        direct.send_batch("q", [b"a", b"b"])
    got = client.read_batch("q", 6, visibility_timeout=10.0)
    assert sorted(member_of(message.id) for message in got) == [0, 0, 1, 1, 2, 2]
    by_member: dict[int, list[int]] = {}
    for message in got:
        by_member.setdefault(member_of(message.id), []).append(message.id)
    for confirmed, touched in by_member.values():
        client.confirm(confirmed)
        client.touch(touched, visibility_timeout=60.0)
    assert group.column("q", "confirmed") == [1, 1, 1]
    for _, released in by_member.values():
        client.release(released)
    assert group.column("q", "ready") == [1, 1, 1]
    assert group.column("q", "in_flight") == [0, 0, 0]
    with pytest.raises(NoSuchMessage):
        client.confirm(by_member[2][0])  # already confirmed, at member 2


def test_confirm_batch_splits_by_member_and_keeps_the_order(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses)
    client.create("q")
    for direct in group.direct:
        direct.send_batch("q", [b"a", b"b"])
    ids = [message.id for message in client.read_batch("q", 6, visibility_timeout=10.0)]
    unknown = (1 << group_plans.MEMBER_SHIFT) + 999_999  # member 1 never handed this out
    mixed = [ids[5], unknown, ids[0], ids[3], ids[1], ids[4], ids[2]]
    results = client.confirm_batch(mixed)
    assert [type(result) for result in results] == [type(None), NoSuchMessage] + [type(None)] * 5
    assert group.column("q", "confirmed") == [2, 2, 2]
    assert group.column("q", "in_flight") == [0, 0, 0]


def test_the_group_pipeline_routes_each_command_and_keeps_request_order(group: Group) -> None:
    with GroupClient.connect(group.addresses) as client:
        client.create("q")
        with client.pipeline() as pipeline:
            for i in range(6):
                pipeline.send("q", b"p%d" % i)
            ids = pipeline.execute()
        assert sorted(member_of(id_) for id_ in ids) == [0, 0, 1, 1, 2, 2]
        assert group.column("q", "ready") == [2, 2, 2]
        with client.pipeline() as pipeline:
            for _ in range(7):
                pipeline.read("q", visibility_timeout=10.0)
            got = pipeline.execute()
        messages = [message for message in got if message is not None]
        assert sorted(message.id for message in messages) == sorted(ids)
        assert got.count(None) == 1
        with client.pipeline() as pipeline:
            pipeline.confirm(messages[0].id).confirm(messages[0].id)
            for message in messages[1:]:
                pipeline.confirm(message.id)
            results = pipeline.execute()
        assert results[0] is None and isinstance(results[1], NoSuchMessage)  # errors as values, in order
        assert results[2:] == [None] * 5
        assert group.column("q", "confirmed") == [2, 2, 2]


# --- a member goes down and comes back --------------------------------------------------


def test_clients_carry_on_without_a_member_and_reconnect_when_it_returns(
    group: Group, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_plans, "RETRY_SECONDS", 0.2)
    client = connect(group.addresses, timeout=2.0)
    client.create("q", max_deliveries=5)
    group.stop(1)
    ids = [client.send("q", b"while down %d" % i) for i in range(12)]
    assert sorted({member_of(id_) for id_ in ids}) == [0, 2]
    got = client.read_batch("q", 12, visibility_timeout=10.0)
    assert sorted(message.id for message in got) == sorted(ids)
    assert client.confirm_batch([message.id for message in got]) == [None] * 12
    assert client.stats("q")["members"] == 2

    group.restart(1)  # an empty server: the client must create "q" there again
    # Each call starts the reconnects that are due, in the background; the backoff may have grown
    # while member 1 was down, so wait for the reconnect rather than for a fixed time.
    deadline = time.monotonic() + 5.0
    while client.stats("q")["members"] != 3:
        assert time.monotonic() < deadline, "the client did not reconnect to member 1"
        time.sleep(0.05)
    ids = [client.send("q", b"back %d" % i) for i in range(12)]
    assert sorted({member_of(id_) for id_ in ids}) == [0, 1, 2]
    assert group.direct[1].stats("q")["max_deliveries"] == 5  # recreated with its options
    got = client.read_batch("q", 12, visibility_timeout=10.0)
    assert sorted(message.id for message in got) == sorted(ids)
    assert client.confirm_batch([message.id for message in got]) == [None] * 12
    assert client.stats("q")["members"] == 3


def test_a_member_that_refuses_the_queues_back_is_not_left_connected(
    group: Group, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_plans, "RETRY_SECONDS", 0.05)
    client = connect(group.addresses, timeout=2.0)
    client.create("a")
    client.create("b")
    group.stop(1)
    group.restart(1, max_queues=1)  # room for "a" only: re-creating "b" fails at every retry
    for _ in range(20):  # each call starts the retries that are due
        client.send("a", b"x")
        time.sleep(0.05)
    member = group.handles[1]  # only the test's own client should stay connected to it
    member.wait_until(lambda: len(member.server.sessions) == 1, what="refused retries to disconnect")
    assert group.direct[1].stats("a")["enqueued"] == 0  # the member never rejoined


def test_a_waiting_read_survives_a_member_going_down(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(group.addresses, timeout=2.0)
    client.create("q")
    read = in_thread(lambda: client.read("q", visibility_timeout=10.0, wait=5.0))
    wait_until_waiting(group, "q")
    group.stop(2)
    time.sleep(0.1)
    id_ = group.direct[0].send("q", b"still here")
    assert read() == Message(id_, b"still here", 1)


class Silent:
    """A port that completes TCP handshakes and then never says a word: a hung member (SIGSTOP, a dead disk)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)

    def close(self) -> None:
        self.sock.close()


def test_a_member_that_stops_answering_does_not_stall_the_group(
    group: Group, connect: Callable[..., Any], flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_plans, "RETRY_SECONDS", 0.2)
    client = connect(group.addresses, timeout=1.0)
    if flavour == "async":
        client.call_timeout = 3.0
    client.create("q")
    port = group.handles[1].server.port
    group.stop(1)
    silent = Silent(port)
    try:
        client.send("q", b"finds member 1 gone")  # its connection was closed: failed over at once
        slowest = 0.0
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            started = time.monotonic()
            assert member_of(client.send("q", b"x")) in (0, 2)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5, f"a send took {slowest:.2f}s while two members of three were fine"
    finally:
        silent.close()


def test_the_group_pipeline_carries_on_without_a_member(group: Group) -> None:
    with GroupClient.connect(group.addresses, timeout=2.0) as client:
        client.create("q")
        group.stop(1)
        outcomes = []
        for _ in range(3):
            with client.pipeline() as pipeline:
                for i in range(6):
                    pipeline.send("q", b"%d" % i)
                outcomes.append(pipeline.execute())  # errors as values, never raised
        assert all(isinstance(result, int) for result in outcomes[-1]), outcomes[-1]


# --- addresses given in another order than the members' indexes --------------------------


def test_addresses_in_any_order_still_route_confirms(group: Group, connect: Callable[..., Any]) -> None:
    client = connect(list(reversed(group.addresses)))
    client.create("q")
    for direct in group.direct:
        direct.send("q", b"x")
    got = client.read_batch("q", 3, visibility_timeout=10.0)
    assert client.confirm_batch([message.id for message in got]) == [None, None, None]


# --- asyncio-only faults, made deterministic by holding the client's loop ----------------


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, CALL_TIMEOUT))
    finally:
        loop.close()
        assert errors == [], f"the client's loop saw unhandled exceptions: {errors}"


def test_async_waiting_read_returns_at_most_max_messages(group: Group) -> None:
    async def main() -> tuple[list[Message], list[int]]:
        client = await AsyncGroupClient.connect(group.addresses)
        try:
            await client.create("q")
            reading = asyncio.ensure_future(client.read_batch("q", 1, visibility_timeout=NEVER, wait=5.0))
            while group.column("q", "waiting") != [1, 1, 1]:
                await asyncio.sleep(0.01)
            for direct in group.direct:  # the loop is held: all three answers are in by its next turn
                direct.send("q", b"x")
            time.sleep(0.2)
            got = await reading
            await asyncio.sleep(0.3)
            return got, group.column("q", "in_flight")
        finally:
            await client.close()

    got, in_flight = run_async(main())
    assert (len(got), sum(in_flight)) == (1, 1)


def test_a_read_cancelled_after_its_answer_came_releases_its_message(group: Group) -> None:
    async def main() -> int:
        client = await AsyncClient.connect(group.addresses[0])
        try:
            await client.create("q")
            reading = asyncio.ensure_future(client.read("q", visibility_timeout=NEVER, wait=5.0))
            while group.direct[0].stats("q")["waiting"] != 1:
                await asyncio.sleep(0.01)
            # Due together on the loop's next turn: the answer's I/O callback runs first, then the
            # timer that cancels the task before it has resumed with the answer.
            asyncio.get_running_loop().call_later(0.05, reading.cancel)
            group.direct[0].connection.send_many([Enqueue("q", b"x")])
            time.sleep(0.2)
            group.direct[0].connection.receive(1)
            with pytest.raises(asyncio.CancelledError):
                await reading
            await asyncio.sleep(0.3)
            return group.direct[0].stats("q")["in_flight"]
        finally:
            await client.close()

    assert run_async(main()) == 0

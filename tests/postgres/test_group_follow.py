"""Group clients follow a part to its new owner: a 2-member group and a standby on one PostgreSQL, a member
killed with ``kill -9``, and the same `GroupClient` (or `AsyncGroupClient`) keeps sending, reading and
confirming, reaching the dead member's part at the standby, with nothing done by the application.

Every acknowledged send is accounted for (confirmed, or drained at the end); the confirm of a message that
was in flight at the death is answered `NoSuchMessage` or `Requeued` by the new owner, never a success.

Each test runs twice: the killed member's port refuses connections (a process killed), or it is taken at once
by a listener that never answers (a dead machine, whose address lets a connect attempt run until the client's
timeout). In the second case the client's first reconnect attempt at the old address is still under way when
MEMBERS names the standby: the client must follow at once, not after that attempt (its backoff state is made
deterministic: the retry is due at once after the death).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pg_fixtures
import pytest
from pg_server import PgServer

from dbqueue import AsyncGroupClient, Client, GroupClient, NoSuchMessage, Requeued
from dbqueue.client.group import member_of
from dbqueue.client.group.plans import Members

# The fixtures this module uses (pg_fixtures.py says why they are not in a conftest.py).
pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url
processes_factory = pg_fixtures.processes_factory

QUEUE = "follow"
TAKEOVER = 15.0  # seconds allowed from the kill to the part answering at the standby, through the client
CLIENT_TIMEOUT = 10.0  # the clients' timeout: an attempt at a silent address lasts that long


@contextlib.contextmanager
def silent(address: str, taken: bool) -> Iterator[None]:
    """With ``taken``, a listener on ``address`` that accepts connections and never answers, meanwhile."""
    if not taken:
        yield
        return
    host, port = address.rsplit(":", 1)
    with socket.socket() as hole:
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind((host, int(port)))
        hole.listen(64)  # never accepted: the kernel completes connects, nobody answers a Hello
        yield


def retry_at_once(members: Members[Any], position: int) -> None:
    # The member's next reconnect is due as soon as it is marked down: the first attempt at its old address
    # then starts before any MEMBERS answer can name the standby (it takes the standby a second at least).
    members.backoff[position] = 0.0


def start_group(pg_url: str, processes_factory: Callable[..., PgServer]) -> tuple[list[PgServer], PgServer]:
    members = [processes_factory(pg_url, index=i) for i in range(2)]
    standby = processes_factory(pg_url, standby=True, wait=False)
    deadline = time.monotonic() + 10.0
    while True:  # every member has read the others' addresses from the database
        with Client.connect(members[0].address) as client:
            if len([a for a in client.members().members if a]) == 2:
                break
        assert time.monotonic() < deadline, "the members never saw each other"
        time.sleep(0.1)
    return members, standby


@pytest.mark.timeout(120)
@pytest.mark.parametrize("port_taken", [False, True], ids=["refused", "silent"])
def test_group_client_follows_a_killed_members_part_to_the_standby(
    pg_url: str, processes_factory: Callable[..., PgServer], port_taken: bool
) -> None:
    members, standby = start_group(pg_url, processes_factory)
    acknowledged: set[int] = set()
    confirmed: set[int] = set()
    with (
        GroupClient.connect(members[0].address, timeout=CLIENT_TIMEOUT) as group,  # discovered through MEMBERS
        contextlib.ExitStack() as stack,
    ):
        group.create(QUEUE, visibility_timeout=60.0)
        acknowledged.update(group.send(QUEUE, b"before %d" % i) for i in range(20))
        assert {member_of(id_) for id_ in acknowledged} == {0, 1}
        taken = group.read_batch(QUEUE, 20)
        for message in taken:
            if member_of(message.id) == 0:
                group.release(message.id)  # only member 1's stay in flight across its death
        in_flight = [m for m in taken if member_of(m.id) == 1]
        assert in_flight, "a message of member 1 in flight at its death"

        retry_at_once(group._members, group.addresses.index(members[1].address))
        killed = time.monotonic()
        members[1].kill()
        stack.enter_context(silent(members[1].address, port_taken))
        # At once, before any other call: the confirm is not sent on the dead connection (its outcome would be
        # unknown) but waits for part 1's new owner, which restored the message as ready.
        with pytest.raises((NoSuchMessage, Requeued)):
            group.confirm(in_flight[0].id)
        print(f"\nkill -9 -> a confirm answered by the part's new owner: {time.monotonic() - killed:.2f} s")
        # The application does nothing: it goes on sending until a send lands on part 1 again.
        while True:
            acknowledged.add(id_ := group.send(QUEUE, b"after"))
            if member_of(id_) == 1:
                break
            assert time.monotonic() - killed < TAKEOVER, f"part 1 not reached again:\n{standby.log_tail()}"
            time.sleep(0.05)
        followed = time.monotonic() - killed
        assert standby.address in group.addresses
        print(f"kill -9 -> a send reaches the part at the standby: {followed:.2f} s")

        # Messages in flight at the death were restored as ready: confirming them is never a success.
        for message in in_flight:
            with pytest.raises((NoSuchMessage, Requeued)):
                group.confirm(message.id)
        with group.pipeline() as pipeline:
            pipeline.confirm(in_flight[0].id)
            (result,) = pipeline.execute()
        assert isinstance(result, (NoSuchMessage, Requeued)), result

        # Everything acknowledged is there, on both parts, and confirmed through the same client.
        deadline = time.monotonic() + 30.0
        while confirmed != acknowledged:
            assert time.monotonic() < deadline, f"missing {sorted(acknowledged - confirmed)[:10]}"
            for message in group.read_batch(QUEUE, 50, visibility_timeout=30.0, wait=0.5):
                group.confirm(message.id)
                confirmed.add(message.id)
        assert confirmed == acknowledged
        assert {member_of(id_) for id_ in confirmed} == {0, 1}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("port_taken", [False, True], ids=["refused", "silent"])
def test_async_group_client_follows_a_killed_members_part_to_the_standby(
    pg_url: str, processes_factory: Callable[..., PgServer], port_taken: bool
) -> None:
    members, standby = start_group(pg_url, processes_factory)

    async def main() -> None:
        acknowledged: set[int] = set()
        group = await AsyncGroupClient.connect([m.address for m in members], timeout=CLIENT_TIMEOUT)
        stack = contextlib.ExitStack()
        try:
            await group.create(QUEUE)
            acknowledged.update([await group.send(QUEUE, b"before %d" % i) for i in range(10)])
            taken = await group.read_batch(QUEUE, 10, visibility_timeout=60.0)
            for message in taken:
                if member_of(message.id) == 0:
                    await group.release(message.id)  # only member 1's stay in flight across its death
            in_flight = [m for m in taken if member_of(m.id) == 1]
            assert in_flight
            retry_at_once(group._members, 1)
            killed = time.monotonic()
            members[1].kill()
            stack.enter_context(silent(members[1].address, port_taken))
            await asyncio.sleep(0.1)  # the client's loop sees the connection end
            with pytest.raises((NoSuchMessage, Requeued)):
                await group.confirm(in_flight[0].id)  # waits for the part's new owner
            while True:
                acknowledged.add(id_ := await group.send(QUEUE, b"after"))
                if member_of(id_) == 1:
                    break
                assert time.monotonic() - killed < TAKEOVER, f"part 1 not reached again:\n{standby.log_tail()}"
                await asyncio.sleep(0.05)
            for message in in_flight:
                with pytest.raises((NoSuchMessage, Requeued)):
                    await group.confirm(message.id)
            confirmed: set[int] = set()
            deadline = time.monotonic() + 30.0
            while confirmed != acknowledged:
                assert time.monotonic() < deadline, f"missing {sorted(acknowledged - confirmed)[:10]}"
                for message in await group.read_batch(QUEUE, 50, visibility_timeout=30.0, wait=0.5):
                    await group.confirm(message.id)
                    confirmed.add(message.id)
        finally:
            await group.close()
            stack.close()

    asyncio.run(main())

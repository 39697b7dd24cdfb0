"""A user's program that calls every public client call, as a user of the package would.

tests/typing/test_public_types.py runs ``mypy --strict`` on it, which must pass:
each ``assert_type`` pins the type a call gives, so a method that regresses to
``Any`` (or to any other type) fails the check. The same test then runs
`main` against real servers, and the ``assert`` lines check the values, so
the types are known to be what the calls give at run time too.

    python tests/typing/typed_program.py HOST:PORT GROUP_HOST:PORT GROUP_HOST:PORT...

The server at HOST:PORT and the group must be fresh (no queues yet).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, assert_type

from dbqueue import (
    NEVER,
    AsyncClient,
    AsyncGroupClient,
    Client,
    GroupClient,
    Message,
    NoSuchMessage,
    NoSuchQueue,
    Origin,
    PeekedMessage,
    Pipeline,
    PipelinedClient,
    RequestError,
)
from dbqueue.client import GroupPipeline, parse_address
from dbqueue.client.group import member_of
from dbqueue.errors import ErrorCode
from dbqueue.protocol import (
    Confirm,
    Confirmed,
    CreateQueue,
    Enqueue,
    Error,
    HelloOk,
    MembersReply,
    ObjectQueued,
    Read,
    Response,
    encode,
)

Stats = dict[str, Any]
UNKNOWN = 2**50  # a message id no server here has handed out


def blocking(address: str) -> None:
    """Every command of the blocking `Client`, then its `Pipeline`."""
    assert_type(parse_address(address), tuple[str, int])
    with Client.connect(address, timeout=5.0) as client:
        assert_type(client, Client)
        assert assert_type(client.create("dead"), None) is None
        assert (
            assert_type(client.create("jobs", capacity=100, max_deliveries=3, dead_letter_queue="dead"), None) is None
        )
        id_ = assert_type(client.send("jobs", b"one"), int)
        assert isinstance(id_, int)
        delayed = assert_type(client.send("jobs", b"later", delay=60.0), int)
        ids = assert_type(client.send_batch("jobs", [b"two", b"three"]), list[int])
        assert len(ids) == 2 and delayed not in ids

        message = assert_type(client.read("jobs", visibility_timeout=30.0), Message | None)
        assert message is not None
        assert_type(message.id, int)
        assert_type(message.data, bytes)
        assert_type(message.deliveries, int)
        assert (message.id, message.data, message.deliveries) == (id_, b"one", 1)
        assert assert_type(client.touch(message.id, visibility_timeout=60.0), None) is None
        assert assert_type(client.release(message.id), None) is None

        batch = assert_type(client.read_batch("jobs", 10, visibility_timeout=30.0, wait=0.01), list[Message])
        assert sorted(m.data for m in batch) == [b"one", b"three", b"two"]
        assert assert_type(client.confirm(batch[0].id), None) is None
        results = assert_type(client.confirm_batch([m.id for m in batch]), list[RequestError | None])
        assert results[0].__class__ is NoSuchMessage and results[1:] == [None, None]
        assert assert_type(client.read("jobs", wait=0.01), Message | None) is None

        stats = assert_type(client.stats("jobs"), Stats)
        assert stats["delayed"] == 1 and stats["confirmed"] == 3
        queues = assert_type(client.list_queues(), list[Stats])
        assert sorted(queue["name"] for queue in queues) == ["dead", "jobs"]
        members = assert_type(client.members(), MembersReply)
        assert_type(members.members, tuple[str, ...])
        assert_type(members.index, int)
        (seen,) = assert_type(client.peek("jobs", 5, delayed=True, in_flight=True), list[PeekedMessage])
        assert (assert_type(seen.state, str), assert_type(seen.data, bytes)) == ("delayed", b"later")
        assert_type(seen.enqueued_at, float)
        assert assert_type(seen.origin, Origin | None) is None
        assert assert_type(client.move("jobs", "dead", count=10), int) == 0  # nothing ready
        assert client.read("jobs", visibility_timeout=NEVER) is None
        assert assert_type(client.purge("jobs"), int) == 1

        pipeline = assert_type(client.pipeline(), Pipeline)
        with pipeline:
            chained = pipeline.send("jobs", b"a").send("jobs", b"b", delay=60.0).send_batch("jobs", [b"c"])
            assert_type(chained, Pipeline)
            assert_type(pipeline.read("jobs", visibility_timeout=30.0), Pipeline)
            assert_type(pipeline.read_batch("jobs", 5, visibility_timeout=30.0), Pipeline)
            assert_type(pipeline.confirm(UNKNOWN), Pipeline)
            assert_type(pipeline.confirm_batch([UNKNOWN]), Pipeline)
            assert_type(pipeline.touch(UNKNOWN, visibility_timeout=0.001), Pipeline)
            assert_type(pipeline.release(UNKNOWN), Pipeline)
            assert_type(pipeline.create("more"), Pipeline)
            assert_type(pipeline.stats("more"), Pipeline)
            assert_type(pipeline.list_queues(), Pipeline)
            assert_type(pipeline.members(), Pipeline)
            assert_type(pipeline.purge("more"), Pipeline)
            assert_type(pipeline.delete("more"), Pipeline)
            assert assert_type(len(pipeline), int) == 15
            outcome = assert_type(pipeline.execute(), list[object])
        assert len(pipeline) == 0
        sent_a, _, sent_c, read, rest = outcome[:5]
        assert isinstance(sent_a, int) and isinstance(sent_c, list)
        assert isinstance(read, Message) and read.id == sent_a  # results are values to narrow
        assert isinstance(rest, list) and [m.id for m in rest if isinstance(m, Message)] == sent_c
        assert [type(result) for result in outcome[5:9]] == [NoSuchMessage, list, NoSuchMessage, NoSuchMessage]
        assert outcome[9] is None and isinstance(outcome[10], dict) and isinstance(outcome[11], list)
        assert isinstance(outcome[12], MembersReply) and outcome[13:] == [0, None]
        with client.pipeline() as pipeline:
            first, again = pipeline.confirm(read.id).confirm(read.id).execute()
        assert first is None and isinstance(again, NoSuchMessage)
        looked, moved = assert_type(client.pipeline().peek("jobs").move("jobs", "dead"), Pipeline).execute()
        assert looked == [] and moved == 0

        assert assert_type(client.delete("jobs"), None) is None
        try:
            client.delete("jobs")
        except NoSuchQueue:
            pass
        else:
            raise AssertionError("deleting a queue twice must raise NoSuchQueue")

        client.create("dl-dead")
        client.create("dl", dead_letter_queue="dl-dead")
        poison = client.send("dl", b"poison")
        held = client.read("dl", visibility_timeout=30.0)
        assert held is not None and held.id == poison
        assert assert_type(client.dead_letter(held.id), None) is None
        dead = client.read("dl-dead", visibility_timeout=30.0)
        assert dead is not None and dead.data == b"poison"
        assert dead.origin is not None and (dead.origin.queue, dead.origin.id) == ("dl", poison)
        client.delete("dl")
        client.delete("dl-dead")


def pipelined(address: str) -> None:
    """The raw `PipelinedClient`: protocol messages in, request ids and protocol messages out."""
    with PipelinedClient.connect(address, timeout=5.0) as client:
        assert_type(client, PipelinedClient)
        assert isinstance(assert_type(client.hello(), HelloOk), HelloOk)
        request_ids = assert_type(client.send_many([CreateQueue("raw"), Enqueue("raw", b"x")]), list[int])
        answers = assert_type(client.receive(2), list[tuple[int, Response]])
        assert [request_id for request_id, _ in answers] == request_ids
        _, queued = answers[1]
        assert isinstance(queued, ObjectQueued) and queued.id >= 0

        (waiting,) = client.send_many([Read("raw", 30_000), Read("raw", 30_000, wait_ms=30_000)])[1:]
        ((_, message),) = client.receive(1)
        assert isinstance(message, Message) and message.id == queued.id
        assert_type(client.abandon(waiting, cancel=True), None)  # the server ends the wait; no answer comes
        client.send_many([Enqueue("missing", b"x")])
        got: list[tuple[int, Response]] = []
        while not got:
            got = assert_type(client.receive_some(), list[tuple[int, Response]])
        ((_, refused),) = got
        assert isinstance(refused, Error) and refused.code == ErrorCode.NO_SUCH_QUEUE
        assert_type(client.send_bytes(encode(99, Confirm(message.id))), None)
        ((request_id, confirmed),) = client.receive(1)
        assert (request_id, confirmed) == (99, Confirmed())
        assert_type(client.close(), None)


async def asynchronous(address: str) -> None:
    """Every command of the `AsyncClient`: each gives a coroutine of the blocking client's result."""
    async with await AsyncClient.connect(address, timeout=5.0) as client:
        assert_type(client, AsyncClient)
        creating = assert_type(client.create("async", capacity=10, max_deliveries=2), Coroutine[Any, Any, None])
        await creating
        id_ = assert_type(await client.send("async", b"one"), int)
        ids = assert_type(await client.send_batch("async", [b"two"]), list[int])
        await client.send("async", b"later", delay=60.0)
        message = assert_type(await client.read("async", visibility_timeout=30.0), Message | None)
        assert message is not None and message.id == id_
        assert_type(await client.touch(message.id, visibility_timeout=60.0), None)
        assert_type(await client.release(message.id, delay=0), None)
        batch = assert_type(await client.read_batch("async", 5, visibility_timeout=30.0), list[Message])
        assert sorted(m.id for m in batch) == sorted([id_, *ids])
        assert_type(await client.confirm(batch[0].id), None)
        assert assert_type(await client.confirm_batch([batch[1].id]), list[RequestError | None]) == [None]
        assert assert_type(await client.read("async", wait=0.01), Message | None) is None
        assert assert_type(await client.stats("async"), Stats)["delayed"] == 1
        assert len(assert_type(await client.list_queues(), list[Stats])) >= 1
        assert isinstance(assert_type(await client.members(), MembersReply), MembersReply)
        assert [m.state for m in assert_type(await client.peek("async", delayed=True), list[PeekedMessage])] == [
            "delayed"
        ]
        await client.create("async-too")
        assert assert_type(await client.move("async", "async-too", count=1), int) == 0  # nothing ready
        await client.delete("async-too")
        assert assert_type(await client.purge("async"), int) == 1
        assert_type(await client.delete("async"), None)
        await client.create("adl-dead")
        await client.create("adl", dead_letter_queue="adl-dead")
        poison = await client.send("adl", b"poison")
        held = await client.read("adl", visibility_timeout=30.0)
        assert held is not None and held.id == poison
        assert_type(await client.dead_letter(held.id), None)
        dead = await client.read("adl-dead", visibility_timeout=30.0)
        assert dead is not None and dead.origin is not None and (dead.origin.queue, dead.origin.id) == ("adl", poison)
        await client.delete("adl")
        await client.delete("adl-dead")
        assert_type(await client.close(), None)


def group(addresses: list[str]) -> None:
    """Every command of the blocking `GroupClient`, then its `GroupPipeline`."""
    with GroupClient.connect(addresses, timeout=5.0) as client:
        assert_type(client, GroupClient)
        assert assert_type(client.addresses, list[str]) == addresses
        assert_type(client.create("dead"), None)
        assert_type(client.create("g", capacity=None, max_deliveries=3, dead_letter_queue="dead"), None)
        id_ = assert_type(client.send("g", b"one", key="customer-1"), int)
        assert member_of(id_) in range(len(addresses))
        ids = assert_type(client.send_batch("g", [b"two", b"three"], key=b"customer-2"), list[int])
        assert_type(client.send("g", b"later", delay=60.0), int)
        message = assert_type(client.read("g", visibility_timeout=30.0, wait=0.1), Message | None)
        assert message is not None
        assert_type(client.touch(message.id, visibility_timeout=60.0), None)
        assert_type(client.release(message.id), None)
        batch = assert_type(client.read_batch("g", 3, visibility_timeout=30.0, wait=0.1), list[Message])
        batch += client.read_batch("g", 3, visibility_timeout=30.0)
        assert sorted(m.id for m in batch) == sorted([id_, *ids])
        assert_type(client.confirm(batch[0].id), None)
        results = assert_type(client.confirm_batch([m.id for m in batch]), list[RequestError | None])
        assert isinstance(results[0], NoSuchMessage) and results[1:] == [None, None]
        stats = assert_type(client.stats("g"), Stats)
        assert stats["members"] == len(addresses) and stats["confirmed"] == 3
        assert {queue["name"] for queue in assert_type(client.list_queues(), list[Stats])} == {"dead", "g"}
        assert [m.data for m in assert_type(client.peek("g", delayed=True), list[PeekedMessage])] == [b"later"]
        assert assert_type(client.move("g", "dead"), int) == 0
        assert assert_type(client.purge("g"), int) == 1

        pipeline = assert_type(client.pipeline(), GroupPipeline)
        with pipeline:
            assert_type(pipeline.send("g", b"p", key="k").send("g", b"q"), GroupPipeline)
            assert_type(pipeline.read("g", visibility_timeout=30.0), GroupPipeline)
            assert assert_type(len(pipeline), int) == 3
            outcome = assert_type(pipeline.execute(), list[object])
        sent = [result for result in outcome[:2] if isinstance(result, int)]
        held = [result for result in outcome[2:] if isinstance(result, Message)]  # None if its member had none
        held += client.read_batch("g", 2 - len(held), visibility_timeout=30.0, wait=0.1)
        assert sorted(m.id for m in held) == sorted(sent) and len(sent) == 2
        with client.pipeline() as pipeline:
            for message in held:
                assert_type(pipeline.confirm(message.id), GroupPipeline)
            assert pipeline.execute() == [None, None]
        assert_type(client.delete("g"), None)
        client.delete("dead")
        client.create("gdl-dead")
        client.create("gdl", dead_letter_queue="gdl-dead")
        poisons = [client.send("gdl", b"poison", key=str(i)) for i in range(4)]
        held_all: list[Message] = []
        for _ in range(10):  # a read takes from one member at a time
            held_all += client.read_batch("gdl", 4 - len(held_all), visibility_timeout=30.0, wait=0.1)
            if len(held_all) == 4:
                break
        assert sorted(m.id for m in held_all) == sorted(poisons)
        for message in held_all:  # each at the member holding it
            assert_type(client.dead_letter(message.id), None)
        assert client.stats("gdl-dead")["ready"] == 4 and client.stats("gdl")["in_flight"] == 0
        client.delete("gdl")
        client.delete("gdl-dead")
        assert_type(client.close(), None)


async def asynchronous_group(addresses: list[str]) -> None:
    """Every command of the `AsyncGroupClient`."""
    async with await AsyncGroupClient.connect(addresses[0], timeout=5.0) as client:  # discovery
        assert_type(client, AsyncGroupClient)
        assert sorted(assert_type(client.addresses, list[str])) == sorted(addresses)
        await client.create("ag", capacity=100)
        id_ = assert_type(await client.send("ag", b"one"), int)
        ids = assert_type(await client.send_batch("ag", [b"two"], key="k"), list[int])
        assert_type(await client.send("ag", b"later", delay=60.0, key=b"k"), int)
        message = assert_type(await client.read("ag", visibility_timeout=30.0, wait=0.1), Message | None)
        assert message is not None
        assert_type(await client.touch(message.id, visibility_timeout=60.0), None)
        assert_type(await client.release(message.id, delay=0), None)
        batch = assert_type(await client.read_batch("ag", 2, visibility_timeout=30.0, wait=0.1), list[Message])
        batch += await client.read_batch("ag", 2, visibility_timeout=30.0)
        assert sorted(m.id for m in batch) == sorted([id_, *ids])
        assert_type(await client.confirm(batch[0].id), None)
        results = assert_type(await client.confirm_batch([batch[1].id]), list[RequestError | None])
        assert results == [None]
        assert assert_type(await client.stats("ag"), Stats)["delayed"] == 1
        assert [q["name"] for q in assert_type(await client.list_queues(), list[Stats])] == ["ag"]
        assert len(assert_type(await client.peek("ag", 3, delayed=True), list[PeekedMessage])) == 1
        await client.create("ag-too")
        assert assert_type(await client.move("ag", "ag-too", count=5), int) == 0
        await client.delete("ag-too")
        assert assert_type(await client.purge("ag"), int) == 1
        assert_type(await client.delete("ag"), None)
        await client.create("agdl-dead")
        await client.create("agdl", dead_letter_queue="agdl-dead")
        poisons = [await client.send("agdl", b"poison", key=str(i)) for i in range(4)]
        held: list[Message] = []
        for _ in range(10):  # a read takes from one member at a time
            held += await client.read_batch("agdl", 4 - len(held), visibility_timeout=30.0, wait=0.1)
            if len(held) == 4:
                break
        assert sorted(m.id for m in held) == sorted(poisons)
        for message in held:  # each at the member holding it
            assert_type(await client.dead_letter(message.id), None)
        assert (await client.stats("agdl-dead"))["ready"] == 4 and (await client.stats("agdl"))["in_flight"] == 0
        await client.delete("agdl")
        await client.delete("agdl-dead")
        assert_type(await client.close(), None)


def main(address: str, group_addresses: list[str]) -> None:
    """Run every kind of client: ``address`` is a lone server, ``group_addresses`` a group's members."""
    blocking(address)
    pipelined(address)
    asyncio.run(asynchronous(address))
    group(group_addresses)
    asyncio.run(asynchronous_group(group_addresses))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

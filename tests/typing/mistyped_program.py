"""Mistakes a user's ``mypy --strict`` must catch: each line marked with an ``error:`` comment must
fail with the code it names, and no other line may (tests/typing/test_public_types.py). Never run."""

from __future__ import annotations

from dbqueue import AsyncClient, AsyncGroupClient, Client, GroupClient


def blocking(client: Client) -> None:
    message = client.read("jobs")
    assert message is not None
    print(message.idd)  # error: [attr-defined]
    message.id = 3  # error: [misc]
    print(client.read("jobs").id)  # error: [union-attr]
    client.send("jobs", "text, not bytes")  # error: [arg-type]
    client.read("jobs", wait_ms=5)  # error: [call-arg]
    client.read("jobs", 30)  # error: [call-arg]
    client.read_batch("jobs", 10, 30)  # error: [call-arg]
    client.touch(1, 30)  # error: [call-arg]
    client.read("jobs", visibility_timeout="30s")  # error: [arg-type]
    print(client.peek("jobs")[0].state + 1)  # error: [operator]
    moved: str = client.move("a", "b")  # error: [assignment]
    print(moved)
    name: str = client.purge("jobs")  # error: [assignment]
    print(name)
    print(client.confirm_batch([1])[0].idd)  # error: [union-attr]


def pipelined(client: Client) -> None:
    print(client.pipeline().send("jobs", b"x").execute()[0].id)  # error: [attr-defined]
    ids: list[int] = client.pipeline().send("jobs", b"x")  # error: [assignment]
    print(ids)


async def asynchronous(client: Client, aclient: AsyncClient) -> None:
    await client.send("jobs", b"x")  # error: [misc]
    id_: int = aclient.send("jobs", b"x")  # error: [assignment]
    print(id_)
    print((await aclient.read("jobs")).data)  # error: [union-attr]
    print(aclient.read("jobs").id)  # error: [attr-defined]


def group(client: GroupClient) -> None:
    print(client.read("jobs").idd)  # error: [union-attr]
    client.read("jobs", 30)  # error: [call-arg]
    client.send("jobs", b"x", 5)  # error: [call-arg]
    client.send("jobs", b"x", key=3)  # error: [arg-type]
    print(client.pipeline().read("jobs").execute()[0].data)  # error: [attr-defined]


async def asynchronous_group(client: AsyncGroupClient) -> None:
    count: str = await client.purge("jobs")  # error: [assignment]
    print(count)
    for message in client.read_batch("jobs", 10):  # error: [attr-defined]
        print(message)

"""Each command, written once in `dbqueue.client.commands`, called directly: no socket, no server.

A `Recorder` is a client kind whose ``_call`` hands back what it is given, so
these tests read the request a command would send and feed its decoder the
answers a server could give. Then: every client kind exposes the same
commands with the same signatures, and every public callable says what it
returns and what it raises.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import pytest

from dbqueue import (
    NEVER,
    AsyncClient,
    AsyncGroupClient,
    Client,
    GroupClient,
    InvalidQueueName,
    NoSuchMessage,
    NoSuchQueue,
    Pipeline,
    PipelinedClient,
    ProtocolError,
    QueueFull,
    Requeued,
)
from dbqueue.client import GroupPipeline, commands, parse_address
from dbqueue.client.commands import Commands, Decode
from dbqueue.errors import ErrorCode
from dbqueue.protocol import NEVER_MS
from dbqueue.protocol import messages as msg


class Recorded(NamedTuple):
    request: msg.Request
    decode: Decode[Any]


class Recorder(Commands):
    def _call(self, request: msg.Request, decode: Decode[Any]) -> Recorded:
        return Recorded(request, decode)


record = Recorder()
COMMANDS = sorted(
    name for name, value in vars(Commands).items() if not name.startswith("_") and inspect.isfunction(value)
)


def test_the_command_list_is_the_wire_operations() -> None:
    assert COMMANDS == [
        "confirm", "confirm_batch", "create", "dead_letter", "delete", "list_queues", "members", "move", "peek",
        "purge", "read", "read_batch", "release", "send", "send_batch", "stats", "touch",
    ]  # fmt: skip


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "request_"),
    [
        (lambda: record.create("q"), msg.CreateQueue("q", 0, 0, "")),
        (
            lambda: record.create("q", capacity=5, max_deliveries=3, dead_letter_queue="d"),
            msg.CreateQueue("q", 5, 3, "d"),
        ),
        (lambda: record.delete("q"), msg.DeleteQueue("q")),
        (lambda: record.purge("q"), msg.Purge("q")),
        (lambda: record.stats("q"), msg.Stats("q")),
        (lambda: record.list_queues(), msg.ListQueues()),
        (lambda: record.members(), msg.Members()),
        (lambda: record.send("q", b"x"), msg.Enqueue("q", b"x")),
        (lambda: record.send("q", bytearray(b"x"), delay=0), msg.Enqueue("q", b"x")),
        (lambda: record.send("q", b"x", delay=0.005), msg.EnqueueDelayed("q", b"x", 5)),
        (lambda: record.send_batch("q", iter([b"a", memoryview(b"b")])), msg.EnqueueBatch("q", (b"a", b"b"))),
        (lambda: record.read("q"), msg.Read("q", 0, 0)),
        (lambda: record.read("q", visibility_timeout=0.007, wait=0.009), msg.Read("q", 7, 9)),
        (lambda: record.read_batch("q", 4, visibility_timeout=0.007, wait=0.009), msg.ReadBatch("q", 4, 7, 9)),
        (lambda: record.confirm(3), msg.Confirm(3)),
        (lambda: record.confirm_batch(iter([3, 4])), msg.ConfirmBatch((3, 4))),
        (lambda: record.touch(3, visibility_timeout=0.01), msg.Touch(3, 10)),
        (lambda: record.release(3), msg.Release(3, 0)),
        (lambda: record.release(3, delay=0.01), msg.Release(3, 10)),
        # seconds on the API, milliseconds on the wire; None is the queue's default (0), NEVER is 0xFFFFFFFF
        (lambda: record.create("q", visibility_timeout=45), msg.CreateQueue("q", 0, 0, "", 45_000)),
        (lambda: record.create("q", visibility_timeout=NEVER), msg.CreateQueue("q", 0, 0, "", NEVER_MS)),
        (lambda: record.read("q", visibility_timeout=NEVER), msg.Read("q", NEVER_MS, 0)),
        (lambda: record.read("q", visibility_timeout=None, wait=2), msg.Read("q", 0, 2000)),
        (lambda: record.read_batch("q", 3, visibility_timeout=NEVER), msg.ReadBatch("q", 3, NEVER_MS, 0)),
        (lambda: record.touch(3), msg.Touch(3, 0)),
        (lambda: record.touch(3, visibility_timeout=NEVER), msg.Touch(3, NEVER_MS)),
        (lambda: record.peek("q"), msg.Peek("q", 10, False, False)),
        (lambda: record.peek("q", 3, delayed=True, in_flight=True), msg.Peek("q", 3, True, True)),
        (lambda: record.move("dead", "q"), msg.Move("dead", "q", 0)),
        (lambda: record.move("dead", "q", count=5), msg.Move("dead", "q", 5)),
    ],
)
def test_each_command_builds_its_request(call: Any, request_: msg.Request) -> None:
    assert call().request == request_


@pytest.mark.parametrize(
    "call",
    [
        lambda: record.send("q", b"x", delay=-0.001),
        lambda: record.send("q", b"x", delay=2**32 / 1000),
        lambda: record.send("q", b"x", delay=NEVER),  # NEVER is a visibility timeout only
        lambda: record.send("q", b"x", delay=math.nan),
        lambda: record.send_batch("q", []),
        lambda: record.read("q", visibility_timeout=-0.001),
        lambda: record.read("q", visibility_timeout=0),  # 0 on the wire is the queue's default: say None
        lambda: record.read("q", visibility_timeout=math.nan),
        lambda: record.read("q", visibility_timeout=0xFFFFFFFF / 1000),  # the wire's never: say NEVER
        lambda: record.read("q", wait=2**32 / 1000),
        lambda: record.read("q", wait=NEVER),
        lambda: record.read_batch("q", 0),
        lambda: record.read_batch("q", 65536),
        lambda: record.confirm_batch([]),
        lambda: record.touch(1, visibility_timeout=-1),
        lambda: record.release(1, delay=-1),
        lambda: record.create("q", visibility_timeout=0),
        lambda: record.peek("q", 0),
        lambda: record.peek("q", 65536),
        lambda: record.move("a", "b", count=0),
        lambda: record.move("a", "b", count=2**32),
    ],
)
def test_arguments_out_of_range_raise_value_error_before_anything_is_sent(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    ("seconds", "visibility", "delay", "wait"),
    [
        (0.0001, 1, 1, 0),  # a visibility timeout or a delay rounds up (never shorter than asked); a wait to nearest
        (0.0015, 2, 2, 2),
        (0.0014, 2, 2, 1),
        (1.1, 1100, 1100, 1100),  # 1.1 * 1000 is 1100.0000000000002: not 1101
        (0.3, 300, 300, 300),
        (30, 30_000, 30_000, 30_000),
        (4_294_967.294, 0xFFFFFFFE, 0xFFFFFFFE, 0xFFFFFFFE),  # the longest finite visibility timeout
    ],
)
def test_durations_in_seconds_become_milliseconds_on_the_wire(
    seconds: float, visibility: int, delay: int, wait: int
) -> None:
    assert commands.visibility_ms(seconds) == visibility
    assert commands.delay_ms(seconds) == delay
    assert commands.wait_ms(seconds) == wait
    assert commands.visibility_ms(None) == 0 and commands.visibility_ms(NEVER) == NEVER_MS == 0xFFFFFFFF
    assert commands.delay_ms(0) == commands.wait_ms(0) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: record.read("q", 30),  # 30 what? Every duration is named: visibility_timeout=30
        lambda: record.read_batch("q", 10, 30),
        lambda: record.touch(1, 30),
        lambda: record.release(1, 30),
        lambda: record.send("q", b"x", 30),
        lambda: record.create("q", 100),  # capacity too: named, as every option
        lambda: record.move("a", "b", 5),
        lambda: record.peek("q", 5, True),
        lambda: record.read("q", visibility_timeout="30"),  # seconds are a number
        lambda: record.send("q", b"x", delay=True),
    ],
)
def test_a_duration_given_by_position_or_as_something_else_than_a_number_is_a_type_error(call: Any) -> None:
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("kind", [Client, AsyncClient, Pipeline, GroupClient, AsyncGroupClient, GroupPipeline])
def test_every_duration_is_keyword_only_and_in_seconds_in_every_kind(kind: type) -> None:
    durations = {"visibility_timeout", "wait", "delay"}
    seen = set()
    for name in ("create", "send", "read", "read_batch", "touch", "release"):
        method = getattr(kind, name, None)
        if method is None:
            continue  # the group pipeline queues sends, reads and confirms only
        for parameter in inspect.signature(method).parameters.values():
            assert not parameter.name.endswith("_ms"), (kind, name, parameter)
            if parameter.name in durations:
                seen.add(parameter.name)
                assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (kind, name, parameter)
    assert seen >= {"visibility_timeout", "delay"}


# --- answers -------------------------------------------------------------------------------


def test_each_decoder_turns_its_answer_into_the_result() -> None:
    assert record.create("q").decode(msg.QueueCreated()) is None
    assert record.delete("q").decode(msg.QueueDeleted()) is None
    assert record.purge("q").decode(msg.Purged(4)) == 4
    assert record.stats("q").decode(msg.StatsReply({"ready": 1})) == {"ready": 1}
    assert record.list_queues().decode(msg.StatsReply({"queues": [{"name": "q"}], "connections": 2})) == [{"name": "q"}]
    assert record.members().decode(msg.MembersReply(("a:1",), 0)) == msg.MembersReply(("a:1",), 0)
    assert record.send("q", b"x").decode(msg.ObjectQueued(9)) == 9
    assert record.send_batch("q", [b"x"]).decode(msg.ObjectsQueued((9, 10))) == [9, 10]
    assert record.read("q").decode(msg.Message(9, b"x", 2)) == msg.Message(9, b"x", 2)
    assert record.read("q").decode(msg.Empty()) is None
    assert record.read_batch("q", 2).decode(msg.Messages((msg.Message(9, b"x"),))) == [msg.Message(9, b"x")]
    assert record.read_batch("q", 2).decode(msg.Messages(())) == []
    assert record.confirm(9).decode(msg.Confirmed()) is None
    assert record.touch(9, visibility_timeout=0.001).decode(msg.Touched()) is None
    assert record.release(9).decode(msg.Released()) is None
    origin = msg.Origin("jobs", 7, 1_700_000_000.5, 3)
    seen = msg.PeekedMessage(9, b"x", 3, "ready", 1_700_000_001.0, origin)
    assert record.peek("q").decode(msg.Peeked((seen,))) == [seen]
    assert record.peek("q").decode(msg.Peeked(())) == []
    assert record.move("a", "b").decode(msg.Moved(4)) == 4
    dead = msg.Message(9, b"x", 1, origin)
    assert record.read("q").decode(dead).origin == origin


def test_confirm_batch_returns_errors_as_values_in_order() -> None:
    results = record.confirm_batch([1, 2, 3]).decode(msg.ConfirmResults((0, 1, 2)))
    assert results[0] is None
    assert isinstance(results[1], Requeued) and isinstance(results[2], NoSuchMessage)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (msg.Error(ErrorCode.NO_SUCH_QUEUE, "no queue"), NoSuchQueue),
        (msg.Error(ErrorCode.INVALID_QUEUE_NAME, "bad"), InvalidQueueName),
        (msg.Full(), QueueFull),
        (msg.Requeued(), Requeued),
        (msg.Confirmed(), ProtocolError),  # an answer of the wrong kind
    ],
)
def test_a_refusal_or_a_wrong_answer_raises(answer: msg.Response, error: type[Exception]) -> None:
    with pytest.raises(error):
        record.send("q", b"x").decode(answer)


def test_parse_address() -> None:
    assert parse_address("example.org:3003") == ("example.org", 3003)
    assert parse_address("[::1]:3003") == ("::1", 3003)
    assert parse_address(":3003") == ("127.0.0.1", 3003)
    assert parse_address(("h", 1)) == ("h", 1)
    with pytest.raises(ValueError):
        parse_address("no-port")


# --- one definition, every kind ------------------------------------------------------------


@pytest.mark.parametrize("kind", [Client, AsyncClient, Pipeline])
@pytest.mark.parametrize("name", COMMANDS)
def test_every_kind_has_every_command_with_the_one_signature_and_docstring(kind: type, name: str) -> None:
    method = getattr(kind, name)
    assert method is getattr(Commands, name)  # not redefined: written once
    signature = inspect.signature(method)
    assert list(signature.parameters)[0] == "self"
    assert method.__name__ == name and method.__doc__
    assert "Return" in method.__doc__ or "return" in method.__doc__


def test_a_bound_command_shows_its_arguments() -> None:
    pipeline = Pipeline(connection=None)  # queueing needs no connection
    assert (
        str(inspect.signature(pipeline.send))
        == "(queue: 'str', data: 'bytes', *, delay: 'float' = 0.0) -> 'Result[int]'"
    )
    assert pipeline.send("q", b"x").read("q") is pipeline and len(pipeline) == 2


PUBLIC_KINDS = [Client, Pipeline, PipelinedClient, AsyncClient, GroupClient, GroupPipeline, AsyncGroupClient]


def public_callables() -> list[tuple[str, Any]]:
    found = [(f"commands.{name}", getattr(commands, name)) for name in ("parse_address", "as_token", "tls_context")]
    for kind in PUBLIC_KINDS:
        for name, value in vars(kind).items():
            if name.startswith("_"):
                continue
            if isinstance(value, classmethod):
                value = value.__func__
            if callable(value) or isinstance(value, property):
                found.append((f"{kind.__name__}.{name}", value))
    return found


@pytest.mark.parametrize(("name", "value"), public_callables(), ids=[name for name, _ in public_callables()])
def test_every_public_callable_says_what_it_returns_and_raises(name: str, value: Any) -> None:
    doc = inspect.getdoc(value) or ""
    assert doc, f"{name} has no docstring"
    if isinstance(value, property):
        return  # an attribute: its docstring says what it is
    words = doc.lower()
    delegates = "as `" in words  # "as `GroupClient.create`": the same returns and raises
    assert delegates or "return" in words, f"{name}: what does it return?"
    assert delegates or "raise" in words, f"{name}: what does it raise (or 'raises nothing')?"

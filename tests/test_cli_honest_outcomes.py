"""The commands tell the truth about what they did (reviewer R1's items 3, 6, 7 and 14, R2's section 5).

* ``create`` of an existing queue says so (``"created": false``) and refuses options that differ from
  the queue's own, naming each;
* against a group whose servers know one another, ``create``, ``delete``, ``purge`` and ``move`` with a
  member down name it and exit 1 (``purge``/``move``: figures printed, said partial); a send that meets
  a member without the queue tries the next; the group clients' ``require_every_member``;
* ``send`` from stdin says exactly which lines went out when one is refused;
* ``bench`` explains a failed connection as every other command does;
* ``peek`` and ``read`` show a message sent over SQS as its body, with its attributes in ``--json``.

Commands run as real processes against real servers on real sockets (`run_cli`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dbqueue import Client, GroupClient
from dbqueue.cli.queues import _stopped
from dbqueue.client.group import AsyncGroupClient, MembersUnreached
from dbqueue.protocol.envelope import Envelope, MessageAttributeValue, seal
from test_cli_commands import TOKEN, ok, one_line_error, run_cli
from test_cli_review import SMALL, closed_address

if TYPE_CHECKING:
    from conftest import ServerThread

    Factory = Callable[..., ServerThread]


# --- create of an existing queue ------------------------------------------------------------------------------


def test_create_of_an_existing_queue_says_so_and_refuses_other_options(server: ServerThread) -> None:
    at = ["--address", server.address]
    assert ok(run_cli("create", "jobs-dead", *at)) == "created jobs-dead\n"
    assert ok(run_cli("create", "jobs", *at)) == "created jobs\n"

    # The README's sequence: the queue exists without options; asking for them again must not say "created".
    assert ok(run_cli("create", "jobs", *at)) == "queue jobs exists: options unchanged\n"
    assert json.loads(ok(run_cli("create", "jobs", "--json", *at))) == {"queue": "jobs", "created": False}
    line = one_line_error(run_cli("create", "jobs", "--max-deliveries", "5", "--dead-letter-queue", "jobs-dead", *at))
    assert line == (
        "Error: queue jobs exists with other options, left unchanged: --max-deliveries: none (asked 5); "
        "--dead-letter-queue: none (asked jobs-dead)"
    ), line
    figures = json.loads(ok(run_cli("stats", "jobs", "--json", *at)))
    assert (figures["max_deliveries"], figures["dead_letter_queue"]) == (0, None)

    # Options equal to the queue's own are no difference; each option is compared on its own.
    ok(run_cli("create", "k", "--capacity", "5", "--visibility-timeout", "45", "--max-deliveries", "2", *at))
    same = run_cli("create", "k", "--capacity", "5", "--visibility-timeout", "45", "--max-deliveries", "2", *at)
    assert ok(same) == "queue k exists: options unchanged\n"
    assert ok(run_cli("create", "k", "--capacity", "5", *at)) == "queue k exists: options unchanged\n"
    line = one_line_error(run_cli("create", "k", "--visibility-timeout", "never", "--capacity", "6", *at))
    assert "--capacity: 5 (asked 6)" in line and "--visibility-timeout: 45 s (asked never)" in line, line
    assert json.loads(ok(run_cli("create", "fresh", "--json", *at))) == {"queue": "fresh", "created": True}


# --- a group with a member down ------------------------------------------------------------------------------


class Pair:
    """Two `ServerThread` members that know one another (as with --peers)."""

    def __init__(self, factory: Factory) -> None:
        self.handles = [factory(member_index=i) for i in range(2)]
        self.addresses = [handle.address for handle in self.handles]
        for handle in self.handles:  # ports were picked at start: tell every member the group now
            handle.call(functools.partial(setattr, handle.server, "members", list(self.addresses)))

    def restart(self, index: int) -> None:
        """A fresh, empty server in member ``index``'s place: same port, same member index."""
        from conftest import ServerThread

        handle = ServerThread(member_index=index, members=list(self.addresses))
        handle.server.port = self.handles[index].server.port
        self.handles[index] = handle.start()


@pytest.fixture
def pair(server_factory: Factory) -> Iterator[Pair]:
    members = Pair(server_factory)
    yield members
    for handle in members.handles:
        handle.stop()


def test_commands_that_change_a_group_name_the_member_they_missed(pair: Pair) -> None:
    live, lost = pair.addresses
    at = ["--address", live]  # one member: the other is known to it
    for queue in ("src", "dst"):
        ok(run_cli("create", queue, *at))
    with Client.connect(live) as first, Client.connect(lost) as second:
        for member in (first, second):
            member.send_batch("src", [b"a", b"b", b"c"])
    pair.handles[1].stop()

    def partial(result: subprocess.CompletedProcess[bytes], stdout: str) -> str:
        line = one_line_error(result)
        assert line.startswith(f"Error: 1 of 2 members not reached ({lost}: connection refused)"), line
        assert result.stdout.decode() == stdout
        return line

    line = partial(run_cli("move", "src", "dst", *at), "moved 3 messages from src to dst\n")
    assert "figures are partial" in line, line
    moved = run_cli("move", "dst", "src", "--json", *at)
    assert json.loads(moved.stdout)["members_down"] == [{"address": lost, "reason": "connection refused"}]
    partial(moved, moved.stdout.decode())
    line = partial(run_cli("purge", "src", *at), "purged 3 messages from src\n")
    assert "figures are partial" in line, line
    line = partial(run_cli("delete", "dst", *at), "")
    assert "dst is still on them" in line, line
    line = partial(run_cli("create", "newq", *at), "")
    assert "newq may be missing on them" in line, line
    assert "run the command again once every member is up" in line

    # The lost member comes back empty: newq is on the live member only (sends: the next test).
    pair.restart(1)
    ids = [int(ok(run_cli("send", "newq", f"n{i}", *at))) for i in range(4)]
    assert len(set(ids)) == 4
    # Every member up: create makes the group whole again, and says so.
    said = ok(run_cli("create", "newq", *at))
    assert said == "queue newq exists: options unchanged; created on the members that lacked it\n", said
    with Client.connect(pair.addresses[1]) as second:
        assert second.stats("newq")["ready"] == 0
    assert ok(run_cli("create", "newq", *at)) == "queue newq exists: options unchanged\n"
    assert ok(run_cli("purge", "newq", *at)) == "purged 4 messages from newq\n"


def test_a_send_that_meets_a_member_without_the_queue_tries_the_next(pair: Pair) -> None:
    live, other = pair.addresses
    with Client.connect(live) as first:
        first.create("half")  # as a create while the other member was down leaves it
    # Each command's send goes to the same member first: without the next try, half would always fail.
    ids = [int(ok(run_cli("send", "half", f"n{i}", "--address", live))) for i in range(4)]
    assert len(set(ids)) == 4
    with GroupClient.connect([live, other], timeout=2.0) as group:
        assert len({group.send("half", b"x") for _ in range(6)}) == 6
        group.send_batch("half", [b"y", b"z"], key="k")
    with Client.connect(live) as first:
        assert first.stats("half")["ready"] == 12
    line = one_line_error(run_cli("send", "nowhere", "x", "--address", live))
    assert line == "Error: no queue named 'nowhere'", line


def test_addresses_of_servers_that_stand_alone_are_alternatives(server: ServerThread) -> None:
    # No group is known to the servers: an address given that is down is skipped, as before.
    ok(run_cli("create", "q", "--address", f"{closed_address()},{server.address}"))


def test_the_group_clients_raise_members_unreached_only_when_asked(pair: Pair) -> None:
    live, lost = pair.addresses
    pair.handles[1].stop()
    with GroupClient.connect([live, lost], timeout=2.0) as lenient:
        lenient.create("q")  # a long-lived client: creates it again on the member once it is back
        lenient.send("q", b"x")
    with GroupClient.connect([live, lost], timeout=2.0, require_every_member=True) as strict:
        with pytest.raises(MembersUnreached) as created:
            strict.create("q2")
        assert [address for address, _ in created.value.unreached] == [lost] and created.value.result is None
        with pytest.raises(MembersUnreached) as purged:
            strict.purge("q")
        assert purged.value.result == 1
        with pytest.raises(MembersUnreached):
            strict.move("q", "q2")
        strict.send("q", b"y")
        assert strict.move("q", "q2", count=1) == 1  # the count moved: the member missed did not matter
        with pytest.raises(MembersUnreached):
            strict.delete("q2")

    async def run() -> None:
        async with await AsyncGroupClient.connect([live, lost], timeout=2.0, require_every_member=True) as group:
            with pytest.raises(MembersUnreached) as purged:
                await group.purge("q")
            assert purged.value.result == 0 and [address for address, _ in purged.value.unreached] == [lost]
            with pytest.raises(MembersUnreached):
                await group.create("q3")
        async with await AsyncGroupClient.connect([live, lost], timeout=2.0) as group:
            await group.delete("q3")

    asyncio.run(run())


# --- send from stdin: which lines went out ---------------------------------------------------------------------


def test_a_refused_line_stops_the_send_there(server_factory: Factory) -> None:
    server = server_factory(max_message_size=1024)
    at = ["--address", server.address]
    ok(run_cli("create", "small", *at))
    lines = b"ok1\n" + b"a" * 2000 + b"\nok3\nok4\n"
    result = run_cli("send", "small", *at, stdin=lines)
    line = one_line_error(result)
    assert line.startswith("Error: line 2: ") and line.endswith("(1 sent; stopped there)"), line
    assert len(result.stdout.split()) == 1  # line 1's id only: lines 3 and 4 were not sent
    with Client.connect(server.address) as client:
        assert [message.data for message in client.peek("small")] == [b"ok1"]


def test_a_refusal_inside_a_pipeline_names_the_lines_sent_after_it() -> None:
    said = _stopped("line 3: the queue is full", 7, [3, 5, 6], [4, 7, 8], 8)
    assert said == (
        "line 3: the queue is full (7 sent, lines 4, 7-8 among them, after it; refused: lines 3, 5-6; "
        "stopped after line 8)"
    )
    assert _stopped("line 3: full", 2, [3, 4], [], 4) == "line 3: full (2 sent; stopped there)"


# --- bench: the same diagnosis as every command ----------------------------------------------------------------


def test_bench_explains_a_failed_connection_as_every_command_does(server_factory: Factory) -> None:
    down = closed_address()
    line = one_line_error(run_cli("bench", "--address", down, *SMALL))
    assert line == f"Error: benchmark failed: cannot connect to {down}: connection refused", line
    guarded = server_factory(auth_token=TOKEN.encode())
    line = one_line_error(run_cli("bench", "--address", guarded.address, *SMALL, "--token", "guess"))
    assert line.startswith("Error: benchmark failed: authentication failed: check --token"), line


# --- a message sent over SQS, as peek and read show it -----------------------------------------------------------


def test_peek_and_read_show_an_sqs_message_as_its_body(server: ServerThread) -> None:
    at = ["--address", server.address]
    envelope = Envelope(
        '{"job": 7}',
        1_765_000_000_000,
        "qq",
        "AKIDEXAMPLE",
        {
            "color": MessageAttributeValue("String", string_value="blue"),
            "blob": MessageAttributeValue("Binary", binary_value=b"\x00\x01"),
        },
    )
    with Client.connect(server.address) as client:
        client.create("qq")
        client.send("qq", seal(envelope))  # the payload the SQS listener stores for a SendMessage
        client.send("qq", b"native")

    text = ok(run_cli("peek", "qq", *at)).splitlines()
    assert text[0].endswith("10 bytes"), text  # the body's size, not the envelope's
    assert text[1] == "  SQS message, attributes: color=blue (String), blob=<2 bytes> (Binary)", text
    assert '      "job": 7' in text and not any("SQS" in line for line in text[2:]), text
    peeked = json.loads(ok(run_cli("peek", "qq", "--json", *at)))
    assert peeked[0]["data"] == '{"job": 7}'
    assert peeked[0]["attributes"] == {
        "color": {"data_type": "String", "string_value": "blue"},
        "blob": {"data_type": "Binary", "binary_value_base64": "AAE="},
    }
    assert peeked[1]["data"] == "native" and "attributes" not in peeked[1]

    assert run_cli("read", "qq", "--count", "2", *at).stdout == b'{"job": 7}\nnative\n'
    read = json.loads(ok(run_cli("read", "qq", "--count", "2", "--json", *at)))
    assert [message["data"] for message in read] == ['{"job": 7}', "native"]
    assert read[0]["attributes"]["color"] == {"data_type": "String", "string_value": "blue"}


def test_a_message_sent_through_the_sqs_api_peeks_as_its_body(server: ServerThread) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "sqs"))
    import listener_kit  # the kit lives with the SQS tests (tests/sqs)

    listening = listener_kit.Listening.start(server)
    try:

        def call(action: str, body: dict[str, object]) -> dict[str, object]:
            headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"}
            status, _, answer = listener_kit.exchange(listening, "POST", "/", headers, json.dumps(body).encode())
            assert status == 200, answer
            reply: dict[str, object] = json.loads(answer)
            return reply

        url = call("CreateQueue", {"QueueName": "viasqs"})["QueueUrl"]
        attributes = {"kind": {"DataType": "String", "StringValue": "resize"}}
        call("SendMessage", {"QueueUrl": url, "MessageBody": "hello\r", "MessageAttributes": attributes})
    finally:
        listening.stop()
    at = ["--address", server.address]
    text = ok(run_cli("peek", "viasqs", *at)).splitlines()
    assert text[0].endswith("  6 bytes") and text[1] == "  SQS message, attributes: kind=resize (String)", text
    (peeked,) = json.loads(ok(run_cli("peek", "viasqs", "--json", *at)))
    assert peeked["data"] == "hello\r"
    assert peeked["attributes"] == {"kind": {"data_type": "String", "string_value": "resize"}}
    assert run_cli("read", "viasqs", *at).stdout == b"hello\r\n"

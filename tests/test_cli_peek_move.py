"""The commands of protocol 3 as real processes against real servers: ``peek``, ``move``, ``create
--visibility-timeout``, ``read --visibility/--wait`` in seconds, and ``bench``'s clean-up and fan-in mode;
with a token and over TLS. Then what ``peek`` prints (pure functions of `dbqueue.report`), and the clients'
peek and move against a group.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dbqueue import Client, GroupClient, NoSuchQueue, PeekedMessage
from dbqueue.protocol.messages import Origin
from dbqueue.report import fit_age, message_json, peek_lines, queue_details, render_data
from pki import Pki, make_pki
from test_cli_commands import TOKEN, ok, one_line_error, run_cli, tls_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import ServerThread

    Factory = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def redrive(at: list[str]) -> None:
    """A dead letter made, looked at, and moved back, through the commands only."""
    ok(run_cli("create", "dead", *at))
    ok(
        run_cli(
            "create", "jobs", "--max-deliveries", "1", "--dead-letter-queue", "dead", "--visibility-timeout", "45", *at
        )
    )
    details = ok(run_cli("stats", "jobs", *at))
    assert "visibility" in details and "45 s" in details, details
    assert json.loads(ok(run_cli("stats", "jobs", "--json", *at)))["visibility_timeout_ms"] == 45_000
    sent = int(ok(run_cli("send", "jobs", '{"task": "resize", "id": 42}', *at)))
    ok(run_cli("send", "jobs", "second", *at))

    # Peek shows without delivering: twice the same, no delivery counted.
    for _ in range(2):
        seen = json.loads(ok(run_cli("peek", "jobs", "--json", *at)))
        assert [(m["id"], m["state"], m["deliveries"]) for m in seen][0] == (sent, "ready", 0)
        assert [m["data"] for m in seen] == ['{"task": "resize", "id": 42}', "second"]
        assert all(m["origin"] is None and 0 <= m["age"] < 60 for m in seen)
    text = ok(run_cli("peek", "jobs", "--count", "1", *at))
    assert text.splitlines()[0].startswith(f"{sent}  ready  0 deliveries  age ")
    assert '      "task": "resize",' in text.splitlines()  # JSON data, pretty, under its message
    assert json.loads(ok(run_cli("stats", "jobs", "--json", *at)))["enqueued"] == 2

    # One delivery without a confirm: the first message moves to the dead-letter queue, keeping its origin.
    assert ok(run_cli("read", "jobs", "--visibility", "0.2", *at)) == '{"task": "resize", "id": 42}\n'
    deadline = time.monotonic() + 10
    while not json.loads(ok(run_cli("stats", "dead", "--json", *at)))["ready"]:
        assert time.monotonic() < deadline, "the message never reached the dead-letter queue"
        time.sleep(0.1)
    (dead,) = json.loads(ok(run_cli("peek", "dead", "--json", *at)))
    assert dead["origin"]["queue"] == "jobs" and dead["origin"]["id"] == sent and dead["origin"]["deliveries"] == 1
    assert f"  origin: jobs id {sent}, 1 delivery, enqueued " in ok(run_cli("peek", "dead", *at))

    # The redrive: back to the end of its queue, origin kept.
    assert ok(run_cli("move", "dead", "jobs", *at)) == "moved 1 message from dead to jobs\n"
    assert json.loads(ok(run_cli("move", "dead", "jobs", "--json", *at))) == {
        "source": "dead",
        "destination": "jobs",
        "moved": 0,
    }
    back = json.loads(ok(run_cli("peek", "jobs", "--json", *at)))
    assert [m["data"] for m in back] == ["second", '{"task": "resize", "id": 42}']
    assert back[1]["origin"]["queue"] == "jobs"
    read = json.loads(ok(run_cli("read", "jobs", "--count", "2", "--wait", "1", "--json", "--confirm", *at)))
    assert [m["data"] for m in read] == ["second", '{"task": "resize", "id": 42}']
    assert read[1]["origin"]["id"] == sent


def test_peek_read_and_move_with_a_token(server_factory: Factory) -> None:
    server = server_factory(auth_token=TOKEN.encode())
    redrive(["--address", server.address, "--token", TOKEN])


def test_peek_read_and_move_over_tls(server_factory: Factory, pki: Pki) -> None:
    secure = tls_server(server_factory, pki, auth_token=TOKEN.encode())
    redrive(["--address", secure.address, "--tls-ca", pki.cert("ca"), "--token", TOKEN])


def test_peek_shows_delayed_and_in_flight_messages_only_when_asked(server: ServerThread) -> None:
    at = ["--address", server.address]
    ok(run_cli("create", "q", *at))
    ok(run_cli("send", "q", "later", "--delay", "60", *at))
    ok(run_cli("send", "q", "--whole", *at, stdin=b"\x00\x01binary\xff"))
    ok(run_cli("send", "q", "held", *at))
    with Client.connect(server.address) as holder:
        holder.read("q")  # the binary one
        assert [m["data"] for m in json.loads(ok(run_cli("peek", "q", "--json", *at)))] == ["held"]
        every = json.loads(ok(run_cli("peek", "q", "--delayed", "--in-flight", "--json", *at)))
        assert sorted(m["state"] for m in every) == ["delayed", "in_flight", "ready"]
        held = next(m for m in every if m["state"] == "in_flight")
        assert held["data_base64"] and held["deliveries"] == 1
        text = ok(run_cli("peek", "q", "--in-flight", *at))
        assert "in flight  1 delivery" in text and "00000000  00 01 62 69" in text, text  # binary: hex
    ok(run_cli("create", "empty", *at))
    assert json.loads(ok(run_cli("peek", "empty", "--json", *at))) == []
    empty = run_cli("peek", "empty", *at)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, b"", b"(no messages to show in empty)\n")


def test_read_visibility_in_seconds_and_never(server: ServerThread) -> None:
    at = ["--address", server.address]
    ok(run_cli("create", "q", "--visibility-timeout", "never", *at))
    assert json.loads(ok(run_cli("stats", "q", "--json", *at)))["visibility_timeout_ms"] == 0xFFFFFFFF
    ok(run_cli("create", "short", "--visibility-timeout", "0.3", *at))
    ok(run_cli("send", "short", "x", *at))
    with Client.connect(server.address) as holder:
        assert holder.read("short") is not None  # the queue's default: 0.3 s
        time.sleep(0.6)
        assert json.loads(ok(run_cli("stats", "short", "--json", *at)))["ready"] == 1  # it came back
    started = time.monotonic()
    assert ok(run_cli("read", "q", "--wait", "0.5", "--visibility", "never", *at)) == ""
    assert time.monotonic() - started >= 0.5
    for bad in ("0", "-1", "soon", "nan"):
        usage = run_cli("read", "q", "--visibility", bad, *at)
        assert usage.returncode == 2 and b"--visibility" in usage.stderr and b"Traceback" not in usage.stderr, bad
    assert run_cli("read", "q", "--wait", "never", *at).returncode == 2  # only a visibility may be never


def test_errors_of_peek_and_move_are_one_line(server: ServerThread) -> None:
    at = ["--address", server.address]
    assert one_line_error(run_cli("peek", "nope", *at)) == "Error: no queue named 'nope'"
    ok(run_cli("create", "a", *at))
    assert "no queue named 'nope'" in one_line_error(run_cli("move", "a", "nope", *at))
    assert one_line_error(run_cli("move", "a", "a", *at)).startswith("Error: ")
    assert run_cli("move", "a", "b", "--count", "0", *at).returncode == 2


def test_bench_deletes_its_queue_unless_told_to_keep_it(server: ServerThread) -> None:
    host, port = server.host_port
    small = ["--host", host, "--port", str(port), "--producers", "1", "--consumers", "1", "--iterations", "3"]
    figures = json.loads(ok(run_cli("bench", *small, "--pipeline", "4", "--queue", "bench-q", "--json")))
    assert figures["messages"] == 12
    with Client.connect(server.address) as client:
        assert [queue["name"] for queue in client.list_queues()] == []
    ok(run_cli("bench", *small, "--pipeline", "1", "--queue", "kept", "--keep-queue", "--json"))
    with Client.connect(server.address) as client:
        assert client.stats("kept")["confirmed"] == 3


def test_bench_fan_in(server: ServerThread) -> None:
    host, port = server.host_port
    run = run_cli(
        "bench", "--address", f"{host}:{port}", "--fan-in", "3,2", "--iterations", "40", "--json", timeout=120
    )
    figures = json.loads(ok(run))
    assert (figures["mode"], figures["producers"], figures["consumers"]) == ("fan-in", 3, 2)
    assert figures["messages"] == 120 and figures["messages_per_second"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["p999_ms"]
    table = run_cli("bench", "--address", f"{host}:{port}", "--fan-in", "1,1", "--iterations", "10", timeout=120)
    assert table.returncode == 0 and b"latency per round trip p99.9" in table.stdout, table.stdout
    assert run_cli("bench", "--fan-in", "3", "--address", f"{host}:{port}").returncode == 2
    with Client.connect(server.address) as client:
        assert client.list_queues() == []


def test_serve_store_and_standby_are_checked_before_anything_starts(tmp_path: Any) -> None:
    standby = run_cli("serve", "--port", "0", "--standby")
    assert standby.returncode == 2 and b"--standby" in standby.stderr and b"--store" in standby.stderr
    both = run_cli("serve", "--port", "0", "--store", "postgresql://nowhere/db", "--data-dir", str(tmp_path))
    assert both.returncode == 2 and b"exclusive" in both.stderr


# --- what peek prints ------------------------------------------------------------------------------------


def test_data_is_shown_as_pretty_json_text_or_hex() -> None:
    assert render_data(b'{"a": [1, 2]}') == ["{", '  "a": [', "    1,", "    2", "  ]", "}"]
    assert render_data(b"line one\nline\ttwo") == ["line one", "line    two"]
    assert render_data(b"") == ["(empty)"]
    assert render_data(b"{not json") == ["{not json"]
    assert render_data(b"\x1b[2Jhi")[0].startswith("00000000  1b 5b 32 4a")  # an escape: hex, not sent
    dump = render_data(bytes(range(256)) * 2)
    assert dump[0] == "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................"
    assert dump[-1] == "… 256 more bytes (512 in all)" and len(dump) == 17
    long = render_data(b"x\n" * 100)
    assert len(long) == 41 and long[-1].startswith("… 61 more lines")


def test_peek_lines_and_json_say_state_deliveries_age_and_origin() -> None:
    now = 1_800_000_000.0
    origin = Origin("jobs", 17, now - 3600, 5)
    messages = [
        PeekedMessage(1, b"plain", 0, "ready", now - 12.0),
        PeekedMessage(2, b"\xff", 5, "in_flight", now - 4000.0, origin),
    ]
    lines = peek_lines(messages, now, width=80)
    assert lines[0] == "1  ready  0 deliveries  age 12s  5 bytes"
    assert lines[1] == "    plain"
    assert lines[2] == "2  in flight  5 deliveries  age 1h06m  1 bytes"
    assert lines[3].startswith("  origin: jobs id 17, 5 deliveries, enqueued ")
    assert all(len(line) <= 80 for line in peek_lines(messages, now, width=80))
    shown = message_json(messages[1], now)
    assert shown == {
        "id": 2,
        "deliveries": 5,
        "state": "in_flight",
        "enqueued_at": now - 4000.0,
        "age": 4000.0,
        "origin": {"queue": "jobs", "id": 17, "enqueued_at": now - 3600, "deliveries": 5},
        "data_base64": "/w==",
    }


def test_ages_and_the_visibility_timeout_read_as_a_person_would() -> None:
    assert [fit_age(ms) for ms in (None, 0, 400, 42_000, 725_000, 11_220_000, 1_051_200_000)] == [
        "-",
        "-",
        "0.4s",
        "42s",
        "12m05s",
        "3h07m",
        "12d04h",
    ]
    assert all(len(fit_age(10**n)) <= 6 for n in range(15))
    details = queue_details(
        {"name": "q", "ready": 1, "oldest_ready_age_ms": 90_000, "visibility_timeout_ms": 30_000, "capacity": 0}
    )
    assert any("oldest ready" in line and "1m30s" in line for line in details)
    assert any("visibility" in line and "30 s" in line for line in details)


# --- the clients' peek and move against a group ---------------------------------------------------------


def test_a_group_peeks_every_member_and_moves_member_by_member(server_factory: Factory) -> None:
    members = [server_factory(member_index=index) for index in range(3)]
    addresses = [member.address for member in members]
    for member in members:
        member.call(lambda member=member: setattr(member.server, "members", list(addresses)))
    with GroupClient.connect(addresses, timeout=5.0) as group:
        group.create("dead")
        group.create("jobs")
        ids = [group.send("dead", b"%d" % i) for i in range(9)]  # round-robin: three on each member
        time.sleep(0.01)
        seen = group.peek("dead", 4)
        assert len(seen) == 4 and [m.enqueued_at for m in seen] == sorted(m.enqueued_at for m in seen)
        assert {m.id for m in group.peek("dead", 100)} == set(ids)
        assert group.stats("dead")["ready"] == 9  # nothing delivered
        assert group.move("dead", "jobs", count=4) == 4
        assert group.stats("jobs")["ready"] == 4 and group.stats("dead")["ready"] == 5
        assert group.move("dead", "jobs") == 5
        moved = group.read_batch("jobs", 20, wait=0.5)
        while len(moved) < 9:
            got = group.read_batch("jobs", 20, wait=0.5)
            assert got, "messages were lost in the move"
            moved += got
        assert sorted(m.id for m in moved) == sorted(ids)  # ids kept, each once
        with pytest.raises(NoSuchQueue):
            group.peek("nope")
        with pytest.raises(NoSuchQueue):
            group.move("nope", "jobs")


def test_message_json_of_a_read_message_has_no_state() -> None:
    from dbqueue import Message

    assert message_json(Message(3, b"hi", 2)) == {"id": 3, "deliveries": 2, "origin": None, "data": "hi"}


def test_the_dead_letters_example_runs(server: ServerThread) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "dead_letters.py"
    run = subprocess.run(
        [sys.executable, str(example), "--address", server.address], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "done: [b'book', b'lamp']"
    assert lines[1].startswith("dead letter b'poison': from 'orders' (id ") and "delivered 5 times there" in lines[1]
    assert lines[2] == "moved 1 back; done: [b'poison']"

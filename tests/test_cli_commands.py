"""The operator's commands (`dbqueue send | read | create | delete | purge | list | stats`) as real processes
against real servers: with a token, over TLS, against a group, configured from the environment, and
failing with one line that says why.

`run_cli` runs ``python -m dbqueue.cli`` in an environment cleared of every ``DBQUEUE_`` variable, so
that a test says all it relies on.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pytest
from click.core import ParameterSource

from dbqueue import Client
from dbqueue.cli import main
from dbqueue.server.security import server_tls_context
from pki import Pki, make_pki
from test_workers import Supervised, answers, workers_of

if TYPE_CHECKING:
    from conftest import ServerThread

TOKEN = "tok-" + secrets.token_hex(12)
Factory = Callable[..., "ServerThread"]


def clean_environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("DBQUEUE_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """``dbqueue ARGS`` as a process: its exit code, stdout and stderr (bytes)."""
    return subprocess.run(
        [sys.executable, "-m", "dbqueue.cli", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=clean_environment(**(env or {})),
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    """The stdout of a command that must have succeeded quietly (nothing on stderr)."""
    assert result.returncode == 0 and not result.stderr, (result.returncode, result.stderr.decode())
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """The one line a failed command wrote: no traceback, nothing on stdout, exit status ``code``."""
    stderr = result.stderr.decode()
    assert result.returncode == code, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_server(server_factory: Factory) -> ServerThread:
    return server_factory(auth_token=TOKEN.encode())


def tls_server(factory: Factory, pki: Pki, client_ca: bool = False, **options: Any) -> ServerThread:
    context = server_tls_context(pki.cert("server"), pki.key("server"), pki.cert("ca") if client_ca else None)
    return factory(ssl=context, **options)


# --- the commands ----------------------------------------------------------------------------------


def test_create_send_read_confirm_purge_delete_with_a_token(token_server: ServerThread, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    at = ["--address", token_server.address, "--token-file", str(token_file)]

    assert ok(run_cli("create", "jobs", *at)) == "created jobs\n"
    assert json.loads(ok(run_cli("create", "dead", "--json", *at))) == {"queue": "dead", "created": True}
    first = int(ok(run_cli("send", "jobs", "hello world", *at)))
    lines = ok(run_cli("send", "jobs", *at, stdin=b"one\ntwo\r\n\nthree")).split()
    assert len(lines) == 3 and int(lines[0]) > first
    whole = json.loads(ok(run_cli("send", "jobs", "-", "--whole", "--json", *at, stdin=b"a\nb\n")))
    assert whole["queue"] == "jobs" and len(whole["ids"]) == 1
    assert ok(run_cli("list", *at)) == "dead\njobs\n"
    assert json.loads(ok(run_cli("list", "--json", *at))) == ["dead", "jobs"]
    assert json.loads(ok(run_cli("stats", "jobs", "--json", *at)))["ready"] == 5

    # Without --confirm the messages go back when the command ends; a read counts as a delivery.
    assert ok(run_cli("read", "jobs", "--count", "2", *at)) == "hello world\none\n"
    again = json.loads(ok(run_cli("read", "jobs", "--count", "10", "--json", "--confirm", *at)))
    assert [(m["data"], m["deliveries"]) for m in again] == [
        ("hello world", 2),
        ("one", 2),
        ("two", 1),
        ("three", 1),
        ("a\nb\n", 1),
    ]
    assert again[0]["id"] == first
    stats = json.loads(ok(run_cli("stats", "jobs", "--json", *at)))
    assert (stats["ready"], stats["in_flight"], stats["confirmed"]) == (0, 0, 5)
    assert ok(run_cli("read", "jobs", *at)) == ""  # nothing there: nothing printed, and no error

    ok(run_cli("send", "jobs", *at, stdin=b"x\ny\n"))
    assert json.loads(ok(run_cli("purge", "jobs", "--json", *at))) == {"queue": "jobs", "purged": 2}
    assert ok(run_cli("delete", "jobs", *at)) == "deleted jobs\n"
    assert json.loads(ok(run_cli("list", "--json", *at))) == ["dead"]


def test_create_takes_every_option_of_the_clients_create(server: ServerThread) -> None:
    at = ["--address", server.address]
    ok(run_cli("create", "dead", *at))
    ok(run_cli("create", "jobs", "--capacity", "2", "--max-deliveries", "1", "--dead-letter-queue", "dead", *at))
    stats = json.loads(ok(run_cli("stats", "jobs", "--json", *at)))
    assert (stats["capacity"], stats["max_deliveries"], stats["dead_letter_queue"]) == (2, 1, "dead")
    details = ok(run_cli("stats", "jobs", *at))
    assert "dead letters to" in details and "dead" in details
    # The capacity refuses the third line: what was sent is printed, and the error names the line.
    result = run_cli("send", "jobs", *at, stdin=b"1\n2\n3\n4\n")
    assert len(result.stdout.split()) == 2
    assert "line 3:" in one_line_error(result) and "2 sent" in result.stderr.decode()
    # One delivery without a confirm moves a message to the dead-letter queue.
    assert ok(run_cli("read", "jobs", *at)) == "1\n"
    assert json.loads(ok(run_cli("stats", "dead", "--json", *at)))["ready"] == 1
    assert "no queue named 'nowhere'" in one_line_error(run_cli("create", "x", "--dead-letter-queue", "nowhere", *at))


def test_binary_messages_and_read_options(server: ServerThread) -> None:
    at = ["--address", server.address]
    ok(run_cli("create", "bin", *at))
    ok(run_cli("send", "bin", "--whole", *at, stdin=b"\xff\x00\xfe"))
    shown = json.loads(ok(run_cli("read", "bin", "--json", *at)))
    assert shown[0]["data_base64"] == "/wD+" and "data" not in shown[0]
    raw = run_cli("read", "bin", "--confirm", *at)
    assert raw.returncode == 0 and raw.stdout == b"\xff\x00\xfe\n"
    started = time.monotonic()
    assert ok(run_cli("read", "bin", "--wait", "1", *at)) == ""
    assert time.monotonic() - started >= 1.0
    ok(run_cli("send", "bin", "later", "--delay", "30", *at))
    assert json.loads(ok(run_cli("stats", "bin", "--json", *at)))["delayed"] == 1
    # A message another client holds is not read; once it is given back, it is.
    ok(run_cli("send", "bin", "soon", *at))
    with Client.connect(server.address) as holder:
        message = holder.read("bin", visibility_timeout=30.0)
        assert message is not None and message.data == b"soon"
        assert ok(run_cli("read", "bin", *at)) == ""  # in flight
    assert ok(run_cli("read", "bin", "--visibility", "5", "--wait", "5", "--confirm", *at)) == "soon\n"


def test_stats_of_every_queue_fits_the_terminal(server: ServerThread) -> None:
    at = ["--address", server.address]
    ok(run_cli("create", "short", *at))
    ok(run_cli("create", "a-very-long-queue-name-that-would-not-fit-in-any-table-column", *at))
    ok(run_cli("send", "short", *at, stdin=b"1\n2\n3\n"))
    for columns in ("80", "120", "200"):
        shown = ok(run_cli("stats", *at, env={"COLUMNS": columns}))
        lines = shown.splitlines()
        assert lines[0] == f"dbqueue {server.address}"
        assert all(len(line) <= int(columns) for line in lines), shown
        assert any(line.startswith("short ") and " 3 " in line for line in lines), shown
        assert any("…" in line for line in lines) == (columns != "200"), shown
    table = json.loads(ok(run_cli("stats", "--json", *at)))
    assert sorted(queue["name"] for queue in table) == sorted(
        ["short", "a-very-long-queue-name-that-would-not-fit-in-any-table-column"]
    )


# --- errors: one line, with the cause ------------------------------------------------------------------


def test_wrong_or_missing_token(token_server: ServerThread) -> None:
    at = ["--address", token_server.address]
    wrong = one_line_error(run_cli("list", *at, "--token", "guess"))
    assert wrong.startswith("Error: authentication failed: check --token"), wrong
    assert "refused" in wrong
    missing = one_line_error(run_cli("list", *at))
    assert missing.startswith("Error: authentication failed: check --token") and "wants one" in missing, missing
    assert ok(run_cli("list", *at, "--token", TOKEN)) == ""


def test_tls_expected_and_tls_not_offered(server_factory: Factory, pki: Pki) -> None:
    secure = tls_server(server_factory, pki)
    plain = server_factory()
    expected = one_line_error(run_cli("list", "--address", secure.address))
    assert "TLS is expected" in expected and "--tls" in expected, expected
    not_offered = one_line_error(run_cli("list", "--address", plain.address, "--tls-ca", pki.cert("ca")))
    assert "TLS is not offered" in not_offered, not_offered
    untrusted = one_line_error(run_cli("list", "--address", secure.address, "--tls"))
    assert "not trusted" in untrusted and "--tls-ca" in untrusted, untrusted
    assert ok(run_cli("list", "--address", secure.address, "--tls-ca", pki.cert("ca"))) == ""


def test_tls_with_a_client_certificate_and_a_token(server_factory: Factory, pki: Pki) -> None:
    secure = tls_server(server_factory, pki, client_ca=True, auth_token=TOKEN.encode())
    at = ["--address", secure.address, "--tls-ca", pki.cert("ca"), "--token", TOKEN]
    mine = ["--tls-cert", pki.cert("client"), "--tls-key", pki.key("client")]
    ok(run_cli("create", "q", *at, *mine))
    ok(run_cli("send", "q", "over tls", *at, *mine))
    assert ok(run_cli("read", "q", "--confirm", *at, *mine)) == "over tls\n"
    no_certificate = one_line_error(run_cli("list", *at))
    assert "client certificate" in no_certificate, no_certificate


def test_nothing_listening_a_bad_address_and_no_such_queue(server: ServerThread) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        refused = one_line_error(run_cli("stats", "--address", f"127.0.0.1:{port}"))
    assert refused == f"Error: cannot connect to 127.0.0.1:{port}: connection refused", refused
    usage = run_cli("stats", "--address", "nowhere")
    assert usage.returncode == 2 and "--address" in usage.stderr.decode() and b"Traceback" not in usage.stderr
    for command in (["read", "nope"], ["send", "nope", "x"], ["purge", "nope"], ["delete", "nope"], ["stats", "nope"]):
        line = one_line_error(run_cli(*command, "--address", server.address))
        assert line == "Error: no queue named 'nope'", (command, line)


def test_a_lost_member_of_several_addresses_is_skipped(server: ServerThread) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        ok(run_cli("create", "q", "--address", f"{dead},{server.address}"))
    assert json.loads(ok(run_cli("list", "--json", "--address", server.address))) == ["q"]


# --- a group -----------------------------------------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Supervised]:
    tree = Supervised(tmp_path, 3)
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "every worker to answer")
        yield tree
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(timeout=15) == 0, tree.log()
    finally:
        tree.close()


def test_a_group_from_one_member_sums_its_members_and_shows_each(group: Supervised) -> None:
    one = ["--address", group.addresses[1]]  # any member: the others are asked of it
    ok(run_cli("create", "jobs", *one))
    ids = ok(run_cli("send", "jobs", *one, stdin=b"".join(b"%d\n" % i for i in range(9)))).split()
    assert len(ids) == 9
    summed = json.loads(ok(run_cli("stats", "jobs", "--json", *one)))
    assert (summed["ready"], summed["members"]) == (9, 3)
    breakdown = json.loads(ok(run_cli("stats", "jobs", "--members", "--json", *one)))
    assert breakdown["group"]["ready"] == 9
    per_member = {member["address"]: member["queues"][0]["ready"] for member in breakdown["members"]}
    assert sorted(per_member) == sorted(group.addresses) and sum(per_member.values()) == 9
    assert all(count == 3 for count in per_member.values())  # round-robin
    table = ok(run_cli("stats", "--members", *one))
    assert all(f"  {address}" in table for address in group.addresses), table
    keyed = json.loads(ok(run_cli("send", "jobs", "k", "--key", "customer-7", "--json", *one)))["ids"]
    same = json.loads(ok(run_cli("send", "jobs", "k", "--key", "customer-7", "--json", *one)))["ids"]
    assert keyed[0] >> 56 == same[0] >> 56  # one key, one member
    assert len(ok(run_cli("read", "jobs", "--count", "20", "--confirm", *one)).split()) == 11
    assert json.loads(ok(run_cli("stats", "jobs", "--json", *one)))["ready"] == 0
    # Peek looks at every member; move is done by each member on its own part.
    ok(run_cli("send", "jobs", *one, stdin=b"a\nb\nc\nd\n"))
    assert sorted(m["data"] for m in json.loads(ok(run_cli("peek", "jobs", "--json", *one)))) == ["a", "b", "c", "d"]
    ok(run_cli("create", "other", *one))
    assert json.loads(ok(run_cli("move", "jobs", "other", "--count", "3", "--json", *one)))["moved"] == 3
    assert ok(run_cli("move", "jobs", "other", *one)) == "moved 1 message from jobs to other\n"
    assert json.loads(ok(run_cli("stats", "other", "--json", *one)))["ready"] == 4

    pids = workers_of(group.process.pid)
    os.kill(pids[group.port + 2], signal.SIGSTOP)  # a member that stops answering
    try:
        partial = run_cli("stats", "--members", "--json", "--timeout", "1", *one)
        assert partial.returncode == 0, partial.stderr
        (said,) = partial.stderr.decode().splitlines()  # the sums miss a member: said on stderr
        assert said.startswith(f"1 of 3 members down ({group.addresses[2]}: ") and said.endswith("partial"), said
        down = json.loads(partial.stdout)
        errors = [member for member in down["members"] if "error" in member]
        assert [member["address"] for member in errors] == [group.addresses[2]], down
        assert [member["address"] for member in down["group"][0]["members_down"]] == [group.addresses[2]]
    finally:
        os.kill(pids[group.port + 2], signal.SIGCONT)


# --- the environment ------------------------------------------------------------------------------------


def every_option() -> Iterator[tuple[list[str], click.Command, click.Option]]:
    def walk(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command, click.Option]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, [*path, name])
                continue
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    yield [*path, name], command, param

    yield from walk(main, [])


def a_value(option: click.Option, tmp_path: Path) -> str:
    if option.is_flag:
        return "1"
    kind = option.type
    if isinstance(kind, click.Path):
        if not kind.file_okay:
            return str(tmp_path)
        path = tmp_path / "a-file"
        path.write_text("secret\n")
        return str(path)
    if isinstance(kind, click.Choice):
        return str(kind.choices[-1])
    if isinstance(kind, click.IntRange | click.FloatRange):
        low = kind.min if kind.min is not None else 1
        return str(max(low, 1) if isinstance(kind, click.IntRange) else max(low, 0.5))
    if option.name == "address" or option.name == "addresses":
        return "127.0.0.1:4000"
    if option.name == "peers":
        return "127.0.0.1:3003"
    return "7"


def test_every_option_of_every_command_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = 0
    for path, command, option in every_option():
        assert option.name is not None
        # Named after the option as the user types it (--json: DBQUEUE_LIST_JSON), not its Python parameter.
        long_option = next(spelling for spelling in option.opts if spelling.startswith("--"))
        scoped = "_".join(["DBQUEUE", *path, long_option[2:]]).upper().replace("-", "_")
        envvars = option.envvar if isinstance(option.envvar, list) else [option.envvar]
        assert envvars[0] == scoped, (path, option.name, envvars)
        for name in envvars:
            assert name is not None
            value = a_value(option, tmp_path)
            with monkeypatch.context() as patched:
                for other in list(os.environ):
                    if other.startswith("DBQUEUE_"):
                        patched.delenv(other)
                patched.setenv(name, value)
                context = command.make_context(path[-1], ["q"] * _queues_taken(command))
                assert context.get_parameter_source(option.name) is ParameterSource.ENVIRONMENT, (path, name)
                expected = option.type_cast_value(context, value) if not option.is_flag else True
                assert context.params[option.name] == expected, (path, name)
                checked += 1
    assert checked > 60


def _queues_taken(command: click.Command) -> int:
    """How many arguments (queues) the command needs: ``move`` takes two."""
    return sum(isinstance(param, click.Argument) and param.required for param in command.params)


def test_serve_takes_its_port_and_its_token_from_the_environment(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "serve.log"
    env = clean_environment(DBQUEUE_PORT=str(port), DBQUEUE_AUTH_TOKEN=TOKEN, DBQUEUE_MAX_QUEUES="1")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "dbqueue.cli", "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 15
        while run_cli("list", "--address", f"127.0.0.1:{port}", env={"DBQUEUE_TOKEN": TOKEN}).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        at = {"DBQUEUE_ADDRESS": f"127.0.0.1:{port}"}
        ok(run_cli("create", "q", env={**at, "DBQUEUE_AUTH_TOKEN": TOKEN}))  # the server's own variable
        limited = one_line_error(run_cli("create", "r", env={**at, "DBQUEUE_TOKEN": TOKEN}))
        assert "1 queues" in limited, limited  # DBQUEUE_MAX_QUEUES reached the server
        refused = one_line_error(run_cli("list", "--token", "wrong", env={**at, "DBQUEUE_TOKEN": TOKEN}))
        assert "authentication failed" in refused  # the command line wins over the environment
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0, log_path.read_text()
    assert f"listening on 127.0.0.1:{port}" in log_path.read_text()


def test_a_supervisor_configured_from_the_environment_does_not_pass_it_to_its_workers(tmp_path: Path) -> None:
    """DBQUEUE_WORKERS=2 must reach the supervisor only: a worker reading it would start workers of its own."""
    env = {"DBQUEUE_WORKERS": "2", "DBQUEUE_MAX_QUEUES": "1"}

    def command(workers: int, port: int) -> list[str]:
        return [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port)]

    tree = Supervised(tmp_path, 2, command, env=clean_environment(**env))
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "both workers to answer")
        workers = workers_of(tree.process.pid)
        assert sorted(workers) == [tree.port, tree.port + 1]
        for pid in workers.values():
            assert not Path(f"/proc/{pid}/task/{pid}/children").read_text().split()  # no grandchildren
        with Client.connect(tree.addresses[0]) as client:
            client.create("one")
            with pytest.raises(Exception, match="1 queues"):
                client.create("two")  # the option the environment gave still reached the worker
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(timeout=15) == 0, tree.log()
    finally:
        tree.close()

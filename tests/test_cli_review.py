"""What a review of the commands found, each as a real process against real servers: environment
variables named after the options, ``bench`` with a token and over TLS and never on somebody's queue,
``stats`` saying that a group's sums miss a member, plurals and time zones, ``serve --advertise``, and the
help of ``--auth-token-file`` and ``--sqs-credentials``.
"""

from __future__ import annotations

import datetime
import inspect
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pytest

from dbqueue import Client
from dbqueue.cli import main, option_key
from pki import Pki, make_pki
from server_process import ServerProcess
from test_cli_commands import TOKEN, clean_environment, ok, one_line_error, run_cli, tls_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import ServerThread

    Factory = Callable[..., ServerThread]

SMALL = ["--producers", "1", "--consumers", "1", "--iterations", "3", "--pipeline", "2", "--json"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def closed_address() -> str:
    """An address where nothing listens (bound, never listening: connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# --- 1. environment variables follow the options' names ------------------------------------------------------


def options_of(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Option]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from options_of(command, (*path, name))
            continue
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                yield (*path, name), param


def test_every_variable_is_named_after_its_option_not_its_parameter() -> None:
    renamed = 0
    for path, option in options_of(main):
        long_option = next(spelling for spelling in option.opts if spelling.startswith("--"))
        expected = "_".join(["DBQUEUE", *path, long_option[2:]]).upper().replace("-", "_")
        envvars = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or [])
        assert envvars and envvars[0] == expected, (path, long_option, envvars)
        assert option_key(option) == long_option[2:].replace("-", "_")
        renamed += option.name != option_key(option)
    assert renamed >= 10  # --json (as_json) everywhere, --salvage (into), ...


def test_list_json_store_check_salvage_and_bench_address_from_the_environment(
    server: ServerThread, tmp_path: Path
) -> None:
    ok(run_cli("create", "jobs", "--address", server.address))
    listed = ok(run_cli("list", env={"DBQUEUE_LIST_JSON": "1", "DBQUEUE_ADDRESS": server.address}))
    assert json.loads(listed) == ["jobs"]
    assert json.loads(ok(run_cli("list", "--address", server.address, env={"DBQUEUE_LIST_AS_JSON": "1"}))) is not None

    figures = ok(run_cli("bench", *SMALL, env={"DBQUEUE_BENCH_ADDRESS": server.address}))
    assert json.loads(figures)["messages"] == 6

    store = tmp_path / "store"
    stored = ServerProcess(store).start()
    try:
        with stored.client() as client:
            client.create("jobs")
            client.send("jobs", b"x")
        stored.terminate()
    finally:
        stored.close()
    into = tmp_path / "salvaged"
    checked = run_cli("store", "check", str(store), env={"DBQUEUE_STORE_CHECK_SALVAGE": str(into)})
    assert checked.returncode == 0, checked.stderr
    assert into.is_dir()  # the variable was read: the salvage was made there
    checked = run_cli(
        "store",
        "check",
        str(store),
        env={"DBQUEUE_STORE_CHECK_SALVAGE": str(tmp_path / "again"), "DBQUEUE_STORE_CHECK_JSON": "1"},
    )
    assert json.loads(ok(checked))["salvaged_into"] == str(tmp_path / "again")


def test_the_connection_options_have_the_same_short_names_in_every_command_that_connects() -> None:
    short: dict[str, set[tuple[str, ...]]] = {}
    for path, option in options_of(main):
        envvars = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or [])
        if path != ("serve",) and len(envvars) > 1:
            short.setdefault(option_key(option), set()).add(tuple(envvars[1:]))
    assert short == {
        "address": {("DBQUEUE_ADDRESS",)},
        "token": {("DBQUEUE_TOKEN", "DBQUEUE_AUTH_TOKEN")},
        "token_file": {("DBQUEUE_TOKEN_FILE", "DBQUEUE_AUTH_TOKEN_FILE")},
        "tls": {("DBQUEUE_TLS",)},
        "tls_ca": {("DBQUEUE_TLS_CA",)},
        "tls_cert": {("DBQUEUE_CLIENT_CERT",)},
        "tls_key": {("DBQUEUE_CLIENT_KEY",)},
        "timeout": {("DBQUEUE_TIMEOUT",)},
    }
    serve = main.commands["serve"]
    tls_ca = next(param for param in serve.params if param.name == "tls_ca")
    assert tls_ca.envvar == ["DBQUEUE_SERVE_TLS_CA", "DBQUEUE_CLIENT_CA"]  # a client's DBQUEUE_TLS_CA means another CA


def test_host_and_port_the_spelling_before_address_name_the_server_unless_address_is_given(
    server: ServerThread,
) -> None:
    host, port = server.host_port
    ok(run_cli("create", "jobs", "--address", server.address))
    old = ["--host", host, "--port", str(port)]
    assert [queue["name"] for queue in json.loads(ok(run_cli("stats", *old, "--json")))] == ["jobs"]
    nowhere = ["--host", "127.0.0.1", "--port", closed_address().rpartition(":")[2]]
    assert json.loads(ok(run_cli("stats", "--address", server.address, *nowhere, "--json")))[0]["name"] == "jobs"
    assert json.loads(ok(run_cli("bench", *old, *SMALL)))["messages"] == 6
    assert json.loads(ok(run_cli("bench", "--address", server.address, *nowhere, *SMALL)))["messages"] == 6
    assert "--host" not in ok(run_cli("stats", "--help"))  # kept for old command lines, not shown


# --- 2, 3. bench with a token and TLS, and never on somebody's queue -----------------------------------------


def test_bench_with_a_token_from_a_file_from_the_environment_and_in_fan_in(
    server_factory: Factory, tmp_path: Path
) -> None:
    server = server_factory(auth_token=TOKEN.encode())
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    at = ["--address", server.address]
    assert json.loads(ok(run_cli("bench", *at, *SMALL, "--token-file", str(token_file))))["messages"] == 6
    assert json.loads(ok(run_cli("bench", *at, *SMALL, env={"DBQUEUE_TOKEN": TOKEN})))["messages"] == 6
    fan_in = ok(run_cli("bench", *at, "--fan-in", "2,1", "--iterations", "5", "--json", "--token", TOKEN, timeout=120))
    assert json.loads(fan_in)["messages"] == 10
    latency = ok(run_cli("bench", *at, "--latency", "--iterations", "3", "--json", "--token", TOKEN))
    assert json.loads(latency)["messages"] == 3
    refused = one_line_error(run_cli("bench", *at, *SMALL, "--token", "guess"))
    assert refused.startswith("Error: benchmark failed:") and "auth" in refused.lower(), refused
    with Client.connect(server.address, token=TOKEN) as client:
        assert client.list_queues() == []  # each run deleted the queue it made


def test_bench_over_tls_with_a_token(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki, auth_token=TOKEN.encode())
    at = ["--address", server.address, "--tls-ca", pki.cert("ca"), "--token", TOKEN]
    assert json.loads(ok(run_cli("bench", *at, *SMALL)))["messages"] == 6
    assert json.loads(ok(run_cli("bench", *at, "--fan-in", "1,1", "--iterations", "4", "--json", timeout=120)))
    with Client.connect(server.address, token=TOKEN, tls=server_tls_client(pki)) as client:
        assert client.list_queues() == []


def server_tls_client(pki: Pki) -> Any:
    import ssl

    return ssl.create_default_context(cafile=pki.cert("ca"))


def test_bench_never_touches_a_queue_that_holds_messages_nor_deletes_one_it_did_not_make(
    server: ServerThread,
) -> None:
    at = ["--address", server.address]
    with Client.connect(server.address) as client:
        client.create("foo")
        kept = client.send("foo", b"somebody's work")
        client.create("empty", max_deliveries=7)
    refused = one_line_error(run_cli("bench", *at, *SMALL, "--queue", "foo"))
    assert "'foo'" in refused and "1 message:" in refused and "--queue" in refused, refused
    ok(run_cli("bench", *at, *SMALL, "--queue", "empty"))
    ok(run_cli("bench", *at, *SMALL))  # a queue of its own, deleted after
    with Client.connect(server.address) as client:
        assert sorted(queue["name"] for queue in client.list_queues()) == ["empty", "foo"]
        assert client.stats("empty")["confirmed"] == 6  # used, and left where it was
        (message,) = client.peek("foo")
        assert (message.id, message.data) == (kept, b"somebody's work")


# --- 4. stats against a group with a member down --------------------------------------------------------------


def test_stats_says_that_a_member_is_down_and_the_figures_partial(server: ServerThread) -> None:
    down = closed_address()
    at = ["--address", f"{server.address},{down}"]
    ok(run_cli("create", "jobs", "--address", server.address))
    ok(run_cli("send", "jobs", "x", "--address", server.address))

    table = run_cli("stats", *at)
    assert table.returncode == 0, table.stderr
    (line,) = table.stderr.decode().splitlines()
    assert line.startswith(f"1 of 2 members down ({down}: ") and line.endswith("): figures are partial"), line
    assert "refused" in line
    assert "jobs" in table.stdout.decode()

    listed = run_cli("stats", "--json", *at)
    assert listed.returncode == 0 and listed.stderr.decode().startswith("1 of 2 members down")
    (jobs,) = json.loads(listed.stdout)
    assert jobs["ready"] == 1 and [member["address"] for member in jobs["members_down"]] == [down]
    one = json.loads(run_cli("stats", "jobs", "--json", *at).stdout)
    assert one["members_down"][0]["address"] == down and one["members_down"][0]["reason"]

    whole = run_cli("stats", "jobs", "--json", "--address", server.address)
    assert "members_down" not in json.loads(ok(whole))


# --- 5. plurals, time zones ------------------------------------------------------------------------------------


def test_one_message_is_one_message(server: ServerThread) -> None:
    at = ["--address", server.address]
    for queue in ("a", "b"):
        ok(run_cli("create", queue, *at))
    ok(run_cli("send", "a", "x", *at))
    assert ok(run_cli("move", "a", "b", *at)) == "moved 1 message from a to b\n"
    assert ok(run_cli("purge", "b", *at)) == "purged 1 message from b\n"
    assert ok(run_cli("purge", "b", *at)) == "purged 0 messages from b\n"


def test_watch_json_times_carry_their_offset(server: ServerThread) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "stats", "--watch", "0.2", "--json", "--address", server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environment(TZ="Asia/Kolkata"),
    )
    assert watch.stdout is not None
    line = watch.stdout.readline()
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=10)
    stamp = datetime.datetime.fromisoformat(json.loads(line)["time"])
    assert stamp.utcoffset() == datetime.timedelta(hours=5, minutes=30), line


# --- 7. serve --advertise --------------------------------------------------------------------------------------


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("0.0.0.0", port))
        except OSError:
            continue
        return first
    raise AssertionError("no free ports")


def test_serve_advertises_the_address_clients_are_given() -> None:
    from dbqueue.server import Server

    if "advertise" not in inspect.signature(Server).parameters:
        refused = run_cli("serve", "--port", "0", "--advertise", "127.0.0.1:3003")
        assert refused.returncode == 2 and b"--advertise is not supported by this build" in refused.stderr
        assert run_cli("serve", "--port", "0", "--advertise", "nowhere").returncode == 2
        pytest.skip("dbqueue.server.Server has no advertise parameter yet (the lead adds it in server/app.py)")
    port = _free_ports(2)
    advertised = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    serve = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--host", "0.0.0.0", "--insecure", "--port", str(port)]
        + ["--workers", "2", "--advertise", advertised[0]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_environment(),
    )
    try:
        listed: list[str] = []
        for _ in range(100):
            try:
                with Client.connect(advertised[1], timeout=1.0) as client:
                    listed = list(client.members().members)
                break
            except OSError:
                import time

                time.sleep(0.1)
        assert listed == advertised
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=15)


# --- 8. the help of the token and of the SQS credentials ------------------------------------------------------


def test_serve_help_says_the_token_signs_the_sqs_api() -> None:
    shown = " ".join(ok(run_cli("serve", "--help")).split())
    assert "also signs the SQS API: access key id 'dbqueue', the token as secret access key" in shown, shown
    assert "with no token either, unsigned requests on loopback only" in shown, shown
    assert "without, unsigned requests on loopback only" not in shown.lower()

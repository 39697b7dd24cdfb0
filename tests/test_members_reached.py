"""MEMBERS from a server bound to a wildcard address (``--host 0.0.0.0`` or ``::``) without ``--advertise``.

Such a server knows no address of its own to tell; ``0.0.0.0`` in a MEMBERS answer sends a client on
another machine to itself. Each connection is told the host it reached instead, with every member's own
port, so any client that follows MEMBERS (the Python group client, a Node client written from
docs/protocol.md, the CLI) finds the group. ``--advertise`` still wins. Real servers (`dbqueue serve`
and ``--workers 2``) in child processes, reached over real sockets at loopback and, where the machine
has one, at another address of its own.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from child_server import ChildServer
from dbqueue import Client
from dbqueue.server.security import server_tls_context
from dbqueue.server.session import as_reached
from pki import make_pki
from test_workers import Supervised, answers, free_ports

if TYPE_CHECKING:
    from conftest import ServerThread


def other_local_ipv4() -> str | None:
    """An IPv4 address of this machine other than loopback (what ``hostname -I`` prints first), or None."""
    try:
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for address in listed:
        if "." in address and not address.startswith("127."):
            with socket.socket() as probe:
                try:
                    probe.bind((address, 0))
                except OSError:
                    continue
            return address
    return None


OTHER = other_local_ipv4()
REACHED = ["127.0.0.1"] + ([OTHER] if OTHER else [])


def members_at(address: str) -> tuple[tuple[str, ...], int]:
    with Client.connect(address, timeout=5.0) as client:
        reply = client.members()
    return tuple(reply.members), reply.index


@pytest.fixture
def wildcard_group(tmp_path: Path) -> Iterator[Supervised]:
    def command(workers: int, port: int) -> list[str]:
        return [sys.executable, "-m", "dbqueue.cli", "serve", "--host", "0.0.0.0", "--insecure"] + [
            "--workers", str(workers), "--port", str(port),
        ]  # fmt: skip

    tree = Supervised(tmp_path, 2, command)
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "both workers to answer")
        yield tree
    finally:
        tree.close()


@pytest.mark.parametrize("host", REACHED)
def test_a_lone_server_on_0_0_0_0_tells_each_client_the_address_it_reached(tmp_path: Path, host: str) -> None:
    with ChildServer(tmp_path, "--host", "0.0.0.0", "--insecure") as server:
        assert members_at(f"{host}:{server.port}") == ((f"{host}:{server.port}",), 0)
        server.stop()


@pytest.mark.parametrize("host", REACHED)
def test_a_group_on_0_0_0_0_lists_the_host_each_client_reached_with_every_worker_s_port(
    wildcard_group: Supervised, host: str
) -> None:
    port = wildcard_group.port
    expected = (f"{host}:{port}", f"{host}:{port + 1}")
    assert members_at(f"{host}:{port}") == (expected, 0)
    assert members_at(f"{host}:{port + 1}") == (expected, 1)
    # A client that follows the list reaches each member, and each says it is the one listed there.
    for index, address in enumerate(expected):
        assert members_at(address) == (expected, index)


def test_a_server_on_ipv6_any_tells_the_ipv6_address_reached_in_brackets(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    # Not a `ChildServer`: its readiness check connects to 127.0.0.1, which `::` (IPv6 only) does not serve.
    port = free_ports(1)
    log = tmp_path / "ipv6.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dbqueue.cli", "serve", "--host", "::", "--insecure", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not answers(f"[::1]:{port}"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        assert members_at(f"[::1]:{port}") == ((f"[::1]:{port}",), 0)
    finally:
        process.kill()
        process.wait()


def test_advertise_still_wins_over_the_address_reached(tmp_path: Path) -> None:
    port = free_ports(2)

    def command(workers: int, first: int) -> list[str]:
        return [sys.executable, "-m", "dbqueue.cli", "serve", "--host", "0.0.0.0", "--insecure"] + [
            "--workers", str(workers), "--port", str(first), "--advertise", f"queue.example:{first + 100}",
        ]  # fmt: skip

    tree = Supervised(tmp_path, 2, command, port=port)
    try:
        tree.wait_until(lambda: all(answers(address) for address in tree.addresses), "both workers to answer")
        for host in REACHED:
            assert members_at(f"{host}:{port + 1}") == (
                (f"queue.example:{port + 100}", f"queue.example:{port + 101}"),
                1,
            )
    finally:
        tree.close()


def test_as_reached_replaces_only_wildcard_hosts() -> None:
    members = ["0.0.0.0:3003", ":::3004", "[::]:3005", ":3006", "db1.example:3007", "10.0.0.5:3008"]
    assert as_reached(members, ("192.0.2.7", 3003)) == [
        "192.0.2.7:3003", "192.0.2.7:3004", "192.0.2.7:3005", "192.0.2.7:3006", "db1.example:3007", "10.0.0.5:3008",
    ]  # fmt: skip
    assert as_reached(["[::]:3003"], ("fd00::2", 3003, 0, 0)) == ["[fd00::2]:3003"]
    assert as_reached(["0.0.0.0:3003"], ("::ffff:192.0.2.7", 3003, 0, 0)) == ["192.0.2.7:3003"]
    assert as_reached(["0.0.0.0:3003"], None) == ["0.0.0.0:3003"]  # no address known: as they are


def test_over_tls_the_address_reached_is_the_tls_connection_s(
    server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = server_factory(
        host="0.0.0.0",
        ssl=server_tls_context(pki.cert("server"), pki.key("server")),
        members=["0.0.0.0:3003", "db2.example:3003"],  # as --peers may give them: only the wildcard changes
        member_index=0,
    )
    context = pki.client_context()
    context.check_hostname = False  # the leaf names "localhost"; the address is what this test is about
    for host in REACHED:
        with Client.connect(f"{host}:{server.server.port}", tls=context, timeout=5.0) as client:
            reply = client.members()
        assert (tuple(reply.members), reply.index) == ((f"{host}:3003", "db2.example:3003"), 0)

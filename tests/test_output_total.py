"""Unread replies over all connections are bounded (`Limits.max_output_total`), against a real server with
real connections that ask for large replies and never read them: past the bound the connections with the
most unread bytes are cut off, largest first (their messages in flight go back), and a client that reads
keeps being served meanwhile.

The offenders read large messages, many at once, with a receive buffer of a few KiB: the kernel takes a
few MB of each connection's replies, the rest waits in the server's transport.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dbqueue import Client
from dbqueue.protocol import messages as msg

if TYPE_CHECKING:
    from conftest import ServerThread

Factory = Callable[..., "ServerThread"]

PAYLOAD = bytes(512 << 10)
READS = 24  # messages each offender reads in one write: 12 MB of replies, far under max_output_buffer
OFFENDERS = 6
TOTAL = 16 << 20  # what two or three offenders leave in the server, not six


class Offender:
    """A raw connection that reads many large messages at once and never takes the replies."""

    def __init__(self, host_port: tuple[str, int], requests: bytes | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel absorbs little of it
        self.sock.connect(host_port)
        if requests is None:
            requests = b"".join(msg.encode(10 + i, msg.Read("big", 600_000)) for i in range(READS))
        self.sock.sendall(requests)

    @property
    def peer(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def offenders() -> Iterator[list[Offender]]:
    made: list[Offender] = []
    yield made
    for offender in made:
        offender.close()


def big_queue(server: ServerThread, count: int) -> None:
    broker = server.server.broker

    def fill() -> None:
        queue = broker.create_queue(b"big")
        for _ in range(count):
            queue.push(PAYLOAD)

    server.call(fill)
    server.wait_until(lambda: server.server.store is None or not server.server.store.pending(), what="stored")


def cut(server: ServerThread, offenders: list[Offender]) -> list[bool]:
    """Which offenders the server cut off (it holds no session for them any more)."""
    peers = server.call(lambda: {session.peer for session in server.server.sessions})
    return [offender.peer not in peers for offender in offenders]


def in_flight(server: ServerThread) -> int:
    """Messages of the big queue in flight (call on the server's loop: from `ServerThread.wait_until`)."""
    return int(server.server.broker.queues[b"big"].stats()["in_flight"])


@pytest.mark.parametrize("store", [False, True], ids=["memory", "data-dir"])
def test_unread_replies_over_all_connections_are_bounded_largest_first(
    server_factory: Factory, offenders: list[Offender], tmp_path: Path, store: bool
) -> None:
    server = server_factory(max_output_total=TOTAL, **({"data_dir": tmp_path / "data"} if store else {}))
    big_queue(server, OFFENDERS * READS)
    with Client.connect(server.address) as probe:
        probe.create("q")
        # A connection with a few unread replies: the smallest, it is never the one cut off.
        quiet = Offender(server.host_port, requests=msg.encode(1, msg.Stats("q")) * 100)
        offenders.append(quiet)
        for _ in range(OFFENDERS):
            offenders.append(Offender(server.host_port))
            probe.send("q", b"probe")  # the probe is served all along
            message = probe.read("q", visibility_timeout=60.0)
            assert message is not None and message.data == b"probe"
            probe.confirm(message.id)
        time.sleep(0.2)
        unsent = server.call(lambda: server.server.unsent_bytes)
        gone = cut(server, offenders)
        assert unsent <= TOTAL, unsent
        # Each offender's replies alone are far under max_output_buffer: only the total cut them off, the
        # largest first, until those left fit under it.
        assert not gone[0], "the quiet connection was cut off"
        assert 2 <= sum(gone) < OFFENDERS, gone
        # The messages the cut offenders held came back; the others' are still theirs.
        server.wait_until(lambda: in_flight(server) == READS * (OFFENDERS - sum(gone)), what="their messages back")


def test_a_lone_connection_over_the_total_is_cut_off(server_factory: Factory, offenders: list[Offender]) -> None:
    server = server_factory(max_output_total=4 << 20)
    big_queue(server, READS)
    offenders.append(Offender(server.host_port))
    server.wait_until(lambda: not server.server.sessions, what="the offender cut off")
    server.wait_until(lambda: in_flight(server) == 0, what="its messages back")
    assert server.call(lambda: server.server.unsent_bytes) == 0
    assert server.call(lambda: server.server.output_room()) == 4 << 20

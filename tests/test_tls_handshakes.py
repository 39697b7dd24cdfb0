"""TLS handshakes against a real server: bounded in number (`Limits.max_unauthenticated`) and in time
(`Limits.handshake_timeout`), so that strangers who never finish one cost bounded memory and never take the
place of clients who did; and the first bytes a client sends right behind its handshake reach the session.

The stalled peers are raw TCP sockets: some send nothing, some a real ClientHello (made with an in-memory
`ssl.SSLObject`) and then nothing, which makes the server do its part of the handshake and wait.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from child_server import ChildServer
from dbqueue import Client
from dbqueue.server.security import server_tls_context
from pki import Pki, make_pki

if TYPE_CHECKING:
    from conftest import ServerThread

Factory = Callable[..., "ServerThread"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_hello() -> bytes:
    """The first flight of a TLS client, as a stranger would send it before stalling."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Stalled:
    """``count`` raw connections to ``address`` that start a handshake (or not) and never finish it."""

    def __init__(self, host_port: tuple[str, int], count: int, hello: bool) -> None:
        first = client_hello() if hello else b""
        self.socks: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection(host_port, timeout=5)
            if first:
                sock.sendall(first)
            self.socks.append(sock)

    def open(self) -> int:
        """How many the server has not closed yet (whatever it sent of its handshake is read and dropped)."""
        count = 0
        for sock in self.socks:
            sock.setblocking(False)
            try:
                while sock.recv(65536):
                    pass
            except BlockingIOError:
                count += 1
            except OSError:  # reset: refused at accept
                pass
        return count

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.fixture
def stalled() -> Iterator[Callable[[tuple[str, int], int, bool], Stalled]]:
    made: list[Stalled] = []

    def make(host_port: tuple[str, int], count: int, hello: bool) -> Stalled:
        made.append(Stalled(host_port, count, hello))
        return made[-1]

    yield make
    for group in made:
        group.close()


def tls_server(factory: Factory, pki: Pki, **options: Any) -> ServerThread:
    return factory(ssl=server_tls_context(pki.cert("server"), pki.key("server")), **options)


def eventually(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Wait until ``predicate()`` holds; return how long it took; fail after ``within`` seconds."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("hello", [False, True], ids=["silent", "client-hello"])
def test_stalled_handshakes_beyond_the_quota_are_refused_and_the_rest_time_out(
    server_factory: Factory, pki: Pki, stalled: Callable[[tuple[str, int], int, bool], Stalled], hello: bool
) -> None:
    server = tls_server(server_factory, pki, max_unauthenticated=8, handshake_timeout=0.5, max_connections=4)
    with Client.connect(server.address, tls=pki.client_context()) as owner:  # connected before the flood
        owner.create("q")
        peers = stalled(server.host_port, 40, hello)
        server.wait_until(lambda: server.server.tls_handshakes == 8, what="8 handshakes under way")
        eventually(lambda: peers.open() <= 8, 2.0, "the connections beyond the quota closed")
        # Strangers take no place among the connections: the client who finished its handshake works on.
        assert owner.send("q", b"during") > 0
        assert server.call(lambda: len(server.server.sessions)) == 1
        # The deadline closes the rest; then a new client gets in at once.
        took = eventually(lambda: peers.open() == 0, 3.0, "the stalled handshakes closed by their deadline")
        assert took < 2.0
        assert server.server.tls_handshakes == 0
        with Client.connect(server.address, tls=pki.client_context()) as newcomer:
            message = newcomer.read("q")
            assert message is not None and message.data == b"during"


def test_a_newcomer_gets_in_once_a_slot_frees(
    server_factory: Factory, pki: Pki, stalled: Callable[[tuple[str, int], int, bool], Stalled]
) -> None:
    server = tls_server(server_factory, pki, max_unauthenticated=4, handshake_timeout=1.0)
    peers = stalled(server.host_port, 4, True)
    server.wait_until(lambda: server.server.tls_handshakes == 4, what="the quota full")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        Client.connect(server.address, tls=pki.client_context(), timeout=2)
    peers.close()  # the strangers give up: their slots free at once, not at their deadline
    server.wait_until(lambda: server.server.tls_handshakes == 0, what="the slots free")
    with Client.connect(server.address, tls=pki.client_context(), timeout=2) as client:
        client.create("in")


def test_the_first_request_right_behind_the_handshake_is_answered(server_factory: Factory, pki: Pki) -> None:
    # A client sends its first frame as soon as its handshake is done: those bytes may arrive before the
    # connection is handed to its session. Many connections, so that the race is run many times.
    server = tls_server(server_factory, pki)
    context = pki.client_context()
    for i in range(40):
        with Client.connect(server.address, tls=context, timeout=3) as client:
            client.create(f"q{i}")
    # The server sees each close a moment after the client makes it: wait for the last one.
    server.wait_until(lambda: server.server.tls_handshakes == 0, what="the handshakes to end")
    server.wait_until(lambda: len(server.server.sessions) == 0, what="the sessions to close")


def test_a_failed_handshake_frees_its_slot(server_factory: Factory, pki: Pki) -> None:
    server = tls_server(server_factory, pki, max_unauthenticated=2)
    for _ in range(10):  # garbage where a ClientHello belongs: the server ends each handshake at once
        with socket.create_connection(server.host_port, timeout=3) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05" + b"\x00" * 64)
            with contextlib.suppress(ConnectionError):
                while sock.recv(4096):
                    pass
    for _ in range(10):  # a client that trusts another CA gives up half-way
        with pytest.raises(ssl.SSLCertVerificationError):
            Client.connect(server.address, tls=pki.client_context(trust="rogue-ca"), timeout=3)
    server.wait_until(lambda: server.server.tls_handshakes == 0, what="failed handshakes to end")
    with Client.connect(server.address, tls=pki.client_context(), timeout=3) as client:
        client.create("still-in")


# --- memory, on a server process of its own -------------------------------------------------------------

FLOOD = 2000
QUOTA = 256


def test_a_flood_of_stalled_handshakes_costs_bounded_memory_given_back_after(
    tmp_path: Path, pki: Pki, stalled: Callable[[tuple[str, int], int, bool], Stalled]
) -> None:
    flags = [
        "--tls-cert", pki.cert("server"), "--tls-key", pki.key("server"), "--log-level", "warning",
        "--max-unauthenticated", str(QUOTA), "--handshake-timeout", "1", "--max-connections", str(FLOOD + 100),
    ]  # fmt: skip
    with ChildServer(tmp_path, *flags) as server:
        with Client.connect(server.address, tls=pki.client_context()) as probe:
            probe.create("p")
            idle = server.rss()
            peers = stalled(("127.0.0.1", server.port), FLOOD, True)
            time.sleep(0.5)
            during = server.rss()
            assert peers.open() <= QUOTA
            probe.send("p", b"x")
            assert probe.read("p") is not None
            eventually(lambda: peers.open() == 0, 5.0, "every stalled handshake closed")
            peers.close()
            time.sleep(2.5)  # the heap is trimmed a second after a quota's worth of handshakes ended
            after = server.rss()
        print(f"RSS idle {idle >> 20} MiB, {FLOOD} stalled: {during >> 20} MiB, after: {after >> 20} MiB")
        # A stalled handshake costs some 60 KiB: the quota's worth, not the flood's.
        assert during - idle < QUOTA * (100 << 10) + (16 << 20)
        assert after - idle < 16 << 20
        server.assert_no_unhandled_errors()

"""Faults injected at the connection level: killed clients, half-written frames, resets, silent peers, and
ten thousand connections held at once. Every test ends with no message lost and the server serving.

``DBQUEUE_FAULT_CONNECTIONS`` (default 10000) sets how many connections the
many-connections test holds.
"""

from __future__ import annotations

import errno
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from child_server import ChildServer
from dbqueue import Client, LimitExceeded
from dbqueue.protocol import (
    ClientConnection,
    Confirm,
    Confirmed,
    Enqueue,
    Hello,
    HelloOk,
    ListQueues,
    Message,
    ObjectQueued,
    Read,
    encode,
)

if TYPE_CHECKING:
    from conftest import ServerThread

Factory = Callable[..., "ServerThread"]


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 0, 0, 0, 0]))
    sock.close()


def queue_figures(server: ServerThread, name: str = "q") -> dict[str, int]:
    return server.call(lambda: server.server.broker.queues[name.encode()].stats())  # type: ignore[no-any-return]


def settled(server: ServerThread, name: str, ready: int, sessions: int = 0) -> Callable[[], bool]:
    """A `wait_until` predicate: ``ready`` messages ready, none in flight or waiting, ``sessions`` connections."""

    def check() -> bool:
        queue = server.server.broker.queues[name.encode()]
        return (queue.ready, queue.in_flight, queue.waiting, len(server.server.sessions)) == (ready, 0, 0, sessions)

    return check


# --- a client process killed while it holds messages ------------------------------------------------

_SYNC_CHILD = """
import sys, time
from dbqueue import PipelinedClient
from dbqueue.protocol import NEVER_MS, Read
connection = PipelinedClient.connect(sys.argv[1])
connection.send_many([Read("q", NEVER_MS)] * {held})  # no timeout: only the end of the connection gives them back
held = [response.id for _, response in connection.receive({held})]
# More pipelined behind, never answered: waiting reads on another queue, and half a frame.
connection.send_many([Read("empty", 0, 60_000)] * 50)
connection.send_bytes(bytes([0xDB, 0x10, 0, 0, 0, 0, 0, 9, 0, 0, 1, 0]) + b"partial")
print("holding", *held, flush=True)
time.sleep(60)
"""

_ASYNC_CHILD = """
import asyncio, sys
from dbqueue import AsyncClient

async def main():
    client = await AsyncClient.connect(sys.argv[1])
    held = await asyncio.gather(*(client.read("q") for _ in range({held})))
    waiting = [asyncio.ensure_future(client.read("empty", wait=60.0)) for _ in range(50)]
    await asyncio.sleep(0.05)
    print("holding", *(message.id for message in held), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_client_killed_mid_pipeline_gives_its_messages_back(server: ServerThread, flavour: str) -> None:
    held = 20
    with Client.connect(server.address) as owner:
        owner.create("q")
        owner.create("empty")
        ids = owner.send_batch("q", [b"message-%d" % i for i in range(held + 5)])
        script = (_SYNC_CHILD if flavour == "sync" else _ASYNC_CHILD).format(held=held)
        child = subprocess.Popen([sys.executable, "-c", script, server.address], stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("holding"), f"the child client failed: {line!r}"
            assert sorted(map(int, line.split()[1:])) == ids[:held]
            empty = server.call(lambda: server.server.broker.queues[b"empty"])
            server.wait_until(lambda: empty.waiting == 50, what="the child's waiting reads")
            child.send_signal(signal.SIGKILL)
            child.wait(5)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        server.wait_until(lambda: server.server.broker.queues[b"q"].in_flight == 0, what="the killed client's messages")
        assert queue_figures(server, "empty")["waiting"] == 0  # its waiting reads are retired, not left to eat sends
        messages = owner.read_batch("q", 100)
        assert [m.id for m in messages] == ids  # all back, at the front, in their order
        assert [m.deliveries for m in messages] == [2] * held + [1] * 5
        assert [m.data for m in messages] == [b"message-%d" % i for i in range(held + 5)]
        owner.send("empty", b"for a live reader")
        assert owner.read("empty").data == b"for a live reader"


# --- half-written frames, resets ------------------------------------------------------------------

HALF_FRAME = encode(99, Enqueue("q", b"never complete " * 50))


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 13, 200, len(HALF_FRAME) - 1])
@pytest.mark.parametrize("close", ["fin", "reset"])
def test_half_written_frames_then_close_while_holding_messages(server: ServerThread, cut: int, close: str) -> None:
    with Client.connect(server.address) as owner:
        owner.create("q")
        owner.send_batch("q", [b"a", b"b", b"c"])
        sock = socket.create_connection(server.host_port, timeout=3)
        sock.sendall(encode(1, Hello()) + encode(2, Read("q")) + encode(3, Read("q")))
        connection = ClientConnection()
        answers = []
        while len(answers) < 3:
            answers.extend(connection.receive_data(sock.recv(65536)))
        assert [type(r) for _, r in answers] == [HelloOk, Message, Message]
        sock.sendall(HALF_FRAME[:cut])
        if close == "reset":
            reset(sock)
        else:
            sock.close()
        server.wait_until(settled(server, "q", ready=3, sessions=1), what="the half-written connection to go")
        assert [m.data for m in owner.read_batch("q", 10)] == [b"a", b"b", b"c"]  # the half frame added nothing


def test_a_reset_while_the_server_is_still_writing(server: ServerThread) -> None:
    """A peer that pipelines reads of 8 MiB, reads none of it, then resets: the server's pending writes fail."""
    payloads = [bytes([i]) * (256 * 1024) for i in range(32)]
    with Client.connect(server.address) as owner:
        owner.create("q")
        for payload in payloads:
            owner.send("q", payload)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.host_port)
        sock.sendall(encode(1, Hello()) + b"".join(encode(2 + i, Read("q")) for i in range(len(payloads))))
        server.wait_until(lambda: server.server.broker.queues[b"q"].in_flight == len(payloads), what="the reads")
        reset(sock)
        server.wait_until(settled(server, "q", ready=len(payloads), sessions=1), what="the reset connection to go")
        assert [m.data for m in (owner.read("q") for _ in payloads)] == payloads
        assert owner.read("q") is None


def test_resets_at_every_point_of_a_request_stream(server: ServerThread) -> None:
    """Many short connections, each reset at a different byte of a pipelined Hello / send / read stream."""
    with Client.connect(server.address) as owner:
        owner.create("q")
        stream = encode(1, Hello()) + encode(2, Enqueue("q", b"payload")) + encode(3, Read("q"))
        whole_send = len(encode(1, Hello()) + encode(2, Enqueue("q", b"payload")))
        cuts = range(0, len(stream) + 1)
        for cut in cuts:
            sock = socket.create_connection(server.host_port, timeout=3)
            sock.sendall(stream[:cut])
            reset(sock)
        server.wait_until(lambda: len(server.server.sessions) == 1, what="every reset connection to go")
        figures = queue_figures(server)
        # A reset may discard bytes the server had not read yet, never a message it took.
        assert figures["enqueued"] <= sum(1 for cut in cuts if cut >= whole_send)
        assert (figures["ready"], figures["in_flight"]) == (figures["enqueued"], 0)
        assert [m.data for m in owner.read_batch("q", 1000)] == [b"payload"] * figures["enqueued"]


# --- peers that connect and say nothing --------------------------------------------------------------


@pytest.mark.parametrize("idle_timeout", [None, 0.3], ids=["no-idle-timeout", "idle-timeout"])
@pytest.mark.parametrize("auth_token", [None, b"secret"], ids=["open", "token"])
def test_a_peer_that_connects_and_sends_nothing(
    server_factory: Factory, idle_timeout: float | None, auth_token: bytes | None
) -> None:
    server = server_factory(idle_timeout=idle_timeout, auth_token=auth_token)
    silent = [server.raw() for _ in range(5)]
    server.wait_until(lambda: len(server.server.sessions) == 5, what="the silent peers to be accepted")
    with Client.connect(server.address, token=auth_token) as client:  # others are served meanwhile
        client.create("q")
        client.send("q", b"x")
        for _ in range(6):
            time.sleep(0.1)
            client.stats("q")  # active: kept
        if idle_timeout is None:
            assert server.call(lambda: len(server.server.sessions)) == 6  # they are held; nothing times them out
        else:
            assert server.call(lambda: len(server.server.sessions)) == 1
            assert all(peer.at_eof() for peer in silent)
        assert client.read("q").data == b"x"
    # With no idle timeout the server's stop closes them (the fixture checks it stops cleanly).


def test_silent_peers_at_the_connection_limit_are_reaped_to_make_room(server_factory: Factory) -> None:
    server = server_factory(max_connections=20, idle_timeout=0.3)
    for _ in range(20):
        server.raw()
    server.wait_until(lambda: len(server.server.sessions) == 20, what="20 silent peers")
    with pytest.raises(LimitExceeded):
        Client.connect(server.address)
    server.wait_until(lambda: not server.server.sessions, what="the silent peers to be reaped")
    with Client.connect(server.address) as client:
        client.create("q")


# --- ten thousand connections ---------------------------------------------------------------------------

CONNECTIONS = int(os.environ.get("DBQUEUE_FAULT_CONNECTIONS", "10000"))


def _raise_file_limit(need: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to ``need`` (children inherit it); return the old limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"{CONNECTIONS} connections need {need} file descriptors; RLIMIT_NOFILE's hard limit is {hard}")
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError) as exc:
        pytest.skip(f"cannot raise RLIMIT_NOFILE to {need}: {exc}")
    return soft, hard


def _ephemeral_ports() -> int:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (FileNotFoundError, ValueError):
        return 1 << 16
    return high - low + 1


class Peers:
    """Many non-blocking sockets driven by one selector, each with its own `ClientConnection`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.protocols: list[ClientConnection] = []

    def connect(self, count: int, batch: int = 1000) -> None:
        for start in range(0, count, batch):
            opening = []
            for _ in range(min(batch, count - start)):
                sock = socket.socket()
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", self.port))
                assert code in (0, errno.EINPROGRESS), os.strerror(code)
                self.selector.register(sock, selectors.EVENT_WRITE)
                opening.append(sock)
            self._wait(len(opening), lambda sock: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
            self.socks.extend(opening)
            self.protocols.extend(ClientConnection() for _ in opening)

    def exchange(self, indices: list[int], requests: Callable[[int], list[object]]) -> dict[int, list[object]]:
        """Send each peer in ``indices`` its ``requests(i)`` in one write; return every peer's answers."""
        answers: dict[int, list[object]] = {}
        expected: dict[socket.socket, tuple[int, int]] = {}
        for i in indices:
            frames = b"".join(encode(n + 1, request) for n, request in enumerate(requests(i)))  # type: ignore[arg-type]
            sent = self.socks[i].send(frames)
            assert sent == len(frames)  # a few dozen bytes: the kernel takes them at once
            expected[self.socks[i]] = (i, len(requests(i)))
            answers[i] = []
            self.selector.register(self.socks[i], selectors.EVENT_READ)

        def receive(sock: socket.socket) -> bool | None:
            i, count = expected[sock]
            data = sock.recv(65536)
            assert data, f"the server closed connection {i}"
            answers[i].extend(response for _, response in self.protocols[i].receive_data(data))
            return True if len(answers[i]) >= count else None

        self._wait(len(indices), receive)
        return answers

    def _wait(self, count: int, done: Callable[[socket.socket], bool | None], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while count:
            events = self.selector.select(max(0.0, deadline - time.monotonic()))
            assert events or time.monotonic() < deadline, f"{count} peers did not get there within {within}s"
            for key, _ in events:
                result = done(key.fileobj)  # type: ignore[arg-type]
                if result is not None:
                    assert result, "a connection failed"
                    self.selector.unregister(key.fileobj)
                    count -= 1

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()


def test_ten_thousand_connections_held_while_messages_flow(tmp_path: Path) -> None:
    if _ephemeral_ports() < CONNECTIONS + 100:
        pytest.skip(f"only {_ephemeral_ports()} ephemeral ports for {CONNECTIONS} connections")
    old = _raise_file_limit(CONNECTIONS + 1000)
    flags = ["--max-connections", str(CONNECTIONS + 100), "--log-level", "warning"]
    peers = None
    try:
        with ChildServer(tmp_path, *flags) as server:
            rss_idle = server.rss()
            with Client.connect(server.address) as observer:
                observer.create("flow")
                started = time.monotonic()
                peers = Peers(server.port)
                peers.connect(CONNECTIONS)
                connected = time.monotonic() - started
                everyone = list(range(CONNECTIONS))
                # Every connection says Hello and sends a message ...
                sent = peers.exchange(everyone, lambda i: [Hello(), Enqueue("flow", b"message-%05d" % i)])
                assert all(isinstance(a[0], HelloOk) and isinstance(a[1], ObjectQueued) for a in sent.values())
                # ... then reads one (whichever comes) ...
                read = peers.exchange(everyone, lambda i: [Read("flow")])
                messages = {i: a[0] for i, a in read.items()}
                assert all(isinstance(m, Message) for m in messages.values())
                assert sorted(m.data for m in messages.values()) == sorted(b"message-%05d" % i for i in everyone)  # type: ignore[union-attr]
                # ... and every other one confirms it; the rest keep theirs in flight.
                confirmed = peers.exchange(everyone[::2], lambda i: [Confirm(messages[i].id)])  # type: ignore[union-attr]
                assert all(a == [Confirmed()] for a in confirmed.values())
                flowed = time.monotonic() - started - connected
                observer.connection.send_many([ListQueues()])
                stats = observer.connection.receive(1)[0][1].stats  # type: ignore[union-attr]
                assert stats["connections"] == CONNECTIONS + 1
                assert stats["queues"][0]["in_flight"] == CONNECTIONS - len(everyone[::2])
                rss_held = server.rss()
                peers.close()
                peers = None
                # Closing gives the unconfirmed ones back, exactly those.
                deadline = time.monotonic() + 30
                while (figures := observer.stats("flow"))["in_flight"]:
                    assert time.monotonic() < deadline, figures
                    time.sleep(0.05)
                back = observer.read_batch("flow", 65535)
                assert sorted(m.data for m in back) == sorted(messages[i].data for i in everyone[1::2])  # type: ignore[union-attr]
                assert observer.stats("flow")["confirmed"] == len(everyone[::2])
                observer.confirm_batch([m.id for m in back])
            server.stop()
            server.assert_no_unhandled_errors()
    finally:
        if peers is not None:
            peers.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    print(
        f"\n{CONNECTIONS} connections: connected in {connected:.2f}s, {7 * CONNECTIONS // 2} requests answered in "
        f"{flowed:.2f}s; server RSS {rss_idle / 2**20:.0f} MiB idle, {rss_held / 2**20:.0f} MiB holding them; 0 lost"
    )

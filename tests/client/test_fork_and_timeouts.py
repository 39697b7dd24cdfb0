"""Client failures that must say what they are, against real servers over real sockets.

* A client used on both sides of ``os.fork()``: the child's first use raises
  `ConnectionLost` saying so, and the parent's connection goes on untouched
  (the child neither shuts the socket down nor sends a byte on it, TLS
  included). The child runs real code after a real fork and reports through a pipe.
* A timeout is a `Timeout` (a `ConnectionLost` and a `TimeoutError`) that says
  the request may have been carried out; the server is stopped with SIGSTOP.
* A TLS handshake that fails is a `TlsHandshakeFailed` (a `DbQueueError`, and
  still the `ssl` error it was), with the ssl error as its ``__cause__``.
* Arguments out of range say so: message ids, visibility timeouts, empty batches.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from child_server import ChildServer
from dbqueue import (
    NEVER,
    AsyncClient,
    Client,
    ConnectionLost,
    DbQueueError,
    PipelinedClient,
    Timeout,
    TlsHandshakeFailed,
)
from dbqueue.client.commands import REQUESTS
from dbqueue.protocol import messages as msg
from dbqueue.server.security import server_tls_context
from pki import Pki, make_pki

if TYPE_CHECKING:
    from conftest import ServerThread

FORKED = "connected in another process before a fork: connect anew in this one"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def child_server(tmp_path: Path) -> Iterator[Callable[..., ChildServer]]:
    """Start `dbqueue serve` processes (SIGSTOP stops the server, not this test); stop them at teardown."""
    started: list[ChildServer] = []

    def start(*flags: str) -> ChildServer:
        server = ChildServer(tmp_path, *flags).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.running():
            os.kill(server.pid, signal.SIGCONT)  # a test that failed while the server was stopped
            server.stop()


def in_child(body: Callable[[], dict[str, Any]], parent: Callable[[], None]) -> dict[str, Any]:
    """Fork; the child runs ``body`` and reports its result (JSON) through a pipe, then waits for the
    parent to run ``parent`` while the child is still alive, and exits. Returns the child's report."""
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(report_r)
            os.close(go_w)
            try:
                result = body()
            except BaseException as exc:  # reported to the parent, which fails the test
                result = {"unexpected": repr(exc)}
            os.write(report_w, json.dumps(result).encode())
            os.close(report_w)
            os.read(go_r, 1)  # alive while the parent works
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    os.close(go_r)
    try:
        chunks = []
        while chunk := os.read(report_r, 65536):
            chunks.append(chunk)
        report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
        parent()  # the child still holds its copy of the socket meanwhile
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(report_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return report


def attempt(call: Callable[[], object]) -> dict[str, Any]:
    try:
        call()
    except Exception as exc:  # the test compares what was raised
        return {"type": type(exc).__name__, "message": str(exc), "connection_lost": isinstance(exc, ConnectionLost)}
    return {"type": None}


# --- fork ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_used_after_a_fork_fails_in_the_child_and_the_parent_goes_on(
    child_server: Callable[..., ChildServer], pki: Pki, tls: bool
) -> None:
    flags = ("--tls-cert", pki.cert("server"), "--tls-key", pki.key("server")) if tls else ()
    server = child_server(*flags)
    context = pki.client_context() if tls else None
    client = Client.connect(server.address, timeout=5, tls=context)
    client.create("fork")
    assert client.send("fork", b"parent-0") > 0

    def child() -> dict[str, Any]:
        first = attempt(lambda: client.send("fork", b"child"))
        again = attempt(lambda: client.read("fork"))
        client.close()  # must close the child's copy only: no shutdown, no TLS close_notify
        with Client.connect(server.address, timeout=5, tls=context) as own:  # a new connection works
            own.send("fork", b"child-own")
        return {"first": first, "again": again}

    parent_ids: list[int] = []

    def parent() -> None:  # while the child is alive, with its copy of the socket
        parent_ids.extend(client.send("fork", f"parent-{i}".encode()) for i in range(1, 50))

    report = in_child(child, parent)

    assert report["first"]["type"] == "ConnectionLost", report
    assert FORKED in report["first"]["message"], report
    assert report["again"]["type"] == "ConnectionLost", report
    assert len(parent_ids) == 49
    # The child has exited and closed its copy: the parent's connection still works, and holds its own.
    for i in range(50, 60):
        client.send("fork", f"parent-{i}".encode())
    got = [message.data for message in client.read_batch("fork", 100)]
    assert sorted(got) == sorted([f"parent-{i}".encode() for i in range(60)] + [b"child-own"])
    client.close()


def test_a_fork_while_another_thread_waits_on_the_client_does_not_hang_the_child(
    child_server: Callable[..., ChildServer],
) -> None:
    """A thread of the parent holds the read role in a waiting read when the fork comes: the child, which
    has no such thread, still gets its error at once (its state and locks are made anew)."""
    server = child_server()
    client = Client.connect(server.address, timeout=5)
    client.create("waiting")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lambda: client.read("waiting", wait=10))
        time.sleep(0.3)  # the read is on the server, its thread polling the socket

        def child() -> dict[str, Any]:
            return {"first": attempt(lambda: client.send("waiting", b"child"))}

        report = in_child(child, lambda: None)
        client.send("waiting", b"parent")
        message = waiting.result(timeout=5)
    assert report["first"]["type"] == "ConnectionLost" and FORKED in report["first"]["message"], report
    assert message is not None and message.data == b"parent"
    client.close()


def test_an_async_client_used_after_a_fork_fails_in_the_child_and_the_parent_goes_on(
    child_server: Callable[..., ChildServer],
) -> None:
    server = child_server()
    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(AsyncClient.connect(server.address, timeout=5))
        loop.run_until_complete(client.create("fork"))

        def child() -> dict[str, Any]:
            first = attempt(lambda: asyncio.run(client.send("fork", b"child")))
            asyncio.run(client.close())  # leaves the parent's transport alone
            return {"first": first}

        sent: list[int] = []
        report = in_child(child, lambda: sent.append(loop.run_until_complete(client.send("fork", b"parent"))))
        assert report["first"]["type"] == "ConnectionLost", report
        assert FORKED in report["first"]["message"], report
        loop.run_until_complete(client.send("fork", b"after"))
        got = loop.run_until_complete(client.read_batch("fork", 10))
        assert [message.data for message in got] == [b"parent", b"after"]
        loop.run_until_complete(client.close())
    finally:
        loop.close()


# --- timeouts ------------------------------------------------------------------------------------------


def test_a_timeout_is_a_timeout_error_that_says_the_send_may_be_queued_and_the_connection_lives_on(
    child_server: Callable[..., ChildServer],
) -> None:
    server = child_server()
    client = Client.connect(server.address, timeout=0.5)
    client.create("slow")
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(Timeout) as caught:
            client.send("slow", b"maybe")
        with pytest.raises(Timeout, match=r"did not answer the handshake within 0\.5 s"):
            Client.connect(server.address, timeout=0.5)  # the kernel accepts, the server says nothing
    finally:
        os.kill(server.pid, signal.SIGCONT)
    error = caught.value
    assert isinstance(error, ConnectionLost) and isinstance(error, TimeoutError) and isinstance(error, DbQueueError)
    assert "may still have been carried out" in str(error) and "stays usable" in str(error)
    # The same client goes on, and the send that timed out was queued.
    assert client.stats("slow")["ready"] == 1
    assert client.read("slow") is not None
    client.close()


def test_a_raw_receive_that_times_out_raises_timeout(child_server: Callable[..., ChildServer]) -> None:
    server = child_server()
    raw = PipelinedClient.connect(server.address, timeout=0.5)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        raw.send_many([msg.CreateQueue("raw")])
        with pytest.raises(Timeout):
            raw.receive(1)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    ((_, answer),) = raw.receive(1)  # the connection lives on: the answer comes once the server runs
    assert isinstance(answer, msg.QueueCreated)
    raw.close()


def test_an_async_timeout_is_a_timeout(child_server: Callable[..., ChildServer]) -> None:
    server = child_server()

    async def main() -> None:
        client = await AsyncClient.connect(server.address, timeout=0.5)
        await client.create("slow")
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(Timeout) as caught:
                await client.send("slow", b"maybe")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ConnectionLost)
        assert "may still have been carried out" in str(caught.value)
        await client.close()

    asyncio.run(main())


# --- TLS -----------------------------------------------------------------------------------------------


def tls_server(factory: Callable[..., ServerThread], pki: Pki) -> ServerThread:
    return factory(ssl=server_tls_context(pki.cert("server"), pki.key("server")))


def test_an_untrusted_certificate_is_a_dbqueue_error_with_the_ssl_error_as_cause(
    server_factory: Callable[..., ServerThread], pki: Pki
) -> None:
    server = tls_server(server_factory, pki)
    with pytest.raises(DbQueueError) as caught:
        Client.connect(server.address, tls=pki.client_context(trust="rogue-ca"), timeout=3)
    error = caught.value
    assert isinstance(error, TlsHandshakeFailed) and isinstance(error, ConnectionLost)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    # Still what it was, for code written before: the CLI reads verify_message.
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_message == error.__cause__.verify_message
    assert str(error).startswith(f"TLS: the certificate of {server.address} is not trusted (")
    assert "ssl.SSLContext that trusts the CA" in str(error)

    async def connect() -> None:
        await AsyncClient.connect(server.address, tls=pki.client_context(trust="rogue-ca"), timeout=3)

    with pytest.raises(TlsHandshakeFailed) as async_caught:
        asyncio.run(connect())
    assert isinstance(async_caught.value.__cause__, ssl.SSLCertVerificationError)
    assert "is not trusted" in str(async_caught.value)


def test_tls_to_a_plain_server_is_a_dbqueue_error(server: ServerThread, pki: Pki) -> None:
    with pytest.raises(TlsHandshakeFailed) as caught:
        Client.connect(server.address, tls=pki.client_context(), timeout=3)
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    assert isinstance(caught.value, ssl.SSLError)
    assert str(caught.value).startswith(f"TLS handshake with {server.address} failed: ")


def test_a_plain_client_on_a_tls_port_is_told_to_try_tls(server_factory: Callable[..., ServerThread], pki: Pki) -> None:
    server = tls_server(server_factory, pki)
    with pytest.raises(ConnectionLost, match=r"does it serve TLS\? connect with tls=True or an ssl\.SSLContext"):
        Client.connect(server.address, timeout=3)


def test_a_tls_client_without_the_certificate_the_server_requires_is_told_so(
    server_factory: Callable[..., ServerThread], pki: Pki
) -> None:
    server = server_factory(ssl=server_tls_context(pki.cert("server"), pki.key("server"), pki.cert("ca")))
    with pytest.raises(ConnectionLost, match=r"does it require a client certificate\?"):
        Client.connect(server.address, tls=pki.client_context(), timeout=3)
    with Client.connect(server.address, tls=pki.client_context("client"), timeout=3) as client:
        client.create("with-a-certificate")


# --- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_a_message_id_out_of_range_says_so(address: str, bad: int) -> None:
    with Client.connect(address, timeout=3) as client:
        for call in (
            lambda: client.confirm(bad),
            lambda: client.confirm_batch([1, bad]),
            lambda: client.touch(bad),
            lambda: client.release(bad),
            lambda: client.dead_letter(bad),
        ):
            with pytest.raises(ValueError, match=r"message id must be 0 \.\. 2\*\*64-1, got "):
                call()
        client.create("q")  # nothing was sent: the connection is fine
        assert client.confirm_batch([2**64 - 1]) != []  # the top id is in range (and unknown)


def test_a_visibility_timeout_too_long_points_at_never() -> None:
    with pytest.raises(ValueError, match=r"must be at most 4294967\.294 s \(for no timeout, use dbqueue\.NEVER\)"):
        REQUESTS.read("q", visibility_timeout=4294967.295)
    with pytest.raises(ValueError, match=r"dbqueue\.NEVER is only a visibility timeout"):
        REQUESTS.send("q", b"x", delay=NEVER)


def test_empty_batches_are_refused_alike_and_say_to_skip_the_call() -> None:
    for call in (lambda: REQUESTS.send_batch("q", []), lambda: REQUESTS.confirm_batch([])):
        with pytest.raises(ValueError, match=r"an empty batch: skip the call"):
            call()

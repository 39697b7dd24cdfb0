"""Shared fixtures: a real server on port 0 in a background thread, and a raw-socket peer.

The server runs in its own event loop (`dbqueue.server.new_event_loop`, so uvloop
when installed) on a daemon thread. Its loop's exception handler records every
context it is handed; the fixture fails the test at teardown if any were seen,
so a callback that blew up inside the server cannot hide behind a passing test.
Tests that expect such an error call `ServerThread.take_errors()` themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from dbqueue import Limits, Server
from dbqueue.protocol import HEADER, HEADER_SIZE, MAGIC
from dbqueue.protocol import messages as msg
from dbqueue.server import new_event_loop

pytest_plugins = ["pytester"]  # test_fixtures.py runs a small session against this conftest

T = TypeVar("T")

LIMIT_NAMES = frozenset(field.name for field in dataclasses.fields(Limits))

START_TIMEOUT = 5.0


class ServerThread:
    """A `dbqueue.Server` serving from its own loop on a background thread.

    ``options`` are `Server` keywords and `Limits` fields alike (``max_in_flight=3``).
    """

    def __init__(self, **options: Any) -> None:
        self.loop = new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        limits = Limits(**{name: options.pop(name) for name in LIMIT_NAMES & options.keys()})
        self.server = Server(port=0, limits=limits, **options)
        self._thread = threading.Thread(target=self._run, name="dbqueue-test-server", daemon=True)
        self._stopped = False
        self._raw: list[RawConnection] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(START_TIMEOUT)
        return self

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def host_port(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop thread (the broker is not thread-safe) and return its result."""

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(START_TIMEOUT)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
        """Poll ``predicate`` on the loop thread until it holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.002)

    def raw(self) -> RawConnection:
        """Open a plain-socket connection to this server (closed when the server stops)."""
        connection = RawConnection(self.host_port)
        self._raw.append(connection)
        return connection

    def take_errors(self) -> list[dict[str, Any]]:
        """Return and forget the exception contexts the server's loop has seen."""
        self.call(lambda: None)  # let callbacks already queued on the loop run first
        errors, self.errors = self.errors, []
        return errors

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for connection in self._raw:
            connection.close()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(START_TIMEOUT)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(START_TIMEOUT)
            assert not self._thread.is_alive(), "the server's loop did not stop"
        self.loop.close()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerThread]]:
    """Start servers with chosen options (``server_factory(max_message_size=1024)``: `Server` keywords or
    `Limits` fields); stop and check them after."""
    started: list[ServerThread] = []

    def start(**kwargs: Any) -> ServerThread:
        handle = ServerThread(**kwargs).start()
        started.append(handle)
        return handle

    yield start
    errors = []
    for handle in started:
        handle.stop()
        errors.extend(handle.errors)
    if errors:
        pytest.fail(
            "the server's event loop saw unhandled exceptions:\n"
            + "\n".join(f"  {context.get('message')}: {context.get('exception')!r}" for context in errors)
        )


@pytest.fixture
def server(server_factory: Callable[..., ServerThread]) -> ServerThread:
    """A server with default options."""
    return server_factory()


@pytest.fixture
def address(server: ServerThread) -> str:
    return server.address


# --- a raw peer, for bytes no well-behaved client would send ---------------------------


class RawConnection:
    """A plain socket that writes whatever it is given and reads whole frames back."""

    def __init__(self, host_port: tuple[str, int], timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(host_port, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def recv_frame(self) -> tuple[int, int, int, bytes]:
        """Return the next (opcode, flags, request_id, body); fail if the server closes first."""
        assert self._fill(HEADER_SIZE), "the server closed the connection instead of answering"
        magic, opcode, flags, request_id, length = HEADER.unpack_from(self._buffer)
        assert magic == MAGIC, f"the server sent a bad magic byte {magic:#x}"
        assert self._fill(HEADER_SIZE + length), "the server closed the connection mid-frame"
        body = self._buffer[HEADER_SIZE : HEADER_SIZE + length]
        self._buffer = self._buffer[HEADER_SIZE + length :]
        return opcode, flags, request_id, body

    def at_eof(self) -> bool:
        """True when the server has closed its side (after everything it sent was read)."""
        if self._buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class Peer:
    """A raw connection that has said Hello (version 3) and answers requests one at a time."""

    def __init__(self, connection: RawConnection) -> None:
        self.connection = connection
        self.next_id = 1
        assert isinstance(self.call(msg.Hello()), msg.HelloOk)

    def call(self, request: Any) -> Any:
        request_id = self.next_id
        self.next_id += 1
        self.connection.send(msg.encode(request_id, request))
        opcode, flags, answered, body = self.connection.recv_frame()
        assert answered == request_id
        return msg.decode_response(opcode, body, flags)


@pytest.fixture
def raw(server: ServerThread) -> Callable[[], RawConnection]:
    """Open raw connections to the default server; all are closed after the test."""
    return server.raw

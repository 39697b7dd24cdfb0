"""A `dbqueue serve --http-port` subprocess with SQS credentials, for the tests driving real SQS clients."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from child_server import ChildServer, free_port

START_TIMEOUT = 15.0


class Serving:
    """The server's native address, its HTTP port and its SQS endpoint."""

    def __init__(self, child: ChildServer, http_port: int) -> None:
        self.child = child
        self.http_port = http_port
        self.endpoint = f"http://127.0.0.1:{http_port}"
        self.address = child.address
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the native port answers first; the listener starts at the end of the server's start
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the SQS listener did not come up on {self.endpoint}:\n{child.log_tail()}")
                time.sleep(0.02)


@contextlib.contextmanager
def serve_sqs(tmp_path: Path, access_key: str, secret_key: str) -> Iterator[Serving]:
    """Start the server with one access key, yield it, and stop it, checking its log for unhandled errors."""
    http_port = free_port()
    env = {"DBQUEUE_SQS_ACCESS_KEY_ID": access_key, "DBQUEUE_SQS_SECRET_ACCESS_KEY": secret_key}
    child = ChildServer(tmp_path, "--http-port", str(http_port), "--log-level", "info", env=env)
    with child:  # started here, killed on the way out if it did not stop
        yield Serving(child, http_port)
        child.stop()
        child.assert_no_unhandled_errors()

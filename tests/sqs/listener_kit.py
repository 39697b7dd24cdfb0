"""Test kit for the HTTP listener: a real `Server` on its own loop thread with an `HttpListener` beside it.

The listener is started on the server's loop (`Listening.start`), as
`Server.start` will start it once the ``--http-port`` wiring is in, so these
tests depend on nothing but the listener itself. `client` makes a boto3 SQS
client (the JSON protocol) or a botocore one speaking the Query protocol (the
model `sqs_kit.query_model_dir` restores) against it over real HTTP.
"""

from __future__ import annotations

import asyncio
import http.client
import os
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from dbqueue.server.http import HttpListener

T = TypeVar("T")

ACCESS_KEY = "AKIDLISTENER"
SECRET_KEY = "listener/secret+key"
REGION = "us-east-1"
START_TIMEOUT = 10.0
# The SQS fast path serves the listeners of these tests unless DBQUEUE_TEST_SQS_FAST=0 asks for aiohttp alone.
FAST_PATH = os.environ.get("DBQUEUE_TEST_SQS_FAST", "1") != "0"


class Listening:
    """A started server (a conftest `ServerThread`) and the HTTP listener started next to it, on its loop."""

    def __init__(self, thread: Any, listener: HttpListener) -> None:
        self.thread = thread
        self.listener = listener

    @classmethod
    def start(cls, thread: Any, *, fast: bool = FAST_PATH, **options: Any) -> Listening:
        """Start an `HttpListener` (port 0, ``options`` as its keywords) on ``thread``'s loop.

        ``fast`` is the listener's ``fast_path``: its connections are `SqsConnection`s
        (the SQS fast path), or, off, aiohttp's alone.
        """

        async def make() -> HttpListener:
            listener = HttpListener(thread.server, 0, fast_path=fast, **options)
            await listener.start()
            return listener

        return cls(thread, asyncio.run_coroutine_threadsafe(make(), thread.loop).result(START_TIMEOUT))

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.thread.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.listener.stop())

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


def client(
    endpoint: str,
    protocol: str = "json",
    *,
    model_root: Path | None = None,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    read_timeout: float = 30.0,
) -> Any:
    """An SQS client over real HTTP: boto3's (JSON), or botocore's with the Query model of ``model_root``."""
    config = Config(retries={"max_attempts": 1}, read_timeout=read_timeout, connect_timeout=5)
    options: dict[str, Any] = dict(
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )
    if protocol == "json":
        return boto3.client("sqs", **options)
    assert model_root is not None
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, str(model_root))
    sqs_client = session.create_client("sqs", **options)
    assert sqs_client.meta.service_model.protocol == "query"
    return sqs_client


def signed(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> tuple[str, dict[str, str], bytes]:
    """A request signed with botocore's SigV4 signer: (path and query, headers, body) to send as they are."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key, secret_key), "sqs", REGION).add_auth(request)
    prepared = request.prepare()
    target = prepared.url.split("://", 1)[1]
    path = "/" + target.split("/", 1)[1] if "/" in target else "/"
    return path, {name: str(value) for name, value in prepared.headers.items()}, body


def exchange(
    listening: Listening, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a fresh connection; return the status, headers (lower-case names) and body."""
    return exchange_port(listening.port, method, path, headers, body)


def exchange_port(
    port: int, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """`exchange` with the listener on ``port`` of 127.0.0.1."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        connection.request(method, path, body=body, headers=dict(headers))
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()

"""The HTTP listener as `Server` and ``dbqueue serve`` start it: ``http_port`` / ``--http-port``, ``--sqs-credentials``.

These tests need the wiring of /work/notes/http-wiring.md in `server/app.py`
and `cli.py`; until it is applied they are skipped (the listener itself is
tested in test_http_listener.py and tests/sqs/, started by hand).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "sqs"))

import listener_kit  # the kit lives with the SQS tests (tests/sqs)

from dbqueue import Client, Server

WIRED = "http_port" in inspect.signature(Server).parameters
pytestmark = pytest.mark.skipif(not WIRED, reason="the --http-port wiring (notes/http-wiring.md) is not applied yet")


def test_a_server_with_an_http_port_serves_sqs_and_metrics(server_factory: Callable[..., Any]) -> None:
    thread = server_factory(http_port=0, sqs_credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY})
    port = thread.server.http_port
    assert port
    sqs = listener_kit.client(f"http://127.0.0.1:{port}")
    url = sqs.create_queue(QueueName="wired")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="over SQS")
    with Client.connect(thread.address) as native:
        assert native.stats("wired")["ready"] == 1
        native.send("wired", b"over dbqueue")
        assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"][0]["Body"] == "over SQS"
        metrics = listener_kit.exchange_port(port, "GET", "/metrics", {})
        assert 'dbqueue_queue_in_flight{queue="wired"} 1.0' in metrics[2].decode()
    sqs.close()
    thread.stop()  # the server stops its listener, and what SQS held goes back
    assert thread.server.broker.queues[b"wired"].in_flight == 0


def test_a_server_reached_only_over_sqs_gives_its_queues_its_default_visibility_timeout(
    server_factory: Callable[..., Any],
) -> None:
    # No native connection is ever made: the default must come from the server's limits themselves.
    thread = server_factory(
        http_port=0,
        sqs_credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY},
        default_visibility_timeout=2.5,
    )
    sqs = listener_kit.client(f"http://127.0.0.1:{thread.server.http_port}")
    url = sqs.create_queue(QueueName="defaulted")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "3"  # SQS counts whole seconds: 2.5 s shown rounded up
    assert thread.server.broker.queues[b"defaulted"].visibility_ms == 2500
    sqs.close()


def test_a_server_refuses_a_public_http_port_without_credentials() -> None:
    with pytest.raises(ValueError, match="without credentials"):
        Server("0.0.0.0", 0, http_port=0)


def _serve(*arguments: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", "0", "--http-port", "0", *arguments],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_dbqueue_serve_with_http_port_and_sqs_credentials(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{listener_kit.ACCESS_KEY}:{listener_kit.SECRET_KEY}\n")
    process = _serve("--sqs-credentials", str(keys))
    try:
        assert process.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"SQS API and metrics on http://127\.0\.0\.1:(\d+) \(signed requests only\)", line)
            port = int(found[1]) if found else None
        assert port is not None, "the listener's log line never came"
        sqs = listener_kit.client(f"http://127.0.0.1:{port}")
        url = sqs.create_queue(QueueName="cli")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="m")
        assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "m"
        sqs.close()
        refused = listener_kit.exchange_port(port, "POST", "/", {"X-Amz-Target": "AmazonSQS.ListQueues"}, b"{}")
        assert refused[0] == 403 and json.loads(refused[2])["__type"].endswith("#MissingAuthenticationToken")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_dbqueue_serve_refuses_a_public_sqs_api_without_credentials() -> None:
    process = _serve("--host", "0.0.0.0", env={"DBQUEUE_AUTH_TOKEN": "the native port's token"})
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "refusing to serve the SQS API on 0.0.0.0 without credentials" in stderr


def test_dbqueue_serve_puts_the_console_behind_the_servers_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the server's token\n")
    process = _serve("--auth-token-file", str(token))
    try:
        assert process.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"web console on http://127\.0\.0\.1:(\d+)/ \(log in with the server's token\)", line)
            port = int(found[1]) if found else None
        assert port is not None, "the console's log line never came"
        status, _, body = listener_kit.exchange_port(port, "GET", "/", {})
        assert status == 200 and b"<title>dbqueue console</title>" in body
        status, _, body = listener_kit.exchange_port(port, "GET", "/console/api/overview", {})
        assert status == 401
        login = json.dumps({"token": "the server's token"}).encode()
        status, headers, body = listener_kit.exchange_port(
            port, "POST", "/console/api/login", {"Content-Type": "application/json"}, login
        )
        assert status == 200, body
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = listener_kit.exchange_port(port, "GET", "/console/api/overview", {"Cookie": cookie})
        assert status == 200 and json.loads(body)["queues"] == []
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0

"""The SQS API behind the server's token: a server with ``auth_token`` and no SQS credentials signs with its token.

The native port and the web console ask for the token; the SQS API on the same
server must not be a way around it. Without SQS credentials, a server with a
token takes it as the secret key of access key id ``dbqueue``
(`TOKEN_ACCESS_KEY_ID`): boto3 signs with it, and an unsigned or wrongly
signed request is refused with SQS's own error, on the fast path (plain JSON
requests, `SqsConnection`) and on the general path (aiohttp: the Query
protocol, or a listener without its fast path) alike. ``/metrics`` stays open,
as the ``--metrics-port`` endpoint. Without a token nothing changes: unsigned
requests are accepted on loopback. All over real sockets.
"""

from __future__ import annotations

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
from urllib.parse import urlencode

import botocore.exceptions
import pytest

sys.path.insert(0, str(Path(__file__).parent / "sqs"))

import listener_kit  # the kit lives with the SQS tests (tests/sqs)

from dbqueue import Client
from dbqueue.server.http import TOKEN_ACCESS_KEY_ID, token_credentials

TOKEN = "the server's token/+="
JSON = "application/x-amz-json-1.0"
FORM = "application/x-www-form-urlencoded"


def json_request(action: str, params: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": JSON, "X-Amz-Target": f"AmazonSQS.{action}"}, json.dumps(params).encode()


def query_request(action: str, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": FORM}, urlencode({"Action": action, "Version": "2012-11-05", **params}).encode()


def json_error(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, _, body = answer
    return status, str(json.loads(body)["__type"]).rpartition("#")[2]


def xml_error(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, _, body = answer
    found = re.search(rb"<Code>([^<]+)</Code>", body)
    assert found is not None, body
    return status, found[1].decode()


def token_client(port: int, secret: str = TOKEN, access_key: str = TOKEN_ACCESS_KEY_ID) -> Any:
    return listener_kit.client(f"http://127.0.0.1:{port}", access_key=access_key, secret_key=secret)


def check_refusals(port: int, queue_url: str) -> None:
    """Unsigned requests of both protocols and requests signed with the wrong secret or key are refused."""
    headers, body = json_request("ListQueues", {})
    assert json_error(listener_kit.exchange_port(port, "POST", "/", headers, body)) == (
        403,
        "MissingAuthenticationToken",
    )
    headers, body = json_request("PurgeQueue", {"QueueUrl": queue_url})
    assert json_error(listener_kit.exchange_port(port, "POST", "/", headers, body))[0] == 403
    # The reviewer's request: an unsigned form POST (the Query protocol, aiohttp's path).
    headers, body = query_request("PurgeQueue", {"QueueUrl": queue_url})
    assert xml_error(listener_kit.exchange_port(port, "POST", "/", headers, body)) == (
        403,
        "MissingAuthenticationToken",
    )
    status, _, _ = listener_kit.exchange_port(port, "GET", "/?Action=ListQueues&Version=2012-11-05", {})
    assert status == 403
    # Signed, but with another secret (for the right access key id) or another access key id.
    for secret, access_key, code in (
        ("not the token", TOKEN_ACCESS_KEY_ID, "SignatureDoesNotMatch"),
        (TOKEN, "AKIDOTHER", "InvalidClientTokenId"),
    ):
        path, headers, body = listener_kit.signed(
            "POST",
            f"http://127.0.0.1:{port}/",
            body=json_request("ListQueues", {})[1],
            headers=json_request("ListQueues", {})[0],
            access_key=access_key,
            secret_key=secret,
        )
        assert json_error(listener_kit.exchange_port(port, "POST", path, headers, body)) == (403, code)
        path, headers, body = listener_kit.signed(
            "POST",
            f"http://127.0.0.1:{port}/",
            body=query_request("PurgeQueue", {"QueueUrl": queue_url})[1],
            headers={"Content-Type": FORM},
            access_key=access_key,
            secret_key=secret,
        )
        assert xml_error(listener_kit.exchange_port(port, "POST", path, headers, body)) == (403, code)
        sqs = token_client(port, secret, access_key)
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            sqs.purge_queue(QueueUrl=queue_url)
        assert refused.value.response["Error"]["Code"] in (code, f"AWS.SimpleQueueService.{code}", "AccessDenied")
        sqs.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "aiohttp-only"])
def test_a_listener_with_a_token_takes_requests_signed_with_it_alone(
    server_factory: Callable[..., Any], fast: bool
) -> None:
    thread = server_factory(auth_token=TOKEN.encode())
    listening = listener_kit.Listening.start(thread, fast=fast, token=TOKEN.encode())
    try:
        sqs = token_client(listening.port)
        url = sqs.create_queue(QueueName="guarded")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="kept")
        check_refusals(listening.port, url)
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [message["Body"] for message in got] == ["kept"], "a refused purge dropped the message"
        sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        assert sqs.list_queues()["QueueUrls"] == [url]
        sqs.close()
        web = listening.listener._web
        assert web is not None
        # On the fast path, the JSON requests above (the unsigned and wrongly signed ones, boto3's) never reached
        # aiohttp: only the four of the Query protocol did. Without it, every one did.
        if fast:
            assert web.requests_count == 4
        else:
            assert web.requests_count > 4 + 8
    finally:
        listening.stop()


def test_a_server_with_a_token_guards_its_sqs_api_and_leaves_metrics_open(
    server_factory: Callable[..., Any],
) -> None:
    thread = server_factory(http_port=0, auth_token=TOKEN.encode())
    port = thread.server.http_port
    with Client.connect(thread.address, token=TOKEN) as native:
        native.create("both")
        native.send("both", b"native")
    url = f"http://127.0.0.1:{port}/000000000000/both"
    check_refusals(port, url)
    sqs = token_client(port)
    assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "native"
    sqs.close()
    status, headers, body = listener_kit.exchange_port(port, "GET", "/metrics", {})
    assert status == 200 and b'queue="both"' in body
    assert thread.server._http is not None and thread.server._http.verifier is not None


def test_sqs_credentials_take_the_place_of_the_token(server_factory: Callable[..., Any]) -> None:
    thread = server_factory(
        http_port=0, auth_token=TOKEN.encode(), sqs_credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY}
    )
    port = thread.server.http_port
    sqs = listener_kit.client(f"http://127.0.0.1:{port}")
    assert "QueueUrl" in sqs.create_queue(QueueName="keys")
    sqs.close()
    by_token = token_client(port)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        by_token.list_queues()
    assert refused.value.response["Error"]["Code"].endswith("InvalidClientTokenId")
    by_token.close()


def test_without_a_token_unsigned_requests_are_still_accepted(server_factory: Callable[..., Any]) -> None:
    thread = server_factory(http_port=0)
    port = thread.server.http_port
    headers, body = json_request("CreateQueue", {"QueueName": "open"})
    status, _, answer = listener_kit.exchange_port(port, "POST", "/", headers, body)
    assert status == 200, answer
    url = json.loads(answer)["QueueUrl"]
    headers, body = query_request("PurgeQueue", {"QueueUrl": url})
    assert listener_kit.exchange_port(port, "POST", "/", headers, body)[0] == 200
    assert thread.server._http is not None and thread.server._http.verifier is None


def test_a_token_that_is_not_utf8_refuses_every_sqs_request(server_factory: Callable[..., Any]) -> None:
    assert token_credentials(b"\xff\xfe") == {}
    thread = server_factory(http_port=0, auth_token=b"\xff\xfe token")
    port = thread.server.http_port
    headers, body = json_request("ListQueues", {})
    assert json_error(listener_kit.exchange_port(port, "POST", "/", headers, body)) == (
        403,
        "MissingAuthenticationToken",
    )


def _serve(*arguments: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", "0", "--http-port", "0", *arguments],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_dbqueue_serve_with_a_token_signs_its_sqs_api_with_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    process = _serve("--auth-token-file", str(token))
    try:
        assert process.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        pattern = (
            r"SQS API and metrics on http://127\.0\.0\.1:(\d+) "
            r"\(signed requests only: access key id dbqueue, the server's token as secret key\)"
        )
        while port is None and time.monotonic() < deadline:
            found = re.search(pattern, process.stderr.readline())
            port = int(found[1]) if found else None
        assert port is not None, "the listener's log line never came"
        sqs = token_client(port)
        url = sqs.create_queue(QueueName="cli")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="m")
        check_refusals(port, url)
        assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "m"
        sqs.close()
        assert listener_kit.exchange_port(port, "GET", "/metrics", {})[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0

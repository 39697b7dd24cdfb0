"""The HTTP listener as a server: its safe default, limits, timeouts, connection load, bad input and /metrics.

Every test starts a real `Server` and an `HttpListener` on its loop (the kit
in tests/sqs/listener_kit.py) and talks to it over real sockets. Bad input is
answered with an SQS-shaped error (JSON or XML, as the request's protocol) or
a closed connection, and after each a probe on a fresh connection must still
get its answer.
"""

from __future__ import annotations

import gzip
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "sqs"))

import listener_kit  # the kit lives with the SQS tests (tests/sqs)

from dbqueue import Client
from dbqueue.server.http import MAX_BODY, HttpListener, HttpSettings, read_credentials

JSON = "application/x-amz-json-1.0"


def json_request(action: str) -> dict[str, str]:
    return {"Content-Type": JSON, "X-Amz-Target": f"AmazonSQS.{action}"}


@pytest.fixture
def open_listener(server_factory: Callable[..., Any]) -> Iterator[Callable[..., listener_kit.Listening]]:
    """Start listeners without credentials (loopback, unsigned requests accepted), with chosen settings."""
    started: list[listener_kit.Listening] = []

    def start(server_options: dict[str, Any] | None = None, **options: Any) -> listener_kit.Listening:
        listening = listener_kit.Listening.start(server_factory(**(server_options or {})), **options)
        started.append(listening)
        return listening

    yield start
    for listening in started:
        listening.stop()


def probe(listening: listener_kit.Listening) -> None:
    """A whole request and answer on a fresh connection: the listener is still serving."""
    status, _, body = listener_kit.exchange(listening, "POST", "/", json_request("ListQueues"), b"{}")
    assert status == 200, body


def raw(listening: listener_kit.Listening, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and return everything read until the server closes it."""
    with socket.create_connection(("127.0.0.1", listening.port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


# --- the safe default --------------------------------------------------------------------------------------------


def test_without_credentials_only_loopback_and_unsigned_requests(server_factory: Callable[..., Any]) -> None:
    thread = server_factory()
    with pytest.raises(ValueError, match="without credentials"):
        HttpListener(thread.server, 0, host="0.0.0.0")
    assert HttpListener(thread.server, 0, host="0.0.0.0", insecure=True).host == "0.0.0.0"
    assert HttpListener(thread.server, 0, host="0.0.0.0", credentials={"AK": "secret"}).verifier is not None
    listening = listener_kit.Listening.start(thread)
    try:
        status, _, body = listener_kit.exchange(
            listening, "POST", "/", json_request("CreateQueue"), b'{"QueueName":"open"}'
        )
        assert status == 200 and json.loads(body)["QueueUrl"].endswith("/000000000000/open")
    finally:
        listening.stop()


def test_with_credentials_an_unsigned_request_is_refused(server_factory: Callable[..., Any]) -> None:
    listening = listener_kit.Listening.start(server_factory(), credentials={"AK": "secret"})
    try:
        status, headers, body = listener_kit.exchange(listening, "POST", "/", json_request("ListQueues"), b"{}")
        assert status == 403
        assert json.loads(body)["__type"] == "com.amazonaws.sqs#MissingAuthenticationToken"
        assert headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"
    finally:
        listening.stop()


def test_credentials_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# access key id : secret\nAKID1:secret/one:with colon\n\n  AKID2 : two  \n")
    environment = {"DBQUEUE_SQS_ACCESS_KEY_ID": "AKID3", "DBQUEUE_SQS_SECRET_ACCESS_KEY": "three"}
    assert read_credentials(path, environment) == {"AKID1": "secret/one:with colon", "AKID2": "two", "AKID3": "three"}
    assert read_credentials(None, {}) == {}
    path.write_text("AKID1:ok\nno-colon-here\n")
    with pytest.raises(ValueError, match="line 2") as caught:
        read_credentials(path, {})
    assert "ok" not in str(caught.value)
    with pytest.raises(ValueError, match="go together"):
        read_credentials(None, {"DBQUEUE_SQS_ACCESS_KEY_ID": "AKID3"})


# --- bodies ------------------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_from_its_content_length(
    open_listener: Callable[..., listener_kit.Listening],
) -> None:
    listening = open_listener()
    head = (
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n"
        f"Content-Length: {4 << 30}\r\n\r\n"
    ).encode()
    began = time.monotonic()
    answer = raw(listening, head)  # nothing of the 4 GiB is sent: the answer and the close come anyway
    assert time.monotonic() - began < 2.0
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    error = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert error["__type"] == "com.amazonaws.sqs#InvalidParameterValue"
    assert f"limit of {MAX_BODY} bytes" in error["message"]
    probe(listening)


def test_a_chunked_body_over_the_limit_is_refused(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener(settings=HttpSettings(max_body=1000))
    chunk = b"x" * 600
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    answer = raw(listening, head + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"<Code>InvalidParameterValue</Code>" in answer
    probe(listening)


def test_a_slow_body_times_out_and_others_are_served(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener(settings=HttpSettings(body_timeout=0.5))
    with socket.create_connection(("127.0.0.1", listening.port), timeout=5) as slow:
        slow.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nContent-Length: 100\r\n\r\n{{".encode())
        began = time.monotonic()
        probe(listening)  # served while the slow body is pending
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
        assert 0.4 < time.monotonic() - began < 3.0
    assert answer.startswith(b"HTTP/1.1 408 ")
    probe(listening)


# --- connections -------------------------------------------------------------------------------------------------


def test_idle_connections_are_closed(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener(settings=HttpSettings(idle_timeout=0.5))
    with (
        socket.create_connection(("127.0.0.1", listening.port), timeout=5) as silent,
        socket.create_connection(("127.0.0.1", listening.port), timeout=5) as trickling,
    ):
        began = time.monotonic()
        trickling.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(50):  # a header that never ends, a byte at a time, until the server hangs up
            time.sleep(0.1)
            try:
                trickling.sendall(b"a")
            except OSError:
                break
        else:
            pytest.fail("a trickling header was never cut off")
        assert silent.recv(1) == b""
        assert 0.4 < time.monotonic() - began < 3.0
    probe(listening)


def test_connections_beyond_the_limit_get_503(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener({"max_connections": 3})
    held = [socket.create_connection(("127.0.0.1", listening.port), timeout=5) for _ in range(3)]
    try:
        listening.thread.wait_until(lambda: listening.listener.connection_count() == 3, what="three connections")
        answer = raw(listening, b"")
        assert answer.startswith(b"HTTP/1.1 503 ")
    finally:
        for connection in held:
            connection.close()
    listening.thread.wait_until(lambda: listening.listener.connection_count() == 0, what="the connections to close")
    probe(listening)


IDLE_CONNECTIONS = 2000  # the requirement is 10,000; a bounded version keeps the test within CI's file limits


def test_thousands_of_idle_connections_do_not_stop_others(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener()
    sqs = listener_kit.client(listening.endpoint)
    url = sqs.create_queue(QueueName="busy")["QueueUrl"]
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            connection = socket.socket()
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", listening.port))
            idle.append(connection)
        listening.thread.wait_until(
            lambda: listening.listener.connection_count() >= IDLE_CONNECTIONS,
            timeout=30,
            what=f"{IDLE_CONNECTIONS} idle connections",
        )
        times = []
        for _ in range(20):
            began = time.monotonic()
            sqs.send_message(QueueUrl=url, MessageBody="through the crowd")
            handle = sqs.receive_message(QueueUrl=url)["Messages"][0]["ReceiptHandle"]
            sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
            times.append(time.monotonic() - began)
        assert statistics.median(times) < 0.5, times
        metrics = listener_kit.exchange(listening, "GET", "/metrics", {})[2].decode()
        gauge = [line for line in metrics.splitlines() if line.startswith("dbqueue_http_connections ")]
        assert float(gauge[0].split()[1]) >= IDLE_CONNECTIONS
    finally:
        for connection in idle:
            connection.close()
        sqs.close()


def test_a_long_poll_whose_client_leaves_gives_its_message_back(
    open_listener: Callable[..., listener_kit.Listening],
) -> None:
    listening = open_listener()
    sqs = listener_kit.client(listening.endpoint)
    url = sqs.create_queue(QueueName="left")["QueueUrl"]
    body = json.dumps({"QueueUrl": url, "WaitTimeSeconds": 20}).encode()
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {JSON}\r\nX-Amz-Target: AmazonSQS.ReceiveMessage\r\n"
    with socket.create_connection(("127.0.0.1", listening.port), timeout=5) as leaving:
        leaving.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        listening.thread.wait_until(
            lambda: listening.thread.server.broker.queues[b"left"].waiting == 1, what="the poll to wait"
        )
    listening.thread.wait_until(lambda: listening.thread.server.broker.queues[b"left"].waiting == 0, what="its end")
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    message = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert (message["Body"], message["Attributes"]["ApproximateReceiveCount"]) == ("kept", "1")
    sqs.close()


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        (json_request("SendMessage"), b"{not json", 400, "SerializationException"),
        (json_request("SendMessage"), b'["a", "list"]', 400, "SerializationException"),
        (json_request("SendMessage"), b"\xff\xfe", 400, "SerializationException"),
        (json_request("Bogus"), b"{}", 400, "InvalidAction"),
        ({"Content-Type": JSON, "X-Amz-Target": "Other.ListQueues"}, b"{}", 400, "InvalidAction"),
        (json_request("SendMessage"), b'{"QueueUrl": 3}', 400, "InvalidParameterValue"),
        (json_request("ReceiveMessage"), b'{"QueueUrl": "http://h/000000000000/none"}', 400, "QueueDoesNotExist"),
    ],
)
def test_malformed_json_requests(
    open_listener: Callable[..., listener_kit.Listening], headers: dict[str, str], body: bytes, status: int, code: str
) -> None:
    listening = open_listener()
    got, reply_headers, reply = listener_kit.exchange(listening, "POST", "/", headers, body)
    assert got == status
    assert json.loads(reply)["__type"] == f"com.amazonaws.sqs#{code}"
    assert reply_headers["content-type"] == JSON
    probe(listening)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        (FORM, b"Action=Bogus&Version=2012-11-05", "InvalidAction"),
        (FORM, b"Version=2012-11-05", "MissingAction"),
        (FORM, b"Action=ListQueues&Version=2008-01-01", "NoSuchVersion"),
        (FORM, b"Action=ListQueues&Version=2012-11-05&%ff%fe=%ff", "InvalidParameterValue"),
        (FORM, b"\xff\xfe\x00garbage", "InvalidParameterValue"),
        ({"Content-Type": "text/xml"}, b"<SendMessage><MessageBody>x</SendMessage>", "MissingAction"),
        (FORM, b"Action=SendMessage&Version=2012-11-05&QueueUrl=not-a-url&MessageBody=x", "InvalidAddress"),
    ],
)
def test_malformed_form_and_xml_requests(
    open_listener: Callable[..., listener_kit.Listening], headers: dict[str, str], body: bytes, code: str
) -> None:
    listening = open_listener()
    status, reply_headers, reply = listener_kit.exchange(listening, "POST", "/", headers, body)
    assert status == 400
    assert reply_headers["content-type"] == "text/xml"
    assert f"<Code>{code}</Code>".encode() in reply, reply
    probe(listening)


def test_what_is_not_http_is_answered_and_closed(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener()
    for garbage in (b"\x00\x01\x02 not http at all\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"y" * 20_000 + b"\r\n\r\n"):
        assert raw(listening, garbage).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    probe(listening)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_metrics_on_the_listener(open_listener: Callable[..., listener_kit.Listening]) -> None:
    listening = open_listener()
    with Client.connect(listening.thread.address) as native:
        native.create("jobs")
        native.send_batch("jobs", [b"a", b"b", b"c"])
        native.purge("jobs")
    probe(listening)
    status, headers, body = listener_kit.exchange(listening, "GET", "/metrics", {})
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(body.decode().splitlines())
    assert 'dbqueue_queue_purged_total{queue="jobs"} 3.0' in lines
    assert 'dbqueue_sqs_requests_total{action="ListQueues"} 1.0' in lines
    assert any(line.startswith("dbqueue_build_info{") and 'version="' in line for line in lines)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert any(line.startswith(name + " ") for line in lines), name
    status, head_headers, head_body = listener_kit.exchange(listening, "HEAD", "/metrics", {})
    assert (status, head_body) == (200, b"")
    assert head_headers["content-type"] == headers["content-type"]
    status, headers, body = listener_kit.exchange(
        listening, "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    status, headers, body = listener_kit.exchange(listening, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert b"dbqueue_queue_ready" in gzip.decompress(body)
    status, _, body = listener_kit.exchange(listening, "GET", "/metrics?name[]=dbqueue_connections", {})
    assert [line for line in body.decode().splitlines() if not line.startswith("#")] == ["dbqueue_connections 0.0"]
    assert listener_kit.exchange(listening, "POST", "/metrics", {})[0] == 405


def test_the_metrics_port_negotiates_too(server_factory: Callable[..., Any]) -> None:
    thread = server_factory(metrics_port=0)
    port = thread.server.metrics_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Encoding: gzip" in head and body == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /nowhere HTTP/1.0\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.0 404")

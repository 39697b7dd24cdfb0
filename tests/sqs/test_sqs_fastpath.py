"""The SQS fast path (`dbqueue.sqs.fastpath`, `SqsConnection`): framing, and the same answers as the general path.

The differential test runs one sequence of requests twice on a real server over
real sockets: on a connection the fast path serves, and on a connection that the
fast path handed to aiohttp (its first request is of the Query protocol), so
every later request there goes the general way (decode, `SqsService.act`,
encode). Each pair of answers must match, byte for byte in the body once the
message ids and receipt handles (which name different messages) are set aside,
with the same status and headers, and the two queues must be in the same state.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import listener_kit
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbqueue import Client
from dbqueue.server import sqs_api
from dbqueue.sqs import Envelope, MessageAttributeValue, fastpath, open_envelope, seal
from dbqueue.sqs.digests import md5
from dbqueue.sqs.envelope import open_plain, plain_body, plain_prefix, seal_plain, seal_plain_many
from dbqueue.sqs.fastpath import MORE, OTHER, HttpRequest, frame, ok_head, response_head

JSON = "application/x-amz-json-1.0"


def request(target: str, body: bytes, *extra: str, path: str = "/", version: str = "HTTP/1.1") -> bytes:
    head = [f"POST {path} {version}", "Host: 127.0.0.1:9324", f"Content-Type: {JSON}", f"X-Amz-Target: {target}"]
    head.append(f"Content-Length: {len(body)}")
    head += extra
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- framing -------------------------------------------------------------------------------------------------------


def test_a_plain_json_request_is_framed() -> None:
    raw = request("AmazonSQS.SendMessage", b'{"QueueUrl":"u","MessageBody":"b"}', "Connection: keep-alive")
    framed = frame(raw + b"POST", 0, 1 << 20)
    assert isinstance(framed, HttpRequest)
    assert (framed.path, framed.action, framed.host, framed.end) == ("/", "SendMessage", "127.0.0.1:9324", len(raw))
    assert framed.body == b'{"QueueUrl":"u","MessageBody":"b"}'
    assert ("X-Amz-Target", "AmazonSQS.SendMessage") in framed.headers
    second = frame(raw + raw, len(raw), 1 << 20)
    assert isinstance(second, HttpRequest) and second.end == 2 * len(raw)


def test_header_values_are_read_without_the_spaces_around_them() -> None:
    raw = request(
        "AmazonSQS.SendMessage", b"{}", "x-lower:  two  inner  spaces  ", "X-Empty:", "X-Spaces:   ", "X-Tight:v"
    )
    framed = frame(raw, 0, 1 << 20)
    assert isinstance(framed, HttpRequest)
    assert framed.headers[-4:] == [
        ("x-lower", "two  inner  spaces"),
        ("X-Empty", ""),
        ("X-Spaces", ""),
        ("X-Tight", "v"),
    ]
    assert framed.headers[:4] == [
        ("Host", "127.0.0.1:9324"),
        ("Content-Type", JSON),
        ("X-Amz-Target", "AmazonSQS.SendMessage"),
        ("Content-Length", "2"),
    ]
    # The same name twice in another case, or a name of a character outside the fast path's tokens: not ours.
    assert frame(request("AmazonSQS.SendMessage", b"{}", "host: other"), 0, 1 << 20) == OTHER
    assert frame(request("AmazonSQS.SendMessage", b"{}", "X_Under: v"), 0, 1 << 20) == OTHER
    assert frame(request("AmazonSQS.SendMessage", b"{}", ": no name"), 0, 1 << 20) == OTHER
    assert frame(request("AmazonSQS.SendMessage", b"{}", "X-Bare: a\rb"), 0, 1 << 20) == OTHER
    assert frame(request("AmazonSQS.SendMessage", b"{}", path="/a b"), 0, 1 << 20) == OTHER
    assert frame(request("AmazonSQS.SendMessage", b"{}", path="/#x"), 0, 1 << 20) == OTHER


def test_a_request_in_pieces_asks_for_more() -> None:
    raw = request("AmazonSQS.ReceiveMessage", b'{"QueueUrl":"u"}')
    for cut in (0, 1, 10, raw.index(b"\r\n\r\n") + 2, len(raw) - 1):
        assert frame(raw[:cut], 0, 1 << 20) == MORE
    assert frame(b"x" * 20_000, 0, 1 << 20) == OTHER  # a head that never ends is not waited for


@pytest.mark.parametrize(
    "raw",
    [
        request("AmazonSQS.SendMessage", b"{}", "Transfer-Encoding: chunked"),
        request("AmazonSQS.SendMessage", b"{}", "Expect: 100-continue"),
        request("AmazonSQS.SendMessage", b"{}", "Connection: close"),
        request("AmazonSQS.SendMessage", b"{}", "Content-Length: 2"),  # twice
        request("AmazonSQS.SendMessage", b"{}", "X-Amz-Target: AmazonSQS.ReceiveMessage"),
        request("AmazonSQS.SendMessage", b"{}", "X-Other: a\tb"),
        request("AmazonSQS.SendMessage", b"{}", "X-Other : b"),
        request("AmazonSQS.SendMessage", b"{}", "X-Other: b", " folded"),
        request("AmazonSQS.SendMessage", b"{}", "NoColon"),
        request("AmazonSQS.SendMessage", b"{}", path="/?Action=SendMessage"),
        request("AmazonSQS.SendMessage", b"{}", path="/metrics"),
        request("AmazonSQS.SendMessage", b"{}", version="HTTP/1.0"),
        request("Other.SendMessage", b"{}"),
        request("AmazonSQS.SendMessage", b"x" * 300_000),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 2\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"X-Amz-Target: AmazonSQS.SendMessage\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"X-Amz-Target: AmazonSQS.SendMessage\r\nContent-Length: -2\r\n\r\n{}",
        b"POST / HTTP/1.1\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"X-Amz-Target: AmazonSQS.SendMessage\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
def test_anything_odd_goes_to_the_general_stack(raw: bytes) -> None:
    assert frame(raw, 0, 1 << 20) == OTHER
    assert frame(raw.replace(b"Host: ", b"X-Other: caf\xe9\r\nHost: ", 1), 0, 1 << 20) == OTHER


def test_a_body_over_the_listener_limit_goes_to_the_general_stack() -> None:
    raw = request("AmazonSQS.SendMessage", b"x" * 100)
    assert isinstance(frame(raw, 0, 100), HttpRequest)
    assert frame(raw, 0, 99) == OTHER


def test_the_head_of_a_200_is_the_general_head() -> None:
    tail = b"Date: Mon, 07 Dec 2026 18:55:16 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n"
    headers = [("Content-Type", JSON), ("x-amzn-RequestId", "r-1")]
    assert ok_head("r-1", 1234, tail) == response_head(200, "OK", headers, 1234, tail)
    assert ok_head("r-1", 2, tail).endswith(b"Content-Length: 2\r\n" + tail + b"\r\n")


# --- plain envelopes -----------------------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(body=texts, sent_ms=st.integers(0, 2**64 - 1), queue=texts, sender=texts)
def test_a_plain_envelope_is_the_envelope_of_a_message_without_attributes(
    body: str, sent_ms: int, queue: str, sender: str
) -> None:
    payload = seal_plain(plain_prefix(queue, sender), sent_ms, body.encode())
    assert payload == seal(Envelope(body, sent_ms, queue, sender))
    assert open_plain(payload) == (sent_ms, queue.encode(), body)
    assert plain_body(payload) == (body.encode(), body)
    assert seal_plain_many(plain_prefix(queue, sender), sent_ms, [body.encode(), b"x"]) == [
        payload,
        seal(Envelope("x", sent_ms, queue, sender)),
    ]
    assert open_envelope(payload) == Envelope(body, sent_ms, queue, sender)


def test_open_plain_leaves_every_other_payload_to_open_envelope() -> None:
    with_attributes = seal(Envelope("b", 1, "q", "s", {"a": MessageAttributeValue("String", string_value="v")}))
    plain = seal(Envelope("body", 1, "q", "s"))
    for payload in (with_attributes, b"", b"text", plain[:14], plain[:-5] + b"\xff\xfe", b"\xffSQS\x02" + plain[5:]):
        assert open_plain(payload) is None
        assert plain_body(payload) is None
    assert open_plain(plain) == (1, b"q", "body")
    assert plain_body(plain) == (b"body", "body")


@pytest.mark.parametrize("size", [0, 1, 55, 56, 64, 1000, 70_000])
def test_the_listener_s_md5_is_md5(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert md5(data, usedforsecurity=False).hexdigest() == hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- the same answers as the general path, on a real server --------------------------------------------------------


@pytest.fixture
def listening(server_factory: Callable[..., Any]) -> Iterator[listener_kit.Listening]:
    listening = listener_kit.Listening.start(server_factory(), fast=True)
    yield listening
    listening.stop()


_IDS = re.compile(r'"(MessageId|ReceiptHandle|SentTimestamp|ApproximateFirstReceiveTimestamp)":"[^"]*"')


class Peer:
    """One keep-alive connection sending raw JSON requests to a queue of its own."""

    def __init__(self, listening: listener_kit.Listening, queue: str, general: bool) -> None:
        self.connection = listening.connection()
        self.url = f"{listening.endpoint}/000000000000/{queue}"
        if general:  # a Query request first: the fast path hands the connection to aiohttp for good
            self.connection.request("GET", "/?Action=ListQueues&Version=2012-11-05")
            response = self.connection.getresponse()
            response.read()
            assert response.status == 200

    def call(self, action: str, params: dict[str, Any]) -> tuple[int, dict[str, str], str, Any]:
        body = json.dumps({**params, "QueueUrl": self.url} if "QueueName" not in params else params).encode()
        return self.raw_call(action, body)

    def raw_call(self, action: str, body: bytes) -> tuple[int, dict[str, str], str, Any]:
        """`call` of a body as it is (``{url}`` in it stands for the queue's URL)."""
        body = body.replace(b"{url}", self.url.encode())
        self.connection.request(
            "POST", "/", body=body, headers={"Content-Type": JSON, "X-Amz-Target": f"AmazonSQS.{action}"}
        )
        response = self.connection.getresponse()
        text = response.read().decode()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, text, json.loads(text, strict=False)


def same_answer(fast: tuple[int, dict[str, str], str, Any], general: tuple[int, dict[str, str], str, Any]) -> None:
    assert fast[0] == general[0]
    assert fast[1].keys() == general[1].keys()
    for name in fast[1].keys() - {"date", "x-amzn-requestid", "content-length"}:  # handles name the queue
        assert fast[1][name] == general[1][name], name
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", fast[1]["x-amzn-requestid"])
    assert _IDS.sub(r'"\1":"-"', fast[2]) == _IDS.sub(r'"\1":"-"', general[2])


BODIES = ["plain", 'quotes " and \\ backslash', "caf\u00e9 \u2603 \U0001f600", "line\nfeed\r\ncr\ttab", "x" * 3000]


@pytest.fixture(params=["installed", "json"])
def json_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fast path's JSON reader: orjson when installed (else json), or the standard library's alone."""
    if request.param == "json":
        monkeypatch.setattr(sqs_api, "decode_params", fastpath._json_params)
    return str(request.param)


def test_the_fast_path_answers_as_the_general_path(listening: listener_kit.Listening, json_reader: str) -> None:
    web = listening.listener._web
    assert web is not None
    with Client.connect(listening.thread.address) as native:
        native.create("fast")
        native.create("general")
        fast, general = Peer(listening, "fast", general=False), Peer(listening, "general", general=True)

        def both(action: str, params: dict[str, Any]) -> tuple[Any, Any]:
            before = web.requests_count
            one = fast.call(action, params)
            assert web.requests_count == before, f"{action} did not take the fast path"
            other = general.call(action, params)
            assert web.requests_count == before + 1
            same_answer(one, other)
            return one[3], other[3]

        def same_state() -> None:
            a, b = native.stats("fast"), native.stats("general")
            for key in ("ready", "in_flight", "delayed", "enqueued", "confirmed"):
                assert a[key] == b[key], key

        entries = [{"Id": f"e{i}", "MessageBody": BODIES[i % len(BODIES)]} for i in range(10)]
        sent, _ = both("SendMessageBatch", {"Entries": entries})
        assert [entry["Id"] for entry in sent["Successful"]] == [entry["Id"] for entry in entries]
        both("SendMessage", {"MessageBody": "one more \u00e9"})
        same_state()
        received, received_general = both("ReceiveMessage", {"MaxNumberOfMessages": 10, "VisibilityTimeout": 30})
        assert [message["Body"] for message in received["Messages"]] == [entry["MessageBody"] for entry in entries]
        same_state()
        handles = [message["ReceiptHandle"] for message in received["Messages"]]
        general_handles = [message["ReceiptHandle"] for message in received_general["Messages"]]
        # A batch of handles this server issued: the fast one confirms from what it remembers.
        before = web.requests_count
        deleted = fast.call(
            "DeleteMessageBatch", {"Entries": [{"Id": f"d{i}", "ReceiptHandle": h} for i, h in enumerate(handles[:9])]}
        )
        other = general.call(
            "DeleteMessageBatch",
            {"Entries": [{"Id": f"d{i}", "ReceiptHandle": h} for i, h in enumerate(general_handles[:9])]},
        )
        assert web.requests_count == before + 1
        same_answer(deleted, other)
        same_state()
        # The same handles again (stale now): success, nothing deleted, on both paths.
        again = fast.call("DeleteMessageBatch", {"Entries": [{"Id": "x", "ReceiptHandle": handles[0]}]})
        other = general.call("DeleteMessageBatch", {"Entries": [{"Id": "x", "ReceiptHandle": general_handles[0]}]})
        same_answer(again, other)
        single = fast.call("DeleteMessage", {"ReceiptHandle": handles[9]})
        other = general.call("DeleteMessage", {"ReceiptHandle": general_handles[9]})
        same_answer(single, other)
        same_state()
        received, _ = both("ReceiveMessage", {"MaxNumberOfMessages": 5})
        assert [message["Body"] for message in received["Messages"]] == ["one more \u00e9"]
        both("ReceiveMessage", {"MaxNumberOfMessages": 5, "WaitTimeSeconds": 0})  # nothing ready: {}
        same_state()
        # Attributes asked for: answered at once too, each message as the general path writes it.
        attribute = {"colour": {"DataType": "String", "StringValue": "blue"}}
        both("SendMessage", {"MessageBody": "with attributes", "MessageAttributes": attribute})
        both("SendMessage", {"MessageBody": "plain"})
        asked = {"MaxNumberOfMessages": 10, "AttributeNames": ["All"], "MessageAttributeNames": ["All"]}
        received, _ = both("ReceiveMessage", asked)
        assert [m["Body"] for m in received["Messages"]] == ["with attributes", "plain"]
        assert received["Messages"][0]["MessageAttributes"] == attribute
        assert received["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "1"
        same_state()
        # Refusals are written by the general path on both connections.
        for action, params in [
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a b", "MessageBody": "x"}]}),
            ("SendMessageBatch", {"Entries": []}),
            ("SendMessage", {"MessageBody": "bad \u0001 character"}),
            ("SendMessage", {"MessageBody": ""}),
            ("ReceiveMessage", {"MaxNumberOfMessages": 11}),
            ("DeleteMessageBatch", {"Entries": [{"Id": "a", "ReceiptHandle": "forged"}]}),
            ("DeleteMessage", {"ReceiptHandle": "forged"}),
            # Batches whose entries are checked all at once on the fast path: each rule, in an entry not the first.
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, "not an object"]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": 7, "MessageBody": "y"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": 7}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": ""}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b" * 81, "MessageBody": "y"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b\nc", "MessageBody": "y"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "", "MessageBody": "y"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": "\ud800"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": "y\u0000"}]}),
            ("SendMessageBatch", {"Entries": [{"Id": f"e{i}", "MessageBody": "x"} for i in range(11)]}),
            (
                "SendMessageBatch",
                {"Entries": [{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": "y", "DelaySeconds": 900}]},
            ),
            (
                "DeleteMessageBatch",
                {"Entries": [{"Id": "a", "ReceiptHandle": "forged"}, {"Id": "a", "ReceiptHandle": "f"}]},
            ),
            (
                "DeleteMessageBatch",
                {"Entries": [{"Id": "a", "ReceiptHandle": "forged"}, {"Id": "b", "ReceiptHandle": ""}]},
            ),
            (
                "DeleteMessageBatch",
                {"Entries": [{"Id": "a", "ReceiptHandle": "forged"}, {"Id": "b", "ReceiptHandle": 1}]},
            ),
            ("DeleteMessageBatch", {"Entries": [{"Id": "a", "ReceiptHandle": "forged"}, ["b"]]}),
        ]:
            same_answer(fast.call(action, params), general.call(action, params))
        # Bodies that JSON parsers may read differently (orjson on the fast path when installed, json on the
        # general one): the same answers, whichever reads them.
        for action, raw in [
            ("ReceiveMessage", b'{"QueueUrl":"{url}","MaxNumberOfMessages":99999999999999999999}'),
            ("ReceiveMessage", b'{"QueueUrl":"{url}","MaxNumberOfMessages":NaN}'),
            ("ReceiveMessage", b'{"QueueUrl":"{url}","MaxNumberOfMessages":1e400}'),
            ("ReceiveMessage", b'{"QueueUrl":"{url}","MaxNumberOfMessages":2.0}'),
            ("SendMessage", b'{"QueueUrl":"{url}","MessageBody":"lone \\ud800 surrogate"}'),
            ("SendMessage", b'\xef\xbb\xbf{"QueueUrl":"{url}","MessageBody":"after a BOM"}'),
            ("SendMessage", b'{"QueueUrl":"{url}","MessageBody":"not UTF-8 \xff"}'),
            ("SendMessage", b'{"QueueUrl":"{url}","MessageBody":"one","MessageBody":"two"} '),
            ("SendMessage", b'{"QueueUrl":"{url}","MessageBody":"trailing"} x'),
            ("SendMessage", b'[{"QueueUrl":"{url}","MessageBody":"an array"}]'),
        ]:
            same_answer(fast.raw_call(action, raw), general.raw_call(action, raw))
        received, _ = both("ReceiveMessage", {"MaxNumberOfMessages": 10})
        # Sent on both paths: "x" (with a delayed entry, which the general path takes), "after a BOM" (the general
        # path's JSON reader skips one) and the duplicate key's last value.
        assert [message["Body"] for message in received["Messages"]] == ["x", "after a BOM", "two"]
        same_state()
        missing = {"QueueUrl": f"{listening.endpoint}/000000000000/missing"}
        one = fast.connection
        one.request(
            "POST",
            "/",
            body=json.dumps({**missing, "MessageBody": "x"}).encode(),
            headers={"Content-Type": JSON, "X-Amz-Target": "AmazonSQS.SendMessage"},
        )
        response = one.getresponse()
        assert response.status == 400 and b"QueueDoesNotExist" in response.read()
        same_state()
        # Last, as its body is over what the fast path buffers (the connection is aiohttp's from then on): a batch
        # whose bodies are each within the limit, together over it.
        big = {"Entries": [{"Id": f"e{i}", "MessageBody": "x" * 200_000} for i in range(6)]}
        same_answer(fast.call("SendMessageBatch", big), general.call("SendMessageBatch", big))
        same_state()
        fast.connection.close()
        general.connection.close()


def test_pipelined_requests_are_answered_in_order_around_a_long_poll(listening: listener_kit.Listening) -> None:
    """A long poll goes to the general path; the requests behind it on its connection wait their turn."""
    with Client.connect(listening.thread.address) as native:
        native.create("poll")
        url = f"{listening.endpoint}/000000000000/poll"
        poll = json.dumps({"QueueUrl": url, "WaitTimeSeconds": 2}).encode()
        send = json.dumps({"QueueUrl": url, "MessageBody": "after the poll"}).encode()
        with socket.create_connection(("127.0.0.1", listening.port), timeout=10) as peer:
            peer.sendall(request("AmazonSQS.ReceiveMessage", poll) + request("AmazonSQS.SendMessage", send))
            began = time.monotonic()
            answers = b""
            while answers.count(b"HTTP/1.1 200 OK") < 2:
                chunk = peer.recv(65536)
                assert chunk
                answers += chunk
        first, second = answers.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"\r\n\r\n{}")  # the poll ended empty: the send behind it had not gone yet
        assert b"MD5OfMessageBody" in second
        assert time.monotonic() - began >= 1.5
        assert native.stats("poll")["ready"] == 1


def test_a_connection_that_leaves_during_a_long_poll_is_cancelled(listening: listener_kit.Listening) -> None:
    with Client.connect(listening.thread.address) as native:
        native.create("left")
        url = f"{listening.endpoint}/000000000000/left"
        with socket.create_connection(("127.0.0.1", listening.port), timeout=10) as peer:
            peer.sendall(
                request("AmazonSQS.ReceiveMessage", json.dumps({"QueueUrl": url, "WaitTimeSeconds": 20}).encode())
            )
            time.sleep(0.3)
        time.sleep(0.3)
        native.send("left", b"for someone else")
        message = native.read("left", visibility_timeout=30.0)
        assert message is not None and message.data == b"for someone else" and message.deliveries == 1


def test_a_fast_connection_closes_after_the_idle_timeout(server_factory: Callable[..., Any]) -> None:
    from dbqueue.server.http import HttpSettings

    listening = listener_kit.Listening.start(server_factory(), fast=True, settings=HttpSettings(idle_timeout=0.6))
    try:
        with Client.connect(listening.thread.address) as native:
            native.create("idle")
        connection = listening.connection()
        url = f"{listening.endpoint}/000000000000/idle"
        for _ in range(4):  # busy for longer than the idle timeout: kept open
            connection.request(
                "POST",
                "/",
                body=json.dumps({"QueueUrl": url, "MessageBody": "x"}).encode(),
                headers={"Content-Type": JSON, "X-Amz-Target": "AmazonSQS.SendMessage"},
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            time.sleep(0.25)
        time.sleep(1.2)  # then idle: closed
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request(
                "POST", "/", body=b"{}", headers={"Content-Type": JSON, "X-Amz-Target": "AmazonSQS.ListQueues"}
            )
            connection.getresponse().read()
    finally:
        listening.stop()


def test_requests_piled_behind_a_long_poll_are_read_no_further_than_a_limit(listening: listener_kit.Listening) -> None:
    """A client that keeps sending behind a long poll is not read into memory without end: reading pauses (the
    kernel's buffers fill, the client's send blocks) and resumes when the poll is answered; all are answered."""
    with Client.connect(listening.thread.address) as native:
        native.create("piled")
        url = f"{listening.endpoint}/000000000000/piled"
        poll = request("AmazonSQS.ReceiveMessage", json.dumps({"QueueUrl": url, "WaitTimeSeconds": 1}).encode())
        send = request("AmazonSQS.SendMessage", json.dumps({"QueueUrl": url, "MessageBody": "x" * 2000}).encode())
        count = 2000  # about 4.5 MiB behind the poll
        with socket.create_connection(("127.0.0.1", listening.port), timeout=30) as peer:
            peer.sendall(poll)
            reader_done: list[bytes] = []

            def read_all() -> None:
                answers = b""
                while answers.count(b"HTTP/1.1 200 OK") < count + 1:
                    chunk = peer.recv(1 << 16)
                    if not chunk:
                        break
                    answers += chunk
                reader_done.append(answers)

            reader = threading.Thread(target=read_all)
            reader.start()
            peer.sendall(send * count)
            reader.join(30)
            assert reader_done and reader_done[0].count(b"HTTP/1.1 200 OK") == count + 1
        assert native.stats("piled")["ready"] == count


# --- who serves the connections ------------------------------------------------------------------------------------


def _served_by_aiohttp(port: int, requests_count: Callable[[], int]) -> bool:
    """Send one plain JSON request; return whether aiohttp's request machinery answered it."""
    before = requests_count()
    headers = {"Content-Type": JSON, "X-Amz-Target": "AmazonSQS.SendMessage"}
    body = json.dumps({"QueueUrl": f"http://127.0.0.1:{port}/000000000000/who", "MessageBody": "b"}).encode()
    status, _, _ = listener_kit.exchange_port(port, "POST", "/", headers, body)
    assert status == 200
    return requests_count() != before


def test_the_server_s_listener_serves_through_the_fast_path(server_factory: Callable[..., Any]) -> None:
    """The listener `Server` starts for ``--http-port`` builds an `SqsConnection` per connection itself."""
    thread = server_factory(http_port=0)
    listener = thread.server._http
    assert listener is not None and listener._web is not None
    with Client.connect(thread.address) as native:
        native.create("who")
    web = listener._web
    assert not _served_by_aiohttp(thread.server.http_port, lambda: web.requests_count)


def test_a_listener_without_its_fast_path_leaves_every_request_to_aiohttp(
    server_factory: Callable[..., Any],
) -> None:
    listening = listener_kit.Listening.start(server_factory(), fast=False)
    try:
        with Client.connect(listening.thread.address) as native:
            native.create("who")
        web = listening.listener._web
        assert web is not None
        assert _served_by_aiohttp(listening.port, lambda: web.requests_count)
    finally:
        listening.stop()

"""boto3 (the AWS JSON protocol) against a real server's HTTP listener: every supported action, end to end.

Each test starts a `dbqueue.Server` with an `HttpListener` on its loop
(`listener_kit`), talks to it with boto3 over real HTTP, signed with SigV4,
and checks what botocore parsed, the MD5s as the SDKs check them
(`sqs_kit.sdk_check_send` / `sdk_check_receive`), and, where it matters, the
broker's own state through dbqueue's own client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import listener_kit
import pytest
import sqs_kit
from botocore.exceptions import ClientError

from dbqueue import Client


@pytest.fixture
def listening(server_factory: Callable[..., Any]) -> Iterator[listener_kit.Listening]:
    listening = listener_kit.Listening.start(
        server_factory(), credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY}
    )
    yield listening
    listening.stop()


@pytest.fixture
def sqs(listening: listener_kit.Listening) -> Iterator[Any]:
    client = listener_kit.client(listening.endpoint)
    yield client
    client.close()


def error_of(call: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    error: dict[str, Any] = caught.value.response["Error"]
    error["status"] = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    error["class"] = type(caught.value).__name__
    return error


def test_send_receive_delete(sqs: Any, listening: listener_kit.Listening) -> None:
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    assert url == f"{listening.endpoint}/000000000000/jobs"
    sent = sqs.send_message(QueueUrl=url, MessageBody="resize image 42")
    sqs_kit.sdk_check_send("resize image 42", None, sent)
    received = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert [message["Body"] for message in received] == ["resize image 42"]
    message = received[0]
    sqs_kit.sdk_check_receive(message)
    assert message["MessageId"] == sent["MessageId"]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert message["Attributes"]["SenderId"] == listener_kit.ACCESS_KEY
    assert abs(int(message["Attributes"]["SentTimestamp"]) - time.time() * 1000) < 60_000
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    with Client.connect(listening.thread.address) as native:
        stats = native.stats("jobs")
    assert (stats["ready"], stats["in_flight"], stats["confirmed"]) == (0, 0, 1)

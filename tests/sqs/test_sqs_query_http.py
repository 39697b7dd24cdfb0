"""The Query protocol (form parameters in, XML out) against a real server's HTTP listener.

Two kinds of client: botocore itself with the Query model `sqs_kit` restores
(it serializes, signs and parses as it did when SQS spoke only Query), and raw
requests signed with botocore's SigV4 signers (`listener_kit.signed`): a GET
with the parameters in the query string, a POST to the queue's own URL path,
a presigned URL.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import listener_kit
import pytest
import sqs_kit
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

NS = {"sqs": "http://queue.amazonaws.com/doc/2012-11-05/"}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqs_kit.query_model_dir(tmp_path_factory.mktemp("query-model"))


@pytest.fixture
def listening(server_factory: Callable[..., Any]) -> Iterator[listener_kit.Listening]:
    listening = listener_kit.Listening.start(
        server_factory(), credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY}
    )
    yield listening
    listening.stop()


def test_botocore_query_client_round_trip(listening: listener_kit.Listening, model_root: Path) -> None:
    sqs = listener_kit.client(listening.endpoint, "query", model_root=model_root)
    url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "40"}, tags={"t": "1"})["QueueUrl"]
    assert url == f"{listening.endpoint}/000000000000/q"
    attributes = {"n": {"DataType": "Number", "StringValue": "7"}, "b": {"DataType": "Binary", "BinaryValue": b"\x01"}}
    sent = sqs.send_message(QueueUrl=url, MessageBody="a & <b>\r\n", MessageAttributes=attributes)
    sqs_kit.sdk_check_send("a & <b>\r\n", attributes, sent)
    batch = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "two"}])
    assert [entry["Id"] for entry in batch["Successful"]] == ["x"]
    received = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    assert [message["Body"] for message in received] == ["a & <b>\r\n", "two"]
    for message in received:
        sqs_kit.sdk_check_receive(message)
    assert received[0]["MessageAttributes"] == attributes
    deleted = sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)]
    )
    assert len(deleted["Successful"]) == 2
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "ApproximateNumberOfMessages"])
    assert got["Attributes"] == {"VisibilityTimeout": "40", "ApproximateNumberOfMessages": "0"}
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"t": "1"}
    with pytest.raises(ClientError) as caught:
        sqs.get_queue_url(QueueName="missing")
    assert caught.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert type(caught.value).__name__ == "QueueDoesNotExist"
    sqs.close()


def xml_of(body: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(body)


def test_signed_get_with_the_parameters_in_the_query_string(listening: listener_kit.Listening) -> None:
    query = urlencode({"Action": "CreateQueue", "QueueName": "by-get", "Version": "2012-11-05"})
    path, headers, _ = listener_kit.signed("GET", f"{listening.endpoint}/?{query}")
    status, reply_headers, body = listener_kit.exchange(listening, "GET", path, headers)
    assert status == 200, body
    assert reply_headers["content-type"] == "text/xml"
    url = xml_of(body).find("sqs:CreateQueueResult/sqs:QueueUrl", NS)
    assert url is not None and url.text == f"{listening.endpoint}/000000000000/by-get"


def test_signed_post_to_the_queue_path(listening: listener_kit.Listening) -> None:
    create = urlencode({"Action": "CreateQueue", "QueueName": "by-path", "Version": "2012-11-05"}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    path, headers, body = listener_kit.signed("POST", f"{listening.endpoint}/", body=create, headers=form)
    assert listener_kit.exchange(listening, "POST", path, headers, body)[0] == 200
    send = urlencode({"Action": "SendMessage", "MessageBody": "hé", "Version": "2012-11-05"}).encode()
    queue = f"{listening.endpoint}/000000000000/by-path"
    path, headers, body = listener_kit.signed("POST", queue, body=send, headers=form)
    assert path == "/000000000000/by-path"
    status, _, reply = listener_kit.exchange(listening, "POST", path, headers, body)
    assert status == 200, reply
    digest = xml_of(reply).find("sqs:SendMessageResult/sqs:MD5OfMessageBody", NS)
    assert digest is not None and digest.text == hashlib.md5("hé".encode()).hexdigest()
    receive = urlencode({"Action": "ReceiveMessage", "Version": "2012-11-05"}).encode()
    path, headers, body = listener_kit.signed("POST", queue, body=receive, headers=form)
    status, _, reply = listener_kit.exchange(listening, "POST", path, headers, body)
    bodies = [element.text for element in xml_of(reply).iterfind("sqs:ReceiveMessageResult/sqs:Message/sqs:Body", NS)]
    assert (status, bodies) == (200, ["hé"])


def test_presigned_url(listening: listener_kit.Listening) -> None:
    query = urlencode({"Action": "ListQueues", "Version": "2012-11-05"})
    request = AWSRequest(method="GET", url=f"{listening.endpoint}/?{query}")
    SigV4QueryAuth(Credentials(listener_kit.ACCESS_KEY, listener_kit.SECRET_KEY), "sqs", "eu-west-1", 60).add_auth(
        request
    )
    url = request.prepare().url
    status, _, body = listener_kit.exchange(listening, "GET", url.split(str(listening.port), 1)[1], {})
    assert status == 200, body
    assert xml_of(body).tag == "{http://queue.amazonaws.com/doc/2012-11-05/}ListQueuesResponse"


@pytest.mark.parametrize(
    ("secret", "code", "status"),
    [("wrong-secret", "SignatureDoesNotMatch", 403), (None, "MissingAuthenticationToken", 403)],
)
def test_refused_signatures_in_xml(
    listening: listener_kit.Listening, secret: str | None, code: str, status: int
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"Action=ListQueues&Version=2012-11-05"
    if secret is None:
        path, headers = "/", form
    else:
        path, headers, body = listener_kit.signed(
            "POST", f"{listening.endpoint}/", body=body, headers=form, secret_key=secret
        )
    got_status, _, reply = listener_kit.exchange(listening, "POST", path, headers, body)
    error = xml_of(reply).find("sqs:Error/sqs:Code", NS)
    assert (got_status, error is not None and error.text) == (status, code)

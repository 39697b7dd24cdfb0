"""The console's peek shows a message sent over SQS as its SQS body and attributes, not as dbqueue's envelope.

A real `Server` with its HTTP listener: boto3 sends to the SQS API and the test peeks through the console's
JSON API on the same port (`console_kit.Api`), as the page does. A message sent over SQS is stored in an
envelope (`dbqueue.protocol.envelope`: a 0xFF magic, the sender, the attributes, then the body), which the
page showed as a hex dump; the peek now gives the body as ``data`` and the rest as ``sqs``. A message sent
natively is shown as it was sent, with ``sqs`` null.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from console_kit import Api, key

from dbqueue import Client

boto3 = pytest.importorskip("boto3")


def test_peek_opens_the_envelope_of_an_sqs_message(server_factory: Callable[..., Any]) -> None:
    thread = server_factory(http_port=0)
    endpoint = f"http://127.0.0.1:{thread.server.http_port}"
    sqs = boto3.client(
        "sqs", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x"
    )
    try:
        url = sqs.create_queue(QueueName="mixed")["QueueUrl"]
        body = json.dumps({"job": "resize", "image": 43})
        sqs.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={
                "kind": {"DataType": "String", "StringValue": "thumbnail"},
                "size": {"DataType": "Number.int", "StringValue": "128"},
                "raw": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
            },
            MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-abc"}},
        )
        sqs.send_message(QueueUrl=url, MessageBody="hello\r")
    finally:
        sqs.close()
    with Client.connect(thread.address) as native:
        native.send("mixed", b"\xffnot an envelope")  # a native payload that merely starts like one
        stored = [message.data for message in native.peek("mixed", 10)]
    api = Api(thread.server.http_port)
    api.open()
    first, second, third = api.get(f"peek?q={key('mixed')}&count=10")["messages"]

    assert base64.b64decode(first["data"]).decode() == body  # the body, pretty-printable JSON, not the envelope
    assert first["size"] == len(stored[0]) > len(body) and not first["truncated"]
    sqs_part = first["sqs"]
    assert sqs_part["body_size"] == len(body) and sqs_part["sent_to"] == "mixed"
    assert sqs_part["sender"] == "000000000000" and 0 <= sqs_part["sent_age"] < 60
    assert sqs_part["attributes"] == [
        {"name": "kind", "type": "String", "text": "thumbnail"},
        {"name": "raw", "type": "Binary", "base64": base64.b64encode(b"\x00\xff").decode()},
        {"name": "size", "type": "Number.int", "text": "128"},
    ]
    assert sqs_part["system_attributes"] == [{"name": "AWSTraceHeader", "type": "String", "text": "Root=1-abc"}]

    assert base64.b64decode(second["data"]) == b"hello\r"
    assert second["sqs"]["attributes"] == [] and second["sqs"]["system_attributes"] == []

    assert base64.b64decode(third["data"]) == b"\xffnot an envelope" and third["sqs"] is None

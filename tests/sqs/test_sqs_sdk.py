"""Real botocore SQS clients, of both protocols, against dbqueue.sqs behind an in-process model server.

botocore serializes each call, signs it with SigV4 and parses the answer
exactly as it does against AWS; `sqs_kit.ModelSqs` verifies the signature,
decodes with dbqueue.sqs, acts on a dict of queues and encodes the answer.
Every test runs twice: AWS JSON 1.0 (current SDKs, the aws CLI) and the Query
protocol (form parameters and XML, older SDKs). MD5s are checked with the
SDKs' own algorithm (`sqs_kit.sdk_check_send` / `sdk_check_receive`), which
botocore itself does not run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqs_kit
from botocore.exceptions import ClientError

from dbqueue import sqs


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqs_kit.query_model_dir(tmp_path_factory.mktemp("query-model"))


@pytest.fixture
def server() -> sqs_kit.ModelSqs:
    return sqs_kit.ModelSqs()


@pytest.fixture(params=["json", "query"])
def client(request: pytest.FixtureRequest, server: sqs_kit.ModelSqs, model_root: Path) -> Iterator[Any]:
    sqs_client = sqs_kit.client(request.param, server, model_root)
    yield sqs_client
    sqs_client.close()


def error_of(call: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    error: dict[str, Any] = caught.value.response["Error"]
    error["status"] = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    error["class"] = type(caught.value).__name__
    return error


def test_the_two_clients_speak_the_two_protocols(client: Any, server: sqs_kit.ModelSqs) -> None:
    client.list_queues()
    exchange = server.exchanges[-1]
    headers = {name.lower(): value for name, value in exchange.headers}
    if client.meta.service_model.protocol == "json":
        assert headers["content-type"] == "application/x-amz-json-1.0"
        assert headers["x-amz-target"] == "AmazonSQS.ListQueues"
        assert dict(exchange.reply.headers)["Content-Type"] == "application/x-amz-json-1.0"
    else:
        assert exchange.body.startswith(b"Action=ListQueues&Version=2012-11-05")
        assert exchange.reply.body.startswith(b'<?xml version="1.0"?><ListQueuesResponse xmlns=')
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")


def test_queue_lifecycle(client: Any) -> None:
    created = client.create_queue(
        QueueName="jobs", Attributes={"VisibilityTimeout": "45", "DelaySeconds": "0"}, tags={"team": "ops"}
    )
    url = created["QueueUrl"]
    assert url == "http://localhost:9324/000000000000/jobs"
    # Creating it again with the same attributes returns the same URL; different ones are refused.
    assert (
        client.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "45", "DelaySeconds": "0"})["QueueUrl"]
        == url
    )
    error = error_of(client.create_queue, QueueName="jobs", Attributes={"VisibilityTimeout": "46"})
    assert (error["class"], error["Code"], error["status"]) == ("QueueNameExists", "QueueAlreadyExists", 400)
    assert client.get_queue_url(QueueName="jobs")["QueueUrl"] == url

    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "45"
    assert attributes["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:jobs"
    client.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "RedrivePolicy": '{"deadLetterTargetArn":"arn:aws:sqs:eu-west-3:000000000000:dlq","maxReceiveCount":"5"}'
        },
    )
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]
    assert attributes == {
        "RedrivePolicy": '{"deadLetterTargetArn":"arn:aws:sqs:eu-west-3:000000000000:dlq","maxReceiveCount":5}'
    }
    client.create_queue(QueueName="dlq")
    sources = client.list_dead_letter_source_queues(QueueUrl=client.get_queue_url(QueueName="dlq")["QueueUrl"])
    assert sources["queueUrls"] == [url]

    client.tag_queue(QueueUrl=url, Tags={"env": "test", "tier": "1"})
    client.untag_queue(QueueUrl=url, TagKeys=["tier"])
    assert client.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "ops", "env": "test"}

    client.purge_queue(QueueUrl=url)
    client.delete_queue(QueueUrl=url)
    error = error_of(client.get_queue_url, QueueName="jobs")
    assert (error["class"], error["Code"], error["status"]) == (
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        400,
    )
    assert error["Message"] == "The specified queue does not exist."


def test_list_queues_by_prefix_and_pages(client: Any) -> None:
    for name in ("b-2", "a-1", "b-1", "b-3", "c-1", "b-4"):
        client.create_queue(QueueName=name)
    everything = client.list_queues()["QueueUrls"]
    assert [url.rsplit("/", 1)[1] for url in everything] == ["a-1", "b-1", "b-2", "b-3", "b-4", "c-1"]
    names: list[str] = []
    pages = 0
    params: dict[str, Any] = {"QueueNamePrefix": "b-", "MaxResults": 3}
    while True:
        page = client.list_queues(**params)
        pages += 1
        names += [url.rsplit("/", 1)[1] for url in page["QueueUrls"]]
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    assert (names, pages) == (["b-1", "b-2", "b-3", "b-4"], 2)
    error = error_of(client.list_queues, MaxResults=1001)
    assert (error["Code"], error["status"]) == ("InvalidParameterValue", 400)


def test_send_receive_delete_with_attributes_and_the_sdks_md5_checks(client: Any) -> None:
    url = client.create_queue(QueueName="jobs")["QueueUrl"]
    body = "héllo <wörld> & 🙂\r\n\tend"
    attributes = {
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": bytes([0, 1, 255])},
        "label": {"DataType": "String.custom", "StringValue": "a&b<c>\r"},
        "trace.id": {"DataType": "String", "StringValue": "1"},
    }
    trace = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe1be46a994272793"}}
    sent = client.send_message(
        QueueUrl=url, MessageBody=body, MessageAttributes=attributes, MessageSystemAttributes=trace
    )
    sqs_kit.sdk_check_send(body, attributes, sent)
    assert sent["MD5OfMessageSystemAttributes"] == sqs_kit.sdk_md5_of_attributes(trace)
    assert sent["MessageId"] == "00000000-0000-0000-0000-000000000001"

    [message] = client.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"], VisibilityTimeout=0
    )["Messages"]
    sqs_kit.sdk_check_receive(message)
    assert message["Body"] == body
    assert message["MessageAttributes"] == attributes
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert message["MessageId"] == sent["MessageId"]

    # A receive that asks for some attributes gets those, and the digest of those alone.
    [message] = client.receive_message(QueueUrl=url, MessageAttributeNames=["trace.*", "count"], VisibilityTimeout=0)[
        "Messages"
    ]
    sqs_kit.sdk_check_receive(message)
    assert set(message["MessageAttributes"]) == {"trace.id", "count"}
    assert message["MD5OfMessageAttributes"] != sent["MD5OfMessageAttributes"]
    assert "Attributes" not in message

    # No attributes asked for: none returned, no attribute digest.
    [message] = client.receive_message(QueueUrl=url)["Messages"]
    sqs_kit.sdk_check_receive(message)
    assert "MessageAttributes" not in message and "MD5OfMessageAttributes" not in message

    client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert "Messages" not in client.receive_message(QueueUrl=url)


def test_batches(client: Any) -> None:
    url = client.create_queue(QueueName="jobs")["QueueUrl"]
    entries = [
        {
            "Id": f"entry-{index}",
            "MessageBody": f"message {index}",
            "MessageAttributes": {"n": {"DataType": "Number", "StringValue": str(index)}},
        }
        for index in range(10)
    ]
    sent = client.send_message_batch(QueueUrl=url, Entries=entries)
    assert [entry["Id"] for entry in sent["Successful"]] == [entry["Id"] for entry in entries]
    assert sent.get("Failed", []) == []
    for entry, answer in zip(entries, sent["Successful"]):
        sqs_kit.sdk_check_send(entry["MessageBody"], entry["MessageAttributes"], answer)

    messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    assert [message["Body"] for message in messages] == [f"message {index}" for index in range(10)]
    for message in messages:
        sqs_kit.sdk_check_receive(message)

    changed = client.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "ReceiptHandle": messages[0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "b", "ReceiptHandle": "forged", "VisibilityTimeout": 0},
        ],
    )
    assert [entry["Id"] for entry in changed["Successful"]] == ["a"]
    assert [(entry["Id"], entry["Code"], entry["SenderFault"]) for entry in changed["Failed"]] == [
        ("b", "ReceiptHandleIsInvalid", True)
    ]

    forged = messages[1]["ReceiptHandle"][:-2] + ("AA" if not messages[1]["ReceiptHandle"].endswith("AA") else "BB")
    entries = [{"Id": f"d{index}", "ReceiptHandle": message["ReceiptHandle"]} for index, message in enumerate(messages)]
    deleted = client.delete_message_batch(
        QueueUrl=url, Entries=entries[:9] + [{"Id": "forged", "ReceiptHandle": forged}]
    )
    assert len(deleted["Successful"]) == 9
    assert [(entry["Id"], entry["Code"]) for entry in deleted["Failed"]] == [("forged", "ReceiptHandleIsInvalid")]


@pytest.mark.parametrize(
    ("entries", "shape", "code"),
    [
        (
            [{"Id": str(index), "MessageBody": "x"} for index in range(11)],
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "same", "MessageBody": "x"}, {"Id": "same", "MessageBody": "y"}],
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        (
            [{"Id": "no:colons", "MessageBody": "x"}],
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
        ),
        ([{"Id": "x" * 81, "MessageBody": "x"}], "InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId"),
        ([], "EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(index), "MessageBody": "x" * 200_000} for index in range(6)],
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
    ],
)
def test_batch_refusals_raise_the_sdks_exception_classes(
    client: Any, entries: list[dict[str, str]], shape: str, code: str
) -> None:
    url = client.create_queue(QueueName="jobs")["QueueUrl"]
    error = error_of(client.send_message_batch, QueueUrl=url, Entries=entries)
    assert (error["class"], error["Code"], error["status"]) == (shape, code, 400)


def test_refusals_raise_the_sdks_exception_classes_and_codes(client: Any) -> None:
    url = client.create_queue(QueueName="jobs")["QueueUrl"]
    missing = url.replace("jobs", "absent")
    cases: list[tuple[Any, dict[str, Any], str, str]] = [
        (
            client.send_message,
            {"QueueUrl": missing, "MessageBody": "x"},
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
        (
            client.send_message,
            {"QueueUrl": url.replace("000000000000", "123456789012"), "MessageBody": "x"},
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
        (
            client.send_message,
            {"QueueUrl": url, "MessageBody": "bad \x00 byte"},
            "InvalidMessageContents",
            "InvalidMessageContents",
        ),
        (
            client.delete_message,
            {"QueueUrl": url, "ReceiptHandle": "forged"},
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
        ),
        (
            client.get_queue_attributes,
            {"QueueUrl": url, "AttributeNames": ["Nope"]},
            "InvalidAttributeName",
            "InvalidAttributeName",
        ),
        (client.create_queue, {"QueueName": "jobs.fifo"}, "ClientError", "InvalidParameterValue"),
        (
            client.create_queue,
            {"QueueName": "x", "Attributes": {"FifoQueue": "true"}},
            "ClientError",
            "InvalidParameterValue",
        ),
        (client.create_queue, {"QueueName": "bad name!"}, "ClientError", "InvalidParameterValue"),
        (client.receive_message, {"QueueUrl": url, "MaxNumberOfMessages": 11}, "ClientError", "InvalidParameterValue"),
        (client.receive_message, {"QueueUrl": url, "WaitTimeSeconds": 21}, "ClientError", "InvalidParameterValue"),
        (
            client.receive_message,
            {"QueueUrl": url, "VisibilityTimeout": 43_201},
            "ClientError",
            "InvalidParameterValue",
        ),
        (
            client.send_message,
            {"QueueUrl": url, "MessageBody": "x", "DelaySeconds": 901},
            "ClientError",
            "InvalidParameterValue",
        ),
        (
            client.send_message,
            {"QueueUrl": url, "MessageBody": "x" * 1_048_577},
            "ClientError",
            "InvalidParameterValue",
        ),
        (client.send_message, {"QueueUrl": url, "MessageBody": ""}, "ClientError", "MissingParameter"),
        (
            client.set_queue_attributes,
            {"QueueUrl": url, "Attributes": {"VisibilityTimeout": "43201"}},
            "InvalidAttributeValue",
            "InvalidAttributeValue",
        ),
        (
            client.add_permission,
            {"QueueUrl": url, "Label": "l", "AWSAccountIds": ["1"], "Actions": ["SendMessage"]},
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
        ),
    ]
    for call, params, shape, code in cases:
        error = error_of(call, **params)
        assert (error["class"], error["Code"], error["status"]) == (shape, code, 400), (call, params, error)
    fifo = error_of(client.create_queue, QueueName="jobs.fifo")
    assert fifo["Message"] == "FIFO queues are not supported."


def test_signature_failures_reach_the_sdk(server: sqs_kit.ModelSqs, model_root: Path) -> None:
    for protocol in ("json", "query"):
        wrong_secret = sqs_kit.client(protocol, server, model_root, secret_key="not-the-secret")
        error = error_of(wrong_secret.list_queues)
        assert (error["Code"], error["status"]) == ("SignatureDoesNotMatch", 403)
        unknown = sqs_kit.client(protocol, server, model_root, access_key="AKIDUNKNOWN")
        error = error_of(unknown.list_queues)
        assert (error["Code"], error["status"], error["Message"]) == (
            "InvalidClientTokenId",
            403,
            "The security token included in the request is invalid.",
        )


def test_the_error_table_agrees_with_the_query_era_model() -> None:
    """Every error of botocore 1.20's Query model keeps its code and status in `ErrorCode`."""
    by_shape = {code.shape: code for code in sqs.ErrorCode}
    for shape, (query_code, status) in sqs_kit.QUERY_ERRORS.items():
        assert (by_shape[shape].query_code, by_shape[shape].status) == (query_code, status), shape
    # And every error shape of today's model is one of ours (the KMS ones aside: dbqueue has no KMS).
    model_shapes = {name for name, shape in sqs_kit.json_model()["shapes"].items() if shape.get("exception")}
    assert {shape for shape in model_shapes if not shape.startswith("Kms")} - set(by_shape) == {"InvalidIdFormat"}

"""Decoding both wire protocols into typed requests, and SQS's checks on them.

The differential test serializes the same call with botocore's JSON
serializer and its Query serializer (the Query-era model, see sqs_kit) and
requires the two decodes to be equal: one model per action, whatever the wire.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
import sqs_kit
from botocore.model import ServiceModel
from botocore.serialize import create_serializer
from hypothesis import given
from hypothesis import strategies as st

from dbqueue import sqs
from dbqueue.sqs import ErrorCode, MessageAttributeValue, Protocol, SqsError, build_request, decode_request

URL = "http://localhost:9324/000000000000/jobs"
JSON_MODEL = ServiceModel(sqs_kit.json_model(), "sqs")
QUERY_MODEL = ServiceModel(sqs_kit.query_model(), "sqs")
JSON = create_serializer("json")
QUERY = create_serializer("query")
ARN = "arn:aws:sqs:us-east-1:000000000000:"

ATTRIBUTES = {
    "n": {"DataType": "Number", "StringValue": "-1.5e3"},
    "b": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
    "s.x": {"DataType": "String.json", "StringValue": '{"a": [1, 2]}'},
}
TRACE = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe1be46a994272793"}}

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("SendMessage", {"QueueUrl": URL, "MessageBody": "hello"}),
    (
        "SendMessage",
        {
            "QueueUrl": URL,
            "MessageBody": "héllo & <x> + y = z%",
            "DelaySeconds": 5,
            "MessageAttributes": ATTRIBUTES,
            "MessageSystemAttributes": TRACE,
            "MessageGroupId": "g",
        },
    ),
    (
        "SendMessageBatch",
        {
            "QueueUrl": URL,
            "Entries": [
                {"Id": "a", "MessageBody": "1", "MessageAttributes": ATTRIBUTES},
                {"Id": "b-2_", "MessageBody": "2", "DelaySeconds": 900, "MessageSystemAttributes": TRACE},
            ],
        },
    ),
    ("ReceiveMessage", {"QueueUrl": URL}),
    (
        "ReceiveMessage",
        {
            "QueueUrl": URL,
            "MaxNumberOfMessages": 10,
            "VisibilityTimeout": 0,
            "WaitTimeSeconds": 20,
            "AttributeNames": ["SentTimestamp"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "AWSTraceHeader"],
            "MessageAttributeNames": ["All", "bar.*"],
            "ReceiveRequestAttemptId": "attempt",
        },
    ),
    ("DeleteMessage", {"QueueUrl": URL, "ReceiptHandle": "handle+/="}),
    (
        "DeleteMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "1", "ReceiptHandle": "h1"}, {"Id": "2", "ReceiptHandle": "h2"}]},
    ),
    ("ChangeMessageVisibility", {"QueueUrl": URL, "ReceiptHandle": "h", "VisibilityTimeout": 43200}),
    (
        "ChangeMessageVisibilityBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "1", "ReceiptHandle": "h1", "VisibilityTimeout": 0}]},
    ),
    (
        "CreateQueue",
        {
            "QueueName": "jobs",
            "Attributes": {
                "DelaySeconds": "0",
                "VisibilityTimeout": "30",
                "MaximumMessageSize": "1048576",
                "MessageRetentionPeriod": "60",
                "ReceiveMessageWaitTimeSeconds": "20",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": ARN + "dlq", "maxReceiveCount": 3}),
                "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [ARN + "jobs"]}),
                "Policy": '{"Version": "2012-10-17"}',
                "SqsManagedSseEnabled": "false",
                "FifoQueue": "false",
            },
            "tags": {"team": "ops", "empty": ""},
        },
    ),
    ("GetQueueUrl", {"QueueName": "jobs"}),
    ("GetQueueUrl", {"QueueName": "jobs", "QueueOwnerAWSAccountId": "000000000000"}),
    ("ListQueues", {}),
    ("ListQueues", {"QueueNamePrefix": "j", "MaxResults": 1000, "NextToken": "token"}),
    ("DeleteQueue", {"QueueUrl": URL}),
    ("PurgeQueue", {"QueueUrl": URL}),
    ("GetQueueAttributes", {"QueueUrl": URL, "AttributeNames": ["All", "QueueArn"]}),
    ("SetQueueAttributes", {"QueueUrl": URL, "Attributes": {"VisibilityTimeout": "5", "RedrivePolicy": ""}}),
    ("TagQueue", {"QueueUrl": URL, "Tags": {"a": "1", "b": "2"}}),
    ("UntagQueue", {"QueueUrl": URL, "TagKeys": ["a", "b"]}),
    ("ListQueueTags", {"QueueUrl": URL}),
    ("ListDeadLetterSourceQueues", {"QueueUrl": URL, "MaxResults": 5, "NextToken": "t"}),
    ("StartMessageMoveTask", {"SourceArn": ARN + "dlq"}),
    (
        "StartMessageMoveTask",
        {"SourceArn": ARN + "dlq", "DestinationArn": ARN + "jobs", "MaxNumberOfMessagesPerSecond": 500},
    ),
    ("CancelMessageMoveTask", {"TaskHandle": "task"}),
    ("ListMessageMoveTasks", {"SourceArn": ARN + "dlq", "MaxResults": 10}),
]


def over_json(action: str, params: dict[str, Any]) -> sqs.Request:
    wire = JSON.serialize_to_request(params, JSON_MODEL.operation_model(action))
    headers = wire["headers"]
    protocol = sqs.protocol_of(headers["Content-Type"], headers["X-Amz-Target"])
    assert protocol is Protocol.JSON
    return decode_request(protocol, "/", "", wire["body"], headers["X-Amz-Target"])


def over_query(action: str, params: dict[str, Any], path: str = "/") -> sqs.Request:
    wire = QUERY.serialize_to_request(params, QUERY_MODEL.operation_model(action))
    protocol = sqs.protocol_of(wire["headers"]["Content-Type"], None)
    assert protocol is Protocol.QUERY
    return decode_request(protocol, path, "", urlencode(wire["body"]).encode())


@pytest.mark.parametrize(("action", "params"), CALLS, ids=[action for action, _ in CALLS])
def test_both_protocols_decode_to_the_same_request(action: str, params: dict[str, Any]) -> None:
    request = over_json(action, params)
    assert request.action == action
    assert over_query(action, params) == request


def test_a_send_decodes_to_its_fields() -> None:
    request = over_json("SendMessage", CALLS[1][1])
    assert request == sqs.SendMessage(
        "jobs",
        "héllo & <x> + y = z%",
        5,
        {
            "n": MessageAttributeValue("Number", "-1.5e3"),
            "b": MessageAttributeValue("Binary", binary_value=b"\x00\xff"),
            "s.x": MessageAttributeValue("String.json", '{"a": [1, 2]}'),
        },
        {"AWSTraceHeader": MessageAttributeValue("String", "Root=1-5759e988-bd862e3fe1be46a994272793")},
        "g",
        len("héllo & <x> + y = z%".encode()) + (1 + 6 + 6) + (1 + 6 + 2) + (3 + 11 + 13),
    )


def test_a_receive_merges_both_names_of_system_attributes() -> None:
    request = over_json("ReceiveMessage", CALLS[4][1])
    assert request == sqs.ReceiveMessage(
        "jobs",
        10,
        0,
        20,
        frozenset({"SentTimestamp", "ApproximateReceiveCount", "AWSTraceHeader"}),
        ("All", "bar.*"),
        "attempt",
    )
    assert over_json("ReceiveMessage", {"QueueUrl": URL}) == sqs.ReceiveMessage("jobs")


def test_queue_attributes_come_out_canonical() -> None:
    request = over_json("CreateQueue", CALLS[9][1])
    assert isinstance(request, sqs.CreateQueue)
    assert "FifoQueue" not in request.attributes
    assert request.attributes["RedrivePolicy"] == (
        '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":3}'
    )
    assert sqs.redrive_policy(request.attributes["RedrivePolicy"]) == sqs.RedrivePolicy("dlq", 3)
    assert request.tags == {"team": "ops", "empty": ""}


def test_the_query_examples_of_the_aws_documentation() -> None:
    """Requests as AWS's API reference writes them: sent to the queue's URL, '+' for spaces, extra parameters."""
    query = (
        "Action=SendMessage&MessageBody=This+is+a+test+message"
        "&MessageAttribute.1.Name=my_attribute_name_1&MessageAttribute.1.Value.StringValue=my_attribute_value_1"
        "&MessageAttribute.1.Value.DataType=String"
        "&MessageAttribute.2.Name=my_attribute_name_2&MessageAttribute.2.Value.StringValue=my_attribute_value_2"
        "&MessageAttribute.2.Value.DataType=String"
        "&Expires=2020-05-05T22%3A52%3A43PST&Version=2012-11-05"
    )
    request = decode_request(Protocol.QUERY, "/000000000000/MyQueue", query, b"")
    assert request == sqs.SendMessage(
        "MyQueue",
        "This is a test message",
        None,
        {
            "my_attribute_name_1": MessageAttributeValue("String", "my_attribute_value_1"),
            "my_attribute_name_2": MessageAttributeValue("String", "my_attribute_value_2"),
        },
        {},
        None,
        22 + (19 + 6 + 20) * 2,
    )
    batch = (
        "Action=SendMessageBatch&SendMessageBatchRequestEntry.1.Id=test_msg_001"
        "&SendMessageBatchRequestEntry.1.MessageBody=test%20message%20body%201"
        "&SendMessageBatchRequestEntry.2.Id=test_msg_002"
        "&SendMessageBatchRequestEntry.2.MessageBody=test%20message%20body%202"
        "&SendMessageBatchRequestEntry.2.DelaySeconds=60"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Name=test_attribute_name_1"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue=test_attribute_value_1"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.DataType=String&Version=2012-11-05"
    )
    request = decode_request(Protocol.QUERY, "/000000000000/MyQueue", "", batch.encode())
    assert isinstance(request, sqs.SendMessageBatch)
    assert [(entry.id, entry.body, entry.delay_seconds) for entry in request.entries] == [
        ("test_msg_001", "test message body 1", None),
        ("test_msg_002", "test message body 2", 60),
    ]
    assert request.entries[1].message_attributes == {
        "test_attribute_name_1": MessageAttributeValue("String", "test_attribute_value_1")
    }
    receive = (
        "Action=ReceiveMessage&MaxNumberOfMessages=5&VisibilityTimeout=15&AttributeName=All&Version=2012-11-05"
    ).replace("AttributeName=All", "AttributeName.1=All")
    assert decode_request(Protocol.QUERY, "/000000000000/MyQueue", receive, b"") == sqs.ReceiveMessage(
        "MyQueue", 5, 15, None, frozenset({"All"})
    )
    # Numbered items may arrive in any order; they are read by number.
    attributes = (
        "Action=SetQueueAttributes&Attribute.2.Name=DelaySeconds&Attribute.2.Value=5"
        "&Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=9"
    )
    request = decode_request(Protocol.QUERY, "/000000000000/MyQueue", attributes, b"")
    assert request == sqs.SetQueueAttributes("MyQueue", {"VisibilityTimeout": "9", "DelaySeconds": "5"})


def refusal(action: str, params: dict[str, Any]) -> SqsError:
    with pytest.raises(SqsError) as caught:
        build_request(action, params)
    return caught.value


def send(**params: Any) -> dict[str, Any]:
    return {"QueueUrl": URL, "MessageBody": "x", **params}


def attribute(value: Any) -> dict[str, Any]:
    return send(MessageAttributes={"a": value})


REFUSALS: list[tuple[str, dict[str, Any], ErrorCode, str]] = [
    # Queues, actions, types.
    ("SendMessage", {"MessageBody": "x"}, ErrorCode.MISSING_PARAMETER, "parameter QueueUrl."),
    ("SendMessage", {"QueueUrl": URL}, ErrorCode.MISSING_PARAMETER, "parameter MessageBody."),
    ("SendMessage", send(MessageBody=""), ErrorCode.MISSING_PARAMETER, "parameter MessageBody."),
    ("SendMessage", send(MessageBody=5), ErrorCode.INVALID_PARAMETER_VALUE, "Must be a string"),
    ("SendMessage", send(QueueUrl="jobs"), ErrorCode.INVALID_ADDRESS, "not valid for this endpoint"),
    ("SendMessage", send(QueueUrl=URL.replace("0" * 12, "1" * 12)), ErrorCode.QUEUE_DOES_NOT_EXIST, ""),
    ("Frobnicate", {}, ErrorCode.INVALID_ACTION, "Frobnicate"),
    ("AddPermission", {}, ErrorCode.UNSUPPORTED_OPERATION, "not supported"),
    ("RemovePermission", {}, ErrorCode.UNSUPPORTED_OPERATION, "not supported"),
    (
        "GetQueueUrl",
        {"QueueName": "jobs", "QueueOwnerAWSAccountId": "123456789012"},
        ErrorCode.QUEUE_DOES_NOT_EXIST,
        "",
    ),
    # Bodies: characters and size.
    ("SendMessage", send(MessageBody="a\x00b"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#x0'"),
    ("SendMessage", send(MessageBody="\x08"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#x8'"),
    ("SendMessage", send(MessageBody="\x1f"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#x1F'"),
    ("SendMessage", send(MessageBody="\ud800"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#xD800'"),
    ("SendMessage", send(MessageBody="\ufffe"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#xFFFE'"),
    ("SendMessage", send(MessageBody="\uffff"), ErrorCode.INVALID_MESSAGE_CONTENTS, "'#xFFFF'"),
    ("SendMessage", send(MessageBody="x" * 1_048_577), ErrorCode.INVALID_PARAMETER_VALUE, "shorter than 1048576"),
    ("SendMessage", send(MessageBody="é" * 524_289), ErrorCode.INVALID_PARAMETER_VALUE, "shorter than 1048576"),
    (
        "SendMessage",
        send(MessageBody="x" * 1_048_000, MessageAttributes={"a": {"DataType": "String", "StringValue": "y" * 600}}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "shorter than 1048576",
    ),
    # Numbers.
    ("SendMessage", send(DelaySeconds=901), ErrorCode.INVALID_PARAMETER_VALUE, "Value 901 for parameter DelaySeconds"),
    ("SendMessage", send(DelaySeconds=-1), ErrorCode.INVALID_PARAMETER_VALUE, "DelaySeconds"),
    ("SendMessage", send(DelaySeconds="5s"), ErrorCode.INVALID_PARAMETER_VALUE, "Must be an integer"),
    ("SendMessage", send(DelaySeconds=True), ErrorCode.INVALID_PARAMETER_VALUE, "Must be an integer"),
    (
        "ReceiveMessage",
        {"QueueUrl": URL, "MaxNumberOfMessages": 0},
        ErrorCode.INVALID_PARAMETER_VALUE,
        "between 1 and 10",
    ),
    ("ReceiveMessage", {"QueueUrl": URL, "MaxNumberOfMessages": 11}, ErrorCode.INVALID_PARAMETER_VALUE, "Value 11"),
    ("ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 21}, ErrorCode.INVALID_PARAMETER_VALUE, ">= 0 and <= 20"),
    ("ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": -1}, ErrorCode.INVALID_PARAMETER_VALUE, "WaitTimeSeconds"),
    ("ReceiveMessage", {"QueueUrl": URL, "VisibilityTimeout": 43201}, ErrorCode.INVALID_PARAMETER_VALUE, "43200"),
    ("ReceiveMessage", {"QueueUrl": URL, "AttributeNames": ["Colour"]}, ErrorCode.INVALID_ATTRIBUTE_NAME, "Colour"),
    ("ReceiveMessage", {"QueueUrl": URL, "AttributeNames": "All"}, ErrorCode.INVALID_PARAMETER_VALUE, "list"),
    (
        "ChangeMessageVisibility",
        {"QueueUrl": URL, "ReceiptHandle": "h"},
        ErrorCode.MISSING_PARAMETER,
        "VisibilityTimeout",
    ),
    (
        "ChangeMessageVisibility",
        {"QueueUrl": URL, "VisibilityTimeout": 1},
        ErrorCode.MISSING_PARAMETER,
        "ReceiptHandle",
    ),
    ("DeleteMessage", {"QueueUrl": URL}, ErrorCode.MISSING_PARAMETER, "ReceiptHandle"),
    ("ListQueues", {"MaxResults": 0}, ErrorCode.INVALID_PARAMETER_VALUE, "between 1 and 1000"),
    ("ListMessageMoveTasks", {"SourceArn": ARN + "q", "MaxResults": 11}, ErrorCode.INVALID_PARAMETER_VALUE, "10"),
    ("StartMessageMoveTask", {}, ErrorCode.MISSING_PARAMETER, "SourceArn"),
    ("StartMessageMoveTask", {"SourceArn": "dlq"}, ErrorCode.INVALID_PARAMETER_VALUE, "SourceArn"),
    (
        "StartMessageMoveTask",
        {"SourceArn": ARN + "q", "MaxNumberOfMessagesPerSecond": 501},
        ErrorCode.INVALID_PARAMETER_VALUE,
        "500",
    ),
    # Message attributes.
    ("SendMessage", attribute({"DataType": "String"}), ErrorCode.INVALID_PARAMETER_VALUE, "non-empty value"),
    (
        "SendMessage",
        attribute({"DataType": "String", "StringValue": ""}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "non-empty",
    ),
    ("SendMessage", attribute({"StringValue": "x"}), ErrorCode.INVALID_PARAMETER_VALUE, "DataType"),
    ("SendMessage", attribute({"DataType": "Text", "StringValue": "x"}), ErrorCode.INVALID_PARAMETER_VALUE, "prefixes"),
    (
        "SendMessage",
        attribute({"DataType": "Number", "StringValue": "12a"}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "number",
    ),
    ("SendMessage", attribute({"DataType": "Binary", "StringValue": "x"}), ErrorCode.INVALID_PARAMETER_VALUE, "Binary"),
    (
        "SendMessage",
        attribute({"DataType": "Binary", "BinaryValue": "!!"}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "Binary",
    ),
    (
        "SendMessage",
        attribute({"DataType": "String", "StringValue": "\x00"}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "allowed",
    ),
    (
        "SendMessage",
        attribute({"DataType": "String", "StringListValues": ["a"]}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "list values",
    ),
    ("SendMessage", attribute("x"), ErrorCode.INVALID_PARAMETER_VALUE, "structure"),
    (
        "SendMessage",
        send(MessageAttributes={f"a{index}": {"DataType": "String", "StringValue": "x"} for index in range(11)}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "[11] exceeds the allowed maximum [10]",
    ),
    *[
        (
            "SendMessage",
            send(MessageAttributes={name: {"DataType": "String", "StringValue": "x"}}),
            ErrorCode.INVALID_PARAMETER_VALUE,
            "is invalid",
        )
        for name in ("", ".a", "a.", "a..b", "a b", "AWS.x", "amazon.x", "x" * 257)
    ],
    (
        "SendMessage",
        send(MessageSystemAttributes={"Other": {"DataType": "String", "StringValue": "x"}}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "Other",
    ),
    (
        "SendMessage",
        send(MessageSystemAttributes={"AWSTraceHeader": {"DataType": "Binary", "BinaryValue": "AA=="}}),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "'String'",
    ),
    (
        "SendMessage",
        send(MessageDeduplicationId="d"),
        ErrorCode.INVALID_PARAMETER_VALUE,
        "FIFO queues are not supported",
    ),
    # Batches.
    ("SendMessageBatch", {"QueueUrl": URL}, ErrorCode.EMPTY_BATCH_REQUEST, "at least one SendMessageBatchRequestEntry"),
    (
        "DeleteMessageBatch",
        {"QueueUrl": URL, "Entries": []},
        ErrorCode.EMPTY_BATCH_REQUEST,
        "DeleteMessageBatchRequestEntry",
    ),
    (
        "SendMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": str(index), "MessageBody": "x"} for index in range(11)]},
        ErrorCode.TOO_MANY_ENTRIES_IN_BATCH_REQUEST,
        "Maximum number of entries per request are 10. You have sent 11.",
    ),
    (
        "DeleteMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "a", "ReceiptHandle": "h"}, {"Id": "a", "ReceiptHandle": "g"}]},
        ErrorCode.BATCH_ENTRY_IDS_NOT_DISTINCT,
        "Id a repeated.",
    ),
    ("SendMessageBatch", {"QueueUrl": URL, "Entries": [{"MessageBody": "x"}]}, ErrorCode.MISSING_PARAMETER, ".1.Id"),
    ("SendMessageBatch", {"QueueUrl": URL, "Entries": [{"Id": ""}]}, ErrorCode.INVALID_BATCH_ENTRY_ID, "alphanumeric"),
    ("SendMessageBatch", {"QueueUrl": URL, "Entries": [{"Id": "a.b"}]}, ErrorCode.INVALID_BATCH_ENTRY_ID, ""),
    ("SendMessageBatch", {"QueueUrl": URL, "Entries": [{"Id": "x" * 81}]}, ErrorCode.INVALID_BATCH_ENTRY_ID, ""),
    (
        "SendMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "a"}]},
        ErrorCode.MISSING_PARAMETER,
        "Entry.1.MessageBody",
    ),
    (
        "SendMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "a", "MessageBody": "x", "DelaySeconds": 901}]},
        ErrorCode.INVALID_PARAMETER_VALUE,
        "DelaySeconds",
    ),
    (
        "SendMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": str(index), "MessageBody": "x" * 104_858} for index in range(10)]},
        ErrorCode.BATCH_REQUEST_TOO_LONG,
        "cannot be longer than 1048576 bytes. You have sent 1048580 bytes.",
    ),
    (
        "DeleteMessageBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "a"}]},
        ErrorCode.MISSING_PARAMETER,
        "DeleteMessageBatchRequestEntry.1.ReceiptHandle",
    ),
    (
        "ChangeMessageVisibilityBatch",
        {"QueueUrl": URL, "Entries": [{"Id": "a", "ReceiptHandle": "h"}]},
        ErrorCode.MISSING_PARAMETER,
        "VisibilityTimeout",
    ),
    ("SendMessageBatch", {"QueueUrl": URL, "Entries": "x"}, ErrorCode.INVALID_PARAMETER_VALUE, "list of entries"),
    # Queues and their attributes.
    ("CreateQueue", {}, ErrorCode.MISSING_PARAMETER, "QueueName"),
    ("CreateQueue", {"QueueName": "a.fifo"}, ErrorCode.INVALID_PARAMETER_VALUE, "FIFO queues are not supported."),
    ("CreateQueue", {"QueueName": "x" * 81}, ErrorCode.INVALID_PARAMETER_VALUE, "1 to 80 in length"),
    *[
        ("CreateQueue", {"QueueName": "q", "Attributes": {name: value}}, ErrorCode.INVALID_ATTRIBUTE_VALUE, name)
        for name, value in [
            ("DelaySeconds", "901"),
            ("DelaySeconds", "-1"),
            ("DelaySeconds", "1.5"),
            ("VisibilityTimeout", "43201"),
            ("MaximumMessageSize", "1023"),
            ("MaximumMessageSize", "1048577"),
            ("MessageRetentionPeriod", "59"),
            ("MessageRetentionPeriod", "1209601"),
            ("ReceiveMessageWaitTimeSeconds", "21"),
            ("KmsDataKeyReusePeriodSeconds", "59"),
            ("SqsManagedSseEnabled", "yes"),
            ("Policy", "not json"),
            ("FifoQueue", "maybe"),
        ]
    ],
    *[
        (
            "CreateQueue",
            {"QueueName": "q", "Attributes": {name: "x"}},
            ErrorCode.INVALID_ATTRIBUTE_NAME,
            f"Unknown Attribute {name}.",
        )
        for name in (
            "Colour",
            "QueueArn",
            "ApproximateNumberOfMessages",
            "CreatedTimestamp",
            "ContentBasedDeduplication",
        )
    ],
    ("CreateQueue", {"QueueName": "q", "Attributes": {"FifoQueue": "true"}}, ErrorCode.INVALID_PARAMETER_VALUE, "FIFO"),
    (
        "SetQueueAttributes",
        {"QueueUrl": URL, "Attributes": {"FifoQueue": "false"}},
        ErrorCode.INVALID_ATTRIBUTE_NAME,
        "FifoQueue",
    ),
    ("SetQueueAttributes", {"QueueUrl": URL}, ErrorCode.MISSING_PARAMETER, "Attributes"),
    (
        "SetQueueAttributes",
        {"QueueUrl": URL, "Attributes": {"KmsMasterKeyId": "k", "SqsManagedSseEnabled": "true"}},
        ErrorCode.INVALID_ATTRIBUTE_NAME,
        "one type of server-side encryption",
    ),
    *[
        (
            "SetQueueAttributes",
            {"QueueUrl": URL, "Attributes": {"RedrivePolicy": policy}},
            ErrorCode.INVALID_PARAMETER_VALUE,
            reason,
        )
        for policy, reason in [
            ("not json", "not a valid JSON map"),
            ("[1]", "not a valid JSON map"),
            ('{"deadLetterTargetArn": "dummy", "maxReceiveCount": 42}', "Invalid value for deadLetterTargetArn."),
            (json.dumps({"deadLetterTargetArn": ARN + "d", "maxReceiveCount": 0}), "maxReceiveCount"),
            (json.dumps({"deadLetterTargetArn": ARN + "d", "maxReceiveCount": 1001}), "maxReceiveCount"),
            (json.dumps({"deadLetterTargetArn": ARN + "d"}), "maxReceiveCount"),
        ]
    ],
    *[
        (
            "SetQueueAttributes",
            {"QueueUrl": URL, "Attributes": {"RedriveAllowPolicy": policy}},
            ErrorCode.INVALID_PARAMETER_VALUE,
            reason,
        )
        for policy, reason in [
            ('{"redrivePermission": "some"}', "redrivePermission"),
            ('{"redrivePermission": "byQueue"}', "sourceQueueArns"),
            ('{"redrivePermission": "byQueue", "sourceQueueArns": ["x"]}', "sourceQueueArns"),
            ('{"redrivePermission": "allowAll", "sourceQueueArns": []}', "only allowed with"),
        ]
    ],
    (
        "GetQueueAttributes",
        {"QueueUrl": URL, "AttributeNames": ["Colour"]},
        ErrorCode.INVALID_ATTRIBUTE_NAME,
        "Unknown Attribute Colour.",
    ),
    ("TagQueue", {"QueueUrl": URL}, ErrorCode.MISSING_PARAMETER, "Tags"),
    ("TagQueue", {"QueueUrl": URL, "Tags": {"": "x"}}, ErrorCode.INVALID_PARAMETER_VALUE, "between 1 and 128"),
    ("TagQueue", {"QueueUrl": URL, "Tags": {"aws:x": "x"}}, ErrorCode.INVALID_PARAMETER_VALUE, "reserved"),
    ("TagQueue", {"QueueUrl": URL, "Tags": {"k": "v" * 257}}, ErrorCode.INVALID_PARAMETER_VALUE, "256"),
    (
        "TagQueue",
        {"QueueUrl": URL, "Tags": {str(index): "v" for index in range(51)}},
        ErrorCode.INVALID_PARAMETER_VALUE,
        "50",
    ),
    ("TagQueue", {"QueueUrl": URL, "Tags": {"k": 1}}, ErrorCode.INVALID_PARAMETER_VALUE, "map of strings"),
    ("UntagQueue", {"QueueUrl": URL, "TagKeys": []}, ErrorCode.MISSING_PARAMETER, "TagKeys"),
    ("CancelMessageMoveTask", {}, ErrorCode.MISSING_PARAMETER, "TaskHandle"),
]


@pytest.mark.parametrize(("action", "params", "code", "words"), REFUSALS)
def test_what_sqs_refuses_is_refused_with_its_code(
    action: str, params: dict[str, Any], code: ErrorCode, words: str
) -> None:
    error = refusal(action, params)
    assert error.code is code
    assert words in error.message


def test_what_sqs_accepts_at_the_limits_is_accepted() -> None:
    allowed = "\t\n\r \ud7ff\ue000\ufffd\U00010000\U0010ffff"
    assert build_request("SendMessage", send(MessageBody=allowed)) == sqs.SendMessage(
        "jobs", allowed, size=len(allowed.encode())
    )
    assert isinstance(build_request("SendMessage", send(MessageBody="x" * 1_048_576)), sqs.SendMessage)
    assert build_request("SendMessage", send(DelaySeconds="900")).delay_seconds == 900  # type: ignore[union-attr]
    full_batch = [{"Id": "x" * 79 + str(index), "MessageBody": "x" * 104_857} for index in range(10)]
    assert len(build_request("SendMessageBatch", {"QueueUrl": URL, "Entries": full_batch}).entries) == 10  # type: ignore[union-attr]
    names = {f"a{index}": {"DataType": "Number.float", "StringValue": "1e-128"} for index in range(10)}
    assert len(build_request("SendMessage", send(MessageAttributes=names)).message_attributes) == 10  # type: ignore[union-attr]
    for number in ("0", "-1", "+1.5", ".5", "5.", "1E+10", "123456789012345678901234567890123456789"):
        build_request("SendMessage", attribute({"DataType": "Number", "StringValue": number}))
    assert build_request("GetQueueUrl", {"QueueName": "any name, checked at creation only"}).queue == (  # type: ignore[union-attr]
        "any name, checked at creation only"
    )


def test_json_framing_errors() -> None:
    def code(target: str | None, body: bytes) -> ErrorCode:
        with pytest.raises(SqsError) as caught:
            decode_request(Protocol.JSON, "/", "", body, target)
        return caught.value.code

    assert code(None, b"{}") is ErrorCode.MISSING_ACTION
    assert code("DynamoDB_20120810.GetItem", b"{}") is ErrorCode.INVALID_ACTION
    assert code("AmazonSQS.Frobnicate", b"{}") is ErrorCode.INVALID_ACTION
    assert code("AmazonSQS.SendMessage", b"{not json") is ErrorCode.SERIALIZATION
    assert code("AmazonSQS.SendMessage", b"[1, 2]") is ErrorCode.SERIALIZATION
    assert code("AmazonSQS.SendMessage", b"\xff") is ErrorCode.SERIALIZATION
    assert decode_request(Protocol.JSON, "/", "", b"", "AmazonSQS.ListQueues") == sqs.ListQueues()


def test_query_framing_errors() -> None:
    def code(query: str, body: bytes = b"") -> ErrorCode:
        with pytest.raises(SqsError) as caught:
            decode_request(Protocol.QUERY, "/", query, body)
        return caught.value.code

    assert code("") is ErrorCode.MISSING_ACTION
    assert code("Version=2012-11-05") is ErrorCode.MISSING_ACTION
    assert code("Action=ListQueues&Version=2008-01-01") is ErrorCode.NO_SUCH_VERSION
    assert code("Action=Frobnicate") is ErrorCode.INVALID_ACTION
    assert code("", b"Action=ListQueues&x=\xff") is ErrorCode.INVALID_PARAMETER_VALUE
    assert code("", b"&".join(b"p%d=1" % index for index in range(1001))) is ErrorCode.INVALID_PARAMETER_VALUE
    assert code(f"Action=GetQueueAttributes&QueueUrl={URL}&AttributeName=All") is ErrorCode.INVALID_PARAMETER_VALUE
    assert code(f"Action=GetQueueAttributes&QueueUrl={URL}&AttributeName.x=All") is ErrorCode.INVALID_PARAMETER_VALUE
    assert (
        code(f"Action=SetQueueAttributes&QueueUrl={URL}&Attribute.1.Name=DelaySeconds") is ErrorCode.MISSING_PARAMETER
    )
    # Parameters may be split between the URL and the body; Version may be left out.
    assert decode_request(Protocol.QUERY, "/", "Action=PurgeQueue", f"QueueUrl={URL}".encode()) == sqs.PurgeQueue(
        "jobs"
    )


def test_the_protocol_is_told_by_the_headers() -> None:
    assert sqs.protocol_of("application/x-amz-json-1.0", "AmazonSQS.SendMessage") is Protocol.JSON
    assert sqs.protocol_of("application/x-amz-json-1.0", None) is Protocol.JSON
    assert sqs.protocol_of(None, "AmazonSQS.SendMessage") is Protocol.JSON
    assert sqs.protocol_of("application/x-www-form-urlencoded; charset=utf-8", None) is Protocol.QUERY
    assert sqs.protocol_of(None, None) is Protocol.QUERY


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cs",))), st.text(st.characters(blacklist_categories=("Cs",)))
        )
    )
)
def test_the_form_splitter_reads_what_urlencode_writes_as_parse_qsl_does(pairs: list[tuple[str, str]]) -> None:
    from dbqueue.sqs.query_protocol import _form

    for encoded in (urlencode(pairs), urlencode(pairs, quote_via=quote)):
        assert _form(encoded) == parse_qsl(encoded, keep_blank_values=True)


LONE = "\ud800"


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("SendMessage", send(MessageBody=LONE)),
        ("SendMessage", send(QueueUrl=URL + LONE)),
        ("SendMessage", send(MessageGroupId=LONE)),
        ("SendMessage", attribute({"DataType": "String", "StringValue": LONE})),
        ("SendMessage", attribute({"DataType": "String." + LONE, "StringValue": "x"})),
        ("SendMessage", send(MessageAttributes={LONE: {"DataType": "String", "StringValue": "x"}})),
        ("GetQueueUrl", {"QueueName": LONE}),
        ("TagQueue", {"QueueUrl": URL, "Tags": {"k": LONE}}),
        ("TagQueue", {"QueueUrl": URL, "Tags": {LONE: "v"}}),
        ("SetQueueAttributes", {"QueueUrl": URL, "Attributes": {"KmsMasterKeyId": LONE}}),
        ("ReceiveMessage", {"QueueUrl": URL, "MessageAttributeNames": [LONE]}),
        ("DeleteMessage", {"QueueUrl": URL, "ReceiptHandle": LONE}),
        ("DeleteMessageBatch", {"QueueUrl": URL, "Entries": [{"Id": "a", "ReceiptHandle": LONE}]}),
        ("ListQueues", {"NextToken": LONE}),
        ("Frobnicate" + LONE, {}),
    ],
)
def test_lone_surrogates_are_refused_and_the_refusal_encodes(action: str, params: dict[str, Any]) -> None:
    """JSON can carry "\\ud800"; no request keeps one, and the error quoting it still encodes."""
    body = json.dumps(params).encode()
    with pytest.raises(SqsError) as caught:
        decode_request(Protocol.JSON, "/", "", body, "AmazonSQS." + action)
    for protocol in Protocol:
        reply = sqs.encode_error(protocol, caught.value, "r")
        assert reply.status == 400
        reply.body.decode("utf-8")

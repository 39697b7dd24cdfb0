"""Answers and errors in both protocols, read back by botocore's own parsers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from typing import Any

import pytest
import sqs_kit
from botocore.model import ServiceModel
from botocore.parsers import create_parser

from dbqueue import sqs
from dbqueue.sqs import ErrorCode, Protocol, SqsError, encode_error, encode_result

JSON_MODEL = ServiceModel(sqs_kit.json_model(), "sqs")
QUERY_MODEL = ServiceModel(sqs_kit.query_model(), "sqs")
NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"


def parse(protocol: Protocol, action: str, reply: sqs.HttpReply) -> dict[str, Any]:
    """What botocore makes of a reply, as a client of ``protocol`` calling ``action``."""
    model = JSON_MODEL if protocol is Protocol.JSON else QUERY_MODEL
    parser = create_parser("json" if protocol is Protocol.JSON else "query")
    headers = {name.lower(): value for name, value in reply.headers}
    shape = model.operation_model(action).output_shape
    parsed: dict[str, Any] = parser.parse({"body": reply.body, "headers": headers, "status_code": reply.status}, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


BOTH = pytest.mark.parametrize("protocol", [Protocol.JSON, Protocol.QUERY])


@BOTH
def test_answers_without_results(protocol: Protocol) -> None:
    for action in ("DeleteQueue", "PurgeQueue", "SetQueueAttributes", "TagQueue", "DeleteMessage"):
        reply = encode_result(protocol, action, None, "rid-1")
        assert reply.status == 200
        assert ("x-amzn-RequestId", "rid-1") in reply.headers
        assert parse(protocol, action, reply) == {}
    assert encode_result(Protocol.JSON, "DeleteQueue", None, "r").body == b"{}"
    assert encode_result(Protocol.QUERY, "DeleteQueue", None, "r").body == (
        b'<?xml version="1.0"?><DeleteQueueResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        b"<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></DeleteQueueResponse>"
    )


def test_a_send_answer_is_what_aws_documents() -> None:
    result = sqs.SendMessageResult("id-1", "md5b", "md5a")
    assert json.loads(encode_result(Protocol.JSON, "SendMessage", result, "r").body) == {
        "MessageId": "id-1",
        "MD5OfMessageBody": "md5b",
        "MD5OfMessageAttributes": "md5a",
    }
    assert encode_result(Protocol.QUERY, "SendMessage", result, "r").body == (
        b'<?xml version="1.0"?><SendMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        b"<SendMessageResult><MessageId>id-1</MessageId><MD5OfMessageBody>md5b</MD5OfMessageBody>"
        b"<MD5OfMessageAttributes>md5a</MD5OfMessageAttributes></SendMessageResult>"
        b"<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></SendMessageResponse>"
    )


AWKWARD = "a & b < c > d \r\n e \t ]]> \"quoted\" 'single' é 🙂 &amp;"


@BOTH
def test_text_survives_both_encodings_exactly(protocol: Protocol) -> None:
    attributes = {
        "s": sqs.MessageAttributeValue("String", AWKWARD),
        "b": sqs.MessageAttributeValue("Binary", binary_value=bytes(range(256))),
    }
    message = sqs.ReceivedMessage.build("id", "handle", AWKWARD, {"SenderId": AWKWARD}, attributes)
    parsed = parse(
        protocol, "ReceiveMessage", encode_result(protocol, "ReceiveMessage", sqs.ReceiveMessageResult((message,)), "r")
    )
    [got] = parsed["Messages"]
    assert got["Body"] == AWKWARD
    assert got["Attributes"] == {"SenderId": AWKWARD}
    assert got["MessageAttributes"]["s"]["StringValue"] == AWKWARD
    assert got["MessageAttributes"]["b"]["BinaryValue"] == bytes(range(256))
    sqs_kit.sdk_check_receive(got)


@BOTH
def test_an_empty_receive_has_no_messages(protocol: Protocol) -> None:
    reply = encode_result(protocol, "ReceiveMessage", sqs.ReceiveMessageResult(()), "r")
    assert "Messages" not in parse(protocol, "ReceiveMessage", reply)


RESULTS: list[tuple[str, sqs.Result, dict[str, Any]]] = [
    ("CreateQueue", sqs.CreateQueueResult("http://h/000000000000/q"), {"QueueUrl": "http://h/000000000000/q"}),
    ("GetQueueUrl", sqs.GetQueueUrlResult("http://h/000000000000/q"), {"QueueUrl": "http://h/000000000000/q"}),
    ("ListQueues", sqs.ListQueuesResult(("u1", "u2"), "next"), {"QueueUrls": ["u1", "u2"], "NextToken": "next"}),
    ("ListQueues", sqs.ListQueuesResult(()), {}),
    (
        "GetQueueAttributes",
        sqs.GetQueueAttributesResult({"A": "1", "B": "x&y"}),
        {"Attributes": {"A": "1", "B": "x&y"}},
    ),
    ("ListQueueTags", sqs.ListQueueTagsResult({"k": "v"}), {"Tags": {"k": "v"}}),
    (
        "SendMessageBatch",
        sqs.SendMessageBatchResult(
            (sqs.SendMessageBatchResultEntry("a", "m", "b5", None, "s5"),),
            (sqs.BatchResultErrorEntry("b", "InvalidMessageContents", "bad <body>", True),),
        ),
        {
            "Successful": [
                {"Id": "a", "MessageId": "m", "MD5OfMessageBody": "b5", "MD5OfMessageSystemAttributes": "s5"}
            ],
            "Failed": [{"Id": "b", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad <body>"}],
        },
    ),
    (
        "DeleteMessageBatch",
        sqs.BatchResult(("a",), (sqs.BatchResultErrorEntry.of("b", SqsError(ErrorCode.INTERNAL_ERROR)),)),
        {
            "Successful": [{"Id": "a"}],
            "Failed": [
                {
                    "Id": "b",
                    "SenderFault": False,
                    "Code": "InternalError",
                    "Message": "We encountered an internal error. Please try again.",
                }
            ],
        },
    ),
    ("ChangeMessageVisibilityBatch", sqs.BatchResult(("a", "b")), {"Successful": [{"Id": "a"}, {"Id": "b"}]}),
    (
        "ListDeadLetterSourceQueues",
        sqs.ListDeadLetterSourceQueuesResult(("u",), "t"),
        {"queueUrls": ["u"], "NextToken": "t"},
    ),
    ("StartMessageMoveTask", sqs.StartMessageMoveTaskResult("task"), {"TaskHandle": "task"}),
    ("CancelMessageMoveTask", sqs.CancelMessageMoveTaskResult(7), {"ApproximateNumberOfMessagesMoved": 7}),
    (
        "ListMessageMoveTasks",
        sqs.ListMessageMoveTasksResult(
            (
                sqs.MessageMoveTask("RUNNING", "arn:s", 1700000000000, 3, "task", "arn:d", 10, 20),
                sqs.MessageMoveTask("FAILED", "arn:s", 1600000000000, failure_reason="gone"),
            )
        ),
        {
            "Results": [
                {
                    "TaskHandle": "task",
                    "Status": "RUNNING",
                    "SourceArn": "arn:s",
                    "DestinationArn": "arn:d",
                    "MaxNumberOfMessagesPerSecond": 10,
                    "ApproximateNumberOfMessagesMoved": 3,
                    "ApproximateNumberOfMessagesToMove": 20,
                    "StartedTimestamp": 1700000000000,
                },
                {
                    "Status": "FAILED",
                    "SourceArn": "arn:s",
                    "ApproximateNumberOfMessagesMoved": 0,
                    "FailureReason": "gone",
                    "StartedTimestamp": 1600000000000,
                },
            ]
        },
    ),
]


@BOTH
@pytest.mark.parametrize(("action", "result", "expected"), RESULTS, ids=[action for action, _, _ in RESULTS])
def test_every_result_reads_back(protocol: Protocol, action: str, result: sqs.Result, expected: dict[str, Any]) -> None:
    parsed = parse(protocol, action, encode_result(protocol, action, result, "r"))
    # An empty list is absent in XML; JSON writes the lists SQS's model requires even when empty.
    assert {key: value for key, value in parsed.items() if value != []} == expected


@pytest.mark.parametrize("code", list(ErrorCode), ids=[code.name for code in ErrorCode])
def test_every_error_reads_back_in_both_protocols(code: ErrorCode) -> None:
    error = SqsError(code, "why <it> & failed")
    json_reply = encode_error(Protocol.JSON, error, "rid")
    headers = dict(json_reply.headers)
    assert json_reply.status == code.status
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["x-amzn-query-error"] == f"{code.query_code};{'Sender' if code.sender_fault else 'Receiver'}"
    assert json.loads(json_reply.body) == {"__type": f"com.amazonaws.sqs#{code.shape}", "message": "why <it> & failed"}
    parsed = create_parser("json").parse(
        {"body": json_reply.body, "headers": {k.lower(): v for k, v in json_reply.headers}, "status_code": code.status},
        None,
    )
    assert parsed["Error"]["Code"] == code.query_code
    assert parsed["Error"]["QueryErrorCode"] == code.shape
    assert parsed["Error"]["Message"] == "why <it> & failed"

    xml_reply = encode_error(Protocol.QUERY, error, "rid")
    assert xml_reply.status == code.status
    assert dict(xml_reply.headers)["Content-Type"] == "text/xml"
    root = ElementTree.fromstring(xml_reply.body)
    assert root.tag == NS + "ErrorResponse"
    assert root.findtext(f"{NS}Error/{NS}Type") == ("Sender" if code.sender_fault else "Receiver")
    assert root.findtext(f"{NS}Error/{NS}Code") == code.query_code
    assert root.findtext(f"{NS}Error/{NS}Message") == "why <it> & failed"
    assert root.findtext(f"{NS}RequestId") == "rid"
    parsed = create_parser("query").parse({"body": xml_reply.body, "headers": {}, "status_code": code.status}, None)
    assert parsed["Error"]["Code"] == code.query_code


def test_errors_carry_their_defaults_and_pickle() -> None:
    import pickle

    error = SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
    assert (error.status, error.shape, error.query_code, error.message) == (
        400,
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        "The specified queue does not exist.",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message) == (error.code, error.message)
    from dbqueue.errors import DbQueueError

    assert isinstance(error, DbQueueError)


@BOTH
def test_any_mapping_will_do_for_the_mappings_of_a_result(protocol: Protocol) -> None:
    from types import MappingProxyType

    attributes = MappingProxyType({"SentTimestamp": "1"})
    message_attributes = MappingProxyType({"a": sqs.MessageAttributeValue("String", "x")})
    message = sqs.ReceivedMessage.build("id", "handle", "body", attributes, message_attributes)
    reply = encode_result(protocol, "ReceiveMessage", sqs.ReceiveMessageResult((message,)), "r")
    [got] = parse(protocol, "ReceiveMessage", reply)["Messages"]
    assert got["Attributes"] == {"SentTimestamp": "1"}
    assert got["MessageAttributes"] == {"a": {"DataType": "String", "StringValue": "x"}}
    tags = encode_result(protocol, "ListQueueTags", sqs.ListQueueTagsResult(MappingProxyType({"k": "v"})), "r")
    assert parse(protocol, "ListQueueTags", tags) == {"Tags": {"k": "v"}}

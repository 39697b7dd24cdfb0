"""The AWS JSON 1.0 protocol: what current SDKs and the aws CLI speak to SQS.

A request is ``POST /`` with ``Content-Type: application/x-amz-json-1.0``,
``X-Amz-Target: AmazonSQS.<Action>`` and a JSON object of the action's
parameters, named as in botocore's model (``QueueUrl``, ``Entries``, ...);
binary attribute values are base64 strings.

An answer is a JSON object of the result's members (``{}`` for actions that
return nothing). An error is ``{"__type": "com.amazonaws.sqs#<Shape>",
"message": ...}`` with the ``x-amzn-query-error: <QueryCode>;<Sender|Receiver>``
header SQS adds since its move from the Query protocol: SDKs map the shape to
their exception class and botocore reports the Query code as the error's
``Code``, so code written against either protocol keeps working.

Strings are written as UTF-8 without ``\\u`` escapes: a result's strings must
be valid Unicode (no lone surrogates), which every decoded request's are.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from .decoding import build_request
from .errors import ErrorCode, SqsError
from .requests import MessageAttributeValue, Request
from .results import (
    BatchResult,
    BatchResultErrorEntry,
    CancelMessageMoveTaskResult,
    CreateQueueResult,
    GetQueueAttributesResult,
    GetQueueUrlResult,
    ListDeadLetterSourceQueuesResult,
    ListMessageMoveTasksResult,
    ListQueuesResult,
    ListQueueTagsResult,
    ReceivedMessage,
    ReceiveMessageResult,
    Result,
    SendMessageBatchResult,
    SendMessageResult,
    StartMessageMoveTaskResult,
)

__all__ = ["CONTENT_TYPE", "TARGET_PREFIX", "decode_json", "encode_json_result", "encode_json_error", "message_json"]

CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "AmazonSQS."
ERROR_TYPE_PREFIX = "com.amazonaws.sqs#"

_loads = json.loads
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def decode_json(target: str | None, body: bytes) -> Request:
    """Return the request an ``X-Amz-Target`` header and a JSON body make.

    Raises `SqsError`: ``MissingAction`` without a target, ``InvalidAction``
    for a target that is not ``AmazonSQS.<Action>`` of a known action,
    ``SerializationException`` for a body that is not a JSON object, and the
    action's own refusals (see `decoding`).
    """
    if not target:
        raise SqsError(ErrorCode.MISSING_ACTION, "The request must contain the header X-Amz-Target.")
    if not target.startswith(TARGET_PREFIX):
        raise SqsError(ErrorCode.INVALID_ACTION, f"The target {target[:128]} is not valid for this endpoint.")
    if body:
        try:
            params = _loads(body)
        except ValueError:
            raise SqsError(ErrorCode.SERIALIZATION, "The request body is not valid JSON.") from None
        if type(params) is not dict:
            raise SqsError(ErrorCode.SERIALIZATION)
    else:
        params = {}
    return build_request(target[len(TARGET_PREFIX) :], params)


def encode_json_result(result: Result) -> bytes:
    """Return the JSON body answering a request with ``result`` (None: ``{}``)."""
    if result is None:
        return b"{}"
    return _dumps(_ENCODERS[type(result)](result)).encode()


def encode_json_error(error: SqsError) -> tuple[bytes, str]:
    """Return the JSON body of ``error`` and the value of its ``x-amzn-query-error`` header."""
    code = error.code
    body = _dumps({"__type": ERROR_TYPE_PREFIX + code.shape, "message": error.message}).encode()
    return body, f"{code.query_code};{code.fault}"


def _attribute(value: MessageAttributeValue) -> dict[str, str]:
    if value.binary_value is not None:
        return {"DataType": value.data_type, "BinaryValue": base64.b64encode(value.binary_value).decode("ascii")}
    return {"DataType": value.data_type, "StringValue": value.string_value or ""}


def _attributes(attributes: Mapping[str, MessageAttributeValue]) -> dict[str, dict[str, str]]:
    return {name: _attribute(value) for name, value in attributes.items()}


def _failed(entries: tuple[BatchResultErrorEntry, ...]) -> list[dict[str, Any]]:
    return [
        {"Id": entry.id, "SenderFault": entry.sender_fault, "Code": entry.code, "Message": entry.message}
        for entry in entries
    ]


def _send_message(result: SendMessageResult) -> dict[str, Any]:
    out = {"MessageId": result.message_id, "MD5OfMessageBody": result.md5_of_message_body}
    if result.md5_of_message_attributes is not None:
        out["MD5OfMessageAttributes"] = result.md5_of_message_attributes
    if result.md5_of_message_system_attributes is not None:
        out["MD5OfMessageSystemAttributes"] = result.md5_of_message_system_attributes
    return out


def _send_message_batch(result: SendMessageBatchResult) -> dict[str, Any]:
    successful = []
    for entry in result.successful:
        out = {"Id": entry.id, "MessageId": entry.message_id, "MD5OfMessageBody": entry.md5_of_message_body}
        if entry.md5_of_message_attributes is not None:
            out["MD5OfMessageAttributes"] = entry.md5_of_message_attributes
        if entry.md5_of_message_system_attributes is not None:
            out["MD5OfMessageSystemAttributes"] = entry.md5_of_message_system_attributes
        successful.append(out)
    return {"Successful": successful, "Failed": _failed(result.failed)}


def _message(message: ReceivedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "MessageId": message.message_id,
        "ReceiptHandle": message.receipt_handle,
        "MD5OfBody": message.md5_of_body,
        "Body": message.body,
    }
    attributes = message.attributes
    if attributes:
        # json encodes dicts only: any other Mapping is copied.
        out["Attributes"] = attributes if type(attributes) is dict else dict(attributes)
    if message.message_attributes:
        out["MD5OfMessageAttributes"] = message.md5_of_message_attributes
        out["MessageAttributes"] = _attributes(message.message_attributes)
    return out


def message_json(message: ReceivedMessage) -> str:
    """One message of a ``ReceiveMessage`` answer as JSON text: what `encode_json_result` writes for it.

    The fast path (`fastpath`) writes the plain messages of an answer itself
    and the others with this.
    """
    text: str = _dumps(_message(message))
    return text


def _receive_message(result: ReceiveMessageResult) -> dict[str, Any]:
    if not result.messages:
        return {}
    return {"Messages": [_message(message) for message in result.messages]}


def _batch(result: BatchResult) -> dict[str, Any]:
    return {"Successful": [{"Id": entry_id} for entry_id in result.successful], "Failed": _failed(result.failed)}


def _list_queues(result: ListQueuesResult) -> dict[str, Any]:
    # QueueUrls is optional in the model (unlike the batch lists): absent when empty, as in XML.
    out: dict[str, Any] = {"QueueUrls": list(result.queue_urls)} if result.queue_urls else {}
    if result.next_token is not None:
        out["NextToken"] = result.next_token
    return out


def _list_dead_letter_source_queues(result: ListDeadLetterSourceQueuesResult) -> dict[str, Any]:
    out: dict[str, Any] = {"queueUrls": list(result.queue_urls)}
    if result.next_token is not None:
        out["NextToken"] = result.next_token
    return out


def _list_message_move_tasks(result: ListMessageMoveTasksResult) -> dict[str, Any]:
    tasks = []
    for task in result.results:
        out: dict[str, Any] = {
            "Status": task.status,
            "SourceArn": task.source_arn,
            "ApproximateNumberOfMessagesMoved": task.approximate_number_of_messages_moved,
            "StartedTimestamp": task.started_timestamp,
        }
        for key, value in (
            ("TaskHandle", task.task_handle),
            ("DestinationArn", task.destination_arn),
            ("MaxNumberOfMessagesPerSecond", task.max_per_second),
            ("ApproximateNumberOfMessagesToMove", task.approximate_number_of_messages_to_move),
            ("FailureReason", task.failure_reason),
        ):
            if value is not None:
                out[key] = value
        tasks.append(out)
    return {"Results": tasks}


_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {
    SendMessageResult: _send_message,
    ReceiveMessageResult: _receive_message,
    SendMessageBatchResult: _send_message_batch,
    BatchResult: _batch,
    CreateQueueResult: lambda result: {"QueueUrl": result.queue_url},
    GetQueueUrlResult: lambda result: {"QueueUrl": result.queue_url},
    ListQueuesResult: _list_queues,
    GetQueueAttributesResult: lambda result: {"Attributes": dict(result.attributes)},
    ListQueueTagsResult: lambda result: {"Tags": dict(result.tags)},
    ListDeadLetterSourceQueuesResult: _list_dead_letter_source_queues,
    StartMessageMoveTaskResult: lambda result: {"TaskHandle": result.task_handle},
    CancelMessageMoveTaskResult: lambda result: {
        "ApproximateNumberOfMessagesMoved": result.approximate_number_of_messages_moved
    },
    ListMessageMoveTasksResult: _list_message_move_tasks,
}

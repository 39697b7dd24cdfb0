"""The AWS Query protocol: what SQS spoke until 2023, and older SDKs and CLIs still send.

A request is a set of form parameters, in a ``POST`` body
(``application/x-www-form-urlencoded``) or the URL's query string:
``Action=SendMessage&Version=2012-11-05&QueueUrl=...&MessageBody=...``.
Lists and maps are flattened into numbered names, 1-based::

    AttributeName.1=All                              a list
    Attribute.1.Name=DelaySeconds&Attribute.1.Value=5   a map (Tag.N.Key / Tag.N.Value for tags)
    MessageAttribute.1.Name=n&MessageAttribute.1.Value.DataType=Number&MessageAttribute.1.Value.StringValue=1
    SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=...

Decoding splits every name on its dots into a tree, then folds the tree into
the JSON protocol's shape (``MessageAttributes``, ``Entries``, ...), driven by
one small table per action (`_FOLDS`), so `decoding` checks both protocols
with the same code. The queue may also be named by the request's path
(``POST /000000000000/jobs``) instead of ``QueueUrl``.

An answer is an XML document: ``<SendMessageResponse xmlns="...">`` holding a
``<SendMessageResult>`` (absent for actions that return nothing) and
``<ResponseMetadata><RequestId>``; an error is an ``<ErrorResponse>`` with
``<Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>``.
Lists and maps come back flattened the same way (``<Message>`` repeated,
``<Attribute><Name>..</Name><Value>..</Value></Attribute>``). Text is escaped
for XML (``&``, ``<``, ``>``, and carriage returns, which XML parsers would
otherwise turn into line feeds).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from .addresses import queue_of_path
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

__all__ = ["CONTENT_TYPE", "API_VERSION", "XML_NAMESPACE", "decode_query", "encode_xml_result", "encode_xml_error"]

CONTENT_TYPE = "text/xml"
API_VERSION = "2012-11-05"
XML_NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"
MAX_PARAMETERS = 1000
"""The most form parameters one request may carry (a full batch with attributes needs under 400)."""

# How a flattened parameter folds into the JSON shape: a list of strings, a map
# with its key and value names, message attributes, or batch entries (each entry
# folded by its own table).
_LIST = 0
_MAP = 1
_ATTRIBUTES = 2
_ENTRIES = 3

Fold = tuple[Any, ...]

_MESSAGE_FOLDS: Mapping[str, Fold] = {
    "MessageAttributes": (_ATTRIBUTES, "MessageAttribute"),
    "MessageSystemAttributes": (_ATTRIBUTES, "MessageSystemAttribute"),
}
_FOLDS: Mapping[str, Mapping[str, Fold]] = {
    "SendMessage": _MESSAGE_FOLDS,
    "SendMessageBatch": {"Entries": (_ENTRIES, "SendMessageBatchRequestEntry", _MESSAGE_FOLDS)},
    "ReceiveMessage": {
        "AttributeNames": (_LIST, "AttributeName"),
        "MessageSystemAttributeNames": (_LIST, "MessageSystemAttributeName"),
        "MessageAttributeNames": (_LIST, "MessageAttributeName"),
    },
    "DeleteMessageBatch": {"Entries": (_ENTRIES, "DeleteMessageBatchRequestEntry", {})},
    "ChangeMessageVisibilityBatch": {"Entries": (_ENTRIES, "ChangeMessageVisibilityBatchRequestEntry", {})},
    "CreateQueue": {"Attributes": (_MAP, "Attribute", "Name", "Value"), "tags": (_MAP, "Tag", "Key", "Value")},
    "GetQueueAttributes": {"AttributeNames": (_LIST, "AttributeName")},
    "SetQueueAttributes": {"Attributes": (_MAP, "Attribute", "Name", "Value")},
    "TagQueue": {"Tags": (_MAP, "Tag", "Key", "Value")},
    "UntagQueue": {"TagKeys": (_LIST, "TagKey")},
}
_NO_FOLDS: Mapping[str, Fold] = {}


def decode_query(path: str, query: str, body: bytes) -> Request:
    """Return the request a Query-protocol call makes: its path, URL query string and form body.

    Parameters may be in the query string, the body, or both. Raises
    `SqsError`: ``MissingAction``, ``InvalidAction``, ``NoSuchVersion`` for a
    ``Version`` other than 2012-11-05, ``InvalidParameterValue`` for a body
    that is not a form, and the action's own refusals (see `decoding`).
    """
    try:
        pairs = _form(query) if query else []
        if body:
            pairs += _form(body.decode())
    except UnicodeError:
        raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "The request's parameters are not UTF-8.") from None
    if len(pairs) > MAX_PARAMETERS:
        raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, f"A request may carry at most {MAX_PARAMETERS} parameters.")
    tree = _tree(pairs)
    action = tree.pop("Action", None)
    if type(action) is not str or not action:
        raise SqsError(ErrorCode.MISSING_ACTION)
    version = tree.pop("Version", None)
    if version is not None and version != API_VERSION:
        raise SqsError(
            ErrorCode.NO_SUCH_VERSION,
            f"The requested version ({str(version)[:64]}) of service AmazonSQS does not exist.",
        )
    params = _fold(tree, _FOLDS.get(action, _NO_FOLDS), "")
    path_queue = queue_of_path(path) if path != "/" else None
    return build_request(action, params, path_queue)


def _form(text: str) -> list[tuple[str, str]]:
    """Split ``a=1&b=x+y`` into name-value pairs, as `urllib.parse.parse_qsl` does, in a third of its time.

    Most names and values need no unquoting; only those holding ``%`` or ``+`` go
    through `unquote_plus` (strict: invalid UTF-8 raises UnicodeDecodeError).
    """
    pairs = []
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name, errors="strict")
        if "%" in value or "+" in value:
            value = unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs


def _tree(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Split each dotted name into a path of nested dicts; the values stay strings."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        if "." not in key:
            root[key] = value
            continue
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            child = node.get(part)
            if type(child) is not dict:
                child = node[part] = {}
            node = child
        node[leaf] = value
    return root


def _numbered(node: object, name: str) -> list[Any]:
    """The items of a flattened list, in the order of their 1-based numbers."""
    if type(node) is not dict or not all(key.isdigit() for key in node):
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE, f"The parameter {name} must be numbered, as {name}.1, {name}.2, ..."
        )
    return [node[key] for key in sorted(node, key=int)]


def _fold(tree: dict[str, Any], folds: Mapping[str, Fold], prefix: str) -> dict[str, Any]:
    """Return the JSON shape of one level of a Query tree."""
    params: dict[str, Any] = {key: value for key, value in tree.items() if type(value) is str}
    for member, (kind, name, *shape) in folds.items():
        node = tree.get(name)
        if node is None:
            # botocore sends an empty list or map as its member name with no value (``Entries=``).
            if params.get(member) == "":
                params[member] = {} if kind in (_MAP, _ATTRIBUTES) else []
            continue
        items = _numbered(node, prefix + name)
        if kind == _LIST:
            params[member] = items
        elif kind == _MAP:
            key_name, value_name = shape
            params[member] = {_leaf(item, key_name): _leaf(item, value_name) for item in items}
        elif kind == _ATTRIBUTES:
            params[member] = {_leaf(item, "Name"): _branch(item, "Value") for item in items}
        else:
            params[member] = [
                _fold(_entry(item, name), shape[0], f"{prefix}{name}.{index}.") for index, item in enumerate(items, 1)
            ]
    return params


def _entry(item: object, name: str) -> dict[str, Any]:
    if type(item) is not dict:
        raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, f"The parameter {name} must be a numbered structure.")
    return item


def _leaf(item: object, name: str) -> str:
    value = item.get(name) if type(item) is dict else None
    if type(value) is not str:
        raise SqsError(ErrorCode.MISSING_PARAMETER, f"A numbered parameter lacks its {name}.")
    return value


def _branch(item: object, name: str) -> dict[str, Any]:
    value = item.get(name) if type(item) is dict else None
    if type(value) is not dict:
        raise SqsError(ErrorCode.MISSING_PARAMETER, f"A numbered parameter lacks its {name}.")
    return value


# --- answers ------------------------------------------------------------------------------------------------------

_XML_SPECIAL = re.compile("[&<>\r]")


def _x(text: str) -> str:
    """Escape text for an XML element."""
    if _XML_SPECIAL.search(text) is None:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def encode_xml_result(action: str, result: Result, request_id: str) -> bytes:
    """Return the XML document answering ``action`` with ``result`` (None for the actions that return nothing)."""
    metadata = f"<ResponseMetadata><RequestId>{_x(request_id)}</RequestId></ResponseMetadata>"
    if result is None:
        inner = metadata
    else:
        body = _batch(action, result) if type(result) is BatchResult else _ENCODERS[type(result)](result)
        inner = f"<{action}Result>{body}</{action}Result>{metadata}"
    return f'<?xml version="1.0"?><{action}Response xmlns="{XML_NAMESPACE}">{inner}</{action}Response>'.encode()


def encode_xml_error(error: SqsError, request_id: str) -> bytes:
    """Return the ``<ErrorResponse>`` document of ``error``."""
    code = error.code
    return (
        f'<?xml version="1.0"?><ErrorResponse xmlns="{XML_NAMESPACE}"><Error><Type>{code.fault}</Type>'
        f"<Code>{code.query_code}</Code><Message>{_x(error.message)}</Message><Detail/></Error>"
        f"<RequestId>{_x(request_id)}</RequestId></ErrorResponse>"
    ).encode()


def _optional(tag: str, value: str | int | None) -> str:
    return "" if value is None else f"<{tag}>{_x(str(value))}</{tag}>"


def _pairs(tag: str, key: str, value: str, pairs: Mapping[str, str]) -> str:
    return "".join(f"<{tag}><{key}>{_x(k)}</{key}><{value}>{_x(v)}</{value}></{tag}>" for k, v in pairs.items())


def _attribute(name: str, value: MessageAttributeValue) -> str:
    if value.binary_value is not None:
        inner = f"<BinaryValue>{base64.b64encode(value.binary_value).decode('ascii')}</BinaryValue>"
    else:
        inner = f"<StringValue>{_x(value.string_value or '')}</StringValue>"
    return (
        f"<MessageAttribute><Name>{_x(name)}</Name>"
        f"<Value>{inner}<DataType>{_x(value.data_type)}</DataType></Value></MessageAttribute>"
    )


def _failed(entries: tuple[BatchResultErrorEntry, ...]) -> str:
    return "".join(
        f"<BatchResultErrorEntry><Id>{_x(entry.id)}</Id><SenderFault>{'true' if entry.sender_fault else 'false'}"
        f"</SenderFault><Code>{_x(entry.code)}</Code><Message>{_x(entry.message)}</Message></BatchResultErrorEntry>"
        for entry in entries
    )


def _send_message(result: SendMessageResult) -> str:
    return (
        f"<MessageId>{_x(result.message_id)}</MessageId><MD5OfMessageBody>{result.md5_of_message_body}</MD5OfMessageBody>"
        + _optional("MD5OfMessageAttributes", result.md5_of_message_attributes)
        + _optional("MD5OfMessageSystemAttributes", result.md5_of_message_system_attributes)
    )


def _send_message_batch(result: SendMessageBatchResult) -> str:
    return "".join(
        f"<SendMessageBatchResultEntry><Id>{_x(entry.id)}</Id><MessageId>{_x(entry.message_id)}</MessageId>"
        f"<MD5OfMessageBody>{entry.md5_of_message_body}</MD5OfMessageBody>"
        + _optional("MD5OfMessageAttributes", entry.md5_of_message_attributes)
        + _optional("MD5OfMessageSystemAttributes", entry.md5_of_message_system_attributes)
        + "</SendMessageBatchResultEntry>"
        for entry in result.successful
    ) + _failed(result.failed)


def _message(message: ReceivedMessage) -> str:
    out = (
        f"<Message><MessageId>{_x(message.message_id)}</MessageId>"
        f"<ReceiptHandle>{_x(message.receipt_handle)}</ReceiptHandle>"
        f"<MD5OfBody>{message.md5_of_body}</MD5OfBody><Body>{_x(message.body)}</Body>"
    )
    if message.attributes:
        out += _pairs("Attribute", "Name", "Value", message.attributes)
    if message.message_attributes:
        out += _optional("MD5OfMessageAttributes", message.md5_of_message_attributes)
        out += "".join(_attribute(name, value) for name, value in message.message_attributes.items())
    return out + "</Message>"


def _receive_message(result: ReceiveMessageResult) -> str:
    return "".join(_message(message) for message in result.messages)


def _batch(action: str, result: BatchResult) -> str:
    # The entry's element is named after the action: DeleteMessageBatchResultEntry, ...
    entry = f"{action}ResultEntry"
    return "".join(f"<{entry}><Id>{_x(entry_id)}</Id></{entry}>" for entry_id in result.successful) + _failed(
        result.failed
    )


def _urls(urls: tuple[str, ...], next_token: str | None) -> str:
    return "".join(f"<QueueUrl>{_x(url)}</QueueUrl>" for url in urls) + _optional("NextToken", next_token)


def _list_message_move_tasks(result: ListMessageMoveTasksResult) -> str:
    return "".join(
        "<ListMessageMoveTasksResultEntry>"
        + _optional("TaskHandle", task.task_handle)
        + _optional("Status", task.status)
        + _optional("SourceArn", task.source_arn)
        + _optional("DestinationArn", task.destination_arn)
        + _optional("MaxNumberOfMessagesPerSecond", task.max_per_second)
        + _optional("ApproximateNumberOfMessagesMoved", task.approximate_number_of_messages_moved)
        + _optional("ApproximateNumberOfMessagesToMove", task.approximate_number_of_messages_to_move)
        + _optional("FailureReason", task.failure_reason)
        + _optional("StartedTimestamp", task.started_timestamp)
        + "</ListMessageMoveTasksResultEntry>"
        for task in result.results
    )


_ENCODERS: dict[type, Callable[[Any], str]] = {
    SendMessageResult: _send_message,
    ReceiveMessageResult: _receive_message,
    SendMessageBatchResult: _send_message_batch,
    CreateQueueResult: lambda result: f"<QueueUrl>{_x(result.queue_url)}</QueueUrl>",
    GetQueueUrlResult: lambda result: f"<QueueUrl>{_x(result.queue_url)}</QueueUrl>",
    ListQueuesResult: lambda result: _urls(result.queue_urls, result.next_token),
    GetQueueAttributesResult: lambda result: _pairs("Attribute", "Name", "Value", result.attributes),
    ListQueueTagsResult: lambda result: _pairs("Tag", "Key", "Value", result.tags),
    ListDeadLetterSourceQueuesResult: lambda result: _urls(result.queue_urls, result.next_token),
    StartMessageMoveTaskResult: lambda result: f"<TaskHandle>{_x(result.task_handle)}</TaskHandle>",
    CancelMessageMoveTaskResult: lambda result: (
        f"<ApproximateNumberOfMessagesMoved>{result.approximate_number_of_messages_moved}"
        "</ApproximateNumberOfMessagesMoved>"
    ),
    ListMessageMoveTasksResult: _list_message_move_tasks,
}

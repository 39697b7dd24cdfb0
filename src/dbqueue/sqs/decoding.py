"""From an action's parameters to its typed request, checked as SQS checks them.

Both wire protocols end here. The JSON protocol's body already has the shape
this module reads (botocore's member names: ``QueueUrl``, ``Entries``,
``MessageAttributes``, ...); the Query protocol's flattened parameters
(``MessageAttribute.1.Value.StringValue``) are first folded into that same
shape by `query_protocol`. So every rule below is written once: the range of
each number, the shape of a batch, the characters of a body, the names and
types of attributes, the queue attributes' values. A request that breaks one
raises `SqsError` with the code and, where known, the wording SQS uses.

Numbers may arrive as JSON numbers or as decimal strings (the Query protocol
has nothing else); both are accepted in both protocols.

Speed: this runs for every request. The builders of the hot actions
(SendMessage, ReceiveMessage, DeleteMessage and the batches) read their
parameters with plain ``dict.get`` and check types with ``type(x) is``; the
rare cases (attributes, Query strings for numbers) go through helpers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .addresses import ACCOUNT_ID, check_queue_name, queue_of_arn, queue_of_url
from .digests import attributes_size
from .errors import ErrorCode, SqsError
from .pagination import MAX_LISTED
from .requests import (
    CancelMessageMoveTask,
    ChangeMessageVisibility,
    ChangeMessageVisibilityBatch,
    ChangeMessageVisibilityBatchEntry,
    CreateQueue,
    DeleteMessage,
    DeleteMessageBatch,
    DeleteMessageBatchEntry,
    DeleteQueue,
    GetQueueAttributes,
    GetQueueUrl,
    ListDeadLetterSourceQueues,
    ListMessageMoveTasks,
    ListQueues,
    ListQueueTags,
    MessageAttributeValue,
    PurgeQueue,
    ReceiveMessage,
    RedrivePolicy,
    Request,
    SendMessage,
    SendMessageBatch,
    SendMessageBatchEntry,
    SetQueueAttributes,
    StartMessageMoveTask,
    TagQueue,
    UntagQueue,
)

__all__ = [
    "ACTIONS",
    "UNSUPPORTED_ACTIONS",
    "MAX_MESSAGE_SIZE",
    "MAX_BATCH_ENTRIES",
    "QUEUE_ATTRIBUTE_NAMES",
    "MESSAGE_SYSTEM_ATTRIBUTE_NAMES",
    "build_request",
    "check_body",
    "queue_attributes",
    "redrive_policy",
]

MAX_MESSAGE_SIZE = 1_048_576
"""SQS's limit on one message (body and attributes) and on a batch's messages together, in bytes."""

MAX_BATCH_ENTRIES = 10
MAX_MESSAGE_ATTRIBUTES = 10
MAX_TAGS = 50

Params = Mapping[str, Any]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# The characters SQS accepts in a body and in string attribute values (XML 1.0's Char).
_FORBIDDEN_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BATCH_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_DATA_TYPE = re.compile("(String|Number|Binary)(\\.[^\x00-\x1f\ud800-\udfff]{1,249})?")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,12}")
_SURROGATE = re.compile("[\ud800-\udfff]")

MESSAGE_SYSTEM_ATTRIBUTE_NAMES = frozenset(
    {
        "All",
        "SenderId",
        "SentTimestamp",
        "ApproximateReceiveCount",
        "ApproximateFirstReceiveTimestamp",
        "SequenceNumber",
        "MessageDeduplicationId",
        "MessageGroupId",
        "AWSTraceHeader",
        "DeadLetterQueueSourceArn",
        "SqsManagedSseEnabled",
    }
)
"""The names ``ReceiveMessage`` accepts in ``AttributeNames`` / ``MessageSystemAttributeNames``."""

QUEUE_ATTRIBUTE_NAMES = frozenset(
    {
        "All",
        "Policy",
        "VisibilityTimeout",
        "MaximumMessageSize",
        "MessageRetentionPeriod",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "CreatedTimestamp",
        "LastModifiedTimestamp",
        "QueueArn",
        "ApproximateNumberOfMessagesDelayed",
        "DelaySeconds",
        "ReceiveMessageWaitTimeSeconds",
        "RedrivePolicy",
        "FifoQueue",
        "ContentBasedDeduplication",
        "KmsMasterKeyId",
        "KmsDataKeyReusePeriodSeconds",
        "DeduplicationScope",
        "FifoThroughputLimit",
        "RedriveAllowPolicy",
        "SqsManagedSseEnabled",
    }
)
"""The names ``GetQueueAttributes`` accepts."""

# Settable queue attributes holding integers, and their ranges.
_INTEGER_ATTRIBUTES = {
    "DelaySeconds": (0, 900),
    "MaximumMessageSize": (1024, MAX_MESSAGE_SIZE),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 20),
    "VisibilityTimeout": (0, 43_200),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400),
}
_TEXT_ATTRIBUTES = frozenset({"KmsMasterKeyId"})


# --- errors -------------------------------------------------------------------------------------------------------


def _missing(name: str) -> SqsError:
    return SqsError(ErrorCode.MISSING_PARAMETER, f"The request must contain the parameter {name}.")


def _invalid(name: str, value: object, reason: str) -> SqsError:
    return SqsError(
        ErrorCode.INVALID_PARAMETER_VALUE, f"Value {_shown(value)} for parameter {name} is invalid. Reason: {reason}"
    )


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 256 else text[:256] + "..."


# --- scalar readers -----------------------------------------------------------------------------------------------
#
# Every string a request keeps is valid Unicode: JSON can carry lone surrogates
# ("\ud800"), which no answer could encode later. ASCII strings (the common
# case) are known clean in O(1).


def _text(name: str, value: str) -> str:
    if value.isascii() or _SURROGATE.search(value) is None:
        return value
    raise _invalid(name, value, "Must be valid Unicode text (no lone surrogates).")


def _string(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is str:
        return _text(name, value)
    raise _invalid(name, value, "Must be a string.")


def _required_string(params: Params, name: str) -> str:
    value = params.get(name)
    if type(value) is str and value:
        return _text(name, value)
    if value is None or value == "":
        raise _missing(name)
    raise _invalid(name, value, "Must be a string.")


def _integer(params: Params, name: str, low: int, high: int) -> int | None:
    """Read an optional integer parameter within [low, high]; None when absent."""
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int:
        value = _integer_of(name, value)
    if low <= value <= high:
        return value
    raise _invalid(name, value, f"Must be between {low} and {high}, if provided.")


def _integer_of(name: str, value: object) -> int:
    if type(value) is str and _DECIMAL.fullmatch(value) is not None:
        return int(value)
    raise _invalid(name, value, "Must be an integer.")


def _string_list(params: Params, name: str) -> tuple[str, ...]:
    value = params.get(name)
    if value is None:
        return ()
    if type(value) is list and all(type(item) is str for item in value):
        return tuple(_text(name, item) for item in value)
    raise _invalid(name, value, "Must be a list of strings.")


def _string_map(params: Params, name: str) -> dict[str, str]:
    value = params.get(name)
    if value is None:
        return {}
    if type(value) is dict and all(type(item) is str for item in value.values()):
        for key, item in value.items():
            _text(name, key)
            _text(name, item)
        return value
    raise _invalid(name, value, "Must be a map of strings to strings.")


def _queue(params: Params, path_queue: str | None) -> str:
    """The queue a request is about: its ``QueueUrl``, or the path it was sent to (Query protocol)."""
    url = params.get("QueueUrl")
    if type(url) is str and url:
        return queue_of_url(_text("QueueUrl", url))
    if url is None and path_queue is not None:
        return path_queue
    if url is None or url == "":
        raise _missing("QueueUrl")
    raise _invalid("QueueUrl", url, "Must be a string.")


# --- messages -----------------------------------------------------------------------------------------------------


def check_body(body: str, name: str = "MessageBody") -> int:
    """Return the size in bytes of a message body, after checking its characters as SQS does.

    Raises `SqsError`: ``MissingParameter`` for an empty body,
    ``InvalidMessageContents`` for a character outside the ones SQS allows
    (tab, line feed, carriage return, and U+0020 onwards except surrogates,
    U+FFFE and U+FFFF).
    """
    if not body:
        raise _missing(name)
    bad = _FORBIDDEN_CHARACTER.search(body)
    if bad is not None:
        raise SqsError(
            ErrorCode.INVALID_MESSAGE_CONTENTS,
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message body, the set of allowed"
            " characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )
    return len(body) if body.isascii() else len(body.encode())


def _message_attributes(value: object, name: str) -> Mapping[str, MessageAttributeValue]:
    if value is None:
        return _EMPTY
    if type(value) is not dict:
        raise _invalid(name, value, "Must be a map of attribute names to values.")
    if len(value) > MAX_MESSAGE_ATTRIBUTES:
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE,
            f"Number of message attributes [{len(value)}] exceeds the allowed maximum [{MAX_MESSAGE_ATTRIBUTES}].",
        )
    attributes = {}
    for key, raw in value.items():
        if _ATTRIBUTE_NAME.fullmatch(key) is None or ".." in key or key[0] == "." or key[-1] == ".":
            raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, f"Message (user) attribute name '{key}' is invalid.")
        if key[:4].lower() == "aws." or key[:7].lower() == "amazon.":
            raise SqsError(
                ErrorCode.INVALID_PARAMETER_VALUE,
                f"Message (user) attribute name '{key}' is invalid: the prefixes AWS. and Amazon. are reserved.",
            )
        attributes[key] = _attribute_value(key, raw, "Message (user)")
    return attributes


def _system_attributes(value: object, name: str) -> Mapping[str, MessageAttributeValue]:
    if value is None:
        return _EMPTY
    if type(value) is not dict:
        raise _invalid(name, value, "Must be a map of attribute names to values.")
    attributes = {}
    for key, raw in value.items():
        if key != "AWSTraceHeader":
            raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, f"Message system attribute name '{key}' is invalid.")
        attribute = _attribute_value(key, raw, "Message system")
        if attribute.data_type != "String":
            raise SqsError(
                ErrorCode.INVALID_PARAMETER_VALUE,
                f"The type of message system attribute '{key}' is invalid. It must be 'String'.",
            )
        attributes[key] = attribute
    return attributes


def _attribute_value(key: str, raw: object, kind: str) -> MessageAttributeValue:
    if type(raw) is not dict:
        raise _invalid(f"MessageAttribute {key}", raw, "Must be a structure with DataType and a value.")
    data_type = raw.get("DataType")
    if type(data_type) is not str or not data_type:
        raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, f"{kind} attribute '{key}' must contain a DataType.")
    if _DATA_TYPE.fullmatch(data_type) is None:
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE,
            f"The type of {kind.lower()} attribute '{key}' is invalid. You must use only the following supported"
            " type prefixes: Binary, Number, String.",
        )
    if raw.get("StringListValues") or raw.get("BinaryListValues"):
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE,
            "Message attribute list values in SendMessage operation are not supported.",
        )
    base = data_type.partition(".")[0]
    if base == "Binary":
        encoded = raw.get("BinaryValue")
        binary = _binary(encoded) if type(encoded) is str else encoded if type(encoded) is bytes else None
        if not binary:
            raise SqsError(
                ErrorCode.INVALID_PARAMETER_VALUE,
                f"{kind} attribute '{key}' must contain a non-empty value of type 'Binary'.",
            )
        return MessageAttributeValue(data_type, binary_value=binary)
    text = raw.get("StringValue")
    if type(text) is not str or not text:
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE,
            f"{kind} attribute '{key}' must contain a non-empty value of type '{base}'.",
        )
    if _FORBIDDEN_CHARACTER.search(text) is not None:
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE, f"{kind} attribute '{key}' contains characters outside the allowed set."
        )
    if base == "Number" and _NUMBER.fullmatch(text) is None:
        raise SqsError(
            ErrorCode.INVALID_PARAMETER_VALUE, f"Can't cast the value of {kind.lower()} attribute '{key}' to a number."
        )
    return MessageAttributeValue(data_type, string_value=text)


def _binary(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _too_long() -> SqsError:
    return SqsError(
        ErrorCode.INVALID_PARAMETER_VALUE,
        f"One or more parameters are invalid. Reason: Message must be shorter than {MAX_MESSAGE_SIZE} bytes.",
    )


def _no_deduplication(params: Params) -> None:
    if params.get("MessageDeduplicationId") is not None:
        raise _invalid(
            "MessageDeduplicationId",
            params["MessageDeduplicationId"],
            "The request includes a parameter that is not valid for this queue type (FIFO queues are not supported).",
        )


def _send_message(params: Params, path_queue: str | None) -> SendMessage:
    queue = _queue(params, path_queue)
    body = params.get("MessageBody")
    if type(body) is not str:
        if body is None:
            raise _missing("MessageBody")
        raise _invalid("MessageBody", body, "Must be a string.")
    size = check_body(body)
    delay = params.get("DelaySeconds")
    if delay is not None and not (type(delay) is int and 0 <= delay <= 900):
        delay = _integer(params, "DelaySeconds", 0, 900)
    attributes = params.get("MessageAttributes")
    system = params.get("MessageSystemAttributes")
    message_attributes = _EMPTY if attributes is None else _message_attributes(attributes, "MessageAttributes")
    system_attributes = _EMPTY if system is None else _system_attributes(system, "MessageSystemAttributes")
    if message_attributes:
        size += attributes_size(message_attributes)
    if size > MAX_MESSAGE_SIZE:
        raise _too_long()
    if "MessageDeduplicationId" in params:
        _no_deduplication(params)
    group = _string(params, "MessageGroupId") if "MessageGroupId" in params else None
    return SendMessage(queue, body, delay, message_attributes, system_attributes, group, size)


# --- batches ------------------------------------------------------------------------------------------------------


def _entries(params: Params, entry_name: str) -> list[dict[str, Any]]:
    """The entries of a batch, after the checks every batch action shares: count, ids, distinct ids."""
    entries = params.get("Entries")
    if entries is None or entries == []:
        raise SqsError(ErrorCode.EMPTY_BATCH_REQUEST, f"There should be at least one {entry_name} in the request.")
    if type(entries) is not list or not all(type(entry) is dict for entry in entries):
        raise _invalid("Entries", entries, "Must be a list of entries.")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise SqsError(
            ErrorCode.TOO_MANY_ENTRIES_IN_BATCH_REQUEST,
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(entries)}.",
        )
    seen = set()
    for index, entry in enumerate(entries, 1):
        entry_id = entry.get("Id")
        if entry_id is None:
            raise _missing(f"{entry_name}.{index}.Id")
        if type(entry_id) is not str or _BATCH_ENTRY_ID.fullmatch(entry_id) is None:
            raise SqsError(ErrorCode.INVALID_BATCH_ENTRY_ID)
        if entry_id in seen:
            raise SqsError(ErrorCode.BATCH_ENTRY_IDS_NOT_DISTINCT, f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def _send_message_batch(params: Params, path_queue: str | None) -> SendMessageBatch:
    queue = _queue(params, path_queue)
    raw_entries = _entries(params, "SendMessageBatchRequestEntry")
    entries = []
    total = 0
    for index, entry in enumerate(raw_entries, 1):
        prefix = f"SendMessageBatchRequestEntry.{index}."
        body = entry.get("MessageBody")
        if type(body) is not str:
            if body is None:
                raise _missing(prefix + "MessageBody")
            raise _invalid(prefix + "MessageBody", body, "Must be a string.")
        size = check_body(body, prefix + "MessageBody")
        delay = _integer(entry, "DelaySeconds", 0, 900)
        message_attributes = _message_attributes(entry.get("MessageAttributes"), prefix + "MessageAttributes")
        system_attributes = _system_attributes(entry.get("MessageSystemAttributes"), prefix + "MessageSystemAttributes")
        if message_attributes:
            size += attributes_size(message_attributes)
        total += size
        if "MessageDeduplicationId" in entry:
            _no_deduplication(entry)
        group = _string(entry, "MessageGroupId")
        entries.append(
            SendMessageBatchEntry(entry["Id"], body, delay, message_attributes, system_attributes, group, size)
        )
    if total > MAX_MESSAGE_SIZE:
        raise SqsError(
            ErrorCode.BATCH_REQUEST_TOO_LONG,
            f"Batch requests cannot be longer than {MAX_MESSAGE_SIZE} bytes. You have sent {total} bytes.",
        )
    return SendMessageBatch(queue, tuple(entries))


def _delete_message_batch(params: Params, path_queue: str | None) -> DeleteMessageBatch:
    queue = _queue(params, path_queue)
    entries = []
    for index, entry in enumerate(_entries(params, "DeleteMessageBatchRequestEntry"), 1):
        handle = entry.get("ReceiptHandle")
        if type(handle) is not str or not handle:
            raise _missing(f"DeleteMessageBatchRequestEntry.{index}.ReceiptHandle")
        entries.append(DeleteMessageBatchEntry(entry["Id"], _text("ReceiptHandle", handle)))
    return DeleteMessageBatch(queue, tuple(entries))


def _change_message_visibility_batch(params: Params, path_queue: str | None) -> ChangeMessageVisibilityBatch:
    queue = _queue(params, path_queue)
    entries = []
    for index, entry in enumerate(_entries(params, "ChangeMessageVisibilityBatchRequestEntry"), 1):
        prefix = f"ChangeMessageVisibilityBatchRequestEntry.{index}."
        handle = entry.get("ReceiptHandle")
        if type(handle) is not str or not handle:
            raise _missing(prefix + "ReceiptHandle")
        timeout = _integer(entry, "VisibilityTimeout", 0, 43_200)
        if timeout is None:
            raise _missing(prefix + "VisibilityTimeout")
        entries.append(ChangeMessageVisibilityBatchEntry(entry["Id"], _text("ReceiptHandle", handle), timeout))
    return ChangeMessageVisibilityBatch(queue, tuple(entries))


# --- receiving and acknowledging ----------------------------------------------------------------------------------


def _receive_message(params: Params, path_queue: str | None) -> ReceiveMessage:
    queue = _queue(params, path_queue)
    count = params.get("MaxNumberOfMessages", 1)
    if not (type(count) is int and 1 <= count <= 10):
        count = _integer(params, "MaxNumberOfMessages", 1, 10)
    visibility = params.get("VisibilityTimeout")
    if visibility is not None and not (type(visibility) is int and 0 <= visibility <= 43_200):
        visibility = _integer(params, "VisibilityTimeout", 0, 43_200)
    wait = params.get("WaitTimeSeconds")
    if wait is not None and not (type(wait) is int and 0 <= wait <= 20):
        wait = _read_wait(params)
    system_names: frozenset[str] = frozenset()
    if "AttributeNames" in params or "MessageSystemAttributeNames" in params:
        system_names = frozenset(
            _string_list(params, "AttributeNames") + _string_list(params, "MessageSystemAttributeNames")
        )
        unknown = system_names - MESSAGE_SYSTEM_ATTRIBUTE_NAMES
        if unknown:
            raise SqsError(ErrorCode.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {min(unknown)}.")
    message_names = _string_list(params, "MessageAttributeNames") if "MessageAttributeNames" in params else ()
    attempt = _string(params, "ReceiveRequestAttemptId") if "ReceiveRequestAttemptId" in params else None
    return ReceiveMessage(queue, count or 1, visibility, wait, system_names, message_names, attempt)


def _read_wait(params: Params) -> int | None:
    value = params.get("WaitTimeSeconds")
    number = value if type(value) is int else _integer_of("WaitTimeSeconds", value)
    if 0 <= number <= 20:
        return number
    raise _invalid("WaitTimeSeconds", number, "Must be >= 0 and <= 20, if provided.")


def _delete_message(params: Params, path_queue: str | None) -> DeleteMessage:
    queue = _queue(params, path_queue)
    return DeleteMessage(queue, _required_string(params, "ReceiptHandle"))


def _change_message_visibility(params: Params, path_queue: str | None) -> ChangeMessageVisibility:
    queue = _queue(params, path_queue)
    handle = _required_string(params, "ReceiptHandle")
    timeout = _integer(params, "VisibilityTimeout", 0, 43_200)
    if timeout is None:
        raise _missing("VisibilityTimeout")
    return ChangeMessageVisibility(queue, handle, timeout)


# --- queues -------------------------------------------------------------------------------------------------------


def redrive_policy(text: str) -> RedrivePolicy:
    """Return the typed form of a ``RedrivePolicy`` attribute value.

    Raises `SqsError` (``InvalidParameterValue``, worded as SQS words it) when
    ``text`` is not a JSON object with a ``deadLetterTargetArn`` naming a
    queue of this account and a ``maxReceiveCount`` of 1-1000.
    """
    return _redrive(text)[0]


def _redrive(text: str) -> tuple[RedrivePolicy, str]:
    """The policy ``text`` holds, and its canonical text."""
    try:
        policy = json.loads(text)
    except ValueError:
        policy = None
    if type(policy) is not dict:
        raise _invalid("RedrivePolicy", text, "Redrive policy is not a valid JSON map.")
    arn = policy.get("deadLetterTargetArn")
    queue = queue_of_arn(arn) if type(arn) is str else None
    if queue is None:
        raise _invalid("RedrivePolicy", text, "Invalid value for deadLetterTargetArn.")
    count = policy.get("maxReceiveCount")
    if type(count) is str and count.isdigit():
        count = int(count)
    if type(count) is not int or not 1 <= count <= 1000:
        raise _invalid("RedrivePolicy", text, "Invalid value for maxReceiveCount.")
    canonical = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count}, separators=(",", ":"))
    return RedrivePolicy(queue, count), canonical


def _redrive_allow_policy(text: str) -> str:
    try:
        policy = json.loads(text)
    except ValueError:
        policy = None
    if type(policy) is not dict:
        raise _invalid("RedriveAllowPolicy", text, "Redrive allow policy is not a valid JSON map.")
    permission = policy.get("redrivePermission")
    if permission not in ("allowAll", "denyAll", "byQueue"):
        raise _invalid("RedriveAllowPolicy", text, "Invalid value for redrivePermission.")
    sources = policy.get("sourceQueueArns")
    if permission == "byQueue":
        if (
            type(sources) is not list
            or not 1 <= len(sources) <= 10
            or not all(type(arn) is str and queue_of_arn(arn) is not None for arn in sources)
        ):
            raise _invalid("RedriveAllowPolicy", text, "Invalid value for sourceQueueArns.")
    elif sources is not None:
        raise _invalid("RedriveAllowPolicy", text, "sourceQueueArns is only allowed with redrivePermission byQueue.")
    return json.dumps(policy, separators=(",", ":"))


def queue_attributes(attributes: Mapping[str, str], *, creating: bool) -> dict[str, str]:
    """Return the settable queue attributes ``attributes`` holds, checked and in canonical form.

    Integers are written in decimal, booleans as ``true``/``false``, a
    ``RedrivePolicy`` as compact JSON; an empty ``Policy``, ``RedrivePolicy`` or
    ``RedriveAllowPolicy`` (which clears it) stays empty. ``FifoQueue`` is
    accepted only as ``false`` and only when ``creating``, since FIFO queues are
    not supported. Raises `SqsError`: ``InvalidAttributeName`` for a name that
    is unknown or not settable (the FIFO-only attributes included, as SQS
    answers on a standard queue), ``InvalidAttributeValue`` or
    ``InvalidParameterValue`` for a bad value.
    """
    checked = {}
    for name, value in attributes.items():
        bounds = _INTEGER_ATTRIBUTES.get(name)
        if bounds is not None:
            if _DECIMAL.fullmatch(value) is None or not bounds[0] <= int(value) <= bounds[1]:
                raise SqsError(ErrorCode.INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter {name}.")
            checked[name] = str(int(value))
        elif name == "RedrivePolicy":
            checked[name] = _redrive(value)[1] if value else value
        elif name == "RedriveAllowPolicy":
            checked[name] = _redrive_allow_policy(value) if value else value
        elif name == "Policy":
            if value:
                try:
                    document = json.loads(value)
                except ValueError:
                    document = None
                if type(document) is not dict:
                    raise SqsError(ErrorCode.INVALID_ATTRIBUTE_VALUE, "Invalid value for the parameter Policy.")
            checked[name] = value
        elif name == "SqsManagedSseEnabled":
            if value.lower() not in ("true", "false"):
                raise SqsError(ErrorCode.INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter {name}.")
            checked[name] = value.lower()
        elif name in _TEXT_ATTRIBUTES:
            checked[name] = value
        elif name == "FifoQueue" and creating:
            if value.lower() == "true":
                raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "FIFO queues are not supported.")
            if value.lower() != "false":
                raise SqsError(ErrorCode.INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter {name}.")
        else:
            raise SqsError(ErrorCode.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {name}.")
    if checked.get("KmsMasterKeyId") and checked.get("SqsManagedSseEnabled") == "true":
        raise SqsError(
            ErrorCode.INVALID_ATTRIBUTE_NAME,
            "You can use one type of server-side encryption (SSE) at one time."
            " You can either enable KMS SSE or SQS SSE.",
        )
    return checked


def _tags(params: Params, name: str) -> dict[str, str]:
    tags = _string_map(params, name)
    if len(tags) > MAX_TAGS:
        raise _invalid(name, tags, f"Too many tags added for queue: at most {MAX_TAGS}.")
    for key, value in tags.items():
        _check_tag_key(name, key)
        if len(value) > 256:
            raise _invalid(name, value, "Tag values must be at most 256 characters.")
    return tags


def _check_tag_key(name: str, key: str) -> None:
    if not 1 <= len(key) <= 128:
        raise _invalid(name, key, "Tag keys must be between 1 and 128 characters.")
    if key[:4].lower() == "aws:":
        raise _invalid(name, key, "Tag keys must not start with the reserved prefix aws:.")


def _create_queue(params: Params, path_queue: str | None) -> CreateQueue:
    name = check_queue_name(_required_string(params, "QueueName"))
    attributes = queue_attributes(_string_map(params, "Attributes"), creating=True)
    return CreateQueue(name, attributes, _tags(params, "tags"))


def _get_queue_url(params: Params, path_queue: str | None) -> GetQueueUrl:
    name = _required_string(params, "QueueName")
    owner = _string(params, "QueueOwnerAWSAccountId")
    if owner is not None and owner != ACCOUNT_ID:
        raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
    return GetQueueUrl(name, owner)


def _list_queues(params: Params, path_queue: str | None) -> ListQueues:
    prefix = _string(params, "QueueNamePrefix") or ""
    return ListQueues(prefix, _max_results(params, MAX_LISTED), _string(params, "NextToken"))


def _max_results(params: Params, high: int) -> int | None:
    value = params.get("MaxResults")
    if value is None:
        return None
    number = value if type(value) is int else _integer_of("MaxResults", value)
    if 1 <= number <= high:
        return number
    raise _invalid("MaxResults", number, f"MaxResults must be an integer between 1 and {high}.")


def _delete_queue(params: Params, path_queue: str | None) -> DeleteQueue:
    return DeleteQueue(_queue(params, path_queue))


def _purge_queue(params: Params, path_queue: str | None) -> PurgeQueue:
    return PurgeQueue(_queue(params, path_queue))


def _get_queue_attributes(params: Params, path_queue: str | None) -> GetQueueAttributes:
    queue = _queue(params, path_queue)
    names = _string_list(params, "AttributeNames")
    for name in names:
        if name not in QUEUE_ATTRIBUTE_NAMES:
            raise SqsError(ErrorCode.INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {name}.")
    return GetQueueAttributes(queue, names)


def _set_queue_attributes(params: Params, path_queue: str | None) -> SetQueueAttributes:
    queue = _queue(params, path_queue)
    if params.get("Attributes") is None:
        raise _missing("Attributes")
    return SetQueueAttributes(queue, queue_attributes(_string_map(params, "Attributes"), creating=False))


def _tag_queue(params: Params, path_queue: str | None) -> TagQueue:
    queue = _queue(params, path_queue)
    if not params.get("Tags"):
        raise _missing("Tags")
    return TagQueue(queue, _tags(params, "Tags"))


def _untag_queue(params: Params, path_queue: str | None) -> UntagQueue:
    queue = _queue(params, path_queue)
    keys = _string_list(params, "TagKeys")
    if not keys:
        raise _missing("TagKeys")
    for key in keys:
        _check_tag_key("TagKeys", key)
    return UntagQueue(queue, keys)


def _list_queue_tags(params: Params, path_queue: str | None) -> ListQueueTags:
    return ListQueueTags(_queue(params, path_queue))


def _list_dead_letter_source_queues(params: Params, path_queue: str | None) -> ListDeadLetterSourceQueues:
    queue = _queue(params, path_queue)
    return ListDeadLetterSourceQueues(queue, _max_results(params, MAX_LISTED), _string(params, "NextToken"))


def _arn_queue(params: Params, name: str) -> str | None:
    arn = _string(params, name)
    if arn is None:
        return None
    queue = queue_of_arn(arn)
    if queue is None:
        raise _invalid(name, arn, "Must be the ARN of a queue of this account.")
    return queue


def _start_message_move_task(params: Params, path_queue: str | None) -> StartMessageMoveTask:
    source = _arn_queue(params, "SourceArn")
    if source is None:
        raise _missing("SourceArn")
    destination = _arn_queue(params, "DestinationArn")
    rate = _integer(params, "MaxNumberOfMessagesPerSecond", 1, 500)
    return StartMessageMoveTask(source, destination, rate)


def _cancel_message_move_task(params: Params, path_queue: str | None) -> CancelMessageMoveTask:
    return CancelMessageMoveTask(_required_string(params, "TaskHandle"))


def _list_message_move_tasks(params: Params, path_queue: str | None) -> ListMessageMoveTasks:
    source = _arn_queue(params, "SourceArn")
    if source is None:
        raise _missing("SourceArn")
    return ListMessageMoveTasks(source, _max_results(params, 10))


# --- dispatch -----------------------------------------------------------------------------------------------------

Builder = Callable[[Params, str | None], Request]

ACTIONS: Mapping[str, Builder] = MappingProxyType(
    {
        "SendMessage": _send_message,
        "ReceiveMessage": _receive_message,
        "DeleteMessage": _delete_message,
        "SendMessageBatch": _send_message_batch,
        "DeleteMessageBatch": _delete_message_batch,
        "ChangeMessageVisibility": _change_message_visibility,
        "ChangeMessageVisibilityBatch": _change_message_visibility_batch,
        "CreateQueue": _create_queue,
        "GetQueueUrl": _get_queue_url,
        "ListQueues": _list_queues,
        "DeleteQueue": _delete_queue,
        "PurgeQueue": _purge_queue,
        "GetQueueAttributes": _get_queue_attributes,
        "SetQueueAttributes": _set_queue_attributes,
        "TagQueue": _tag_queue,
        "UntagQueue": _untag_queue,
        "ListQueueTags": _list_queue_tags,
        "ListDeadLetterSourceQueues": _list_dead_letter_source_queues,
        "StartMessageMoveTask": _start_message_move_task,
        "CancelMessageMoveTask": _cancel_message_move_task,
        "ListMessageMoveTasks": _list_message_move_tasks,
    }
)
"""Every action this layer decodes, with its builder."""

UNSUPPORTED_ACTIONS = frozenset({"AddPermission", "RemovePermission"})
"""Actions SQS has and dbqueue refuses (``UnsupportedOperation``): dbqueue has no per-queue policies."""


def build_request(action: str, params: Params, path_queue: str | None = None) -> Request:
    """Return the typed request for ``action`` with ``params`` (botocore's JSON member names).

    ``path_queue`` is the queue the request's path names, if any (the Query
    protocol's way to address a queue). Raises `SqsError`: ``InvalidAction``
    for an action SQS does not have, ``UnsupportedOperation`` for one dbqueue
    does not offer, and the action's own refusals.
    """
    builder = ACTIONS.get(action)
    if builder is None:
        if action in UNSUPPORTED_ACTIONS:
            raise SqsError(ErrorCode.UNSUPPORTED_OPERATION, f"{action} is not supported by dbqueue.")
        raise SqsError(ErrorCode.INVALID_ACTION, f"The action {_shown(action)} is not valid for this endpoint.")
    return builder(params, path_queue)

"""The SQS results, one frozen dataclass per kind of answer, as `encode_result` writes them.

Actions whose answer carries nothing (DeleteQueue, PurgeQueue,
SetQueueAttributes, TagQueue, UntagQueue, DeleteMessage,
ChangeMessageVisibility) have no result class: pass None.

The MD5 digests SQS returns are fields, not computed by the encoder: the
server may have them already (a message's attribute digest is the same at
every receive), and hashing a large body twice per answer would be waste.
`ReceivedMessage.build` and `SendMessageResult.build` compute them for the
common case (see `digests`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .digests import md5_of_attributes, md5_of_body
from .errors import SqsError
from .requests import MessageAttributeValue

__all__ = [
    "CreateQueueResult",
    "GetQueueUrlResult",
    "ListQueuesResult",
    "GetQueueAttributesResult",
    "ListQueueTagsResult",
    "SendMessageResult",
    "SendMessageBatchResultEntry",
    "BatchResultErrorEntry",
    "SendMessageBatchResult",
    "ReceivedMessage",
    "ReceiveMessageResult",
    "BatchResult",
    "ListDeadLetterSourceQueuesResult",
    "StartMessageMoveTaskResult",
    "CancelMessageMoveTaskResult",
    "MessageMoveTask",
    "ListMessageMoveTasksResult",
    "Result",
]


@dataclass(frozen=True, slots=True)
class CreateQueueResult:
    """The new (or existing, identical) queue's URL."""

    queue_url: str


@dataclass(frozen=True, slots=True)
class GetQueueUrlResult:
    """The queue's URL."""

    queue_url: str


@dataclass(frozen=True, slots=True)
class ListQueuesResult:
    """One page of queue URLs; ``next_token`` is None on the last page."""

    queue_urls: tuple[str, ...]
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class GetQueueAttributesResult:
    """The attributes asked for, as strings (numbers in decimal, booleans ``true``/``false``)."""

    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ListQueueTagsResult:
    """The queue's tags."""

    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SendMessageResult:
    """The id SQS gives the message, and the digests of what it received (None when there were no attributes)."""

    message_id: str
    md5_of_message_body: str
    md5_of_message_attributes: str | None = None
    md5_of_message_system_attributes: str | None = None

    @classmethod
    def build(
        cls,
        message_id: str,
        body: str,
        message_attributes: Mapping[str, MessageAttributeValue],
        system_attributes: Mapping[str, MessageAttributeValue],
    ) -> SendMessageResult:
        """Return the result for a message, its digests computed as SQS computes them."""
        return cls(
            message_id,
            md5_of_body(body),
            md5_of_attributes(message_attributes) if message_attributes else None,
            md5_of_attributes(system_attributes) if system_attributes else None,
        )


@dataclass(frozen=True, slots=True)
class SendMessageBatchResultEntry:
    """One sent entry of a batch: its ``Id`` and what `SendMessageResult` holds."""

    id: str
    message_id: str
    md5_of_message_body: str
    md5_of_message_attributes: str | None = None
    md5_of_message_system_attributes: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResultErrorEntry:
    """One failed entry of a batch: its ``Id``, an error code and message, and whose fault it is."""

    id: str
    code: str
    message: str
    sender_fault: bool = True

    @classmethod
    def of(cls, entry_id: str, error: SqsError) -> BatchResultErrorEntry:
        """Return the failure of entry ``entry_id`` refused with ``error``."""
        return cls(entry_id, error.code.query_code, error.message, error.code.sender_fault)


@dataclass(frozen=True, slots=True)
class SendMessageBatchResult:
    """The entries sent and the entries refused, each by ``Id``."""

    successful: tuple[SendMessageBatchResultEntry, ...]
    failed: tuple[BatchResultErrorEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message handed out by ``ReceiveMessage``.

    ``attributes`` are the system attributes asked for (``SentTimestamp``,
    ``ApproximateReceiveCount``, ...), as strings; ``message_attributes`` the
    message attributes asked for, and ``md5_of_message_attributes`` the digest
    of exactly those (None when none are returned).
    """

    message_id: str
    receipt_handle: str
    body: str
    md5_of_body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    md5_of_message_attributes: str | None = None

    @classmethod
    def build(
        cls,
        message_id: str,
        receipt_handle: str,
        body: str,
        attributes: Mapping[str, str],
        message_attributes: Mapping[str, MessageAttributeValue],
    ) -> ReceivedMessage:
        """Return a received message, its digests computed as SQS computes them."""
        return cls(
            message_id,
            receipt_handle,
            body,
            md5_of_body(body),
            attributes,
            message_attributes,
            md5_of_attributes(message_attributes) if message_attributes else None,
        )


@dataclass(frozen=True, slots=True)
class ReceiveMessageResult:
    """The messages handed out, possibly none."""

    messages: tuple[ReceivedMessage, ...]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A ``DeleteMessageBatch`` or ``ChangeMessageVisibilityBatch`` answer: ids that worked, entries that failed."""

    successful: tuple[str, ...]
    failed: tuple[BatchResultErrorEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class ListDeadLetterSourceQueuesResult:
    """One page of the URLs of the queues that use a dead-letter queue."""

    queue_urls: tuple[str, ...]
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class StartMessageMoveTaskResult:
    """The handle of the task started."""

    task_handle: str


@dataclass(frozen=True, slots=True)
class CancelMessageMoveTaskResult:
    """How many messages the cancelled task had moved."""

    approximate_number_of_messages_moved: int


@dataclass(frozen=True, slots=True)
class MessageMoveTask:
    """One message-move task, as ``ListMessageMoveTasks`` reports it (timestamps in epoch milliseconds)."""

    status: str
    source_arn: str
    started_timestamp: int
    approximate_number_of_messages_moved: int = 0
    task_handle: str | None = None
    destination_arn: str | None = None
    max_per_second: int | None = None
    approximate_number_of_messages_to_move: int | None = None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ListMessageMoveTasksResult:
    """The most recent tasks of a queue, newest first."""

    results: tuple[MessageMoveTask, ...]


Result = (
    CreateQueueResult
    | GetQueueUrlResult
    | ListQueuesResult
    | GetQueueAttributesResult
    | ListQueueTagsResult
    | SendMessageResult
    | SendMessageBatchResult
    | ReceiveMessageResult
    | BatchResult
    | ListDeadLetterSourceQueuesResult
    | StartMessageMoveTaskResult
    | CancelMessageMoveTaskResult
    | ListMessageMoveTasksResult
    | None
)
"""Any answer to an SQS request (None for the actions that answer nothing)."""

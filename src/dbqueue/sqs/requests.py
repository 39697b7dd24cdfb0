"""The SQS requests, one frozen dataclass per action, as both wire protocols decode them.

A request here is already checked against SQS's rules (ranges, batch shapes,
names, characters): the server can act on it without looking at the wire
again. Queues are named by their queue name (the URL was parsed, see
`addresses`); receipt handles stay strings, because opening one needs the
server's secret (see `receipts`) and, in a batch, a bad handle fails only its
entry.

Field names follow dbqueue's words where the two differ (``queue`` for the
URL, ``max_messages``); each docstring names the SQS parameter. Optional
numbers are None when the client left them out, so the server applies the
queue's own default (``DelaySeconds``, ``VisibilityTimeout``,
``ReceiveMessageWaitTimeSeconds``), as SQS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

# Defined with the envelope's layout, below the SQS front end, so that dbqueue's own clients read the same values.
from ..protocol.envelope import MessageAttributeValue

__all__ = [
    "MessageAttributeValue",
    "RedrivePolicy",
    "CreateQueue",
    "GetQueueUrl",
    "ListQueues",
    "DeleteQueue",
    "PurgeQueue",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "SendMessage",
    "SendMessageBatchEntry",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatchEntry",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatchEntry",
    "ChangeMessageVisibilityBatch",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
    "Request",
]


@dataclass(frozen=True, slots=True)
class RedrivePolicy:
    """A queue's ``RedrivePolicy``: after ``max_receive_count`` receives, a message moves to the dead-letter queue.

    In dbqueue's words: ``max_deliveries`` and ``dead_letter_queue``.
    """

    dead_letter_queue: str
    max_receive_count: int


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """``CreateQueue``: ``QueueName``, ``Attributes`` (validated, see `queue_attributes`), ``tags``."""

    action: ClassVar[str] = "CreateQueue"
    queue: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GetQueueUrl:
    """``GetQueueUrl``: ``QueueName``, ``QueueOwnerAWSAccountId``."""

    action: ClassVar[str] = "GetQueueUrl"
    queue: str
    owner_account: str | None = None


@dataclass(frozen=True, slots=True)
class ListQueues:
    """``ListQueues``: ``QueueNamePrefix`` ("" for all), ``MaxResults`` (1-1000), ``NextToken`` (see `pagination`)."""

    action: ClassVar[str] = "ListQueues"
    prefix: str = ""
    max_results: int | None = None
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    """``DeleteQueue``: ``QueueUrl``."""

    action: ClassVar[str] = "DeleteQueue"
    queue: str


@dataclass(frozen=True, slots=True)
class PurgeQueue:
    """``PurgeQueue``: ``QueueUrl``."""

    action: ClassVar[str] = "PurgeQueue"
    queue: str


@dataclass(frozen=True, slots=True)
class GetQueueAttributes:
    """``GetQueueAttributes``: ``AttributeNames`` (each a queue attribute name, or ``All``)."""

    action: ClassVar[str] = "GetQueueAttributes"
    queue: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SetQueueAttributes:
    """``SetQueueAttributes``: ``Attributes``, validated (see `queue_attributes`); "" clears a policy."""

    action: ClassVar[str] = "SetQueueAttributes"
    queue: str
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TagQueue:
    """``TagQueue``: ``Tags``."""

    action: ClassVar[str] = "TagQueue"
    queue: str
    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UntagQueue:
    """``UntagQueue``: ``TagKeys``."""

    action: ClassVar[str] = "UntagQueue"
    queue: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListQueueTags:
    """``ListQueueTags``: ``QueueUrl``."""

    action: ClassVar[str] = "ListQueueTags"
    queue: str


@dataclass(frozen=True, slots=True)
class SendMessage:
    """``SendMessage``: ``MessageBody``, ``DelaySeconds`` (0-900, None: the queue's), attributes.

    ``system_attributes`` holds ``MessageSystemAttributes`` (only
    ``AWSTraceHeader`` exists). ``group_id`` is ``MessageGroupId``, which SQS
    accepts on standard queues as a fairness hint; dbqueue keeps one FIFO
    order per queue and does not use it. ``size`` is the message's size as SQS
    counts it (body, attribute names, types and values, in bytes), for the
    queue's ``MaximumMessageSize``.
    """

    action: ClassVar[str] = "SendMessage"
    queue: str
    body: str
    delay_seconds: int | None = None
    message_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    system_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    group_id: str | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class SendMessageBatchEntry:
    """One ``SendMessageBatchRequestEntry``: ``Id`` and the fields of `SendMessage`."""

    id: str
    body: str
    delay_seconds: int | None = None
    message_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    system_attributes: Mapping[str, MessageAttributeValue] = field(default_factory=dict)
    group_id: str | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class SendMessageBatch:
    """``SendMessageBatch``: 1-10 entries with distinct ids, within the total size limit."""

    action: ClassVar[str] = "SendMessageBatch"
    queue: str
    entries: tuple[SendMessageBatchEntry, ...]


@dataclass(frozen=True, slots=True)
class ReceiveMessage:
    """``ReceiveMessage``.

    ``max_messages`` is ``MaxNumberOfMessages`` (1-10); ``visibility_timeout``
    (0-43200 s) and ``wait_time_seconds`` (0-20) are None when left to the
    queue. ``system_attribute_names`` merges ``AttributeNames`` and
    ``MessageSystemAttributeNames`` (``All`` means every one);
    ``message_attribute_names`` is ``MessageAttributeNames`` (``All``, ``.*``
    and ``prefix.*`` select several): see `digests.select_attributes`.
    """

    action: ClassVar[str] = "ReceiveMessage"
    queue: str
    max_messages: int = 1
    visibility_timeout: int | None = None
    wait_time_seconds: int | None = None
    system_attribute_names: frozenset[str] = frozenset()
    message_attribute_names: tuple[str, ...] = ()
    receive_request_attempt_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """``DeleteMessage``: ``ReceiptHandle``."""

    action: ClassVar[str] = "DeleteMessage"
    queue: str
    receipt_handle: str


@dataclass(frozen=True, slots=True)
class DeleteMessageBatchEntry:
    """One ``DeleteMessageBatchRequestEntry``: ``Id``, ``ReceiptHandle``."""

    id: str
    receipt_handle: str


@dataclass(frozen=True, slots=True)
class DeleteMessageBatch:
    """``DeleteMessageBatch``: 1-10 entries with distinct ids."""

    action: ClassVar[str] = "DeleteMessageBatch"
    queue: str
    entries: tuple[DeleteMessageBatchEntry, ...]


@dataclass(frozen=True, slots=True)
class ChangeMessageVisibility:
    """``ChangeMessageVisibility``: ``ReceiptHandle``, ``VisibilityTimeout`` (0-43200 s, from now)."""

    action: ClassVar[str] = "ChangeMessageVisibility"
    queue: str
    receipt_handle: str
    visibility_timeout: int


@dataclass(frozen=True, slots=True)
class ChangeMessageVisibilityBatchEntry:
    """One ``ChangeMessageVisibilityBatchRequestEntry``: ``Id``, ``ReceiptHandle``, ``VisibilityTimeout``."""

    id: str
    receipt_handle: str
    visibility_timeout: int


@dataclass(frozen=True, slots=True)
class ChangeMessageVisibilityBatch:
    """``ChangeMessageVisibilityBatch``: 1-10 entries with distinct ids."""

    action: ClassVar[str] = "ChangeMessageVisibilityBatch"
    queue: str
    entries: tuple[ChangeMessageVisibilityBatchEntry, ...]


@dataclass(frozen=True, slots=True)
class ListDeadLetterSourceQueues:
    """``ListDeadLetterSourceQueues``: the queues whose ``RedrivePolicy`` names ``queue``."""

    action: ClassVar[str] = "ListDeadLetterSourceQueues"
    queue: str
    max_results: int | None = None
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class StartMessageMoveTask:
    """``StartMessageMoveTask``: move a dead-letter queue's messages back.

    ``source_queue`` is the queue ``SourceArn`` names; ``destination_queue`` the
    one ``DestinationArn`` names, or None for each message's original queue.
    """

    action: ClassVar[str] = "StartMessageMoveTask"
    source_queue: str
    destination_queue: str | None = None
    max_per_second: int | None = None


@dataclass(frozen=True, slots=True)
class CancelMessageMoveTask:
    """``CancelMessageMoveTask``: ``TaskHandle``."""

    action: ClassVar[str] = "CancelMessageMoveTask"
    task_handle: str


@dataclass(frozen=True, slots=True)
class ListMessageMoveTasks:
    """``ListMessageMoveTasks``: the tasks of the queue ``SourceArn`` names (``MaxResults`` 1-10)."""

    action: ClassVar[str] = "ListMessageMoveTasks"
    source_queue: str
    max_results: int | None = None


Request = (
    CreateQueue
    | GetQueueUrl
    | ListQueues
    | DeleteQueue
    | PurgeQueue
    | GetQueueAttributes
    | SetQueueAttributes
    | TagQueue
    | UntagQueue
    | ListQueueTags
    | SendMessage
    | SendMessageBatch
    | ReceiveMessage
    | DeleteMessage
    | DeleteMessageBatch
    | ChangeMessageVisibility
    | ChangeMessageVisibilityBatch
    | ListDeadLetterSourceQueues
    | StartMessageMoveTask
    | CancelMessageMoveTask
    | ListMessageMoveTasks
)
"""Any decoded SQS request."""

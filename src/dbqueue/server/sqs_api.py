"""The SQS actions, done on the server's broker: what each request `dbqueue.sqs` decodes does to dbqueue's queues.

Theory of operation
-------------------
`SqsService` is the SQS API's server side, below HTTP and above the broker.
The listener (`http`) hands it each decoded request; it acts on the same
`Broker` the sessions of dbqueue's own protocol use, on the same event loop,
so a message sent through either protocol is read through either.

* **Queues** are the broker's. What SQS says about a queue that dbqueue's
  queues have no field for (``DelaySeconds``, ``MaximumMessageSize``,
  ``ReceiveMessageWaitTimeSeconds``, the policies, tags, the creation and
  modification times) is kept here, in a `QueueRecord` per queue, and written
  as JSON into the broker queue's *annotations* (`Broker.annotate`) at each
  change (`SqsService._keep`), so that the store keeps it with the queue and a
  restart gives it back (`SqsService._kept`). A queue created through dbqueue's
  own protocol gets a record with SQS's defaults when SQS first names it.
  ``RedrivePolicy`` and ``VisibilityTimeout`` are the broker queue's own
  ``max_deliveries``, ``dead_letter`` and default visibility timeout, changed
  by `Broker.alter_queue` (journaled, with the checks a creation makes).
* **Messages** are stored as an envelope (`dbqueue.sqs.envelope`): the body,
  its attributes, the send time, the sender and the queue it was sent to, so
  all of it moves with the message (back to the front of its queue, into a
  dead-letter queue, through the store).
* **In flight**: every message received over SQS is held by one `Holding`,
  the service's, with its visibility timeout as the broker's deadline, so it
  comes back by the broker's one timer like any other. A batch read from the
  broker is split into records at once (`Broker.records_of`), and the
  deadline set on the records: every message in flight here has a record of
  its own, found by id, whose ``deliveries`` says which delivery it is in.
* **Receipt handles** name (queue, id, delivery) under an HMAC
  (`dbqueue.sqs.ReceiptHandles`): a handle is *current* when its message is
  in flight here in that very delivery. A delete with a handle that is not
  current (the message timed out and was received again, or is gone) answers
  success and deletes nothing, as SQS does for a stale handle; a change of
  visibility with one is ``MessageNotInflight``.
* **Long polls** park a waiter on the broker (`Broker.wait`) whose wake
  callback, run by the broker as soon as a message is ready, splits the
  messages and sets their deadlines right there, then resolves a future the
  request awaits: no task polls, and nothing else waits behind it. A request
  whose client goes away is cancelled; what it was handed goes back, its
  delivery uncounted, as a session does for a wait woken while it closes.
* **Admission**: the service is an `admission.Connection`, and every request
  that a session's would be is admitted by the same check (`admit_send`,
  `admit_read`, `admit_wait`, `admit_change`): the server's message size,
  memory budget and byte capacity, the messages in flight and waiting reads
  of one connection (here: of everything SQS holds), a store that cannot
  commit.
* **Durability**: with a store, an answer is given only once the changes it
  reports are committed. The service waits for the server's group commit
  (`host.committed`, as the console does); if the commit failed, the request
  is answered ``ServiceUnavailable``.
* **A reloaded store**: a server whose commit failed reloads its store into a
  new broker; `rebind` (called by the server, and by `act` when it sees the
  broker changed) drops what was held or parked on the old one.

* **The fast path**: `SqsConnection` is the protocol of each HTTP connection
  (the listener builds one per connection it accepts; see its docstring):
  plain JSON requests are framed from their bytes (`dbqueue.sqs.fastpath`) and the hot actions done by
  the ``fast_*`` methods, which act exactly as the general ones would or
  return None and leave the request to `act` (nothing changed before a None);
  the rest of a connection whose first odd request came goes to aiohttp.
  The handles issued are remembered (``_issued``, bounded by the messages in
  flight) so that a delete with one needs no MAC; any other is opened.
* **Queue attributes**: ``VisibilityTimeout`` given to ``CreateQueue`` or
  ``SetQueueAttributes`` is the broker queue's own default visibility timeout
  too (kept by the store; an SQS 0, visible again at once, is the record's
  alone); a record made for a queue SQS has no attributes kept for
  (`QueueRecord.restored`: made natively, or by a dbqueue before format 5's
  annotations) takes the attributes of the next ``CreateQueue`` naming it.

Refusals are `SqsError`; the broker's own (`RequestError`) are translated by
one table (`sqs_error`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp.http import SERVER_SOFTWARE

from ..core import NO_BYTE_LIMIT, Entry, Holding, Outcome, Queue, Record, Waiter
from ..errors import (
    InvalidQueueName,
    InvalidRequest,
    LimitExceeded,
    NoSuchQueue,
    OverMemoryBudget,
    QueueFull,
    RequestError,
    StoreUnavailable,
)
from ..protocol.frames import NEVER_MS
from ..sqs import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    BatchResult,
    BatchResultErrorEntry,
    CancelMessageMoveTask,
    CancelMessageMoveTaskResult,
    ChangeMessageVisibility,
    ChangeMessageVisibilityBatch,
    CreateQueue,
    CreateQueueResult,
    DeleteMessage,
    DeleteMessageBatch,
    DeleteQueue,
    Envelope,
    ErrorCode,
    GetQueueAttributes,
    GetQueueAttributesResult,
    GetQueueUrl,
    GetQueueUrlResult,
    ListDeadLetterSourceQueues,
    ListDeadLetterSourceQueuesResult,
    ListMessageMoveTasks,
    ListMessageMoveTasksResult,
    ListQueues,
    ListQueuesResult,
    ListQueueTags,
    ListQueueTagsResult,
    MessageAttributeValue,
    MessageMoveTask,
    PurgeQueue,
    Receipt,
    ReceiptHandles,
    ReceivedMessage,
    ReceiveMessage,
    ReceiveMessageResult,
    RedrivePolicy,
    Request,
    Result,
    SendMessage,
    SendMessageBatch,
    SendMessageBatchResult,
    SendMessageBatchResultEntry,
    SendMessageResult,
    SetQueueAttributes,
    SignatureVerifier,
    SqsError,
    StartMessageMoveTask,
    StartMessageMoveTaskResult,
    TagQueue,
    UntagQueue,
    bare_body,
    build_request,
    decode_request,
    encode_error,
    encode_result,
    message_id_text,
    open_envelope,
    paginate,
    queue_arn,
    queue_of_arn,
    queue_of_url,
    queue_url,
    redrive_policy,
    seal,
    select_attributes,
)
from ..sqs import Protocol as WireProtocol
from ..sqs.digests import md5 as _md5
from ..sqs.envelope import plain_body, plain_prefix, seal_plain, seal_plain_many
from ..sqs.fastpath import (
    MORE,
    OTHER,
    HttpRequest,
    batch_reply,
    decode_params,
    frame,
    ok_head,
    plain_delete_entries,
    plain_receive,
    plain_send,
    plain_send_entries,
    receive_reply,
    received_message,
    response_head,
    send_batch_reply,
    send_reply,
)
from ..sqs.json_protocol import CONTENT_TYPE as JSON_CONTENT_TYPE
from ..sqs.json_protocol import message_json
from ..sqs.wire import REQUEST_ID_HEADER
from .admission import admit_change, admit_read, admit_send, admit_wait
from .host import Host, committed
from .metrics import SqsStats
from .mover import Mover, Route

__all__ = [
    "SqsHost",
    "SqsService",
    "QueueRecord",
    "DEFAULT_ATTRIBUTES",
    "sqs_error",
    "SqsConnection",
    "FastListener",
    "FastSettings",
]

log = logging.getLogger("dbqueue.server")

DEFAULT_ATTRIBUTES: Mapping[str, str] = {
    "VisibilityTimeout": "30",
    "MaximumMessageSize": "1048576",
    "MessageRetentionPeriod": "345600",
    "DelaySeconds": "0",
    "ReceiveMessageWaitTimeSeconds": "0",
    "SqsManagedSseEnabled": "false",
}
"""The settable attributes every queue reports, with SQS's defaults (no encryption: dbqueue does none)."""

_MAX_VISIBILITY = 43_200  # SQS's longest visibility timeout, in seconds
_LOW_48 = 0xFFFF_FFFF_FFFF


class SqsHost(Host, Protocol):
    """What the SQS service uses of the server: a session's `Host`, and the future that says the store failed."""

    @property
    def failed(self) -> asyncio.Future[BaseException] | None: ...


@dataclass(slots=True)
class QueueRecord:
    """What SQS says about one broker queue beyond the broker's own fields.

    ``attributes`` holds the settable attributes set (checked, canonical), but
    ``RedrivePolicy``, which is the broker queue's; ``created`` and ``modified``
    are epoch seconds. A record describes ``queue``, that very object: a queue
    deleted and made again under its name gets a new record.
    """

    queue: Queue
    created: int
    modified: int
    attributes: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    restored: bool = False
    """Made for a queue SQS kept no attributes for (created natively, or by a dbqueue that did not keep them):
    its attributes but the broker's are unknown, so a ``CreateQueue`` naming it adopts those it gives."""

    def number(self, name: str) -> int:
        """The value of integer attribute ``name``, set or default."""
        return int(self.attributes.get(name) or DEFAULT_ATTRIBUTES[name])

    def visibility_ms(self) -> int:
        """The visibility timeout of a receive that names none, in ms: what `visibility_text` reports.

        ``VisibilityTimeout`` when SQS set it, else the broker queue's own
        default (given at its creation, kept by the store; the server's default
        when none was given). A queue that never times out (made natively with
        ``NEVER``) gives SQS's longest timeout, the 12 hours GetQueueAttributes
        reports: SQS has no "never", and the listener's one broker connection
        never closes, so a message received by an SQS consumer that died would
        otherwise stay in flight until the server stops.
        """
        value = self.attributes.get("VisibilityTimeout")
        if value:
            return int(value) * 1000
        ms = self.queue.visibility_ms
        return _MAX_VISIBILITY * 1000 if ms == NEVER_MS else ms

    def visibility_text(self) -> str:
        """``VisibilityTimeout`` as GetQueueAttributes reports it (a queue that never times out: SQS's maximum)."""
        value = self.attributes.get("VisibilityTimeout")
        if value:
            return value
        ms = self.queue.visibility_ms
        return str(_MAX_VISIBILITY if ms == NEVER_MS else -(-ms // 1000))


_REFUSALS: tuple[tuple[type[RequestError], ErrorCode], ...] = (
    (NoSuchQueue, ErrorCode.QUEUE_DOES_NOT_EXIST),
    (QueueFull, ErrorCode.OVER_LIMIT),
    (LimitExceeded, ErrorCode.OVER_LIMIT),
    (OverMemoryBudget, ErrorCode.OVER_LIMIT),
    (StoreUnavailable, ErrorCode.SERVICE_UNAVAILABLE),
    (InvalidRequest, ErrorCode.INVALID_PARAMETER_VALUE),
)


def sqs_error(error: RequestError) -> SqsError:
    """The SQS refusal of a request the broker refused with ``error`` (one table, `_REFUSALS`)."""
    for kind, code in _REFUSALS:
        if isinstance(error, kind):
            return SqsError(code, None if code is ErrorCode.QUEUE_DOES_NOT_EXIST else str(error))
    return SqsError(ErrorCode.INTERNAL_ERROR, str(error))


def _too_long(limit: int) -> SqsError:
    return SqsError(
        ErrorCode.INVALID_PARAMETER_VALUE,
        f"One or more parameters are invalid. Reason: Message must be shorter than {limit} bytes.",
    )


def _not_in_flight() -> SqsError:
    return SqsError(
        ErrorCode.MESSAGE_NOT_INFLIGHT,
        "Value for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for"
        " visibility timeout change.",
    )


Action = Callable[["SqsService", Any, str, str], Result]


@dataclass(slots=True)
class MoveTask:
    """A message move task (`StartMessageMoveTask`): its `Mover` and what ``ListMessageMoveTasks`` says of it."""

    mover: Mover
    handle: str
    source_arn: str
    destination_arn: str | None
    started_ms: int
    max_per_second: int | None
    to_move: int

    def view(self) -> MessageMoveTask:
        """The task as SQS reports it: ``RUNNING`` while it moves, then ``COMPLETED``, ``FAILED`` or ``CANCELLED``."""
        mover = self.mover
        status = (
            "RUNNING"
            if not mover.done
            else "CANCELLED"
            if mover.cancelled
            else "FAILED"
            if mover.failure
            else "COMPLETED"
        )
        return MessageMoveTask(
            status,
            self.source_arn,
            self.started_ms,
            mover.moved,
            self.handle,
            self.destination_arn,
            self.max_per_second,
            self.to_move,
            mover.failure if status == "FAILED" else None,
        )


class SqsService:
    """The SQS API's actions on ``server``'s broker.

    ``handles`` issues and opens receipt handles (its secret decides which
    handles this server accepts); ``wall`` is the wall clock for the
    timestamps SQS reports (epoch seconds); ``region`` the region of the ARNs
    it writes. Call `act` for each request, `rebind` when the server replaces
    its broker, `close` when the listener stops.

    It is an `admission.Connection`: its requests are admitted by the checks
    of dbqueue's own sessions (queue existence, message size, memory budget,
    byte capacity, messages in flight, waiting reads, a store that cannot commit).
    """

    def __init__(
        self,
        server: SqsHost,
        handles: ReceiptHandles,
        *,
        wall: Callable[[], float] = time.time,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.server: Host = server
        self.broker = server.broker
        self.handles = handles
        self.wall = wall
        self.region = region
        self.held = Holding()  # every message in flight through SQS
        self.read_from: set[Queue] = set()  # the queues the service counts as a consumer of
        self.waiting: dict[int, Waiter] = {}  # parked receives, by a number of their own
        limits = server.limits
        self.memory_budget = limits.memory_budget
        self.capacity_bytes = limits.default_capacity_bytes or NO_BYTE_LIMIT
        self.records: dict[bytes, QueueRecord] = {}
        self._woken: dict[Waiter, asyncio.Future[list[Record] | None]] = {}  # what each parked receive awaits
        self._waits = 0
        self._first_receive: dict[int, int] = {}  # message id -> epoch ms of its first receive (bounded)
        # The handles issued, oldest first, with what they name (bounded): a delete that brings one back is
        # answered without opening it (base64 and an HMAC); any other handle is opened.
        self._issued: dict[str, tuple[Queue, int, int]] = {}
        self._prefixes: dict[tuple[str, str], bytes] = {}  # (queue, sender) -> `plain_prefix`
        self._moves: dict[bytes, list[MoveTask]] = {}  # a dead-letter queue's move tasks, newest first

    # --- the entry point -------------------------------------------------------------

    async def act(self, request: Request, endpoint: str, sender: str) -> Result:
        """Do ``request`` and return its result, once what it changed is committed (with a store).

        ``endpoint`` is the server as the client addressed it (``http://host:port``,
        for queue URLs); ``sender`` the access key id that signed the request
        (`ACCOUNT_ID` when the listener takes unsigned requests). Raises `SqsError`.
        """
        if self.server.broker is not self.broker:
            self.rebind()
        try:
            if type(request) is ReceiveMessage:
                result: Result = await self._receive(request, endpoint)
            else:
                action = _ACTIONS.get(type(request))
                if action is None:
                    raise SqsError(ErrorCode.UNSUPPORTED_OPERATION, f"{request.action} is not supported by dbqueue.")
                try:
                    result = action(self, request, endpoint, sender)
                finally:
                    # An action may have woken reads (ours or sessions') whose deadlines the timer must cover.
                    self.server.schedule_expiry()
        except RequestError as error:
            raise sqs_error(error) from None
        if self.server.store is not None:
            await self._committed()
        return result

    async def _committed(self) -> None:
        """Return once the server's next commit is done; raise ``ServiceUnavailable`` if it failed instead."""
        if not await committed(self.server):
            reason = self.server.store_unavailable or "the store failed"
            raise SqsError(ErrorCode.SERVICE_UNAVAILABLE, f"The server's store cannot commit ({reason}).")

    def rebind(self) -> None:
        """Follow the server to a new broker (it reloaded its store): what was held or parked on the old one is gone.

        Parked receives are answered with nothing; messages in flight are back
        in the new broker's queues, as the store held them; queue records are
        read again from what the store kept with their queues (`_kept`: the
        last commit), or, where it kept nothing, move as they are to the queues
        of the same names.
        """
        self.stop_waiting()
        broker = self.broker = self.server.broker
        self.held = Holding()
        self.read_from = set()
        self._first_receive.clear()
        self._issued.clear()
        for key, record in list(self.records.items()):
            queue = broker.queues.get(key)
            if queue is None:
                del self.records[key]
            elif broker.annotations.get(key):
                self.records[key] = self._kept(queue)
            else:
                record.queue = queue

    def stop_waiting(self) -> None:
        """Answer every parked receive now, with no messages (the listener is stopping)."""
        for waiter, woken in list(self._woken.items()):
            self.broker.cancel_wait(waiter)
            if not woken.done():
                woken.set_result([])
        self._woken.clear()
        self.waiting.clear()

    def close(self) -> None:
        """End parked receives, and give back every message in flight through SQS (to the front of its queue)."""
        self.stop_waiting()
        if self.server.broker is not self.broker:
            self.rebind()
            return
        for queue in self.read_from:
            queue.consumers -= 1
        self.read_from = set()
        self._issued.clear()
        if self.held:
            self.broker.release_all(self.held, self.server.clock())
            self.server.schedule_expiry()

    # --- queues ----------------------------------------------------------------------

    def record(self, name: str) -> QueueRecord:
        """Return the record of the queue called ``name``; raise ``QueueDoesNotExist`` if there is none."""
        key = name.encode()
        queue = self.broker.queues.get(key)
        record = self.records.get(key)
        if queue is None:
            if record is not None:
                del self.records[key]
            raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
        if record is None or record.queue is not queue:
            record = self.records[key] = self._kept(queue)
        return record

    def _kept(self, queue: Queue) -> QueueRecord:
        """The record of ``queue`` as `_keep` last wrote it into its annotations (after a restart, or a reload
        of the store), else one with SQS's defaults, ``restored``."""
        saved = _annotations(self.broker.annotations.get(queue.name, b"")).get(_ANNOTATION_KEY)
        if isinstance(saved, dict):
            try:
                return QueueRecord(
                    queue,
                    int(saved["created"]),
                    int(saved["modified"]),
                    {str(k): str(v) for k, v in saved["attributes"].items()},
                    {str(k): str(v) for k, v in saved["tags"].items()},
                    restored=bool(saved.get("restored", False)),
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("queue %r: the SQS attributes kept with it cannot be read: SQS's defaults", queue.name)
        now = int(self.wall())
        return QueueRecord(queue, now, now, restored=True)

    def _keep(self, record: QueueRecord) -> None:
        """Write ``record`` into its queue's annotations (journaled by the broker, committed before the answer):
        under its own key, beside whatever another layer keeps there."""
        name = record.queue.name
        kept = _annotations(self.broker.annotations.get(name, b""))
        kept[_ANNOTATION_KEY] = {
            "created": record.created,
            "modified": record.modified,
            "attributes": record.attributes,
            "tags": record.tags,
            "restored": record.restored,
        }
        self.broker.annotate(name, json.dumps(kept, separators=(",", ":"), sort_keys=True).encode())

    def _create_queue(self, request: CreateQueue, endpoint: str, sender: str) -> CreateQueueResult:
        url = queue_url(endpoint, request.queue)
        if request.queue.encode() in self.broker.queues:
            record = self.record(request.queue)
            if record.restored:
                # Its attributes are unknown but for the broker's own (kept by the store): the ones given are
                # taken, so a client that creates its queues at start works again after a restart.
                if "RedrivePolicy" in request.attributes and not self._same_attribute(
                    record, "RedrivePolicy", request.attributes["RedrivePolicy"]
                ):
                    raise SqsError(ErrorCode.QUEUE_NAME_EXISTS)
                admit_change(self)
                record.attributes.update((k, v) for k, v in request.attributes.items() if k != "RedrivePolicy")
                record.tags.update(request.tags)
                record.restored = False
                self._keep(record)
                return CreateQueueResult(url)
            for name, value in request.attributes.items():
                if not self._same_attribute(record, name, value):
                    raise SqsError(ErrorCode.QUEUE_NAME_EXISTS)
            return CreateQueueResult(url)
        attributes = dict(request.attributes)
        text = attributes.pop("RedrivePolicy", "")
        policy = redrive_policy(text) if text else None
        if policy is not None:
            self._check_target(request.queue, policy, text)
        admit_change(self)
        try:
            queue = self.broker.create_queue(
                request.queue.encode(),
                0,
                policy.max_receive_count if policy is not None else 0,
                policy.dead_letter_queue.encode() if policy is not None else None,
                # The queue's own default visibility timeout, kept by the store (0: the server's default; an
                # SQS 0, visible again at once, stays the listener's).
                int(attributes.get("VisibilityTimeout") or 0) * 1000,
            )
        except InvalidRequest as error:
            if policy is None or isinstance(error, InvalidQueueName):
                raise
            raise _bad_redrive(text, str(error)) from None  # a loop of dead-letter queues
        now = int(self.wall())
        record = self.records[queue.name] = QueueRecord(queue, now, now, attributes, dict(request.tags))
        self._keep(record)
        return CreateQueueResult(url)

    def _same_attribute(self, record: QueueRecord, name: str, value: str) -> bool:
        if name == "RedrivePolicy":
            queue = record.queue
            if not value:
                return not queue.dead_letter
            policy = redrive_policy(value)
            return (policy.dead_letter_queue.encode(), policy.max_receive_count) == (
                queue.dead_letter,
                queue.max_deliveries,
            )
        if name == "VisibilityTimeout":
            return record.visibility_text() == value
        return record.attributes.get(name, DEFAULT_ATTRIBUTES.get(name, "")) == value

    def _check_target(self, source: str, policy: RedrivePolicy, text: str) -> None:
        """Refuse a ``RedrivePolicy`` whose dead-letter queue does not exist or does not allow ``source``."""
        target = self.broker.queues.get(policy.dead_letter_queue.encode())
        if target is None:
            raise _bad_redrive(text, "Dead letter target does not exist.")
        allow = self.record(policy.dead_letter_queue).attributes.get("RedriveAllowPolicy")
        if not allow:
            return
        rules = json.loads(allow)  # checked when it was set
        permission = rules["redrivePermission"]
        if permission == "denyAll" or (
            permission == "byQueue" and source not in {queue_of_arn(arn) for arn in rules.get("sourceQueueArns", ())}
        ):
            raise _bad_redrive(text, "The dead-letter queue's RedriveAllowPolicy does not allow this queue.")

    def _get_queue_url(self, request: GetQueueUrl, endpoint: str, sender: str) -> GetQueueUrlResult:
        self.record(request.queue)
        return GetQueueUrlResult(queue_url(endpoint, request.queue))

    def _names(self) -> list[str]:
        names = []
        for key in self.broker.queues:
            try:
                names.append(key.decode())
            except UnicodeDecodeError:
                continue  # no URL can name it
        for key in [key for key in self.records if key not in self.broker.queues]:
            del self.records[key]
        return names

    def _list_queues(self, request: ListQueues, endpoint: str, sender: str) -> ListQueuesResult:
        names, token = paginate(self._names(), request.prefix, request.max_results, request.next_token)
        return ListQueuesResult(tuple(queue_url(endpoint, name) for name in names), token)

    def _delete_queue(self, request: DeleteQueue, endpoint: str, sender: str) -> None:
        key = request.queue.encode()
        admit_change(self)
        self.records.pop(key, None)
        self._moves.pop(key, None)
        if not self.broker.delete_queue(key):
            raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)

    def _purge_queue(self, request: PurgeQueue, endpoint: str, sender: str) -> None:
        queue = self.record(request.queue).queue
        admit_change(self)
        self.broker.purge(queue)

    def _attributes(self, record: QueueRecord, name: str) -> dict[str, str]:
        queue = record.queue
        values = {**DEFAULT_ATTRIBUTES, **record.attributes}
        values.update(
            VisibilityTimeout=record.visibility_text(),
            ApproximateNumberOfMessages=str(queue.ready),
            ApproximateNumberOfMessagesNotVisible=str(queue.in_flight),
            ApproximateNumberOfMessagesDelayed=str(queue.delayed),
            CreatedTimestamp=str(record.created),
            LastModifiedTimestamp=str(record.modified),
            QueueArn=queue_arn(name, self.region),
        )
        if queue.dead_letter and queue.max_deliveries:
            try:
                dead_letter = queue.dead_letter.decode()
            except UnicodeDecodeError:
                dead_letter = None
            if dead_letter is not None:
                values["RedrivePolicy"] = json.dumps(
                    {
                        "deadLetterTargetArn": queue_arn(dead_letter, self.region),
                        "maxReceiveCount": queue.max_deliveries,
                    },
                    separators=(",", ":"),
                )
        return {name: value for name, value in values.items() if value != ""}

    def _get_queue_attributes(
        self, request: GetQueueAttributes, endpoint: str, sender: str
    ) -> GetQueueAttributesResult:
        values = self._attributes(self.record(request.queue), request.queue)
        if "All" in request.names:
            return GetQueueAttributesResult(values)
        return GetQueueAttributesResult({name: values[name] for name in request.names if name in values})

    def _set_queue_attributes(self, request: SetQueueAttributes, endpoint: str, sender: str) -> None:
        """Set the attributes given: ``RedrivePolicy`` ("" removes it) and ``VisibilityTimeout`` change the broker
        queue's own settings (`Broker.alter_queue`, journaled), the others the record (kept by `_keep`).
        Everything is checked before anything changes."""
        record = self.record(request.queue)
        queue = record.queue
        attributes = dict(request.attributes)
        text = attributes.pop("RedrivePolicy", None)
        dead_letter, max_deliveries = queue.dead_letter, queue.max_deliveries
        if text is not None:
            policy = redrive_policy(text) if text else None
            if policy is not None:
                dead_letter, max_deliveries = policy.dead_letter_queue.encode(), policy.max_receive_count
                if (dead_letter, max_deliveries) != (queue.dead_letter, queue.max_deliveries):
                    self._check_target(request.queue, policy, text)
            else:
                dead_letter, max_deliveries = None, 0
        visibility_ms = queue.visibility_asked
        if "VisibilityTimeout" in attributes:
            # The queue's own default visibility timeout (0: the server's default; an SQS 0 stays the record's).
            visibility_ms = int(attributes["VisibilityTimeout"] or 0) * 1000
        admit_change(self)
        settings = (max_deliveries, dead_letter, visibility_ms)
        if settings != (queue.max_deliveries, queue.dead_letter, queue.visibility_asked):
            try:
                self.broker.alter_queue(queue.name, *settings)
            except InvalidRequest:
                if text is None:
                    raise
                raise _bad_redrive(text, "The dead-letter queues would form a loop.") from None
        record.attributes.update(attributes)
        record.modified = int(self.wall())
        self._keep(record)

    def _tag_queue(self, request: TagQueue, endpoint: str, sender: str) -> None:
        record = self.record(request.queue)
        if len(record.tags.keys() | request.tags.keys()) > 50:
            raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "Too many tags: a queue has at most 50.")
        admit_change(self)
        record.tags.update(request.tags)
        self._keep(record)

    def _untag_queue(self, request: UntagQueue, endpoint: str, sender: str) -> None:
        record = self.record(request.queue)
        admit_change(self)
        for key in request.keys:
            record.tags.pop(key, None)
        self._keep(record)

    def _list_queue_tags(self, request: ListQueueTags, endpoint: str, sender: str) -> ListQueueTagsResult:
        return ListQueueTagsResult(dict(self.record(request.queue).tags))

    def _list_dead_letter_source_queues(
        self, request: ListDeadLetterSourceQueues, endpoint: str, sender: str
    ) -> ListDeadLetterSourceQueuesResult:
        key = self.record(request.queue).queue.name
        sources = [name for name in self._names() if self.broker.queues[name.encode()].dead_letter == key]
        names, token = paginate(sources, "", request.max_results, request.next_token)
        return ListDeadLetterSourceQueuesResult(tuple(queue_url(endpoint, name) for name in names), token)

    # --- sending ---------------------------------------------------------------------

    def _payload(
        self,
        record: QueueRecord,
        queue_name: str,
        body: str,
        size: int,
        message_attributes: Mapping[str, MessageAttributeValue],
        system_attributes: Mapping[str, MessageAttributeValue],
        sender: str,
    ) -> bytes:
        """The envelope of one message, after the size check of its queue (the server's is `admit_send`'s)."""
        limit = record.number("MaximumMessageSize")
        if size > limit:
            raise _too_long(limit)
        return seal(Envelope(body, int(self.wall() * 1000), queue_name, sender, message_attributes, system_attributes))

    def _enqueue(self, queue: Queue, payload: bytes, delay_seconds: int) -> int:
        now = self.server.clock()
        if delay_seconds:
            id_ = self.broker.enqueue_delayed(queue, payload, delay_seconds * 1000, now)
        else:
            id_ = self.broker.enqueue(queue, payload, now)
        if id_ < 0:
            raise SqsError(ErrorCode.OVER_LIMIT, f"The queue is full: it holds its capacity of {queue.capacity}.")
        return id_

    def _send_message(self, request: SendMessage, endpoint: str, sender: str) -> SendMessageResult:
        record = self.record(request.queue)
        payload = self._payload(
            record,
            request.queue,
            request.body,
            request.size,
            request.message_attributes,
            request.system_attributes,
            sender,
        )
        delay = request.delay_seconds if request.delay_seconds is not None else record.number("DelaySeconds")
        admit_send(self, record.queue.name, len(payload), len(payload))
        id_ = self._enqueue(record.queue, payload, delay)
        return SendMessageResult.build(
            message_id_text(id_), request.body, request.message_attributes, request.system_attributes
        )

    def _send_message_batch(self, request: SendMessageBatch, endpoint: str, sender: str) -> SendMessageBatchResult:
        record = self.record(request.queue)
        queue = record.queue
        default_delay = record.number("DelaySeconds")
        failed: list[BatchResultErrorEntry] = []
        accepted = []
        for entry in request.entries:
            try:
                payload = self._payload(
                    record,
                    request.queue,
                    entry.body,
                    entry.size,
                    entry.message_attributes,
                    entry.system_attributes,
                    sender,
                )
            except SqsError as error:
                failed.append(BatchResultErrorEntry.of(entry.id, error))
                continue
            accepted.append((entry, payload))
        if accepted:
            sizes = [len(payload) for _, payload in accepted]
            admit_send(self, queue.name, max(sizes), sum(sizes))  # the batch as a whole, as dbqueue's send_batch
        ids: list[int | SqsError] = []
        delays = [entry.delay_seconds if entry.delay_seconds is not None else default_delay for entry, _ in accepted]
        if accepted and not any(delays):
            # All or none, as dbqueue's send_batch: one step for the whole batch.
            sent = self.broker.enqueue_batch(queue, [payload for _, payload in accepted], self.server.clock())
            if sent is None:
                full = SqsError(ErrorCode.OVER_LIMIT, "The queue is full: the batch does not fit.")
                ids = [full] * len(accepted)
            else:
                ids = list(sent)
        else:
            for (_, payload), delay in zip(accepted, delays):
                try:
                    ids.append(self._enqueue(queue, payload, delay))
                except SqsError as error:
                    ids.append(error)
        successful = []
        for (entry, _), id_ in zip(accepted, ids):
            if isinstance(id_, SqsError):
                failed.append(BatchResultErrorEntry.of(entry.id, id_))
                continue
            one = SendMessageResult.build(
                message_id_text(id_), entry.body, entry.message_attributes, entry.system_attributes
            )
            successful.append(
                SendMessageBatchResultEntry(
                    entry.id,
                    one.message_id,
                    one.md5_of_message_body,
                    one.md5_of_message_attributes,
                    one.md5_of_message_system_attributes,
                )
            )
        return SendMessageBatchResult(tuple(successful), tuple(failed))

    # --- receiving -------------------------------------------------------------------

    async def _receive(self, request: ReceiveMessage, endpoint: str) -> ReceiveMessageResult:
        record = self.record(request.queue)
        queue = record.queue
        visibility = request.visibility_timeout * 1000 if request.visibility_timeout is not None else None
        if visibility is None:
            visibility = record.visibility_ms()
        wait = request.wait_time_seconds
        if wait is None:
            wait = record.number("ReceiveMessageWaitTimeSeconds")
        admit_read(self, queue.name, 1)  # every message in flight through SQS counts, as one connection's
        room = self.server.max_in_flight - self.held.count
        now = self.server.clock()
        entries = self.broker.deliver_many(queue, min(request.max_messages, room), 0, self.held, now)
        if entries:
            records = self._in_flight(entries, visibility, now)
        elif wait:
            waited = await self._wait(queue, min(request.max_messages, room), visibility, wait, now)
            if waited is None:
                raise SqsError(ErrorCode.QUEUE_DOES_NOT_EXIST)
            records = waited
        else:
            return ReceiveMessageResult(())
        wall_ms = int(self.wall() * 1000)
        messages = tuple(self._received(record_, request, wall_ms) for record_ in records)
        if visibility == 0:
            # Visible again at once (SQS's 0; dbqueue's timeout 0 would mean "never").
            now = self.server.clock()
            for record_ in records:
                self.broker.release(record_.id, 0, now, self.held)
            self.server.schedule_expiry()
        return ReceiveMessageResult(messages)

    def _in_flight(self, entries: list[Entry], visibility_ms: int, now: float) -> list[Record]:
        """Split what a read handed out into records, and give them their visibility timeout as deadline
        (none for `NEVER_MS`)."""
        records = self.broker.records_of(entries)
        if visibility_ms and visibility_ms != NEVER_MS and records:
            self.server.expire_by(self.broker.set_deadlines([*records], visibility_ms, now))
        return records

    async def _wait(
        self, queue: Queue, count: int, visibility_ms: int, wait_seconds: int, now: float
    ) -> list[Record] | None:
        """Park a receive on an empty queue; return what it was handed ([] when the wait ended, None: queue deleted)."""
        woken: asyncio.Future[list[Record] | None] = asyncio.get_running_loop().create_future()

        def wake(entries: list[Entry] | None) -> None:
            if woken.done():  # the request was cancelled, its wait not yet retired: these were never sent
                if entries:
                    self._give_back(entries)
                return
            woken.set_result(None if entries is None else self._in_flight(entries, visibility_ms, self.server.clock()))

        number = self._waits = self._waits + 1
        admit_wait(self, number)
        waiter = self.waiting[number] = self.broker.wait(queue, self.held, 0, count, wait_seconds * 1000, now, wake)
        self._woken[waiter] = woken
        self.server.schedule_expiry()
        try:
            return await woken
        except asyncio.CancelledError:
            self.broker.cancel_wait(waiter)
            if woken.done() and not woken.cancelled():
                handed = woken.result()
                if handed:
                    self._give_back([*handed])
            raise
        finally:
            self._woken.pop(waiter, None)
            self.waiting.pop(number, None)

    def _give_back(self, entries: list[Entry]) -> None:
        """Return messages handed to a receive that never answered: they were not delivered."""
        records = self.broker.records_of(entries)
        for record in records:
            record.deliveries -= 1
        self.broker.requeue([*records], self.server.clock())
        self.server.schedule_expiry()

    def _received(self, record: Record, request: ReceiveMessage, wall_ms: int) -> ReceivedMessage:
        """One received message as SQS answers it, with the attributes the request asked for."""
        envelope = open_envelope(record.data)
        first = self._first_receive_of(record, wall_ms)
        if envelope is not None:
            body = envelope.body
            message_attributes = select_attributes(envelope.message_attributes, request.message_attribute_names)
        else:
            body, always = bare_body(record.data)
            message_attributes = {**select_attributes(always, request.message_attribute_names), **always}
        names = request.system_attribute_names
        attributes: dict[str, str] = {}
        if names:
            every = "All" in names
            if every or "ApproximateReceiveCount" in names:
                attributes["ApproximateReceiveCount"] = str(record.deliveries)
            if every or "SentTimestamp" in names:
                attributes["SentTimestamp"] = str(envelope.sent_ms if envelope is not None else first)
            if every or "ApproximateFirstReceiveTimestamp" in names:
                attributes["ApproximateFirstReceiveTimestamp"] = str(first)
            if every or "SenderId" in names:
                attributes["SenderId"] = envelope.sender if envelope is not None else ACCOUNT_ID
            if envelope is not None:
                trace = envelope.system_attributes.get("AWSTraceHeader")
                if trace is not None and trace.string_value and (every or "AWSTraceHeader" in names):
                    attributes["AWSTraceHeader"] = trace.string_value
            if every or "DeadLetterQueueSourceArn" in names:
                # The broker's record of a dead letter's origin (messages sent natively too), else the queue the
                # envelope was sent to when the message is elsewhere (dead letters moved before protocol 3).
                queue = record.queue
                origin = queue.origins.get(record.id) if queue.has_origins else None
                if origin is not None:
                    attributes["DeadLetterQueueSourceArn"] = queue_arn(
                        origin.queue.decode(errors="replace"), self.region
                    )
                elif envelope is not None and envelope.queue.encode() != queue.name:
                    attributes["DeadLetterQueueSourceArn"] = queue_arn(envelope.queue, self.region)
        handle = self._issue(record)
        return ReceivedMessage.build(message_id_text(record.id), handle, body, attributes, message_attributes)

    def _issue(self, record: Record) -> str:
        """The receipt handle of ``record``'s delivery, remembered for the delete that brings it back."""
        handle = self.handles.issue(record.queue.name.decode(), record.id, record.deliveries)
        issued = self._issued
        if len(issued) >= self.server.max_in_flight:  # the oldest are the likeliest stale: opened if they come
            del issued[next(iter(issued))]
        issued[handle] = (record.queue, record.id, record.deliveries)
        return handle

    def _first_receive_of(self, record: Record, wall_ms: int) -> int:
        first = self._first_receive
        if record.deliveries <= 1:
            if len(first) >= 2 * self.server.max_in_flight:  # forgotten by a delete made elsewhere: drop the oldest
                del first[next(iter(first))]
            first[record.id] = wall_ms
            return wall_ms
        return first.get(record.id, wall_ms)

    # --- deleting and changing visibility --------------------------------------------

    def _current(self, queue_name: str, handle: str) -> tuple[Record | None, Receipt]:
        """The record a receipt handle names if the handle is current (its delivery, in flight here), and the receipt.

        Raises ``ReceiptHandleIsInvalid`` for a handle that is not ours or not of this queue.
        """
        record = self.record(queue_name)
        receipt = self.handles.open(handle, queue_name)
        found = self.broker.records.get(receipt.message_id)
        if (
            found is None
            or found.held is not self.held
            or found.deliveries != receipt.delivery
            or found.queue is not record.queue
        ):
            return None, receipt
        return found, receipt

    def _delete(self, queue_name: str, handle: str) -> None:
        record, receipt = self._current(queue_name, handle)
        self._issued.pop(handle, None)
        if record is not None:  # a stale handle deletes nothing, and succeeds (as SQS)
            self.broker.confirm(receipt.message_id, self.held)
            self._first_receive.pop(receipt.message_id, None)

    def _delete_message(self, request: DeleteMessage, endpoint: str, sender: str) -> None:
        self._delete(request.queue, request.receipt_handle)

    def _delete_message_batch(self, request: DeleteMessageBatch, endpoint: str, sender: str) -> BatchResult:
        self.record(request.queue)
        return _batch(request.entries, lambda entry: self._delete(request.queue, entry.receipt_handle))

    def _change(self, queue_name: str, handle: str, visibility: int) -> None:
        record, receipt = self._current(queue_name, handle)
        if record is None:
            raise _not_in_flight()
        now = self.server.clock()
        if visibility:
            outcome = self.broker.touch(receipt.message_id, visibility * 1000, now, self.held)
        else:
            outcome = self.broker.release(receipt.message_id, 0, now, self.held)
        if outcome != Outcome.DONE:
            raise _not_in_flight()

    def _change_message_visibility(self, request: ChangeMessageVisibility, endpoint: str, sender: str) -> None:
        self._change(request.queue, request.receipt_handle, request.visibility_timeout)

    def _change_message_visibility_batch(
        self, request: ChangeMessageVisibilityBatch, endpoint: str, sender: str
    ) -> BatchResult:
        self.record(request.queue)
        return _batch(
            request.entries, lambda entry: self._change(request.queue, entry.receipt_handle, entry.visibility_timeout)
        )

    # --- moving dead letters back (StartMessageMoveTask) -------------------------------

    def _start_message_move_task(
        self, request: StartMessageMoveTask, endpoint: str, sender: str
    ) -> StartMessageMoveTaskResult:
        """Start moving a dead-letter queue's ready messages to ``DestinationArn``, or each back to its source.

        As in SQS the task runs in the background: `server.mover` moves a step of messages a turn of the loop,
        the other requests in between, and ``ListMessageMoveTasks`` reports it ``RUNNING`` until it is
        ``COMPLETED`` (or ``FAILED``, with what was moved before; or ``CANCELLED``). A move of at most one step
        is over when this answers. ``MaxNumberOfMessagesPerSecond`` is accepted and not used.
        """
        source = self.record(request.source_queue).queue
        if not any(queue.dead_letter == source.name for queue in self.broker.queues.values()):
            raise SqsError(ErrorCode.UNSUPPORTED_OPERATION, "Source queue must be configured as a Dead Letter Queue.")
        destination = None
        if request.destination_queue is not None:
            destination = self.record(request.destination_queue).queue
            if destination is source:
                raise SqsError(ErrorCode.INVALID_PARAMETER_VALUE, "The destination cannot be the source queue.")
        tasks = self._moves.setdefault(source.name, [])
        if any(not task.mover.done for task in tasks):
            raise SqsError(ErrorCode.UNSUPPORTED_OPERATION, "A message move task is already running on the queue.")
        admit_change(self)
        if destination is not None:
            mover = Mover.between(self.server, source, destination, None)
        else:
            mover = Mover(self.server, source, self._route_home(source), None)
        task = MoveTask(
            mover,
            f"{uuid.uuid4()}",
            queue_arn(request.source_queue, self.region),
            queue_arn(request.destination_queue, self.region) if request.destination_queue is not None else None,
            int(self.wall() * 1000),
            request.max_per_second,
            mover.left,
        )
        if not mover.step():
            mover.finish(asyncio.get_running_loop(), lambda _: None)
        tasks.insert(0, task)
        del tasks[10:]  # SQS lists a queue's tasks of the last 14 days, at most 10 (only the newest can be running)
        return StartMessageMoveTaskResult(task.handle)

    def _route_home(self, source: Queue) -> Route:
        """A move task's route without ``DestinationArn``: each ready message of ``source``, in order, back to the
        queue it came from (the broker's origin of a dead letter, else the queue its envelope was sent to)."""
        broker = self.broker

        def route(limit: int) -> tuple[int, str | None]:
            now = self.server.clock()
            for moved in range(limit):
                if not source.ready:
                    return moved, ""
                front = broker.peek(source, 1, now)[0]
                home = front.origin.queue if front.origin is not None else None
                if home is None:
                    envelope = open_envelope(front.data)
                    home = envelope.queue.encode() if envelope is not None else None
                target = broker.queues.get(home) if home is not None else None
                if target is None or target is source:
                    return moved, f"Message {message_id_text(front.id)} has no source queue to go back to."
                if broker.move(source, target, 1, now) != 1:
                    return moved, f"The queue {target.name.decode(errors='replace')} is full."
            return limit, None

        return route

    def _list_message_move_tasks(
        self, request: ListMessageMoveTasks, endpoint: str, sender: str
    ) -> ListMessageMoveTasksResult:
        source = self.record(request.source_queue).queue
        tasks = self._moves.get(source.name, [])
        return ListMessageMoveTasksResult(tuple(task.view() for task in tasks[: request.max_results or 1]))

    def _cancel_message_move_task(
        self, request: CancelMessageMoveTask, endpoint: str, sender: str
    ) -> CancelMessageMoveTaskResult:
        for tasks in self._moves.values():
            for task in tasks:
                if task.handle == request.task_handle:
                    if task.mover.done:
                        raise SqsError(ErrorCode.UNSUPPORTED_OPERATION, "The message move task is not running.")
                    task.mover.cancel()  # what it moved stays moved
                    return CancelMessageMoveTaskResult(task.mover.moved)
        raise SqsError(ErrorCode.RESOURCE_NOT_FOUND, "The task handle does not name a message move task.")

    # --- the fast path (see `SqsConnection` and `dbqueue.sqs.fastpath`) ---------------
    #
    # Each returns the JSON body of the answer, or None when the request is not of the
    # common shape, or would be refused or fail an entry: the general path then does
    # all of it (nothing is changed before a None). Same answers, same state.

    def fast_send_batch(self, params: dict[str, Any], sender: str) -> bytes | None:
        """``SendMessageBatch`` of plain messages to a queue without a default delay."""
        url = params.get("QueueUrl")
        if type(url) is not str:
            return None
        name = queue_of_url(url)
        record = self.record(name)
        if record.attributes and record.number("DelaySeconds"):
            return None
        plain = plain_send_entries(params, record.number("MaximumMessageSize"))
        if plain is None:
            return None
        _, entry_ids, bodies = plain
        queue = record.queue
        payloads = seal_plain_many(self._prefix(name, sender), int(self.wall() * 1000), bodies)
        sizes = list(map(len, payloads))
        admit_send(self, queue.name, max(sizes), sum(sizes))
        woken = bool(queue.waiters)
        ids = self.broker.enqueue_batch(queue, payloads, self.server.clock())
        if ids is None:
            return None
        if woken:  # the reads handed these messages have deadlines the timer must cover
            self.server.schedule_expiry()
        return send_batch_reply(
            entry_ids,
            # `message_id_text`, inlined (the broker's ids are in its range); % formats faster than an f-string
            ["00000000-0000-0000-%04x-%012x" % (id_ >> 48, id_ & _LOW_48) for id_ in ids],  # noqa: UP031
            [_md5(body, usedforsecurity=False).hexdigest() for body in bodies],
        )

    def fast_send(self, params: dict[str, Any], sender: str) -> bytes | None:
        """``SendMessage`` of a plain message to a queue without a default delay."""
        url = params.get("QueueUrl")
        if type(url) is not str:
            return None
        name = queue_of_url(url)
        record = self.record(name)
        if record.attributes and record.number("DelaySeconds"):
            return None
        plain = plain_send(params, record.number("MaximumMessageSize"))
        if plain is None:
            return None
        queue = record.queue
        payload = seal_plain(self._prefix(name, sender), int(self.wall() * 1000), plain[1])
        admit_send(self, queue.name, len(payload), len(payload))
        woken = bool(queue.waiters)
        id_ = self.broker.enqueue(queue, payload, self.server.clock())
        if id_ < 0:
            return None
        if woken:
            self.server.schedule_expiry()
        return send_reply(message_id_text(id_), _md5(plain[1], usedforsecurity=False).hexdigest())

    def _prefix(self, name: str, sender: str) -> bytes:
        prefixes = self._prefixes
        prefix = prefixes.get((name, sender))
        if prefix is None:
            if len(prefixes) >= 1024:
                prefixes.clear()
            prefix = prefixes[(name, sender)] = plain_prefix(name, sender)
        return prefix

    def fast_receive(self, params: dict[str, Any], sender: str) -> bytes | None:
        """``ReceiveMessage`` answered at once (a receive that would wait is not): the messages of a receive
        asking for no attributes written straight from their envelopes, the others as the general path does."""
        plain = plain_receive(params)
        request: ReceiveMessage | None = None
        if plain is None:
            decoded = build_request("ReceiveMessage", params)  # its refusals: the general path's (a None above)
            if type(decoded) is not ReceiveMessage:
                return None
            request = decoded
            name, count, seconds, wait = request.queue, request.max_messages, request.visibility_timeout, None
            if request.wait_time_seconds is not None:
                wait = request.wait_time_seconds
        else:
            url, count, seconds, wait = plain
            name = queue_of_url(url)
        record = self.record(name)
        visibility = record.visibility_ms() if seconds is None else seconds * 1000
        if not visibility:
            return None
        queue = record.queue
        admit_read(self, queue.name, 1)
        held = self.held
        room = self.server.max_in_flight - held.count
        now = self.server.clock()
        entries = self.broker.deliver_many(queue, min(count, room), 0, held, now)
        if not entries:
            if wait is None:
                wait = record.number("ReceiveMessageWaitTimeSeconds")
            return None if wait else b"{}"  # the general path parks a receive that waits
        records = self._in_flight(entries, visibility, now)
        wall_ms = int(self.wall() * 1000)
        messages = []
        if request is not None:  # attributes asked for: each message as the general path writes it
            return receive_reply([message_json(self._received(record_, request, wall_ms)) for record_ in records])
        # `_first_receive_of` and `_issue`, inlined: this loop runs for every message received.
        first = self._first_receive
        issued = self._issued
        issue = self.handles.issue
        limit = self.server.max_in_flight
        text = queue.name.decode()
        for record_ in records:
            plain_ = plain_body(record_.data)
            if plain_ is not None:
                id_ = record_.id
                deliveries = record_.deliveries
                if deliveries <= 1:
                    if len(first) >= 2 * limit:
                        del first[next(iter(first))]
                    first[id_] = wall_ms
                handle = issue(text, id_, deliveries)
                if len(issued) >= limit:
                    del issued[next(iter(issued))]
                issued[handle] = (queue, id_, deliveries)
                raw, body = plain_
                messages.append(
                    received_message(
                        "00000000-0000-0000-%04x-%012x" % (id_ >> 48, id_ & _LOW_48),  # noqa: UP031 `message_id_text`
                        handle,
                        _md5(raw, usedforsecurity=False).hexdigest(),
                        body,
                    )
                )
            else:
                if request is None:
                    request = ReceiveMessage(name, count, seconds, wait, frozenset(), (), None)
                messages.append(message_json(self._received(record_, request, wall_ms)))
        return receive_reply(messages)

    def fast_delete_batch(self, params: dict[str, Any], sender: str) -> bytes | None:
        """``DeleteMessageBatch`` of handles this service issued (any other handle is opened by the general path)."""
        plain = plain_delete_entries(params)
        if plain is None:
            return None
        url, entry_ids, handles = plain
        queue = self.record(queue_of_url(url)).queue
        issued = self._issued
        named = []
        for handle in handles:
            receipt = issued.get(handle)
            if receipt is None or receipt[0] is not queue:
                return None
            named.append(receipt)
        self._confirm_current(named)
        for handle in handles:
            issued.pop(handle, None)
        return batch_reply(entry_ids)

    def fast_delete(self, params: dict[str, Any], sender: str) -> bytes | None:
        """``DeleteMessage`` of a handle this service issued."""
        handle = params.get("ReceiptHandle")
        url = params.get("QueueUrl")
        if type(url) is not str or type(handle) is not str or len(params) != 2:
            return None
        receipt = self._issued.get(handle)
        if receipt is None or receipt[0] is not self.record(queue_of_url(url)).queue:
            return None
        self._confirm_current([receipt])
        del self._issued[handle]
        return b"{}"

    def _confirm_current(self, named: list[tuple[Queue, int, int]]) -> None:
        """Confirm the deliveries named that are current (in flight here, in that very delivery): `_delete`'s rule."""
        records = self.broker.records
        held = self.held
        first = self._first_receive
        for queue, message_id, delivery in named:
            found = records.get(message_id)
            if found is not None and found.held is held and found.deliveries == delivery and found.queue is queue:
                self.broker.confirm(message_id, held)
                first.pop(message_id, None)


def _batch(entries: Iterable[Any], act: Callable[[Any], None]) -> BatchResult:
    """Do ``act`` for each entry of a batch; an entry's refusal fails that entry only."""
    successful = []
    failed = []
    for entry in entries:
        try:
            act(entry)
        except SqsError as error:
            failed.append(BatchResultErrorEntry.of(entry.id, error))
        except RequestError as error:
            failed.append(BatchResultErrorEntry.of(entry.id, sqs_error(error)))
        else:
            successful.append(entry.id)
    return BatchResult(tuple(successful), tuple(failed))


_ANNOTATION_KEY = "sqs"  # the listener's key in a queue's annotations (a JSON object: other layers may keep theirs)


def _annotations(data: bytes) -> dict[str, Any]:
    """A queue's annotations as the JSON object they hold; empty if they hold none (or anything else)."""
    try:
        kept = json.loads(data) if data else {}
    except ValueError:
        return {}
    return kept if isinstance(kept, dict) else {}


def _bad_redrive(text: str, reason: str) -> SqsError:
    shown = text if len(text) <= 256 else text[:256] + "..."
    return SqsError(
        ErrorCode.INVALID_PARAMETER_VALUE, f"Value {shown} for parameter RedrivePolicy is invalid. Reason: {reason}"
    )


_ACTIONS: dict[type, Action] = {
    CreateQueue: SqsService._create_queue,
    GetQueueUrl: SqsService._get_queue_url,
    ListQueues: SqsService._list_queues,
    DeleteQueue: SqsService._delete_queue,
    PurgeQueue: SqsService._purge_queue,
    GetQueueAttributes: SqsService._get_queue_attributes,
    SetQueueAttributes: SqsService._set_queue_attributes,
    TagQueue: SqsService._tag_queue,
    UntagQueue: SqsService._untag_queue,
    ListQueueTags: SqsService._list_queue_tags,
    SendMessage: SqsService._send_message,
    SendMessageBatch: SqsService._send_message_batch,
    DeleteMessage: SqsService._delete_message,
    DeleteMessageBatch: SqsService._delete_message_batch,
    ChangeMessageVisibility: SqsService._change_message_visibility,
    ChangeMessageVisibilityBatch: SqsService._change_message_visibility_batch,
    ListDeadLetterSourceQueues: SqsService._list_dead_letter_source_queues,
    StartMessageMoveTask: SqsService._start_message_move_task,
    ListMessageMoveTasks: SqsService._list_message_move_tasks,
    CancelMessageMoveTask: SqsService._cancel_message_move_task,
}
"""Every action but ReceiveMessage (a coroutine, see `SqsService.act`)."""


# --- the fast path's connection ------------------------------------------------------------------------------------


class FastSettings(Protocol):
    """What `SqsConnection` uses of the listener's settings (`http.HttpSettings`)."""

    @property
    def max_body(self) -> int: ...

    @property
    def idle_timeout(self) -> float: ...


class FastListener(Protocol):
    """What `SqsConnection` uses of the HTTP listener (`http.HttpListener`, which builds one per connection)."""

    service: SqsService
    verifier: SignatureVerifier | None
    stats: SqsStats
    scheme: str
    host: str
    port: int

    @property
    def settings(self) -> FastSettings: ...


_FAST: dict[str, Callable[[SqsService, dict[str, Any], str], bytes | None]] = {
    "SendMessageBatch": SqsService.fast_send_batch,
    "SendMessage": SqsService.fast_send,
    "ReceiveMessage": SqsService.fast_receive,
    "DeleteMessageBatch": SqsService.fast_delete_batch,
    "DeleteMessage": SqsService.fast_delete,
}
_JSON_HEADERS = (("Content-Type", JSON_CONTENT_TYPE),)
_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()
# A request id per answer, UUID-shaped like SQS's: a random prefix per process and a counter (uuid4 costs more
# than the rest of a small request's headers).
_REQUEST_IDS = itertools.count(1)
_MAX_BUFFERED = 1 << 20  # bytes read ahead of a request being answered by the general path
_REQUEST_ID_PREFIX = str(uuid.uuid4())[:23]


class _Clock:
    """The ``Date`` line of answers, written once a second."""

    second = -1
    line = b""

    @classmethod
    def date_line(cls) -> bytes:
        now = time.time()
        if int(now) != cls.second:
            cls.second = int(now)
            cls.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return cls.line


class SqsConnection(asyncio.Protocol):
    """One HTTP connection of the listener whose plain SQS requests skip aiohttp's request machinery.

    ``handler`` is the aiohttp `RequestHandler` the listener would have used
    for the connection; it is told of the connection at once (so the
    listener's counts, limits and idle sweep see it) but gets no bytes until
    the first request the fast path does not take (`dbqueue.sqs.fastpath.frame`
    says `OTHER`: the Query protocol, ``/metrics``, a chunked body, an
    ``Expect``, anything odd): from there on, the connection is the
    handler's, bytes and all, and this object only passes them on.

    Until then, each request framed here is answered in the order it came:
    verified (SigV4, with credentials), then answered by the service's fast
    path (`SqsService.fast_send_batch` and friends) right away when it
    takes it, else decoded and acted on by the general path in a task (a long
    poll, another action, a request the fast path gives up on), the requests
    behind it waiting their turn. With a store, a fast answer waits for the
    group commit like any other. A connection that goes away cancels its
    running request (what a long poll was handed goes back). While the peer
    does not read its answers (the transport asks to pause writing), nothing
    more is read from it. The handler's idle timer is pushed back at each
    request, so an idle connection closes after the listener's idle timeout
    as with aiohttp alone.
    """

    def __init__(
        self, handler: asyncio.Protocol, listener: FastListener, unproven: dict[Any, float] | None = None
    ) -> None:
        self.handler = handler
        self.listener = listener
        self.service = listener.service
        self.unproven = unproven
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.handed = False  # the rest of the connection is aiohttp's
        self.running: asyncio.Task[None] | None = None  # the request being answered by the general path
        self.paused = False  # the transport asked to pause writing: the peer does not read its answers
        self.held_back = False  # reading paused behind a request being answered
        self.loop = asyncio.get_running_loop()
        self.max_body = listener.settings.max_body
        self.idle = listener.settings.idle_timeout
        self.keepalive = hasattr(handler, "_next_keepalive_close_time")  # aiohttp 3.10 on

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports have asyncio.Transport's methods
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.buffer = b""
        if self.running is not None:
            self.running.cancel()  # what a long poll was handed goes back (`SqsService._wait`)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        self.handler.resume_writing()
        if not self.handed and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._serve()

    def eof_received(self) -> bool | None:
        if self.handed:
            return self.handler.eof_received()
        return None

    def data_received(self, data: bytes) -> None:
        if self.handed:
            self.handler.data_received(data)
            return
        self.buffer = self.buffer + data if self.buffer else data
        if self.running is not None and len(self.buffer) > _MAX_BUFFERED and self.transport is not None:
            # A request is being answered (a long poll, a commit): read no more behind it than a few requests.
            self.transport.pause_reading()
            self.held_back = True
            return
        self._serve()

    # --- requests ----------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the whole requests buffered, in order, until one must wait or the fast path lets go."""
        buffer = self.buffer
        start = 0
        transport = self.transport
        while self.running is None and buffer and transport is not None:
            if self.paused:
                transport.pause_reading()
                break
            request = frame(buffer, start, self.max_body)
            if request is MORE:
                break
            if request is OTHER or type(request) is int:
                self.buffer = b""
                self.handed = True
                self.handler.data_received(buffer[start:])
                return
            assert type(request) is HttpRequest
            start = request.end
            self._answer(request)
            if start == len(buffer):
                break
        self.buffer = buffer[start:] if start else buffer

    def _answer(self, request: HttpRequest) -> None:
        if self.unproven is not None:
            self.unproven.pop(self.handler, None)
        if self.keepalive:
            # aiohttp closes a connection it thinks idle at this time (it sees none of these requests).
            self.handler._next_keepalive_close_time = self.loop.time() + self.idle  # type: ignore[attr-defined]
        request_id = f"{_REQUEST_ID_PREFIX}-{next(_REQUEST_IDS) & 0xFFFF_FFFF_FFFF:012x}"
        stats = self.listener.stats
        action = request.action
        service = self.service
        try:
            verifier = self.listener.verifier
            sender = ACCOUNT_ID
            if verifier is not None:
                try:
                    sender = verifier.verify("POST", request.path, "", request.headers, request.body, time.time())
                except SqsError as error:
                    log.warning("SQS request from %s refused: %s", self._peer(), error.shape)
                    raise
            fast = _FAST.get(action)
            reply: bytes | None = None
            if fast is not None and request.body:
                if service.server.broker is not service.broker:
                    service.rebind()
                try:
                    params = decode_params(request.body)
                    if type(params) is dict:
                        reply = fast(service, params, sender)
                except (ValueError, SqsError, RequestError):
                    reply = None  # the general path writes the refusal
            if reply is not None:
                stats.actions[action] = stats.actions.get(action, 0) + 1
                if service.server.store is None:
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(ok_head(request_id, len(reply), _Clock.date_line() + _SERVER_LINE) + reply)
                else:
                    self.running = self.loop.create_task(self._commit(reply, request_id))
                return
            decoded = decode_request(WireProtocol.JSON, request.path, "", request.body, "AmazonSQS." + action)
            stats.actions[decoded.action] = stats.actions.get(decoded.action, 0) + 1
        except SqsError as error:
            self._error(error, request_id)
            return
        self.running = self.loop.create_task(self._general(decoded, sender, request_id, request.host))

    async def _commit(self, reply: bytes, request_id: str) -> None:
        try:
            await self.service._committed()
        except SqsError as error:
            self._error(error, request_id)
        else:
            self._write(200, "OK", _JSON_HEADERS, request_id, reply)
        self._next()

    async def _general(self, request: Request, sender: str, request_id: str, host: str | None) -> None:
        stats = self.listener.stats
        try:
            result = await self.service.act(request, self._endpoint(host), sender)
            answer = encode_result(WireProtocol.JSON, request.action, result, request_id)
        except SqsError as error:
            stats.errors[error.shape] = stats.errors.get(error.shape, 0) + 1
            answer = encode_error(WireProtocol.JSON, error, request_id)
        except Exception:
            log.exception("SQS request %s from %s failed", request_id, self._peer())
            stats.errors["InternalError"] = stats.errors.get("InternalError", 0) + 1
            answer = encode_error(WireProtocol.JSON, SqsError(ErrorCode.INTERNAL_ERROR), request_id)
        headers = [pair for pair in answer.headers if pair[0] != REQUEST_ID_HEADER]
        self._write(answer.status, HTTPStatus(answer.status).phrase, headers, request_id, answer.body)
        self._next()

    def _next(self) -> None:
        self.running = None
        if self.transport is not None and not self.transport.is_closing():
            if self.held_back:
                self.held_back = False
                self.transport.resume_reading()
            self._serve()

    def _error(self, error: SqsError, request_id: str) -> None:
        stats = self.listener.stats
        stats.errors[error.shape] = stats.errors.get(error.shape, 0) + 1
        answer = encode_error(WireProtocol.JSON, error, request_id)
        headers = [pair for pair in answer.headers if pair[0] != REQUEST_ID_HEADER]
        self._write(answer.status, HTTPStatus(answer.status).phrase, headers, request_id, answer.body)

    def _write(
        self, status: int, reason: str, headers: Iterable[tuple[str, str]], request_id: str, body: bytes
    ) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        tail = _Clock.date_line() + _SERVER_LINE
        head = response_head(status, reason, [*headers, (REQUEST_ID_HEADER, request_id)], len(body), tail)
        transport.write(head + body)

    def _endpoint(self, host: str | None) -> str:
        """The server as the client addressed it, for the queue URLs it is given (as `HttpListener._endpoint`)."""
        if not host:
            sockname = self.transport.get_extra_info("sockname") if self.transport is not None else None
            listener = self.listener
            host = f"{sockname[0]}:{sockname[1]}" if isinstance(sockname, tuple) else f"{listener.host}:{listener.port}"
        return f"{self.listener.scheme}://{host}"

    def _peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

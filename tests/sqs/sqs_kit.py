"""Test kit for dbqueue.sqs: real botocore clients of both SQS protocols, wired to an in-process model server.

* `client(protocol, server)` returns a botocore SQS client whose HTTP sends are
  answered in process by ``server.handle(...)``: botocore serializes, signs
  (SigV4) and parses exactly as it does against AWS; only the socket is
  missing. The package under test is sans-I/O: the socket tests belong to the
  HTTP listener built on it.
* The JSON client uses botocore's SQS model as shipped. botocore no longer
  ships a Query-protocol SQS model (SQS moved to JSON in 2023), so the Query
  client uses the same model with the Query traits restored: the flattened
  names (``Attribute.N.Name``, ``SendMessageBatchRequestEntry.N.Id``, ...),
  the result wrappers and the Query error codes, copied from botocore 1.20's
  model (the last that spoke Query to SQS).
* `ModelSqs` is a small in-memory SQS built on dbqueue.sqs (verify, decode,
  act, encode), enough for SDK round trips.
* `sdk_md5_of_attributes` is the SDKs' own check, written from the AWS SDK for
  Java v2's MessageMD5ChecksumInterceptor, independent of dbqueue.sqs.digests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.loaders
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from dbqueue import sqs

ENDPOINT = "http://localhost:9324"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-3"

# --- the Query-protocol model --------------------------------------------------------------------------------------

# Flattened lists: the element name of their members.
_LIST_MEMBERS = {
    "AWSAccountIdList": "AWSAccountId",
    "ActionNameList": "ActionName",
    "AttributeNameList": "AttributeName",
    "MessageAttributeNameList": "MessageAttributeName",
    "MessageSystemAttributeList": "MessageSystemAttributeName",
    "TagKeyList": "TagKey",
    "QueueUrlList": "QueueUrl",
    "MessageList": "Message",
    "SendMessageBatchRequestEntryList": "SendMessageBatchRequestEntry",
    "DeleteMessageBatchRequestEntryList": "DeleteMessageBatchRequestEntry",
    "ChangeMessageVisibilityBatchRequestEntryList": "ChangeMessageVisibilityBatchRequestEntry",
    "SendMessageBatchResultEntryList": "SendMessageBatchResultEntry",
    "DeleteMessageBatchResultEntryList": "DeleteMessageBatchResultEntry",
    "ChangeMessageVisibilityBatchResultEntryList": "ChangeMessageVisibilityBatchResultEntry",
    "BatchResultErrorEntryList": "BatchResultErrorEntry",
    "ListMessageMoveTasksResultEntryList": "ListMessageMoveTasksResultEntry",
}
# Flattened maps: their own element name (if any) and the names of key and value.
_MAPS = {
    "QueueAttributeMap": ("Attribute", "Name", "Value"),
    "MessageSystemAttributeMap": ("Attribute", "Name", "Value"),
    "TagMap": ("Tag", "Key", "Value"),
    "MessageBodyAttributeMap": (None, "Name", "Value"),
    "MessageBodySystemAttributeMap": (None, "Name", "Value"),
}
# Members renamed on the wire.
_MEMBERS = {
    ("CreateQueueRequest", "Attributes"): "Attribute",
    ("CreateQueueRequest", "tags"): "Tag",
    ("SetQueueAttributesRequest", "Attributes"): "Attribute",
    ("GetQueueAttributesResult", "Attributes"): "Attribute",
    ("ListQueueTagsResult", "Tags"): "Tag",
    ("SendMessageRequest", "MessageAttributes"): "MessageAttribute",
    ("SendMessageRequest", "MessageSystemAttributes"): "MessageSystemAttribute",
    ("SendMessageBatchRequestEntry", "MessageAttributes"): "MessageAttribute",
    ("SendMessageBatchRequestEntry", "MessageSystemAttributes"): "MessageSystemAttribute",
    ("Message", "Attributes"): "Attribute",
    ("Message", "MessageAttributes"): "MessageAttribute",
    ("MessageAttributeValue", "StringListValues"): "StringListValue",
    ("MessageAttributeValue", "BinaryListValues"): "BinaryListValue",
}
# The Query error codes of botocore 1.20's model: (code, HTTP status).
QUERY_ERRORS = {
    "BatchEntryIdsNotDistinct": ("AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400),
    "BatchRequestTooLong": ("AWS.SimpleQueueService.BatchRequestTooLong", 400),
    "EmptyBatchRequest": ("AWS.SimpleQueueService.EmptyBatchRequest", 400),
    "InvalidBatchEntryId": ("AWS.SimpleQueueService.InvalidBatchEntryId", 400),
    "MessageNotInflight": ("AWS.SimpleQueueService.MessageNotInflight", 400),
    "OverLimit": ("OverLimit", 403),
    "PurgeQueueInProgress": ("AWS.SimpleQueueService.PurgeQueueInProgress", 403),
    "QueueDeletedRecently": ("AWS.SimpleQueueService.QueueDeletedRecently", 400),
    "QueueDoesNotExist": ("AWS.SimpleQueueService.NonExistentQueue", 400),
    "QueueNameExists": ("QueueAlreadyExists", 400),
    "TooManyEntriesInBatchRequest": ("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400),
    "UnsupportedOperation": ("AWS.SimpleQueueService.UnsupportedOperation", 400),
}


def json_model() -> dict[str, Any]:
    """botocore's SQS model, as shipped (JSON protocol)."""
    model: dict[str, Any] = botocore.loaders.Loader().load_service_model("sqs", "service-2")
    return model


def query_model() -> dict[str, Any]:
    """botocore's SQS model with the Query protocol's traits restored."""
    model = copy.deepcopy(json_model())
    metadata = model["metadata"]
    metadata["protocol"] = "query"
    metadata["protocols"] = ["query"]
    metadata["xmlNamespace"] = sqs.query_protocol.XML_NAMESPACE
    for key in ("jsonVersion", "targetPrefix", "awsQueryCompatible"):
        metadata.pop(key, None)
    shapes = model["shapes"]
    for name, member in _LIST_MEMBERS.items():
        shapes[name]["member"]["locationName"] = member
    for name, (own, key, value) in _MAPS.items():
        if own is not None:
            shapes[name]["locationName"] = own
        shapes[name]["key"]["locationName"] = key
        shapes[name]["value"]["locationName"] = value
    for (shape, member), wire in _MEMBERS.items():
        if member in shapes[shape]["members"]:
            shapes[shape]["members"][member]["locationName"] = wire
    for name, (code, status) in QUERY_ERRORS.items():
        shapes[name]["error"] = {"code": code, "httpStatusCode": status, "senderFault": True}
    for name, operation in model["operations"].items():
        if "output" in operation:
            operation["output"]["resultWrapper"] = f"{name}Result"
    return model


def query_model_dir(root: Path) -> Path:
    """Write the Query model where a botocore loader finds it (``root/sqs/2012-11-05``); return ``root``."""
    folder = root / "sqs" / "2012-11-05"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service-2.json").write_text(json.dumps(query_model()))
    return root


# --- clients -------------------------------------------------------------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class Exchange:
    """One request as botocore sent it, and the reply it got."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    reply: sqs.HttpReply


def split_request(request: Any) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    """The parts of a botocore AWSPreparedRequest as an HTTP listener would see them."""
    url = urlsplit(request.url)
    headers = [(name, value if isinstance(value, str) else value.decode()) for name, value in request.headers.items()]
    if not any(name.lower() == "host" for name, _ in headers):
        headers.append(("Host", url.netloc))
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    return request.method, url.path or "/", url.query, headers, body


def client(
    protocol: str,
    server: ModelSqs,
    model_root: Path | None = None,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    region: str = REGION,
) -> Any:
    """A botocore SQS client of ``protocol`` ("json" or "query") answered by ``server``.

    The Query client needs ``model_root``: a folder `query_model_dir` wrote.
    """
    session = botocore.session.get_session()
    if protocol == "query":
        assert model_root is not None
        session.get_component("data_loader").search_paths.insert(0, str(model_root))
    sqs_client = session.create_client(
        "sqs",
        region_name=region,
        endpoint_url=ENDPOINT,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1}, parameter_validation=True),
    )
    assert sqs_client.meta.service_model.protocol == protocol

    def send(request: Any, **_: Any) -> AWSResponse:
        method, path, query, headers, body = split_request(request)
        reply = server.handle(method, path, query, headers, body)
        server.exchanges.append(Exchange(method, path, query, headers, body, reply))
        return AWSResponse(request.url, reply.status, dict(reply.headers), _Raw(reply.body))

    sqs_client.meta.events.register("before-send.sqs", send)
    return sqs_client


# --- the SDKs' MD5 check -------------------------------------------------------------------------------------------


def sdk_md5_of_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """MD5OfMessageAttributes as the AWS SDKs recompute it, from attributes as boto3 spells them."""
    digest = hashlib.md5()

    def update(data: bytes) -> None:
        digest.update(struct.pack(">i", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        value = attributes[name]
        update(name.encode("utf-8"))
        update(value["DataType"].encode("utf-8"))
        if value.get("StringValue") is not None:
            digest.update(bytes([1]))
            update(value["StringValue"].encode("utf-8"))
        elif value.get("BinaryValue") is not None:
            digest.update(bytes([2]))
            update(bytes(value["BinaryValue"]))
    return digest.hexdigest()


def sdk_check_send(body: str, attributes: Mapping[str, Mapping[str, Any]] | None, answer: Mapping[str, Any]) -> None:
    """Raise AssertionError where an SDK would raise its MD5-mismatch error on a SendMessage answer."""
    assert answer["MD5OfMessageBody"] == hashlib.md5(body.encode("utf-8")).hexdigest()
    if attributes:
        assert answer["MD5OfMessageAttributes"] == sdk_md5_of_attributes(attributes)


def sdk_check_receive(message: Mapping[str, Any]) -> None:
    """Raise AssertionError where an SDK would raise its MD5-mismatch error on a received message."""
    assert message["MD5OfBody"] == hashlib.md5(message["Body"].encode("utf-8")).hexdigest()
    if message.get("MessageAttributes"):
        assert message["MD5OfMessageAttributes"] == sdk_md5_of_attributes(message["MessageAttributes"])


# --- a model server ------------------------------------------------------------------------------------------------


@dataclass
class _Message:
    id: int
    body: str
    attributes: Mapping[str, sqs.MessageAttributeValue]
    system: Mapping[str, sqs.MessageAttributeValue]
    sent_ms: int
    deliveries: int = 0
    visible_at: float = 0.0


@dataclass
class _Queue:
    attributes: dict[str, str]
    tags: dict[str, str]
    messages: dict[int, _Message] = field(default_factory=dict)


class ModelSqs:
    """An in-memory SQS answering HTTP requests through dbqueue.sqs: enough for SDK round trips.

    Each request is verified (SigV4), decoded, acted on and encoded; refusals
    are encoded in the request's protocol. ``exchanges`` records what went by.
    """

    def __init__(self, credentials: Mapping[str, str] | None = None, clock: Any = time.time) -> None:
        self.verifier = sqs.SignatureVerifier(credentials or {ACCESS_KEY: SECRET_KEY})
        self.handles = sqs.ReceiptHandles(b"model-server-receipt-secret")
        self.clock = clock
        self.queues: dict[str, _Queue] = {}
        self.next_id = 1
        self.exchanges: list[Exchange] = []
        self.requests: list[sqs.Request] = []

    def handle(self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> sqs.HttpReply:
        fields = {name.lower(): value for name, value in headers}
        protocol = sqs.protocol_of(fields.get("content-type"), fields.get("x-amz-target"))
        request_id = str(uuid.uuid4())
        try:
            self.verifier.verify(method, path, query, headers, body, self.clock())
            request = sqs.decode_request(protocol, path, query, body, fields.get("x-amz-target"))
            self.requests.append(request)
            result = self.act(request)
            return sqs.encode_result(protocol, request.action, result, request_id)
        except sqs.SqsError as error:
            return sqs.encode_error(protocol, error, request_id)

    def _queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise sqs.SqsError(sqs.ErrorCode.QUEUE_DOES_NOT_EXIST)
        return queue

    def _send(self, queue: _Queue, body: str, attributes: Any, system: Any, delay: int | None) -> _Message:
        message = _Message(self.next_id, body, attributes, system, int(self.clock() * 1000))
        self.next_id += 1
        wait = delay if delay is not None else int(queue.attributes.get("DelaySeconds", "0"))
        message.visible_at = self.clock() + wait
        queue.messages[message.id] = message
        return message

    def _open(self, queue_name: str, handle: str) -> _Message:
        receipt = self.handles.open(handle, queue_name)
        message = self._queue(queue_name).messages.get(receipt.message_id)
        if message is None:
            raise sqs.SqsError(sqs.ErrorCode.RECEIPT_HANDLE_IS_INVALID, "The receipt handle has expired.")
        return message

    def act(self, request: sqs.Request) -> sqs.Result:  # noqa: C901 - one branch per action, as a listener would
        now = self.clock()
        if isinstance(request, sqs.CreateQueue):
            existing = self.queues.get(request.queue)
            if existing is not None and existing.attributes != dict(request.attributes):
                raise sqs.SqsError(sqs.ErrorCode.QUEUE_NAME_EXISTS)
            if existing is None:
                self.queues[request.queue] = _Queue(dict(request.attributes), dict(request.tags))
            return sqs.CreateQueueResult(sqs.queue_url(ENDPOINT, request.queue))
        if isinstance(request, sqs.GetQueueUrl):
            self._queue(request.queue)
            return sqs.GetQueueUrlResult(sqs.queue_url(ENDPOINT, request.queue))
        if isinstance(request, sqs.ListQueues):
            names, token = sqs.paginate(self.queues, request.prefix, request.max_results, request.next_token)
            return sqs.ListQueuesResult(tuple(sqs.queue_url(ENDPOINT, name) for name in names), token)
        if isinstance(request, sqs.DeleteQueue):
            self._queue(request.queue)
            del self.queues[request.queue]
            return None
        if isinstance(request, sqs.PurgeQueue):
            self._queue(request.queue).messages.clear()
            return None
        if isinstance(request, sqs.GetQueueAttributes):
            queue = self._queue(request.queue)
            everything = {
                **queue.attributes,
                "QueueArn": sqs.queue_arn(request.queue),
                "ApproximateNumberOfMessages": str(len(queue.messages)),
            }
            wanted = (
                everything if "All" in request.names else {n: everything[n] for n in request.names if n in everything}
            )
            return sqs.GetQueueAttributesResult(wanted)
        if isinstance(request, sqs.SetQueueAttributes):
            self._queue(request.queue).attributes.update(request.attributes)
            return None
        if isinstance(request, sqs.TagQueue):
            self._queue(request.queue).tags.update(request.tags)
            return None
        if isinstance(request, sqs.UntagQueue):
            tags = self._queue(request.queue).tags
            for key in request.keys:
                tags.pop(key, None)
            return None
        if isinstance(request, sqs.ListQueueTags):
            return sqs.ListQueueTagsResult(self._queue(request.queue).tags)
        if isinstance(request, sqs.SendMessage):
            queue = self._queue(request.queue)
            message = self._send(
                queue, request.body, request.message_attributes, request.system_attributes, request.delay_seconds
            )
            return sqs.SendMessageResult.build(
                sqs.message_id_text(message.id), request.body, request.message_attributes, request.system_attributes
            )
        if isinstance(request, sqs.SendMessageBatch):
            queue = self._queue(request.queue)
            entries = []
            for entry in request.entries:
                message = self._send(
                    queue, entry.body, entry.message_attributes, entry.system_attributes, entry.delay_seconds
                )
                single = sqs.SendMessageResult.build(
                    sqs.message_id_text(message.id), entry.body, entry.message_attributes, entry.system_attributes
                )
                entries.append(
                    sqs.SendMessageBatchResultEntry(
                        entry.id,
                        single.message_id,
                        single.md5_of_message_body,
                        single.md5_of_message_attributes,
                        single.md5_of_message_system_attributes,
                    )
                )
            return sqs.SendMessageBatchResult(tuple(entries))
        if isinstance(request, sqs.ReceiveMessage):
            queue = self._queue(request.queue)
            timeout = request.visibility_timeout
            if timeout is None:
                timeout = int(queue.attributes.get("VisibilityTimeout", "30"))
            received = []
            for message in queue.messages.values():
                if len(received) == request.max_messages:
                    break
                if message.visible_at > now:
                    continue
                message.deliveries += 1
                message.visible_at = now + timeout
                system = {
                    "SentTimestamp": str(message.sent_ms),
                    "ApproximateReceiveCount": str(message.deliveries),
                }
                if "All" not in request.system_attribute_names:
                    system = {k: v for k, v in system.items() if k in request.system_attribute_names}
                received.append(
                    sqs.ReceivedMessage.build(
                        sqs.message_id_text(message.id),
                        self.handles.issue(request.queue, message.id, message.deliveries),
                        message.body,
                        system,
                        sqs.select_attributes(message.attributes, request.message_attribute_names),
                    )
                )
            return sqs.ReceiveMessageResult(tuple(received))
        if isinstance(request, sqs.DeleteMessage):
            message = self._open(request.queue, request.receipt_handle)
            del self.queues[request.queue].messages[message.id]
            return None
        if isinstance(request, sqs.DeleteMessageBatch):
            ok: list[str] = []
            failed: list[sqs.BatchResultErrorEntry] = []
            for delete in request.entries:
                try:
                    message = self._open(request.queue, delete.receipt_handle)
                except sqs.SqsError as error:
                    failed.append(sqs.BatchResultErrorEntry.of(delete.id, error))
                    continue
                del self.queues[request.queue].messages[message.id]
                ok.append(delete.id)
            return sqs.BatchResult(tuple(ok), tuple(failed))
        if isinstance(request, sqs.ChangeMessageVisibility):
            self._open(request.queue, request.receipt_handle).visible_at = now + request.visibility_timeout
            return None
        if isinstance(request, sqs.ChangeMessageVisibilityBatch):
            ok = []
            failed = []
            for change in request.entries:
                try:
                    self._open(request.queue, change.receipt_handle).visible_at = now + change.visibility_timeout
                except sqs.SqsError as error:
                    failed.append(sqs.BatchResultErrorEntry.of(change.id, error))
                    continue
                ok.append(change.id)
            return sqs.BatchResult(tuple(ok), tuple(failed))
        if isinstance(request, sqs.ListDeadLetterSourceQueues):
            self._queue(request.queue)
            sources = [
                name
                for name, queue in self.queues.items()
                if queue.attributes.get("RedrivePolicy")
                and sqs.redrive_policy(queue.attributes["RedrivePolicy"]).dead_letter_queue == request.queue
            ]
            names, token = sqs.paginate(sources, "", request.max_results, request.next_token)
            return sqs.ListDeadLetterSourceQueuesResult(tuple(sqs.queue_url(ENDPOINT, n) for n in names), token)
        if isinstance(request, sqs.StartMessageMoveTask):
            self._queue(request.source_queue)
            return sqs.StartMessageMoveTaskResult("task-1")
        raise sqs.SqsError(sqs.ErrorCode.UNSUPPORTED_OPERATION, f"{request.action} is not in the model server.")

"""The SQS API's protocol layer, sans I/O: what lets every AWS SDK and the aws CLI use dbqueue.

Nothing in this package opens a socket, starts an event loop, reads a clock
or draws a random number (a test keeps it so): the HTTP listener gives it a
request's parts and the time, and gets back a typed request, or an answer's
status, headers and body. `wire` shows the calling sequence.

Layout, one noun per module:

* `wire`: the entry points: `protocol_of`, `decode_request`, `encode_result`, `encode_error`;
* `json_protocol` / `query_protocol`: the two wire formats (AWS JSON 1.0; form parameters in, XML out);
* `decoding`: parameters to typed `requests`, with SQS's checks, written once for both protocols;
* `requests` / `results`: one frozen dataclass per action and per answer;
* `errors`: `SqsError` and the `ErrorCode` table (model shape, Query code, HTTP status);
* `digests`: the MD5s SQS returns, and message sizes;
* `signature`: AWS Signature Version 4 verification;
* `receipts`: HMAC-authenticated receipt handles and message ids;
* `envelope`: how an SQS message (body, attributes, send time, sender) is kept in a dbqueue payload;
* `addresses`: queue URLs, ARNs and names; `pagination`: pages of queue names;
* `fastpath`: the hot actions of the JSON protocol from a request's bytes to an answer's bytes (same answers).

docs/sqs.md says which actions and parameters are supported and how they map
onto dbqueue's queues.
"""

from .addresses import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    check_queue_name,
    queue_arn,
    queue_of_arn,
    queue_of_path,
    queue_of_url,
    queue_url,
)
from .decoding import (
    ACTIONS,
    MAX_BATCH_ENTRIES,
    MAX_MESSAGE_SIZE,
    MESSAGE_SYSTEM_ATTRIBUTE_NAMES,
    QUEUE_ATTRIBUTE_NAMES,
    UNSUPPORTED_ACTIONS,
    build_request,
    check_body,
    queue_attributes,
    redrive_policy,
)
from .digests import attributes_size, md5_of_attributes, md5_of_body, select_attributes
from .envelope import ENCODING_ATTRIBUTE, Envelope, bare_body, open_envelope, seal
from .errors import ErrorCode, SqsError
from .pagination import MAX_LISTED, paginate
from .receipts import Receipt, ReceiptHandles, message_id_of_text, message_id_text
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
    MessageMoveTask,
    ReceivedMessage,
    ReceiveMessageResult,
    Result,
    SendMessageBatchResult,
    SendMessageBatchResultEntry,
    SendMessageResult,
    StartMessageMoveTaskResult,
)
from .signature import SignatureVerifier
from .wire import HttpReply, Protocol, decode_request, encode_error, encode_result, protocol_of

__all__ = [
    # entry points
    "Protocol",
    "HttpReply",
    "protocol_of",
    "decode_request",
    "encode_result",
    "encode_error",
    "SignatureVerifier",
    "ReceiptHandles",
    "Receipt",
    # the payload of an SQS message
    "Envelope",
    "seal",
    "open_envelope",
    "bare_body",
    "ENCODING_ATTRIBUTE",
    # errors
    "SqsError",
    "ErrorCode",
    # addresses and names
    "ACCOUNT_ID",
    "DEFAULT_REGION",
    "check_queue_name",
    "queue_url",
    "queue_of_url",
    "queue_of_path",
    "queue_arn",
    "queue_of_arn",
    "message_id_text",
    "message_id_of_text",
    "paginate",
    "MAX_LISTED",
    # decoding
    "ACTIONS",
    "UNSUPPORTED_ACTIONS",
    "MAX_BATCH_ENTRIES",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_SYSTEM_ATTRIBUTE_NAMES",
    "QUEUE_ATTRIBUTE_NAMES",
    "build_request",
    "check_body",
    "queue_attributes",
    "redrive_policy",
    # digests
    "md5_of_body",
    "md5_of_attributes",
    "attributes_size",
    "select_attributes",
    # requests
    "Request",
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
    # results
    "Result",
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
]

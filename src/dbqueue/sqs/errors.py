"""SQS's error codes, and the one exception the SQS layer raises.

Every refusal, whatever its cause (a malformed request, a failed signature, a
missing queue found later by the server), is an `SqsError` carrying an
`ErrorCode`. The code knows everything both wire protocols need to answer it:

* ``shape``: the name of the error in botocore's SQS model. The JSON protocol
  sends it as ``__type`` (``com.amazonaws.sqs#QueueDoesNotExist``); current
  SDKs map it to their exception class (``client.exceptions.QueueDoesNotExist``).
* ``query_code``: the code of the older Query protocol
  (``AWS.SimpleQueueService.NonExistentQueue``). The XML protocol sends it as
  ``<Code>``; the JSON protocol sends it in the ``x-amzn-query-error`` header,
  from which botocore fills ``error.response["Error"]["Code"]``, so code that
  compares that string keeps working across both protocols.
* ``status`` and ``sender_fault``: the HTTP status, and whether the caller (Sender)
  or the service (Receiver) is at fault.

The pairs of names and the statuses follow botocore's SQS model as it was
while SQS spoke only the Query protocol (the current model kept the shape
names and dropped the codes); the codes SQS shares with every AWS service
(``InvalidParameterValue``, ``SignatureDoesNotMatch``, ...) follow AWS's list
of common errors.
"""

from __future__ import annotations

import enum

from ..errors import DbQueueError

__all__ = ["ErrorCode", "SqsError"]


class ErrorCode(enum.Enum):
    """An SQS error: its model shape, Query-protocol code, HTTP status and fault side.

    Each value is ``(shape, query_code, status, sender_fault, default_message)``.
    """

    # The queue and its messages.
    QUEUE_DOES_NOT_EXIST = (
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        400,
        True,
        "The specified queue does not exist.",
    )
    QUEUE_NAME_EXISTS = (
        "QueueNameExists",
        "QueueAlreadyExists",
        400,
        True,
        "A queue already exists with the same name and a different value for an attribute.",
    )
    QUEUE_DELETED_RECENTLY = (
        "QueueDeletedRecently",
        "AWS.SimpleQueueService.QueueDeletedRecently",
        400,
        True,
        "You must wait 60 seconds after deleting a queue before you can create another queue with the same name.",
    )
    PURGE_QUEUE_IN_PROGRESS = (
        "PurgeQueueInProgress",
        "AWS.SimpleQueueService.PurgeQueueInProgress",
        403,
        True,
        "Only one PurgeQueue operation on a queue is allowed every 60 seconds.",
    )
    RECEIPT_HANDLE_IS_INVALID = (
        "ReceiptHandleIsInvalid",
        "ReceiptHandleIsInvalid",
        400,
        True,
        "The input receipt handle is invalid.",
    )
    MESSAGE_NOT_INFLIGHT = (
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
        400,
        True,
        "The message referred to isn't in flight.",
    )
    INVALID_MESSAGE_CONTENTS = (
        "InvalidMessageContents",
        "InvalidMessageContents",
        400,
        True,
        "The message contains characters outside the allowed set.",
    )
    OVER_LIMIT = ("OverLimit", "OverLimit", 403, True, "The specified action violates a limit.")
    RESOURCE_NOT_FOUND = (
        "ResourceNotFoundException",
        "ResourceNotFoundException",
        400,
        True,
        "One or more specified resources don't exist.",
    )
    UNSUPPORTED_OPERATION = (
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        400,
        True,
        "Error code 400. Unsupported operation.",
    )
    INVALID_ADDRESS = ("InvalidAddress", "InvalidAddress", 400, True, "The specified ID is invalid.")
    REQUEST_THROTTLED = ("RequestThrottled", "RequestThrottled", 400, True, "The request was denied due to throttling.")
    # Batches.
    EMPTY_BATCH_REQUEST = (
        "EmptyBatchRequest",
        "AWS.SimpleQueueService.EmptyBatchRequest",
        400,
        True,
        "The batch request doesn't contain any entries.",
    )
    TOO_MANY_ENTRIES_IN_BATCH_REQUEST = (
        "TooManyEntriesInBatchRequest",
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        400,
        True,
        "The batch request contains more entries than permissible.",
    )
    BATCH_ENTRY_IDS_NOT_DISTINCT = (
        "BatchEntryIdsNotDistinct",
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        400,
        True,
        "Two or more batch entries in the request have the same Id.",
    )
    INVALID_BATCH_ENTRY_ID = (
        "InvalidBatchEntryId",
        "AWS.SimpleQueueService.InvalidBatchEntryId",
        400,
        True,
        "A batch entry id can only contain alphanumeric characters, hyphens and underscores."
        " It can be at most 80 letters long.",
    )
    BATCH_REQUEST_TOO_LONG = (
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        400,
        True,
        "The length of all the messages put together is more than the limit.",
    )
    # Parameters and attributes.
    INVALID_PARAMETER_VALUE = (
        "InvalidParameterValue",
        "InvalidParameterValue",
        400,
        True,
        "An invalid or out-of-range value was supplied for the input parameter.",
    )
    MISSING_PARAMETER = (
        "MissingParameter",
        "MissingParameter",
        400,
        True,
        "A required parameter for the specified action is not supplied.",
    )
    INVALID_ATTRIBUTE_NAME = (
        "InvalidAttributeName",
        "InvalidAttributeName",
        400,
        True,
        "The specified attribute doesn't exist.",
    )
    INVALID_ATTRIBUTE_VALUE = (
        "InvalidAttributeValue",
        "InvalidAttributeValue",
        400,
        True,
        "A queue attribute value is invalid.",
    )
    # The request as a whole.
    INVALID_ACTION = (
        "InvalidAction",
        "InvalidAction",
        400,
        True,
        "The action or operation requested is invalid. Verify that the action is typed correctly.",
    )
    MISSING_ACTION = ("MissingAction", "MissingAction", 400, True, "The request must contain the parameter Action.")
    NO_SUCH_VERSION = (
        "NoSuchVersion",
        "NoSuchVersion",
        400,
        True,
        "The requested version of service AmazonSQS does not exist.",
    )
    SERIALIZATION = (
        "SerializationException",
        "SerializationException",
        400,
        True,
        "The request body is not a JSON object.",
    )
    # Authentication and authorisation.
    MISSING_AUTHENTICATION_TOKEN = (
        "MissingAuthenticationToken",
        "MissingAuthenticationToken",
        403,
        True,
        "Request is missing Authentication Token",
    )
    INCOMPLETE_SIGNATURE = (
        "IncompleteSignature",
        "IncompleteSignature",
        400,
        True,
        "The request signature does not conform to AWS standards.",
    )
    INVALID_CLIENT_TOKEN_ID = (
        "InvalidClientTokenId",
        "InvalidClientTokenId",
        403,
        True,
        "The security token included in the request is invalid.",
    )
    SIGNATURE_DOES_NOT_MATCH = (
        "SignatureDoesNotMatch",
        "SignatureDoesNotMatch",
        403,
        True,
        "The request signature we calculated does not match the signature you provided."
        " Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    )
    REQUEST_EXPIRED = (
        "RequestExpired",
        "RequestExpired",
        400,
        True,
        "Request has expired.",
    )
    ACCESS_DENIED = ("AccessDenied", "AccessDenied", 403, True, "Access to the resource is denied.")
    INVALID_SECURITY = (
        "InvalidSecurity",
        "InvalidSecurity",
        403,
        True,
        "The request was not made over HTTPS or did not use SigV4 for signing.",
    )
    # The service's own failures.
    INTERNAL_ERROR = (
        "InternalError",
        "InternalError",
        500,
        False,
        "We encountered an internal error. Please try again.",
    )
    SERVICE_UNAVAILABLE = (
        "ServiceUnavailable",
        "ServiceUnavailable",
        503,
        False,
        "The request has failed due to a temporary failure of the server.",
    )

    def __init__(self, shape: str, query_code: str, status: int, sender_fault: bool, default_message: str) -> None:
        self.shape = shape
        self.query_code = query_code
        self.status = status
        self.sender_fault = sender_fault
        self.default_message = default_message

    @property
    def fault(self) -> str:
        """``Sender`` or ``Receiver``, as both protocols spell the side at fault."""
        return "Sender" if self.sender_fault else "Receiver"


class SqsError(DbQueueError):
    """An SQS request was refused: answer it with `encode_error` in the request's protocol.

    ``code`` is the `ErrorCode`; ``message`` the human-readable text (the code's
    default when none is given). The attributes ``status``, ``shape`` and
    ``query_code`` repeat the code's, for log lines and tests.
    """

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = code
        if message is None:
            message = code.default_message
        elif not message.isascii():
            # Messages quote what the client sent, which may hold lone surrogates
            # (JSON's "\ud800"): escape them, so that every error can be encoded.
            message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        self.message = message
        super().__init__(f"{code.shape}: {self.message}")

    @property
    def status(self) -> int:
        return self.code.status

    @property
    def shape(self) -> str:
        return self.code.shape

    @property
    def query_code(self) -> str:
        return self.code.query_code

    def __reduce__(self) -> tuple[type[SqsError], tuple[ErrorCode, str]]:
        return (self.__class__, (self.code, self.message))

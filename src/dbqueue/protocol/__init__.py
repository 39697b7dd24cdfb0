"""The dbqueue wire protocol, sans-I/O: frames, message types, and connection state.

Nothing in this package touches a socket or an event loop (a test keeps it so);
the server and every client are loops around it. The byte layout is written
down in docs/protocol.md.
"""

from .connection import ClientConnection
from .frames import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_QUEUE_NAME,
    PROTOCOL_VERSION,
    FrameFailure,
    FrameReader,
    Op,
)
from .messages import (
    Confirm,
    Confirmed,
    CreateQueue,
    DeleteQueue,
    Empty,
    Enqueue,
    Error,
    Full,
    Hello,
    HelloOk,
    Message,
    ObjectQueued,
    QueueCreated,
    QueueDeleted,
    Read,
    Request,
    Requeued,
    Response,
    decode_request,
    decode_response,
    encode,
)

__all__ = [
    "ClientConnection",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_QUEUE_NAME",
    "PROTOCOL_VERSION",
    "FrameFailure",
    "FrameReader",
    "Op",
    "Confirm",
    "Confirmed",
    "CreateQueue",
    "DeleteQueue",
    "Empty",
    "Enqueue",
    "Error",
    "Full",
    "Hello",
    "HelloOk",
    "Message",
    "ObjectQueued",
    "QueueCreated",
    "QueueDeleted",
    "Read",
    "Request",
    "Requeued",
    "Response",
    "decode_request",
    "decode_response",
    "encode",
]

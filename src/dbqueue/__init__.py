"""dbqueue: a message-queue server and its clients.

Layout: `protocol` is the sans-I/O wire format shared by both sides; `server`
holds the queue logic and the asyncio server; `client` the blocking, pipelining
and asyncio clients; `errors` the one error tree; `cli` the `dbqueue` command.
"""

__version__ = "0.1.0"

from .client import AsyncClient, AsyncGroupClient, Client, GroupClient, Message, Pipeline, PipelinedClient
from .errors import (
    AuthenticationFailed,
    ConnectionLost,
    DbQueueError,
    InvalidQueueName,
    InvalidRequest,
    LimitExceeded,
    MessageTooLarge,
    NoSuchMessage,
    NoSuchQueue,
    ProtocolError,
    QueueFull,
    RequestError,
    Requeued,
    UnknownOpcode,
    UnsupportedVersion,
)
from .server import Server

__all__ = [
    "__version__",
    "Client",
    "Pipeline",
    "PipelinedClient",
    "AsyncClient",
    "GroupClient",
    "AsyncGroupClient",
    "Message",
    "Server",
    "DbQueueError",
    "RequestError",
    "NoSuchQueue",
    "NoSuchMessage",
    "QueueFull",
    "Requeued",
    "InvalidRequest",
    "InvalidQueueName",
    "MessageTooLarge",
    "UnknownOpcode",
    "UnsupportedVersion",
    "ProtocolError",
    "ConnectionLost",
    "LimitExceeded",
    "AuthenticationFailed",
]

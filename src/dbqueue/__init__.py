"""dbqueue: a message-queue server and its clients.

Layout: `protocol` is the sans-I/O wire format shared by both sides; `client`
the blocking, pipelining and asyncio clients; `core` the queue logic (no I/O),
`store` its durable store and `server` the asyncio server around them;
`errors` the one error tree; `cli` the `dbqueue` command.

Importing the package loads the clients only: `Server` and `Limits` are
imported on first use (PEP 562), so a client never loads the server, its
store or its metrics.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .client import AsyncClient, AsyncGroupClient, Client, GroupClient, Pipeline, PipelinedClient
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
    OverMemoryBudget,
    ProtocolError,
    QueueFull,
    RequestError,
    Requeued,
    StoreUnavailable,
    Timeout,
    TlsHandshakeFailed,
    UnknownOpcode,
    UnsupportedVersion,
)
from .protocol.envelope import MessageAttributeValue
from .protocol.messages import Message, Move, Moved, Origin, Peek, Peeked, PeekedMessage

NEVER = math.inf
"""A visibility timeout that never runs out: pass it to ``read``, ``read_batch``, ``touch`` or
``create`` to keep a message in flight until it is confirmed or its connection closes."""

if TYPE_CHECKING:
    from .server import Limits, Server

__all__ = [
    "__version__",
    "Client",
    "Pipeline",
    "PipelinedClient",
    "AsyncClient",
    "GroupClient",
    "AsyncGroupClient",
    "Message",
    "MessageAttributeValue",
    "Origin",
    "PeekedMessage",
    "Peek",
    "Peeked",
    "Move",
    "Moved",
    "NEVER",
    "Server",
    "Limits",
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
    "Timeout",
    "TlsHandshakeFailed",
    "LimitExceeded",
    "OverMemoryBudget",
    "StoreUnavailable",
    "AuthenticationFailed",
]


def __getattr__(name: str) -> Any:
    # PEP 562: `dbqueue.Server` imports the server on first use; later uses find it bound here.
    if name not in ("Server", "Limits"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import server

    value = getattr(server, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

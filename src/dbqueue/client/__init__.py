"""dbqueue clients. Every command is written once, with its types (`commands`); `sync` holds
the blocking `Client`, its `Pipeline` and the raw `PipelinedClient`; `aio` holds the
`AsyncClient`; `group` the clients for a group of servers (its routing in `group.plans`)."""

from .aio import AsyncClient
from .commands import Message, parse_address
from .group import AsyncGroupClient, GroupClient, GroupPipeline
from .sync import Client, Pipeline, PipelinedClient

__all__ = [
    "Client",
    "Pipeline",
    "PipelinedClient",
    "AsyncClient",
    "GroupClient",
    "GroupPipeline",
    "AsyncGroupClient",
    "Message",
    "parse_address",
]

"""dbqueue clients. Every command is written once (`commands`); `sync` holds the blocking
`Client`, its `Pipeline` and the raw `PipelinedClient`; `aio` holds the `AsyncClient`."""

from .aio import AsyncClient
from .commands import Message, parse_address
from .sync import Client, Pipeline, PipelinedClient

__all__ = ["Client", "Pipeline", "PipelinedClient", "AsyncClient", "Message", "parse_address"]

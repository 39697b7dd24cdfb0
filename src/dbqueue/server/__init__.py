"""The dbqueue server: `queues` holds the logic (no I/O), `session` one connection, `app` the Server."""

from .app import Server, new_event_loop, run
from ..core import Broker

__all__ = ["Server", "Broker", "run", "new_event_loop"]

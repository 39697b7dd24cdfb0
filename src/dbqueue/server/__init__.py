"""The dbqueue server: `queues` holds the logic (no I/O), `session` one connection, `app` the Server."""

from ..core import Broker
from .app import Server, new_event_loop, run

__all__ = ["Server", "Broker", "run", "new_event_loop"]

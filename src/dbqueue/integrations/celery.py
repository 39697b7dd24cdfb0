"""Celery on dbqueue: importing this module registers the ``dbqueue://`` broker URL with kombu.

>>> import dbqueue.integrations.celery  # registers dbqueue:// with kombu
>>> app = Celery("tasks", broker="dbqueue://127.0.0.1:3003")

The transport is `kombu_transport.Transport`; ``dbqueues://`` is the same over
TLS. kombu resolves a URL's scheme through ``kombu.transport.TRANSPORT_ALIASES``,
so the import must run in the process that sends tasks and in the worker
(``celery -A app worker`` imports the app's module, where it belongs). Without
the import, ``broker_transport="dbqueue.integrations.kombu_transport:Transport"``
does the same.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

__all__ = ["TRANSPORT"]

TRANSPORT = "dbqueue.integrations.kombu_transport:Transport"

TRANSPORT_ALIASES.setdefault("dbqueue", TRANSPORT)
TRANSPORT_ALIASES.setdefault("dbqueues", TRANSPORT)

"""Task frameworks on dbqueue: Celery (through a kombu transport) and Dramatiq (through a broker).

Layout: `address` turns a ``dbqueue://`` URL and its options into a connected
`Client`; `reader` is the one place that reads for both frameworks (a read
across several queues at once, each message held until confirmed); `kombu_transport`
is the kombu virtual transport Celery runs on, and `celery` registers it
under ``dbqueue://`` when imported; `dramatiq` is the Dramatiq broker.

Nothing here is imported by ``import dbqueue``: the frameworks are optional
dependencies (``pip install 'dbqueue[celery]'`` or ``'dbqueue[dramatiq]'``).
See docs/frameworks.md.
"""

from __future__ import annotations

__all__: list[str] = []

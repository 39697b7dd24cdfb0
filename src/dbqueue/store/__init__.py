"""Durable stores of the queue logic's `core.Journal`: today the embedded SQLite store.

`sqlite` holds the `Store` (the change buffer and group commit), `packs` the rows
that hold messages sent together, `schema` the file format and its upgrades, and
`lock` the lock that keeps a directory to one server.
"""

from ..errors import StoreError
from .lock import LOCK_NAME
from .schema import FORMAT_VERSION
from .sqlite import DB_NAME, SYNC_MODES, Store

__all__ = ["DB_NAME", "FORMAT_VERSION", "LOCK_NAME", "SYNC_MODES", "Store", "StoreError"]

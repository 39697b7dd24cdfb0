"""Durable stores of the queue logic's `core.Journal`: today the embedded SQLite store.

`sqlite` holds the `Store` (the change buffer and group commit), `packs` the rows
that hold messages sent together, `schema` the file format and its upgrades,
`contents` the reading of it, `checksums` what each payload carries to show
damage, `files` what the files in a directory say (a new store, a lost one),
`lock` the lock that keeps a directory to one server, and `check` the read-only
check and the salvage of a damaged store.
"""

from ..errors import StoreError
from .lock import LOCK_NAME
from .schema import FORMAT_VERSION
from .sqlite import DB_NAME, SYNC_MODES, Store

__all__ = ["DB_NAME", "FORMAT_VERSION", "LOCK_NAME", "SYNC_MODES", "Store", "StoreError"]

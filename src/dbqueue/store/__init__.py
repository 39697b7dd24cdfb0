"""Durable stores of the queue logic's `core.Journal`: today the embedded SQLite store."""

from ..errors import StoreError
from .sqlite import DB_NAME, FORMAT_VERSION, LOCK_NAME, SYNC_MODES, Store

__all__ = ["DB_NAME", "FORMAT_VERSION", "LOCK_NAME", "SYNC_MODES", "Store", "StoreError"]

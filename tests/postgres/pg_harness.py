"""Opening either store the same way, so one test runs unchanged against SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from dbqueue.store import Store
from dbqueue.store.postgres import PostgresStore


class Harness:
    """Opens and reopens one kind of store at one place, so a test runs unchanged against both kinds."""

    def __init__(self, kind: str, place: str) -> None:
        self.kind = kind
        self.place = place

    def open(self) -> Any:
        if self.kind == "sqlite":
            return Store.open(self.place)
        return PostgresStore.open(self.place, part=0, address="127.0.0.1:1")

    def reopen(self, store: Any) -> Any:
        store.close()
        return self.open()

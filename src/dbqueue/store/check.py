"""Checking a store without changing it, and salvaging the intact part of a damaged one.

Theory of operation
-------------------
`check` reads a store directory the way a starting server would, without
opening it for writing: it takes a *shared* lock on the lock file (so it
refuses while a server runs there, and no server can start while it reads),
reads the file as immutable, or a private copy of it when a write-ahead log
must be recovered first (`files.read_only`), runs SQLite's quick_check and
verifies every payload's checksum (`store.checksums`). It reads every format
version and never upgrades one. What it finds is a `CheckReport`.

`salvage` does the same reading, then writes every intact queue (with its
options) and message (with its id, delivery count and due time, in its
queue's order) into a new store in another directory, and reserves the ids
the old store had handed out, so ids stay unique. Damaged messages are left
behind and listed; the original is left exactly as it was, for whoever wants
to look at it further. The new store is of the current format version.

A file cut short is reported (``problems``) and read as far as SQLite can;
salvage then copies whatever intact messages it still gives up. Both raise
`StoreError` where there is nothing to report on: no store in the directory,
a store that looks lost (its file missing, empty or not SQLite at all, see
`store.files`), a file that is not a dbqueue store or is of a newer version,
or a directory in use by a server.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from . import contents, files, schema
from .files import DB_NAME
from .lock import LOCK_NAME, DirectoryLock
from .sqlite import Store

__all__ = ["CheckReport", "check", "salvage"]

# Messages buffered in the new store between two commits while salvaging.
_SALVAGE_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What `check` found in a store, or what `salvage` copied out of it."""

    directory: Path  # the store checked (for a salvage: the damaged original)
    format_version: int  # of the file as found: `check` and `salvage` never upgrade it
    checksummed: bool  # whether its payloads carry checksums (format 3 and later): else damage cannot be seen
    queues: int  # queues found (salvage: copied)
    messages: int  # intact messages found (salvage: copied)
    damaged: tuple[int, ...]  # ids of messages whose payload fails its checksum, in increasing order
    problems: tuple[str, ...]  # SQLite's quick_check findings, and tables that could not be read to the end
    salvaged_into: Path | None = None  # the new store `salvage` wrote

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong: no damaged message and no problem."""
        return not self.damaged and not self.problems

    def lines(self) -> list[str]:
        """The report in a few lines for a person to read, verdict first."""
        path = self.directory / DB_NAME
        verdict = "ok" if self.ok else "DAMAGED"
        lines = [
            f"{path}: {verdict}",
            f"store format version {self.format_version}"
            + (
                ""
                if self.checksummed
                else " (no payload checksums before version 3: damage to payloads cannot be seen)"
            ),
            f"{self.queues} queues, {self.messages} intact messages",
        ]
        if self.damaged:
            lines.append(f"{len(self.damaged)} damaged messages: ids {contents.describe_ids(list(self.damaged))}")
        lines += [f"problem: {problem}" for problem in self.problems]
        if self.salvaged_into is not None:
            lines.append(
                f"salvaged {self.queues} queues and {self.messages} messages into {self.salvaged_into / DB_NAME};"
                f" {path} is untouched"
            )
        return lines


def check(directory: str | os.PathLike[str]) -> CheckReport:
    """Check the store in ``directory`` without changing anything there; return what was found.

    Reads every queue and message and verifies every payload's checksum;
    ``report.ok`` tells whether all is well. Raises `StoreError`, naming the
    file, if there is no store to check (none there, lost, not a dbqueue
    store, of a newer version) or a server holds the directory.
    """
    directory = Path(directory)
    report, _ = _read(directory)
    return report


def salvage(directory: str | os.PathLike[str], into_directory: str | os.PathLike[str]) -> CheckReport:
    """Copy every intact queue and message of the store in ``directory`` into a new store in ``into_directory``.

    Queue options and annotations, message ids, delivery counts, due times and each queue's
    order are kept, and the new store will not hand out an id the old one
    may have. ``directory`` is left untouched. Returns the report of what was
    found and copied (``salvaged_into`` set). Raises `StoreError` as `check`
    does, and if ``into_directory`` is the same directory or already holds a
    store (or its lock file: it held one), or the new store cannot be written.
    """
    directory, into = Path(directory), Path(into_directory)
    if into.exists() and (into.resolve() == directory.resolve()):
        raise StoreError(f"{into}: salvage needs a new directory, not the damaged store's own")
    for name in (DB_NAME, LOCK_NAME):
        if (into / name).exists():
            raise StoreError(f"{into / name}: salvage needs a directory that never held a store")
    report, found = _read(directory)
    messages = 0
    with Store.open(into) as store:
        for queue in found.queues:
            store.create_queue(
                queue.name, queue.capacity, queue.max_deliveries, queue.dead_letter, queue.visibility_timeout_ms
            )
            if queue.annotations:
                store.alter_queue(
                    queue.name, queue.max_deliveries, queue.dead_letter, queue.visibility_timeout_ms, queue.annotations
                )
            times = queue.enqueued_ms or [0] * len(queue.messages)
            for (id_, data, deliveries, due_ms), enqueued_ms in zip(queue.messages, times, strict=True):
                origin = queue.origins.get(id_)
                store.add(
                    queue.name, id_, data, due_ms=due_ms, deliveries=deliveries, enqueued_ms=enqueued_ms, origin=origin
                )
                messages += 1
                if messages % _SALVAGE_BATCH == 0:
                    store.commit()
        store.reserve_ids(found.next_id)
        store.commit()
    return CheckReport(
        directory=report.directory,
        format_version=report.format_version,
        checksummed=report.checksummed,
        queues=len(found.queues),
        messages=messages,
        damaged=report.damaged,
        problems=report.problems,
        salvaged_into=into,
    )


def _read(directory: Path) -> tuple[CheckReport, contents.Contents]:
    # The store in ``directory``, read without changing anything, and the report on it.
    path = directory / DB_NAME
    if not directory.is_dir():
        raise StoreError(f"{directory}: not a directory")
    lock = DirectoryLock.share(directory)
    try:
        if not files.holds_store(directory, lock.found):
            raise StoreError(f"{path}: no dbqueue store here")
        damage, readable = files.damage(directory)
        if not readable:
            raise StoreError(f"{path}: {damage}: nothing in it can be read")
        with files.read_only(directory) as con:
            version = schema.version_of(con, path)
            problems = ([damage] if damage else []) + schema.structure_problems(con, limit=20)
            try:
                found = contents.read(con, version, tolerant=True)
            except sqlite3.Error as exc:
                raise StoreError(f"{path}: the store's queues or ids cannot be read: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the store: {exc}") from exc
    finally:
        lock.release()
    report = CheckReport(
        directory=directory,
        format_version=version,
        checksummed=version >= 3,
        queues=len(found.queues),
        messages=sum(len(queue.messages) for queue in found.queues),
        damaged=tuple(found.damaged),
        problems=tuple(problems + found.problems),
    )
    return report, found

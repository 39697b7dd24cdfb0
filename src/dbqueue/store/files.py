"""The store's files in its directory: what their presence, absence and sizes say, and how a store is born.

Theory of operation
-------------------
A directory holds a store as ``dbqueue.db`` (the SQLite file), while the
store is open or after a crash ``dbqueue.db-wal`` (SQLite's write-ahead log,
part of the data until a checkpoint moves it into the file), and
``dbqueue.lock`` (`store.lock`), which stays after the store is closed.

Only a directory that never held a store may get a new, empty one. Anything
that looks like a store that was lost or damaged stops the open with a
`StoreError` naming the file and what is wrong, instead of starting empty and
losing every message without a word:

* ``dbqueue.db`` missing beside ``dbqueue.db-wal`` or ``dbqueue.lock``: the
  file was deleted or moved;
* ``dbqueue.db`` empty, shorter than a SQLite header, not SQLite, not a whole
  number of pages, or (with no log to finish it) shorter than the page count
  its own header gives: the file was truncated or overwritten.

A file damaged in ways these cheap tests cannot see is refused later, by
`schema.adopt` (wrong application id, newer version, SQLite's quick_check)
or by the checksums `Store.load` verifies (`store.checksums`).

So that these rules never mistake a store that was being born for a lost
one, a new store is made whole under a temporary name (``dbqueue.db.new``),
synced, and renamed into place: ``dbqueue.db`` either does not exist or is a
complete, empty store. A first start that fails (rather than dies) removes
the lock file it created, so the directory stays new. The only window left is
a first start killed between the lock file's creation and the rename: it
leaves a lock file alone, which the next start refuses with a message that
says how to start afresh.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError
from . import schema
from .lock import LOCK_NAME

DB_NAME = "dbqueue.db"
WAL_NAME = DB_NAME + "-wal"
NEW_NAME = DB_NAME + ".new"  # a store being created, renamed to DB_NAME once whole

_HEADER = 100  # bytes of a SQLite file header
_MAGIC = b"SQLite format 3\x00"


def holds_store(directory: Path, lock_found: bool) -> bool:
    """Whether ``directory`` holds a store's file (True) or never held a store and may get a new one (False).

    ``lock_found``: the lock file was there before this open created it.
    Raises `StoreError` naming the file if the store looks lost: its file
    missing beside its log or its lock file. Whether the file is whole is
    `damage`'s question.
    """
    db, wal = directory / DB_NAME, directory / WAL_NAME
    wal_size = _size(wal)
    if _size(db) is None:
        if wal_size is not None:
            raise StoreError(
                f"{db}: missing, but its write-ahead log {WAL_NAME} is there: the store's main file was deleted"
                " or moved; restore it from a backup, or move the directory aside to start an empty store"
            )
        if lock_found:
            raise StoreError(
                f"{db}: missing, but {LOCK_NAME} shows a store was kept in this directory: the file was deleted"
                f" or moved; restore it from a backup, or if this directory never held messages, delete"
                f" {directory / LOCK_NAME} to start an empty store"
            )
        return False
    return True


def damage(directory: Path) -> tuple[str, bool]:
    """What the size and header of the store's file say is wrong with it ("" if nothing), and whether
    SQLite can read it all the same (a truncated file may still give up the pages it kept)."""
    db = directory / DB_NAME
    size = _size(db) or 0
    if size == 0:
        return "empty (0 bytes; truncated?)", False
    if size < _HEADER:
        return f"{size} bytes, shorter than a SQLite header (truncated?)", False
    try:
        header = _header(db)
    except OSError as exc:
        return f"cannot be read ({exc})", False
    if not header.startswith(_MAGIC):
        return "not a SQLite database (not a dbqueue store, or overwritten)", False
    page_size, pages = _pages(header)
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header gives an invalid page size {page_size}", False
    if _size(directory / WAL_NAME):
        return "", True  # a checkpoint cut short may have left the file short of pages its log still holds
    if size % page_size:
        return f"{size} bytes, not a whole number of {page_size}-byte pages (truncated?)", True
    if size < pages * page_size:
        return f"truncated: {size // page_size} pages of the {pages} its header counts", True
    return "", True


def _header(db: Path) -> bytes:
    with open(db, "rb") as file:
        return file.read(_HEADER)


def _pages(header: bytes) -> tuple[int, int]:
    # (page size, page count) as a SQLite header gives them; the count is 0 where the header does not say.
    page_size = int.from_bytes(header[16:18], "big")
    # The header's page count is valid only while its "version valid for" matches the change counter.
    valid = len(header) == _HEADER and header[92:96] == header[24:28]
    return 65536 if page_size == 1 else page_size, int.from_bytes(header[28:32], "big") if valid else 0


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be examined: {exc}") from exc


def _whole_size(db: Path) -> int:
    # The size the file's header says it has (whole pages), or 0 if the header does not say.
    try:
        header = _header(db)
    except OSError:
        return 0
    page_size, pages = _pages(header)
    return page_size * pages if header.startswith(_MAGIC) else 0


def create(directory: Path) -> None:
    """Make a new, empty store as ``directory/dbqueue.db``, whole or not at all.

    Built under `NEW_NAME`, synced, renamed into place, and the directory
    synced, so the new file's name survives a power cut too. Raises
    `StoreError` naming the file if any step fails.
    """
    new, db = directory / NEW_NAME, directory / DB_NAME
    try:
        for leftover in (new, directory / (NEW_NAME + "-wal"), directory / (NEW_NAME + "-journal")):
            leftover.unlink(missing_ok=True)  # a creation cut short: nothing in it was ever used
        con = sqlite3.connect(new, isolation_level=None)
        try:
            schema.create(con)
            # Move everything into the file: it must be whole without its log once renamed.
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            con.close()  # the last connection: SQLite checkpoints and deletes the log
        _fsync(new)
        os.rename(new, db)
        _fsync(directory)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{db}: cannot create the store: {exc}") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def read_only(directory: Path) -> Iterator[sqlite3.Connection]:
    """A connection that reads the store in ``directory`` and can change nothing there.

    A store closed cleanly is read in place, as an immutable file. One with a
    write-ahead log (the server was killed, or is running on another copy) is
    copied with its log into a temporary directory first, and the copy is
    read: reading a log means recovering it, which writes. So is a file cut
    short, its copy padded with zeros to the size its header gives: SQLite
    refuses a file shorter than that, but reads the pages it kept.
    """
    db, wal = directory / DB_NAME, directory / WAL_NAME
    size, whole = _size(db) or 0, _whole_size(db)
    if not _size(wal) and size >= whole:
        con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro&immutable=1", uri=True, isolation_level=None)
        try:
            yield con
        finally:
            con.close()
        return
    with tempfile.TemporaryDirectory(prefix="dbqueue-check-") as scratch:
        copy = Path(scratch) / DB_NAME
        try:
            shutil.copyfile(db, copy)
            if _size(wal):
                shutil.copyfile(wal, Path(scratch) / WAL_NAME)
            if size < whole:
                os.truncate(copy, whole)
        except OSError as exc:
            raise StoreError(f"{db}: cannot copy the store to read it: {exc}") from exc
        con = sqlite3.connect(copy, isolation_level=None)
        try:
            yield con
        finally:
            con.close()

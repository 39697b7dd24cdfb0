"""The directory lock: one server per store directory.

Theory of operation
-------------------
``DIR/dbqueue.lock`` is a small file that an open `Store` holds an exclusive
`fcntl.flock` on for its whole life, so two servers never share a directory.
flock locks belong to an open file description, so a second open conflicts
even inside one process, and the kernel drops the lock when the holder dies:
a killed server leaves no stale lock behind, only the file, which the next
holder takes over. The holder writes its pid into the file, so the refusal
of a second server can say who holds the directory. Since the file stays, its
presence also tells that the directory has held a store (`store.files`).

A reader that must change nothing (`store.check`) takes a shared lock on the
file if it exists, without creating or writing it: it cannot read while a
server runs, and no server can start while it reads.

SQLite's own locks would not do: the store runs SQLite with
``locking_mode = EXCLUSIVE``, which takes its lock at the first read, after
the files have been looked at, and says nothing of who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import StoreError

LOCK_NAME = "dbqueue.lock"


class DirectoryLock:
    """The exclusive lock on a store directory, held from `acquire` to `release`."""

    __slots__ = ("_fd", "found", "path")

    def __init__(self, path: Path, fd: int | None, found: bool) -> None:
        # Use `DirectoryLock.acquire` or `DirectoryLock.share`.
        self.path = path
        self._fd = fd
        self.found = found  # the lock file was there before: the directory has held a store

    @classmethod
    def acquire(cls, directory: Path) -> DirectoryLock:
        """Take ``directory``'s lock, creating its lock file if missing, and write our pid into it.

        Raises `StoreError`, naming the lock file, if the file cannot be opened
        or another process (or another lock in this one) holds it.
        """
        path = directory / LOCK_NAME
        found = False
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                found = True
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"{path}: cannot open the lock file: {exc}") from exc
        _lock(fd, path, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd, found)

    @classmethod
    def share(cls, directory: Path) -> DirectoryLock:
        """Take a shared lock on ``directory``'s lock file, if it has one, for reading: creates and writes nothing.

        Raises `StoreError`, naming the lock file, if a server holds it.
        """
        path = directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return cls(path, None, False)
        except OSError as exc:
            raise StoreError(f"{path}: cannot open the lock file: {exc}") from exc
        _lock(fd, path, fcntl.LOCK_SH)
        return cls(path, fd, True)

    def discard(self) -> None:
        """Delete the lock file while still holding it: for an open that created it and then failed."""
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Let go of the lock (closing its descriptor releases the flock); twice is harmless."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock(fd: int, path: Path, kind: int) -> None:
    # flock ``fd`` without waiting; on failure close it and raise, naming the holder.
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"{path}: the store is in use by another dbqueue server (pid {holder})") from exc

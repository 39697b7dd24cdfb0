"""The room a store keeps on its file system, so that a full disk still lets its consumers drain it.

Theory of operation
-------------------
Confirming messages frees space, but only once SQLite has written the
removals down, and every commit appends to the write-ahead log first. On a
file system with no room left, a store could record nothing, not even the
confirms that would make room: the backlog could not be drained.

So while all is well the store keeps `RESERVE_BYTES` allocated to itself in
``DIR/dbqueue.reserve``, a file whose blocks are really taken
(``posix_fallocate``, not a sparse file). When a write fails (a full disk),
the server stops accepting changes that add data and the store gives the
reserve back (`Room.release`): the writes that remain (confirms, and the
reclaim that hands freed pages back to the file system) use that room. The
server accepts sends again when the store can take its reserve again
(`Room.keep`) and finds as much again free beside it (`Room.free`): after the
operator made room, or after consumers drained enough that the store gave
pages back. The second reserve's worth is the margin between "writes again"
and "full again", so that the room one reclaim round hands back (a log
truncated) does not end the mode only for the next send to fill the disk.

The reserve outlives a stop, so that a restart on a full disk has room for
confirms too. It holds nothing: deleting it by hand is harmless, and the
server takes it again when it can. On file systems that copy on write (btrfs,
ZFS) a freed block may not be free for the next write, and the reserve is a
best effort.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["RESERVE_NAME", "RESERVE_BYTES", "Room"]

RESERVE_NAME = "dbqueue.reserve"
# Room for a write-ahead log that grows to SQLite's own checkpoint (`sqlite.WAL_AUTOCHECKPOINT_PAGES`)
# while confirms and reclaim rounds are written: those free space and never grow the file.
RESERVE_BYTES = 4 << 20


class Room:
    """The reserve file of the store in ``directory``; ``size`` bytes when kept."""

    __slots__ = ("path", "size")

    def __init__(self, directory: Path, size: int = RESERVE_BYTES) -> None:
        self.path = directory / RESERVE_NAME
        self.size = size

    def keep(self) -> None:
        """Make sure the reserve holds `size` allocated bytes; raise `OSError` if the file system lacks the room
        (then no part of the reserve is kept: a reserve half taken would only take room from the store)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.posix_fallocate(fd, 0, self.size)  # a no-op when the blocks are already there
        except OSError:
            os.close(fd)
            self.release()
            raise
        os.close(fd)

    def free(self) -> int:
        """Bytes the file system has free for us (beside the reserve, when kept)."""
        stats = os.statvfs(self.path.parent)
        return stats.f_bavail * stats.f_frsize

    def release(self) -> bool:
        """Give the reserve back to the file system; return whether there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            with contextlib.suppress(OSError):  # not removable (permissions?): at least free its blocks
                os.truncate(self.path, 0)
        return True

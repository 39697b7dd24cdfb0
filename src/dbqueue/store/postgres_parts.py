"""Who owns which part of a group sharing one PostgreSQL database, decided by PostgreSQL.

Theory of operation
-------------------
A *part* is a member index: the queues a member created and the messages whose
ids carry its index. A server owns a part while its session holds the advisory
lock ``(LOCK_CLASS, part)``; PostgreSQL gives the lock back when that session
ends, which is when the server dies or when PostgreSQL's keepalives find its
link dead. Taking a part (`claim`, `take_orphan`) needs the lock and then bumps
the part's ``epoch`` in ``dbqueue_parts``, writing the new owner's address in
the same row. The epoch is the *fence*: every commit checks it inside its own
transaction (``dbqueue_fence``), so a server whose part was taken can no longer
commit for it, whatever its own view of the world.

A server that lost its session but not its part (a brief network cut: nobody
took the part meanwhile) takes it again on a new session with its old epoch
(`reclaim`); if the epoch moved, the part is gone (`PartLost`).

Membership: ``dbqueue_parts`` holds each part's owner's address, so `members`
from any member lists the group as it is now, part ``i`` at index ``i``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:  # psycopg is needed only by a server with a PostgreSQL store; `server.app` imports `PartLost`
    import psycopg

# The first key of every advisory lock the store takes (the second is a part, or -1 for the schema).
LOCK_CLASS = 0x6462_7175  # "dbqu"

__all__ = ["PartLost", "PartOwned", "claim", "reclaim", "orphans", "take", "take_orphan", "members"]

_TRY_LOCK = b"SELECT pg_try_advisory_lock(%s, %s)"
_UNLOCK = b"SELECT pg_advisory_unlock(%s, %s)"
_BUMP = (
    b"INSERT INTO dbqueue_parts AS p (part, epoch, address) VALUES (%s, 1, %s)"
    b" ON CONFLICT (part) DO UPDATE SET epoch = p.epoch + 1, address = excluded.address, claimed_at = now()"
    b" RETURNING epoch"
)


class PartOwned(StoreError):
    """The part is held by another live server (its address in the message)."""


class PartLost(StoreError):
    """Another server took the part over: this one must not serve it any more."""


def _try_lock(con: psycopg.Connection[Any], part: int) -> bool:
    row = con.execute(_TRY_LOCK, (LOCK_CLASS, part)).fetchone()
    return bool(row and row[0])


def claim(con: psycopg.Connection[Any], part: int, address: str) -> int:
    """Take ``part`` for the server at ``address`` and return its new epoch.

    Raises `PartOwned` if a live server holds it, `psycopg.Error` if PostgreSQL fails.
    """
    if not _try_lock(con, part):
        row = con.execute(b"SELECT address FROM dbqueue_parts WHERE part = %s", (part,)).fetchone()
        owner = row[0] if row else "another server"
        raise PartOwned(
            f"part {part} (member index {part}) is served by {owner}: start this server with --standby to take"
            " over a part whose owner is gone"
        )
    return _bump(con, part, address)


def _bump(con: psycopg.Connection[Any], part: int, address: str) -> int:
    row = con.execute(_BUMP, (part, address)).fetchone()
    assert row is not None  # RETURNING of one upserted row
    return int(row[0])


def orphans(con: psycopg.Connection[Any]) -> list[int]:
    """The known parts whose lock no session holds (their owner is gone), without taking any lock."""
    rows = con.execute(
        b"SELECT part FROM dbqueue_parts WHERE part NOT IN (SELECT objid::int FROM pg_locks"
        b" WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 AND granted) ORDER BY part",
        (LOCK_CLASS,),
    ).fetchall()
    return [int(row[0]) for row in rows]


def take(con: psycopg.Connection[Any], part: int, address: str) -> int | None:
    """Take ``part`` if no session holds it (for a standby): return its new epoch, or None."""
    if not _try_lock(con, part):
        return None
    return _bump(con, part, address)


def take_orphan(
    con: psycopg.Connection[Any], address: str, wanted: Iterable[int] | None = None
) -> tuple[int, int] | None:
    """Take the first known part (of ``wanted``, or any) whose owner is gone: return (part, epoch), or None."""
    known = orphans(con)
    if wanted is not None:
        allowed = set(wanted)
        known = [part for part in known if part in allowed]
    for part in known:
        epoch = take(con, part, address)
        if epoch is not None:
            return part, epoch
    return None


def reclaim(con: psycopg.Connection[Any], part: int, epoch: int, where: str) -> None:
    """On a new session, take ``part`` again with the ``epoch`` held before.

    Raises `PartLost` if another server holds the part or its epoch moved on.
    """
    if not _try_lock(con, part):
        raise PartLost(f"{where}: another server holds the part")
    row = con.execute(b"SELECT epoch, address FROM dbqueue_parts WHERE part = %s", (part,)).fetchone()
    if row is None or int(row[0]) != epoch:
        con.execute(_UNLOCK, (LOCK_CLASS, part))
        owner = row[1] if row else "nobody"
        raise PartLost(f"{where}: the part was taken over (now epoch {row[0] if row else '?'}, by {owner})")


def members(con: psycopg.Connection[Any]) -> list[str]:
    """Each part's owner's address, part ``i`` at index ``i`` (an empty string for a part never claimed)."""
    rows = con.execute(b"SELECT part, address FROM dbqueue_parts ORDER BY part").fetchall()
    if not rows:
        return []
    found = [""] * (int(rows[-1][0]) + 1)
    for part, address in rows:
        found[int(part)] = str(address)
    return found

"""Reading what a store holds: its queues and messages, with every payload checked against its checksum.

Theory of operation
-------------------
`read` turns the tables into `Contents`: the queues in creation order, each
with its live messages in the order they were added, the first free id, and
the ids of messages whose payload fails its checksum (`store.checksums`).
Rows are read in one pass per table and sorted per queue by (``seq``, id):
a pack's members share its ``seq`` and follow in id order.

It reads every format version (`store.schema`): version 1 has no pack
tables, version 2 no checksums (its payloads are taken as they are), version
3 no enqueue times, origins or visibility timeouts (read as 0, none and 0),
version 4 no queue annotations (read as b""). The
`Store` reads only the current version, having upgraded the file at open;
`store.check` reads any version without changing it.

Damaged payloads are left out of the queues and listed in ``damaged``: the
caller decides whether that stops a start (`Store.load`) or is reported
(`store.check`). With ``tolerant``, a table SQLite cannot read to the end
(a corrupt B-tree) keeps the rows read before the fault and the fault goes
to ``problems``; otherwise the `sqlite3.Error` propagates.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..core.journal import Origin, StoredMessage, StoredQueue
from .checksums import pack_crc, row_crc
from .packs import unpacked


@dataclass(frozen=True, slots=True)
class Contents:
    """What `read` found: the intact queues and messages, the damaged ids, and faults met while reading."""

    queues: list[StoredQueue]
    next_id: int
    damaged: list[int]  # ids of live messages whose payload fails its checksum, in increasing order
    problems: list[str]  # tables that could not be read to the end (only with ``tolerant``)


def read(con: sqlite3.Connection, version: int, tolerant: bool = False) -> Contents:
    """Read every queue and live message of the version ``version`` store behind ``con``.

    Raises `sqlite3.Error` if SQLite fails (unless ``tolerant``), and `KeyError`
    (the qid) if a message refers to a queue that is not stored.
    """
    problems: list[str] = []
    checked = version >= 3
    timed = version >= 4
    visibility = "visibility_timeout_ms" if timed else "0"
    annotations = "annotations" if version >= 5 else "x''"
    queues = con.execute(
        f"SELECT qid, name, capacity, max_deliveries, dead_letter, {visibility}, {annotations} FROM queues ORDER BY qid"
    ).fetchall()
    # (seq, id, message, enqueue time) for each queue, to sort; the dead letters' origins by queue.
    by_qid: dict[int, list[tuple[int, int, StoredMessage, int]]] = {row[0]: [] for row in queues}
    origins: dict[int, dict[int, Origin]] = {row[0]: {} for row in queues}
    damaged: list[int] = []
    max_id = 0
    crc = "crc" if checked else "0"
    try:
        extra = (
            "enqueued_ms, origin_queue, origin_id, origin_enqueued_ms, origin_deliveries"
            if timed
            else "0, NULL, 0, 0, 0"
        )
        rows = con.execute(f"SELECT seq, qid, id, data, deliveries, due_ms, {crc}, {extra} FROM messages")
        for seq, qid, id_, data, deliveries, due_ms, stored_crc, enqueued_ms, source, *origin in rows:
            max_id = max(max_id, id_)
            if checked and row_crc(id_, data) != stored_crc:
                damaged.append(id_)
            else:
                _queue(by_qid, qid, id_, problems, tolerant).append(
                    (seq, id_, (id_, data, deliveries, due_ms), enqueued_ms)
                )
                if source is not None and qid in origins:
                    origins[qid][id_] = Origin(source, *origin)
    except sqlite3.DatabaseError as exc:
        if not tolerant:
            raise
        problems.append(f"messages: unreadable past id {max_id} ({exc})")
    if version >= 2:
        max_id = max(max_id, _read_packs(con, checked, timed, by_qid, damaged, problems, tolerant))
    (reserved,) = con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
    for messages in by_qid.values():
        messages.sort(key=_order)
    damaged.sort()
    return Contents(
        queues=[
            StoredQueue(
                name,
                cap,
                maxd,
                dlq,
                [message for _, _, message, _ in by_qid[qid]],
                visibility_ms,
                [enqueued_ms for _, _, _, enqueued_ms in by_qid[qid]] if timed else [],
                origins[qid],
                bytes(notes),
            )
            for qid, name, cap, maxd, dlq, visibility_ms, notes in queues
        ],
        next_id=max(int(reserved), max_id + 1, 1),
        damaged=damaged,
        problems=problems,
    )


def _read_packs(
    con: sqlite3.Connection,
    checked: bool,
    timed: bool,
    by_qid: dict[int, list[tuple[int, int, StoredMessage, int]]],
    damaged: list[int],
    problems: list[str],
    tolerant: bool,
) -> int:
    # Each pack's live members into ``by_qid`` (or ``damaged``); return the highest id a pack was written with.
    max_id = 0
    crc = "crc" if checked else "0"
    try:
        gone = dict(con.execute("SELECT slot, gone FROM pack_gone"))
        enqueued = "enqueued_ms" if timed else "0"
        rows = con.execute(f"SELECT slot, first_id, qid, seq, count, sizes, data, {crc}, {enqueued} FROM packs")
        for slot, first_id, qid, seq, count, sizes, data, stored_crc, enqueued_ms in rows:
            max_id = max(max_id, first_id + count - 1)
            bits = int.from_bytes(gone.get(slot, b""), "little")
            if bits == (1 << count) - 1:
                continue  # a free slot: nothing in it is served
            intact = len(sizes) == 4 * count and (not checked or pack_crc(first_id, sizes, data) == stored_crc)
            if intact:
                _queue(by_qid, qid, first_id, problems, tolerant).extend(
                    unpacked(first_id, seq, sizes, data, bits, enqueued_ms)
                )
            else:  # its members can no longer be told apart: every live one is damaged
                damaged += [first_id + i for i in range(count) if not bits >> i & 1]
    except sqlite3.DatabaseError as exc:
        if not tolerant:
            raise
        problems.append(f"packs: unreadable ({exc})")
    return max_id


def _order(entry: tuple[int, int, StoredMessage, int]) -> tuple[int, int]:
    # (seq, id) is unique: the messages themselves are never compared.
    return entry[0], entry[1]


def _queue(
    by_qid: dict[int, list[tuple[int, int, StoredMessage, int]]],
    qid: int,
    id_: int,
    problems: list[str],
    tolerant: bool,
) -> list[tuple[int, int, StoredMessage, int]]:
    # The list of queue ``qid``; for a queue that is not stored, KeyError or (tolerant) a problem and a list to drop.
    messages = by_qid.get(qid)
    if messages is not None:
        return messages
    if not tolerant:
        raise KeyError(qid)
    problems.append(f"message {id_}: refers to queue {qid}, which is not stored")
    return []


def describe_ids(ids: list[int], limit: int = 20) -> str:
    """Sorted ``ids`` for a message: runs of consecutive ids as ranges, at most ``limit`` of them."""
    runs: list[str] = []
    start = 0
    while start < len(ids) and len(runs) < limit:
        end = start
        while end + 1 < len(ids) and ids[end + 1] == ids[end] + 1:
            end += 1
        runs.append(str(ids[start]) if end == start else f"{ids[start]}-{ids[end]}")
        start = end + 1
    more = len(ids) - start
    return ", ".join(runs) + (f" and {more} more" if more else "")

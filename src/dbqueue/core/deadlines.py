"""In-flight deadlines, kept in lanes: one FIFO per timeout value, swept by one call.

Theory of operation
-------------------
Every read with a timeout gives what it hands out a deadline; `Broker.expire`
takes the due ones back from one timer, never a timer per message. Deadlines
come in lanes, one per timeout value: reads with the same timeout join their
lane in deadline order, since time only moves forward, so a deadline costs an
append and a pop, however many messages are in flight (a heap would sift a new
1 s deadline past a million 10-minute ones). A small heap orders the lanes by
their first deadline.

Each lane entry, a (deadline, lease, record or block) tuple, takes a new
*lease* number, which breaks ties in arrival order; a record's or block's
``lease`` names its one live lane entry (0: none), so a lane entry is stale as
soon as what it holds is confirmed, requeued, touched or purged. Stale lane
entries stay behind and are skipped by the sweep; `DeadlineLanes.keep_live`
drops them, and the broker calls it whenever they outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from itertools import repeat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .queue import Entry

__all__ = ["DeadlineLanes"]


class DeadlineLanes:
    """In-flight deadlines: a FIFO of lane entries, (deadline, lease, record or block), per timeout
    value, and a heap of each non-empty lane's first deadline. Iterating gives every lane entry."""

    __slots__ = ("lanes", "heads", "size")

    def __init__(self) -> None:
        self.lanes: dict[int, deque[tuple[float, int, Entry]]] = {}
        self.heads: list[tuple[float, int]] = []  # (first deadline, timeout_ms) of each non-empty lane
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[float, int, Entry]]:
        for lane in self.lanes.values():
            yield from lane

    def push(self, timeout_ms: int, deadline: float, lease: int, entry: Entry) -> None:
        """Add a lane entry. (`Broker.set_deadline` inlines the case of a lane already there, a read's
        usual one; the broker's model test, tests/core/test_broker_model.py, holds both to one result.)"""
        lane = self.lanes.get(timeout_ms)
        if lane is None:
            lane = self.lanes[timeout_ms] = deque()
            heapq.heappush(self.heads, (deadline, timeout_ms))
        lane.append((deadline, lease, entry))
        self.size += 1

    def push_many(self, timeout_ms: int, deadline: float, lease: int, entries: list[Entry]) -> None:
        """One deadline and lease for several entries (a batch read): a tie keeps their read order."""
        lane = self.lanes.get(timeout_ms)
        if lane is None:
            lane = self.lanes[timeout_ms] = deque()
            heapq.heappush(self.heads, (deadline, timeout_ms))
        lane.extend(zip(repeat(deadline), repeat(lease), entries))
        self.size += len(entries)

    def pop_due(self, now: float) -> list[tuple[float, int, Entry]]:
        """Remove and return every lane entry due by ``now``, in (deadline, lease) order."""
        due: list[tuple[float, int, Entry]] = []
        heads = self.heads
        while heads and heads[0][0] <= now:
            timeout_ms = heapq.heappop(heads)[1]
            lane = self.lanes[timeout_ms]
            while lane and lane[0][0] <= now:
                due.append(lane.popleft())
            if lane:
                heapq.heappush(heads, (lane[0][0], timeout_ms))
            else:
                del self.lanes[timeout_ms]  # a lane per timeout value ever used would pile up
        self.size -= len(due)
        due.sort(key=_deadline_and_lease)
        return due

    def next_deadline(self) -> float | None:
        return self.heads[0][0] if self.heads else None

    def keep_live(self) -> None:
        """Drop every stale lane entry: O(lane entries), not O(records)."""
        lanes = {}
        for timeout_ms, lane in self.lanes.items():
            live = deque(entry for entry in lane if entry[2].lease == entry[1])
            if live:
                lanes[timeout_ms] = live
        self.lanes = lanes
        self.heads = [(lane[0][0], timeout_ms) for timeout_ms, lane in lanes.items()]
        heapq.heapify(self.heads)
        self.size = sum(map(len, lanes.values()))


def _deadline_and_lease(entry: tuple[float, int, Entry]) -> tuple[float, int]:
    return entry[0], entry[1]

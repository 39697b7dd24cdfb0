"""The console's samples: every queue's depth and rates over the last hour, kept once for every viewer.

Theory of operation
-------------------
One `Sampler` per HTTP listener. While the listener runs, one timer of the
event loop ticks once a second (`Sampler.start`, `Sampler.stop`; never a
task or a timer per viewer or per queue). A tick reads each queue's gauges
(ready, in flight, delayed) and cumulative counters (sent, confirmed,
requeued, dead-lettered) straight from the broker's `Queue` objects, and
writes one sample per queue: the gauges as they are, the counters as the
difference from the last tick. Nothing is measured per message or per
request, so the hot path of the server pays nothing for the console; a tick
costs a few attribute reads per queue.

Samples go into two rings per queue (`History`), fixed arrays of 32-bit
numbers written in place, so memory never grows with time:

* the *fine* ring: one sample a second, the last `FINE_SAMPLES` seconds (the
  overview's sparklines and its per-second rates);
* the *coarse* ring: one sample every `COARSE_STEP` seconds, the last
  `COARSE_SAMPLES` of them, an hour (the queue page's charts). A coarse sample
  holds the gauges at the end of its step and the sum of its counters.

A queue costs `BYTES_PER_QUEUE` bytes of samples (plus a few hundred bytes of
Python objects). At most ``max_queues`` queues are sampled (by default
`MAX_SAMPLED_QUEUES`, so the samples stay under 14 MiB whatever the server
holds); a queue beyond it is shown without history. A queue deleted loses its
history at the next tick; one deleted and made again under its name starts
afresh (its `Queue` object is new).

What viewers are sent is built from the samples once per tick, whatever the
number of viewers: `overview` serializes the overview (every queue's figures,
rates and sparkline) on the first request of a tick and hands the same bytes
to every other request and every open event stream until the next tick (a
queue's page likewise, in `cache`); a stream waits on `next_tick`, one future
shared by all of them. A hundred
open consoles cost a hundred writes of the same bytes a second, not a
hundred walks of the broker.

Samples are of the broker the server holds at each tick: after a failed
commit the server reloads its store into a new broker (`Server._reload`), and
the next tick follows it (queues found by name, their counters compared
afresh).
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections.abc import Callable
from typing import Any

from ...core import Broker, Queue

__all__ = [
    "BYTES_PER_QUEUE",
    "COARSE_SAMPLES",
    "COARSE_STEP",
    "FIELDS",
    "FINE_SAMPLES",
    "MAX_SAMPLED_QUEUES",
    "RATE_WINDOW",
    "History",
    "Sampler",
]

FIELDS = ("ready", "in_flight", "delayed", "sent", "confirmed", "requeued", "dead_lettered")
"""A sample's numbers, in order: three gauges, then four counters' increase over the sample's step."""

GAUGES = 3
FINE_SAMPLES = 120  # one a second: two minutes
COARSE_STEP = 10  # seconds a coarse sample covers
COARSE_SAMPLES = 360  # an hour of coarse samples
SPARKLINE = 60  # seconds of the fine ring a sparkline shows
RATE_WINDOW = 5  # seconds the overview's per-second rates are averaged over
MAX_SAMPLED_QUEUES = 1000
_WIDTH = len(FIELDS)  # `_store` writes this many numbers, one by one
_CEILING = 0xFFFFFFFF  # a 32-bit slot holds at most this (a count beyond is shown as this)

BYTES_PER_QUEUE = (FINE_SAMPLES + COARSE_SAMPLES) * _WIDTH * 4
"""The samples of one queue, in bytes: both rings' 32-bit numbers."""


class History:
    """The samples of one queue: a fine and a coarse ring, and the counters of its last tick."""

    __slots__ = ("queue", "fine", "coarse", "last", "step", "ticks")

    def __init__(self, queue: Queue, new: bool = False) -> None:
        self.queue = queue
        self.fine = array("I", bytes(FINE_SAMPLES * _WIDTH * 4))
        self.coarse = array("I", bytes(COARSE_SAMPLES * _WIDTH * 4))
        # A queue made since the last tick did all it counts within this step; one older than the sampler
        # did it before: its totals are no step's increase.
        self.last = [0] * (_WIDTH - GAUGES) if new else _counters(queue)
        self.step = [0] * (_WIDTH - GAUGES)  # the counters' increase within the coarse step under way
        self.ticks = 0  # samples written to the fine ring

    def sample(self) -> None:
        """Write this second's sample of the queue; every `COARSE_STEP`-th also closes a coarse sample.

        Written for speed (it runs for every queue every second): attributes read once, numbers
        stored one by one, and the clamp to 32 bits paid only by a number that needs it.
        """
        queue = self.queue
        counters = [queue.enqueued, queue.confirmed, queue.requeued, queue.dead_lettered]
        last = self.last
        self.last = counters
        sample = [
            queue.ready,
            queue.in_flight,
            queue.delayed,
            counters[0] - last[0],
            counters[1] - last[1],
            counters[2] - last[2],
            counters[3] - last[3],
        ]
        step = self.step
        step[0] += sample[3]
        step[1] += sample[4]
        step[2] += sample[5]
        step[3] += sample[6]
        ticks = self.ticks
        _store(self.fine, (ticks % FINE_SAMPLES) * _WIDTH, sample)
        ticks = self.ticks = ticks + 1
        if ticks % COARSE_STEP == 0:
            _store(self.coarse, ((ticks // COARSE_STEP - 1) % COARSE_SAMPLES) * _WIDTH, sample[:GAUGES] + step)
            self.step = [0, 0, 0, 0]

    def add(self, sample: list[int]) -> None:
        """Write ``sample`` (the numbers of `FIELDS`) as this second's, as `sample` would (for tests)."""
        self.last = [a + b for a, b in zip(self.last, sample[GAUGES:], strict=True)]
        step = self.step
        for index in range(_WIDTH - GAUGES):
            step[index] += sample[GAUGES + index]
        _store(self.fine, (self.ticks % FINE_SAMPLES) * _WIDTH, sample)
        self.ticks += 1
        if self.ticks % COARSE_STEP == 0:
            _store(self.coarse, ((self.ticks // COARSE_STEP - 1) % COARSE_SAMPLES) * _WIDTH, sample[:GAUGES] + step)
            self.step = [0] * (_WIDTH - GAUGES)

    def series(self, ring: str, field: str, count: int | None = None) -> list[int]:
        """The last ``count`` samples (all kept, by default) of ``field`` in ``ring`` ("fine" or "coarse"), oldest
        first; fewer while the queue is younger than the ring."""
        fine = ring == "fine"
        samples, size = (self.fine, FINE_SAMPLES) if fine else (self.coarse, COARSE_SAMPLES)
        written = self.ticks if fine else self.ticks // COARSE_STEP
        kept = min(written, size, size if count is None else count)
        index = FIELDS.index(field)
        return [samples[((written - kept + n) % size) * _WIDTH + index] for n in range(kept)]

    def rate(self, field: str, window: int = RATE_WINDOW) -> float:
        """The counter ``field``'s increase per second over the last ``window`` seconds (0.0 before any)."""
        values = self.series("fine", field, window)
        return sum(values) / len(values) if values else 0.0


def _store(ring: array[int], slot: int, sample: list[int]) -> None:
    # One by one: a fifth of the cost of building an array for a slice.
    try:
        ring[slot] = sample[0]
        ring[slot + 1] = sample[1]
        ring[slot + 2] = sample[2]
        ring[slot + 3] = sample[3]
        ring[slot + 4] = sample[4]
        ring[slot + 5] = sample[5]
        ring[slot + 6] = sample[6]
    except OverflowError:  # a count past 32 bits (shown as the ceiling), or a counter that went back (as 0)
        ring[slot : slot + _WIDTH] = array("I", [max(0, min(value, _CEILING)) for value in sample])


def _counters(queue: Queue) -> list[int]:
    return [queue.enqueued, queue.confirmed, queue.requeued, queue.dead_lettered]


class Sampler:
    """Samples every queue of ``broker()`` once a second while started; serves what the console shows of them.

    ``broker`` returns the broker the server holds now (it may replace it,
    see the module's docstring); ``describe`` returns the overview's figures
    that are not samples (the server's `stats`: every queue's options,
    consumers, waiting reads, oldest ready age); ``wall`` is the wall clock
    the samples are stamped with; ``finish``, if given, completes the overview
    (the group's figures, `group`) before it is serialized.
    """

    def __init__(
        self,
        broker: Callable[[], Broker],
        describe: Callable[[], dict[str, Any]],
        *,
        max_queues: int = MAX_SAMPLED_QUEUES,
        wall: Callable[[], float] = time.time,
        finish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.broker = broker
        self.describe = describe
        self.finish = finish
        self.max_queues = max_queues
        self.wall = wall
        self.histories: dict[bytes, History] = {}
        self.ticks = 0
        self.sampled_at = 0.0  # wall-clock time of the last tick
        self._timer: asyncio.TimerHandle | None = None
        self._next: asyncio.Future[bool] | None = None
        self._overview: bytes | None = None  # the overview of this tick, once someone asked for it
        self.cache: dict[bytes, bytes] = {}  # other answers built from this tick's samples, by the caller's key

    # --- the timer -------------------------------------------------------------------

    def start(self) -> None:
        """Sample now, then once a second on the running loop, until `stop`."""
        loop = asyncio.get_running_loop()
        self.tick()
        self._schedule(loop, loop.time() + 1.0)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._fire, loop, when)

    def _fire(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.tick()
        # The next tick a second after this one was due, so a late tick does not shift every later one;
        # after a long stall (a loop held up for seconds), from now.
        following = when + 1.0
        if following < loop.time():
            following = loop.time() + 1.0
        self._schedule(loop, following)

    def stop(self) -> None:
        """Stop ticking and end every open event stream (their `next_tick` answers False)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._next is not None and not self._next.done():
            self._next.set_result(False)
        self._next = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def next_tick(self) -> asyncio.Future[bool]:
        """A future shared by every waiter: True at the next tick, False when the sampler stops."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
            if not self.running:
                self._next.set_result(False)
        return self._next

    # --- sampling --------------------------------------------------------------------

    def tick(self) -> None:
        """Take one sample of every queue (at most ``max_queues`` of them) and wake every waiter."""
        queues = self.broker().queues
        histories = self.histories
        for name in [name for name, history in histories.items() if queues.get(name) is not history.queue]:
            del histories[name]  # deleted, or deleted and made again: its history ends
        for name, queue in queues.items():
            history = histories.get(name)
            if history is None:
                if len(histories) >= self.max_queues:
                    continue
                history = histories[name] = History(queue, new=self.ticks > 0)
            history.sample()
        self.ticks += 1
        self.sampled_at = self.wall()
        self._overview = None
        self.cache.clear()
        waiting = self._next
        if waiting is not None and not waiting.done():
            self._next = None
            waiting.set_result(True)

    # --- what viewers see ------------------------------------------------------------

    def overview(self) -> bytes:
        """The overview as JSON, built at most once per tick: the server, and every queue's figures, rates and
        sparkline (the last `SPARKLINE` seconds of ready plus in-flight messages)."""
        if self._overview is None:
            self._overview = json.dumps(self.overview_data(), separators=(",", ":")).encode()
        return self._overview

    def overview_data(self) -> dict[str, Any]:
        """The overview before serialization (see `overview`)."""
        described = self.describe()
        queues = []
        for figures in described.get("queues", []):
            key = figures.pop("key")
            history = self.histories.get(key)
            if history is not None:
                ready = history.series("fine", "ready", SPARKLINE)
                in_flight = history.series("fine", "in_flight", SPARKLINE)
                figures["sparkline"] = [a + b for a, b in zip(ready, in_flight, strict=True)]
                figures["rates"] = {
                    field: round(history.rate(field), 2) for field in ("sent", "confirmed", "requeued", "dead_lettered")
                }
            else:
                figures["sparkline"] = None
                figures["rates"] = None
            figures["key"] = key.hex()
            queues.append(figures)
        described["queues"] = queues
        described["sampled_at"] = self.sampled_at
        described["tick"] = self.ticks
        if self.finish is not None:
            self.finish(described)
        return described

    def unsampled(self, name: bytes) -> str:
        """Why queue ``name`` has no samples: it is over ``max_queues``, or too new for a tick to have seen it."""
        if len(self.histories) >= self.max_queues:
            return f"over the console's limit of {self.max_queues} sampled queues"
        return "made since the last sample: its first comes within a second"

    def history(self, name: bytes) -> dict[str, Any] | None:
        """The queue ``name``'s samples, every field of both rings, oldest first (None: not sampled)."""
        history = self.histories.get(name)
        if history is None:
            return None
        return {
            "sampled_at": self.sampled_at,
            "fine": {"step": 1, **{field: history.series("fine", field) for field in FIELDS}},
            "coarse": {"step": COARSE_STEP, **{field: history.series("coarse", field) for field in FIELDS}},
        }

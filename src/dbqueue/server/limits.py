"""Every limit and tuning setting of a server, each written once with its default, bounds, unit and help.

Theory of operation
-------------------
`Limits` is a frozen dataclass: one field per setting, its default the
field's default, and its meaning in the field's metadata (a `LimitSpec`: help
text, unit, lowest and highest value, what its "off" value means). Nothing
else in the package repeats a default or a bound:

* the `Server` takes a `Limits` and reads its fields (``Server(limits=
  Limits(max_in_flight=10))``);
* ``dbqueue serve`` makes one command-line option per field from
  `limit_fields` (``max_in_flight`` -> ``--max-in-flight MESSAGES``), with
  the bounds as the option's range, and builds a `Limits` from them;
  ``serve --workers N`` hands the same options on to every worker;
* the README's limits table is checked against `limit_fields` by a test.

A `Limits` checks its values against the bounds when it is made, so a
server is never built with a limit the command line would have refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..protocol.frames import DEFAULT_MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE_LIMIT, MAX_QUEUE_NAME, NEVER_MS

__all__ = ["LimitSpec", "LimitField", "Limits", "cgroup_memory_limit", "limit_fields"]

Number = int | float


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What one `Limits` field means: help text, unit, the values it may take, and what "off" is.

    ``off`` names what the field's off value means (None, or 0 for a count
    whose ``low`` is 0), as in "unbounded"; a field without it has no off value.
    """

    help: str
    unit: str  # "bytes", "seconds", or what the field counts ("messages", "connections", ...)
    low: Number
    high: Number | None = None
    off: str | None = None
    # A default sized from the machine, in words ("half of the memory"). The machine's memory is the smaller of
    # its physical memory and its cgroup's limit (`cgroup_memory_limit`): in a container, the container's.
    default_text: str | None = None


def _limit(default: Any, spec: LimitSpec) -> Any:
    # A field whose metadata carries its LimitSpec. Typed Any so that the dataclass sees the field's
    # own annotation as its type (a wrapper around `field` is not a field specifier to mypy).
    return field(default=default, metadata={"spec": spec})


_MIB = 1 << 20


def _physical_memory() -> int:
    # The memory the server may use, for the defaults sized from it: the machine's (a guess of 4 GiB where it
    # cannot be read), or its cgroup's limit if lower. In a container with a memory limit the machine's memory is
    # the host's, and a budget sized from it would let the kernel kill the server before a send is refused.
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        machine = 4 << 30
    limit = cgroup_memory_limit()
    return machine if limit is None else min(machine, limit)


def cgroup_memory_limit(root: str = "/") -> int | None:
    """The smallest memory limit set on this process's cgroup or any cgroup above it, in bytes; None if there is
    none, or it cannot be read.

    Reads ``/proc/self/cgroup`` for the process's own cgroup, then ``memory.max`` (cgroup v2, where "max" means
    none) or ``memory.limit_in_bytes`` (v1, where no limit reads as a huge number: a caller takes the smaller of
    this and the machine's memory) from that cgroup's directory up to its hierarchy's root: a parent's limit binds
    its children too, and a container that sees only its own cgroup (mounted as the root, while
    ``/proc/self/cgroup`` names its path on the host) finds its limit at the root. ``root`` is where the
    filesystem starts (tests give a directory of fake files). Raises nothing.
    """
    try:
        with open(os.path.join(root, "proc/self/cgroup"), encoding="ascii", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:  # v2: one hierarchy, every controller
            base, name = os.path.join(root, "sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [part for part in path.split("/") if part and part != ".."]
        for depth in range(len(parts), -1, -1):
            limit = _read_limit(os.path.join(base, *parts[:depth], name))
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _read_limit(path: str) -> int | None:
    # One cgroup's limit: None where there is no such file (the v2 root has none) or it says "max".
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _default_memory_budget() -> int:
    return _physical_memory() // 2


def _default_output_total() -> int:
    return _physical_memory() // 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """A server's limits and tuning settings; every field has the default a plain `dbqueue serve` uses.

    Raises `ValueError` when a value lies outside its field's bounds, `TypeError` for an unknown field.
    """

    max_message_size: int = _limit(
        DEFAULT_MAX_MESSAGE_SIZE,
        LimitSpec(
            "Largest message accepted, checked at the frame header before the body is buffered",
            "bytes",
            1,
            MAX_MESSAGE_SIZE_LIMIT,
        ),
    )
    default_capacity: int = _limit(
        0, LimitSpec("Capacity of queues created without one", "messages", 0, off="unbounded")
    )
    max_queues: int = _limit(10_000, LimitSpec("Queues the server holds at most", "queues", 1))
    max_queue_name: int = _limit(MAX_QUEUE_NAME, LimitSpec("Longest queue name accepted", "bytes", 1, MAX_QUEUE_NAME))
    max_connections: int = _limit(
        16_384,
        LimitSpec("Open connections at most (raise the process's file limit to match)", "connections", 1),
    )
    max_in_flight: int = _limit(
        100_000,
        LimitSpec("Messages one connection may hold in flight; a read beyond it gets LimitExceeded", "messages", 1),
    )
    max_output_buffer: int = _limit(
        64 * _MIB,
        LimitSpec("Unread replies after which a connection is cut off and its messages go back", "bytes", 1),
    )
    max_output_total: int = _limit(
        _default_output_total(),
        LimitSpec(
            "Unread replies over all connections; past it the largest offenders are cut off first",
            "bytes",
            1,
            default_text="1/8 of the machine's memory",
        ),
    )
    memory_budget: int = _limit(
        _default_memory_budget(),
        LimitSpec(
            "Queued payload bytes over all queues; at the budget sends get OverMemoryBudget while reads and "
            "confirms go on",
            "bytes",
            1,
            default_text="1/2 of the machine's memory",
        ),
    )
    default_capacity_bytes: int = _limit(
        0, LimitSpec("Payload bytes a queue holds at most (ready, in flight, delayed)", "bytes", 0, off="unbounded")
    )
    default_visibility_timeout: float = _limit(
        30.0,
        LimitSpec(
            "Visibility timeout of queues created without one: a message read and not confirmed in time "
            "goes back to its queue",
            "seconds",
            0.001,
            float(0xFFFFFFFE) / 1000.0,
        ),
    )
    max_waiting_reads: int = _limit(
        100_000,
        LimitSpec("Waiting reads one connection may park; one more gets LimitExceeded", "reads", 1),
    )
    handshake_timeout: float = _limit(
        5.0,
        LimitSpec("Time a new connection has to finish its TLS handshake and, with a token, its Hello", "seconds", 0.1),
    )
    max_unauthenticated: int = _limit(
        1024,
        LimitSpec(
            "Connections still in their handshake at once; kept below max_connections so that strangers "
            "cannot take every place",
            "connections",
            1,
        ),
    )
    idle_timeout: float | None = _limit(
        None,
        LimitSpec(
            "Close connections that send nothing this long (a waiting read is not idle)", "seconds", 0.01, off="off"
        ),
    )
    backlog: int = _limit(
        4096, LimitSpec("Connections the kernel queues before the server accepts them", "connections", 1)
    )
    sweep_resolution: float = _limit(
        0.01,
        LimitSpec("Deadlines are swept at most this often: timeouts fire up to this late", "seconds", 0.001, 1.0),
    )
    reclaim_interval: float = _limit(
        1.0, LimitSpec("Time between two rounds of giving freed store pages back (--data-dir)", "seconds", 0.01)
    )
    reclaim_pages: int = _limit(
        256, LimitSpec("Freed store pages given back per round at most (--data-dir)", "pages", 1)
    )

    @property
    def default_visibility_ms(self) -> int:
        """`default_visibility_timeout` in the wire's milliseconds, rounded up (at least 1, below `NEVER_MS`)."""
        return min(NEVER_MS - 1, max(1, math.ceil(self.default_visibility_timeout * 1000.0)))

    def __post_init__(self) -> None:
        for described in limit_fields():
            value = getattr(self, described.name)
            spec = described.spec
            if value is None and described.default is None:
                continue
            if isinstance(value, bool) or not isinstance(value, described.kind | int):
                raise TypeError(f"{described.name} must be a {described.kind.__name__}, got {value!r}")
            if value < spec.low or (spec.high is not None and value > spec.high):
                top = "" if spec.high is None else f" .. {spec.high}"
                raise ValueError(f"{described.name} must be {spec.low}{top} ({spec.unit}), got {value!r}")


@dataclass(frozen=True, slots=True)
class LimitField:
    """One field of `Limits` described: its name, its type without None, its default and its `LimitSpec`."""

    name: str
    kind: type[int] | type[float]
    default: Number | None
    spec: LimitSpec

    def describe(self, value: Number | None) -> str:
        """``value`` as a person reads it: "1 MiB", "100,000", "0.01 s", or the spec's word for off."""
        if self.spec.off is not None and value in (None, 0):
            return self.spec.off
        if self.spec.default_text is not None and value == self.default:
            return self.spec.default_text
        assert value is not None  # only a field with an off word defaults to None
        if self.spec.unit == "bytes":
            for size, name in ((1 << 30, "GiB"), (_MIB, "MiB"), (1 << 10, "KiB")):
                if value >= size and value % size == 0:
                    return f"{value // size:,} {name}"
            return f"{value:,} bytes"
        if self.spec.unit == "seconds":
            return f"{value:g} s"
        return f"{value:,}"


@functools.cache
def limit_fields() -> tuple[LimitField, ...]:
    """Every field of `Limits`, in order, with its type, default and `LimitSpec`."""
    hints = typing.get_type_hints(Limits)
    return tuple(
        LimitField(item.name, _kind(hints[item.name]), typing.cast(Number | None, item.default), item.metadata["spec"])
        for item in dataclasses.fields(Limits)
    )


def _kind(hint: Any) -> type[int] | type[float]:
    # `int`, `float` or `float | None`: the type a value takes when the setting is on.
    if isinstance(hint, types.UnionType):
        (hint,) = [arg for arg in hint.__args__ if arg is not type(None)]
    if hint not in (int, float):
        raise TypeError(f"a Limits field must be an int or a float (or None), not {hint!r}")
    return hint  # type: ignore[no-any-return]  # narrowed to int or float by the check above

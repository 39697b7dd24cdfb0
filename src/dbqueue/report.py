"""Terminal output for the CLI: progress bars and result tables (rich), and the `stats --watch` screen.

The watch screen is made by pure functions (`watch_frame` and its helpers)
that take the figures and return lines of text, so that a test can check
what a person would see, at any width, without a terminal. Everything a
server names (queue names are any UTF-8) passes through `printable` first:
a name holding a terminal escape sequence must not reach the terminal.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len, get_character_cell_size
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .protocol.messages import Message, Origin, PeekedMessage

if TYPE_CHECKING:
    from .loadtest import BenchResult

__all__ = [
    "Sample",
    "abbreviate",
    "bench_table",
    "fit_age",
    "fit_number",
    "message_json",
    "peek_lines",
    "plural",
    "render_data",
    "printable",
    "progress_bar",
    "queue_rates",
    "queue_details",
    "queue_lines",
    "watch_frame",
]


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one: ``1 message``, ``2 messages``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


ELLIPSIS = "…"


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)`` drawing a progress bar on stderr."""
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True)
    ) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def bench_table(result: BenchResult, title: str) -> None:
    """Print a benchmark result as a table."""
    figures = result.as_dict()
    table = Table(title=f"{result.system} {title}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("requests", f"{figures['requests']:,}")
    table.add_row("messages confirmed", f"{figures['messages']:,}")
    table.add_row("elapsed", f"{figures['seconds']:.3f} s")
    table.add_row("requests/s", f"{figures['requests_per_second']:,.0f}")
    table.add_row("messages/s", f"{figures['messages_per_second']:,.0f}")
    unit = {"round trips": "request", "fan-in": "round trip"}.get(title, "batch")
    table.add_row(f"latency per {unit} p50", f"{figures['p50_ms']:.3f} ms")
    table.add_row(f"latency per {unit} p99", f"{figures['p99_ms']:.3f} ms")
    table.add_row(f"latency per {unit} p99.9", f"{figures['p999_ms']:.3f} ms")
    table.add_row(
        "client CPU", f"{figures['client_cpu_seconds']:.2f} s ({figures['client_cpu_percent']:.0f}% of one core)"
    )
    Console().print(table)


# --- the watch screen ----------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with every control, format or unassigned character (escape sequences, bidi overrides,
    line breaks) replaced by ``?``: safe to put on a terminal."""
    return "".join(
        "?" if unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp") else char
        for char in text
    )


def abbreviate(text: str, width: int) -> str:
    """``text`` (made `printable`) in at most ``width`` terminal cells, its middle replaced by an ellipsis
    if it is longer: the start and the end of a name are what tell names apart."""
    text = printable(text)
    if cell_len(text) <= width:
        return text
    if width < 1:
        return ""
    room = width - 1
    head = _take(text, (room + 1) // 2)
    tail = _take(text[::-1], room - cell_len(head))[::-1]
    return head + ELLIPSIS + tail


def _take(text: str, cells: int) -> str:
    """The longest start of ``text`` that fits in ``cells`` terminal cells."""
    used = 0
    for position, char in enumerate(text):
        used += get_character_cell_size(char)
        if used > cells:
            return text[:position]
    return text


def _clip(text: str, width: int) -> str:
    """``text`` cut at the end, with an ellipsis, to fit ``width`` cells."""
    text = printable(text)
    if cell_len(text) <= width:
        return text
    return _take(text, width - 1) + ELLIPSIS if width >= 1 else ""


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - cell_len(text))


_SCALES = ("k", "M", "G", "T", "P", "E", "Z", "Y")


def fit_number(value: float | None, width: int) -> str:
    """``value`` in at most ``width`` characters: ``12,345``, else ``12.3M``; ``-`` for None or a
    negative value (a counter that went back: the server restarted). Rates under ten keep a decimal."""
    if value is None or value < 0:
        return "-"
    if value == int(value) or value >= 10:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.1f}"
    if len(text) <= width:
        return text
    scaled = float(value)
    for suffix in _SCALES:
        scaled /= 1000
        if round(scaled, 1) < 1000:
            for candidate in (f"{scaled:.1f}{suffix}", f"{scaled:.0f}{suffix}"):
                if len(candidate) <= width:
                    return candidate
    text = f"{value:.0e}".replace("e+", "e")
    return text if len(text) <= width else "#" * width


def fit_age(milliseconds: float | None, width: int = 6) -> str:
    """An age in at most ``width`` (at least 5) characters, as precise as fits: ``0.4s``, ``42s``,
    ``12m05s``, ``3h07m``, ``12d04h``; ``-`` for None or 0 (no ready message, or a server that does
    not say)."""
    if not milliseconds or milliseconds < 0:
        return "-"
    seconds = milliseconds / 1000
    if seconds < 10:
        candidates = [f"{seconds:.1f}s"]
    elif seconds < 60:
        candidates = [f"{seconds:.0f}s"]
    elif seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        candidates = [f"{minutes}m{rest:02}s", f"{minutes}m"]
    elif seconds < 86400:
        hours, rest = divmod(int(seconds), 3600)
        candidates = [f"{hours}h{rest // 60:02}m", f"{hours}h"]
    else:
        days, rest = divmod(int(seconds), 86400)
        candidates = [f"{days}d{rest // 3600:02}h", f"{days}d"]
    return next((text for text in candidates if len(text) <= width), "#" * width)


def _cell(value: Any, field: str, width: int) -> str:
    """A figure of a queue in its column: an age for ``*_age_ms`` fields, else a number."""
    return fit_age(value, width) if field.endswith("_age_ms") else fit_number(value, width)


@dataclass(frozen=True, slots=True)
class Sample:
    """Every queue's figures as one refresh saw them, and when (``time.monotonic()`` seconds)."""

    at: float
    queues: tuple[dict[str, Any], ...]


_RATE_COUNTERS = ("enqueued", "confirmed", "requeued")


def queue_rates(previous: Sample | None, current: Sample) -> dict[str, tuple[float | None, ...]]:
    """Per queue name: messages sent, confirmed and requeued per second between the two samples.

    A rate is None where it cannot be known: no previous sample, a queue new
    since it, or a counter that went back (the server restarted).
    """
    elapsed = current.at - previous.at if previous is not None else 0.0
    before = {stats["name"]: stats for stats in previous.queues} if previous is not None else {}
    rates: dict[str, tuple[float | None, ...]] = {}
    for stats in current.queues:
        old = before.get(stats["name"])
        if old is None or elapsed <= 0 or any(stats[counter] < old[counter] for counter in _RATE_COUNTERS):
            rates[stats["name"]] = (None,) * len(_RATE_COUNTERS)
        else:
            rates[stats["name"]] = tuple((stats[counter] - old[counter]) / elapsed for counter in _RATE_COUNTERS)
    return rates


# (header, width, what it shows): a figure of the queue, or a rate (an index into `queue_rates`).
# Narrow enough that a 66-column screen keeps 7 cells for the names.
_WATCH_COLUMNS: tuple[tuple[str, int, str | int], ...] = (
    ("ready", 7, "ready"),
    ("in flight", 9, "in_flight"),
    ("delayed", 7, "delayed"),
    ("oldest", 6, "oldest_ready_age_ms"),
    ("sent/s", 7, 0),
    ("conf/s", 7, 1),
    ("requeue/s", 9, 2),
)
_MIN_NAME = 8  # cells the queue column of the table keeps however narrow the screen
_MIN_WATCH_NAME = 7  # and of the watch screen


def watch_frame(
    title: str,
    clock: str,
    sample: Sample | None,
    previous: Sample | None,
    status: str,
    *,
    width: int = 80,
    height: int | None = None,
) -> list[str]:
    """The lines of one `stats --watch` screen, each at most ``width`` cells (at least 66).

    ``title`` (the server) and ``clock`` head it; then one row per queue of
    ``sample`` (None: nothing known yet): its messages ready, in flight and
    delayed, the age of its oldest ready message, and its rates since
    ``previous``; a total when there are several (the oldest age of all), and
    ``status`` last. With ``height``, rows that do not fit are counted in a
    line of their own instead.
    """
    name_width = max(_MIN_WATCH_NAME, width - sum(column_width + 1 for _, column_width, _ in _WATCH_COLUMNS))
    lines = [_spread(title, clock, width)]
    lines.append(
        _pad("queue", name_width)
        + "".join(" " + header.rjust(column_width) for header, column_width, _ in _WATCH_COLUMNS)
    )
    queues = sorted(sample.queues, key=lambda stats: str(stats["name"])) if sample is not None else []
    rates = queue_rates(previous, sample) if sample is not None else {}
    rows = [_row(abbreviate(stats["name"], name_width), name_width, stats, rates[stats["name"]]) for stats in queues]
    if len(queues) > 1:
        totals = {key: sum(stats[key] for stats in queues) for key in ("ready", "in_flight", "delayed")}
        totals["oldest_ready_age_ms"] = max(stats.get("oldest_ready_age_ms") or 0 for stats in queues)
        summed = tuple(_sum_known(rate[i] for rate in rates.values()) for i in range(len(_RATE_COUNTERS)))
        total = _row(f"total ({len(queues)} queues)", name_width, totals, summed)
    elif sample is not None and not queues:
        total = _clip("(no queues)", width)
    else:
        total = None
    if height is not None:
        room = max(1, height - len(lines) - 1 - (total is not None))
        if len(rows) > room:
            rows = rows[: room - 1] + [_clip(f"{ELLIPSIS} and {len(rows) - room + 1} more queues", width)]
    lines += rows
    if total is not None:
        lines.append(total)
    lines.append(_clip(status, width))
    return lines


def _sum_known(rates: Iterable[float | None]) -> float | None:
    """The sum of the rates known, or None if none is (a queue new since the last refresh adds nothing yet)."""
    known = [rate for rate in rates if rate is not None]
    return sum(known) if known else None


def _row(label: str, name_width: int, figures: dict[str, Any], rates: tuple[float | None, ...]) -> str:
    cells = [_pad(abbreviate(label, name_width), name_width)]
    for _, column_width, shows in _WATCH_COLUMNS:
        if isinstance(shows, int):
            cells.append(fit_number(rates[shows], column_width).rjust(column_width))
        else:  # .get: a server before protocol 3 does not report the age
            cells.append(_cell(figures.get(shows), shows, column_width).rjust(column_width))
    return " ".join(cells)


def _spread(left: str, right: str, width: int) -> str:
    """``left`` and ``right`` on one line of ``width`` cells, ``left`` abbreviated if they do not fit."""
    right = _clip(right, width)
    room = width - cell_len(right) - 1
    if room < 1:
        return right
    left = abbreviate(left, room)
    return left + " " * (width - cell_len(left) - cell_len(right)) + right


# --- the stats table ------------------------------------------------------------------------------

# (header, width, field): the columns every table has, then those shown while the names keep room.
_STATIC_COLUMNS: tuple[tuple[str, int, str], ...] = (
    ("ready", 9, "ready"),
    ("in flight", 9, "in_flight"),
    ("delayed", 8, "delayed"),
    ("sent", 9, "enqueued"),
    ("confirmed", 9, "confirmed"),
    ("requeued", 8, "requeued"),
)
_OPTIONAL_COLUMNS: tuple[tuple[str, int, str], ...] = (
    ("oldest", 6, "oldest_ready_age_ms"),
    ("dead-lettered", 13, "dead_lettered"),
    ("consumers", 9, "consumers"),
    ("waiting", 7, "waiting"),
    ("purged", 8, "purged"),
    ("capacity", 9, "capacity"),
)
_NAME_ROOM = 20  # cells the queue column keeps before an optional column is added


def queue_lines(rows: Sequence[tuple[str, dict[str, Any] | str | None]], *, width: int = 80) -> list[str]:
    """A table of queue figures in at most ``width`` cells (at least 69): a header, then one line per row.

    Each row is (label, figures): figures as `Client.stats` returns them, a
    string said in place of the figures (a member that is down), or None
    (dashes: a member without that queue). More columns are shown while the
    labels keep room.
    """
    columns = list(_STATIC_COLUMNS)
    used = sum(column_width + 1 for _, column_width, _ in columns)
    for column in _OPTIONAL_COLUMNS:
        if width - used - column[1] - 1 < _NAME_ROOM:
            break
        columns.append(column)
        used += column[1] + 1
    name_width = max(_MIN_NAME, width - used)
    lines = [_pad("queue", name_width) + "".join(" " + header.rjust(size) for header, size, _ in columns)]
    for label, figures in rows:
        cells = _pad(abbreviate(label, name_width), name_width)
        if isinstance(figures, str):
            lines.append(_clip(cells + " " + figures, width))
            continue
        for _, size, field in columns:
            cells += " " + (_cell(figures.get(field), field, size) if figures is not None else "-").rjust(size)
        lines.append(cells)
    return lines


_DETAILS = (
    ("ready", "ready"),
    ("in flight", "in_flight"),
    ("delayed", "delayed"),
    ("consumers", "consumers"),
    ("waiting reads", "waiting"),
    ("sent", "enqueued"),
    ("confirmed", "confirmed"),
    ("requeued", "requeued"),
    ("dead-lettered", "dead_lettered"),
    ("dropped", "dropped"),
    ("purged", "purged"),
)


def queue_details(stats: dict[str, Any]) -> list[str]:
    """One queue's figures and options, a line each (``stats QUEUE``)."""
    shown = [(label, f"{stats[field]:,}") for label, field in _DETAILS if field in stats]
    if "oldest_ready_age_ms" in stats:
        shown.insert(3, ("oldest ready", fit_age(stats["oldest_ready_age_ms"], 15)))
    shown.append(("capacity", f"{stats['capacity']:,}" if stats.get("capacity") else "server default"))
    shown.append(("max deliveries", f"{stats['max_deliveries']:,}" if stats.get("max_deliveries") else "unlimited"))
    if "visibility_timeout_ms" in stats:
        shown.append(("visibility", _duration(stats["visibility_timeout_ms"])))
    if stats.get("dead_letter_queue"):
        shown.append(("dead letters to", printable(str(stats["dead_letter_queue"]))))
    if "members" in stats:
        shown.append(("summed over", f"{stats['members']} members"))
    return [f"queue {printable(str(stats['name']))}"] + [f"  {label + ':':<16} {value:>15}" for label, value in shown]


def _duration(milliseconds: int) -> str:
    """A queue's default visibility timeout as an option reads: ``30 s``, ``1.5 s``, ``never``."""
    if milliseconds >= 0xFFFFFFFF:
        return "never"
    return f"{milliseconds / 1000:g} s"


# --- messages, as `read --json` and `peek` show them -----------------------------------------------

_HEX_BYTES = 16  # a hex dump line's bytes
_HEX_LINES = 16  # lines of hex dump shown at most


def render_data(data: bytes, *, limit: int = 40) -> list[str]:
    """A message's data as lines a person can read, each `printable`: pretty JSON if it is JSON (an
    object or a list), its text if it is UTF-8, else a hex dump (with offsets). At most ``limit``
    lines of text or JSON and `_HEX_LINES` of hex; what is left out is counted in a last line."""
    if not data:
        return ["(empty)"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _hex_lines(data)
    lines: list[str] | None = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            lines = json.dumps(json.loads(text), indent=2, ensure_ascii=False).splitlines()
        except (ValueError, RecursionError):
            lines = None
    if lines is None:
        if any(unicodedata.category(char) == "Cc" and char not in "\t\n\r" for char in text):
            return _hex_lines(data)  # control bytes: text that would not show as it is
        lines = [line.rstrip("\r") for line in text.split("\n")]
    shown = [printable(line.replace("\t", "    ")) for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{ELLIPSIS} {len(lines) - limit} more lines ({len(data):,} bytes in all)")
    return shown


def _hex_lines(data: bytes) -> list[str]:
    lines = []
    for offset in range(0, min(len(data), _HEX_BYTES * _HEX_LINES), _HEX_BYTES):
        chunk = data[offset : offset + _HEX_BYTES]
        text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<{_HEX_BYTES * 3 - 1}}  {text}")
    if len(data) > _HEX_BYTES * _HEX_LINES:
        lines.append(f"{ELLIPSIS} {len(data) - _HEX_BYTES * _HEX_LINES:,} more bytes ({len(data):,} in all)")
    return lines


def _origin_json(origin: Origin | None) -> dict[str, Any] | None:
    if origin is None:
        return None
    return {"queue": origin.queue, "id": origin.id, "enqueued_at": origin.enqueued_at, "deliveries": origin.deliveries}


def message_json(message: Message | PeekedMessage, now: float | None = None) -> dict[str, Any]:
    """A message as ``read --json`` and ``peek --json`` print it: its id, deliveries, origin (null
    but for a dead letter), and ``data`` (UTF-8 text) or ``data_base64``; a peeked one also its
    ``state``, ``enqueued_at`` (seconds since the epoch) and ``age`` (seconds, at ``now``)."""
    shown: dict[str, Any] = {"id": message.id, "deliveries": message.deliveries}
    if isinstance(message, PeekedMessage):
        shown["state"] = message.state
        shown["enqueued_at"] = message.enqueued_at
        shown["age"] = round(max(0.0, (now if now is not None else time.time()) - message.enqueued_at), 3)
    shown["origin"] = _origin_json(message.origin)
    try:
        shown["data"] = message.data.decode("utf-8")
    except UnicodeDecodeError:
        shown["data_base64"] = base64.b64encode(message.data).decode("ascii")
    return shown


def peek_lines(messages: Sequence[PeekedMessage], now: float, *, width: int = 80) -> list[str]:
    """What ``dbqueue peek`` prints: for each message a head line (id, state, deliveries, age, and
    where a dead letter came from), then its data indented (`render_data`)."""
    lines: list[str] = []
    for message in messages:
        age = fit_age(max(0.0, now - message.enqueued_at) * 1000 or 0.1, 8)
        deliveries = _deliveries(message.deliveries)
        head = f"{message.id}  {message.state.replace('_', ' ')}  {deliveries}  age {age}  {len(message.data):,} bytes"
        lines.append(_clip(head, width))
        origin = message.origin
        if origin is not None:
            enqueued = datetime.datetime.fromtimestamp(origin.enqueued_at).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(
                _clip(
                    f"  origin: {printable(origin.queue)} id {origin.id}, {_deliveries(origin.deliveries)}, "
                    f"enqueued {enqueued}",
                    width,
                )
            )
        lines += [_clip("    " + line, width) for line in render_data(message.data)]
    return lines


def _deliveries(count: int) -> str:
    return f"{count} {'delivery' if count == 1 else 'deliveries'}"

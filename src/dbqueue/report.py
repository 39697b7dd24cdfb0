"""Terminal output for the CLI (rich): progress bars and result tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .loadtest import BenchResult

__all__ = ["progress_bar", "bench_table", "queue_table"]

_QUEUE_COLUMNS = (
    "ready", "in_flight", "delayed", "waiting", "consumers", "capacity",
    "enqueued", "confirmed", "requeued", "dead_lettered",
)  # fmt: skip


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
    unit = "request" if title == "round trips" else "batch"
    table.add_row(f"latency per {unit} p50", f"{figures['p50_ms']:.3f} ms")
    table.add_row(f"latency per {unit} p99", f"{figures['p99_ms']:.3f} ms")
    table.add_row(f"latency per {unit} p99.9", f"{figures['p999_ms']:.3f} ms")
    table.add_row(
        "client CPU", f"{figures['client_cpu_seconds']:.2f} s ({figures['client_cpu_percent']:.0f}% of one core)"
    )
    Console().print(table)


def queue_table(queues: list[dict[str, Any]], clear: bool = False) -> None:
    """Print queue figures (as `Client.list_queues` returns them) as a table."""
    table = Table(title="dbqueue queues")
    table.add_column("queue")
    for column in _QUEUE_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    table.add_column("dead letters to")
    for queue in queues:
        table.add_row(
            queue["name"], *(f"{queue[column]:,}" for column in _QUEUE_COLUMNS), queue["dead_letter_queue"] or ""
        )
    console = Console()
    if clear:
        console.clear()
    console.print(table)

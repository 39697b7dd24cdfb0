"""What the commands share on their way in and out: durations, JSON, the terminal's width.

*Durations* are in seconds on every command line, as in the Python API
(`Seconds`): ``--visibility``, ``--visibility-timeout`` also take ``never``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

__all__ = ["Seconds", "echo_json", "echo_outcome", "terminal_width"]


_MS_MAX_SECONDS = 0xFFFFFFFF / 1000  # the wire carries milliseconds in 32 bits


class Seconds(click.ParamType[float, Any]):
    """A duration in seconds (a float), checked against what the wire carries; with ``never``, also
    ``never`` (or ``inf``), which gives ``math.inf`` (`dbqueue.NEVER`). Without ``zero``, 0 is refused:
    a visibility timeout of 0 means nothing (leave the option out for the queue's default)."""

    name = "seconds"

    def __init__(self, *, never: bool = False, zero: bool = True) -> None:
        self.never = never
        self.zero = zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if self.never and text in ("never", "inf"):
            return math.inf
        try:
            seconds = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number of seconds{' (or never)' if self.never else ''}", param, ctx)
        if not 0 <= seconds <= _MS_MAX_SECONDS:  # NaN fails too
            self.fail(f"{value} is not within 0 .. {_MS_MAX_SECONDS:g} seconds", param, ctx)
        if seconds == 0 and not self.zero:
            self.fail("must be more than 0 seconds (leave it out for the queue's default)", param, ctx)
        return seconds


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON on one line."""
    click.echo(json.dumps(value))


def echo_outcome(as_json: bool, figures: dict[str, Any], line: str) -> None:
    """Print what a command did: ``figures`` as JSON with ``--json``, else ``line``."""
    if as_json:
        echo_json(figures)
    else:
        click.echo(line)


def terminal_width() -> int:
    """The terminal's width (COLUMNS, else 80 when not on a terminal), but never under what a table needs."""
    import shutil

    return max(69, shutil.get_terminal_size().columns)

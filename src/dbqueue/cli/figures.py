"""``dbqueue stats``: queue figures, a group's summed with the members that are down said, and
``--watch``, which keeps them up (with rates) and rides out server restarts.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .connection import Target, connects, old_host_port, one_line_errors, session
from .formats import echo_json, terminal_width

if TYPE_CHECKING:
    from ..client import Client, GroupClient
    from ..report import Sample

__all__ = ["stats"]


def _figures(client: Client | GroupClient, queue: str | None) -> list[dict[str, Any]]:
    return [client.stats(queue)] if queue else client.list_queues()


def _title(client: Client | GroupClient, target: Target) -> str:
    from ..client import GroupClient

    if isinstance(client, GroupClient):
        return f"dbqueue group of {len(client.addresses)} ({client.addresses[0]}, …)"
    return f"dbqueue {target.addresses[0] if len(target.addresses) == 1 else ','.join(target.addresses)}"


@click.command()
@click.argument("queue", required=False)
@click.option("--queue", "queue_option", default=None, hidden=True)  # the spelling before QUEUE
@old_host_port(hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (with --watch: a line a refresh).")
@click.option("--members", is_flag=True, help="Each member's figures beside the group's sums.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (2 if not given) with rates, until Ctrl-C; rides out server restarts.",
)
@connects
def stats(
    target: Target,
    queue: str | None,
    queue_option: str | None,
    as_json: bool,
    members: bool,
    watch: float | None,
) -> None:
    """Show queue figures; --watch keeps them up.

    Every queue's figures (or QUEUE's): ready, in flight, delayed, and their totals. Against a group,
    the figures are summed over its members. With a member down they are the others' sums: a line on
    stderr says so ("1 of 2 members down (ADDRESS: REASON): figures are partial"), --json gives each
    queue's figures a "members_down" list of {address, reason}, and the exit status stays 0.
    """
    from ..client import GroupClient

    queue = queue or queue_option
    if watch is not None:
        if members:
            raise click.UsageError("--members and --watch do not go together")
        _watch(target, queue, watch, as_json)
        return
    with session(target) as client:
        figures = _figures(client, queue)
        down = _down_members(target, client)
        per_member = _per_member(target, client, queue) if members else []
    if down:
        total = len(client.addresses) if isinstance(client, GroupClient) else 1
        reasons = "; ".join(f"{address}: {reason}" for address, reason in down)
        click.echo(f"{len(down)} of {total} members down ({reasons}): figures are partial", err=True)
        for summed in figures:
            summed["members_down"] = [{"address": address, "reason": reason} for address, reason in down]
    if as_json:
        if members:
            shown = [
                {"address": address, "error": answer}
                if isinstance(answer, str)
                else {"address": address, "queues": answer}
                for address, answer in per_member
            ]
            echo_json({"group": figures[0] if queue else figures, "members": shown})
        else:
            echo_json(figures[0] if queue else figures)
        return
    from ..report import queue_details, queue_lines

    if queue and not members:
        lines = queue_details(figures[0])
    else:
        rows: list[tuple[str, dict[str, Any] | str | None]] = []
        for stats in sorted(figures, key=lambda stats: str(stats["name"])):
            rows.append((stats["name"], stats))
            for address, answer in per_member:
                if not isinstance(answer, str):
                    rows.append(("  " + address, next((own for own in answer if own["name"] == stats["name"]), None)))
        rows += [(address, f"down: {answer}") for address, answer in per_member if isinstance(answer, str)]
        lines = [_title(client, target), *queue_lines(rows, width=terminal_width())]
        if not figures:
            lines.append("(no queues)")
    for line in lines:
        click.echo(line)


def _down_members(target: Target, client: Client | GroupClient) -> list[tuple[str, str]]:
    """The members of a group whose figures are missing from its sums, each with why (`Target.why_down`)."""
    from ..client import GroupClient

    if not isinstance(client, GroupClient):
        return []
    return target.why_down(client.down)


def _per_member(
    target: Target, client: Client | GroupClient, queue: str | None
) -> list[tuple[str, list[dict[str, Any]] | str]]:
    """Each member's own figures, or why it could not be asked."""
    from ..client import GroupClient
    from ..errors import DbQueueError, NoSuchQueue

    addresses = client.addresses if isinstance(client, GroupClient) else target.addresses[:1]
    answers: list[tuple[str, list[dict[str, Any]] | str]] = []
    for address in addresses:
        try:
            with target.connect_member(address) as member:
                answers.append((address, _figures(member, queue)))
        except NoSuchQueue:
            answers.append((address, []))
        except (click.ClickException, DbQueueError, OSError) as exc:
            answers.append((address, exc.message if isinstance(exc, click.ClickException) else str(exc)))
    return answers


def _watch(target: Target, queue: str | None, interval: float, as_json: bool) -> None:
    """`stats --watch`: a screen a refresh, until Ctrl-C; a lost server is waited for, not fatal."""
    import datetime

    from ..client import GroupClient
    from ..errors import ConnectionLost, ProtocolError, RequestError
    from ..report import Sample, watch_frame

    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="replace")  # a terminal that cannot show "…" gets "?", not an exception
    on_terminal = out.isatty()

    def draw(sample: Sample | None, previous: Sample | None, status: str, fresh: bool = False) -> None:
        """Show ``sample`` (``fresh``: just taken; else the last one known, or None) and ``status``."""
        now = datetime.datetime.now().astimezone()  # local time, with its offset: ISO 8601 a script can compare
        if as_json:
            if sample is not None and fresh:
                echo_json({"time": now.isoformat(timespec="seconds"), "queues": list(sample.queues)})
            else:
                echo_json({"time": now.isoformat(timespec="seconds"), "status": status})
            out.flush()
            return
        import shutil

        size = shutil.get_terminal_size()
        width = max(66, min(size.columns, 120)) if on_terminal else 80
        lines = watch_frame(
            title,
            now.strftime("%Y-%m-%d %H:%M:%S"),
            sample,
            previous,
            status,
            width=width,
            height=size.lines if on_terminal else None,
        )
        text = "\n".join(lines) + "\n"
        if on_terminal:
            text = "\x1b[H\x1b[2J" + text  # home, clear: the screen is redrawn in place
        else:
            text += "\n"
        out.write(text)
        out.flush()

    with one_line_errors():
        first = target.connect()
    title = _title(first, target)
    client: Client | GroupClient | None = first
    every = f"every {interval:g} s; Ctrl-C quits"
    previous: Sample | None = None
    last: Sample | None = None
    down_since: str | None = None
    try:
        while True:
            reason = None
            if client is None:
                try:
                    client = target.connect()
                except click.ClickException as exc:
                    reason = exc.message
            if client is not None:
                try:
                    sample = Sample(time.monotonic(), tuple(_figures(client, queue)))
                except RequestError as exc:  # the queue watched was deleted: say so, and go on looking
                    last = previous = None
                    draw(None, None, f"{exc.message}; {every}")
                except (ConnectionLost, ProtocolError, OSError) as exc:
                    client.close()
                    client = previous = None
                    reason = str(exc)
                else:
                    down_since = None
                    status = every
                    if isinstance(client, GroupClient) and client.down:
                        status = f"{len(client.down)} of {len(client.addresses)} members down: partial; {every}"
                    draw(sample, previous, status, fresh=True)
                    previous = last = sample
            if reason is not None:
                down_since = down_since or datetime.datetime.now().strftime("%H:%M:%S")
                draw(last, None, f"reconnecting… (since {down_since}: {reason})")
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if client is not None:
            client.close()

"""The commands on queues and their messages: ``send``, ``read``, ``peek``, ``move``, ``create``,
``delete``, ``purge`` and ``list``; each reaches its server through `dbqueue.cli.connection`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import click

from .connection import Target, connects, session
from .formats import Seconds, echo_json, echo_outcome, terminal_width

if TYPE_CHECKING:
    from ..client import Client, GroupClient

__all__ = ["create", "delete", "list_queues", "move", "peek", "purge", "read", "send"]


_SEND_CHUNK = 256  # lines of stdin sent in one pipeline


def _stdin_messages(whole: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, message) for each message on stdin: each non-empty line, or all of it."""
    stream = sys.stdin.buffer
    if whole:
        yield 1, stream.read()
        return
    for number, line in enumerate(stream, start=1):
        message = line.rstrip(b"\n").rstrip(b"\r")
        if message:
            yield number, message


def _chunks(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _send_chunk(
    client: Client | GroupClient, queue: str, chunk: list[tuple[int, bytes]], delay: float, key: str | None
) -> list[object]:
    """Send ``chunk``; return one id or refusal (an exception, not raised) per message, in order."""
    from ..client import Client
    from ..errors import MessageTooLarge, RequestError

    if isinstance(client, Client) and len(chunk) > 1:
        pipeline = client.pipeline()
        for _, data in chunk:
            pipeline.send(queue, data, delay=delay)
        try:
            return pipeline.execute()
        except MessageTooLarge:
            pass  # refused before anything was sent: one by one, to say which
    results: list[object] = []
    for _, data in chunk:
        try:
            if isinstance(client, Client):
                results.append(client.send(queue, data, delay=delay))
            else:
                results.append(client.send(queue, data, delay=delay, key=key))
        except RequestError as exc:
            results.append(exc)
    return results


@click.command()
@click.argument("queue")
@click.argument("data", required=False)
@click.option("--whole", is_flag=True, help="Send all of stdin as one message (default: each non-empty line).")
@click.option(
    "--delay",
    type=Seconds(),
    default=0.0,
    metavar="SECONDS",
    help="Make the messages readable only after this delay.",
)
@click.option("--key", default=None, help="With a group: send to the member this key hashes to (default: in turn).")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "ids": [...]} instead of an id a line.')
@connects
def send(
    target: Target, queue: str, data: str | None, whole: bool, delay: float, key: str | None, as_json: bool
) -> None:
    """Send DATA, or each line of stdin, to QUEUE.

    DATA omitted or -: each non-empty line of stdin is a message (--whole: all of it). Prints each
    message's id.
    """
    from ..errors import ConnectionLost, RequestError

    from_argument = data is not None and data != "-"
    if from_argument:
        assert data is not None
        if whole:
            raise click.UsageError("--whole sends stdin: give no DATA (or -)")
        messages: Iterable[tuple[int, bytes]] = [(0, os.fsencode(data))]
    else:
        messages = _stdin_messages(whole)
    ids: list[int] = []
    failure: str | None = None
    with session(target) as client:
        for chunk in _chunks(messages, _SEND_CHUNK):
            try:
                results = _send_chunk(client, queue, chunk, delay, key)
            except ConnectionLost as exc:
                if from_argument:
                    raise
                raise click.ClickException(
                    f"connection lost at lines {chunk[0][0]}-{chunk[-1][0]}, which may or may not have been sent "
                    f"({len(ids)} were before them): {exc}"
                ) from exc
            for (number, _), result in zip(chunk, results):
                if isinstance(result, int):
                    ids.append(result)
                    if not as_json:
                        click.echo(result)
                elif failure is None:
                    where = f"line {number}: " if number else ""
                    failure = where + (result.message if isinstance(result, RequestError) else str(result))
            if failure is not None:
                break
    if as_json:
        echo_json({"queue": queue, "ids": ids})
    if failure is not None:
        raise click.ClickException(failure if from_argument else f"{failure} ({len(ids)} sent; stopped there)")


@click.command()
@click.argument("queue")
@click.option("--count", type=click.IntRange(1, 65535), default=1, show_default=True, help="Messages to read at most.")
@click.option(
    "--visibility",
    type=Seconds(never=True, zero=False),
    default=None,
    metavar="SECONDS",
    help="How long the messages are hidden from other readers, unless confirmed (default: the queue's visibility "
    "timeout; never: until this command ends).",
)
@click.option(
    "--wait",
    type=Seconds(),
    default=0.0,
    metavar="SECONDS",
    help="Wait up to this long for a message if there is none.",
)
@click.option(
    "--confirm",
    is_flag=True,
    help="Confirm the messages once printed: they are done. Without it they go back to the queue when the "
    "command ends (each read counts as a delivery for --max-deliveries).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list of {id, deliveries, origin, data} instead of the data (data_base64 if not UTF-8).",
)
@connects
def read(
    target: Target, queue: str, count: int, visibility: float | None, wait: float, confirm: bool, as_json: bool
) -> None:
    """Read messages of QUEUE and print their data.

    Up to --count messages, one a line (nothing if there is none). Without --confirm they go back to
    the queue when the command ends.
    """
    with session(target) as client:
        messages = client.read_batch(queue, count, visibility_timeout=visibility, wait=wait)
        if as_json:
            from ..report import message_json

            echo_json([message_json(message) for message in messages])
        else:
            out = sys.stdout.buffer
            for message in messages:
                out.write(message.data + b"\n")
            out.flush()
        # Confirmed only once printed: a message lost on the way to stdout goes back to the queue.
        if confirm and messages:
            outcomes = client.confirm_batch([message.id for message in messages])
            failed = [(message.id, outcome) for message, outcome in zip(messages, outcomes) if outcome is not None]
            if failed:
                from ..report import plural

                id_, outcome = failed[0]
                raise click.ClickException(
                    f"{plural(len(failed), 'message')} not confirmed; message {id_}: {outcome.message}"
                )


@click.command()
@click.argument("queue")
@click.option("--count", type=click.IntRange(1, 65535), default=10, show_default=True, help="Messages to show at most.")
@click.option("--delayed", is_flag=True, help="Show delayed messages too (marked as such).")
@click.option("--in-flight", is_flag=True, help="Show messages in flight too (marked as such).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list of {id, state, deliveries, enqueued_at, age, origin, data} (data_base64 if not UTF-8).",
)
@connects
def peek(target: Target, queue: str, count: int, delayed: bool, in_flight: bool, as_json: bool) -> None:
    """Show messages of QUEUE without taking them.

    Up to --count messages, oldest first: each one's id, state, deliveries, age and, for a dead
    letter, where it came from; then its data, as pretty JSON, text or hex as fits. Nothing
    changes on the server: no delivery is counted.
    """
    from ..report import message_json, peek_lines

    with session(target) as client:
        messages = client.peek(queue, count, delayed=delayed, in_flight=in_flight)
    now = time.time()
    if as_json:
        echo_json([message_json(message, now) for message in messages])
        return
    if not messages:
        click.echo(f"(no messages to show in {queue})", err=True)
    for line in peek_lines(messages, now, width=terminal_width()):
        click.echo(line)


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--count",
    type=click.IntRange(1, 2**32 - 1),
    default=None,
    help="Messages to move at most, oldest first (default: every ready one).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"source": ..., "destination": ..., "moved": N}.')
@connects
def move(target: Target, source: str, destination: str, count: int | None, as_json: bool) -> None:
    """Move the ready messages of SOURCE to the back of DESTINATION.

    Redrives a dead-letter queue: dbqueue move jobs-dead jobs. Each message moves once, in one
    step on the server (a lost connection leaves each message in one queue or the other). Against a
    group, each member moves its own messages.
    """
    from ..report import plural

    with session(target) as client:
        moved = client.move(source, destination, count=count)
    figures = {"source": source, "destination": destination, "moved": moved}
    echo_outcome(as_json, figures, f"moved {plural(moved, 'message')} from {source} to {destination}")


@click.command()
@click.argument("queue")
@click.option(
    "--capacity",
    type=click.IntRange(1, 2**64 - 1),
    default=None,
    metavar="MESSAGES",
    help="Messages it holds at most, ready, in flight and delayed (default: the server's --default-capacity; "
    "in a group, per member).",
)
@click.option(
    "--max-deliveries",
    type=click.IntRange(1, 2**32 - 1),
    default=None,
    metavar="DELIVERIES",
    help="Deliveries without a confirm after which a message moves to the dead-letter queue, or is dropped.",
)
@click.option("--dead-letter-queue", default=None, metavar="QUEUE", help="Where such messages go (it must exist).")
@click.option(
    "--visibility-timeout",
    type=Seconds(never=True, zero=False),
    default=None,
    metavar="SECONDS",
    help="How long a message read without a visibility timeout of its own stays hidden unless confirmed "
    "(default: the server's --default-visibility-timeout; never: until its reader disconnects).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "created": true}.')
@connects
def create(
    target: Target,
    queue: str,
    capacity: int | None,
    max_deliveries: int | None,
    dead_letter_queue: str | None,
    visibility_timeout: float | None,
    as_json: bool,
) -> None:
    """Create QUEUE (nothing changes if it exists: it keeps its options)."""
    with session(target) as client:
        client.create(
            queue,
            capacity=capacity,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
            visibility_timeout=visibility_timeout,
        )
    echo_outcome(as_json, {"queue": queue, "created": True}, f"created {queue}")


@click.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "deleted": true}.')
@connects
def delete(target: Target, queue: str, as_json: bool) -> None:
    """Delete QUEUE and every message it holds."""
    with session(target) as client:
        client.delete(queue)
    echo_outcome(as_json, {"queue": queue, "deleted": True}, f"deleted {queue}")


@click.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "purged": N}.')
@connects
def purge(target: Target, queue: str, as_json: bool) -> None:
    """Drop QUEUE's ready and delayed messages.

    Messages in flight stay. Prints how many were dropped.
    """
    from ..report import plural

    with session(target) as client:
        count = client.purge(queue)
    echo_outcome(as_json, {"queue": queue, "purged": count}, f"purged {plural(count, 'message')} from {queue}")


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of names.")
@connects
def list_queues(target: Target, as_json: bool) -> None:
    """Print the name of every queue, one a line."""
    from ..report import printable

    with session(target) as client:
        names = sorted(str(stats["name"]) for stats in client.list_queues())
    if as_json:
        echo_json(names)
    else:
        for name in names:
            click.echo(printable(name))

"""The commands on queues and their messages: ``send``, ``read``, ``peek``, ``move``, ``create``,
``delete``, ``purge`` and ``list``; each reaches its server through `dbqueue.cli.connection`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from .connection import Target, connects, session
from .formats import Seconds, echo_json, echo_outcome, terminal_width

if TYPE_CHECKING:
    from ..client import Client, GroupClient
    from ..protocol.envelope import Envelope, MessageAttributeValue
    from ..protocol.messages import Message, PeekedMessage

T = TypeVar("T")
M = TypeVar("M", bound="Message | PeekedMessage")

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
    """Send ``chunk``; return one id or refusal (an exception, not raised) per message sent, in order.

    Pipelined (a `Client`), every message of the chunk is sent, and one refused
    does not stop the others. One by one (a group, or a chunk with a message
    too large for the server, which the pipeline refuses before sending
    anything), the sending stops at the first refusal, which ends the results,
    and at a lost connection, whose `ConnectionLost` ends them: that message may
    or may not have been queued.
    """
    from ..client import Client
    from ..errors import ConnectionLost, MessageTooLarge, RequestError

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
        except (RequestError, ConnectionLost) as exc:
            results.append(exc)
            break
    return results


def _line_numbers(numbers: list[int]) -> str:
    """``line 3``, ``lines 3-5, 9``: line numbers in runs."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    text = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)
    return f"{'line' if len(numbers) == 1 else 'lines'} {text}"


def _stopped(failure: str, sent: int, refused: list[int], sent_after: list[int], last: int) -> str:
    """What ``send`` says when stdin's line ``refused[0]`` was refused (``failure``): exactly which lines
    went out, so that resending from the first refused one, but for those, duplicates nothing. ``sent``: how
    many were sent in all; ``sent_after``: the lines sent after the first refusal, in its pipeline, which
    ends at line ``last``; ``refused``: every line refused in it."""
    if not sent_after:
        return f"{failure} ({sent} sent; stopped there)"
    return (
        f"{failure} ({sent} sent, {_line_numbers(sent_after)} among them, after it; refused: "
        f"{_line_numbers(refused)}; stopped after line {last})"
    )


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
    message's id. A refused line ends the command (exit status 1), saying which lines were sent: a
    line too large for the server stops it there; a refusal by the server comes after its whole batch
    of 256 lines went out, and the lines of that batch accepted after it are named.
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
    refused: list[int] = []  # the lines refused, in the pipeline where the first one was
    sent_after: list[int] = []  # the lines sent after that first one, in its pipeline
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
                    if failure is not None:
                        sent_after.append(number)
                    if not as_json:
                        click.echo(result)
                elif isinstance(result, ConnectionLost):
                    if from_argument:
                        raise result
                    # One by one, the results end at the loss; pipelined, every later line shares its doubt.
                    last = chunk[-1][0] if len(results) == len(chunk) else number
                    unknown = f"line {number}" if last == number else f"lines {number}-{last}"
                    raise click.ClickException(
                        f"connection lost at {unknown}, which may or may not have been sent ({len(ids)} were "
                        f"before; none after): {result}"
                    )
                else:
                    refused.append(number)
                    if failure is None:
                        where = f"line {number}: " if number else ""
                        failure = where + (result.message if isinstance(result, RequestError) else str(result))
            if failure is not None:
                if as_json:
                    echo_json({"queue": queue, "ids": ids})
                if from_argument:
                    raise click.ClickException(failure)
                raise click.ClickException(_stopped(failure, len(ids), refused, sent_after, chunk[len(results) - 1][0]))
    if as_json:
        echo_json({"queue": queue, "ids": ids})


def _sqs_view(message: M) -> tuple[M, Envelope | None]:
    """``message`` as an operator reads it, and its SQS envelope (else None).

    A message sent through the SQS API is stored as an envelope
    (`dbqueue.protocol.envelope`) around its body: shown, it is its body, with
    its message attributes beside it. Any other message is shown as it is.
    """
    from ..protocol.envelope import open_envelope

    envelope = open_envelope(message.data)
    if envelope is None:
        return message, None
    return dataclasses.replace(message, data=envelope.body.encode()), envelope


def _attribute_json(value: MessageAttributeValue) -> dict[str, str]:
    """One SQS message attribute as ``read --json`` and ``peek --json`` print it."""
    import base64

    if value.binary_value is not None:
        return {"data_type": value.data_type, "binary_value_base64": base64.b64encode(value.binary_value).decode()}
    return {"data_type": value.data_type, "string_value": value.string_value or ""}


def _message_json(message: Message | PeekedMessage, now: float | None = None) -> dict[str, Any]:
    """`report.message_json` of what `_sqs_view` shows; an SQS message also has its ``attributes``."""
    from ..report import message_json

    view, envelope = _sqs_view(message)
    shown = message_json(view, now)
    if envelope is not None:
        shown["attributes"] = {name: _attribute_json(value) for name, value in envelope.message_attributes.items()}
    return shown


def _attributes_line(envelope: Envelope, width: int) -> str:
    """The line ``peek`` shows under an SQS message's head: that it came over SQS, and its attributes."""
    from ..report import printable

    shown = []
    for name, value in envelope.message_attributes.items():
        if value.binary_value is not None:
            shown.append(f"{name}=<{len(value.binary_value):,} bytes> ({value.data_type})")
        else:
            shown.append(f"{name}={value.string_value} ({value.data_type})")
    line = printable("  SQS message, attributes: " + ", ".join(shown) if shown else "  SQS message, no attributes")
    return line if len(line) <= width else line[: width - 1] + "…"


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
    help="Print a JSON list of {id, deliveries, origin, data} instead of the data (data_base64 if not UTF-8; "
    "a message sent over SQS: its body, and its attributes).",
)
@connects
def read(
    target: Target, queue: str, count: int, visibility: float | None, wait: float, confirm: bool, as_json: bool
) -> None:
    """Read messages of QUEUE and print their data.

    Up to --count messages, one a line (nothing if there is none). A message sent over SQS is its
    body. Without --confirm they go back to the queue when the command ends.
    """
    with session(target) as client:
        messages = client.read_batch(queue, count, visibility_timeout=visibility, wait=wait)
        if as_json:
            echo_json([_message_json(message) for message in messages])
        else:
            out = sys.stdout.buffer
            for message in messages:
                out.write(_sqs_view(message)[0].data + b"\n")
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
    help="Print a JSON list of {id, state, deliveries, enqueued_at, age, origin, data} (data_base64 if not UTF-8; "
    "a message sent over SQS: its body, and its attributes).",
)
@connects
def peek(target: Target, queue: str, count: int, delayed: bool, in_flight: bool, as_json: bool) -> None:
    """Show messages of QUEUE without taking them.

    Up to --count messages, oldest first: each one's id, state, deliveries, age and, for a dead
    letter, where it came from; then its data, as pretty JSON, text or hex as fits (a message
    sent over SQS: its body, under a line with its attributes). Nothing changes on the server: no
    delivery is counted.
    """
    from ..report import peek_lines

    with session(target) as client:
        messages = client.peek(queue, count, delayed=delayed, in_flight=in_flight)
    now = time.time()
    if as_json:
        echo_json([_message_json(message, now) for message in messages])
        return
    if not messages:
        click.echo(f"(no messages to show in {queue})", err=True)
    width = terminal_width()
    for message in messages:
        view, envelope = _sqs_view(message)
        lines = peek_lines([view], now, width=width)
        if envelope is not None:
            lines.insert(1 if message.origin is None else 2, _attributes_line(envelope, width))  # under the head
        for line in lines:
            click.echo(line)


def _on_every_member(target: Target, action: Callable[[], T]) -> tuple[T, list[tuple[str, str]]]:
    """Run ``action``, a create, delete, purge or move; return its result and the ``(address, reason)`` of
    each member of the group it missed (`MembersUnreached`; empty: none). A member that was down from
    the start is asked again alone, to say why (`Target.why_down`)."""
    from ..client.group import MembersUnreached

    try:
        return action(), []
    except MembersUnreached as exc:
        down = dict(target.why_down([address for address, reason in exc.unreached if reason == "down"]))
        return cast(T, exc.result), [(address, down.get(address, reason)) for address, reason in exc.unreached]


def _not_reached(client: Client | GroupClient, missed: list[tuple[str, str]]) -> str:
    """``1 of 2 members not reached (ADDRESS: REASON)``."""
    from ..client import GroupClient

    total = len(client.addresses) if isinstance(client, GroupClient) else 1
    reasons = "; ".join(f"{address}: {reason}" for address, reason in missed)
    return f"{len(missed)} of {total} members not reached ({reasons})"


_AGAIN = "run the command again once every member is up"


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
    group, each member moves its own messages; with a member down, the others' move (the figure is
    printed, a line on stderr says it is partial, and the exit status is 1).
    """
    from ..report import plural

    with session(target) as client:
        moved, missed = _on_every_member(target, lambda: client.move(source, destination, count=count))
    figures: dict[str, Any] = {"source": source, "destination": destination, "moved": moved}
    if missed:
        figures["members_down"] = [{"address": address, "reason": reason} for address, reason in missed]
    echo_outcome(as_json, figures, f"moved {plural(moved, 'message')} from {source} to {destination}")
    if missed:
        raise click.ClickException(f"{_not_reached(client, missed)}: figures are partial; {_AGAIN}")


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
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"queue": ..., "created": true} (false: it existed already).'
)
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
    """Create QUEUE; if it exists, say so (it keeps its options).

    An existing queue is never changed: options given that differ from its own are refused with an
    error naming each difference (exit status 1), as SQS refuses a CreateQueue with other
    attributes. Against a group with a member down, the queue is created on the others only: an
    error names the members not reached (exit status 1); run the command again once they are up.
    """
    with session(target) as client:
        existing, everywhere = _existing(client, queue)
        if existing is not None:
            differences = _differences(existing, capacity, max_deliveries, dead_letter_queue, visibility_timeout)
            if differences:
                raise click.ClickException(
                    f"queue {queue} exists with other options, left unchanged: {'; '.join(differences)}"
                )
        # Created even if it exists: in a group, a member that lacks it (it was down) gets it.
        _, missed = _on_every_member(
            target,
            lambda: client.create(
                queue,
                capacity=capacity,
                max_deliveries=max_deliveries,
                dead_letter_queue=dead_letter_queue,
                visibility_timeout=visibility_timeout,
            ),
        )
    if missed:
        raise click.ClickException(f"{_not_reached(client, missed)}: {queue} may be missing on them; {_AGAIN}")
    if existing is None:
        echo_outcome(as_json, {"queue": queue, "created": True}, f"created {queue}")
    else:
        also = "" if everywhere else "; created on the members that lacked it"
        echo_outcome(as_json, {"queue": queue, "created": False}, f"queue {queue} exists: options unchanged{also}")


def _existing(client: Client | GroupClient, queue: str) -> tuple[dict[str, Any] | None, bool]:
    """The figures of ``queue`` if it exists (None if not), and whether every member reached has it: in a
    group left half-done, some members lack it (the others' figures are returned)."""
    from ..client import GroupClient
    from ..errors import NoSuchQueue

    try:
        return client.stats(queue), True
    except NoSuchQueue:
        if not isinstance(client, GroupClient):
            return None, True
    return next((stats for stats in client.list_queues() if stats["name"] == queue), None), False


def _differences(
    stats: dict[str, Any],
    capacity: int | None,
    max_deliveries: int | None,
    dead_letter_queue: str | None,
    visibility_timeout: float | None,
) -> list[str]:
    """The options given (not None) that differ from those of an existing queue (its ``stats``), each as
    ``--option: VALUE (asked ASKED)``."""
    from ..client.commands import visibility_ms

    def shown_ms(ms: int) -> str:
        return "never" if ms == visibility_ms(math.inf) else f"{ms / 1000:g} s"

    found = []
    if capacity is not None and stats.get("capacity") != capacity:
        found.append(f"--capacity: {stats.get('capacity') or 'none'} (asked {capacity})")
    if max_deliveries is not None and stats.get("max_deliveries") != max_deliveries:
        found.append(f"--max-deliveries: {stats.get('max_deliveries') or 'none'} (asked {max_deliveries})")
    if dead_letter_queue is not None and stats.get("dead_letter_queue") != dead_letter_queue:
        found.append(f"--dead-letter-queue: {stats.get('dead_letter_queue') or 'none'} (asked {dead_letter_queue})")
    if visibility_timeout is not None:
        asked = visibility_ms(visibility_timeout)
        own = stats.get("visibility_timeout_ms")
        if own is not None and own != asked:
            found.append(f"--visibility-timeout: {shown_ms(own)} (asked {shown_ms(asked)})")
    return found


@click.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "deleted": true}.')
@connects
def delete(target: Target, queue: str, as_json: bool) -> None:
    """Delete QUEUE and every message it holds.

    Against a group with a member down, the queue is deleted on the others only: an error names the
    members not reached (exit status 1); run the command again once they are up.
    """
    with session(target) as client:
        _, missed = _on_every_member(target, lambda: client.delete(queue))
    if missed:
        raise click.ClickException(f"{_not_reached(client, missed)}: {queue} is still on them; {_AGAIN}")
    echo_outcome(as_json, {"queue": queue, "deleted": True}, f"deleted {queue}")


@click.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "purged": N}.')
@connects
def purge(target: Target, queue: str, as_json: bool) -> None:
    """Drop QUEUE's ready and delayed messages.

    Messages in flight stay. Prints how many were dropped. Against a group with a member down, the
    others' messages are dropped: the figure is printed, a line on stderr says it is partial, and
    the exit status is 1.
    """
    from ..report import plural

    with session(target) as client:
        count, missed = _on_every_member(target, lambda: client.purge(queue))
    figures: dict[str, Any] = {"queue": queue, "purged": count}
    if missed:
        figures["members_down"] = [{"address": address, "reason": reason} for address, reason in missed]
    echo_outcome(as_json, figures, f"purged {plural(count, 'message')} from {queue}")
    if missed:
        raise click.ClickException(f"{_not_reached(client, missed)}: figures are partial; {_AGAIN}")


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

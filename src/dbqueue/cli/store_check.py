"""``dbqueue store check``: look at a stopped server's store, and salvage what is intact."""

from __future__ import annotations

import click

from .formats import echo_json

__all__ = ["store"]


@click.group()
def store() -> None:
    """Check or salvage a stopped server's store.

    A store is a server's --data-dir (with --workers, each worker's DIR/worker-I).
    """


@store.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--salvage",
    "into",
    type=click.Path(file_okay=False),
    default=None,
    metavar="INTO",
    help="Copy every intact queue and message into a new store in INTO (the original is left as it is).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def check(directory: str, into: str | None, as_json: bool) -> None:
    """Check the store in DIRECTORY without changing it: exit status 1 if anything is damaged."""
    from ..errors import StoreError
    from ..store import check as store_check

    try:
        report = store_check.check(directory) if into is None else store_check.salvage(directory, into)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(
            {
                "ok": report.ok,
                "directory": str(report.directory),
                "format_version": report.format_version,
                "checksummed": report.checksummed,
                "queues": report.queues,
                "messages": report.messages,
                "damaged": list(report.damaged),
                "problems": list(report.problems),
                "salvaged_into": None if report.salvaged_into is None else str(report.salvaged_into),
            }
        )
    else:
        for line in report.lines():
            click.echo(line)
    if not report.ok:
        raise SystemExit(1)

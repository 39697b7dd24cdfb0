"""``dbqueue bench``: the load test (`dbqueue.loadtest`) against a running server, on a queue of
its own unless told otherwise, reached as every client command reaches its server.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

import click

from .connection import Target, connects, host_port, old_host_port, one_line_errors
from .formats import echo_json

__all__ = ["bench"]


@click.command()
@old_host_port(hidden=False)
@click.option("--producers", default=16, show_default=True, type=click.IntRange(0))
@click.option("--consumers", default=16, show_default=True, type=click.IntRange(0))
@click.option("--pipeline", default=32, show_default=True, type=click.IntRange(1), help="Requests per batch.")
@click.option("--iterations", default=1000, show_default=True, type=click.IntRange(1), help="Batches per producer.")
@click.option("--payload", default=128, show_default=True, type=click.IntRange(0), help="Message size in bytes.")
@click.option(
    "--queue",
    default=None,
    help="The queue to load (default: a new one, bench-XXXXXXXX). Created if missing; used if empty; "
    "refused if it holds messages.",
)
@click.option("--time-limit", default=120.0, show_default=True, help="Seconds before an unfinished run fails.")
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Messages per request (send_batch / read_batch / confirm_batch).",
)
@click.option("--latency", is_flag=True, help="Unpipelined round trips on one connection instead of the load test.")
@click.option(
    "--fan-in",
    "fan_in",
    default=None,
    metavar="P,C",
    help="P producers and C consumers with one request in flight each (send; read with a visibility timeout, then "
    "confirm), --iterations messages per producer; reports confirmed msgs/s and round-trip percentiles.",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="With --fan-in: client processes the connections are dealt over.",
)
@click.option(
    "--keep-queue",
    is_flag=True,
    help="Leave the queue the run created on the server (by default it is deleted; a queue that existed before "
    "the run is never deleted).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@connects
def bench(
    target: Target,
    producers: int,
    consumers: int,
    pipeline: int,
    iterations: int,
    payload: int,
    queue: str | None,
    time_limit: float,
    batch: int,
    latency: bool,
    fan_in: str | None,
    processes: int,
    keep_queue: bool,
    as_json: bool,
) -> None:
    """Load-test a running server.

    The original's workload: producers send, consumers read and confirm; every reply is checked.
    With --fan-in, many workers with one request in flight each. The queue is a new one unless
    --queue names one: a queue that holds messages is refused (they are somebody's), and only a
    queue the run created is deleted after it (unless --keep-queue). --address (several: the
    connections are spread over them), --token and --tls reach the server as for every command.
    """
    from ..errors import DbQueueError
    from ..loadtest import BenchConfig, BenchFailure, BenchResult, DbQueueDriver, run_fan_in, run_load, run_round_trips
    from ..report import bench_table, progress_bar
    from ..server import new_event_loop

    if fan_in is not None:
        if latency:
            raise click.UsageError("--fan-in and --latency are two different runs: pick one")
        producers, consumers = _fan_in_shape(fan_in)
        pipeline = batch = 1
    if consumers == 0 and producers and not latency:
        raise click.BadParameter("a load test needs consumers to confirm what producers send", param_hint="--consumers")
    addresses = [host_port(address) for address in target.addresses]
    # Each server is reached first as every client command reaches it, so that a failure to connect is
    # explained in the same words (nothing listening, a token to check, TLS).
    try:
        with one_line_errors():
            for address in target.addresses:
                target.connect_member(address).close()
    except click.ClickException as exc:
        raise click.ClickException(f"benchmark failed: {exc.message}") from exc
    queue = queue if queue is not None else f"bench-{os.urandom(4).hex()}"
    config = BenchConfig(
        addresses,
        producers,
        consumers,
        pipeline,
        iterations,
        payload,
        queue,
        time_limit=time_limit,
        batch=batch,
        # Fan-in consumers read as workers do: a message they are slow to confirm must not come back meanwhile.
        visibility_timeout=30.0 if fan_in is not None else 1.0,
        token=target.token,
        tls=target.tls,
    )
    drivers: list[DbQueueDriver] = []  # those made in this process: their `prepare` knows where it created the queue

    def make_driver(config: BenchConfig) -> DbQueueDriver:
        drivers.append(DbQueueDriver(config))
        return drivers[-1]

    driver = make_driver(config)
    try:
        if fan_in is not None:
            if not as_json:
                click.echo(
                    f"fan-in: {producers} producers, {consumers} consumers, {config.messages:,} messages…", err=True
                )
            result: BenchResult = run_fan_in(make_driver, config, new_event_loop, processes)
        else:
            loop = new_event_loop()
            try:
                if latency:
                    result = loop.run_until_complete(run_round_trips(driver))
                elif as_json:
                    result = loop.run_until_complete(run_load(driver))
                else:
                    with progress_bar("messages confirmed") as update:
                        result = loop.run_until_complete(run_load(driver, update))
            finally:
                loop.close()
    except (BenchFailure, DbQueueError, OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"benchmark failed: {exc}") from exc
    finally:
        if not keep_queue:
            created = sorted({address for made in drivers for address in made.created})
            _delete_bench_queue(target, created, queue)
    if as_json:
        figures = result.as_dict()
        if fan_in is not None:
            figures.update(mode="fan-in", producers=producers, consumers=consumers)
        echo_json(figures)
    else:
        bench_table(result, "round trips" if latency else "fan-in" if fan_in is not None else "load test")


def _fan_in_shape(value: str) -> tuple[int, int]:
    """The (producers, consumers) of ``--fan-in P,C``. Raises `click.BadParameter`."""
    try:
        producers, consumers = (int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected P,C (producers,consumers), got {value!r}", param_hint="--fan-in") from None
    if producers < 1 or consumers < 1:
        raise click.BadParameter("a fan-in run needs at least one producer and one consumer", param_hint="--fan-in")
    return producers, consumers


def _delete_bench_queue(target: Target, addresses: Iterable[tuple[str, int]], queue: str) -> None:
    """Delete the load test's queue on every server it created it on; say so on stderr where it cannot."""
    from ..client import Client
    from ..errors import DbQueueError, NoSuchQueue

    for host, port in addresses:
        try:
            with Client.connect((host, port), target.timeout, token=target.token, tls=target.tls) as client:
                client.delete(queue)
        except NoSuchQueue:
            pass
        except (DbQueueError, OSError, ssl.SSLError) as exc:
            click.echo(f"warning: could not delete the queue {queue!r} on {host}:{port}: {exc}", err=True)

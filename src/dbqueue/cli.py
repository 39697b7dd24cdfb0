"""The `dbqueue` command: ``serve`` runs a server, ``bench`` load-tests one."""

from __future__ import annotations

import logging

import click

from . import __version__
from .protocol.frames import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="dbqueue")
def main() -> None:
    """dbqueue: a message-queue server and its tools."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=3003, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
@click.option(
    "--max-message-size",
    default=DEFAULT_MAX_MESSAGE_SIZE,
    show_default=True,
    type=click.IntRange(1, 1 << 30),
    help="Largest message accepted, in bytes.",
)
@click.option(
    "--default-capacity",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Capacity of queues created without one (0: unbounded).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (off by default).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep queues and unconfirmed messages in a store in this directory (default: memory only).",
)
@click.option(
    "--sync",
    type=click.Choice(["os", "disk"]),
    default="os",
    show_default=True,
    help="With --data-dir: 'os' survives a crash of the server, 'disk' (fsync) also a power cut.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Run a group of N server processes on ports PORT .. PORT+N-1 (one per core).",
)
@click.option(
    "--peers",
    default=None,
    metavar="HOST:PORT,...",
    help="Every member of a group spread over machines, this server included (for discovery and ids).",
)
@click.option("--member-index", type=click.IntRange(0, 255), default=None, hidden=True)
def serve(
    host: str,
    port: int,
    max_message_size: int,
    default_capacity: int,
    log_level: str,
    metrics_port: int | None,
    data_dir: str | None,
    sync: str,
    workers: int,
    peers: str | None,
    member_index: int | None,
) -> None:
    """Run a server (or a group of --workers servers) until SIGINT or SIGTERM."""
    from .server import Server, run
    from .server.storage import StoreError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    members = [part.strip() for part in peers.split(",") if part.strip()] if peers else []
    if workers > 1:
        from .server.workers import supervise, worker_command

        local = [f"{host}:{port + i}" for i in range(workers)]
        members = members or local
        missing = [address for address in local if address not in members]
        if missing:
            raise click.BadParameter(f"--peers must list every local worker, missing {missing}", param_hint="--peers")
        shared = ["--host", host, "--max-message-size", str(max_message_size)]
        shared += ["--default-capacity", str(default_capacity), "--log-level", log_level, "--sync", sync]
        commands = [
            worker_command(members.index(local[i]), port + i, members, shared, data_dir)
            + (["--metrics-port", str(metrics_port + i)] if metrics_port else [])
            for i in range(workers)
        ]
        raise SystemExit(supervise(commands))
    if member_index is None:
        own = f"{host}:{port}"
        if members and own not in members:
            raise click.BadParameter(f"--peers must list this server ({own})", param_hint="--peers")
        member_index = members.index(own) if members else 0
    server = Server(
        host,
        port,
        max_message_size=max_message_size,
        default_capacity=default_capacity,
        metrics_port=metrics_port,
        data_dir=data_dir,
        sync=sync,
        members=members,
        member_index=member_index,
    )
    try:
        run(server)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _addresses(value: str) -> list[tuple[str, int]]:
    from .client import parse_address

    try:
        return [parse_address(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3003, show_default=True, type=click.IntRange(1, 65535))
@click.option("--address", "addresses", help="host:port[,host:port...] (overrides --host/--port): spread connections.")
@click.option("--producers", default=16, show_default=True, type=click.IntRange(0))
@click.option("--consumers", default=16, show_default=True, type=click.IntRange(0))
@click.option("--pipeline", default=32, show_default=True, type=click.IntRange(1), help="Requests per batch.")
@click.option("--iterations", default=1000, show_default=True, type=click.IntRange(1), help="Batches per producer.")
@click.option("--payload", default=128, show_default=True, type=click.IntRange(0), help="Message size in bytes.")
@click.option("--queue", default="foo", show_default=True)
@click.option("--time-limit", default=120.0, show_default=True, help="Seconds before an unfinished run fails.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 65535), help="Messages per request (send_batch / read_batch / confirm_batch).")
@click.option("--latency", is_flag=True, help="Unpipelined round trips on one connection instead of the load test.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bench(
    host: str,
    port: int,
    addresses: str | None,
    producers: int,
    consumers: int,
    pipeline: int,
    iterations: int,
    payload: int,
    queue: str,
    time_limit: float,
    batch: int,
    latency: bool,
    as_json: bool,
) -> None:
    """Load-test a running server with the original's workload; every reply is checked."""
    import json

    from .bench import BenchConfig, BenchFailure, DbQueueDriver, run_load, run_round_trips
    from .errors import DbQueueError
    from .report import bench_table, progress_bar
    from .server import new_event_loop

    if consumers == 0 and producers and not latency:
        raise click.BadParameter("a load test needs consumers to confirm what producers send", param_hint="--consumers")
    config = BenchConfig(
        _addresses(addresses) if addresses else [(host, port)],
        producers,
        consumers,
        pipeline,
        iterations,
        payload,
        queue,
        time_limit=time_limit,
        batch=batch,
    )
    driver = DbQueueDriver(config)
    loop = new_event_loop()
    try:
        if latency:
            result = loop.run_until_complete(run_round_trips(driver))
        elif as_json:
            result = loop.run_until_complete(run_load(driver))
        else:
            with progress_bar("messages confirmed") as update:
                result = loop.run_until_complete(run_load(driver, update))
    except (BenchFailure, DbQueueError, OSError) as exc:
        raise click.ClickException(f"benchmark failed: {exc}") from exc
    finally:
        loop.close()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        bench_table(result, "round trips" if latency else "load test")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3003, show_default=True, type=click.IntRange(1, 65535))
@click.option("--queue", "queue_name", help="Only this queue.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", type=float, default=None, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C.")
def stats(host: str, port: int, queue_name: str | None, as_json: bool, watch: float | None) -> None:
    """Show every queue's depth, in-flight, delayed and totals."""
    import json
    import time

    from .client import Client
    from .errors import DbQueueError
    from .report import queue_table

    try:
        with Client.connect((host, port)) as client:
            while True:
                queues = [client.stats(queue_name)] if queue_name else client.list_queues()
                if as_json:
                    click.echo(json.dumps(queues if not queue_name else queues[0]))
                else:
                    queue_table(queues, clear=watch is not None)
                if watch is None:
                    return
                time.sleep(watch)
    except DbQueueError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

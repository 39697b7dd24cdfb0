"""The `dbqueue` command: ``serve`` runs a server, ``bench`` load-tests one, ``stats`` shows its queues.

``serve`` has one option per field of `dbqueue.server.Limits`, made from the
field's metadata (``max_in_flight`` -> ``--max-in-flight MESSAGES``, its
bounds as the option's range), so a limit's default, bounds and help are
written once, in `dbqueue/server/limits.py`. ``serve --workers N`` starts
each worker with the options it was given itself, read back from click's
context, plus the worker's own port, member index, data directory and
metrics port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ._version import __version__
from .server.limits import LimitField, Limits, limit_fields

__all__ = ["main", "option_name"]

F = TypeVar("F", bound=Callable[..., Any])

# `serve` options each worker of a group gets a value of its own for (or, for --workers, none).
_PER_WORKER = frozenset({"port", "workers", "peers", "member_index", "data_dir", "metrics_port"})


def option_name(field_name: str) -> str:
    """The command-line option of a `Limits` field: ``max_in_flight`` -> ``--max-in-flight``."""
    return "--" + field_name.replace("_", "-")


def _limit_option(described: LimitField) -> Callable[[F], F]:
    spec = described.spec
    kind: click.IntRange | click.FloatRange
    if described.kind is int:
        kind = click.IntRange(int(spec.low), None if spec.high is None else int(spec.high))
    else:
        kind = click.FloatRange(spec.low, spec.high)
    help_text = spec.help + (f" (0: {spec.off})" if spec.off is not None and spec.low == 0 else "") + "."
    return click.option(
        option_name(described.name),
        described.name,
        type=kind,
        default=described.default,
        show_default=described.describe(described.default),
        metavar=spec.unit.upper(),
        help=help_text,
    )


def _limit_options(command: F) -> F:
    # Applied bottom-up, like stacked decorators: reversed, so that --help lists them in field order.
    for described in reversed(limit_fields()):
        command = _limit_option(described)(command)
    return command


def _given_options(context: click.Context, leave_out: frozenset[str]) -> list[str]:
    """The options the user gave this command, as a command line, but those named in ``leave_out``."""
    arguments: list[str] = []
    for param in context.command.params:
        name = param.name
        if not isinstance(param, click.Option) or name is None or name in leave_out:
            continue
        if context.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            continue
        value = context.params[name]
        if param.is_flag:
            arguments += [param.opts[0]] if value else []
        elif value is not None:
            arguments += [param.opts[0], str(value)]
    return arguments


@click.group()
@click.version_option(__version__, prog_name="dbqueue")
def main() -> None:
    """dbqueue: a message-queue server and its tools."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=3003, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
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
@click.option(
    "--auth-token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Clients must send this file's token in their Hello (or set DBQUEUE_AUTH_TOKEN).",
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without a token.")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Serve TLS with this certificate (PEM).",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True), default=None, help="The certificate's private key (PEM)."
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Require client certificates signed by this CA (PEM).",
)
@_limit_options
@click.pass_context
def serve(
    context: click.Context,
    /,
    host: str,
    port: int,
    log_level: str,
    metrics_port: int | None,
    data_dir: str | None,
    sync: str,
    workers: int,
    peers: str | None,
    member_index: int | None,
    auth_token_file: str | None,
    insecure: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    **limit_values: Any,
) -> None:
    """Run a server (or a group of --workers servers) until SIGINT or SIGTERM."""
    import os

    from .server import Server, run
    from .server.security import is_loopback, read_token, server_tls_context
    from .store import StoreError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(**limit_values)
    try:
        token = read_token(auth_token_file, os.environ.get("DBQUEUE_AUTH_TOKEN"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--auth-token-file") from exc
    if token is None and not insecure and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve {host} without authentication: anyone who can reach it could read and delete "
            "every message. Give clients a token with --auth-token-file FILE (or DBQUEUE_AUTH_TOKEN), "
            "or pass --insecure if the network is trusted."
        )
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_ca and not tls_cert:
        raise click.UsageError("--tls-ca checks client certificates over TLS: it needs --tls-cert and --tls-key")
    members = [part.strip() for part in peers.split(",") if part.strip()] if peers else []
    if workers > 1:
        from .server.workers import supervise, worker_command

        local = [f"{host}:{port + i}" for i in range(workers)]
        members = members or local
        missing = [address for address in local if address not in members]
        if missing:
            raise click.BadParameter(f"--peers must list every local worker, missing {missing}", param_hint="--peers")
        shared = _given_options(context, _PER_WORKER)
        commands = [
            worker_command(members.index(local[i]), port + i, members, shared, data_dir)
            + (["--metrics-port", str(metrics_port and metrics_port + i)] if metrics_port is not None else [])
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
        limits=limits,
        metrics_port=metrics_port,
        data_dir=data_dir,
        sync=sync,
        members=members,
        member_index=member_index,
        auth_token=token,
        ssl=server_tls_context(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None,
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
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Messages per request (send_batch / read_batch / confirm_batch).",
)
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

    from .errors import DbQueueError
    from .loadtest import BenchConfig, BenchFailure, DbQueueDriver, run_load, run_round_trips
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

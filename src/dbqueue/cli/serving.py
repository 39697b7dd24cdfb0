"""``dbqueue serve``: a server, a group of worker processes (``--workers``), or a standby.

Theory of operation
-------------------
*Options.* ``serve`` has one option per field of `dbqueue.server.Limits`,
made from the field's metadata (``max_in_flight`` -> ``--max-in-flight
MESSAGES``, its bounds as the option's range), so a limit's default, bounds
and help are written once, in `dbqueue/server/limits.py`. ``serve --workers
N`` starts each worker with the options it was given itself, read back from
click's context, plus the worker's own port, member index, data directory,
metrics port and HTTP port, each +I (`dbqueue.server.workers` runs them).
With ``--store`` the group's members come from the database: ``--peers`` is
refused there (each member names its part with ``--member-index``), and so
is ``--standby`` with ``--workers`` (a standby is one server waiting).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from .._version import __version__
from ..server.limits import LimitField, Limits, limit_fields
from .environment import envvars, option_name

__all__ = ["serve"]


F = TypeVar("F", bound=Callable[..., Any])

# `serve` options each worker of a group gets a value of its own for (or, for --workers, none).
_PER_WORKER = frozenset(
    {"port", "workers", "peers", "member_index", "data_dir", "metrics_port", "supervisor", "http_port", "advertise"}
)


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
    """The options the user gave this command (on the command line or in the environment), as a command
    line, but those named in ``leave_out``."""
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option(
    "--port",
    default=3003,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: any free port; not with --workers, whose ports are PORT .. PORT+N-1).",
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
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (off by default; with --workers, worker I on PORT+I).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the SQS API, /metrics and the web console on http://HOST:PORT (off by default; with --workers, "
    "worker I on PORT+I, each for its own part of the queues).",
)
@click.option(
    "--sqs-credentials",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="SQS requests must be signed with a key of this file, one ACCESS_KEY_ID:SECRET a line (or set "
    "DBQUEUE_SQS_ACCESS_KEY_ID and DBQUEUE_SQS_SECRET_ACCESS_KEY). Without: with --auth-token-file, signed with "
    "access key id 'dbqueue' and the token as secret; with no token either, unsigned requests on loopback only.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep queues and unconfirmed messages in a store in this directory (default: memory only).",
)
@click.option(
    "--store",
    default=None,
    metavar="URL",
    help="Keep queues and unconfirmed messages in PostgreSQL: a postgresql:// URL or a libpq string "
    "('host=... dbname=...'); not with --data-dir.",
)
@click.option(
    "--standby",
    is_flag=True,
    help="With --store: serve nothing until some member's owner is gone, then take over that part (whichever it "
    "is) and serve it under that part's member index at this server's address; not with --workers.",
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
    help="Every member of a group spread over machines, this server included (for discovery and ids); not with "
    "--store, where the members and their addresses come from the database.",
)
@click.option(
    "--member-index",
    type=click.IntRange(0, 255),
    default=None,
    help="With --store: the part of the group this server owns (default 0); each member of a group on one "
    "database has its own.",
)
@click.option(
    "--advertise",
    default=None,
    metavar="HOST:PORT",
    help="The address clients are given for this server in MEMBERS, and a group on --store records (default: "
    "HOST:PORT as bound; set it with --host 0.0.0.0 so that clients on other machines can follow the group). With "
    "--workers, worker I advertises HOST:PORT+I.",
)
@click.option("--supervisor", default=None, hidden=True, metavar="PID:FD")  # set by --workers for each worker
@click.option(
    "--auth-token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Clients must send this file's token in their Hello (or set DBQUEUE_AUTH_TOKEN). Without "
    "--sqs-credentials it also signs the SQS API: access key id 'dbqueue', the token as secret access key.",
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
    envvar="DBQUEUE_CLIENT_CA",  # not DBQUEUE_TLS_CA: that is the CA a client trusts a server's certificate with
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
    http_port: int | None,
    sqs_credentials: str | None,
    data_dir: str | None,
    store: str | None,
    standby: bool,
    sync: str,
    workers: int,
    peers: str | None,
    member_index: int | None,
    advertise: str | None,
    supervisor: str | None,
    auth_token_file: str | None,
    insecure: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    **limit_values: Any,
) -> None:
    """Run a server, or a group (--workers).

    Runs until SIGINT or SIGTERM; with --workers N, a supervisor runs N servers and stops them together.
    """
    if supervisor is not None:
        _tie_to_supervisor(supervisor)  # first: a worker must not outlive its supervisor, even while starting

    from ..server import Server, run
    from ..server.http import read_credentials
    from ..server.security import is_loopback, read_token, server_tls_context
    from ..store import StoreError

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
    try:
        credentials = read_credentials(sqs_credentials, os.environ)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--sqs-credentials") from exc
    if http_port is not None and not credentials and not insecure and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve the SQS API on {host} without credentials: anyone who can reach it could read and "
            "delete every message. Give it keys with --sqs-credentials FILE (or DBQUEUE_SQS_ACCESS_KEY_ID and "
            "DBQUEUE_SQS_SECRET_ACCESS_KEY), or pass --insecure if the network is trusted."
        )
    if standby and workers > 1:
        raise click.UsageError(
            "--standby runs one server that waits for a part whose owner is gone: not with --workers "
            "(start one --standby per machine you can lose at once)"
        )
    if store is not None and peers and supervisor is None:
        raise click.UsageError(
            "--peers is for a group kept in memory or --data-dir: with --store the members and their addresses "
            "come from the database (give each member its part with --member-index)"
        )
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_ca and not tls_cert:
        raise click.UsageError("--tls-ca checks client certificates over TLS: it needs --tls-cert and --tls-key")
    stored = _store_options(Server, data_dir, store, standby)
    advertised = _advertised(Server, advertise)
    ports = _ports(port, metrics_port, http_port, workers, advertised)
    members = [part.strip() for part in peers.split(",") if part.strip()] if peers else []
    if workers > 1:
        _supervise(context, host, port, workers, members, data_dir, metrics_port, http_port, advertised)
        return
    if advertised is not None:
        stored["advertise"] = f"{advertised[0]}:{advertised[1]}"
    if member_index is None:
        own = stored.get("advertise", f"{host}:{port}")
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
        http_port=http_port,
        sqs_credentials=credentials,
        insecure=insecure,
        **stored,
    )
    try:
        run(server)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(_bind_error(exc, host, port, ports)) from exc


def _ports(
    port: int, metrics_port: int | None, http_port: int | None, workers: int, advertised: tuple[str, int] | None
) -> dict[int, str]:
    """Each port the server (or the group: ports +I) will listen on, as given, -> the option that gives it;
    a usage error if two options give one port, a group is given port 0, or a group's ports pass 65535."""
    if port == 0 and workers > 1:
        raise click.BadParameter(
            f"with --workers, worker I listens on PORT+I and is advertised there: give a port (e.g. --port 3003 for "
            f"3003 .. {3003 + workers - 1})",
            param_hint="--port",
        )
    named = {"--port": port, "--metrics-port": metrics_port, "--http-port": http_port}
    ports: dict[int, str] = {}
    for option, first in named.items():
        if not first:  # none, or 0: any free port, each worker its own
            continue
        if first + workers - 1 > 65535:
            raise click.BadParameter(
                f"with --workers {workers} the ports are {first} .. {first + workers - 1}: past 65535",
                param_hint=option,
            )
        for number in range(first, first + workers):
            if number in ports:
                raise click.UsageError(
                    f"{ports[number]} and {option} both name port {number}: each listener needs a port of its own"
                )
            ports[number] = option
    if advertised is not None and advertised[1] + workers - 1 > 65535:
        raise click.BadParameter(
            f"with --workers {workers} the advertised ports are {advertised[1]} .. {advertised[1] + workers - 1}: "
            "past 65535",
            param_hint="--advertise",
        )
    return ports


# What asyncio says when a listener cannot bind: the address it tried, then why.
_BIND_FAILURE = re.compile(r"error while attempting to bind on address \('(?P<host>[^']*)', (?P<port>\d+)[^)]*\): (.*)")


def _bind_error(exc: OSError, host: str, port: int, ports: dict[int, str]) -> str:
    """The one line `serve` fails with when a listener cannot start: the address that failed (the server's, its
    metrics' or its HTTP listener's) and the option that gave its port."""
    failed = _BIND_FAILURE.fullmatch(exc.strerror or "")
    if failed is None:  # a host that does not resolve, say: the server's own address was the first tried
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    address, number, reason = failed.group("host"), int(failed.group("port")), failed.group(3)
    address = f"[{address}]" if ":" in address else address
    option = f" ({ports[number]})" if number in ports else ""
    return f"cannot listen on {address}:{number}{option}: {reason}"


def _store_options(server: type, data_dir: str | None, store: str | None, standby: bool) -> dict[str, Any]:
    """The ``store`` and ``standby`` arguments of `Server`, as given (none if not given); a usage error
    if they do not go together, or this server cannot keep its messages in PostgreSQL."""
    import inspect

    if store is None and not standby:
        return {}
    if store is not None and data_dir is not None:
        raise click.UsageError("--store and --data-dir are exclusive: a server keeps its messages in one store")
    if standby and store is None:
        raise click.UsageError("--standby takes over a part of a PostgreSQL store: it needs --store URL")
    accepted = inspect.signature(server).parameters
    if "store" not in accepted or (standby and "standby" not in accepted):
        wanted = "--store and --standby are" if standby else "--store is"
        raise click.UsageError(f"{wanted} not supported by this build of the server (dbqueue {__version__})")
    return {"store": store, "standby": True} if standby else {"store": store}


def _advertised(server: type, advertise: str | None) -> tuple[str, int] | None:
    """``--advertise`` as (host, port), or None if not given; a usage error if it is no HOST:PORT, or
    this build's server cannot advertise an address of its own."""
    import inspect

    from ..client import parse_address

    if advertise is None:
        return None
    try:
        host, port = parse_address(advertise)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--advertise") from exc
    if not 0 < port <= 65535:
        raise click.BadParameter(
            f"expected HOST:PORT with a port 1 .. 65535, got {advertise!r}", param_hint="--advertise"
        )
    if "advertise" not in inspect.signature(server).parameters:
        raise click.UsageError(f"--advertise is not supported by this build of the server (dbqueue {__version__})")
    return host, port


def _tie_to_supervisor(supervisor: str) -> None:
    from ..server.workers import SupervisorGone, die_with_supervisor

    pid, _, fd = supervisor.partition(":")
    try:
        die_with_supervisor(int(pid), int(fd) if fd else None)
    except ValueError as exc:
        raise click.BadParameter(f"expected PID:FD, got {supervisor!r}", param_hint="--supervisor") from exc
    except SupervisorGone as exc:
        raise click.ClickException(f"{exc}: not starting") from exc


def _supervise(
    context: click.Context,
    host: str,
    port: int,
    workers: int,
    members: list[str],
    data_dir: str | None,
    metrics_port: int | None,
    http_port: int | None,
    advertised: tuple[str, int] | None,
) -> None:
    """Run ``workers`` servers as a group (`dbqueue.server.workers`); return once they are stopped.

    Ports of their own: worker I listens on PORT+I, and serves metrics and HTTP (the SQS API, /metrics, the
    console: its own part of the queues) on their ports +I; 0 stays 0, each worker taking a free port. With
    ``advertised`` (HOST, APORT), worker I is known to the group and its clients as HOST:APORT+I.
    """
    from ..server.workers import WorkerSpec, supervise, worker_command

    if advertised is None:
        local = [f"{host}:{port + i}" for i in range(workers)]
    else:
        local = [f"{advertised[0]}:{advertised[1] + i}" for i in range(workers)]
    members = members or local
    missing = [address for address in local if address not in members]
    if missing:
        raise click.BadParameter(f"--peers must list every local worker, missing {missing}", param_hint="--peers")
    shared = _given_options(context, _PER_WORKER)
    specs = []
    for i in range(workers):
        index = members.index(local[i])
        command = worker_command(index, port + i, members, shared, data_dir)
        if metrics_port is not None:
            command += ["--metrics-port", str(metrics_port and metrics_port + i)]
        if http_port is not None:
            command += ["--http-port", str(http_port and http_port + i)]
        if advertised is not None:
            command += ["--advertise", local[i]]
        specs.append(WorkerSpec(index, local[i], command))
    # Every option the workers share is on their command line already (`_given_options`): the environment
    # must not add what the supervisor was told (DBQUEUE_WORKERS would make each worker a supervisor).
    ours = {name for param in context.command.params for name in envvars(param)}
    environment = {name: value for name, value in os.environ.items() if name not in ours}
    reason = supervise(specs, env=environment)
    if reason is not None:
        raise click.ClickException(reason)

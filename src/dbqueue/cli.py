"""The `dbqueue` command: ``serve`` runs a server or a group; ``send``, ``read``, ``peek``, ``move``,
``create``, ``delete``, ``purge``, ``list`` and ``stats`` talk to one; ``store check`` looks at a store;
``bench`` load-tests.

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

*The environment.* Every option of every command can also come from an
environment variable: ``DBQUEUE_<COMMAND>_<OPTION>`` always
(``DBQUEUE_SERVE_MAX_IN_FLIGHT``, ``DBQUEUE_STATS_ADDRESS``), and a shorter
name where an option means the same wherever it appears: serve's own options
as ``DBQUEUE_<OPTION>`` (``DBQUEUE_PORT``), and the options that say how to
reach a server as ``DBQUEUE_ADDRESS``, ``DBQUEUE_TOKEN`` and so on, declared
with the option itself (click's ``envvar``: see `_CONNECTION_OPTIONS` and
`_short_names`). No short name has two meanings: the CA a server checks
client certificates with is ``DBQUEUE_CLIENT_CA``, the CA a client trusts a
server's certificate with ``DBQUEUE_TLS_CA``. `_name_environment_variables`
gives every option its names once all commands exist, so none is forgotten.
The command line wins over the environment.

*Reaching a server.* A client command connects to the first of its
``--address`` list that answers, with a plain `Client`. That first contact
is made alone so that its failure can be explained: a wrong token, TLS
expected or not offered, an untrusted certificate, nothing listening (each
is told apart by a second, diagnostic connection: see `_Target`). If the
server says it belongs to a group, or several addresses were given, the
command goes on with a `GroupClient` over every member: a send goes to one
member, a read takes from any, ``stats`` sums them.

*Durations* are in seconds on every command line, as in the Python API
(`_Seconds`): ``--visibility``, ``--visibility-timeout`` also take ``never``.

*Errors* are one line (click's ``Error: ...``) with the cause, and exit
status 1; a usage error exits 2. No expected failure shows a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from ._version import __version__
from .server.limits import LimitField, Limits, limit_fields

if TYPE_CHECKING:
    from .client import Client, GroupClient
    from .report import Sample

__all__ = ["main", "option_key", "option_name"]

F = TypeVar("F", bound=Callable[..., Any])

# `serve` options each worker of a group gets a value of its own for (or, for --workers, none).
_PER_WORKER = frozenset(
    {"port", "workers", "peers", "member_index", "data_dir", "metrics_port", "supervisor", "http_port", "advertise"}
)

DEFAULT_ADDRESS = "127.0.0.1:3003"
_MS_MAX_SECONDS = 0xFFFFFFFF / 1000  # the wire carries milliseconds in 32 bits
_SEND_CHUNK = 256  # lines of stdin sent in one pipeline


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


@click.group(context_settings={"auto_envvar_prefix": "DBQUEUE"})
@click.version_option(__version__, prog_name="dbqueue")
def main() -> None:
    """dbqueue: a message-queue server and its tools.

    Every option can also be set in the environment: DBQUEUE_<COMMAND>_<OPTION>, or the shorter name
    each command's --help shows (DBQUEUE_PORT, DBQUEUE_ADDRESS, DBQUEUE_TOKEN...).
    """


# --- serve ---------------------------------------------------------------------------------------


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

    from .server import Server, run
    from .server.http import read_credentials
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
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


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

    from .client import parse_address

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
    from .server.workers import SupervisorGone, die_with_supervisor

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
    from .server.workers import WorkerSpec, supervise, worker_command

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
    ours = {name for param in context.command.params for name in _envvars(param)}
    environment = {name: value for name, value in os.environ.items() if name not in ours}
    reason = supervise(specs, env=environment)
    if reason is not None:
        raise click.ClickException(reason)


# --- reaching a server ---------------------------------------------------------------------------


class _Unreachable(click.ClickException):
    """No server answered at any of the addresses: nothing listens there, or the network fails."""


def _reason(exc: BaseException) -> str:
    """The cause of a failed connect in a few words: ``connection refused`` rather than the whole chain."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc)


@dataclass
class _Target:
    """Where a client command connects, and with what: addresses, token, TLS, timeout."""

    addresses: list[str]
    token: bytes | None
    tls: ssl.SSLContext | None
    timeout: float
    client_certificate: bool

    def connect(self) -> Client | GroupClient:
        """The `Client` of a server alone, or a `GroupClient` over a group's members.

        Raises `_Unreachable` if no address answers, `click.ClickException`
        with the cause for any other failure.
        """
        from .client import GroupClient

        first = self._connect_first()
        addresses = self.addresses
        if len(addresses) == 1:
            group = first.members().members
            if len(group) > 1:  # a member of a group: the others are known to it
                addresses = list(group)
        if len(addresses) == 1:
            return first
        first.close()
        # One member let this client in: the others, if down, are retried by the group client itself.
        return GroupClient.connect(addresses, self.timeout, token=self.token, tls=self.tls)

    def connect_member(self, address: str) -> Client:
        """A `Client` of the member at ``address`` alone. Raises as `connect`."""
        from .client import Client

        with self._explained(address):
            return Client.connect(address, self.timeout, token=self.token, tls=self.tls)

    def _connect_first(self) -> Client:
        unreachable = []
        for address in self.addresses:
            try:
                return self.connect_member(address)
            except _Unreachable as exc:
                unreachable.append(exc.message)
        raise _Unreachable("; ".join(unreachable))

    @contextlib.contextmanager
    def _explained(self, address: str) -> Iterator[None]:
        """Turn a failure to connect to ``address`` into one line saying why (see the module docstring)."""
        from .errors import AuthenticationFailed, ConnectionLost

        try:
            yield
        except AuthenticationFailed as exc:
            given = "the token given was refused" if self.token is not None else "the server wants one"
            raise click.ClickException(f"authentication failed: check --token ({given}: {exc})") from exc
        except ssl.SSLCertVerificationError as exc:
            raise click.ClickException(
                f"TLS: the certificate of {address} is not trusted ({exc.verify_message}): "
                "pass --tls-ca FILE, the CA that signed it"
            ) from exc
        except ssl.SSLError as exc:
            if _speaks_plain(address, self.timeout):
                raise click.ClickException(
                    f"TLS is not offered by {address}: it speaks plain dbqueue (drop --tls and --tls-ca)"
                ) from exc
            hint = "" if self.client_certificate else " (does it require a client certificate? --tls-cert, --tls-key)"
            raise click.ClickException(f"TLS handshake with {address} failed: {exc.reason or exc}{hint}") from exc
        except ConnectionLost as exc:
            if not _accepts(address, self.timeout):
                raise _Unreachable(f"cannot connect to {address}: {_reason(exc)}") from exc
            if self.tls is None and _speaks_tls(address, self.timeout):
                raise click.ClickException(
                    f"TLS is expected by {address}: pass --tls (and --tls-ca FILE if a private CA signed "
                    "its certificate)"
                ) from exc
            if self.tls is not None and not self.client_certificate:
                raise click.ClickException(
                    f"{address} closed the connection after the TLS handshake: it may require a client "
                    f"certificate (--tls-cert, --tls-key) ({exc})"
                ) from exc
            raise click.ClickException(f"{address} did not complete the dbqueue handshake: {exc}") from exc


def _host_port(address: str) -> tuple[str, int]:
    from .client import parse_address

    return parse_address(address)


def _accepts(address: str, timeout: float) -> bool:
    """Whether anything accepts a TCP connection at ``address``."""
    try:
        socket.create_connection(_host_port(address), timeout).close()
    except OSError:
        return False
    return True


def _speaks_tls(address: str, timeout: float) -> bool:
    """Whether the server at ``address`` answers a TLS handshake (if only with a refusal: a TLS alert)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS: nothing is sent over it
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout) as sock, context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "")
    except OSError:
        return False


def _speaks_plain(address: str, timeout: float) -> bool:
    """Whether a plain (not TLS) dbqueue server answers at ``address``."""
    from .client import Client
    from .errors import AuthenticationFailed, DbQueueError

    try:
        Client.connect(address, timeout).close()
    except AuthenticationFailed:
        return True
    except (DbQueueError, OSError):
        return False
    return True


def _client_tls(tls: bool, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is not None:
        raise click.UsageError("--tls-key goes with --tls-cert")
    if not (tls or ca or cert):
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise click.UsageError(f"cannot load the TLS files: {exc}") from exc
    return context


def _client_token(context: click.Context, token: str | None, token_file: str | None) -> bytes | None:
    """The token to send: the command line's before the environment's, and a file before a literal."""
    given = [
        name for name in ("token", "token_file") if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if len(given) == 2:
        raise click.UsageError("give --token or --token-file, not both")
    if given == ["token"]:
        token_file = None
    elif given == ["token_file"]:
        token = None
    if token_file is not None:
        with open(token_file, "rb") as file:
            value = file.read().strip()
        if not value:
            raise click.BadParameter(f"the token in {token_file} is empty", param_hint="--token-file")
        return value
    if token is not None:
        return token.strip().encode()
    return None


# The options that say how to reach a server, each declared once for every command that connects (`_connects`).
# ``envvar`` is the option's short environment name, the same in every such command; `_name_environment_variables`
# puts DBQUEUE_<COMMAND>_<OPTION> before it.
_CONNECTION_OPTIONS = (
    click.option(
        "--address",
        default=DEFAULT_ADDRESS,
        show_default=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        envvar="DBQUEUE_ADDRESS",
        help="The server; several, or one member of a group, for a group (its other members are asked of it).",
    ),
    click.option(
        "--token",
        default=None,
        envvar=("DBQUEUE_TOKEN", "DBQUEUE_AUTH_TOKEN"),  # the server's own variable lets a local client in
        help="The server's token (a command line is visible to all: prefer a file).",
    ),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        envvar=("DBQUEUE_TOKEN_FILE", "DBQUEUE_AUTH_TOKEN_FILE"),
        help="Read the token from this file.",
    ),
    click.option("--tls", is_flag=True, envvar="DBQUEUE_TLS", help="Connect over TLS, trusting the system's CAs."),
    click.option(
        "--tls-ca",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        envvar="DBQUEUE_TLS_CA",
        help="Connect over TLS, trusting only this CA (PEM) for the server's certificate.",
    ),
    click.option(
        "--tls-cert",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        envvar="DBQUEUE_CLIENT_CERT",
        help="Present this client certificate (PEM) over TLS.",
    ),
    click.option(
        "--tls-key",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        envvar="DBQUEUE_CLIENT_KEY",
        help="The client certificate's private key (PEM).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        envvar="DBQUEUE_TIMEOUT",
        help="Seconds to wait for a connection or an answer.",
    ),
)


def _old_host_port(*, hidden: bool) -> Callable[[F], F]:
    """``--host`` and ``--port``, the spelling before ``--address``, for a command that `_connects`: they
    name the server when ``--address`` is not given. ``hidden``: kept for old command lines only."""
    host = click.option(
        "--host", default="127.0.0.1", show_default=True, hidden=hidden, help="The server, unless --address is given."
    )
    port = click.option("--port", default=3003, show_default=True, type=click.IntRange(1, 65535), hidden=hidden)

    def declare(command: F) -> F:
        return host(port(command))

    return declare


def _connects(command: Callable[..., None]) -> Callable[..., None]:
    """Give a client command the connection options; it receives them as one ``target`` (`_Target`)."""

    @functools.wraps(command)
    def run(
        *,
        address: str,
        token: str | None,
        token_file: str | None,
        tls: bool,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        timeout: float,
        **arguments: Any,
    ) -> None:
        from .client import parse_address

        context = click.get_current_context()
        host, port = arguments.pop("host", None), arguments.pop("port", None)  # `_old_host_port`, if it has them
        if host is not None and context.get_parameter_source("address") is ParameterSource.DEFAULT:
            address = f"{host}:{port}"
        addresses = [part.strip() for part in address.split(",") if part.strip()]
        try:
            for part in addresses:
                parse_address(part)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--address") from exc
        if not addresses:
            raise click.BadParameter("no address given", param_hint="--address")
        target = _Target(
            addresses,
            _client_token(context, token, token_file),
            _client_tls(tls, tls_ca, tls_cert, tls_key),
            timeout,
            tls_cert is not None,
        )
        try:
            command(target=target, **arguments)
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    for option in reversed(_CONNECTION_OPTIONS):
        run = option(run)
    return run


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn what a command may meet (a refusal, a lost connection) into click's one-line error."""
    from .errors import ConnectionLost, DbQueueError, RequestError

    try:
        yield
    except (click.ClickException, BrokenPipeError):
        raise  # click prints the one, and quietly exits on the other (`... | head`)
    except RequestError as exc:
        raise click.ClickException(exc.message) from exc
    except ConnectionLost as exc:
        raise click.ClickException(f"connection lost: {exc}") from exc
    except DbQueueError as exc:
        raise click.ClickException(str(exc)) from exc
    except ssl.SSLError as exc:
        raise click.ClickException(f"TLS: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def _session(target: _Target) -> Iterator[Client | GroupClient]:
    """A connected client for the command's body, with its errors made one line; closed after."""
    with _one_line_errors():
        client = target.connect()
        try:
            yield client
        finally:
            client.close()


class _Seconds(click.ParamType[float, Any]):
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


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value))


# --- send, read, create, delete, purge, list -----------------------------------------------------


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
    from .client import Client
    from .errors import MessageTooLarge, RequestError

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


@main.command()
@click.argument("queue")
@click.argument("data", required=False)
@click.option("--whole", is_flag=True, help="Send all of stdin as one message (default: each non-empty line).")
@click.option(
    "--delay",
    type=_Seconds(),
    default=0.0,
    metavar="SECONDS",
    help="Make the messages readable only after this delay.",
)
@click.option("--key", default=None, help="With a group: send to the member this key hashes to (default: in turn).")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "ids": [...]} instead of an id a line.')
@_connects
def send(
    target: _Target, queue: str, data: str | None, whole: bool, delay: float, key: str | None, as_json: bool
) -> None:
    """Send DATA, or each line of stdin, to QUEUE.

    DATA omitted or -: each non-empty line of stdin is a message (--whole: all of it). Prints each
    message's id.
    """
    from .errors import ConnectionLost, RequestError

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
    with _session(target) as client:
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
        _echo_json({"queue": queue, "ids": ids})
    if failure is not None:
        raise click.ClickException(failure if from_argument else f"{failure} ({len(ids)} sent; stopped there)")


@main.command()
@click.argument("queue")
@click.option("--count", type=click.IntRange(1, 65535), default=1, show_default=True, help="Messages to read at most.")
@click.option(
    "--visibility",
    type=_Seconds(never=True, zero=False),
    default=None,
    metavar="SECONDS",
    help="How long the messages are hidden from other readers, unless confirmed (default: the queue's visibility "
    "timeout; never: until this command ends).",
)
@click.option(
    "--wait",
    type=_Seconds(),
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
@_connects
def read(
    target: _Target, queue: str, count: int, visibility: float | None, wait: float, confirm: bool, as_json: bool
) -> None:
    """Read messages of QUEUE and print their data.

    Up to --count messages, one a line (nothing if there is none). Without --confirm they go back to
    the queue when the command ends.
    """
    with _session(target) as client:
        messages = client.read_batch(queue, count, visibility_timeout=visibility, wait=wait)
        if as_json:
            from .report import message_json

            _echo_json([message_json(message) for message in messages])
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
                from .report import plural

                id_, outcome = failed[0]
                raise click.ClickException(
                    f"{plural(len(failed), 'message')} not confirmed; message {id_}: {outcome.message}"
                )


@main.command()
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
@_connects
def peek(target: _Target, queue: str, count: int, delayed: bool, in_flight: bool, as_json: bool) -> None:
    """Show messages of QUEUE without taking them.

    Up to --count messages, oldest first: each one's id, state, deliveries, age and, for a dead
    letter, where it came from; then its data, as pretty JSON, text or hex as fits. Nothing
    changes on the server: no delivery is counted.
    """
    from .report import message_json, peek_lines

    with _session(target) as client:
        messages = client.peek(queue, count, delayed=delayed, in_flight=in_flight)
    now = time.time()
    if as_json:
        _echo_json([message_json(message, now) for message in messages])
        return
    if not messages:
        click.echo(f"(no messages to show in {queue})", err=True)
    for line in peek_lines(messages, now, width=_width()):
        click.echo(line)


@main.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--count",
    type=click.IntRange(1, 2**32 - 1),
    default=None,
    help="Messages to move at most, oldest first (default: every ready one).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"source": ..., "destination": ..., "moved": N}.')
@_connects
def move(target: _Target, source: str, destination: str, count: int | None, as_json: bool) -> None:
    """Move the ready messages of SOURCE to the back of DESTINATION.

    Redrives a dead-letter queue: dbqueue move jobs-dead jobs. Each message moves once, in one
    step on the server (a lost connection leaves each message in one queue or the other). Against a
    group, each member moves its own messages.
    """
    from .report import plural

    with _session(target) as client:
        moved = client.move(source, destination, count=count)
    if as_json:
        _echo_json({"source": source, "destination": destination, "moved": moved})
    else:
        click.echo(f"moved {plural(moved, 'message')} from {source} to {destination}")


@main.command()
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
    type=_Seconds(never=True, zero=False),
    default=None,
    metavar="SECONDS",
    help="How long a message read without a visibility timeout of its own stays hidden unless confirmed "
    "(default: the server's --default-visibility-timeout; never: until its reader disconnects).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "created": true}.')
@_connects
def create(
    target: _Target,
    queue: str,
    capacity: int | None,
    max_deliveries: int | None,
    dead_letter_queue: str | None,
    visibility_timeout: float | None,
    as_json: bool,
) -> None:
    """Create QUEUE (nothing changes if it exists: it keeps its options)."""
    with _session(target) as client:
        client.create(
            queue,
            capacity=capacity,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
            visibility_timeout=visibility_timeout,
        )
    if as_json:
        _echo_json({"queue": queue, "created": True})
    else:
        click.echo(f"created {queue}")


@main.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "deleted": true}.')
@_connects
def delete(target: _Target, queue: str, as_json: bool) -> None:
    """Delete QUEUE and every message it holds."""
    with _session(target) as client:
        client.delete(queue)
    if as_json:
        _echo_json({"queue": queue, "deleted": True})
    else:
        click.echo(f"deleted {queue}")


@main.command()
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True, help='Print {"queue": ..., "purged": N}.')
@_connects
def purge(target: _Target, queue: str, as_json: bool) -> None:
    """Drop QUEUE's ready and delayed messages.

    Messages in flight stay. Prints how many were dropped.
    """
    from .report import plural

    with _session(target) as client:
        count = client.purge(queue)
    if as_json:
        _echo_json({"queue": queue, "purged": count})
    else:
        click.echo(f"purged {plural(count, 'message')} from {queue}")


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of names.")
@_connects
def list_queues(target: _Target, as_json: bool) -> None:
    """Print the name of every queue, one a line."""
    from .report import printable

    with _session(target) as client:
        names = sorted(str(stats["name"]) for stats in client.list_queues())
    if as_json:
        _echo_json(names)
    else:
        for name in names:
            click.echo(printable(name))


# --- stats ---------------------------------------------------------------------------------------


def _figures(client: Client | GroupClient, queue: str | None) -> list[dict[str, Any]]:
    return [client.stats(queue)] if queue else client.list_queues()


def _title(client: Client | GroupClient, target: _Target) -> str:
    from .client import GroupClient

    if isinstance(client, GroupClient):
        return f"dbqueue group of {len(client.addresses)} ({client.addresses[0]}, …)"
    return f"dbqueue {target.addresses[0] if len(target.addresses) == 1 else ','.join(target.addresses)}"


@main.command()
@click.argument("queue", required=False)
@click.option("--queue", "queue_option", default=None, hidden=True)  # the spelling before QUEUE
@_old_host_port(hidden=True)
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
@_connects
def stats(
    target: _Target,
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
    from .client import GroupClient

    queue = queue or queue_option
    if watch is not None:
        if members:
            raise click.UsageError("--members and --watch do not go together")
        _watch(target, queue, watch, as_json)
        return
    with _session(target) as client:
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
            _echo_json({"group": figures[0] if queue else figures, "members": shown})
        else:
            _echo_json(figures[0] if queue else figures)
        return
    from .report import queue_details, queue_lines

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
        lines = [_title(client, target), *queue_lines(rows, width=_width())]
        if not figures:
            lines.append("(no queues)")
    for line in lines:
        click.echo(line)


def _width() -> int:
    """The terminal's width (COLUMNS, else 80 when not on a terminal), but never under what a table needs."""
    import shutil

    return max(69, shutil.get_terminal_size().columns)


def _down_members(target: _Target, client: Client | GroupClient) -> list[tuple[str, str]]:
    """The members of a group whose figures are missing from its sums, each with why (asked again
    alone, to say it: a member that answers by then is said not to have answered)."""
    from .client import GroupClient
    from .errors import DbQueueError

    if not isinstance(client, GroupClient):
        return []
    down: list[tuple[str, str]] = []
    for address in client.down:
        try:
            target.connect_member(address).close()
        except click.ClickException as exc:
            reason = exc.message.removeprefix(f"cannot connect to {address}: ").removeprefix(f"{address} ")
        except (DbQueueError, OSError) as exc:
            reason = str(exc)
        else:
            reason = "did not answer in time (it answers now)"
        down.append((address, reason))
    return down


def _per_member(
    target: _Target, client: Client | GroupClient, queue: str | None
) -> list[tuple[str, list[dict[str, Any]] | str]]:
    """Each member's own figures, or why it could not be asked."""
    from .client import GroupClient
    from .errors import DbQueueError, NoSuchQueue

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


def _watch(target: _Target, queue: str | None, interval: float, as_json: bool) -> None:
    """`stats --watch`: a screen a refresh, until Ctrl-C; a lost server is waited for, not fatal."""
    import datetime

    from .client import GroupClient
    from .errors import ConnectionLost, ProtocolError, RequestError
    from .report import Sample, watch_frame

    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="replace")  # a terminal that cannot show "…" gets "?", not an exception
    on_terminal = out.isatty()

    def draw(sample: Sample | None, previous: Sample | None, status: str, fresh: bool = False) -> None:
        """Show ``sample`` (``fresh``: just taken; else the last one known, or None) and ``status``."""
        now = datetime.datetime.now().astimezone()  # local time, with its offset: ISO 8601 a script can compare
        if as_json:
            if sample is not None and fresh:
                _echo_json({"time": now.isoformat(timespec="seconds"), "queues": list(sample.queues)})
            else:
                _echo_json({"time": now.isoformat(timespec="seconds"), "status": status})
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

    with _one_line_errors():
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


# --- bench ---------------------------------------------------------------------------------------


@main.command()
@_old_host_port(hidden=False)
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
@_connects
def bench(
    target: _Target,
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
    from .errors import DbQueueError
    from .loadtest import BenchConfig, BenchFailure, BenchResult, DbQueueDriver, run_fan_in, run_load, run_round_trips
    from .report import bench_table, progress_bar
    from .server import new_event_loop

    if fan_in is not None:
        if latency:
            raise click.UsageError("--fan-in and --latency are two different runs: pick one")
        producers, consumers = _fan_in_shape(fan_in)
        pipeline = batch = 1
    if consumers == 0 and producers and not latency:
        raise click.BadParameter("a load test needs consumers to confirm what producers send", param_hint="--consumers")
    addresses = [_host_port(address) for address in target.addresses]
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
        _echo_json(figures)
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


def _delete_bench_queue(target: _Target, addresses: Iterable[tuple[str, int]], queue: str) -> None:
    """Delete the load test's queue on every server it created it on; say so on stderr where it cannot."""
    from .client import Client
    from .errors import DbQueueError, NoSuchQueue

    for host, port in addresses:
        try:
            with Client.connect((host, port), target.timeout, token=target.token, tls=target.tls) as client:
                client.delete(queue)
        except NoSuchQueue:
            pass
        except (DbQueueError, OSError, ssl.SSLError) as exc:
            click.echo(f"warning: could not delete the queue {queue!r} on {host}:{port}: {exc}", err=True)


# --- store ---------------------------------------------------------------------------------------


@main.group()
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
    from .errors import StoreError
    from .store import check as store_check

    try:
        report = store_check.check(directory) if into is None else store_check.salvage(directory, into)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(
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


# --- the environment -----------------------------------------------------------------------------


def _short_names(path: tuple[str, ...], param: click.Option) -> list[str]:
    """The environment names of an option of the command at ``path`` besides DBQUEUE_<COMMAND>_<OPTION>: those
    it declares (click's ``envvar``: the connection's options, serve's --tls-ca), else for serve's own options
    DBQUEUE_<OPTION>."""
    declared = _envvars(param)
    if declared or path != ("serve",):
        return declared
    return ["DBQUEUE_" + option_key(param).upper()]


def option_key(param: click.Option) -> str:
    """The name an option's environment variables are made of: its first long option's, not the Python
    parameter's (``--json`` -> ``json``, whatever name the command's function gives it)."""
    longs = [spelling for spelling in param.opts if spelling.startswith("--")]
    return (longs or param.opts)[0].lstrip("-").replace("-", "_")


def _environment_epilog(path: tuple[str, ...], declared: list[tuple[str, list[str]]]) -> str:
    """What --help says of the environment variables of the command at ``path``, whose shown options
    declare the short names in ``declared`` ((option, names), in the order of --help)."""
    scoped = "_".join(("DBQUEUE", *path)).upper().replace("-", "_") + "_<OPTION>"
    text = f"Environment: each option can also be set as {scoped}"
    if path == ("serve",):
        renamed = ", ".join(f"{option} as {' or '.join(names)}" for option, names in declared)
        return (
            f"{text} or DBQUEUE_<OPTION> (--max-in-flight: DBQUEUE_MAX_IN_FLIGHT), {renamed}; the token itself as "
            "DBQUEUE_AUTH_TOKEN."
        )
    if declared:
        short = ", ".join(f"{option}: {' or '.join(names)}" for option, names in declared)
        return f"{text}; the connection's options also as {short}."
    return text + "."


def _envvars(param: click.Parameter) -> list[str]:
    envvar = param.envvar
    if envvar is None:
        return []
    return [envvar] if isinstance(envvar, str) else list(envvar)


def _name_environment_variables(group: click.Group, path: tuple[str, ...] = ()) -> None:
    """Give every option of every command of ``group`` its environment variables (see the module docstring)."""
    for param in group.params:
        if isinstance(param, click.Option):
            param.allow_from_autoenv = False  # DBQUEUE_VERSION must not print the version
    for name, command in group.commands.items():
        here = (*path, name)
        if isinstance(command, click.Group):
            _name_environment_variables(command, here)
            continue
        options = [param for param in command.params if isinstance(param, click.Option) and param.name is not None]
        shown = [param for param in options if not param.hidden]
        declared = [(option_name(option_key(param)), _envvars(param)) for param in shown if _envvars(param)]
        command.epilog = _environment_epilog(here, declared)
        for param in options:
            if param.hidden:  # set by the program itself, or kept for old command lines
                param.envvar = None
                param.allow_from_autoenv = False
                continue
            scoped = "_".join(("DBQUEUE", *here, option_key(param))).upper().replace("-", "_")
            param.envvar = [scoped, *_short_names(here, param)]


_name_environment_variables(main)


if __name__ == "__main__":
    main()

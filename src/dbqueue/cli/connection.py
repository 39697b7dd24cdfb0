"""How a client command reaches a server: its connection options, the first contact, and its errors.

Theory of operation
-------------------
*Options.* The options that say how to reach a server (``--address``,
``--token``, ``--tls``...) are declared once, in `_CONNECTION_OPTIONS`, each
with its help and its short environment name; `connects` gives them to a
command, which receives them as one `Target`. ``--host`` and ``--port``, the
spelling before ``--address``, are `old_host_port`: they name the server
when ``--address`` is not given.

*Reaching a server.* A client command connects to the first of its
``--address`` list that answers, with a plain `Client`. That first contact
is made alone so that its failure can be explained: a wrong token, TLS
expected or not offered, an untrusted certificate, nothing listening (each
is told apart by a second, diagnostic connection: see `Target`). If the
server says it belongs to a group, or several addresses were given, the
command goes on with a `GroupClient` over every member: a send goes to one
member, a read takes from any, ``stats`` sums them.

A command that changes a group its servers know of (``create``,
``delete``, ``purge``, ``move``; a group made with ``--peers`` or
``--workers``) and misses a member fails (exit status 1), naming the members it
could not reach and why (`Target.why_down`): the group is left half-done
until the command is run again with every member up. ``stats`` says the same
of its figures, and exits 0.

*Errors* are one line (click's ``Error: ...``) with the cause, and exit
status 1 (`one_line_errors`); a usage error exits 2. No expected failure
shows a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

if TYPE_CHECKING:
    from ..client import Client, GroupClient

__all__ = [
    "DEFAULT_ADDRESS",
    "Target",
    "connects",
    "host_port",
    "old_host_port",
    "one_line_errors",
    "session",
]


F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ADDRESS = "127.0.0.1:3003"


class _Unreachable(click.ClickException):
    """No server answered at any of the addresses: nothing listens there, or the network fails."""


def _reason(exc: BaseException) -> str:
    """The cause of a failed connect in a few words: ``connection refused`` rather than the whole chain."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc)


@dataclass
class Target:
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
        from ..client import GroupClient

        first = self._connect_first()
        addresses = self.addresses
        group = first.members().members
        if len(addresses) == 1 and len(group) > 1:  # a member of a group: the others are known to it
            addresses = list(group)
        if len(addresses) == 1:
            return first
        first.close()
        # One member let this client in: the others, if down, are retried by the group client itself.
        # In a group its servers know of (--peers, --workers), a create, delete, purge or move that misses
        # a member must say so (`MembersUnreached`): the group is left half-done, and this short-lived
        # client will not finish it later. Addresses given of servers that each stand alone are
        # alternatives: one that is down is skipped.
        return GroupClient.connect(
            addresses, self.timeout, token=self.token, tls=self.tls, require_every_member=len(group) > 1
        )

    def why_down(self, addresses: list[str]) -> list[tuple[str, str]]:
        """Each of ``addresses`` (members a group call could not reach) with why: each is asked again
        alone, to say it (a member that answers by then is said not to have answered in time)."""
        from ..errors import DbQueueError

        down: list[tuple[str, str]] = []
        for address in addresses:
            try:
                self.connect_member(address).close()
            except click.ClickException as exc:
                reason = exc.message.removeprefix(f"cannot connect to {address}: ").removeprefix(f"{address} ")
            except (DbQueueError, OSError) as exc:
                reason = str(exc)
            else:
                reason = "did not answer in time (it answers now)"
            down.append((address, reason))
        return down

    def connect_member(self, address: str) -> Client:
        """A `Client` of the member at ``address`` alone. Raises as `connect`."""
        from ..client import Client

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
        from ..errors import AuthenticationFailed, ConnectionLost

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


def host_port(address: str) -> tuple[str, int]:
    from ..client import parse_address

    return parse_address(address)


def _accepts(address: str, timeout: float) -> bool:
    """Whether anything accepts a TCP connection at ``address``."""
    try:
        socket.create_connection(host_port(address), timeout).close()
    except OSError:
        return False
    return True


def _speaks_tls(address: str, timeout: float) -> bool:
    """Whether the server at ``address`` answers a TLS handshake (if only with a refusal: a TLS alert)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS: nothing is sent over it
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout) as sock, context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "")
    except OSError:
        return False


def _speaks_plain(address: str, timeout: float) -> bool:
    """Whether a plain (not TLS) dbqueue server answers at ``address``."""
    from ..client import Client
    from ..errors import AuthenticationFailed, DbQueueError

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


# The options that say how to reach a server, each declared once for every command that connects (`connects`).
# ``envvar`` is the option's short environment name, the same in every such command; `name_environment_variables`
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


def old_host_port(*, hidden: bool) -> Callable[[F], F]:
    """``--host`` and ``--port``, the spelling before ``--address``, for a command that `connects`: they
    name the server when ``--address`` is not given. ``hidden``: kept for old command lines only."""
    host = click.option(
        "--host", default="127.0.0.1", show_default=True, hidden=hidden, help="The server, unless --address is given."
    )
    port = click.option("--port", default=3003, show_default=True, type=click.IntRange(1, 65535), hidden=hidden)

    def declare(command: F) -> F:
        return host(port(command))

    return declare


def connects(command: Callable[..., None]) -> Callable[..., None]:
    """Give a client command the connection options; it receives them as one ``target`` (`Target`)."""

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
        from ..client import parse_address

        context = click.get_current_context()
        host, port = arguments.pop("host", None), arguments.pop("port", None)  # `old_host_port`, if it has them
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
        target = Target(
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
def one_line_errors() -> Iterator[None]:
    """Turn what a command may meet (a refusal, a lost connection) into click's one-line error."""
    from ..errors import ConnectionLost, DbQueueError, RequestError

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
def session(target: Target) -> Iterator[Client | GroupClient]:
    """A connected client for the command's body, with its errors made one line; closed after."""
    with one_line_errors():
        client = target.connect()
        try:
            yield client
        finally:
            client.close()

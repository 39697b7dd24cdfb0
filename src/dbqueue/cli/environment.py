"""Where every option of every command can also come from: its environment variables.

Theory of operation
-------------------
Every option of every command can also come from an environment variable:
``DBQUEUE_<COMMAND>_<OPTION>`` always (``DBQUEUE_SERVE_MAX_IN_FLIGHT``,
``DBQUEUE_STATS_ADDRESS``), named after the option, not the function's
parameter (`option_key`), and a shorter name where an option means the same
wherever it appears: serve's own options as ``DBQUEUE_<OPTION>``
(``DBQUEUE_PORT``), and the options that say how to reach a server as
``DBQUEUE_ADDRESS``, ``DBQUEUE_TOKEN`` and so on, declared with the option
itself (click's ``envvar``: see `dbqueue.cli.connection`). No short name has
two meanings: the CA a server checks client certificates with is
``DBQUEUE_CLIENT_CA`` (declared by serve's ``--tls-ca``), the CA a client
trusts a server's certificate with ``DBQUEUE_TLS_CA``.
`name_environment_variables` gives every option its names, and every command
the --help lines that list them, once all commands exist, so none is
forgotten. The command line wins over the environment.
"""

from __future__ import annotations

import click

__all__ = ["envvars", "name_environment_variables", "option_key", "option_name"]


def option_name(field_name: str) -> str:
    """The command-line option of a `Limits` field: ``max_in_flight`` -> ``--max-in-flight``."""
    return "--" + field_name.replace("_", "-")


def _short_names(path: tuple[str, ...], param: click.Option) -> list[str]:
    """The environment names of an option of the command at ``path`` besides DBQUEUE_<COMMAND>_<OPTION>: those
    it declares (click's ``envvar``: the connection's options, serve's --tls-ca), else for serve's own options
    DBQUEUE_<OPTION>."""
    declared = envvars(param)
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


def envvars(param: click.Parameter) -> list[str]:
    """The environment variables ``param`` is read from (click's ``envvar``, always as a list)."""
    envvar = param.envvar
    if envvar is None:
        return []
    return [envvar] if isinstance(envvar, str) else list(envvar)


def name_environment_variables(group: click.Group, path: tuple[str, ...] = ()) -> None:
    """Give every option of every command of ``group`` its environment variables (see the module docstring)."""
    for param in group.params:
        if isinstance(param, click.Option):
            param.allow_from_autoenv = False  # DBQUEUE_VERSION must not print the version
    for name, command in group.commands.items():
        here = (*path, name)
        if isinstance(command, click.Group):
            name_environment_variables(command, here)
            continue
        options = [param for param in command.params if isinstance(param, click.Option) and param.name is not None]
        shown = [param for param in options if not param.hidden]
        declared = [(option_name(option_key(param)), envvars(param)) for param in shown if envvars(param)]
        command.epilog = _environment_epilog(here, declared)
        for param in options:
            if param.hidden:  # set by the program itself, or kept for old command lines
                param.envvar = None
                param.allow_from_autoenv = False
                continue
            scoped = "_".join(("DBQUEUE", *here, option_key(param))).upper().replace("-", "_")
            param.envvar = [scoped, *_short_names(here, param)]

"""The `dbqueue` command: ``serve`` runs a server or a group; ``send``, ``read``, ``peek``, ``move``,
``create``, ``delete``, ``purge``, ``list`` and ``stats`` talk to one; ``store check`` looks at a store;
``bench`` load-tests.

The command's parts, one module each: `serving` (``serve``), `queues` (``send``, ``read``, ``peek``,
``move``, ``create``, ``delete``, ``purge``, ``list``), `figures` (``stats``, ``stats --watch``),
`benchmark` (``bench``), `store_check` (``store check``); what they share: `connection` (the options
that say how to reach a server, the first contact and its diagnosis, one-line errors), `formats`
(durations in seconds, JSON, the terminal's width) and `environment` (every option's environment
variables). This module makes the group, `main`, and names every option's variables once all
commands are in it. ``python -m dbqueue.cli`` runs `main` (``__main__``).

Every option can also come from the environment (``DBQUEUE_<COMMAND>_<OPTION>``, and shorter
names: see `environment`). Durations are in seconds on every command line, as in the Python API.
Errors are one line (click's ``Error: ...``) with the cause, and exit status 1; a usage error
exits 2. No expected failure shows a traceback.
"""

from __future__ import annotations

import click

from .._version import __version__
from .benchmark import bench
from .environment import name_environment_variables, option_key, option_name
from .figures import stats
from .queues import create, delete, list_queues, move, peek, purge, read, send
from .serving import serve
from .store_check import store

__all__ = ["main", "option_key", "option_name", "serve"]


@click.group(context_settings={"auto_envvar_prefix": "DBQUEUE"})
@click.version_option(__version__, prog_name="dbqueue")
def main() -> None:
    """dbqueue: a message-queue server and its tools.

    Every option can also be set in the environment: DBQUEUE_<COMMAND>_<OPTION>, or the shorter name
    each command's --help shows (DBQUEUE_PORT, DBQUEUE_ADDRESS, DBQUEUE_TOKEN...).
    """


main.add_command(serve)
for client_command in (send, read, peek, move, create, delete, purge, list_queues, stats):
    main.add_command(client_command)
main.add_command(bench)
main.add_command(store)
name_environment_variables(main)

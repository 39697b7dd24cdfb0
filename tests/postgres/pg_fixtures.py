"""Fixtures of the PostgreSQL tests: a throwaway cluster, a fresh database per test, both stores, server processes.

Not a conftest.py: the tests of other folders import the top-level conftest by
its module name, which a second conftest module would shadow. Each test module
imports the fixtures it uses from here (a session-scoped cluster is then made
once per module that asks for it).

The cluster (`pg_cluster.Cluster`) is made with Debian's initdb in a temporary
directory on a free port, owned by an unprivileged user when the tests run as
root, and removed at the end of the session. Without PostgreSQL installed the
tests that need it are skipped, saying why (CI installs it: .ci/run).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_cluster import Cluster, bin_dir, free_port
from pg_harness import Harness
from pg_server import PgServer

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    cluster = Cluster.create().start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a new, empty database on the session's cluster."""
    return pg_cluster.create_database(f"t{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "sqlite":
        return Harness("sqlite", str(tmp_path / "store"))
    url: str = request.getfixturevalue("pg_url")
    return Harness("postgres", url)


@pytest.fixture
def processes_factory(tmp_path: Path) -> Iterator[Callable[..., PgServer]]:
    started: list[PgServer] = []

    def start(url: str, *, index: int = 0, standby: bool = False, wait: bool = True) -> PgServer:
        name = f"standby{len(started)}" if standby else f"member{index}-{len(started)}"
        server = PgServer(url, free_port(), tmp_path / f"{name}.log", index=index, standby=standby)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.kill()

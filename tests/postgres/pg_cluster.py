"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary directory, a free port.

Debian's binaries (``/usr/lib/postgresql/<major>/bin``), never the system service.
initdb refuses to run as root, so when the caller is root the cluster belongs to
an unprivileged system user (`TEST_USER`, created if missing) and every command
runs through ``runuser``. The socket directory is the cluster's own directory,
so nothing is left in /var/run. `Cluster.remove` stops the server and deletes
the directory; `Cluster.kill` is ``kill -9`` of the postmaster (the tests of
failover and durability use it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TEST_USER = "dbqueue-test"


def bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin directory, or None if PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_user() -> None:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", TEST_USER], check=True)


class Cluster:
    """One PostgreSQL cluster in a temporary directory on 127.0.0.1, port `port`, superuser ``postgres``."""

    def __init__(self, data: Path, port: int, *, root: Path | None = None) -> None:
        self.data = data
        self.port = port
        self._root = root  # the temporary directory to delete with the cluster
        bindir = bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bindir
        self.as_user = os.geteuid() == 0

    # --- making one ----------------------------------------------------------------

    @classmethod
    def create(cls, **settings: str) -> Cluster:
        """initdb a new cluster (trust authentication on loopback) with ``settings`` in postgresql.conf."""
        root = Path(tempfile.mkdtemp(prefix="dbqueue-pg-"))
        os.chmod(root, 0o755)
        cluster = cls(root / "data", free_port(), root=root)
        if cluster.as_user:
            _ensure_user()
            shutil.chown(root, TEST_USER)
        cluster._run(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--no-locale"
        )
        defaults = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{root}'",
            "max_connections": "200",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "shared_buffers": "64MB",
            "fsync": "on",
            "synchronous_commit": "on",
        }
        cluster.configure(**{**defaults, **settings})
        with open(cluster.data / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return cluster

    def replica(self, *, name: str = "replica1") -> Cluster:
        """A streaming replica of this (running) cluster, made by pg_basebackup; not started."""
        root = Path(tempfile.mkdtemp(prefix="dbqueue-pg-replica-"))
        os.chmod(root, 0o755)
        replica = Cluster(root / "data", free_port(), root=root)
        if replica.as_user:
            shutil.chown(root, TEST_USER)
        replica._run(
            "pg_basebackup", "-D", str(replica.data), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip
        replica.configure(port=str(replica.port), unix_socket_directories=f"'{root}'")
        # pg_basebackup -R wrote primary_conninfo into postgresql.auto.conf, which wins over postgresql.conf:
        # the name the primary's synchronous_standby_names knows goes there too (a later line wins).
        with open(replica.data / "postgresql.auto.conf", "a") as auto:
            auto.write(f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres application_name={name}'\n")
        return replica

    def configure(self, **settings: str) -> None:
        with open(self.data / "postgresql.conf", "a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    # --- running it ----------------------------------------------------------------

    def start(self) -> Cluster:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data.parent / "log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """``kill -9`` of the postmaster and every backend (a machine's death, as far as one host can)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Its backends notice the postmaster's death on their own; the shared memory goes with the last one.
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(child), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run(["pgrep", "-f", f"-D {self.data}"], capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()

    def remove(self) -> None:
        """Stop it (immediately) and delete its directory."""
        self.stop("immediate")
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    # --- addresses -----------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / program), *args]
        if self.as_user:
            command = ["runuser", "-u", TEST_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if check and result.returncode:
            log = self.data.parent / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")
        return result

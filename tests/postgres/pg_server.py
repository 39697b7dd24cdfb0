"""A dbqueue server on a PostgreSQL store as a child process, for tests that kill it with ``kill -9``.

Run as a script, it serves ``Server(port=PORT, store=URL, member_index=I, standby=...)``
through `dbqueue.server.run` (the same loop, signals and stop as ``dbqueue serve``),
so these tests do not depend on the command line's options.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from dbqueue import Client, ConnectionLost

START_TIMEOUT = 15.0


class PgServer:
    """One `dbqueue.Server` process on ``url`` at ``port`` (member ``index``, or a standby)."""

    def __init__(
        self,
        url: str,
        port: int,
        log: Path,
        *,
        index: int = 0,
        standby: bool = False,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.url = url
        self.port = port
        self.host = host
        self.netns = netns  # run inside this network namespace (``ip netns exec``)
        self.index = index
        self.standby = standby
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> PgServer:
        command = [sys.executable, __file__, self.url, str(self.port), str(self.index), "--host", self.host]
        if self.standby:
            command.append("--standby")
        if self.netns is not None:
            command = ["ip", "netns", "exec", self.netns, *command]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the server answers a Hello; return when (time.monotonic()). Raise if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                Client.connect(self.address, timeout=1.0).close()
                return time.monotonic()
            except ConnectionLost:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited {self.process.returncode}:\n{self.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not serving on {self.address}:\n{self.log_tail()}") from None
                time.sleep(0.01)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("port", type=int)
    parser.add_argument("index", type=int)
    parser.add_argument("--standby", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from dbqueue.server import Server, run

    run(Server(args.host, args.port, store=args.url, member_index=args.index, standby=args.standby))


if __name__ == "__main__":
    main()

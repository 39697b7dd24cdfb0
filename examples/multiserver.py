"""Start a group of 4 dbqueue servers on 127.0.0.1:3000-3003 (Ctrl-C stops them all).

The same as `dbqueue serve --workers 4 --port 3000`, shown as the few lines
that do it. A Python process runs on one core, so a group is one process per
server: a supervisor starts worker i as `dbqueue serve --port 3000+i
--member-index i --peers <all four>`, restarts a worker that dies, and stops
them all on Ctrl-C or SIGTERM. The members hold their own part of every queue
and never talk to each other; clients spread the load (`GroupClient`, or
examples/multiserver_client.py).

    python examples/multiserver.py [--workers 4] [--port 3000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import logging

from dbqueue.server.workers import supervise, worker_command

HOST = "127.0.0.1"  # loopback: a server on another address needs a token (see `dbqueue serve --help`)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=3000, help="the first member's port; the others follow")
    parser.add_argument("--data-dir", default=None, help="keep each member's queues in DIR/worker-i")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    members = [f"{HOST}:{args.port + i}" for i in range(args.workers)]
    shared = ["--host", HOST, "--log-level", "info"]
    commands = [worker_command(i, args.port + i, members, shared, args.data_dir) for i in range(args.workers)]
    raise SystemExit(supervise(commands))


if __name__ == "__main__":
    main()

"""CPU instructions a dbqueue server spends per request, counted by valgrind: exact where seconds are noise.

Run ``python bench/instructions.py`` (``--metrics`` to serve Prometheus metrics
too, ``--batch 100`` for batches, ``--compare-with REV`` for another commit
in the same run). It starts the server under ``valgrind --tool=callgrind``
twice, runs the load test (`dbqueue.loadtest`, 16 producers + 16 consumers,
pipeline 32, 128-byte messages) against it for ``--iterations`` A and then B
iterations, and divides the difference in instructions by the difference in
requests: start-up, shutdown and import costs cancel out, while the event
loop, the garbage collector, the expiry timer and the system-call wrappers
all count. Kernel work does not (valgrind counts user space only).

``--fan-in`` drives the server with the fan-in load instead
(`dbqueue.loadtest.run_fan_in`: 4 producers and 4 consumers in one client
process, one request in flight each, ``--iterations`` messages per producer):
every request arrives alone, and the count takes in the event loop, the
transport's reads and writes and everything else the server does for a lone
request. ``--floor`` counts `floor.py` (dbqueue's framing, canned replies, no
queue work) under the same load instead of the server: the two counts' gap is
what the server's queue work and its structure cost per request.
A server's count includes its shutdown, whose collections walk what is
still alive, among it the broker's stale deadline entries (up to 1,024 more
than live ones): with the default 40 and 160 iterations they put about 1,000
instructions into each fan-in request's figure; ``--iterations 400 1600``
makes them a small part.
``--keep DIR`` keeps callgrind's output of each measured process there, for
``callgrind_annotate`` (per function, with the C functions of the interpreter,
uvloop and libuv).

``--direct`` counts the server's own work per message, nothing else: one
`Session` with a null transport is fed prebuilt frames in this process (no
sockets, no event loop, no reads that find the queue empty), each round being
32 sends, 32 reads and 32 confirms (or, with ``--batch N``, one send_batch,
one read_batch and one confirm_batch of N; with ``--lone``, one send, one
read and one confirm, each in a buffer of its own, as an unpipelined client
sends them). Every frame is built before the
count starts, for both sizes alike, so only handling them differs; the
process ends without the interpreter's shutdown (``os._exit``), whose
collections would walk the objects left alive, more after more rounds.

On a shared machine, timings move by ±20% from run to run; these counts
move by about 1%, so a change of a few percent is visible. Part of that 1%
is the hash seed (string hashes decide where dict and set entries land, and
so how many probes a lookup takes): every measured process runs with
``PYTHONHASHSEED`` fixed (``--hash-seed``, 0 unless told), and the output says
which, so two runs of the same code count the same.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `peers` sits next to this file

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--iterations", type=int, nargs=2, default=[40, 160], metavar=("A", "B"), help="two load sizes")
    parser.add_argument(
        "--batch", type=int, default=1, help="messages a request (send_batch / read_batch / confirm_batch)"
    )
    parser.add_argument("--metrics", action="store_true", help="serve Prometheus metrics (--metrics-port)")
    parser.add_argument(
        "--fan-in", action="store_true", help="the fan-in load (one request in flight per connection) instead"
    )
    parser.add_argument("--floor", action="store_true", help="count floor.py, not the server (with --fan-in)")
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's output files in DIR (callgrind_annotate)")
    parser.add_argument("--server-python", default=sys.executable, help="interpreter for the server")
    parser.add_argument(
        "--compare-with", metavar="REV", help="also count a git revision's src/ (exported with git archive)"
    )
    parser.add_argument("--direct", action="store_true", help="feed one in-process Session prebuilt frames (see above)")
    parser.add_argument(
        "--lone", action="store_true", help="--direct: one frame a buffer, as an unpipelined client sends"
    )
    parser.add_argument(
        "--rounds", type=int, nargs=2, default=[200, 1000], metavar=("A", "B"), help="--direct: two sizes"
    )
    parser.add_argument(
        "--hash-seed", type=int, default=0, help="PYTHONHASHSEED of every measured process (counts move with it)"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # --direct's measured process: this many rounds
    return parser.parse_args(argv)


def count(args: argparse.Namespace, iterations: int, src: Path | None) -> tuple[int, int, int]:
    """(instructions, requests, messages) of one server life under a load run of ``iterations``."""
    # Imported here, not at the top: ``--direct``'s measured child runs this file against a revision's
    # src/, which may predate `dbqueue.loadtest` (it was `dbqueue.bench` before e289cd7; `peers` imports it).
    from dbqueue.loadtest import BenchConfig, DbQueueDriver, run_fan_in, run_load
    from dbqueue.server import new_event_loop
    from peers import FloorDriver, free_port

    port = free_port()
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={_output(args, iterations)}", args.server_python]
    if args.floor:
        command += [str(Path(__file__).resolve().parent / "floor.py"), "--port", str(port)]
    else:
        command += ["-m", "dbqueue.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if args.metrics:
        command += ["--metrics-port", str(free_port())]
    environment = measured_environment(args)
    if src is not None:
        environment["PYTHONPATH"] = f"{src}{os.pathsep}{environment.get('PYTHONPATH', '')}"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment, text=True)
    try:
        wait_until_listening(port, server)
        # Under valgrind the server runs ~50x slower: a 1 s in-flight timeout would expire mid-run.
        config = BenchConfig(
            addresses=[("127.0.0.1", port)],
            iterations=iterations,
            batch=args.batch,
            visibility_timeout=600.0,
            time_limit=1800,
        )
        if args.fan_in:
            config.producers = config.consumers = 4
            config.pipeline = 1
            driver = FloorDriver if args.floor else DbQueueDriver
            result = run_fan_in(driver, config, new_event_loop, 1)
        else:
            loop = new_event_loop()
            try:
                result = loop.run_until_complete(run_load(DbQueueDriver(config)))
            finally:
                loop.close()
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    found = re.search(r"Collected : (\d+)", log)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output: {log[-500:]}")
    return int(found.group(1)), result.requests, result.messages


def measured_environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment of a measured process: this one's, with the hash seed fixed."""
    return {**os.environ, "PYTHONHASHSEED": str(args.hash_seed)}


def wait_until_listening(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120  # a Python start-up under valgrind takes seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-500:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server under valgrind did not start listening within 120 s")


def feed_session(rounds: int, most: int, batch: int, lone: bool) -> None:
    """The measured process of ``--direct``: frames for ``most`` rounds are built, ``rounds`` are fed."""
    from dbqueue.protocol import messages as msg
    from dbqueue.server.app import Server
    from dbqueue.server.session import Session

    class NullTransport:
        def write(self, data: bytes) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

    server = Server(port=0)
    server.clock = time.monotonic
    server.schedule_expiry = lambda: None  # type: ignore[method-assign]  # no loop: deadlines are only recorded
    server.broker.create_queue(b"q")
    session = Session(server)
    session.transport = NullTransport()  # type: ignore[assignment]
    payload = bytes(128)
    if batch > 1:
        send = msg.encode(1, msg.EnqueueBatch("q", (payload,) * batch))
        read = msg.encode(2, msg.ReadBatch("q", batch, 60_000))
        confirms = [
            msg.encode(3, msg.ConfirmBatch(tuple(range(r * batch + 1, r * batch + batch + 1)))) for r in range(most)
        ]
    elif lone:  # one send, one read, one confirm a round, each in a buffer of its own
        send = msg.encode(1, msg.Enqueue("q", payload))
        read = msg.encode(2, msg.Read("q", 60_000))
        confirms = [msg.encode(3, msg.Confirm(r + 1)) for r in range(most)]
    else:  # ids are handed out from 1 in order, so each round's confirms are known beforehand
        send = b"".join(msg.encode(i, msg.Enqueue("q", payload)) for i in range(1, 33))
        read = b"".join(msg.encode(i, msg.Read("q", 60_000)) for i in range(1, 33))
        confirms = [b"".join(msg.encode(i, msg.Confirm(r * 32 + i)) for i in range(1, 33)) for r in range(most)]
    gc.freeze()
    gc.set_threshold(50_000, 20, 1000)  # as `dbqueue.server.app.run` sets them
    feed = session.data_received
    for confirm in confirms[:rounds]:
        feed(send)
        feed(read)
        feed(confirm)
    if session.held:
        raise SystemExit(f"{len(session.held)} messages left in flight: the confirms did not match")
    # Out now, without the interpreter's shutdown: its last collections walk every object still alive
    # (the broker's stale deadline entries, more of them after more rounds), which would put a cost
    # that grows with the rounds, and is no request's, into the difference between the two counts.
    sys.stdout.flush()
    os._exit(0)


def _output(args: argparse.Namespace, size: int) -> str:
    """Where callgrind writes one measured process's profile: /dev/null, or a file in ``--keep``."""
    if not args.keep:
        return "/dev/null"
    Path(args.keep).mkdir(parents=True, exist_ok=True)
    kind = "floor" if args.floor else "direct" if args.direct else "server"
    return str(Path(args.keep) / f"callgrind.{kind}.{size}")


def count_direct(args: argparse.Namespace, rounds: int, src: Path | None) -> int:
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={_output(args, rounds)}", args.server_python]
    command += [__file__]
    command += ["--child", str(rounds), "--rounds", *map(str, args.rounds), "--batch", str(args.batch)]
    command += ["--lone"] if args.lone else []
    environment = measured_environment(args)
    if src is not None:
        environment["PYTHONPATH"] = f"{src}{os.pathsep}{environment.get('PYTHONPATH', '')}"
    log = subprocess.run(command, capture_output=True, text=True, env=environment, check=True).stderr
    found = re.search(r"Collected : (\d+)", log)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output: {log[-500:]}")
    return int(found.group(1))


def per_message_direct(args: argparse.Namespace, src: Path | None) -> tuple[float, float]:
    small, large = (count_direct(args, rounds, src) for rounds in args.rounds)
    per_round = (large - small) / (args.rounds[1] - args.rounds[0])
    requests, messages = (3, args.batch) if args.batch > 1 else (3, 1) if args.lone else (96, 32)
    return per_round / requests, per_round / messages


def per_request(args: argparse.Namespace, src: Path | None) -> tuple[float, float]:
    """Instructions per request and per message (sent, read and confirmed), between the two load sizes.

    Per message is the figure to compare for batches: how many requests carry a message
    (reads that find the queue empty) depends on timing.
    """
    small, large = (count(args, iterations, src) for iterations in args.iterations)
    spent = large[0] - small[0]
    return spent / (large[1] - small[1]), spent / (large[2] - small[2])


def export(revision: str) -> Path:
    """``src/`` of ``revision`` in a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="dbqueue-rev-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        feed_session(args.child, max(args.rounds), args.batch, args.lone)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    from machine import context_lines, run_context

    for line in context_lines(run_context(args.server_python)):
        print(line)
    what = f"batch {args.batch}" if args.batch > 1 else "lone frames" if args.lone else "single requests"
    what += f", PYTHONHASHSEED={args.hash_seed}"
    what += ", metrics served" if args.metrics else ""
    what += ", fan-in: 4 producers and 4 consumers, one request in flight each" if args.fan_in else ""
    what += ", floor.py instead of the server" if args.floor else ""
    if args.floor and not args.fan_in:
        print("--floor answers ENQUEUE, READ and CONFIRM one by one: use it with --fan-in", file=sys.stderr)
        return 2
    if args.direct:
        print(f"one session fed directly ({what}), rounds {args.rounds[0]} and {args.rounds[1]}, {args.server_python}")
    else:
        print(
            f"load test ({what}), iterations {args.iterations[0]} and {args.iterations[1]}, server {args.server_python}"
        )
    measure = per_message_direct if args.direct else per_request
    here = measure(args, None)
    counted = "floor.py" if args.floor else "the dbqueue above"  # the working tree, or PYTHONPATH's snapshot
    print(f"{counted}: {here[0]:,.0f} instructions per request, {here[1]:,.0f} per message")
    if args.compare_with:
        other_src = export(args.compare_with)
        try:
            other = measure(args, other_src)
        finally:
            shutil.rmtree(other_src.parent, ignore_errors=True)
        print(
            f"{args.compare_with}: {other[0]:,.0f} instructions per request, {other[1]:,.0f} per message "
            f"({here[1] / other[1] - 1:+.1%} per message in the working tree)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

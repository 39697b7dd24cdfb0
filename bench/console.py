"""What the web console costs the server: ``dbqueue bench`` with and without consoles open, in the same run.

Run ``python bench/console.py`` (``--smoke`` for a few seconds' check, ``--json PATH`` for the raw figures).

Theory of operation
-------------------
**The server.** One ``dbqueue serve --http-port`` process, started once on
free loopback ports and kept for the whole run, holding ten queues: the
bench's own and nine others with a few messages each, so the console has ten
queues to show and sample.

**Viewers.** A viewer does what an open console page does, over real HTTP,
from a process of its own (``--viewers-only``, aiohttp's client): it opens a
session (``GET /console/api/session``, the cookie) and keeps the event stream
of a page on a queue open (``GET /console/api/events?q=KEY``: every second the
overview and that queue's figures and samples, read as they come; the
viewers are spread over the nine queues). That is more than the overview alone
costs, so the figures err on the expensive side.
``--browser`` replaces the HTTP viewers of the one-viewer mode by a real
headless Chromium on the overview (Debian's, through chromium-driver), whose
own CPU then competes with the server on a small machine.

**Modes and rounds.** Each round runs the same ``dbqueue bench`` (its
``--json`` figures) once per mode: no console, one console, ``--many``
consoles (a hundred by default), in an order that turns each round (A B C,
B C A, C A B, ...) so that a machine that drifts over the run favours no
mode. Viewers are started, connected and given two seconds before the bench
starts, and stopped after it. For each bench the server's CPU
(``/proc/PID/stat``) gives its CPU per message, less sensitive to a crowded
machine than throughput.

**Idle cost.** Before the rounds, the server's CPU is measured over
``--idle-seconds`` with no load, with no viewer, one, and ``--many``: what
the console costs the server per second of wall time, whatever the load. The
server runs on one event loop, so a console that takes X ms of CPU a second
takes at most X/1000 of the server's throughput: the bound the load rounds
are checked against.

The report: per mode, the median over rounds of messages/s and server
microseconds per message, the median of the round-by-round ratios to "no
console", and the idle cost in milliseconds of server CPU per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from machine import CpuWatch, add_run_options, begin_run, context_lines

QUEUES = 10
BENCH_QUEUE = "console-bench"
MODES = ("none", "one", "many")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- viewers (run in a process of their own) -------------------------------------------------------------------------


async def viewer(http_port: int, queue_key: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    import aiohttp

    base = f"http://127.0.0.1:{http_port}/console/api/"
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an address, as a browser keeps them for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(base + "session") as response:
            assert response.status == 200, await response.text()

        async def events() -> None:
            # The stream of a page on a queue: the overview and that queue's page, every second.
            timeout = aiohttp.ClientTimeout(total=None)
            async with session.get(base + f"events?q={queue_key}", timeout=timeout) as stream:
                async for line in stream.content:
                    if line.startswith(b"data: "):
                        counts["events"] += 1
                    if stop.is_set():
                        return

        task = asyncio.create_task(events())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_viewers(http_port: int, count: int) -> None:
    """Open ``count`` viewers; print "ready" once all are connected; stop at end of stdin; print what they saw."""
    stop = asyncio.Event()
    counts = {"events": 0}
    keys = [f"console-{n}".encode().hex() for n in range(QUEUES - 1)]
    tasks = [asyncio.create_task(viewer(http_port, keys[n % len(keys)], stop, counts)) for n in range(count)]
    deadline = time.monotonic() + 30
    while counts["events"] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts), flush=True)


class Viewers:
    """``count`` viewers in a child process (or a headless Chromium with ``browser``), open until `close`."""

    def __init__(self, http_port: int, count: int, browser: bool = False) -> None:
        self.count = count
        self.driver: Any = None
        self.process: subprocess.Popen[str] | None = None
        self.seen: dict[str, int] = {}
        if count == 0:
            return
        if browser:
            sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "console"))
            from console_kit import start_browser

            self.driver = start_browser()
            self.driver.get(f"http://127.0.0.1:{http_port}/")
            time.sleep(2.0)
            return
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--viewers-only", str(count), "--http-port", str(http_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the viewers did not start: {line!r}")
        time.sleep(2.0)

    @property
    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
            self.driver = None
        if self.process is not None:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.close()
            out = self.process.stdout.read().strip().splitlines()
            self.process.wait(30)
            self.seen = json.loads(out[-1]) if out else {}
            self.process = None


# --- the run ---------------------------------------------------------------------------------------------------------


def start_server(port: int, http_port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from dbqueue.cli import main; main()", "serve", "--port", str(port)]
    command += ["--http-port", str(http_port), "--log-level", "warning"]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not start")


def prepare(address: str) -> None:
    from dbqueue import Client

    with Client.connect(address) as client:
        for n in range(QUEUES - 1):
            client.create(f"console-{n}")
            client.send_batch(f"console-{n}", [b'{"n": %d}' % i for i in range(20 * (n + 1))])


def bench(port: int, args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    command = [sys.executable, "-c", "from dbqueue.cli import main; main()", "bench", "--port", str(port)]
    command += ["--iterations", str(args.iterations), "--queue", BENCH_QUEUE, "--keep-queue", "--json"]
    before = server_cpu(server_pid)
    began = time.monotonic()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wall = time.monotonic() - began
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    figures["server_cpu_seconds"] = server_cpu(server_pid) - before
    figures["server_us_per_message"] = figures["server_cpu_seconds"] / figures["messages"] * 1e6
    figures["wall_seconds"] = wall
    return figures


def idle_cost(server_pid: int, seconds: float) -> float:
    """Server CPU milliseconds per second of wall time, over ``seconds``."""
    before, began = server_cpu(server_pid), time.monotonic()
    time.sleep(seconds)
    return (server_cpu(server_pid) - before) / (time.monotonic() - began) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=400, help="dbqueue bench --iterations (batches/producer)")
    parser.add_argument("--many", type=int, default=100, help="viewers of the 'many' mode")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--browser", action="store_true", help="the 'one' mode's viewer is a headless Chromium")
    parser.add_argument("--smoke", action="store_true", help="a few seconds' check: 1 round, small runs")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--viewers-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    add_run_options(parser)
    args = parser.parse_args()
    if args.viewers_only is not None:
        asyncio.run(run_viewers(args.http_port, args.viewers_only))
        return
    if args.smoke:
        args.rounds, args.iterations, args.idle_seconds, args.many, args.quiet_load = 1, 50, 2.0, 10, 0.0
    context = begin_run(args)
    for line in context_lines(context):
        print(line)
    port, http_port = free_port(), free_port()
    server = start_server(port, http_port)
    counts = {"none": 0, "one": 1, "many": args.many}
    results: dict[str, Any] = {"context": context, "idle_ms_per_s": {}, "rounds": []}
    try:
        prepare(f"127.0.0.1:{port}")
        for mode in MODES:
            viewers = Viewers(http_port, counts[mode], browser=args.browser and mode == "one")
            try:
                results["idle_ms_per_s"][mode] = idle_cost(server.pid, args.idle_seconds)
            finally:
                viewers.close()
            print(f"idle, {mode:>4} console(s): server CPU {results['idle_ms_per_s'][mode]:.2f} ms/s", flush=True)
        for round_ in range(args.rounds):
            order = MODES[round_ % 3 :] + MODES[: round_ % 3]
            figures: dict[str, Any] = {}
            for mode in order:
                viewers = Viewers(http_port, counts[mode], browser=args.browser and mode == "one")
                watch = CpuWatch(lambda viewers=viewers: [os.getpid(), *viewers.pids])
                watch.start()
                try:
                    figures[mode] = bench(port, args, server.pid)
                finally:
                    watch.stop()
                    viewers.close()
                figures[mode]["other_cpu_seconds"] = watch.other_seconds
                figures[mode]["viewers_saw"] = viewers.seen
                print(
                    f"round {round_ + 1} {mode:>4}: {figures[mode]['messages_per_second']:>9,.0f} msg/s, "
                    f"server {figures[mode]['server_us_per_message']:.2f} us/msg, "
                    f"other CPU {watch.other_seconds:.1f} s, viewers saw {viewers.seen or '-'}",
                    flush=True,
                )
            results["rounds"].append(figures)
    finally:
        server.terminate()
        server.wait(15)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict[str, Any]) -> None:
    rounds = results["rounds"]
    print()
    print(f"{'mode':>6} {'msg/s (median)':>15} {'vs none':>8} {'server us/msg':>14} {'vs none':>8} {'idle ms/s':>10}")
    for mode in MODES:
        rate = statistics.median(r[mode]["messages_per_second"] for r in rounds)
        cpu = statistics.median(r[mode]["server_us_per_message"] for r in rounds)
        rate_ratio = statistics.median(
            r[mode]["messages_per_second"] / r["none"]["messages_per_second"] for r in rounds
        )
        cpu_ratio = statistics.median(
            r[mode]["server_us_per_message"] / r["none"]["server_us_per_message"] for r in rounds
        )
        idle = results["idle_ms_per_s"][mode]
        print(f"{mode:>6} {rate:>15,.0f} {rate_ratio - 1:>+8.1%} {cpu:>14.2f} {cpu_ratio - 1:>+8.1%} {idle:>10.2f}")
    cost = results["idle_ms_per_s"]
    print()
    for mode in ("one", "many"):
        share = (cost[mode] - cost["none"]) / 1000.0
        print(f"the console's own cost, {mode}: {share:.3%} of one core, the bound on the throughput it can take")


if __name__ == "__main__":
    main()

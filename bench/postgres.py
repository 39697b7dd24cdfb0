"""dbqueue on PostgreSQL against its SQLite store, PgQueuer and a plain SKIP LOCKED queue, on one PostgreSQL.

    python bench/postgres.py                          # every system, 3 rounds of about 5 s each
    python bench/postgres.py --batch 100              # dbqueue sends, reads and confirms 100 at a time
    python bench/postgres.py --systems dbqueue-pg,skip-locked --rounds 1
    python bench/postgres.py --smoke                  # a few seconds: CI's check that it works

One throwaway cluster (tests/postgres/pg_cluster.py, ``synchronous_commit=on``,
``fsync=on``) serves every PostgreSQL system in turn, each in a fresh database.
It is set up as a write-heavy database is (`TUNING`, printed; ``--pg-setting``
overrides): the test fixture's 64 MB of shared buffers and PostgreSQL's default
1 GB ``max_wal_size`` would make the runs checkpoint every few seconds, and each
checkpoint's full-page images add a fifth to the WAL per message.
The load is the same for all: ``--producers`` producers each send
*iterations* pipelines of ``--pipeline`` messages (or batches) of ``--payload``
bytes, ``--consumers`` consumers receive and acknowledge until all are acknowledged.

How long a run lasts. A rate taken over a fraction of a second measures the
start and the end more than the steady state, so each system's runs are sized
to last about ``--seconds``: a first, short *sizing* run of
``--sizing-messages`` (not counted) gives the system's rate, and every counted
run of it sends what the rate of its previous run moves in ``--seconds`` (at
most ``--max-messages``). ``--iterations`` fixes the size of every run instead.
Systems therefore send different numbers of messages; every figure is per
second or per message.

* dbqueue-pg / dbqueue-sqlite / dbqueue-sqlite-disk: a dbqueue server process
  (``Server(store=URL)``, or ``--data-dir`` with sync "os", or "disk": an fsync per
  commit, as PostgreSQL's ``synchronous_commit=on`` does) driven by the original load test
  (`dbqueue.loadtest.run_load`: pipelined sends, reads, confirms; every reply
  checked); ``--batch 100`` sends, reads and confirms batches of 100 instead;
* pgqueuer: PgQueuer (PyPI) on asyncpg: producers ``Queries.enqueue`` a batch of
  ``--pipeline`` jobs per call, consumers are QueueManagers whose entrypoint
  counts the job (PgQueuer then deletes it and logs it, as it does in use);
* skip-locked: the queue everyone writes first, on asyncpg: a producer inserts
  its batch in one transaction; a consumer takes up to ``--pipeline`` rows with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and deletes them, in one transaction.

Reported per run: messages/s (sent, received and acknowledged), the PostgreSQL
server's CPU seconds per 1,000 messages (every backend's and the postmaster's
user + system time, from /proc, over the run) and WAL bytes per message
(``pg_current_wal_lsn`` before and after). The machine is shared: runs
alternate between systems so drift moves all alike; medians over rounds, and
dbqueue-pg's ratio to each system as the median of the ratios within a round.
Everything printed is also written to ``--out`` (by default
bench/results/postgres-<commit>.txt, ``-batch<N>`` added for batches; a
``--smoke`` run writes no file unless given ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "postgres"))
from pg_cluster import Cluster, free_port  # noqa: E402

sys.path.insert(0, str(HERE))  # machine.py, beside this file
import machine  # noqa: E402
from dbqueue import Client, ConnectionLost  # noqa: E402
from dbqueue.loadtest import BenchConfig, DbQueueDriver, run_load  # noqa: E402

TUNING = {"shared_buffers": "256MB", "max_wal_size": "4GB"}  # a write-heavy database's, for every system alike
SYSTEMS = ("dbqueue-pg", "dbqueue-sqlite", "dbqueue-sqlite-disk", "pgqueuer", "skip-locked")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(cluster: Cluster) -> float:
    """CPU used so far by the cluster: the postmaster, its reaped children, and its live children."""
    pid = cluster.pid()
    if pid is None:
        return 0.0
    total = _stat_ticks(pid, with_children=True)
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total += sum(_stat_ticks(int(child)) for child in children)
    return total / CLK_TCK


def _stat_ticks(pid: int, with_children: bool = False) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks


async def wal_lsn(url: str) -> str:
    con = await asyncpg.connect(url)
    try:
        return str(await con.fetchval("SELECT pg_current_wal_lsn()::text"))
    finally:
        await con.close()


async def wal_bytes(url: str, start: str) -> int:
    con = await asyncpg.connect(url)
    try:
        return int(await con.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", start))
    finally:
        await con.close()


# --- dbqueue -------------------------------------------------------------------------


def start_dbqueue(kind: str, url: str, workdir: Path, writers: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if kind == "dbqueue-pg":
        options = f"store={url!r}"
    else:  # dbqueue-sqlite: sync "os" (no fsync); dbqueue-sqlite-disk: sync "disk" (an fsync per commit, as PostgreSQL)
        sync = "disk" if kind.endswith("-disk") else "os"
        options = f"data_dir={str(workdir / f'sqlite-{port}')!r}, sync={sync!r}"
    code = f"from dbqueue.server import Server, run; run(Server(port={port}, {options}))"
    if writers:
        code = f"import dbqueue.store.postgres as p; p.WRITERS = {writers}; " + code
    log = open(workdir / f"{kind}-{port}.log", "wb")  # noqa: SIM115  # the child writes it for its whole life
    process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            Client.connect(f"127.0.0.1:{port}", timeout=1.0).close()
            return process, port
        except ConnectionLost:
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = (workdir / f"{kind}-{port}.log").read_text()[-2000:]
                raise RuntimeError(f"{kind} did not start: {log_text}") from None
            time.sleep(0.05)


async def run_dbqueue(
    kind: str, url: str, args: argparse.Namespace, workdir: Path, iterations: int
) -> tuple[int, float]:
    process, port = start_dbqueue(kind, url, workdir, args.writers)
    try:
        config = BenchConfig(
            addresses=[("127.0.0.1", port)],
            producers=args.producers,
            consumers=args.consumers,
            pipeline=args.pipeline,
            iterations=iterations,
            payload=args.payload,
            batch=args.batch,
            visibility_timeout=30.0,
            time_limit=600.0,
        )
        result = await run_load(DbQueueDriver(config))
        return result.messages, result.seconds
    finally:
        process.terminate()
        process.wait(10)


# --- a plain SKIP LOCKED queue on asyncpg --------------------------------------------


async def run_skip_locked(url: str, args: argparse.Namespace, iterations: int) -> tuple[int, float]:
    setup = await asyncpg.connect(url)
    await setup.execute("CREATE TABLE IF NOT EXISTS jobs (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
    await setup.close()
    total = args.producers * iterations * args.pipeline
    payload = b"x" * args.payload
    done = 0

    async def produce() -> None:
        con = await asyncpg.connect(url)
        rows = [(payload,)] * args.pipeline
        for _ in range(iterations):
            async with con.transaction():
                await con.executemany("INSERT INTO jobs (payload) VALUES ($1)", rows)
        await con.close()

    async def consume() -> None:
        nonlocal done
        con = await asyncpg.connect(url)
        take = await con.prepare("SELECT id, payload FROM jobs ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED")
        while done < total:
            async with con.transaction():
                rows = await take.fetch(args.pipeline)
                if rows:
                    await con.execute("DELETE FROM jobs WHERE id = ANY($1::bigint[])", [row[0] for row in rows])
            if rows:
                done += len(rows)
            else:
                await asyncio.sleep(0.001)
        await con.close()

    start = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(args.producers)), *(consume() for _ in range(args.consumers)))
    return total, time.perf_counter() - start


# --- PgQueuer ------------------------------------------------------------------------


async def run_pgqueuer(url: str, args: argparse.Namespace, iterations: int) -> tuple[int, float]:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    setup = await asyncpg.connect(url)
    await Queries(AsyncpgDriver(setup)).install()
    await setup.close()
    total = args.producers * iterations * args.pipeline
    payload = b"x" * args.payload
    done = 0
    managers: list[QueueManager] = []
    finished = asyncio.Event()

    async def produce() -> None:
        con = await asyncpg.connect(url)
        queries = Queries(AsyncpgDriver(con))
        for _ in range(iterations):
            await queries.enqueue(["bench"] * args.pipeline, [payload] * args.pipeline, [0] * args.pipeline)
        await con.close()

    async def consume() -> None:
        con = await asyncpg.connect(url)
        manager = QueueManager(Queries(AsyncpgDriver(con)))
        managers.append(manager)

        @manager.entrypoint("bench")
        async def work(job: Job) -> None:
            nonlocal done
            done += 1
            if done >= total:
                finished.set()

        await manager.run(batch_size=args.pipeline, dequeue_timeout=timedelta(seconds=0.05))
        await con.close()

    async def stop_when_done() -> None:
        await finished.wait()
        for manager in managers:
            manager.shutdown.set()

    start = time.perf_counter()
    await asyncio.gather(
        *(produce() for _ in range(args.producers)), *(consume() for _ in range(args.consumers)), stop_when_done()
    )
    return total, time.perf_counter() - start


# --- the runs ------------------------------------------------------------------------


async def measure(
    cluster: Cluster, url: str, system: str, run: Callable[[], Awaitable[tuple[int, float]]]
) -> dict[str, Any]:
    # CPU and WAL include the connections' setup (and a dbqueue server's start): small beside a run.
    lsn = await wal_lsn(url)
    cpu = pg_cpu_seconds(cluster)
    messages, seconds = await run()
    cpu = pg_cpu_seconds(cluster) - cpu
    wal = await wal_bytes(url, lsn)
    return {
        "system": system,
        "messages": messages,
        "seconds": seconds,
        "rate": messages / seconds,
        "pg_cpu_ms_per_1k": cpu / messages * 1e6,
        "wal_per_message": wal / messages,
    }


def runner(
    system: str, url: str, args: argparse.Namespace, workdir: Path, iterations: int
) -> Callable[[], Awaitable[tuple[int, float]]]:
    """The run of ``system`` on the database at ``url``: ``iterations`` pipelines per producer."""
    if system.startswith("dbqueue-"):
        return lambda: run_dbqueue(system, url, args, workdir, iterations)
    if system == "pgqueuer":
        return lambda: run_pgqueuer(url, args, iterations)
    if system == "skip-locked":
        return lambda: run_skip_locked(url, args, iterations)
    raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")


def postgres_versions() -> dict[str, str]:
    """The PostgreSQL server and the Python drivers and peers measured here, for the context lines."""
    import importlib.metadata
    import shutil

    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))), None)
    found = subprocess.run([str(initdb), "--version"], capture_output=True, text=True).stdout.strip() if initdb else ""
    versions = {"postgresql": found or "unknown"}
    for name in ("psycopg", "asyncpg", "pgqueuer"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def messages_per_iteration(system: str, args: argparse.Namespace) -> int:
    """Messages one producer's pipeline carries: dbqueue's batches hold ``--batch`` messages each."""
    return args.producers * args.pipeline * (args.batch if system.startswith("dbqueue-") else 1)


def sized_iterations(system: str, messages: float, args: argparse.Namespace) -> int:
    """Iterations that send about ``messages`` (at least one pipeline each, at most ``--max-messages``)."""
    per_iteration = messages_per_iteration(system, args)
    return max(1, round(min(messages, args.max_messages) / per_iteration))


def default_out(args: argparse.Namespace) -> Path | None:
    """bench/results/postgres-<commit>.txt (``-batch<N>`` for batches); None for a smoke run (CI's tree stays clean)."""
    if args.smoke:
        return None
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    commit = found.stdout.strip() or "unknown"
    suffix = f"-batch{args.batch}" if args.batch > 1 else ""
    return HERE / "results" / f"postgres-{commit}{suffix}.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--pipeline", type=int, default=32)
    parser.add_argument(
        "--iterations", type=int, default=0, help="pipelines per producer in every run (default: sized by --seconds)"
    )
    parser.add_argument(
        "--sizing-messages", type=int, default=25_600, help="messages of each system's first, uncounted run"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each counted run should last")
    parser.add_argument(
        "--max-messages", type=int, default=3_000_000, help="messages a counted run sends at most (bounds its time)"
    )
    parser.add_argument("--payload", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1, help="dbqueue only: messages per send, read and confirm")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, one round")
    parser.add_argument(
        "--writers", type=int, default=0, help="dbqueue-pg: group commits written at once (default: the store's)"
    )
    parser.add_argument(
        "--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="a postgresql.conf setting (repeat)"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the output here (default: bench/results/postgres-<commit>.txt)"
    )
    machine.add_run_options(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.iterations, args.producers, args.consumers, args.quiet_load = 1, 5, 2, 2, 0.0
    out_path: Path | None = args.out or default_out(args)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    out = out_path.open("w") if out_path is not None else None

    def say(line: str = "") -> None:
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    systems = args.systems.split(",")
    context = machine.begin_run(args, say)
    context["peers"].update(postgres_versions())
    for line in machine.context_lines(context):
        say(line)
    settings = {**TUNING, **dict(setting.split("=", 1) for setting in args.pg_setting)}
    say("postgresql.conf beyond the fixture's: " + ", ".join(f"{name}={value}" for name, value in settings.items()))
    cluster = Cluster.create(**settings).start()
    workdir = Path(tempfile.mkdtemp(prefix="dbqueue-bench-pg-"))
    results: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
    sized = not args.iterations
    iterations = {system: args.iterations or sized_iterations(system, args.sizing_messages, args) for system in systems}
    runs = 0

    def run(system: str, label: str) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        url = cluster.create_database(f"bench{runs}")
        row = asyncio.run(measure(cluster, url, system, runner(system, url, args, workdir, iterations[system])))
        say(
            f"{label:8} {system:19} {row['rate']:9.0f} msg/s {row['messages']:8d} msg {row['seconds']:6.2f} s"
            f"  PostgreSQL CPU {row['pg_cpu_ms_per_1k']:7.1f} ms/1k msg"
            f"  WAL {row['wal_per_message']:6.0f} B/msg"
        )
        return row

    try:
        if sized:
            for system in systems:  # the sizing runs: each system's rate, for runs of about --seconds
                iterations[system] = sized_iterations(system, run(system, "sizing")["rate"] * args.seconds, args)
        for round_ in range(args.rounds):
            for system in systems:
                row = run(system, f"round {round_}")
                results[system].append(row)
                if sized:  # the next run sized by this one's rate, which a short run overstates
                    iterations[system] = sized_iterations(system, row["rate"] * args.seconds, args)
    finally:
        cluster.remove()
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    size = f"runs of about {args.seconds:g} s" if sized else f"{args.iterations} pipelines a producer"
    say(
        f"\nmedians over {args.rounds} rounds ({args.producers} producers, {args.consumers} consumers,"
        f" pipeline {args.pipeline}, batch {args.batch}, {args.payload}-byte payloads, {size},"
        f" synchronous_commit=on):"
    )
    ours = results.get("dbqueue-pg", [])
    for system, rows in results.items():
        rate = statistics.median(r["rate"] for r in rows)
        ratio = ""
        if ours and system != "dbqueue-pg":
            # Each round's runs are minutes apart at most: their ratio is steadier than a ratio of medians.
            paired = [mine["rate"] / theirs["rate"] for mine, theirs in zip(ours, rows, strict=True)]
            ratio = f"  dbqueue-pg = {statistics.median(paired):5.2f}x ({min(paired):.2f}-{max(paired):.2f})"
        say(
            f"  {system:19} {rate:9.0f} msg/s ({min(r['rate'] for r in rows):.0f}-{max(r['rate'] for r in rows):.0f})"
            f"  PostgreSQL CPU {statistics.median(r['pg_cpu_ms_per_1k'] for r in rows):7.1f} ms/1k msg"
            f"  WAL {statistics.median(r['wal_per_message'] for r in rows):6.0f} B/msg{ratio}"
        )
    if out is not None:
        say(f"(written to {out_path})")
        out.close()


if __name__ == "__main__":
    main()

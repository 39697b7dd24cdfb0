"""Which PostgreSQL driver the store uses: one group commit's round trips, psycopg 3 against asyncpg.

    python bench/postgres_driver.py [--batch 100] [--commits 400]

A group commit of the store is, at its most common: insert a batch of new
messages into ``messages`` and delete the batch before it (its confirms), in one
transaction with ``synchronous_commit=on``. Each driver does that two ways, on a
throwaway cluster (tests/postgres/pg_cluster.py):

* ``copy``: binary COPY and ``DELETE ... = ANY`` in one transaction (psycopg 3's
  ``cursor.copy``, asyncpg's ``copy_records_to_table``): three round trips;
* ``unnest``: one statement in autocommit mode, ``WITH d AS (DELETE ...) INSERT
  ... SELECT FROM unnest(arrays)``, as the store's ``dbqueue_commit`` does: for
  psycopg the arrays packed by `dbqueue.store.postgres` (``pack_int8s``...),
  for asyncpg by its own codecs; one round trip.

Reported: commits/s and the client's CPU per commit (what the server's event loop would pay).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import asyncpg
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "postgres"))
from pg_cluster import Cluster

DDL = "CREATE TABLE m (id bigint PRIMARY KEY, qid int NOT NULL, seq bigint NOT NULL, data bytea NOT NULL)"
UNNEST = (
    "WITH d AS (DELETE FROM m WHERE id = ANY({0}::int8[]))"
    " INSERT INTO m SELECT * FROM unnest({1}::int8[], {2}::int4[], {3}::int8[], {4}::bytea[])"
)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def psycopg_run(url: str, batch: int, commits: int) -> tuple[float, float]:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS m")
        con.execute(DDL)
        payload = b"x" * 100
        start, used = time.perf_counter(), cpu()
        for n in range(commits):
            with con.transaction():
                cur = con.cursor()
                with cur.copy("COPY m (id, qid, seq, data) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int4", "int8", "bytea"])
                    for i in range(n * batch, n * batch + batch):
                        copy.write_row((i, 1, i, payload))
                if n:
                    cur.execute("DELETE FROM m WHERE id = ANY(%s)", (list(range((n - 1) * batch, n * batch)),))
        return time.perf_counter() - start, cpu() - used


def psycopg_unnest_run(url: str, batch: int, commits: int) -> tuple[float, float]:
    from dbqueue.store.postgres import connect, pack_byteas, pack_int4s, pack_int8s

    statement = UNNEST.format("%b", "%b", "%b", "%b", "%b")
    with connect(url) as con:
        con.execute("DROP TABLE IF EXISTS m")
        con.execute(DDL)
        payload = b"x" * 100
        start, used = time.perf_counter(), cpu()
        for n in range(commits):
            ids = list(range(n * batch, n * batch + batch))
            previous = list(range((n - 1) * batch, n * batch)) if n else []
            params = (pack_int8s(previous), pack_int8s(ids), pack_int4s([1] * batch), pack_int8s(ids))
            con.execute(statement, (*params, pack_byteas([payload] * batch)), prepare=True)
        return time.perf_counter() - start, cpu() - used


async def asyncpg_unnest_run(url: str, batch: int, commits: int) -> tuple[float, float]:
    con = await asyncpg.connect(url)
    await con.execute("DROP TABLE IF EXISTS m")
    await con.execute(DDL)
    statement = await con.prepare(UNNEST.format("$1", "$2", "$3", "$4", "$5"))
    payload = b"x" * 100
    start, used = time.perf_counter(), cpu()
    for n in range(commits):
        ids = list(range(n * batch, n * batch + batch))
        previous = list(range((n - 1) * batch, n * batch)) if n else []
        await statement.fetch(previous, ids, [1] * batch, ids, [payload] * batch)
    elapsed = time.perf_counter() - start, cpu() - used
    await con.close()
    return elapsed


async def asyncpg_run(url: str, batch: int, commits: int) -> tuple[float, float]:
    con = await asyncpg.connect(url)
    await con.execute("DROP TABLE IF EXISTS m")
    await con.execute(DDL)
    payload = b"x" * 100
    start, used = time.perf_counter(), cpu()
    for n in range(commits):
        async with con.transaction():
            rows = [(i, 1, i, payload) for i in range(n * batch, n * batch + batch)]
            await con.copy_records_to_table("m", records=rows, columns=["id", "qid", "seq", "data"])
            if n:
                await con.execute("DELETE FROM m WHERE id = ANY($1)", list(range((n - 1) * batch, n * batch)))
    elapsed = time.perf_counter() - start, cpu() - used
    await con.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = Cluster.create().start()
    try:
        url = cluster.url()
        for round_ in range(args.rounds):
            for name, run in (
                ("psycopg copy", lambda: psycopg_run(url, args.batch, args.commits)),
                ("asyncpg copy", lambda: asyncio.run(asyncpg_run(url, args.batch, args.commits))),
                ("psycopg unnest", lambda: psycopg_unnest_run(url, args.batch, args.commits)),
                ("asyncpg unnest", lambda: asyncio.run(asyncpg_unnest_run(url, args.batch, args.commits))),
            ):
                elapsed, used = run()
                print(
                    f"round {round_} {name:14} {args.commits / elapsed:8.0f} commits/s"
                    f" {args.commits * args.batch / elapsed:9.0f} msg/s"
                    f"  client CPU {used / args.commits * 1e6:6.0f} us/commit"
                )
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()

"""Durability end to end: `dbqueue serve --data-dir` as a real process, stopped cleanly, killed, restarted.

* restarts: queues with their options and every unconfirmed message come back
  after SIGTERM and after kill -9, in the order they were sent; in-flight
  messages come back ready, confirmed ones do not; ids keep growing; delays,
  purges, deletions and dead letters hold;
* a full disk: a commit that fails costs no acknowledged message;
* refusals: a corrupt store, a store in use, a store from a newer dbqueue stop
  the start with a message naming the file;
* crashes under load: several producer and consumer connections pipeline
  against a server that is killed at random moments, and what the clients were
  *told* (queued, confirmed) is checked against what the store gives back
  (the same for delays, delayed releases, dead-letter moves and purges:
  `test_crash_paths.py`);
* space: the store's files stay near the live data under send/confirm churn.

Every server is a child process (`server_process.ServerProcess`) on a fixed
port, so clients reconnect to the same address after a restart; a test fails
if a server logged a traceback it did not expect.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbqueue import Client, ConnectionLost, PipelinedClient, QueueFull, StoreUnavailable
from dbqueue.protocol import Confirm, Confirmed, Empty, Enqueue, Message, ObjectQueued, Read
from dbqueue.protocol.messages import ConfirmBatch, ConfirmResults, EnqueueBatch, Messages, ObjectsQueued, ReadBatch
from server_process import ServerProcess, serve_expecting_failure, store_bytes

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and flock")

STOPS = ["sigterm", "sigkill"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers on directories under tmp_path (``served("name", sync="disk")``); kill leftovers after."""
    started: list[ServerProcess] = []

    def serve(name: str = "data", sync: str = "os") -> ServerProcess:
        server = ServerProcess(tmp_path / name, sync=sync)
        started.append(server)
        return server.start()

    yield serve
    for server in started:
        server.close()
    for server in started:
        server.check_log()


def queues_by_name(client: Client) -> dict[str, dict]:
    return {queue["name"]: queue for queue in client.list_queues()}


def read_all(client: Client, name: str) -> list[Message]:
    """Read every ready message of ``name`` (kept in flight on ``client``), in order."""
    messages: list[Message] = []
    while batch := client.read_batch(name, 1000, visibility_timeout=600.0):
        messages += batch
    return messages


# --- restarts -------------------------------------------------------------------------


@pytest.mark.parametrize("stop", STOPS)
def test_queues_and_unconfirmed_messages_come_back_in_order(served: Callable[..., ServerProcess], stop: str) -> None:
    server = served()
    holder = server.client()  # stays open through the stop: its in-flight messages must come back
    with server.client() as client:
        client.create("dead")
        client.create("jobs", capacity=20, max_deliveries=3, dead_letter_queue="dead")
        client.create("plain")
        jobs = [(client.send("jobs", b"job-%d" % i), b"job-%d" % i) for i in range(8)]
        batch = [b"job-%d" % i for i in range(8, 12)]
        jobs += zip(client.send_batch("jobs", batch), batch)
        plain = [(client.send("plain", b"plain-%d" % i), b"plain-%d" % i) for i in range(3)]
        plain += [(client.send("plain", data), data) for data in (b"", bytes(range(256)) * 2048)]  # empty, 512 KiB
    first, second, third = (holder.read("jobs", visibility_timeout=600.0) for _ in range(3))
    holder.confirm(first.id)
    assert holder.read("plain").id == plain[0][0]  # in flight without a timeout
    handed_out = max(id_ for id_, _ in jobs + plain)

    server.restart(stop)
    holder.close()
    with server.client() as client:
        queues = queues_by_name(client)
        assert list(queues) == ["dead", "jobs", "plain"]
        options = {name: (q["capacity"], q["max_deliveries"], q["dead_letter_queue"]) for name, q in queues.items()}
        assert options == {"dead": (0, 0, None), "jobs": (20, 3, "dead"), "plain": (0, 0, None)}
        counts = {name: (q["ready"], q["in_flight"], q["delayed"]) for name, q in queues.items()}
        assert counts == {"dead": (0, 0, 0), "jobs": (11, 0, 0), "plain": (5, 0, 0)}

        # The capacity counts the restored messages: 9 more fit, not 10.
        extra = [client.send("jobs", b"extra-%d" % i) for i in range(9)]
        with pytest.raises(QueueFull):
            client.send("jobs", b"one too many")
        assert min(extra) > handed_out

        got = read_all(client, "jobs")
        assert [(m.id, m.data) for m in got] == jobs[1:] + list(zip(extra, (b"extra-%d" % i for i in range(9))))
        # Delivery counts of a max_deliveries queue are kept when a message comes back:
        # a clean stop closes the holder's connection first, a crash does not.
        again = 2 if stop == "sigterm" else 1
        assert [m.deliveries for m in got[:2]] == [again, again]
        assert {m.deliveries for m in got[2:]} == {1}
        assert [(m.id, m.data) for m in read_all(client, "plain")] == plain


@pytest.mark.parametrize("stop", STOPS)
def test_confirmed_messages_stay_gone(served: Callable[..., ServerProcess], stop: str) -> None:
    server = served()
    with server.client() as client:
        client.create("q")
        ids = client.send_batch("q", [b"m%d" % i for i in range(10)])
        for message in client.read_batch("q", 10, visibility_timeout=600.0):
            if message.id % 2:
                client.confirm(message.id)
        # The unconfirmed half stays in flight on this open connection.
        server.restart(stop)
    with server.client() as client:
        assert [m.id for m in read_all(client, "q")] == [id_ for id_ in ids if not id_ % 2]


def test_ids_keep_growing_across_restarts(served: Callable[..., ServerProcess]) -> None:
    # Every id handed out, confirmed ones included, stays below every id handed out after a restart.
    server = served()
    handed_out: list[int] = []
    for stop in ["sigkill", "sigterm", "sigkill", None]:
        with server.client() as client:
            client.create("a")
            client.create("b")
            ids = [client.send("a", b"x"), client.send("b", b"y"), client.send("a", b"z", delay=0.001)]
            ids += client.send_batch("b", [b"1", b"2", b"3"])
            ids += [client.send("a", b"w")]
            assert len(set(ids)) == len(ids)
            assert min(ids) > max(handed_out, default=0), (ids, handed_out)
            handed_out += ids
            settled = []
            for name in ("a", "b"):
                while len(settled) < len(ids) and (message := client.read(name, visibility_timeout=600.0, wait=0.05)):
                    client.confirm(message.id)
                    settled.append(message.id)
            assert sorted(settled) == sorted(ids)  # nothing is left: the next ids come from the reservation
        if stop:
            server.restart(stop)


def test_delayed_messages_stay_delayed(served: Callable[..., ServerProcess]) -> None:
    server = served()
    delay = 2.5
    with server.client() as client:
        client.create("later")
        sent_at = time.monotonic()
        client.send("later", b"soon", delay=delay)
        client.send("later", b"much later", delay=600.0)
        client.send("later", b"released")
        message = client.read("later", visibility_timeout=600.0)
        client.release(message.id, delay=600.0)  # back after a delay: delayed too
        assert client.stats("later")["delayed"] == 3
    for stop in ["sigkill", "sigterm"]:
        server.restart(stop)
        with server.client() as client:
            assert time.monotonic() - sent_at < delay, "the restarts were too slow for this test to mean anything"
            stats = client.stats("later")
            assert (stats["ready"], stats["in_flight"], stats["delayed"]) == (0, 0, 3)
            assert client.read("later") is None
    with server.client() as client:
        message = client.read("later", visibility_timeout=600.0, wait=delay + 5.0)
        assert message is not None and message.data == b"soon"
        assert time.monotonic() - sent_at >= delay - 0.05  # due times are wall-clock ms
        stats = client.stats("later")
        assert (stats["ready"], stats["in_flight"], stats["delayed"]) == (0, 1, 2)


@pytest.mark.parametrize("stop", STOPS)
def test_purge_and_delete_survive(served: Callable[..., ServerProcess], stop: str) -> None:
    server = served()
    holder = server.client()
    with server.client() as client:
        client.create("purged")
        kept_id = client.send("purged", b"in flight")
        client.send_batch("purged", [b"ready-%d" % i for i in range(3)])
        client.send("purged", b"delayed", delay=600.0)
        assert holder.read("purged", visibility_timeout=600.0).id == kept_id
        assert client.purge("purged") == 4  # the ready and the delayed ones; in flight stays
        after_id = client.send("purged", b"after the purge")

        client.create("gone")
        client.send_batch("gone", [b"g1", b"g2"])
        client.send("gone", b"g3", delay=600.0)
        client.delete("gone")

        client.create("reborn", capacity=5)
        client.send("reborn", b"old life")
        client.delete("reborn")
        client.create("reborn", capacity=7, max_deliveries=2)
        reborn_id = client.send("reborn", b"new life")

    server.restart(stop)
    holder.close()
    with server.client() as client:
        queues = queues_by_name(client)
        assert list(queues) == ["purged", "reborn"]
        assert (queues["reborn"]["capacity"], queues["reborn"]["max_deliveries"]) == (7, 2)
        assert [(m.id, m.data) for m in read_all(client, "purged")] == [
            (kept_id, b"in flight"),
            (after_id, b"after the purge"),
        ]
        assert [(m.id, m.data) for m in read_all(client, "reborn")] == [(reborn_id, b"new life")]
        assert client.stats("purged")["delayed"] == 0


@pytest.mark.parametrize("stop", STOPS)
def test_dead_letters_survive(served: Callable[..., ServerProcess], stop: str) -> None:
    server = served()
    with server.client() as client:
        client.create("dlq")
        client.create("once", max_deliveries=1, dead_letter_queue="dlq")
        client.create("twice", max_deliveries=2, dead_letter_queue="dlq")
        client.send("once", b"a")
        client.send("once", b"b")
        client.release(client.read("once", visibility_timeout=600.0).id)  # 1 delivery of 1: dead-lettered
        client.send("twice", b"c")
        client.release(client.read("twice", visibility_timeout=600.0).id)  # 1 of 2: back in its queue
    server.restart(stop)
    with server.client() as client:
        counts = {name: q["ready"] for name, q in queues_by_name(client).items()}
        assert counts == {"dlq": 1, "once": 1, "twice": 1}
        message = client.read("twice", visibility_timeout=600.0)
        assert (message.data, message.deliveries) == (b"c", 2)  # the count survived
        client.release(message.id)  # 2 of 2: dead-lettered
        message = client.read("once", visibility_timeout=600.0)
        assert message.data == b"b"
        client.confirm(message.id)
    server.restart(stop)
    with server.client() as client:
        counts = {name: (q["ready"], q["in_flight"], q["delayed"]) for name, q in queues_by_name(client).items()}
        assert counts == {"dlq": (2, 0, 0), "once": (0, 0, 0), "twice": (0, 0, 0)}
        assert [m.data for m in read_all(client, "dlq")] == [b"a", b"c"]


def test_clean_stop_settles_a_connection_with_unsent_replies(served: Callable[..., ServerProcess]) -> None:
    server = served()
    with server.client() as client:
        client.create("dlq")
        client.create("once", max_deliveries=1, dead_letter_queue="dlq")
        client.create("big")
        client.send("once", b"x")
        for _ in range(32):
            client.send("big", bytes(1_000_000))
    holder = server.client()
    assert holder.read("once", visibility_timeout=600.0).data == b"x"
    # 32 MB of replies the holder does not read: most stay in the server's output buffer.
    holder.connection.send_many([Read("big", 600_000, 0) for _ in range(32)])
    with server.client() as client:
        deadline = time.monotonic() + 5.0
        while client.stats("big")["ready"] and time.monotonic() < deadline:
            time.sleep(0.01)
    server.restart("sigterm")
    holder.close()
    with server.client() as client:
        counts = {name: (q["ready"], q["in_flight"]) for name, q in queues_by_name(client).items()}
    # As for a connection that closed while the server ran: x used its one delivery.
    assert counts == {"dlq": (1, 0), "once": (0, 0), "big": (32, 0)}


# --- a full disk ----------------------------------------------------------------------


@dataclass
class FullDisk:
    acked: list[tuple[int, bytes]] = field(repr=False)  # (id, payload) answered ObjectQueued before the refusal
    sent: int  # sends attempted
    refusal: str  # the StoreUnavailable the first refused send raised
    still_served: bool  # after the refusal, the same connection still read a message
    restored: list[tuple[int, bytes]] = field(repr=False)  # what a restart with room found


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory: pytest.TempPathFactory) -> FullDisk:
    """A server whose files may not pass 12 MiB (RLIMIT_FSIZE), fed until a send is refused; then
    restarted with room. (The store keeps a 4 MiB reserve so confirms can be written on a full disk:
    the limit leaves room for some 8 MiB of messages besides it.)"""
    server = ServerProcess(tmp_path_factory.mktemp("full") / "data")
    server.file_size_limit = 12 << 20
    server.tracebacks_expected = True  # the failed commit may be logged with its traceback
    server.start()
    acked: list[tuple[int, bytes]] = []
    sent = 0
    refusal = ""
    still_served = False
    try:
        with server.client() as client:
            client.create("q")
            while sent < 40_000:
                payload = b"%06d" % sent + bytes(1000)
                sent += 1
                try:
                    acked.append((client.send("q", payload), payload))
                except StoreUnavailable as exc:
                    refusal = str(exc)
                    break
        # A failed commit cuts every connection (the server goes back to its last commit); a new one
        # is served, degraded: reads work, sends are refused.
        with server.client() as client:
            message = client.read("q", visibility_timeout=60.0)
            still_served = message is not None and server.running()
    finally:
        server.close()
    server.file_size_limit = None
    server.start()
    try:
        with server.client() as client:
            restored = [(m.id, m.data) for m in read_all(client, "q")]
    finally:
        server.close()
    return FullDisk(acked, sent, refusal, still_served, restored)


def test_a_full_disk_loses_no_acknowledged_message(full_disk: FullDisk) -> None:
    assert 0 < len(full_disk.acked) < full_disk.sent, "the disk never filled up"
    # Everything acknowledged is there, in order; what was refused is not.
    assert full_disk.restored[: len(full_disk.acked)] == full_disk.acked
    assert len(full_disk.restored) == len(full_disk.acked)


def test_a_server_that_cannot_commit_refuses_sends_and_stays_up(full_disk: FullDisk) -> None:
    """It used to exit; now the refused send gets StoreUnavailable and reads go on (tests/test_full_disk.py
    holds the rest: confirms stored while full, recovery when room returns)."""
    assert full_disk.refusal, "no send was refused"
    assert full_disk.still_served


# --- refusals at start ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store directory written by a real server: a queue of 3000 messages, stopped cleanly."""
    server = ServerProcess(tmp_path_factory.mktemp("stored") / "data").start()
    try:
        with server.client() as client:
            client.create("q")
            for start in range(0, 3000, 500):
                client.send_batch("q", [b"%06d" % i * 20 for i in range(start, start + 500)])
        server.terminate()
    finally:
        server.close()
    return server.data_dir


def copy_of(stored: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "copy"
    shutil.copytree(stored, data_dir)
    return data_dir


def assert_clean_refusal(code: int, output: str, names: Path) -> None:
    assert code != 0, output
    assert "Traceback" not in output, output
    assert str(names) in output, output
    assert "Error:" in output, output  # click's one-line form


@pytest.mark.parametrize("where", ["fresh directory", "whole file", "past the header", "inner pages"])
def test_corrupt_store_is_refused(stored: Path, tmp_path: Path, where: str) -> None:
    rng = random.Random(where)
    if where == "fresh directory":
        data_dir = tmp_path / "fresh"
        data_dir.mkdir()
        (data_dir / "dbqueue.db").write_bytes(rng.randbytes(8192))
    else:
        data_dir = copy_of(stored, tmp_path)
        path = data_dir / "dbqueue.db"
        size = path.stat().st_size
        start, stop = {"whole file": (0, size), "past the header": (100, size), "inner pages": (2 * 4096, size - 4096)}[
            where
        ]
        assert stop - start >= 4096, size
        with open(path, "r+b") as file:
            file.seek(start)
            file.write(rng.randbytes(stop - start))
    before = (data_dir / "dbqueue.db").read_bytes()
    code, output = serve_expecting_failure(data_dir)
    assert_clean_refusal(code, output, data_dir / "dbqueue.db")
    assert (data_dir / "dbqueue.db").read_bytes() == before  # refused, not repaired or replaced


def test_store_in_use_is_refused(served: Callable[..., ServerProcess]) -> None:
    server = served()
    with server.client() as client:
        client.create("q")
        id_ = client.send("q", b"still here")
    code, output = serve_expecting_failure(server.data_dir)
    assert_clean_refusal(code, output, server.data_dir)
    assert "in use" in output
    assert server.running()
    with server.client() as client:  # the first server is undisturbed
        message = client.read("q", visibility_timeout=600.0)
        assert (message.id, message.data) == (id_, b"still here")
        client.confirm(message.id)


def test_newer_store_is_refused(stored: Path, tmp_path: Path) -> None:
    data_dir = copy_of(stored, tmp_path)
    with sqlite3.connect(data_dir / "dbqueue.db") as con:
        con.execute("PRAGMA user_version = 99")
    con.close()
    code, output = serve_expecting_failure(data_dir)
    assert_clean_refusal(code, output, data_dir / "dbqueue.db")
    assert "newer" in output
    with sqlite3.connect(data_dir / "dbqueue.db") as con:
        assert con.execute("PRAGMA user_version").fetchone() == (99,)  # left as it was
    con.close()


# --- crashes under load ---------------------------------------------------------------
#
# Each cycle starts the server on the same directory and port, runs producer and
# consumer connections against it, and kill -9s it at a random moment (one cycle
# ends with SIGTERM instead, a clean stop under the same load). Every
# connection keeps a `Tally` of what it was told. A reply is sent only after the
# commit of what it reports, so a payload answered ObjectQueued must survive every
# later crash until it is confirmed, and a payload answered Confirmed must never be
# handed out again. A read is not stored (in flight lives in memory), so messages
# that were in flight come back: delivering one again is allowed unless a confirm
# of it had been answered.

PIPELINE = 32
QUEUE = "crash"


@dataclass
class Tally:
    """What one connection sent and was told during one cycle."""

    sent: set[bytes] = field(default_factory=set)  # payloads sent, answered or not
    queued: dict[bytes, int] = field(default_factory=dict)  # payload -> id, answered ObjectQueued(s)
    reads: list[tuple[bytes, int]] = field(default_factory=list)  # (payload, id) handed to us
    confirmed: dict[bytes, int] = field(default_factory=dict)  # payload -> id, answered Confirmed
    unsettled: set[bytes] = field(default_factory=set)  # a confirm sent whose answer never came
    problems: list[str] = field(default_factory=list)  # answers no client should get


class Load:
    """Producer and consumer threads against one server for one cycle."""

    def __init__(self, address: str, next_seq: list[int], until: float) -> None:
        self.address = address
        self.next_seq = next_seq  # per producer, carried across cycles so payloads stay unique
        self.until = until  # a bound in case the kill never comes
        self.killed = threading.Event()  # set just before the stop: a lost connection is expected after
        self.tallies: list[Tally] = []
        self.threads: list[threading.Thread] = []

    def start(self, producers: int, consumers: int) -> None:
        for producer in range(producers):
            self._spawn(self._produce, producer, batch=producer == 0)
        for consumer in range(consumers):
            self._spawn(self._consume, batch=consumer == 0)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive(), "a client thread hung after the server was killed"

    def _spawn(self, target: Callable[..., None], *args: object, **kwargs: object) -> None:
        tally = Tally()
        self.tallies.append(tally)
        thread = threading.Thread(target=self._run, args=(target, tally, *args), kwargs=kwargs, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, target: Callable[..., None], tally: Tally, *args: object, **kwargs: object) -> None:
        try:
            client = PipelinedClient.connect(self.address, timeout=5.0)
        except ConnectionLost as exc:
            if not self.killed.is_set():
                tally.problems.append(f"cannot connect: {exc}")
            return
        try:
            target(client, tally, *args, **kwargs)
        except ConnectionLost as exc:
            if not self.killed.is_set():
                tally.problems.append(f"connection lost while the server was up: {exc}")
        except Exception as exc:
            tally.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    def _produce(self, client: PipelinedClient, tally: Tally, producer: int, batch: bool) -> None:
        while time.monotonic() < self.until:
            seq = self.next_seq[producer]
            payloads = [b"p%d-%d" % (producer, seq + i) for i in range(PIPELINE)]
            self.next_seq[producer] = seq + PIPELINE
            tally.sent.update(payloads)
            if batch:  # 4 batches of 8 in one write
                groups = [tuple(payloads[i : i + 8]) for i in range(0, PIPELINE, 8)]
                requests: list = [EnqueueBatch(QUEUE, group) for group in groups]
            else:
                groups = [(payload,) for payload in payloads]
                requests = [Enqueue(QUEUE, payload) for payload in payloads]
            expected = dict(zip(client.send_many(requests), groups))
            for _ in requests:
                ((request_id, response),) = client.receive(1)
                group = expected.pop(request_id)
                if isinstance(response, ObjectQueued) and len(group) == 1:
                    tally.queued[group[0]] = response.id
                elif isinstance(response, ObjectsQueued) and len(response.ids) == len(group):
                    tally.queued.update(zip(group, response.ids))
                else:
                    tally.problems.append(f"send of {group[0]!r}...: {response!r}")

    def _consume(self, client: PipelinedClient, tally: Tally, batch: bool) -> None:
        while time.monotonic() < self.until:
            if batch:
                requests: list = [ReadBatch(QUEUE, 8, 600_000, 20) for _ in range(4)]
            else:
                requests = [Read(QUEUE, 600_000, 20) for _ in range(PIPELINE)]
            client.send_many(requests)
            got: list[Message] = []
            for _ in requests:
                ((_, response),) = client.receive(1)
                if isinstance(response, Message):
                    got.append(response)
                elif isinstance(response, Messages):
                    got += response.messages
                elif not isinstance(response, Empty):
                    tally.problems.append(f"read: {response!r}")
            tally.reads += [(message.data, message.id) for message in got]
            if got:
                self._confirm(client, tally, got, batch)

    def _confirm(self, client: PipelinedClient, tally: Tally, got: list[Message], batch: bool) -> None:
        tally.unsettled.update(message.data for message in got)  # until the answer comes
        if batch:
            (request_id,) = client.send_many([ConfirmBatch(tuple(message.id for message in got))])
            ((_, response),) = client.receive(1)
            if not isinstance(response, ConfirmResults) or len(response.outcomes) != len(got):
                tally.problems.append(f"confirm batch: {response!r}")
                return
            outcomes = list(zip(got, response.outcomes))
        else:
            expected = dict(zip(client.send_many(Confirm(message.id) for message in got), got))
            outcomes = []
            for _ in got:
                ((request_id, response),) = client.receive(1)
                message = expected.pop(request_id)
                tally.unsettled.discard(message.data)
                outcomes.append((message, 0 if isinstance(response, Confirmed) else response))
        for message, outcome in outcomes:
            tally.unsettled.discard(message.data)
            if outcome == 0:
                tally.confirmed[message.data] = message.id
            else:
                tally.problems.append(f"confirm of {message.id} ({message.data!r}): {outcome!r}")


def drain(address: str) -> Tally:
    """Read and confirm every message left, as one more consumer's tally."""
    tally = Tally()
    with PipelinedClient.connect(address, timeout=5.0) as client:
        for _ in range(10_000):  # far more rounds than messages sent / 1000
            client.send_many([ReadBatch(QUEUE, 1000, 600_000, 0)])
            ((_, response),) = client.receive(1)
            assert isinstance(response, Messages), response
            if not response.messages:
                return tally
            tally.reads += [(message.data, message.id) for message in response.messages]
            client.send_many([ConfirmBatch(tuple(message.id for message in response.messages))])
            ((_, results),) = client.receive(1)
            assert isinstance(results, ConfirmResults) and set(results.outcomes) == {0}, results
            tally.confirmed.update((message.data, message.id) for message in response.messages)
    raise AssertionError("the drain never emptied the queue")


def crash_cycles(server: ServerProcess, stops: list[str], rng: random.Random, stop_after: tuple[float, float]) -> dict:
    """Run one load cycle per entry of ``stops``, each ended by that stop ("sigkill" or "sigterm")
    at a random moment, then drain; check what the clients were told. Returns figures."""
    producers, consumers = 2, 4
    next_seq = [0] * producers
    history: list[list[Tally]] = []  # per cycle; the drain is the last
    for cycle, stop in enumerate(stops):
        if cycle:
            server.start()
        else:
            with server.client() as client:
                client.create(QUEUE)
        load = Load(server.address, next_seq, until=time.monotonic() + stop_after[1] + 5.0)
        load.start(producers, consumers)
        time.sleep(rng.uniform(*stop_after))
        load.killed.set()
        server.stop(stop)
        load.join()
        history.append(load.tallies)
    server.start()
    history.append([drain(server.address)])
    with server.client() as client:
        stats = client.stats(QUEUE)
    assert (stats["ready"], stats["in_flight"], stats["delayed"]) == (0, 0, 0), stats
    return check_history(history)


def check_history(history: list[list[Tally]]) -> dict:
    problems = [problem for tallies in history for tally in tallies for problem in tally.problems]
    assert not problems, problems[:10]

    sent: set[bytes] = set()
    queued: dict[bytes, int] = {}
    confirmed_in: dict[bytes, int] = {}  # payload -> the cycle of its (first) Confirmed answer
    unsettled: set[bytes] = set()
    figures: dict[str, list[int]] = {"queued": [], "read": [], "confirmed": []}
    handed_out_before = 0
    for cycle, tallies in enumerate(history):
        cycle_queued = {p: id_ for tally in tallies for p, id_ in tally.queued.items()}
        reads = [read for tally in tallies for read in tally.reads]
        confirmed = {p: id_ for tally in tallies for p, id_ in tally.confirmed.items()}
        for tally in tallies:
            sent |= tally.sent
            unsettled |= tally.unsettled
        figures["queued"].append(len(cycle_queued))
        figures["read"].append(len(reads))
        figures["confirmed"].append(len(confirmed))
        # Ids: new ones after a restart lie above every id handed out before it.
        if cycle_queued:
            assert min(cycle_queued.values()) > handed_out_before, f"cycle {cycle} reused ids"
        ids_seen = list(cycle_queued.values()) + [id_ for _, id_ in reads]
        handed_out_before = max([handed_out_before, *ids_seen])
        queued.update(cycle_queued)
        # Within a cycle no timeout passes and no connection closes: nothing is delivered twice.
        assert len({payload for payload, _ in reads}) == len(reads), f"cycle {cycle} delivered a message twice"
        for payload, id_ in reads:
            assert payload in sent, f"cycle {cycle}: read {payload!r}, which no producer sent"
            assert queued.get(payload, id_) == id_, (
                f"cycle {cycle}: {payload!r} read as {id_}, queued as {queued[payload]}"
            )
            # (b) a payload answered Confirmed is never delivered again in a later cycle.
            assert confirmed_in.get(payload, cycle) == cycle, (
                f"{payload!r} (id {id_}) was answered Confirmed in cycle {confirmed_in[payload]}"
                f" and delivered again in cycle {cycle}"
            )
        for payload in confirmed:
            confirmed_in.setdefault(payload, cycle)

    assert len(set(queued.values())) == len(queued), "two messages were given one id"
    remaining = [payload for payload, _ in history[-1][0].reads]
    assert len(remaining) == len(set(remaining)), "a message is stored twice"
    # The drain reads what was left in stored order: each producer's messages in the order sent.
    for producer in {payload.split(b"-")[0] for payload in remaining}:
        seqs = [int(payload.split(b"-")[1]) for payload in remaining if payload.startswith(producer + b"-")]
        assert seqs == sorted(seqs), f"producer {producer!r}'s messages came back out of order"
    # (a) every payload answered ObjectQueued was confirmed, or is still there at the end. A
    # confirm whose answer was cut off by the kill may or may not have been committed.
    lost = set(queued) - set(confirmed_in) - unsettled
    assert not lost, f"{len(lost)} messages answered ObjectQueued are gone, e.g. {sorted(lost)[:5]}"
    assert all(figures["queued"][:-1]) and all(figures["confirmed"][:-1]), f"a cycle did no work: {figures}"
    redelivered = sum(1 for tallies in history for tally in tallies for p, _ in tally.reads) - len(
        {p for tallies in history for tally in tallies for p, _ in tally.reads}
    )
    return {**figures, "redelivered": redelivered, "unsettled": len(unsettled), "sent": len(sent), "acked": len(queued)}


def test_kill_9_under_load_loses_no_queued_message_and_repeats_no_confirmed_one(
    served: Callable[..., ServerProcess],
) -> None:
    # Four crashes, and one clean stop under the same load (in flight goes back, the outbox is dropped).
    seed = random.randrange(1 << 30)
    stops = ["sigkill", "sigkill", "sigterm", "sigkill", "sigkill"]
    figures = crash_cycles(served(), stops, rng=random.Random(seed), stop_after=(0.3, 1.0))
    print(f"seed {seed}: {figures}")


def test_kill_9_under_load_with_sync_disk(served: Callable[..., ServerProcess]) -> None:
    seed = random.randrange(1 << 30)
    figures = crash_cycles(served(sync="disk"), ["sigkill", "sigkill"], rng=random.Random(seed), stop_after=(0.3, 0.8))
    print(f"seed {seed}: {figures}")


# --- space ----------------------------------------------------------------------------
#
# Two senders, each sending 32 messages, reading the 32 oldest and confirming
# them, over a backlog of 8000: the live data stays the same while every message
# on disk is replaced many times over. Store sizes are sampled as it runs, and
# once more after a round of the server's reclaim timer.

FLOOR = 4 << 20
CHURN_SECONDS = 5.0
LIVE = 8000
PAYLOAD = bytes(range(256))
LIVE_BYTES = LIVE * len(PAYLOAD)


def churn(address: str, until: float, counts: list[int]) -> None:
    """Send 32, read the 32 oldest, confirm them; again until ``until``. The backlog stays as it was."""
    with PipelinedClient.connect(address, timeout=5.0) as client:
        while time.monotonic() < until:
            client.send_many([Enqueue("churn", PAYLOAD)] * PIPELINE)
            assert all(isinstance(r, ObjectQueued) for _, r in client.receive(PIPELINE))
            client.send_many([ReadBatch("churn", PIPELINE, 600_000, 0)])
            ((_, messages),) = client.receive(1)
            assert isinstance(messages, Messages) and len(messages.messages) == PIPELINE, messages
            client.send_many([ConfirmBatch(tuple(m.id for m in messages.messages))])
            ((_, results),) = client.receive(1)
            assert isinstance(results, ConfirmResults) and set(results.outcomes) == {0}, results
            counts.append(PIPELINE)


@dataclass
class Churned:
    messages: int  # sent and confirmed during the churn
    db: list[int]  # dbqueue.db sizes sampled during the churn
    wal: list[int]  # dbqueue.db-wal sizes at the same moments
    settled: int  # both files, a reclaim round after the churn stopped

    def describe(self) -> str:
        peak = max(map(sum, zip(self.db, self.wal)))
        return (
            f"{self.messages} messages churned over {LIVE} live ({LIVE_BYTES} B): db up to {max(self.db)} B,"
            f" WAL up to {max(self.wal)} B, both up to {peak} B; {self.settled} B after reclaim"
        )


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory) -> Churned:
    server = ServerProcess(tmp_path_factory.mktemp("churn") / "data").start()
    try:
        with server.client() as client:
            client.create("churn")
            for _ in range(LIVE // 1000):
                client.send_batch("churn", [PAYLOAD] * 1000)
        counts: list[int] = []
        until = time.monotonic() + CHURN_SECONDS
        workers = [threading.Thread(target=churn, args=(server.address, until, counts)) for _ in range(2)]
        for worker in workers:
            worker.start()
        db: list[int] = []
        wal: list[int] = []
        while any(worker.is_alive() for worker in workers):
            db.append(store_bytes(server.data_dir, "dbqueue.db"))
            wal.append(store_bytes(server.data_dir, "dbqueue.db-wal"))
            time.sleep(0.05)
        for worker in workers:
            worker.join()
        time.sleep(1.5)  # RECLAIM_INTERVAL and a margin
        settled = store_bytes(server.data_dir)
        with server.client() as client:
            stats = client.stats("churn")
        assert (stats["ready"], stats["in_flight"]) == (LIVE, 0), stats
    finally:
        server.close()
    result = Churned(sum(counts), db, wal, settled)
    print(result.describe())
    assert result.messages > 10 * LIVE, f"too little churn to mean anything: {result.describe()}"
    return result


def test_store_files_shrink_back_near_the_live_data_after_churn(churned: Churned) -> None:
    assert churned.settled < 2 * LIVE_BYTES + FLOOR, churned.describe()
    assert max(churned.db) < 2 * LIVE_BYTES + FLOOR, churned.describe()  # freed pages are reused


def test_store_files_stay_near_the_live_data_during_churn(churned: Churned) -> None:
    # The WAL counts too: between two reclaim rounds it is SQLite's autocheckpoint that bounds it.
    peak = max(map(sum, zip(churned.db, churned.wal)))
    assert peak < 2 * LIVE_BYTES + FLOOR, churned.describe()

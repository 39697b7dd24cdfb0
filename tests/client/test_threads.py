"""Threads sharing one blocking client, against real servers: `Client`, per-thread `Pipeline`s, `GroupClient`.

Every payload is unique and checked where it is read back, so an answer
delivered to the wrong thread fails the test at once. Threads run as daemons
and are joined with a bound: a thread stuck for ever fails the test instead of
hanging the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import ServerThread
from dbqueue import Client, ConnectionLost, Message
from dbqueue.client.group import GroupClient
from dbqueue.protocol import Enqueue, ObjectQueued, Read
from dbqueue.server.security import server_tls_context
from pki import Pki, make_pki

THREADS = 16
CYCLES = 60  # send, read, confirm: per thread
JOIN = 30.0  # seconds a test waits for its threads at most


def in_threads(target: Callable[..., Any], arguments: list[tuple[Any, ...]], within: float = JOIN) -> list[Any]:
    """Run ``target(*args)`` on a thread for each ``args``, all at once; return their results in order.

    Raises the first thread's exception; fails the test if a thread is still running after ``within``.
    """
    results: list[Any] = [None] * len(arguments)
    errors: list[BaseException] = []
    start = threading.Barrier(len(arguments))

    def run(place: int, args: tuple[Any, ...]) -> None:
        start.wait()
        try:
            results[place] = target(*args)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(place, args), daemon=True) for place, args in enumerate(arguments)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + within
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        pytest.fail(f"{stuck} of {len(threads)} threads still running after {within} s")
    if errors:
        raise errors[0]
    return results


def in_background(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[float], Any]:
    """Start ``target(*args, **kwargs)`` on a daemon thread; return a function that waits for its result
    (or raises its exception), failing the test if it takes longer than the seconds given."""
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, target(*args, **kwargs)))
        except BaseException as exc:
            outcome.append((False, exc))
        done.set()

    threading.Thread(target=run, daemon=True).start()

    def result(within: float) -> Any:
        if not done.wait(within):
            pytest.fail(f"{getattr(target, '__name__', target)} did not end within {within} s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return result


def cycles(client: Any, queue: str, tag: str, count: int = CYCLES) -> int:
    """Send, read and confirm ``count`` unique payloads on ``queue`` (a queue of this thread's own),
    checking that each read brings back the payload just sent. Returns ``count``."""
    for n in range(count):
        payload = f"{tag}:{n}".encode()
        id_ = client.send(queue, payload)
        message = client.read(queue, visibility_timeout=30.0)
        assert message is not None, f"{tag}: message {n} was not there"
        assert (message.id, message.data) == (id_, payload), f"{tag}: sent {payload!r}, got {message!r}"
        client.confirm(message.id)
    return count


def waiting(client: Client, queue: str) -> int:
    return int(client.stats(queue)["waiting"])


def wait_until(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(server_factory: Callable[..., ServerThread], pki: Pki) -> ServerThread:
    return server_factory(ssl=server_tls_context(pki.cert("server"), pki.key("server"), None))


# --- one Client -------------------------------------------------------------------------------


def test_sixteen_threads_share_one_client(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        queues = [f"own-{i}" for i in range(THREADS)]
        in_threads(client.create, [(queue,) for queue in queues])
        done = in_threads(cycles, [(client, queue, f"t{i}") for i, queue in enumerate(queues)])
        assert sum(done) == THREADS * CYCLES
        for queue in queues:
            assert {key: client.stats(queue)[key] for key in ("ready", "in_flight", "confirmed")} == {
                "ready": 0,
                "in_flight": 0,
                "confirmed": CYCLES,
            }


def test_threads_on_one_queue_take_every_message_once(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("shared")

        def produce_and_consume(tag: str) -> tuple[set[bytes], list[bytes]]:
            sent = set()
            taken = []
            for n in range(CYCLES):
                payload = f"{tag}:{n}".encode()
                client.send("shared", payload)
                sent.add(payload)
                message = client.read("shared", visibility_timeout=30.0)
                if message is not None:
                    taken.append(message.data)
                    client.confirm(message.id)
            return sent, taken

        outcomes = in_threads(produce_and_consume, [(f"p{i}",) for i in range(THREADS)])
        sent = set().union(*(sent for sent, _ in outcomes))
        taken = [payload for _, payloads in outcomes for payload in payloads]
        while (message := client.read("shared")) is not None:  # what the threads left for one another
            taken.append(message.data)
            client.confirm(message.id)
        assert len(taken) == len(set(taken)) == THREADS * CYCLES
        assert set(taken) == sent


def test_each_thread_pipelines_over_one_client(server: ServerThread) -> None:
    with Client.connect(server.address) as client:

        def pipelined(tag: str) -> None:
            queue = f"pipe-{tag}"
            client.create(queue)
            for batch in range(5):
                payloads = [f"{tag}:{batch}:{n}".encode() for n in range(20)]
                with client.pipeline() as pipeline:
                    for payload in payloads:
                        pipeline.send(queue, payload)
                    ids = pipeline.execute(raise_on_error=True)
                with client.pipeline() as pipeline:
                    for _ in payloads:
                        pipeline.read(queue, visibility_timeout=30.0)
                    messages = pipeline.execute(raise_on_error=True)
                assert [(m.id, m.data) for m in messages if isinstance(m, Message)] == list(zip(ids, payloads))
                with client.pipeline() as pipeline:
                    for id_ in ids:
                        pipeline.confirm(id_)  # type: ignore[arg-type]
                    assert pipeline.execute(raise_on_error=True) == [None] * len(ids)

        in_threads(pipelined, [(f"t{i}",) for i in range(8)])


def test_threads_pipelining_megabytes_both_ways_do_not_deadlock(server: ServerThread) -> None:
    """Writes larger than the socket's buffers, from several threads, while answers as large pile up:
    a thread waiting for room to write must let the answers be read (the server stops reading
    requests while its answers go unread)."""
    size = 256 * 1024
    with Client.connect(server.address) as client:

        def heavy(tag: str) -> None:
            queue = f"big-{tag}"
            client.create(queue)
            for batch in range(2):
                payloads = [f"{tag}:{batch}:{n}:".encode().ljust(size, b".") for n in range(12)]
                with client.pipeline() as pipeline:
                    for payload in payloads:
                        pipeline.send(queue, payload)
                    for _ in payloads:
                        pipeline.read(queue, visibility_timeout=30.0)
                    results = pipeline.execute(raise_on_error=True)
                ids, messages = results[: len(payloads)], results[len(payloads) :]
                assert [(m.id, m.data) for m in messages if isinstance(m, Message)] == list(zip(ids, payloads))
                assert client.confirm_batch(ids) == [None] * len(ids)  # type: ignore[arg-type]

        in_threads(heavy, [(f"t{i}",) for i in range(4)], within=60.0)


def test_a_writer_blocked_by_unread_answers_reads_them_meanwhile(
    server_factory: Callable[..., ServerThread],
) -> None:
    """The deadlock a thread holding both roles must avoid, made on purpose: the server stops reading
    a connection whose answers go unread, and a request larger than the sockets' buffers then cannot
    be written until someone reads them. The writing thread reads them itself."""
    server = server_factory(max_message_size=16 * 1024 * 1024)
    with Client.connect(server.address) as client:
        client.create("big")
        client.create("sink")
        for n in range(24):
            client.send("big", str(n).encode().ljust(1024 * 1024, b"."))
        ids = client.connection.send_many([Read("big", 60_000)] * 24)  # 24 MiB of answers, not read yet
        time.sleep(0.1)  # the server writes what the socket takes, then stops reading this connection
        payload = b"sink".ljust(12 * 1024 * 1024, b"x")
        sent = client.send("sink", payload)
        answers = client.connection.receive(24)
        assert [request_id for request_id, _ in answers] == ids
        numbers = [answer.data.split(b".", 1)[0] for _, answer in answers]  # type: ignore[union-attr]
        assert numbers == [str(n).encode() for n in range(24)]
        assert client.read("sink") == Message(sent, payload, 1)


def test_raw_requests_beside_threads_using_commands(server: ServerThread) -> None:
    """`send_many` and `receive` in one thread get the answers to their own requests, in order, while
    other threads' commands on the same connection get theirs."""
    with Client.connect(server.address) as client:
        client.create("raw")
        stop = threading.Event()

        def busy(tag: str) -> int:
            client.create(f"busy-{tag}")
            done = 0
            while not stop.is_set():
                done += cycles(client, f"busy-{tag}", tag, 5)
            return done

        busy_results = [in_background(busy, str(i)) for i in range(4)]
        connection = client.connection
        for round_ in range(20):
            ids = connection.send_many(Enqueue("raw", f"{round_}:{n}".encode()) for n in range(10))
            answers = connection.receive(10)
            assert [request_id for request_id, _ in answers] == ids
            assert all(isinstance(answer, ObjectQueued) for _, answer in answers)
        stop.set()
        assert all(result(JOIN) > 0 for result in busy_results)
        assert client.stats("raw")["ready"] == 200


def test_waiting_reads_do_not_stall_the_other_threads(server: ServerThread) -> None:
    rounds = 3
    with Client.connect(server.address) as client, Client.connect(server.address) as producer:
        waiters = [f"wait-{i}" for i in range(4)]
        for queue in [*waiters, *(f"busy-{i}" for i in range(8))]:
            producer.create(queue)

        def wait_for_messages(queue: str) -> list[bytes]:
            got = []
            for _ in range(rounds):
                message = client.read(queue, visibility_timeout=30.0, wait=20.0)
                assert message is not None
                got.append(message.data)
                client.confirm(message.id)
            return got

        results = [in_background(wait_for_messages, queue) for queue in waiters]
        for round_ in range(rounds):
            wait_until(lambda: all(waiting(producer, queue) == 1 for queue in waiters), "the reads to wait")
            # Busy threads go round trip after round trip on the same connection meanwhile...
            in_threads(cycles, [(client, f"busy-{i}", f"r{round_}b{i}", 20) for i in range(8)])
            # ...and the waiting reads were still waiting all along.
            assert [waiting(producer, queue) for queue in waiters] == [1] * len(waiters)
            for queue in waiters:
                producer.send(queue, f"{queue}:{round_}".encode())
        assert [result(JOIN) for result in results] == [
            [f"{queue}:{round_}".encode() for round_ in range(rounds)] for queue in waiters
        ]


def test_a_request_timing_out_in_one_thread_lets_the_others_proceed(server: ServerThread) -> None:
    with Client.connect(server.address) as client, Client.connect(server.address) as observer:
        client.create("slow")
        stop = threading.Event()

        def busy(tag: str) -> int:
            done = 0
            while not stop.is_set():
                done += cycles(client, f"busy-{tag}", tag, 10)
            return done

        for i in range(8):
            client.create(f"busy-{i}")
        busy_results = [in_background(busy, str(i)) for i in range(8)]
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="in time"):
            client.connection.request(Read("slow", 30_000, 20_000), timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3.0
        time.sleep(0.2)  # the others go on after the timeout too
        stop.set()
        assert all(result(JOIN) > 0 for result in busy_results)
        # The abandoned read was cancelled on the server, and its late (empty) answer went nowhere.
        wait_until(lambda: waiting(observer, "slow") == 0, "the abandoned read to be cancelled")
        id_ = observer.send("slow", b"after")
        assert client.read("slow") == Message(id_, b"after", 1)


def test_a_late_answer_bringing_a_message_is_released(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        client.create("q")
        id_ = client.send("q", b"only")
        with pytest.raises(ConnectionLost, match="in time"):
            client.connection.request(Read("q", 30_000), timeout=0)  # gives up before its answer is read
        # The answer comes anyway, with the message: it is released, not handed to a later request.
        wait_until(lambda: (client.stats("q")["ready"], client.stats("q")["in_flight"]) == (1, 0), "the release")
        assert client.read("q") == Message(id_, b"only", 2)


def test_the_reader_timing_out_hands_the_read_role_on(server: ServerThread) -> None:
    with Client.connect(server.address) as client, Client.connect(server.address) as producer:
        client.create("never")
        client.create("later")
        gives_up = in_background(client.connection.request, Read("never", 30_000, 20_000), 0.5)
        wait_until(lambda: waiting(producer, "never") == 1, "the first read to wait")
        reads = in_background(client.read, "later", visibility_timeout=30.0, wait=20.0)
        wait_until(lambda: waiting(producer, "later") == 1, "the second read to wait")
        assert client.connection._reading  # the first thread reads; the second sleeps
        with pytest.raises(ConnectionLost):
            gives_up(5.0)
        time.sleep(0.2)
        id_ = producer.send("later", b"x")
        sent = time.monotonic()
        assert reads(5.0) == Message(id_, b"x", 1)
        assert time.monotonic() - sent < 2.0


def test_close_from_another_thread_fails_every_waiting_thread(server: ServerThread) -> None:
    client = Client.connect(server.address)
    queues = [f"c-{i}" for i in range(6)]
    with Client.connect(server.address) as observer:
        for queue in queues:
            observer.create(queue)
        results = [in_background(client.read, queue, visibility_timeout=30.0, wait=30.0) for queue in queues]
        wait_until(lambda: all(waiting(observer, queue) == 1 for queue in queues), "every read to wait")
        closed = time.monotonic()
        client.close()
        for result in results:
            with pytest.raises(ConnectionLost, match="closed"):
                result(5.0)
        assert time.monotonic() - closed < 3.0
        with pytest.raises(ConnectionLost):
            client.send(queues[0], b"x")
        wait_until(lambda: all(waiting(observer, queue) == 0 for queue in queues), "the server to drop the reads")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_close_while_threads_send_and_read(
    server_factory: Callable[..., ServerThread], request: pytest.FixtureRequest, tls: bool
) -> None:
    """Whatever each thread is doing when another closes the client (writing, reading for the others,
    asleep), it ends with `ConnectionLost`, and nothing else."""
    pki: Pki | None = request.getfixturevalue("pki") if tls else None
    server = tls_server(server_factory, pki) if pki else server_factory()

    def churn(client: Client, tag: str) -> int:
        client.create(f"churn-{tag}")
        done = 0
        try:
            while True:
                done += cycles(client, f"churn-{tag}", tag, 1)
        except ConnectionLost:
            return done

    for round_ in range(5):
        client = Client.connect(server.address, tls=pki.client_context() if pki else None)
        results = [in_background(churn, client, f"{round_}.{i}") for i in range(8)]
        time.sleep(0.2)
        client.close()
        assert all(result(5.0) >= 0 for result in results)


def test_a_server_going_away_fails_every_waiting_thread(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory()
    client = Client.connect(server.address)
    queues = [f"gone-{i}" for i in range(6)]
    for queue in queues:
        client.create(queue)
    results = [in_background(client.read, queue, visibility_timeout=30.0, wait=30.0) for queue in queues]
    with Client.connect(server.address) as observer:
        wait_until(lambda: all(waiting(observer, queue) == 1 for queue in queues), "every read to wait")
    server.stop()
    for result in results:
        with pytest.raises(ConnectionLost):
            result(5.0)
    with pytest.raises(ConnectionLost):
        client.send(queues[0], b"x")
    client.close()


# --- TLS --------------------------------------------------------------------------------------


def test_threads_share_one_tls_client(server_factory: Callable[..., ServerThread], pki: Pki) -> None:
    server = tls_server(server_factory, pki)
    with Client.connect(server.address, tls=pki.client_context()) as client:
        queues = [f"tls-{i}" for i in range(8)]
        for queue in queues:
            client.create(queue)
        client.create("tls-wait")
        waiter = in_background(
            client.read, "tls-wait", visibility_timeout=30.0, wait=20.0
        )  # reads for the others, maybe
        assert sum(in_threads(cycles, [(client, queue, queue) for queue in queues])) == 8 * CYCLES
        id_ = client.send("tls-wait", b"w")
        assert waiter(JOIN) == Message(id_, b"w", 1)
        # close() from another thread: the plain socket's shutdown wakes the thread reading under TLS.
        results = [in_background(client.read, queue, visibility_timeout=30.0, wait=30.0) for queue in queues]
        wait_until(lambda: client.connection._reading and len(client.connection._sleepers) == 7, "the reads to wait")
        client.close()
        for result in results:
            with pytest.raises(ConnectionLost, match="closed"):
                result(5.0)


# --- the group client -------------------------------------------------------------------------


def start_group(server_factory: Callable[..., ServerThread], size: int) -> list[ServerThread]:
    handles = [server_factory(member_index=i) for i in range(size)]
    addresses = [handle.address for handle in handles]
    for handle in handles:  # ports were picked at start: tell every member the group now
        handle.call(lambda handle=handle: setattr(handle.server, "members", list(addresses)))
    return handles


def test_the_group_client_shared_by_threads(server_factory: Callable[..., ServerThread]) -> None:
    handles = start_group(server_factory, 2)
    with GroupClient.connect([handle.address for handle in handles]) as group:
        queues = [f"g-{i}" for i in range(8)]
        for queue in queues:
            group.create(queue)
        assert sum(in_threads(cycles, [(group, queue, queue) for queue in queues])) == 8 * CYCLES

        def batches(queue: str) -> None:
            sent = {f"{queue}:b{n}".encode() for n in range(30)}
            group.send_batch(queue, sorted(sent))
            got = []
            while len(got) < len(sent):
                got += group.read_batch(queue, 7, visibility_timeout=30.0)
            assert {message.data for message in got} == sent
            assert group.confirm_batch(message.id for message in got) == [None] * len(got)

        in_threads(batches, [(queue,) for queue in queues])
        assert group.stats(queues[0])["in_flight"] == 0


def test_group_waiting_reads_in_threads_while_others_send(server_factory: Callable[..., ServerThread]) -> None:
    handles = start_group(server_factory, 2)
    with GroupClient.connect([handle.address for handle in handles]) as group:
        waiters = [f"gw-{i}" for i in range(4)]
        for queue in [*waiters, *(f"gb-{i}" for i in range(4))]:
            group.create(queue)
        results = [in_background(group.read, queue, visibility_timeout=30.0, wait=20.0) for queue in waiters]
        with Client.connect(handles[0].address) as first, Client.connect(handles[1].address) as second:
            wait_until(
                lambda: all(waiting(first, queue) == waiting(second, queue) == 1 for queue in waiters),
                "every group read to wait on every member",
            )
            in_threads(cycles, [(group, f"gb-{i}", f"gb{i}", 20) for i in range(4)])
            assert all(waiting(first, queue) == waiting(second, queue) == 1 for queue in waiters)
            for queue in waiters:
                group.send(queue, queue.encode())
            messages = [result(JOIN) for result in results]
            assert [message.data for message in messages] == [queue.encode() for queue in waiters]
            for message in messages:
                group.confirm(message.id)
            # The waits on the members that brought nothing were cancelled.
            wait_until(
                lambda: all(waiting(first, queue) == waiting(second, queue) == 0 for queue in waiters),
                "the other members' reads to be cancelled",
            )

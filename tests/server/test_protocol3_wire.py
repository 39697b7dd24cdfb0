"""Protocol 3 against a real server over real sockets, in raw frames: the version check, the queue's
visibility timeout, PEEK, MOVE (a connection reset right after it) and dead letters' origins, kept
across a restart with a store."""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest
from conftest import ServerThread
from dbqueue.errors import ErrorCode
from dbqueue.protocol import NEVER_MS, Flag, Op
from dbqueue.protocol import messages as msg


class Peer(conftest.Peer):
    """`conftest.Peer`, and the raw answer of a request."""

    def frame(self, request: Any) -> tuple[int, int, bytes]:
        """Send ``request`` and return the raw (opcode, flags, body) of its answer."""
        request_id = self.next_id
        self.next_id += 1
        self.connection.send(msg.encode(request_id, request))
        opcode, flags, _, body = self.connection.recv_frame()
        return opcode, flags, body


def stats(peer: Peer, name: str) -> dict[str, Any]:
    reply = peer.call(msg.Stats(name))
    assert isinstance(reply, msg.StatsReply)
    return reply.stats


def test_a_version_2_hello_is_refused_naming_both_versions(server: ServerThread) -> None:
    connection = server.raw()
    connection.send(msg.encode(1, msg.Hello(2)))
    opcode, _, _, body = connection.recv_frame()
    error = msg.decode_response(opcode, body)
    assert isinstance(error, msg.Error) and error.code == ErrorCode.UNSUPPORTED_VERSION
    assert "version 2 is not supported" in error.message and "version 3" in error.message


def test_read_timeout_0_is_the_queue_default_and_never_is_never(server: ServerThread) -> None:
    peer = Peer(server.raw())
    assert peer.call(msg.CreateQueue("short", visibility_timeout_ms=150)) == msg.QueueCreated()
    assert peer.call(msg.CreateQueue("plain")) == msg.QueueCreated()
    assert stats(peer, "short")["visibility_timeout_ms"] == 150
    assert stats(peer, "plain")["visibility_timeout_ms"] == 30_000  # Limits.default_visibility_timeout
    for data in (b"a", b"b"):
        assert isinstance(peer.call(msg.Enqueue("short", data)), msg.ObjectQueued)
    first = peer.call(msg.Read("short"))  # 0: the queue's 150 ms
    second = peer.call(msg.Read("short", NEVER_MS))
    assert (first.data, second.data) == (b"a", b"b")
    time.sleep(0.4)
    again = peer.call(msg.Read("short", NEVER_MS))
    assert (again.data, again.deliveries) == (b"a", 2)  # the first came back; the second never does
    assert stats(peer, "short")["in_flight"] == 2
    # TOUCH 0: the queue's default again, from now.
    assert peer.call(msg.Touch(again.id, 0)) == msg.Touched()
    time.sleep(0.4)
    assert stats(peer, "short")["ready"] == 1


def test_stats_tell_the_age_of_the_oldest_ready_message(server: ServerThread) -> None:
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("q"))
    assert stats(peer, "q")["oldest_ready_age_ms"] == 0
    peer.call(msg.Enqueue("q", b"x"))
    time.sleep(0.25)
    peer.call(msg.Enqueue("q", b"y"))
    age = stats(peer, "q")["oldest_ready_age_ms"]
    assert 200 <= age < 5_000
    listed = peer.call(msg.ListQueues()).stats["queues"]
    assert [entry["oldest_ready_age_ms"] >= 200 for entry in listed if entry["name"] == "q"] == [True]


def test_peek_changes_no_count_and_marks_states(server: ServerThread) -> None:
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("q"))
    ids = peer.call(msg.EnqueueBatch("q", (b"one", b"two", b"three"))).ids
    delayed = peer.call(msg.EnqueueDelayed("q", b"later", 60_000)).id
    taken = peer.call(msg.Read("q", 60_000))
    before = stats(peer, "q")
    seen = peer.call(msg.Peek("q", 10))
    assert [(m.id, m.data, m.state, m.deliveries) for m in seen.messages] == [
        (ids[1], b"two", "ready", 0),
        (ids[2], b"three", "ready", 0),
    ]
    every = peer.call(msg.Peek("q", 10, delayed=True, in_flight=True)).messages
    assert [(m.id, m.state) for m in every] == [
        (ids[1], "ready"),
        (ids[2], "ready"),
        (taken.id, "in_flight"),
        (delayed, "delayed"),
    ]
    assert all(abs(m.enqueued_at - time.time()) < 60 for m in every)
    assert [m.id for m in peer.call(msg.Peek("q", 1, True, True)).messages] == [ids[1]]
    after = stats(peer, "q")
    assert {**after, "oldest_ready_age_ms": 0} == {**before, "oldest_ready_age_ms": 0}  # no count changed
    assert peer.call(msg.Read("q", 60_000)).deliveries == 1  # a peeked message was not delivered


def test_peek_is_bounded_in_bytes(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(max_message_size=1024)
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("q"))
    for _ in range(5):
        peer.call(msg.Enqueue("q", b"x" * 400))
    assert len(peer.call(msg.Peek("q", 100)).messages) == 2  # 800 bytes of payloads fit in 1024, not 1200


def test_move_keeps_ids_order_and_respects_capacity(server: ServerThread) -> None:
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("src"))
    peer.call(msg.CreateQueue("dst", capacity=3))
    ids = peer.call(msg.EnqueueBatch("src", tuple(b"m%d" % i for i in range(5)))).ids
    peer.call(msg.Enqueue("dst", b"already"))
    assert peer.call(msg.Move("src", "dst")) == msg.Moved(2)  # a partial move: what fits
    assert (stats(peer, "src")["ready"], stats(peer, "dst")["ready"]) == (3, 3)
    assert peer.call(msg.Move("src", "dst")) == msg.Moved(0)  # full: nothing moves, no error
    seen = peer.call(msg.Peek("dst", 10)).messages
    assert [m.data for m in seen] == [b"already", b"m0", b"m1"] and [m.id for m in seen[1:]] == list(ids[:2])
    reply = peer.call(msg.Move("src", "nowhere"))
    assert isinstance(reply, msg.Error) and reply.code == ErrorCode.NO_SUCH_QUEUE
    reply = peer.call(msg.Move("src", "src"))
    assert isinstance(reply, msg.Error) and reply.code == ErrorCode.MALFORMED
    # A moved message is read and confirmed under its kept id.
    first = peer.call(msg.Read("dst", 60_000))
    assert first.data == b"already"
    moved = peer.call(msg.Read("dst", 60_000))
    assert moved.id == ids[0] and peer.call(msg.Confirm(moved.id)) == msg.Confirmed()


def test_a_move_cut_off_by_a_connection_reset_loses_and_duplicates_nothing(
    server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    server = server_factory(data_dir=tmp_path / "data")
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("dead"))
    peer.call(msg.CreateQueue("jobs"))
    peer.call(msg.EnqueueBatch("dead", tuple(b"%d" % i for i in range(1000))))
    mover = Peer(server.raw())
    mover.connection.send(msg.encode(99, msg.Move("dead", "jobs", 600)))
    # Reset at once (SO_LINGER 0: an RST, not a FIN), before the answer can be read.
    mover.connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    mover.connection.close()
    server.wait_until(lambda: len(server.server.sessions) == 1, what="the reset connection to go")
    dead, jobs = stats(peer, "dead"), stats(peer, "jobs")
    assert (dead["ready"], jobs["ready"]) in ((1000, 0), (400, 600))  # the move is one step: all or nothing
    data = [m.data for m in peer.call(msg.Peek("jobs", 1000)).messages + peer.call(msg.Peek("dead", 1000)).messages]
    assert sorted(data) == sorted(b"%d" % i for i in range(1000))


def test_a_dead_letter_keeps_its_origin_on_the_wire_and_across_a_restart(
    server_factory: Callable[..., ServerThread], tmp_path: Path
) -> None:
    server = server_factory(data_dir=tmp_path / "data")
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("dead"))
    peer.call(msg.CreateQueue("jobs", max_deliveries=1, dead_letter_queue="dead"))
    sent_at = time.time()
    original = peer.call(msg.Enqueue("jobs", b"poison")).id
    plain = peer.call(msg.Enqueue("dead", b"sent straight")).id
    taken = peer.call(msg.Read("jobs", 60_000))
    assert peer.call(msg.Release(taken.id)) == msg.Released()  # its one delivery spent: dead-lettered
    peeked = peer.call(msg.Peek("dead", 10)).messages
    assert [m.data for m in peeked] == [b"sent straight", b"poison"]
    origin = peeked[1].origin
    assert origin is not None and (origin.queue, origin.id, origin.deliveries) == ("jobs", original, 1)
    assert abs(origin.enqueued_at - sent_at) < 5 and peeked[0].origin is None
    # MESSAGES carries it behind the ORIGIN flag; a MESSAGE without an origin has no flag.
    opcode, flags, body = peer.frame(msg.ReadBatch("dead", 10, 60_000))
    assert (opcode, flags) == (Op.MESSAGES, Flag.ORIGIN)
    read = msg.Messages.from_origin_body(body).messages
    assert [(m.id, m.origin) for m in read] == [(plain, None), (peeked[1].id, origin)]
    server.stop()

    restarted = server_factory(data_dir=tmp_path / "data")
    peer = Peer(restarted.raw())
    opcode, flags, body = peer.frame(msg.Read("dead", 60_000))
    assert (opcode, flags) == (Op.MESSAGE, 0)
    assert msg.Message.from_body(body).id == plain
    opcode, flags, body = peer.frame(msg.Read("dead", 60_000))
    assert (opcode, flags) == (Op.MESSAGE, Flag.ORIGIN)
    again = msg.Message.from_origin_body(body)
    assert (again.data, again.origin) == (b"poison", origin)
    assert stats(peer, "jobs")["visibility_timeout_ms"] == 30_000


def test_metrics_show_the_oldest_ready_age_and_moves(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(metrics_port=0)
    peer = Peer(server.raw())
    peer.call(msg.CreateQueue("q"))
    peer.call(msg.CreateQueue("empty"))
    peer.call(msg.CreateQueue("other"))
    peer.call(msg.EnqueueBatch("q", (b"a", b"b")))
    time.sleep(0.2)
    assert peer.call(msg.Move("q", "other", 1)) == msg.Moved(1)
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    ages = {
        line.split('"')[1]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("dbqueue_queue_oldest_ready_age_seconds{")
    }
    assert ages["empty"] == 0.0 and 0.2 <= ages["q"] < 5 and 0.2 <= ages["other"] < 5, text
    assert 'dbqueue_queue_moved_total{queue="q"} 1.0' in text.splitlines(), text

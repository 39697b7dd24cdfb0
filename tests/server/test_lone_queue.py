"""Lone sends and reads (an unpipelined client's, answered by `fastpath.FastPaths.handle_one`) against a
real server over real sockets: each names its queue by bytes, and names alike (one a prefix or a suffix of
another), or the same name after its queue was deleted and made again, reach the queue they name now; the
in-flight limit counts on every lone read. (Guards any shortcut that skips looking a name up again.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import ServerThread
from dbqueue import Client
from dbqueue.errors import LimitExceeded, NoSuchQueue


def test_names_alike_reach_their_own_queues(server: ServerThread) -> None:
    with Client.connect(server.address) as client:
        for name in ("q", "qq", "aq", "q\x01"):
            client.create(name)
        for name in ("q", "qq", "q", "aq", "q\x01", "q"):
            client.send(name, name.encode())
        for name in ("qq", "q", "q", "aq", "q", "q\x01"):
            message = client.read(name)
            assert message is not None and message.data == name.encode()
            client.confirm(message.id)
        for name in ("q", "qq", "aq", "q\x01"):
            assert client.read(name) is None
            assert client.stats(name)["ready"] == 0


def test_a_queue_deleted_and_made_again_is_looked_up_again(server: ServerThread) -> None:
    with Client.connect(server.address) as client, Client.connect(server.address) as other:
        client.create("jobs")
        client.send("jobs", b"old")
        old = client.read("jobs")
        assert old is not None and old.data == b"old"
        other.delete("jobs")
        with pytest.raises(NoSuchQueue):
            client.send("jobs", b"lost")
        with pytest.raises(NoSuchQueue):
            client.read("jobs")
        other.create("jobs")
        assert client.send("jobs", b"new") > old.id
        new = client.read("jobs")
        assert new is not None and new.data == b"new"
        assert other.stats("jobs")["consumers"] == 1  # counted again: another queue
        client.confirm(new.id)
        assert other.stats("jobs")["enqueued"] == 1


def test_a_kept_queue_still_counts_what_the_connection_holds(server_factory: Callable[..., ServerThread]) -> None:
    server = server_factory(max_in_flight=2)
    with Client.connect(server.address) as client:
        client.create("jobs")
        for number in range(3):
            client.send("jobs", b"%d" % number)
        first, second = client.read("jobs"), client.read("jobs")
        assert first is not None and second is not None
        with pytest.raises(LimitExceeded):
            client.read("jobs")
        client.confirm(first.id)
        third = client.read("jobs")
        assert third is not None and third.data == b"2"

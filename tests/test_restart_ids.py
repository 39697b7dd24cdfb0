"""Ids never repeat across restarts, even of a server that keeps nothing (no --data-dir): each start numbers
from an epoch read off the wall clock (`dbqueue.server.app.first_id`). A confirm retried across a restart
then names no message of the new run, instead of acknowledging another consumer's."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from child_server import ChildServer
from dbqueue import Client, NoSuchMessage
from dbqueue.protocol.frames import MEMBER_SHIFT
from dbqueue.server.app import ID_ORIGIN_MS, ID_STEPS_PER_MS, first_id

if TYPE_CHECKING:
    from conftest import ServerThread

Factory = Callable[..., "ServerThread"]


def test_an_in_memory_server_restarted_hands_out_no_id_twice(server_factory: Factory) -> None:
    first = server_factory()
    with Client.connect(first.address) as client:
        client.create("q")
        before = [client.send("q", b"%d" % i) for i in range(50)] + client.send_batch("q", [b"b"] * 50)
        held = client.read("q", visibility_timeout=60.0)  # a consumer holds one when the server goes
        assert held is not None
    first.stop()
    second = server_factory()
    with Client.connect(second.address) as client:
        client.create("q")
        after = [client.send("q", b"%d" % i) for i in range(50)] + client.send_batch("q", [b"a"] * 50)
        assert min(after) > max(before)
        # The consumer's confirm, retried against the new run, names no message of it.
        with pytest.raises(NoSuchMessage):
            client.confirm(held.id)
        assert client.stats("q")["ready"] == 100


def test_a_restarted_server_process_hands_out_no_id_twice(tmp_path: Path) -> None:
    ids: list[list[int]] = []
    for _ in range(2):
        with ChildServer(tmp_path, "--log-level", "warning") as server, Client.connect(server.address) as client:
            client.create("q")
            ids.append([client.send("q", b"x") for _ in range(20)])
    assert min(ids[1]) > max(ids[0])


def test_member_groups_keep_their_index_byte(server_factory: Factory) -> None:
    server = server_factory(members=["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], member_index=2)
    with Client.connect(server.address) as client:
        client.create("q")
        assert client.send("q", b"x") >> MEMBER_SHIFT == 2


def test_the_epoch_arithmetic() -> None:
    now = time.time_ns() // 1_000_000
    # One millisecond later is ID_STEPS_PER_MS ids further: a run that handed out fewer than that per
    # millisecond of its life stays below the next start's first id.
    assert first_id(0, now + 1) - first_id(0, now) == ID_STEPS_PER_MS
    assert first_id(0, now) > 1 << 40  # well past the old start at 1
    # The member's byte stays its own until the room runs out (2094), and then the start is refused.
    last = ID_ORIGIN_MS + (1 << (MEMBER_SHIFT - 15)) - 2
    assert ID_STEPS_PER_MS == 1 << 15
    assert first_id(255, last) >> MEMBER_SHIFT == 255
    assert (first_id(0, last) + ID_STEPS_PER_MS - 1) >> MEMBER_SHIFT == 0
    with pytest.raises(ValueError, match="2094"):
        first_id(0, last + 1)
    # A wall clock before the origin (a machine that lost its clock) starts where servers always did.
    assert first_id(3, 0) == (3 << MEMBER_SHIFT) + 1

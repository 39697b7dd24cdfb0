"""The group's routing plans (`dbqueue.client.group.plans`), called directly: no socket, no thread,
no loop, and time passed in. tests/test_group.py drives the same plans through both clients against
real servers."""

from __future__ import annotations

import pytest

from dbqueue import (
    AuthenticationFailed,
    ConnectionLost,
    InvalidQueueName,
    Message,
    NoSuchMessage,
    NoSuchQueue,
    ProtocolError,
)
from dbqueue.client.group import plans
from dbqueue.client.group.plans import (
    ConfirmBatch,
    Failover,
    Members,
    ReadPass,
    WaitingRead,
    create_result,
    delete_result,
    discovered,
    fan_out_answers,
    list_queues_result,
    member_for_send,
    member_of,
    purge_result,
    stats_result,
)
from dbqueue.protocol import MembersReply

ADDRESSES = ["h:1", "h:2", "h:3"]


def members_up(indexes: list[int] | None = None) -> Members[str]:
    """Three members, all up; the member at position p says it is member ``indexes[p]``."""
    members: Members[str] = Members(list(ADDRESSES))
    for position, index in enumerate(indexes or [0, 1, 2]):
        members.connected(position, f"client {position}", index)
    return members


def id_from(index: int, serial: int) -> int:
    return (index << plans.MEMBER_SHIFT) + serial


# --- members -------------------------------------------------------------------------------


def test_an_id_names_its_member_and_holder_finds_its_position() -> None:
    members = members_up([2, 0, 1])  # addresses given in another order than the indexes
    assert member_of(id_from(2, 7)) == 2
    assert [members.holder(id_from(index, 7)) for index in (0, 1, 2)] == [1, 2, 0]
    members.position_of_index.pop(1)
    with pytest.raises(NoSuchMessage):
        members.holder(id_from(1, 7))


def test_a_member_down_is_retried_after_a_backoff_that_doubles_up_to_a_ceiling() -> None:
    members = members_up()
    assert members.up() == [0, 1, 2] and members.client(1) == "client 1"
    members.mark_down(1, now=100.0)
    assert members.up() == [0, 2]
    with pytest.raises(ConnectionLost):
        members.client(1)
    assert members.claim_retries(now=100.0 + plans.RETRY_SECONDS - 0.01) == []
    waits = []
    now = 100.0
    for _ in range(8):
        retry_at = members.retry_at[1]
        assert members.claim_retries(now=retry_at) == [1]
        assert members.claim_retries(now=retry_at + 1000) == []  # claimed: one attempt at a time
        waits.append(retry_at - now)
        now = retry_at
        members.connect_failed(1, ConnectionLost("refused"), now)
    assert waits[:3] == [plans.RETRY_SECONDS, 2 * plans.RETRY_SECONDS, 4 * plans.RETRY_SECONDS]
    assert waits[-1] == plans.MAX_RETRY_SECONDS
    members.connected(1, "client 1 again", 1)
    assert members.backoff[1] == plans.RETRY_SECONDS and members.up() == [0, 1, 2]


def test_a_group_no_member_lets_in_raises_the_refusal() -> None:
    members: Members[str] = Members(list(ADDRESSES))
    for position in range(3):
        members.claim_retries(now=0.0)
        members.connect_failed(position, ConnectionLost("down"), 0.0)
    with pytest.raises(ConnectionLost):
        members.raise_if_unreachable(ADDRESSES)
    members.connect_failed(0, AuthenticationFailed("wrong token"), 0.0)
    with pytest.raises(AuthenticationFailed):
        members.raise_if_unreachable(ADDRESSES)


def test_members_are_asked_who_serves_a_down_part_at_most_once_a_check_interval() -> None:
    members = members_up()
    assert members.claim_members_check(now=10.0) is None  # every member up: nothing to ask
    members.mark_down(1, now=10.0)
    asked = members.claim_members_check(now=10.0)
    assert asked in ("client 0", "client 2")
    assert members.claim_members_check(now=10.0 + plans.MEMBERS_CHECK_SECONDS - 0.01) is None
    assert members.claim_members_check(now=10.0 + plans.MEMBERS_CHECK_SECONDS) is not None
    for position in (0, 2):
        members.mark_down(position, now=20.0)
    assert members.claim_members_check(now=100.0) is None  # nobody up to ask


def test_a_down_member_follows_its_part_to_its_new_owner_and_is_due_at_once() -> None:
    members = members_up()
    members.mark_down(1, now=10.0)
    members.mark_down(1, now=11.0)  # the backoff has grown
    assert members.follow(["h:1", "", "h:3"], now=12.0) == []  # nobody serves part 1 yet
    assert members.follow(["h:1", "h:2", "h:3"], now=12.0) == []  # still at its address
    assert members.follow(["h:1", "standby:9", "h:3"], now=12.0) == [1]
    assert members.addresses == ["h:1", "standby:9", "h:3"]
    assert members.claim_retries(now=12.0) == [1] and members.backoff[1] == plans.RETRY_SECONDS
    members.connected(1, "client at the standby", 1)
    assert members.holder(id_from(1, 5)) == 1  # ids of part 1 route to its new owner


def test_a_member_up_keeps_its_connection_and_a_new_part_becomes_a_member() -> None:
    members = members_up()
    assert members.follow(["h:1", "elsewhere:1", "h:3", "new:4"], now=0.0) == [3]
    assert members.addresses == ["h:1", "h:2", "h:3", "new:4"]  # member 1 is up: followed once it fails
    assert members.up() == [0, 1, 2] and members.claim_retries(now=0.0) == [3]


def test_a_connect_that_failed_at_an_old_address_is_retried_at_the_new_one_at_once() -> None:
    members = members_up()
    members.mark_down(1, now=0.0)
    assert members.claim_retries(now=5.0) == [1]  # an attempt at h:2 under way
    assert members.follow(["h:1", "standby:9", "h:3"], now=5.5) == [1]
    members.connect_failed(1, ConnectionLost("refused"), 6.0, "h:2")
    assert members.claim_retries(now=6.0) == [1]


def test_discovery_keeps_the_address_asked_of_a_server_alone() -> None:
    assert discovered(MembersReply(("a:1", "b:2"), 0), "a:1") == ["a:1", "b:2"]
    assert discovered(MembersReply(("0.0.0.0:1",), 0), "10.0.0.5:1") == ["10.0.0.5:1"]


# --- sends ---------------------------------------------------------------------------------


def test_sends_go_round_robin_or_by_a_stable_key() -> None:
    assert [member_for_send(None, turn, [0, 2]) for turn in range(4)] == [0, 2, 0, 2]
    by_key = {member_for_send("customer-7", turn, [0, 1, 2]) for turn in range(10)}
    assert len(by_key) == 1 and by_key == {member_for_send(b"customer-7", 0, [0, 1, 2])}
    with pytest.raises(ConnectionLost):
        member_for_send(None, 0, [])


def test_failover_tries_each_live_member_once_then_gives_up() -> None:
    members = members_up()
    members.mark_down(2, now=0.0)
    failover = Failover(members, key=None)
    tried = []
    for _ in range(2):
        tried.append(failover.next_member())
        assert failover.failed(ConnectionLost("gone"))
    assert sorted(tried) == [0, 1]
    with pytest.raises(ConnectionLost):
        failover.next_member()


def test_failover_ends_on_a_result_or_a_refusal() -> None:
    failover = Failover(members_up(), key="k")
    failover.next_member()
    assert not failover.failed(42)
    assert not failover.failed(NoSuchQueue("refused: the caller raises it"))
    assert failover.failed(ProtocolError("framing lost")) and failover.failed(OSError("reset"))


# --- reads ---------------------------------------------------------------------------------


def test_a_read_pass_starts_one_further_round_the_group_each_time() -> None:
    assert [ReadPass("q", 1, [0, 1, 2], start).order for start in (0, 1, 2, 3)] == [
        [0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2],
    ]  # fmt: skip


def test_a_read_pass_gathers_until_enough_skipping_members_down() -> None:
    read = ReadPass("q", 3, [0, 1, 2], 0)
    assert read.wanted() == 3
    assert not read.take([Message(1, b"a")])
    assert read.wanted() == 2
    assert not read.take(ConnectionLost("member down"))
    assert read.take([Message(2, b"b"), Message(3, b"c")])
    assert [m.id for m in read.found] == [1, 2, 3]


def test_a_read_pass_fails_only_if_no_member_has_the_queue() -> None:
    read = ReadPass("q", 1, [0, 1], 0)
    read.take(NoSuchQueue("not here"))
    read.take([])
    assert read.must_wait(wait=0.1) and not read.must_wait(wait=0)
    missing = ReadPass("q", 1, [0, 1], 0)
    missing.take(NoSuchQueue("not here"))
    missing.take(NoSuchQueue("nor here"))
    with pytest.raises(NoSuchQueue):
        missing.must_wait(wait=0.1)
    with pytest.raises(InvalidQueueName):
        ReadPass("", 1, [0], 0).take(InvalidQueueName("bad name"))


def test_a_waiting_read_keeps_max_messages_and_releases_the_rest() -> None:
    read = WaitingRead(max_messages=2)
    read.take([])
    assert not read.over
    read.take([Message(1, b"a")])
    read.take([Message(2, b"b"), Message(3, b"c")])
    assert read.over
    assert [m.id for m in read.kept()] == [1, 2] and [m.id for m in read.extras()] == [3]


# --- confirms ------------------------------------------------------------------------------


def test_confirms_are_split_by_member_and_results_keep_the_ids_order() -> None:
    members = members_up([1, 2, 0])
    members.position_of_index.pop(2)  # a member this client never learned
    ids = [id_from(0, 1), id_from(2, 1), id_from(1, 1), id_from(0, 2)]
    batch = ConfirmBatch(members, ids)
    assert batch.calls == [(2, [id_from(0, 1), id_from(0, 2)]), (0, [id_from(1, 1)])]
    batch.take([id_from(0, 1), id_from(0, 2)], [None, NoSuchMessage("late")])
    batch.take([id_from(1, 1)], [None])
    results = batch.results()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], NoSuchMessage) and isinstance(results[3], NoSuchMessage)


# --- answers from every member -------------------------------------------------------------


def test_fan_out_drops_members_down_and_keeps_refusals_as_values() -> None:
    refusal = NoSuchQueue("not here")
    assert fan_out_answers([1, ConnectionLost("down"), refusal, OSError("reset")]) == [1, refusal]
    with pytest.raises(ConnectionLost):
        fan_out_answers([ConnectionLost("down"), ProtocolError("lost")])
    with pytest.raises(ZeroDivisionError):
        fan_out_answers([1, ZeroDivisionError()])


def test_each_fan_out_result() -> None:
    with pytest.raises(InvalidQueueName):
        create_result([None, InvalidQueueName("bad")])
    assert create_result([None, None]) is None
    assert delete_result([None, NoSuchQueue("gone already")]) is None
    with pytest.raises(NoSuchQueue):
        delete_result([NoSuchQueue("a"), NoSuchQueue("b")])
    assert purge_result([2, 3]) == 5
    with pytest.raises(NoSuchQueue):
        purge_result([2, NoSuchQueue("missing")])
    figures = dict.fromkeys(plans._SUMMED, 1)
    merged = stats_result([{**figures, "name": "q", "capacity": 9}, {**figures, "name": "q", "capacity": 9}])
    assert merged["ready"] == 2 and merged["capacity"] == 9 and merged["members"] == 2
    queues = list_queues_result([[{**figures, "name": "a"}], [{**figures, "name": "a"}, {**figures, "name": "b"}]])
    assert [(q["name"], q["members"], q["enqueued"]) for q in queues] == [("a", 2, 2), ("b", 1, 1)]

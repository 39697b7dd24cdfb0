"""Following a part to its new owner while an attempt at the member's old address is still under way
(`dbqueue.client.group.plans.Members`), called directly with time passed in.

A dead machine's address (or a port taken by something that never answers) does not refuse a connect: the
attempt lasts the client's whole timeout. A MEMBERS answer naming the part's new owner meanwhile must make the
member due at its new address at once, whatever its backoff, and the old attempt's outcome must then change
nothing. tests/postgres/test_group_follow.py drives the same case through both clients against real servers.
"""

from __future__ import annotations

from dbqueue import ConnectionLost
from dbqueue.client.group import plans
from dbqueue.client.group.plans import Members

ADDRESSES = ["h:1", "h:2", "h:3"]
MOVED = ["h:1", "standby:9", "h:3"]


def down_with_an_attempt_under_way() -> Members[str]:
    """Three members; member 1 went down, its backoff grown to the ceiling, and an attempt at h:2 runs."""
    members: Members[str] = Members(list(ADDRESSES))
    for position in range(3):
        assert members.connected(position, f"client {position}", position)
    members.backoff[1] = plans.MAX_RETRY_SECONDS
    members.mark_down(1, now=0.0)
    assert members.claim_retries(now=plans.MAX_RETRY_SECONDS) == [1]  # the attempt at h:2, under way
    return members


def test_a_part_moved_during_an_attempt_is_due_at_its_new_address_at_once() -> None:
    members = down_with_an_attempt_under_way()
    now = plans.MAX_RETRY_SECONDS + 2.0
    assert members.follow(MOVED, now=now) == [1]
    # Not after the attempt at h:2 ends (a whole connect timeout), nor after the backoff: now.
    assert members.claim_retries(now=now) == [1]
    assert members.backoff[1] == plans.RETRY_SECONDS


def test_the_old_attempts_failure_changes_nothing() -> None:
    members = down_with_an_attempt_under_way()
    now = plans.MAX_RETRY_SECONDS + 2.0
    members.follow(MOVED, now=now)
    assert members.claim_retries(now=now) == [1]  # the attempt at the standby, under way too
    members.connect_failed(1, ConnectionLost("timed out"), now + 8.0, "h:2")
    assert members.claim_retries(now=now + 8.0) == []  # still one attempt at the standby, not two
    assert members.backoff[1] == plans.RETRY_SECONDS
    assert members.connected(1, "client at the standby", 1, "standby:9")
    members.connect_failed(1, ConnectionLost("timed out"), now + 9.0, "h:2")  # a late one: the member stays up
    assert members.up() == [0, 1, 2] and members.client(1) == "client at the standby"


def test_the_old_attempts_success_is_refused_and_the_standby_taken() -> None:
    members = down_with_an_attempt_under_way()
    now = plans.MAX_RETRY_SECONDS + 2.0
    members.follow(MOVED, now=now)
    assert members.claim_retries(now=now) == [1]
    assert not members.connected(1, "client at h:2", 1, "h:2")  # the member has moved: its caller closes it
    assert members.clients[1] is None
    assert members.connected(1, "client at the standby", 1, "standby:9")
    assert not members.connected(1, "a second client at the standby", 1, "standby:9")  # one connection a member
    assert members.client(1) == "client at the standby"


def test_an_attempt_beaten_by_another_does_not_mark_the_member_down() -> None:
    members = down_with_an_attempt_under_way()
    assert members.connected(1, "client 1 again", 1, "h:2")
    members.connect_failed(1, ConnectionLost("refused"), plans.MAX_RETRY_SECONDS + 1.0, "h:2")
    assert members.up() == [0, 1, 2]

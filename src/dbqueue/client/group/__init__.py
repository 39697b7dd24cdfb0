"""Clients for a group of servers that share their queues: `GroupClient` and `AsyncGroupClient`.

Theory of operation
-------------------
A group is independent servers, each holding its own part of every queue
(NSQ's model): there is no coordination between members on the hot path. The
group client makes them look like one server:

* ``create`` / ``delete`` / ``purge`` / ``move`` reach every member that is
  up (the queue is remembered and created again on a member that comes
  back); with ``require_every_member=True`` they raise `MembersUnreached`
  when a member was down, so that a one-shot tool can say the group is
  left half-done;
* ``send`` picks a member round-robin, or by ``key`` so that related messages
  stay in order on one member; a member that is down, or that has no such
  queue (created or deleted while it was down), is skipped;
* ``read`` asks the members in turn without waiting; when none has a message
  and ``wait`` is set, it waits on *every* member at once and takes the
  first message; a message another member hands out meanwhile is released at
  once (abandoned reads release themselves: `ClientConnection.abandon`);
* ``confirm`` / ``touch`` / ``release`` go to the member that handed the
  message out: the top byte of its id (`MEMBER_SHIFT`, see `member_of`) is
  that member's index.

Members come from the addresses given, or from any one member's MEMBERS
answer. A member whose connection fails is marked down and retried after
`plans.RETRY_SECONDS` (doubling while it stays down), in the background (a
thread, or a task), so a member that hangs never stalls a call; meanwhile the
others carry on. FIFO holds within a member, best-effort across members;
delivery stays at least once.

On a PostgreSQL store a member's part can move: a standby takes over the part
of a member that died and serves it under the same index at its own address.
While a member is down the client asks a live one for MEMBERS (once a second
at most) and, when that member's part is served elsewhere, connects there and
creates its queues again (`plans.Members.follow`); the application does
nothing. Confirms, touches and releases of that part wait for it, up to the
client's timeout; one for a message in flight at the death is answered
`NoSuchMessage` or `Requeued`, never a false success.

Layout: `plans` makes every routing decision without I/O, once for both
clients; `sync` holds the blocking `GroupClient` and its `GroupPipeline`,
`aio` the `AsyncGroupClient`. Each is only its I/O loop around the plans.
"""

from .aio import AsyncGroupClient
from .plans import MEMBER_SHIFT, MembersUnreached, member_of
from .sync import GroupClient, GroupPipeline

__all__ = ["GroupClient", "GroupPipeline", "AsyncGroupClient", "MEMBER_SHIFT", "MembersUnreached", "member_of"]

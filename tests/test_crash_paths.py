"""Crash tests of the store's most complex paths: delays, delayed releases, dead-letter moves, purges.

`tests/test_durability.py` kills a durable server under plain sends, reads and confirms. This module
does the same to the paths that write more than "add" and "remove": a message sent with a delay (its
due time is stored), released with a delay (the due time of a stored row changes), handed out until
its deliveries run out and moved to a dead-letter queue (a removal and an addition under a new id,
in one commit, with delivery counts stored on the way), and a purge racing with sends and reads (the
store scans the queue's rows and keeps those in flight).

Each test runs `dbqueue serve --data-dir` as a child process (`server_process.ServerProcess`) and,
for each of several *lives*, starts client threads that pipeline against it, then kills the server
with SIGKILL at a random moment and starts it again on the same directory. Every client records what
it asked and when, and what it was *told* and when (`Book`); after a last life without a kill, which
settles or drains everything, the test checks the record against the semantics of README.md
(Guarantees, Durability):

* every send answered with an id is found: confirmed (answered Confirmed, or a confirm whose answer
  the kill cut off and that nothing contradicts), or still there at the end, or in the dead-letter
  queue, exactly where the semantics put it;
* no message answered Confirmed is delivered again, and no message a purge must have dropped;
* a message is delivered again only after a release, after its timeout, or after a kill while it
  was in flight (those are the "duplicates" of the figures);
* a delayed message (sent or released with a delay) is never delivered before its due time, across
  the restarts too. The due time is the server's, taken when it handles the request; the client
  knows a time before that (when it sent the request), and allows `EARLY_TOLERANCE` for the server's
  clock, which is its event loop's (uvloop's is cached once per loop iteration, to the millisecond).

Times are the wall clock (`time.time`), the clock of stored due times, read by every thread of the
test on one machine: "A happened before B" is concluded only from an answer received before a request
was sent, or from the order of requests on one connection, which the server handles in order.

Size: at the CI size each test takes well under 20 s (4 kills). For a longer soak, multiply the number
of kills (and so the load) by ``DBQUEUE_CRASH_SCALE``; ``DBQUEUE_CRASH_SEED`` repeats a run's random
choices (the seed is printed with the figures; the kill moments still race with the load)::

    DBQUEUE_CRASH_SCALE=25 .venv/bin/python -m pytest -q -s tests/test_crash_paths.py
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import threading
import time
import traceback
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbqueue import ConnectionLost, PipelinedClient
from dbqueue.errors import ErrorCode
from dbqueue.protocol import messages as msg
from server_process import ServerProcess

SCALE = int(os.environ.get("DBQUEUE_CRASH_SCALE", "1"))
KILLS = 4 * SCALE
LIFE_SECONDS = (0.6, 1.4)  # how long each life runs before its kill
EARLY_TOLERANCE = 0.02  # seconds: see the module's docstring
WAIT_MS = 20  # reads wait this long on an empty queue
PIPELINE = 16

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="signals and flock"),
    pytest.mark.timeout(60 * SCALE),
]

DONE, REQUEUED, GONE = "done", "requeued", "gone"  # what a confirm or a release was answered


# --- what the clients were told -------------------------------------------------------------


@dataclass(slots=True)
class Send:
    """One payload sent (alone or in a batch), and the answer if it came."""

    payload: bytes
    queue: str
    delay_ms: int
    life: int
    conn: int  # the connection (one per thread and life) and the request's place on it
    order: int
    asked: float  # wall clock before the request was written
    answered: float | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a consumer."""

    payload: bytes
    queue: str
    id: int
    deliveries: int
    life: int
    asked: float  # the read request was written
    got: float  # its answer was read


@dataclass(slots=True)
class Settle:
    """A confirm or a release of one delivered message, and the answer if it came."""

    payload: bytes
    queue: str
    id: int
    kind: str  # "confirm" or "release"
    delay_ms: int
    life: int
    asked: float
    answered: float | None = None
    outcome: str | None = None  # DONE, REQUEUED, GONE


@dataclass(slots=True)
class PurgeCall:
    queue: str
    life: int
    conn: int
    order: int
    asked: float
    answered: float | None = None
    count: int | None = None


@dataclass
class Book:
    """Everything every client of every life asked and was told; appended to from many threads."""

    sends: list[Send] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    settles: list[Settle] = field(default_factory=list)
    purges: list[PurgeCall] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)  # wall clock once each killed server was reaped
    problems: list[str] = field(default_factory=list)  # answers no client should get
    next_seq: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    order: Iterator[int] = field(default_factory=itertools.count)  # numbers requests in the order written

    def payloads(self, prefix: str, count: int) -> list[bytes]:
        """``count`` payloads never used before in this test, ``prefix-N``."""
        first = self.next_seq[prefix]
        self.next_seq[prefix] = first + count
        return [b"%s-%d" % (prefix.encode(), seq) for seq in range(first, first + count)]

    def acked(self) -> dict[bytes, Send]:
        return {send.payload: send for send in self.sends if send.id is not None}


@dataclass
class Story:
    """What happened to one payload, in order: deliveries by life, then by their count (which grows by one
    at each delivery within a life: a stalled thread may note the time it got one late), settles by time."""

    send: Send
    deliveries: list[Delivery] = field(default_factory=list)
    settles: list[Settle] = field(default_factory=list)

    def confirmed_at(self, queue: str | None = None) -> float | None:
        """When the first confirm (of a delivery from ``queue``) answered Confirmed came back, if one did."""
        done = [s.answered for s in self.confirms(queue) if s.outcome == DONE and s.answered is not None]
        return min(done, default=None)

    def settled(self, queue: str | None = None) -> bool:
        """Confirmed (from ``queue``): answered so, or a confirm whose answer the kill cut off and after
        which nothing was delivered."""
        if self.confirmed_at(queue) is not None:
            return True
        cut = [s.asked for s in self.confirms(queue) if s.outcome is None]
        return bool(cut) and all(d.got < min(cut) for d in self.deliveries)

    def confirms(self, queue: str | None = None) -> list[Settle]:
        return [s for s in self.settles if s.kind == "confirm" and queue in (None, s.queue)]

    def of(self, queue: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.queue == queue]


def stories_of(book: Book) -> dict[bytes, Story]:
    stories = {send.payload: Story(send) for send in book.sends}
    for delivery in sorted(book.deliveries, key=lambda d: (d.life, d.deliveries, d.got)):
        stories[delivery.payload].deliveries.append(delivery)
    for settle in sorted(book.settles, key=lambda s: s.asked):
        stories[settle.payload].settles.append(settle)
    return stories


# --- client threads, one life at a time -----------------------------------------------------


class Crew:
    """The client threads of one life of the server, each on its own `PipelinedClient`.

    A thread runs a loop that goes round while `running`. Once `end` has
    begun, a lost connection is what the kill does; before, it is a problem, as is any exception.
    """

    def __init__(self, server: ServerProcess, book: Book, life: int, rng: random.Random) -> None:
        self.server = server
        self.book = book
        self.life = life
        self.rng = rng
        self.stopping = threading.Event()
        self.until = time.monotonic() + 30.0  # a bound in case the end never comes
        self.threads: list[threading.Thread] = []
        self._conns = iter(range(life * 1000, (life + 1) * 1000))

    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.until

    def spawn(self, loop: Callable[..., None], *args: object) -> None:
        """Run ``loop(crew, client, rng, *args)`` on a thread of its own, with a connection of its own."""
        rng = random.Random(self.rng.random())
        thread = threading.Thread(target=self._run, args=(loop, rng, *args), daemon=True)
        self.threads.append(thread)
        thread.start()

    def connection(self) -> int:
        """A number for a new connection, unique in the test."""
        return next(self._conns)

    def _run(self, loop: Callable[..., None], rng: random.Random, *args: object) -> None:
        try:
            client = PipelinedClient.connect(self.server.address, timeout=10.0)
        except ConnectionLost as exc:
            if not self.stopping.is_set():
                self.book.problems.append(f"life {self.life}: cannot connect: {exc}")
            return
        try:
            loop(self, client, rng, *args)
        except ConnectionLost as exc:
            if not self.stopping.is_set():
                self.book.problems.append(f"life {self.life}: connection lost while the server was up: {exc}")
        except Exception:
            self.book.problems.append(f"life {self.life}: {traceback.format_exc()}")
        finally:
            client.close()

    def end(self, how: str | None) -> None:
        """Stop the server ``how`` ("sigkill"; None: leave it running and let the loops finish) and join."""
        self.stopping.set()
        if how is not None:
            self.server.stop(how)
            self.book.kills.append(time.time())
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a client thread hung"


def lives(server: ServerProcess, book: Book, rng: random.Random, spawn: Callable[[Crew], None]) -> Crew:
    """Run `KILLS` lives of the server, each killed at a random moment; start one more and return
    its crew for the caller to spawn the settling threads on."""
    for life in range(KILLS):
        if life:
            server.start()
        crew = Crew(server, book, life, rng)
        spawn(crew)
        time.sleep(rng.uniform(*LIFE_SECONDS))
        crew.end("sigkill")
    server.start()
    return Crew(server, book, KILLS, rng)


def wait_until_empty(server: ServerProcess, book: Book, queues: list[str], within: float) -> None:
    """Return once every queue named holds nothing ready, in flight or delayed; fail after ``within`` s."""
    deadline = time.monotonic() + within
    with server.client() as client:
        while True:
            left = {name: client.stats(name) for name in queues}
            counts = {name: (s["ready"], s["in_flight"], s["delayed"]) for name, s in left.items()}
            if all(c == (0, 0, 0) for c in counts.values()):
                return
            assert time.monotonic() < deadline, f"not settled after {within} s: {counts}; {book.problems[:5]}"
            time.sleep(0.05)


# --- the client loops: rounds of pipelined requests -----------------------------------------


def send_round(crew: Crew, client: PipelinedClient, conn: int, requests: list[msg.Request]) -> None:
    """Write ``requests`` (sends, batches, delayed sends, purges) in one write and read every answer."""
    book = crew.book
    asked = time.time()
    records: list[list[Send] | PurgeCall] = []
    for request in requests:
        order = next(book.order)
        if isinstance(request, msg.Purge):
            call = PurgeCall(request.name, crew.life, conn, order, asked)
            book.purges.append(call)
            records.append(call)
            continue
        if isinstance(request, msg.EnqueueBatch):
            items, delay = list(request.items), 0
        elif isinstance(request, msg.EnqueueDelayed):
            items, delay = [request.data], request.delay_ms
        else:
            assert isinstance(request, msg.Enqueue)
            items, delay = [request.data], 0
        sends = [Send(item, request.queue, delay, crew.life, conn, order, asked) for item in items]
        book.sends += sends
        records.append(sends)
    expected = dict(zip(client.send_many(requests), records))
    for _ in requests:
        ((request_id, response),) = client.receive(1)
        record = expected.pop(request_id)
        now = time.time()
        if isinstance(record, PurgeCall) and isinstance(response, msg.Purged):
            record.answered, record.count = now, response.count
        elif isinstance(record, list) and isinstance(response, msg.ObjectQueued) and len(record) == 1:
            record[0].answered, record[0].id = now, response.id
        elif isinstance(record, list) and isinstance(response, msg.ObjectsQueued) and len(record) == len(response.ids):
            for send, id_ in zip(record, response.ids):
                send.answered, send.id = now, id_
        else:
            book.problems.append(f"life {crew.life}: {record!r} answered {response!r}")


Decide = Callable[[msg.Message], tuple[str, int] | None]  # ("confirm", 0), ("release", delay_ms) or None: hold


def consume_round(
    crew: Crew, client: PipelinedClient, queue: str, *, batch: bool, timeout_ms: int, decide: Decide
) -> int:
    """Read up to `PIPELINE` messages of ``queue`` (one batch read, or pipelined reads), then confirm,
    release or hold each as ``decide`` says, confirms of a batch read in one batch. Return how many came."""
    book = crew.book
    if batch:
        requests: list[msg.Request] = [msg.ReadBatch(queue, PIPELINE, timeout_ms, WAIT_MS)]
    else:
        requests = [msg.Read(queue, timeout_ms, WAIT_MS)] * PIPELINE
    asked = time.time()
    client.send_many(requests)
    got: list[msg.Message] = []
    for _ in requests:
        ((_, response),) = client.receive(1)
        now = time.time()
        if isinstance(response, msg.Message):
            messages: tuple[msg.Message, ...] = (response,)
        elif isinstance(response, msg.Messages):
            messages = response.messages
        elif isinstance(response, msg.Empty):
            messages = ()
        else:
            book.problems.append(f"life {crew.life}: read of {queue} answered {response!r}")
            messages = ()
        for message in messages:
            book.deliveries.append(Delivery(message.data, queue, message.id, message.deliveries, crew.life, asked, now))
        got += messages
    settle(crew, client, queue, [(message, decide(message)) for message in got], batch)
    return len(got)


def settle(
    crew: Crew,
    client: PipelinedClient,
    queue: str,
    actions: list[tuple[msg.Message, tuple[str, int] | None]],
    batch: bool,
) -> None:
    book = crew.book
    asked = time.time()
    requests: list[msg.Request] = []
    settles: list[list[Settle]] = []
    confirms = [
        Settle(message.data, queue, message.id, "confirm", 0, crew.life, asked)
        for message, action in actions
        if action is not None and action[0] == "confirm"
    ]
    if batch and confirms:
        requests.append(msg.ConfirmBatch(tuple(s.id for s in confirms)))
        settles.append(confirms)
    else:
        requests += [msg.Confirm(s.id) for s in confirms]
        settles += [[s] for s in confirms]
    for message, action in actions:
        if action is not None and action[0] == "release":
            release = Settle(message.data, queue, message.id, "release", action[1], crew.life, asked)
            requests.append(msg.Release(message.id, action[1]))
            settles.append([release])
    if not requests:
        return
    for group in settles:
        book.settles += group
    expected = dict(zip(client.send_many(requests), settles))
    for _ in requests:
        ((request_id, response),) = client.receive(1)
        group = expected.pop(request_id)
        now = time.time()
        if isinstance(response, msg.ConfirmResults) and len(response.outcomes) == len(group):
            outcomes = [(DONE, REQUEUED, GONE)[outcome] for outcome in response.outcomes]
        elif isinstance(response, (msg.Confirmed, msg.Released)):
            outcomes = [DONE]
        elif isinstance(response, msg.Requeued):
            outcomes = [REQUEUED]
        elif isinstance(response, msg.Error) and response.code == ErrorCode.NO_SUCH_MESSAGE:
            outcomes = [GONE]
        else:
            book.problems.append(f"life {crew.life}: {group[0].kind} of {group[0].payload!r} answered {response!r}")
            continue
        for one, outcome in zip(group, outcomes):
            one.answered, one.outcome = now, outcome


# --- checks every test makes ----------------------------------------------------------------


@dataclass(frozen=True)
class QueueSpec:
    timeout: float | None  # seconds a consumer of the queue holds a message before it times out
    max_deliveries: int = 0


@dataclass
class Findings:
    """What the checks found: violations of the semantics, and figures."""

    kills: list[float]
    violations: list[str] = field(default_factory=list)
    duplicates: int = 0  # deliveries again, after a kill, of a message in flight at it
    timed_out: int = 0  # deliveries again after a timeout, within one life
    early_margin: float = float("inf")  # least time from a due time the client knew to a delivery
    timeout_margin: float = float("inf")  # least time from a read's timeout the client knew to a redelivery

    def flag(self, story: Story, text: str) -> None:
        self.violations.append(f"{story.send.payload!r} (sent in life {story.send.life}): {text}")

    def due(self, story: Story, delivery: Delivery, due: float, what: str) -> None:
        margin = delivery.got - due
        self.early_margin = min(self.early_margin, margin)
        if margin < -EARLY_TOLERANCE:
            self.flag(story, f"{what}: delivered in life {delivery.life} {-margin:.3f} s before its due time")


def check_common(book: Book, stories: dict[bytes, Story], queues: dict[str, QueueSpec]) -> Findings:
    """No client problem, one id per message; for each payload: nothing after an answered confirm, no
    delivery before a due time, no redelivery without a release, a timeout or a kill."""
    assert not book.problems, book.problems[:10]
    ids = [send.id for send in book.sends if send.id is not None]
    assert len(set(ids)) == len(ids), "two messages were given one id"
    findings = Findings(book.kills)
    for story in stories.values():
        confirmed = story.confirmed_at()
        if confirmed is not None:
            for delivery in story.deliveries:
                if delivery.asked > confirmed:
                    findings.flag(story, f"answered Confirmed, then delivered again in life {delivery.life}")
        check_due_times(story, queues, findings)
        for name, spec in queues.items():
            check_redeliveries(story, name, spec, findings)
    return findings


def released(story: Story, release: Settle) -> Delivery | None:
    """The delivery ``release`` gave back: the last of its id in its life before it."""
    before = [d for d in story.deliveries if d.id == release.id and d.life == release.life and d.got <= release.asked]
    return before[-1] if before else None


def after(story: Story, delivery: Delivery) -> list[Delivery]:
    """The deliveries from ``delivery``'s queue that came after it."""
    deliveries = story.of(delivery.queue)
    return deliveries[deliveries.index(delivery) + 1 :]


def in_time(release: Settle, delivery: Delivery, spec: QueueSpec) -> bool:
    """Whether the server surely handled ``release`` before ``delivery``'s timeout could requeue it
    (a later one may have found the message in another consumer's hands)."""
    assert release.answered is not None
    return spec.timeout is None or release.answered < delivery.asked + spec.timeout


def check_due_times(story: Story, queues: dict[str, QueueSpec], findings: Findings) -> None:
    send = story.send
    if send.delay_ms:
        for delivery in story.deliveries:
            findings.due(story, delivery, send.asked + send.delay_ms / 1000, f"sent with a {send.delay_ms} ms delay")
    for release in story.settles:
        if release.kind != "release" or release.outcome not in (DONE, None) or not release.delay_ms:
            continue
        given = released(story, release)
        if given is None:
            findings.flag(story, f"released id {release.id}, which no read of life {release.life} handed out")
            continue
        spec = queues[given.queue]
        if spec.max_deliveries and given.deliveries >= spec.max_deliveries:
            continue  # dead-lettered, not delayed
        if release.outcome == DONE:
            if not in_time(release, given, spec):
                continue  # maybe another consumer's by then
            later = after(story, given)
        elif spec.timeout is None:
            # Its answer cut off by the kill: a delivery later in its life shows that the server handled it.
            later = [delivery for delivery in after(story, given) if delivery.life == release.life]
        else:
            continue
        for delivery in later:
            findings.due(
                story, delivery, release.asked + release.delay_ms / 1000, f"released for {release.delay_ms} ms"
            )


def check_redeliveries(story: Story, queue: str, spec: QueueSpec, findings: Findings) -> None:
    """Each delivery from ``queue`` after the first follows a release, a timeout (within one life), or a
    kill (a duplicate: the message was in flight at the kill).

    The release may be one whose answer the kill cut off: a read reports no change and is answered at
    once, so it may hand out a message that a release gave back in memory before that release is committed
    and answered. A late release, of an earlier delivery, may have found the message in `before`'s
    consumer's hands: any release of the id that the server may have handled while `before` was out counts.
    """
    deliveries = story.of(queue)
    for before, then in zip(deliveries, deliveries[1:]):
        if any(
            s.kind == "release" and s.outcome in (DONE, None) and s.id == before.id and s.life == before.life
            and (s.answered is None or s.answered >= before.asked) and s.asked <= then.got
            for s in story.settles
        ):  # fmt: skip
            continue
        if spec.timeout is not None and then.got >= before.asked + spec.timeout - EARLY_TOLERANCE:
            if before.life == then.life:
                findings.timed_out += 1
                findings.timeout_margin = min(findings.timeout_margin, then.got - before.asked - spec.timeout)
                continue
            if before.asked + spec.timeout < findings.kills[before.life]:
                continue  # timed out before the kill
        if before.life == then.life:
            findings.flag(
                story,
                f"delivered twice from {queue} in life {then.life} without a release or a timeout: {before}, then"
                f" {then.got - before.asked:.3f} s after that read was asked, {then}; settles {story.settles}",
            )
        else:
            findings.duplicates += 1


def all_answers_done(book: Book) -> None:
    """Without timeouts, every confirm and release that was answered was done."""
    undone = [s for s in book.settles if s.outcome not in (None, DONE)]
    assert not undone, undone[:10]


def lost(stories: dict[bytes, Story]) -> list[bytes]:
    """Payloads answered with an id and neither confirmed nor delivered at the end."""
    return [payload for payload, story in stories.items() if story.send.id is not None and not story.settled()]


def report(name: str, seed: int, figures: dict[str, object]) -> None:
    print(f"\n{name} (seed {seed}, DBQUEUE_CRASH_SCALE={SCALE}): " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def across_a_kill(kills: list[float], told: float | None, due: float) -> bool:
    """Whether a due time the client was told of at ``told`` lay beyond a kill that came after."""
    return told is not None and any(told < kill < due for kill in kills)


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("DBQUEUE_CRASH_SEED") or random.randrange(1 << 30))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], ServerProcess]]:
    """``serve(sync)``: a server on a directory of its own; killed if still running, its log checked, after."""
    started: list[ServerProcess] = []

    def start(sync: str) -> ServerProcess:
        server = ServerProcess(tmp_path / "data", sync=sync)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()
        server.check_log()


# --- delays: sends with a delay, releases with a delay ----------------------------------------
#
# Producers send 3 of 4 messages with a delay of up to `SEND_DELAY_MS` (the rest without, some in
# batches, which the store keeps as packs); consumers release a third of what they read, at its first
# delivery of a life, with a delay of up to `RELEASE_DELAY_MS` (a due time set on a stored row,
# a pack's member included), and confirm the rest. No read times out here.

LATER = "later"
SEND_DELAY_MS = 2500
RELEASE_DELAY_MS = 1500
NO_TIMEOUT = 600_000


def produce_delayed(crew: Crew, client: PipelinedClient, rng: random.Random, batches: bool) -> None:
    conn = crew.connection()
    while crew.running():
        requests: list[msg.Request] = []
        for payload in crew.book.payloads(f"later{conn}", PIPELINE):
            if rng.random() < 0.25:
                requests.append(msg.Enqueue(LATER, payload))
            else:
                requests.append(msg.EnqueueDelayed(LATER, payload, rng.randint(1, SEND_DELAY_MS)))
        if batches:
            requests.append(msg.EnqueueBatch(LATER, tuple(crew.book.payloads(f"later{conn}", 8))))
        send_round(crew, client, conn, requests)
        time.sleep(0.02)


def consume_delayed(crew: Crew, client: PipelinedClient, rng: random.Random, batch: bool) -> None:
    def decide(message: msg.Message) -> tuple[str, int]:
        if message.deliveries == 1 and zlib.crc32(message.data) % 3 == 0:
            return ("release", rng.randint(1, RELEASE_DELAY_MS))
        return ("confirm", 0)

    while crew.running():
        consume_round(crew, client, LATER, batch=batch, timeout_ms=NO_TIMEOUT, decide=decide)


def test_delayed_sends_and_releases_survive_kill_9(serve: Callable[[str], ServerProcess], seed: int) -> None:
    rng = random.Random(seed)
    server = serve("os")
    with server.client() as client:
        client.create(LATER)
    book = Book()

    def spawn(crew: Crew) -> None:
        crew.spawn(produce_delayed, False)
        crew.spawn(produce_delayed, True)
        crew.spawn(consume_delayed, False)
        crew.spawn(consume_delayed, True)

    last = lives(server, book, rng, spawn)
    last.spawn(consume_delayed, False)
    last.spawn(consume_delayed, True)
    wait_until_empty(server, book, [LATER], within=(SEND_DELAY_MS + RELEASE_DELAY_MS) / 1000 + 10)
    last.end(None)
    server.terminate()

    stories = stories_of(book)
    findings = check_common(book, stories, {LATER: QueueSpec(None)})
    all_answers_done(book)
    missing = lost(stories)
    acked = book.acked()
    delayed = [send for send in acked.values() if send.delay_ms]
    releases = [s for s in book.settles if s.kind == "release" and s.outcome == DONE]
    report(
        "delays",
        seed,
        {
            "acknowledged sends": len(acked),
            "of them delayed": len(delayed),
            "delayed across a kill": sum(
                across_a_kill(book.kills, s.answered, s.asked + s.delay_ms / 1000) for s in delayed
            ),
            "delayed releases answered": len(releases),
            "across a kill": sum(across_a_kill(book.kills, s.answered, s.asked + s.delay_ms / 1000) for s in releases),
            "confirms answered": sum(s.kind == "confirm" and s.outcome == DONE for s in book.settles),
            "kills": len(book.kills),
            "duplicates": findings.duplicates,
            "least margin to a due time (s)": round(findings.early_margin, 4),
            "early": sum("before its due time" in v for v in findings.violations),
            "lost": len(missing),
        },
    )
    assert not findings.violations, "\n".join(findings.violations[:10])
    assert not missing, f"{len(missing)} acknowledged messages are gone, e.g. {missing[:5]}"
    assert len(delayed) and len(releases), "the load did no delayed work"


# --- dead letters: deliveries that run out ----------------------------------------------------
#
# `WORK` gives each message `MAX_DELIVERIES` deliveries, then moves it to `DEAD` with a new id. Each
# payload carries a policy (`POLICIES`, picked by its number): what its consumer does at its first,
# second and third delivery: confirm (c), release (r), release with a delay (d), or hold it until its
# timeout (t). A policy without a c ends in `DEAD`, by releases, timeouts or both; one with a c ends
# confirmed from `WORK`. A consumer of `DEAD` confirms what it reads. Delivery counts are stored when a
# message comes back (not when it is read), so a kill may undo the count of a delivery in flight, or
# of a timeout not yet committed, never that of a release that was answered.

WORK = "work"
DEAD = "dead"
MAX_DELIVERIES = 3
TIMEOUT_MS = 400
POLICIES = ["c", "rc", "tc", "dc", "rrr", "ttt", "dtd", "rdt"]


def policy_of(payload: bytes) -> str:
    return POLICIES[int(payload.rsplit(b"-", 1)[1]) % len(POLICIES)]


def produce_work(crew: Crew, client: PipelinedClient, rng: random.Random, batches: bool) -> None:
    conn = crew.connection()
    while crew.running():
        payloads = crew.book.payloads(f"work{conn}", PIPELINE)
        if batches:
            requests: list[msg.Request] = [
                msg.EnqueueBatch(WORK, tuple(payloads[:8])),
                msg.EnqueueBatch(WORK, tuple(payloads[8:])),
            ]
        else:
            requests = [msg.Enqueue(WORK, payload) for payload in payloads]
        send_round(crew, client, conn, requests)
        time.sleep(rng.uniform(0.03, 0.07))


def consume_work(crew: Crew, client: PipelinedClient, rng: random.Random, batch: bool) -> None:
    def decide(message: msg.Message) -> tuple[str, int] | None:
        policy = policy_of(message.data)
        action = policy[min(message.deliveries, len(policy)) - 1]
        if action == "c":
            return ("confirm", 0)
        if action == "r":
            return ("release", 0)
        if action == "d":
            return ("release", rng.randint(50, 300))
        return None  # t: held until it times out

    while crew.running():
        consume_round(crew, client, WORK, batch=batch, timeout_ms=TIMEOUT_MS, decide=decide)


def consume_dead(crew: Crew, client: PipelinedClient, rng: random.Random) -> None:
    while crew.running():
        if not consume_round(crew, client, DEAD, batch=True, timeout_ms=NO_TIMEOUT, decide=lambda _: ("confirm", 0)):
            time.sleep(0.02)


def check_counts(story: Story, findings: Findings) -> None:
    """`Message.deliveries` from `WORK`: within 1..`MAX_DELIVERIES`, one more at each delivery within a
    life, never more than one more across a kill, exactly one more after a release that was answered; a
    message whose last delivery was released is never handed out by `WORK` again; nor once `DEAD` gave it."""
    work = story.of(WORK)
    for delivery in work:
        if not 1 <= delivery.deliveries <= MAX_DELIVERIES:
            findings.flag(story, f"handed out by {WORK} with deliveries {delivery.deliveries}")
    for before, then in zip(work, work[1:]):
        if before.life == then.life and then.deliveries != before.deliveries + 1:
            findings.flag(story, f"deliveries {before.deliveries} then {then.deliveries} in life {then.life}")
        elif then.deliveries > before.deliveries + 1:
            findings.flag(story, f"deliveries {before.deliveries} then {then.deliveries} then a kill")
    spec = QueueSpec(TIMEOUT_MS / 1000, MAX_DELIVERIES)
    for release in story.settles:
        given = released(story, release) if release.kind == "release" and release.outcome == DONE else None
        if given is None or given.queue != WORK or not in_time(release, given, spec):
            continue
        later = after(story, given)
        if given.deliveries >= MAX_DELIVERIES and later:
            findings.flag(
                story, f"its last delivery was released, and {WORK} handed it out again in life {later[0].life}"
            )
        elif later and later[0].deliveries != given.deliveries + 1:
            findings.flag(
                story,
                f"released at deliveries {given.deliveries}, handed out next (life {later[0].life})"
                f" with deliveries {later[0].deliveries}",
            )
    dead = story.of(DEAD)
    if dead and any(d.asked > dead[0].got for d in work):
        findings.flag(story, f"handed out by {DEAD} in life {dead[0].life}, then by {WORK} again")


def check_place(story: Story, findings: Findings) -> str:
    """Where the payload ended: "confirmed" from `WORK` or "dead-lettered" (and confirmed from `DEAD`)."""
    policy = policy_of(story.send.payload)
    confirmed = story.settled(WORK)
    dead = bool(story.of(DEAD))
    # A confirm that came after the timeout is answered Requeued (or Confirmed, or NoSuchMessage, if the
    # message went to another consumer meanwhile): such a message may run out of deliveries after all.
    late = any(s.outcome in (REQUEUED, GONE) for s in story.confirms(WORK))
    if dead and story.confirmed_at(WORK) is not None:
        findings.flag(story, f"confirmed from {WORK} and dead-lettered too")
    if dead and not story.settled(DEAD):
        findings.flag(story, f"in {DEAD}, but never confirmed from it")
    if "c" not in policy and not dead:
        findings.flag(story, f"policy {policy}: never delivered by {DEAD}")
    if "c" in policy and not late and (dead or not confirmed):
        findings.flag(story, f"policy {policy}: {'dead-lettered' if dead else 'never confirmed'}")
    if "c" in policy and late and not (confirmed or dead):
        findings.flag(story, f"policy {policy}: neither confirmed nor dead-lettered")
    return "dead-lettered" if dead else "confirmed"


@pytest.mark.parametrize("sync", ["os", "disk"])
def test_dead_letter_moves_survive_kill_9(serve: Callable[[str], ServerProcess], seed: int, sync: str) -> None:
    rng = random.Random(seed)
    server = serve(sync)
    with server.client() as client:
        client.create(DEAD)
        client.create(WORK, max_deliveries=MAX_DELIVERIES, dead_letter_queue=DEAD)
    book = Book()

    def spawn(crew: Crew) -> None:
        crew.spawn(produce_work, False)
        crew.spawn(produce_work, True)
        crew.spawn(consume_work, False)
        crew.spawn(consume_work, False)
        crew.spawn(consume_work, True)
        crew.spawn(consume_dead)

    last = lives(server, book, rng, spawn)
    last.spawn(consume_work, False)
    last.spawn(consume_work, True)
    last.spawn(consume_dead)
    wait_until_empty(server, book, [WORK, DEAD], within=15)
    last.end(None)
    server.terminate()

    stories = stories_of(book)
    queues = {WORK: QueueSpec(TIMEOUT_MS / 1000, MAX_DELIVERIES), DEAD: QueueSpec(None)}
    findings = check_common(book, stories, queues)
    acked = {payload: story for payload, story in stories.items() if story.send.id is not None}
    places = {}
    for story in acked.values():
        check_counts(story, findings)
        places[story.send.payload] = check_place(story, findings)
    for story in stories.values():  # sent, not answered, stored all the same
        if story.send.id is None and story.deliveries:
            check_counts(story, findings)
    # A dead letter has a new id, unique like every other.
    reused = {d.id for d in book.deliveries if d.queue == DEAD} & {send.id for send in book.sends}
    findings.violations += [f"id {id_} given to a dead letter and to a sent message" for id_ in sorted(reused)]
    releases = [s for s in book.settles if s.kind == "release" and s.outcome == DONE]
    report(
        f"dead letters, --sync {sync}",
        seed,
        {
            "acknowledged sends": len(acked),
            "deliveries": len(book.deliveries),
            "releases answered": len(releases),
            "of them delayed": sum(bool(s.delay_ms) for s in releases),
            "timeouts": findings.timed_out,
            "least margin to a timeout (s)": round(findings.timeout_margin, 4),
            "confirmed from work": sum(p == "confirmed" for p in places.values()),
            "dead-lettered": sum(p == "dead-lettered" for p in places.values()),
            "late confirms": sum(s.outcome in (REQUEUED, GONE) for s in book.settles if s.kind == "confirm"),
            "kills": len(book.kills),
            "duplicates": findings.duplicates,
            "early": sum("before its due time" in v for v in findings.violations),
            "lost": len(lost(stories)),
        },
    )
    assert not findings.violations, "\n".join(findings.violations[:10])
    assert not lost(stories)


# --- purges racing with sends and reads -------------------------------------------------------
#
# Two producers send to `PURGED` (pipelined runs, and batches that become packs); a purger writes,
# at random moments, 4 sends, a purge and 4 more sends in one write; two consumers read, confirm half
# of what they read and hold the rest in flight to the end of the life (a purge keeps those). After
# the kills, a last life drains the queue. Whether a purge dropped a message is decided from what the
# clients saw: a purge Q surely came after a send P if P's answer came before Q was written (or P was
# before Q on Q's connection), and surely before P likewise; P was surely in flight at Q if a read of
# Q's life had handed it out before Q was written, and surely not if no read of Q's life was written
# before Q's answer came.

PURGED = "purged"


def produce_purged(crew: Crew, client: PipelinedClient, rng: random.Random, batches: bool) -> None:
    conn = crew.connection()
    while crew.running():
        payloads = crew.book.payloads(f"purged{conn}", PIPELINE)
        if batches:
            requests: list[msg.Request] = [
                msg.EnqueueBatch(PURGED, tuple(payloads[i : i + 4])) for i in range(0, 16, 4)
            ]
        else:
            requests = [msg.Enqueue(PURGED, payload) for payload in payloads]
        send_round(crew, client, conn, requests)
        time.sleep(rng.uniform(0.005, 0.03))


def purge_now_and_then(crew: Crew, client: PipelinedClient, rng: random.Random) -> None:
    conn = crew.connection()
    while crew.running():
        time.sleep(rng.uniform(0.05, 0.25))
        first, then = crew.book.payloads(f"purger{conn}", 4), crew.book.payloads(f"purger{conn}", 4)
        requests: list[msg.Request] = [msg.Enqueue(PURGED, payload) for payload in first]
        requests.append(msg.Purge(PURGED))
        requests += [msg.Enqueue(PURGED, payload) for payload in then]
        send_round(crew, client, conn, requests)


def consume_purged(crew: Crew, client: PipelinedClient, rng: random.Random, batch: bool, hold: bool) -> None:
    """Read, and confirm what is read; with ``hold``, keep half in flight and pause between rounds."""

    def decide(message: msg.Message) -> tuple[str, int] | None:
        return None if hold and zlib.crc32(message.data) % 2 else ("confirm", 0)

    while crew.running():
        if not consume_round(crew, client, PURGED, batch=batch, timeout_ms=NO_TIMEOUT, decide=decide):
            time.sleep(0.02)
        if hold:
            time.sleep(rng.uniform(0.02, 0.08))  # leave a backlog for the purges


def surely_after(first: Send | PurgeCall, then: Send | PurgeCall) -> bool:
    """Whether the server surely handled ``then`` after ``first``: in a later life, on one connection in
    the order written, or when ``first``'s answer came before ``then`` was written."""
    if first.life != then.life:
        return first.life < then.life
    if first.conn == then.conn:
        return first.order < then.order
    return first.answered is not None and first.answered < then.asked


@dataclass
class PurgeFate:
    """What the purges did to one acknowledged payload, from what the clients saw."""

    dropped_by: PurgeCall | None = None  # the first answered purge that surely dropped it
    counted: bool = False  # and it was surely still there for that purge to count
    spared: bool = True  # no purge, answered or not, can have dropped it
    held: bool = False  # in flight when an answered purge came (a purge keeps those)


def purge_fate(story: Story, purges: list[PurgeCall]) -> PurgeFate:
    fate = PurgeFate()
    send = story.send
    confirmed = story.confirmed_at()
    for purge in purges:  # in the order written
        if surely_after(purge, send):
            continue
        reads = [d for d in story.deliveries if d.life == purge.life]
        if confirmed is not None and confirmed < purge.asked:
            continue  # surely confirmed: nothing left to drop
        if any(d.got < purge.asked for d in reads):
            fate.held = fate.held or purge.answered is not None
            continue  # surely in flight: the purge leaves it alone
        answered = purge.answered
        # Surely not read in the purge's life by then: ready, or confirmed by a confirm whose answer was cut off.
        unread = answered is not None and not any(d.asked < answered for d in reads)
        if fate.dropped_by is None and unread and surely_after(send, purge):
            assert answered is not None
            fate.dropped_by = purge
            fate.counted = fate.spared and not any(s.asked < answered for s in story.confirms())
        fate.spared = False
    return fate


def test_purges_racing_with_sends_survive_kill_9(serve: Callable[[str], ServerProcess], seed: int) -> None:
    rng = random.Random(seed)
    server = serve("os")
    with server.client() as client:
        client.create(PURGED)
    book = Book()

    def spawn(crew: Crew) -> None:
        crew.spawn(produce_purged, False)
        crew.spawn(produce_purged, True)
        crew.spawn(purge_now_and_then)
        crew.spawn(consume_purged, False, True)
        crew.spawn(consume_purged, True, True)

    last = lives(server, book, rng, spawn)
    last.spawn(consume_purged, True, False)
    wait_until_empty(server, book, [PURGED], within=15)
    last.end(None)
    server.terminate()

    stories = stories_of(book)
    findings = check_common(book, stories, {PURGED: QueueSpec(None)})
    all_answers_done(book)
    purges = sorted(book.purges, key=lambda p: p.order)
    fates: dict[bytes, PurgeFate] = {}
    for payload, story in stories.items():
        if story.send.id is None:
            continue
        fate = fates[payload] = purge_fate(story, purges)
        if fate.dropped_by is not None:
            end = fate.dropped_by.answered
            assert end is not None
            if after := [d for d in story.deliveries if d.asked > end]:
                findings.flag(
                    story, f"dropped by a purge of life {fate.dropped_by.life}, delivered in life {after[0].life}"
                )
        elif fate.spared and not story.settled():
            findings.flag(story, "no purge can have dropped it, and it is gone")
    # A purge answers how many it dropped: at least those it surely found ready.
    for purge in purges:
        counted = sum(fate.dropped_by is purge and fate.counted for fate in fates.values())
        if purge.count is not None and counted > purge.count:
            findings.violations.append(
                f"a purge of life {purge.life} answered {purge.count}, {counted} were surely there"
            )
    answered = [p for p in purges if p.count is not None]
    report(
        "purges",
        seed,
        {
            "acknowledged sends": len(fates),
            "purges answered": len(answered),
            "messages they dropped": sum(p.count or 0 for p in answered),
            "surely dropped": sum(f.dropped_by is not None for f in fates.values()),
            "surely spared": sum(f.spared for f in fates.values()),
            "of them in flight at a purge": sum(f.spared and f.held for f in fates.values()),
            "confirms answered": sum(s.kind == "confirm" and s.outcome == DONE for s in book.settles),
            "kills": len(book.kills),
            "duplicates": findings.duplicates,
            "back after a purge": sum("dropped by a purge" in v for v in findings.violations),
            "lost": sum("it is gone" in v for v in findings.violations),
        },
    )
    assert not findings.violations, "\n".join(findings.violations[:10])

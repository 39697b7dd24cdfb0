"""A Jepsen-style ledger of what a queue acknowledged, and the producer and consumer threads that fill it.

Every send the server acknowledged is recorded with its id; every confirm it
acknowledged too; a confirm with no answer, or answered StoreUnavailable (a
commit whose connection broke during COMMIT may have committed), is
*indeterminate*: its message may be gone. `Ledger.check` then says, after the faults and a final
drain: acknowledged sends lost (neither confirmed nor drained), confirmed
messages delivered again, and duplicates (a message delivered more than once
without an acknowledged confirm in between: allowed for messages in flight at
a fault). `Load`'s clients are plain `Client`s that reconnect after any failure, to
``addresses()`` (called again on each reconnect, so a test can follow MEMBERS).
`GroupLoad`'s are `GroupClient`s, one per thread, that follow the group by
themselves: producers send through a `GroupPipeline`, consumers read batches and
confirm them through one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dbqueue import Client, DbQueueError, GroupClient
from dbqueue.errors import NoSuchMessage, RequestError, Requeued, StoreUnavailable

QUEUE = "ledger"
PIPELINE = 8  # sends a producer pipelines at a time


@dataclass
class Ledger:
    sent: dict[int, bytes] = field(default_factory=dict)  # id -> payload, acknowledged sends
    confirmed: set[int] = field(default_factory=set)  # acknowledged confirms
    # Confirms sent whose answer never came (the connection failed): each may or may not have taken effect.
    confirms_unanswered: set[int] = field(default_factory=set)
    deliveries: Counter[int] = field(default_factory=Counter)
    redelivered_after_confirm: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self, id_: int) -> None:
        with self.lock:
            self.deliveries[id_] += 1
            if id_ in self.confirmed:
                self.redelivered_after_confirm.append(id_)

    def check(self, drained: set[int]) -> dict[str, int]:
        gone = set(self.sent) - self.confirmed - drained
        lost = gone - self.confirms_unanswered
        return {
            "confirms_unanswered_and_gone": len(gone & self.confirms_unanswered),
            "acknowledged_sends": len(self.sent),
            "acknowledged_confirms": len(self.confirmed),
            "lost": len(lost),
            "confirmed_delivered_again": len(self.redelivered_after_confirm),
            "duplicates": sum(count - 1 for count in self.deliveries.values() if count > 1),
            # Sends with no answer, or answered StoreUnavailable, that were stored all the same.
            "unacknowledged_sends_delivered": len(set(self.deliveries) - set(self.sent)),
        }


class Load:
    """Producer and consumer threads against a server or a group, until `stop`: producers pipeline
    `PIPELINE` sends at a time; consumers read one message (2 s visibility timeout) and confirm it."""

    def __init__(
        self,
        ledger: Ledger,
        addresses: Callable[[], list[str]],
        producers: int = 2,
        consumers: int = 2,
        pause: float = 0.02,  # seconds between a producer's batches: consumers keep up, the drain stays short
    ):
        self.pause = pause
        self.ledger = ledger
        self.addresses = addresses
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._produce, args=(i,), daemon=True) for i in range(producers)]
        self.threads += [threading.Thread(target=self._consume, args=(i,), daemon=True) for i in range(consumers)]
        self._counter = 0
        self._counter_lock = threading.Lock()

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, turn: int) -> Client | None:
        addresses = self.addresses()
        if not addresses:
            return None
        address = addresses[turn % len(addresses)]
        try:
            return Client.connect(address, timeout=5.0)
        except DbQueueError as exc:
            self.ledger.errors[type(exc).__name__] += 1
            return None

    def _produce(self, index: int) -> None:
        turn = index
        client: Client | None = None
        while not self.stopping.is_set():
            if client is None:
                client = self._client(turn)
                turn += 1
                if client is None:
                    time.sleep(0.05)
                    continue
            with self._counter_lock:
                first = self._counter + 1
                self._counter += PIPELINE
            payloads = [b"p%d-%d" % (index, first + n) for n in range(PIPELINE)]
            try:
                with client.pipeline() as pipe:
                    for payload in payloads:
                        pipe.send(QUEUE, payload)
                    results = pipe.execute()
            except DbQueueError as exc:  # the connection failed: none of the batch is known to be stored
                self.ledger.errors[type(exc).__name__] += 1
                with contextlib.suppress(Exception):
                    client.close()
                client = None
                continue
            with self.ledger.lock:
                for payload, result in zip(payloads, results, strict=True):
                    if isinstance(result, int):
                        self.ledger.sent[result] = payload
                    else:
                        self.ledger.errors[type(result).__name__] += 1
            time.sleep(self.pause)
        if client is not None:
            client.close()

    def _consume(self, index: int) -> None:
        turn = index
        client: Client | None = None
        while not self.stopping.is_set():
            if client is None:
                client = self._client(turn)
                turn += 1
                if client is None:
                    time.sleep(0.05)
                    continue
            try:
                message = client.read(QUEUE, visibility_timeout=2.0, wait=0.2)
                if message is None:
                    continue
                self.ledger.delivered(message.id)
            except DbQueueError as exc:
                self.ledger.errors[type(exc).__name__] += 1
                if not isinstance(exc, RequestError):
                    with contextlib.suppress(Exception):
                        client.close()
                    client = None
                continue
            try:
                client.confirm(message.id)
            except DbQueueError as exc:
                self.ledger.errors[type(exc).__name__] += 1
                if not isinstance(exc, RequestError) or isinstance(exc, StoreUnavailable):
                    # No answer, or the store could not tell: a commit whose connection broke during COMMIT
                    # may have committed. Either way the confirm may or may not have taken effect.
                    with self.ledger.lock:
                        self.ledger.confirms_unanswered.add(message.id)
                if not isinstance(exc, RequestError):  # Requeued, StoreUnavailable...: the connection is fine
                    with contextlib.suppress(Exception):
                        client.close()
                    client = None
                continue
            with self.ledger.lock:
                self.ledger.confirmed.add(message.id)
        if client is not None:
            client.close()


class GroupLoad:
    """Producer and consumer threads, each with its own `GroupClient` on the group, until `stop`.

    Producers queue `PIPELINE` sends in a `GroupPipeline` and execute it: an
    id is an acknowledged send, an error is not (a `ConnectionLost` send may
    have been stored all the same). Consumers read up to `PIPELINE` messages
    (2 s visibility timeout) and confirm them in one `GroupPipeline`: None is an
    acknowledged confirm; `NoSuchMessage` or `Requeued` is a refusal (the
    message comes back); anything else (no answer, `StoreUnavailable`) is
    indeterminate. The application never reconnects: the group clients follow
    the members, and the parts taken over, by themselves.
    """

    def __init__(
        self, ledger: Ledger, seeds: list[str], producers: int = 3, consumers: int = 3, pause: float = 0.02
    ) -> None:
        self.ledger = ledger
        self.pause = pause
        self.stopping = threading.Event()
        self.clients = [GroupClient.connect(seeds, timeout=5.0) for _ in range(producers + consumers)]
        self.threads = [
            threading.Thread(target=self._produce, args=(i, self.clients[i]), daemon=True) for i in range(producers)
        ]
        self.threads += [
            threading.Thread(target=self._consume, args=(self.clients[producers + i],), daemon=True)
            for i in range(consumers)
        ]
        self._counter = 0
        self._counter_lock = threading.Lock()
        self.refused_confirms: Counter[str] = Counter()

    def start(self) -> GroupLoad:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        for client in self.clients:
            client.close()

    def _produce(self, index: int, group: GroupClient) -> None:
        while not self.stopping.is_set():
            with self._counter_lock:
                first = self._counter + 1
                self._counter += PIPELINE
            payloads = [b"g%d-%d" % (index, first + n) for n in range(PIPELINE)]
            try:
                with group.pipeline() as pipe:
                    for payload in payloads:
                        pipe.send(QUEUE, payload)
                    results = pipe.execute()
            except DbQueueError as exc:  # no member up to queue a send for
                self.ledger.errors[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            with self.ledger.lock:
                for payload, result in zip(payloads, results, strict=True):
                    if isinstance(result, int):
                        self.ledger.sent[result] = payload
                    else:
                        self.ledger.errors[type(result).__name__] += 1
            time.sleep(self.pause)

    def _consume(self, group: GroupClient) -> None:
        while not self.stopping.is_set():
            try:
                messages = group.read_batch(QUEUE, PIPELINE, visibility_timeout=2.0, wait=0.2)
            except DbQueueError as exc:
                self.ledger.errors[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            for message in messages:
                self.ledger.delivered(message.id)
            if not messages:
                continue
            try:
                with group.pipeline() as pipe:
                    for message in messages:
                        pipe.confirm(message.id)
                    results = pipe.execute()
            except DbQueueError as exc:  # a holder this client does not know: nothing was sent
                self.ledger.errors[type(exc).__name__] += 1
                continue
            with self.ledger.lock:
                for message, result in zip(messages, results, strict=True):
                    if result is None:
                        self.ledger.confirmed.add(message.id)
                    elif isinstance(result, (NoSuchMessage, Requeued)):
                        self.refused_confirms[type(result).__name__] += 1
                    else:  # no answer, or the store could not tell: it may have taken effect
                        self.ledger.errors[type(result).__name__] += 1
                        self.ledger.confirms_unanswered.add(message.id)


def drain(ledger: Ledger, addresses: list[str], quiet: float = 3.0) -> set[int]:
    """Read and confirm everything left on every address until none has had a message for ``quiet`` seconds
    (the visibility timeout of messages in flight at a fault passes meanwhile); return the ids read."""
    drained: set[int] = set()
    last = time.monotonic()
    clients = [Client.connect(address, timeout=5.0) for address in addresses]
    try:
        while time.monotonic() - last < quiet:
            got = False
            for client in clients:
                message = client.read(QUEUE, visibility_timeout=30.0)
                if message is not None:
                    got = True
                    ledger.delivered(message.id)
                    drained.add(message.id)
                    client.confirm(message.id)
            if got:
                last = time.monotonic()
            else:
                time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return drained

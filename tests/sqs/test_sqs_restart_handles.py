"""Receipt handles outlive a restart, and a queue that never times out natively gives SQS consumers 12 hours.

Handles: `dbqueue serve --data-dir DIR --http-port P` as a child process, boto3 over real HTTP. A message
received before a restart comes back after it (in flight at the stop), and the handle of that receive is
still the server's: its delete succeeds, as SQS's delete with a stale handle does, instead of
``ReceiptHandleIsInvalid`` (the secret was random per start). The secret is a file in the data
directory, made once, mode 0600; servers without a data directory keep one in the file
``DBQUEUE_SQS_RECEIPT_SECRET_FILE`` names (what a group's servers share).

Visibility: a queue made natively with ``visibility_timeout=NEVER`` is reported by GetQueueAttributes
with SQS's longest timeout (43200 s), and an SQS receive without a timeout of its own now gets that
deadline (it had none: a consumer that died held the message until the server stopped). Checked on the
broker's deadline, on a server in this process.
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import listener_kit
import pytest

from child_server import ChildServer, free_port, serve_refusal
from dbqueue import NEVER, Client
from dbqueue.server.http import RECEIPT_SECRET_NAME, RECEIPT_SECRET_VARIABLE


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Served:
    """`dbqueue serve` on fixed ports (native and HTTP), started again on the same flags by `restart`."""

    def __init__(self, log_dir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.http_port = free_port()
        self.port = free_port()
        self.flags = ("--http-port", str(self.http_port), *flags)
        self.env = env
        self.child = self._start()

    def _start(self) -> ChildServer:
        child = ChildServer(self.log_dir, *self.flags, env=self.env, port=self.port).start()
        _wait_for_port(self.http_port)
        return child

    def restart(self) -> None:
        self.child.stop()
        self.child = self._start()

    def sqs(self) -> Any:
        return listener_kit.client(f"http://127.0.0.1:{self.http_port}")


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def serve(*flags: str, env: dict[str, str] | None = None) -> Served:
        served = Served(tmp_path, *flags, env=env)
        started.append(served)
        return served

    yield serve
    for served in started:
        served.child.kill()


def _received_then_restarted(served: Served) -> tuple[str, str]:
    """Send one message, receive it (10 minutes' visibility), restart the server: (queue URL, the handle)."""
    sqs = served.sqs()
    url = sqs.create_queue(QueueName="kept")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="mid-task at the restart")
    (message,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=600)["Messages"]
    sqs.close()
    served.restart()
    return url, message["ReceiptHandle"]


def test_a_handle_from_before_a_restart_is_still_the_servers(serving: Callable[..., Served], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    served = serving("--data-dir", str(data_dir))
    url, handle = _received_then_restarted(served)
    sqs = served.sqs()
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)  # raised ReceiptHandleIsInvalid before
    # The message was in flight at the stop: it is back, and its new handle deletes it.
    (again,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2)["Messages"]
    assert again["Body"] == "mid-task at the restart"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []) == []
    # Made once, readable by its owner alone; a forged handle is still refused.
    secret = data_dir / RECEIPT_SECRET_NAME
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes().strip()) == 64
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handle[:-4] + ("AAAA" if handle[-4:] != "AAAA" else "BBBB"))
    sqs.close()


def test_servers_given_one_secret_file_accept_each_others_handles(
    serving: Callable[..., Served], tmp_path: Path
) -> None:
    secret = tmp_path / "shared-secret"
    env = {RECEIPT_SECRET_VARIABLE: str(secret)}
    served = serving(env=env)  # no data directory: the file alone keeps the secret
    url, handle = _received_then_restarted(served)
    other = serving(env=env)
    for server in (served, other):
        sqs = server.sqs()
        url = sqs.create_queue(QueueName="kept")["QueueUrl"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)  # stale there, but authentic: success
        sqs.close()
    stranger = serving()  # a random secret of its own
    sqs = stranger.sqs()
    url = sqs.create_queue(QueueName="kept")["QueueUrl"]
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    sqs.close()


def test_a_too_short_secret_file_stops_the_start(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tiny\n")
    code, output = serve_refusal("--http-port", str(free_port()), env={RECEIPT_SECRET_VARIABLE: str(short)})
    assert code != 0
    assert "Error: cannot use the SQS receipt-handle secret" in output and "shorter than 16 bytes" in output
    assert "Traceback" not in output


def test_a_queue_that_never_times_out_gives_sqs_receives_twelve_hours(server_factory: Callable[..., Any]) -> None:
    thread = server_factory()
    with Client.connect(thread.address) as client:
        client.create("forever", visibility_timeout=NEVER)
        client.send("forever", b"held by an SQS consumer that dies")
    listening = listener_kit.Listening.start(thread)
    sqs = listener_kit.client(listening.endpoint)
    try:
        url = sqs.get_queue_url(QueueName="forever")["QueueUrl"]
        reported = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
        assert reported == {"VisibilityTimeout": "43200"}
        (message,) = sqs.receive_message(QueueUrl=url)["Messages"]

        async def deadline_in() -> float | None:
            due = thread.server.broker.next_deadline()
            return None if due is None else due - thread.server.clock()

        left = listening.run(deadline_in())
        assert left is not None, "the message has no deadline: it would never come back"
        assert 43_190 < left <= 43_200
        # A receive naming its own timeout still has it.
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)
        left = listening.run(deadline_in())
        assert left is not None and 25 < left <= 30
    finally:
        sqs.close()
        listening.stop()

"""With --data-dir or --store postgresql://..., a queue's SQS attributes survive a restart: those
SetQueueAttributes changes on the broker queue itself (``RedrivePolicy``, ``VisibilityTimeout``:
`Broker.alter_queue`) and those the listener keeps in the queue's annotations (`Broker.annotate`: the other
attributes, tags, created and modified times).

A real server with a store (SQLite in a directory, or PostgreSQL on the throwaway cluster of
tests/postgres/pg_fixtures.py, skipped without PostgreSQL), its HTTP listener (`listener_kit`), boto3 over
real HTTP; each restart is a new server on the same store. Needs the SQS listener's use of the broker's
journaled settings (/work/notes/q5-sqs_api.patch): without it, SetQueueAttributes of a RedrivePolicy is
refused with a store and the other attributes are lost at a restart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import listener_kit
import pytest
from botocore.exceptions import ClientError

from dbqueue import Client

# The PostgreSQL fixtures live beside the PostgreSQL tests (pg_fixtures.py says why they are no conftest.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "postgres"))
import pg_fixtures

pg_cluster = pg_fixtures.pg_cluster
pg_url = pg_fixtures.pg_url

ARN = "arn:aws:sqs:us-east-1:000000000000:"
# What a queue reports that changes by itself (the counts): left out when two reports are compared.
COUNTS = {"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"}


class Restarting:
    """A server with a store (``store``: its `Server` option, ``data_dir`` or ``store``), its listener and a boto3
    client; `restart` makes them anew on the same store."""

    def __init__(self, server_factory: Callable[..., Any], store: dict[str, Any]) -> None:
        self.server_factory = server_factory
        self.store = store
        self.thread: Any = None
        self.listening: listener_kit.Listening | None = None
        self.sqs: Any = None
        self.start()

    def start(self) -> None:
        self.thread = self.server_factory(**self.store)
        self.listening = listener_kit.Listening.start(self.thread)
        self.sqs = listener_kit.client(self.listening.endpoint)

    def stop(self) -> None:
        self.sqs.close()
        assert self.listening is not None
        self.listening.stop()
        self.thread.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def attributes(self, url: str) -> dict[str, str]:
        reported: dict[str, str] = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return {name: value for name, value in reported.items() if name not in COUNTS}


@pytest.fixture(params=["data_dir", "postgresql"])
def durable(request: pytest.FixtureRequest, server_factory: Callable[..., Any], tmp_path: Path) -> Any:
    store = {"data_dir": tmp_path} if request.param == "data_dir" else {"store": request.getfixturevalue("pg_url")}
    restarting = Restarting(server_factory, store)
    yield restarting
    restarting.stop()


def test_attributes_set_later_and_tags_survive_a_restart(durable: Restarting) -> None:
    sqs = durable.sqs
    dead = sqs.create_queue(QueueName="dead")["QueueUrl"]
    url = sqs.create_queue(
        QueueName="work", Attributes={"MaximumMessageSize": "2048", "DelaySeconds": "0"}, tags={"team": "a"}
    )["QueueUrl"]
    policy = f'{{"deadLetterTargetArn":"{ARN}dead","maxReceiveCount":2}}'
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "RedrivePolicy": policy,
            "VisibilityTimeout": "5",
            "DelaySeconds": "1",
            "ReceiveMessageWaitTimeSeconds": "2",
            "Policy": '{"Version":"2012-10-17","Statement":[]}',
        },
    )
    sqs.set_queue_attributes(QueueUrl=dead, Attributes={"RedriveAllowPolicy": '{"redrivePermission":"allowAll"}'})
    sqs.tag_queue(QueueUrl=url, Tags={"owner": "ops", "gone": "soon"})
    sqs.untag_queue(QueueUrl=url, TagKeys=["gone"])
    before = durable.attributes(url), durable.attributes(dead)
    assert before[0]["RedrivePolicy"] == policy and before[0]["VisibilityTimeout"] == "5"
    with Client.connect(durable.thread.address) as native:  # the broker queue's own settings
        stats = native.stats("work")
        assert (stats["max_deliveries"], stats["dead_letter_queue"], stats["visibility_timeout_ms"]) == (
            2,
            "dead",
            5000,
        )

    durable.restart()
    sqs = durable.sqs
    url = sqs.get_queue_url(QueueName="work")["QueueUrl"]
    dead = sqs.get_queue_url(QueueName="dead")["QueueUrl"]
    assert (durable.attributes(url), durable.attributes(dead)) == before  # the times too
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "a", "owner": "ops"}
    assert sqs.list_dead_letter_source_queues(QueueUrl=dead)["queueUrls"] == [url]
    with Client.connect(durable.thread.address) as native:
        stats = native.stats("work")
        assert (stats["max_deliveries"], stats["dead_letter_queue"], stats["visibility_timeout_ms"]) == (
            2,
            "dead",
            5000,
        )
    # What a worker does at each start: create its queue with the attributes it wants. They are the queue's.
    assert sqs.create_queue(QueueName="work", Attributes={"MaximumMessageSize": "2048"})["QueueUrl"] == url
    with pytest.raises(ClientError, match="QueueAlreadyExists"):
        sqs.create_queue(QueueName="work", Attributes={"MaximumMessageSize": "4096"})


def test_a_redrive_policy_set_on_a_durable_queue_dead_letters_after_a_restart(durable: Restarting) -> None:
    sqs = durable.sqs
    sqs.create_queue(QueueName="dead")
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    policy = f'{{"deadLetterTargetArn":"{ARN}dead","maxReceiveCount":2}}'
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    # Received once (visible again at once), then the server restarts: the count and the policy hold.
    assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]["Body"] == "poison"

    durable.restart()
    sqs = durable.sqs
    url = sqs.get_queue_url(QueueName="work")["QueueUrl"]
    dead = sqs.get_queue_url(QueueName="dead")["QueueUrl"]
    message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, AttributeNames=["All"])["Messages"][0]
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"
    assert "Messages" not in sqs.receive_message(QueueUrl=url)  # its deliveries spent: in the dead-letter queue
    assert sqs.receive_message(QueueUrl=dead, VisibilityTimeout=30)["Messages"][0]["Body"] == "poison"

    # Taken away again, and a loop refused: both hold across the next restart.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    loop = f'{{"deadLetterTargetArn":"{ARN}dead","maxReceiveCount":1}}'
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": loop})
    back = f'{{"deadLetterTargetArn":"{ARN}work","maxReceiveCount":1}}'
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        sqs.set_queue_attributes(QueueUrl=dead, Attributes={"RedrivePolicy": back})
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    durable.restart()
    sqs = durable.sqs
    url = sqs.get_queue_url(QueueName="work")["QueueUrl"]
    dead = sqs.get_queue_url(QueueName="dead")["QueueUrl"]
    assert "RedrivePolicy" not in durable.attributes(url)
    assert "RedrivePolicy" not in durable.attributes(dead)


def test_a_queue_deleted_and_made_again_starts_from_sqs_defaults(durable: Restarting) -> None:
    sqs = durable.sqs
    url = sqs.create_queue(QueueName="again", Attributes={"DelaySeconds": "7"}, tags={"a": "b"})["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    url = sqs.create_queue(QueueName="again")["QueueUrl"]
    durable.restart()
    url = durable.sqs.get_queue_url(QueueName="again")["QueueUrl"]
    assert durable.attributes(url)["DelaySeconds"] == "0"
    assert durable.sqs.list_queue_tags(QueueUrl=url).get("Tags", {}) == {}

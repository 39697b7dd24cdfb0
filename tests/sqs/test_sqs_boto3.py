"""boto3 (the AWS JSON protocol) against a real server's HTTP listener: every supported action, end to end.

Each test starts a `dbqueue.Server` with an `HttpListener` on its loop
(`listener_kit`), talks to it with boto3 over real HTTP, signed with SigV4,
and checks what botocore parsed, the MD5s as the SDKs check them
(`sqs_kit.sdk_check_send` / `sdk_check_receive`), and, where it matters, the
broker's own state through dbqueue's own client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import listener_kit
import pytest
import sqs_kit
from botocore.exceptions import ClientError

from dbqueue import Client
from dbqueue.server.mover import MOVE_STEP


@pytest.fixture
def listening(server_factory: Callable[..., Any]) -> Iterator[listener_kit.Listening]:
    listening = listener_kit.Listening.start(
        server_factory(), credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY}
    )
    yield listening
    listening.stop()


@pytest.fixture
def sqs(listening: listener_kit.Listening) -> Iterator[Any]:
    client = listener_kit.client(listening.endpoint)
    yield client
    client.close()


def error_of(call: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    error: dict[str, Any] = caught.value.response["Error"]
    error["status"] = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    error["class"] = type(caught.value).__name__
    return error


def test_send_receive_delete(sqs: Any, listening: listener_kit.Listening) -> None:
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    assert url == f"{listening.endpoint}/000000000000/jobs"
    sent = sqs.send_message(QueueUrl=url, MessageBody="resize image 42")
    sqs_kit.sdk_check_send("resize image 42", None, sent)
    received = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert [message["Body"] for message in received] == ["resize image 42"]
    message = received[0]
    sqs_kit.sdk_check_receive(message)
    assert message["MessageId"] == sent["MessageId"]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert message["Attributes"]["SenderId"] == listener_kit.ACCESS_KEY
    assert abs(int(message["Attributes"]["SentTimestamp"]) - time.time() * 1000) < 60_000
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    with Client.connect(listening.thread.address) as native:
        stats = native.stats("jobs")
    assert (stats["ready"], stats["in_flight"], stats["confirmed"]) == (0, 0, 1)


ATTRIBUTES = {
    "colour": {"DataType": "String", "StringValue": "blue"},
    "count": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    "trace.id": {"DataType": "String.uuid", "StringValue": "9f1c"},
}


def test_send_batch_with_attributes_and_receive_them(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="batch")["QueueUrl"]
    entries = [
        {"Id": "a", "MessageBody": "first", "MessageAttributes": ATTRIBUTES},
        {"Id": "b", "MessageBody": "second\r\nline", "MessageAttributes": {"colour": ATTRIBUTES["colour"]}},
        {"Id": "c", "MessageBody": "third ✓", "MessageSystemAttributes": {
            "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe1be46a994272793"}
        }},
    ]  # fmt: skip
    sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert sent.get("Failed", []) == []
    by_id = {entry["Id"]: entry for entry in sent["Successful"]}
    for entry in entries:
        sqs_kit.sdk_check_send(entry["MessageBody"], entry.get("MessageAttributes"), by_id[entry["Id"]])
    assert "MD5OfMessageSystemAttributes" in by_id["c"]
    received = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    )["Messages"]
    assert [message["Body"] for message in received] == ["first", "second\r\nline", "third ✓"]
    for message in received:
        sqs_kit.sdk_check_receive(message)
    assert received[0]["MessageAttributes"] == {
        name: {key: value for key, value in attribute.items()} for name, attribute in ATTRIBUTES.items()
    }
    assert received[2]["Attributes"]["AWSTraceHeader"] == "Root=1-5759e988-bd862e3fe1be46a994272793"
    assert [message["MessageId"] for message in received] == [by_id[key]["MessageId"] for key in "abc"]
    # A receive returns only the attributes it names, and its digest covers those alone.
    sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(received)
        ],
    )
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["trace.*", "count"])
    by_body = {message["Body"]: message for message in again["Messages"]}
    for message in by_body.values():
        sqs_kit.sdk_check_receive(message)
        assert "Attributes" not in message
    assert set(by_body["first"]["MessageAttributes"]) == {"trace.id", "count"}
    assert "MessageAttributes" not in by_body["second\r\nline"]


def test_long_poll_answers_when_a_message_arrives_and_holds_nothing_else_up(sqs: Any, listening: Any) -> None:
    url = sqs.create_queue(QueueName="poll")["QueueUrl"]
    other = sqs.create_queue(QueueName="other")["QueueUrl"]
    results: list[Any] = []
    began = time.monotonic()

    def poll() -> None:
        results.append(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10))
        results.append(time.monotonic() - began)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    # While the poll waits, other requests are answered at once.
    probe = listener_kit.client(listening.endpoint)
    probe_began = time.monotonic()
    probe.send_message(QueueUrl=other, MessageBody="x")
    assert probe.receive_message(QueueUrl=other)["Messages"][0]["Body"] == "x"
    assert time.monotonic() - probe_began < 2.0
    probe.send_message(QueueUrl=url, MessageBody="woken")
    poller.join(10)
    probe.close()
    assert results[0]["Messages"][0]["Body"] == "woken"
    assert 0.3 <= results[1] < 3.0


def test_long_poll_ends_empty_after_its_wait(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="quiet", Attributes={"ReceiveMessageWaitTimeSeconds": "1"})["QueueUrl"]
    began = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)  # the queue's wait: 1 s
    assert 0.9 <= time.monotonic() - began < 3.0
    began = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert time.monotonic() - began < 0.9


def test_visibility_timeout_brings_a_message_back(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="vt", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="again")
    first = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    second = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, AttributeNames=["All"])["Messages"][0]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["Attributes"]["ApproximateFirstReceiveTimestamp"] <= second["Attributes"]["SentTimestamp"] or True
    assert first["ReceiptHandle"] != second["ReceiptHandle"]
    # The first delivery's handle is stale: deleting with it succeeds and deletes nothing.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert counts["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
    error = error_of(
        sqs.change_message_visibility, QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=10
    )
    assert (error["class"], error["Code"]) == ("MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")


def test_change_visibility(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="change")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    handle = sqs.receive_message(QueueUrl=url, VisibilityTimeout=60)["Messages"][0]["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=1)
    began = time.monotonic()
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, AttributeNames=["ApproximateReceiveCount"])
    assert 0.5 < time.monotonic() - began < 4
    handle = again["Messages"][0]["ReceiptHandle"]
    assert again["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)  # visible now
    third = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert third["Attributes"]["ApproximateReceiveCount"] == "3"
    error = error_of(sqs.change_message_visibility, QueueUrl=url, ReceiptHandle="garbage", VisibilityTimeout=1)
    assert (error["class"], error["status"]) == ("ReceiptHandleIsInvalid", 400)
    result = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "good", "ReceiptHandle": third["ReceiptHandle"], "VisibilityTimeout": 30},
            {"Id": "stale", "ReceiptHandle": handle, "VisibilityTimeout": 30},
            {"Id": "bad", "ReceiptHandle": "garbage", "VisibilityTimeout": 30},
        ],
    )
    assert [entry["Id"] for entry in result["Successful"]] == ["good"]
    assert {entry["Id"]: entry["Code"] for entry in result["Failed"]} == {
        "stale": "AWS.SimpleQueueService.MessageNotInflight",
        "bad": "ReceiptHandleIsInvalid",
    }


def test_delete_batch_and_purge(sqs: Any, listening: Any) -> None:
    url = sqs.create_queue(QueueName="many")["QueueUrl"]
    with Client.connect(listening.thread.address) as native:
        native.send_batch("many", [f"m{i}".encode() for i in range(15)])  # kept as one block by the broker
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [message["Body"] for message in received] == [f"m{i}" for i in range(10)]
    result = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"e{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received[:8])]
        + [{"Id": "bad", "ReceiptHandle": "AAAA"}],
    )
    assert len(result["Successful"]) == 8
    assert [(entry["Id"], entry["Code"]) for entry in result["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "5",
        "2",
    )
    sqs.purge_queue(QueueUrl=url)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "2",
    )
    with Client.connect(listening.thread.address) as native:
        assert native.stats("many")["purged"] == 5


def test_dead_letter_queue_by_redrive_policy(sqs: Any) -> None:
    dead = sqs.create_queue(QueueName="dead")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == "arn:aws:sqs:us-east-1:000000000000:dead"
    policy = f'{{"deadLetterTargetArn":"{arn}","maxReceiveCount":3}}'
    url = sqs.create_queue(QueueName="work", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"] == {
        "RedrivePolicy": policy
    }
    sqs.send_message(QueueUrl=url, MessageBody="poison", MessageAttributes={"n": ATTRIBUTES["count"]})
    for receive in range(1, 4):
        message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, AttributeNames=["All"])["Messages"][0]
        assert message["Attributes"]["ApproximateReceiveCount"] == str(receive)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    moved = sqs.receive_message(QueueUrl=dead, AttributeNames=["All"], MessageAttributeNames=["All"])["Messages"][0]
    sqs_kit.sdk_check_receive(moved)
    assert moved["Body"] == "poison"
    assert moved["MessageAttributes"] == {"n": ATTRIBUTES["count"]}
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == "arn:aws:sqs:us-east-1:000000000000:work"
    assert sqs.list_dead_letter_source_queues(QueueUrl=dead)["queueUrls"] == [url]
    # Creating it again with the same policy (another region's ARN names the same queue) is the same queue.
    same = policy.replace("us-east-1", "eu-west-3")
    assert sqs.create_queue(QueueName="work", Attributes={"RedrivePolicy": same})["QueueUrl"] == url
    error = error_of(sqs.create_queue, QueueName="work", Attributes={"RedrivePolicy": policy.replace(":3", ":4")})
    assert (error["class"], error["Code"]) == ("QueueNameExists", "QueueAlreadyExists")
    missing = policy.replace(":dead", ":nowhere")
    error = error_of(sqs.create_queue, QueueName="other", Attributes={"RedrivePolicy": missing})
    assert error["Code"] == "InvalidParameterValue" and "does not exist" in error["Message"]


def test_set_redrive_policy_on_an_existing_queue(sqs: Any) -> None:
    dead = sqs.create_queue(QueueName="dlq", Attributes={"RedriveAllowPolicy": '{"redrivePermission":"denyAll"}'})
    url = sqs.create_queue(QueueName="src")["QueueUrl"]
    policy = '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":1}'
    error = error_of(sqs.set_queue_attributes, QueueUrl=url, Attributes={"RedrivePolicy": policy})
    assert error["Code"] == "InvalidParameterValue" and "RedriveAllowPolicy" in error["Message"]
    sqs.set_queue_attributes(
        QueueUrl=dead["QueueUrl"], Attributes={"RedriveAllowPolicy": '{"redrivePermission":"allowAll"}'}
    )
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy, "VisibilityTimeout": "5"})
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["RedrivePolicy"], attributes["VisibilityTimeout"]) == (policy, "5")
    sqs.send_message(QueueUrl=url, MessageBody="once")
    sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
    assert sqs.receive_message(QueueUrl=dead["QueueUrl"])["Messages"][0]["Body"] == "once"
    # A loop of dead-letter queues is refused; "" removes the policy.
    back = policy.replace(":dlq", ":src")
    error = error_of(sqs.set_queue_attributes, QueueUrl=dead["QueueUrl"], Attributes={"RedrivePolicy": back})
    assert error["Code"] == "InvalidParameterValue" and "loop" in error["Message"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    assert "RedrivePolicy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_queue_attributes_delays_and_sizes(sqs: Any) -> None:
    url = sqs.create_queue(
        QueueName="attrs", Attributes={"DelaySeconds": "1", "MaximumMessageSize": "1024", "Policy": '{"a":1}'}
    )["QueueUrl"]
    before = int(time.time())
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["DelaySeconds"] == "1"
    assert attributes["MaximumMessageSize"] == "1024"
    assert attributes["VisibilityTimeout"] == "30"
    assert attributes["MessageRetentionPeriod"] == "345600"
    assert attributes["Policy"] == '{"a":1}'
    assert attributes["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:attrs"
    assert abs(int(attributes["CreatedTimestamp"]) - before) <= 2
    sqs.send_message(QueueUrl=url, MessageBody="later")  # the queue's delay
    sqs.send_message(QueueUrl=url, MessageBody="now", DelaySeconds=0)
    counts = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert counts == {"ApproximateNumberOfMessages": "1", "ApproximateNumberOfMessagesDelayed": "1"}
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == ["now"]
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"][0]["Body"] == "later"
    error = error_of(sqs.send_message, QueueUrl=url, MessageBody="x" * 1025)
    assert (error["Code"], error["status"]) == ("InvalidParameterValue", 400)
    assert "1024" in error["Message"]
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "small", "MessageBody": "ok", "DelaySeconds": 0}, {"Id": "big", "MessageBody": "x" * 2000}],
    )
    assert [entry["Id"] for entry in result["Successful"]] == ["small"]
    assert [(entry["Id"], entry["Code"]) for entry in result["Failed"]] == [("big", "InvalidParameterValue")]
    error = error_of(sqs.set_queue_attributes, QueueUrl=url, Attributes={"ApproximateNumberOfMessages": "3"})
    assert error["Code"] == "InvalidAttributeName"
    error = error_of(sqs.set_queue_attributes, QueueUrl=url, Attributes={"VisibilityTimeout": "43201"})
    assert error["Code"] == "InvalidAttributeValue"


def test_queues_listed_found_tagged_and_deleted(sqs: Any, listening: Any) -> None:
    for name in ("alpha", "beta", "alpine", "gamma"):
        sqs.create_queue(QueueName=name)
    endpoint = listening.endpoint + "/000000000000/"
    assert sqs.list_queues(QueueNamePrefix="al")["QueueUrls"] == [endpoint + "alpha", endpoint + "alpine"]
    page = sqs.list_queues(MaxResults=2)
    assert page["QueueUrls"] == [endpoint + "alpha", endpoint + "alpine"]
    rest = sqs.list_queues(MaxResults=2, NextToken=page["NextToken"])
    assert rest["QueueUrls"] == [endpoint + "beta", endpoint + "gamma"] and "NextToken" not in rest
    assert sqs.get_queue_url(QueueName="beta")["QueueUrl"] == endpoint + "beta"
    error = error_of(sqs.get_queue_url, QueueName="nope")
    assert (error["class"], error["Code"], error["status"]) == (
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        400,
    )
    sqs.tag_queue(QueueUrl=endpoint + "beta", Tags={"team": "ops", "env": "test"})
    sqs.untag_queue(QueueUrl=endpoint + "beta", TagKeys=["env"])
    assert sqs.list_queue_tags(QueueUrl=endpoint + "beta")["Tags"] == {"team": "ops"}
    sqs.delete_queue(QueueUrl=endpoint + "beta")
    error = error_of(sqs.send_message, QueueUrl=endpoint + "beta", MessageBody="x")
    assert error["class"] == "QueueDoesNotExist"
    error = error_of(sqs.create_queue, QueueName="jobs.fifo")
    assert error["Code"] == "InvalidParameterValue" and "FIFO" in error["Message"]
    error = error_of(sqs.add_permission, QueueUrl=endpoint + "alpha", Label="l", AWSAccountIds=["1"], Actions=["*"])
    assert error["class"] == "UnsupportedOperation"
    error = error_of(sqs.start_message_move_task, SourceArn="arn:aws:sqs:us-east-1:000000000000:alpha")
    assert error["class"] == "UnsupportedOperation"


def test_native_messages_are_received_over_sqs(sqs: Any, listening: Any) -> None:
    url = sqs.create_queue(QueueName="mixed")["QueueUrl"]
    with Client.connect(listening.thread.address) as native:
        native.send("mixed", "plain text ✓".encode())
        native.send("mixed", b"\x00\xffbinary")
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    for message in received:
        sqs_kit.sdk_check_receive(message)
    assert received[0]["Body"] == "plain text ✓"
    assert "MessageAttributes" not in received[0]
    assert received[0]["Attributes"]["SenderId"] == "000000000000"
    assert received[1]["Body"] == "AP9iaW5hcnk="  # base64, and marked so whatever the receive asked for
    assert received[1]["MessageAttributes"] == {"DbQueue.Encoding": {"DataType": "String", "StringValue": "base64"}}


def test_sqs_messages_are_read_natively(sqs: Any, listening: Any) -> None:
    from dbqueue.sqs import open_envelope

    with Client.connect(listening.thread.address) as native:
        native.create("native")
        url = sqs.get_queue_url(QueueName="native")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="from SQS", MessageAttributes={"colour": ATTRIBUTES["colour"]})
        message = native.read("native", visibility_timeout=30.0)
        assert message is not None
        envelope = open_envelope(message.data)
        assert envelope is not None
        assert (envelope.body, envelope.queue, envelope.sender) == ("from SQS", "native", listener_kit.ACCESS_KEY)
        assert envelope.message_attributes["colour"].string_value == "blue"
        native.confirm(message.id)
        assert native.stats("native")["confirmed"] == 1


def test_in_flight_limit_is_over_limit(server_factory: Callable[..., Any]) -> None:
    listening = listener_kit.Listening.start(server_factory(max_in_flight=3))
    try:
        sqs = listener_kit.client(listening.endpoint)
        url = sqs.create_queue(QueueName="limited")["QueueUrl"]
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(5)])
        assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]) == 3
        error = error_of(sqs.receive_message, QueueUrl=url)
        assert (error["class"], error["status"]) == ("OverLimit", 403)
        sqs.close()
    finally:
        listening.stop()


def test_messages_in_flight_come_back_when_the_listener_stops(server_factory: Callable[..., Any]) -> None:
    thread = server_factory()
    listening = listener_kit.Listening.start(thread)
    sqs = listener_kit.client(listening.endpoint)
    url = sqs.create_queue(QueueName="back")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="held")
    assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=3600)["Messages"]
    sqs.close()
    listening.stop()
    with Client.connect(thread.address) as native:
        message = native.read("back", visibility_timeout=1.0)
    assert message is not None and message.deliveries == 2


def test_with_a_store_messages_and_their_attributes_survive_a_restart(
    server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    thread = server_factory(data_dir=tmp_path)
    listening = listener_kit.Listening.start(thread)
    sqs = listener_kit.client(listening.endpoint)
    sqs.create_queue(QueueName="kept-dead")
    policy = '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:kept-dead","maxReceiveCount":2}'
    url = sqs.create_queue(QueueName="kept", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="durable", MessageAttributes={"n": ATTRIBUTES["count"]})
    sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=1)
    # Setting a RedrivePolicy with a store is taken (journaled: tests/sqs/test_sqs_persisted_attributes.py).
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=3600)["Messages"][0]["Body"] == "durable"
    sqs.close()
    listening.stop()
    thread.stop()

    listening = listener_kit.Listening.start(server_factory(data_dir=tmp_path))
    sqs = listener_kit.client(listening.endpoint)
    url = sqs.get_queue_url(QueueName="kept")["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"] == {
        "RedrivePolicy": policy
    }
    received = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=3, AttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    message = received[0]
    sqs_kit.sdk_check_receive(message)
    assert (message["Body"], message["MessageId"]) == ("durable", sent["MessageId"])
    assert message["MessageAttributes"] == {"n": ATTRIBUTES["count"]}
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"  # counted through the restart (max_deliveries)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    if len(received) == 1:
        received = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=3)["Messages"]
    assert [m["Body"] for m in received if m["Body"] == "delayed"] == ["delayed"]
    sqs.close()
    listening.stop()


@pytest.mark.parametrize(
    ("access_key", "secret_key", "expected"),
    [
        (listener_kit.ACCESS_KEY, "not-the-secret", ("SignatureDoesNotMatch", 403)),
        ("AKIDUNKNOWN", listener_kit.SECRET_KEY, ("InvalidClientTokenId", 403)),
    ],
)
def test_wrong_credentials_are_refused(
    listening: listener_kit.Listening, access_key: str, secret_key: str, expected: tuple[str, int]
) -> None:
    wrong = listener_kit.client(listening.endpoint, access_key=access_key, secret_key=secret_key)
    error = error_of(wrong.list_queues)
    assert (error["Code"], error["status"]) == expected
    wrong.close()
    right = listener_kit.client(listening.endpoint)
    assert right.list_queues().get("QueueUrls", []) == []
    right.close()


def test_with_a_store_the_visibility_timeout_is_the_queues_own_and_create_queue_works_after_a_restart(
    server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    """VisibilityTimeout given to CreateQueue is the broker queue's default visibility timeout, which the store
    keeps; after a restart, a CreateQueue with the attributes the client always gives succeeds and adopts them."""
    thread = server_factory(data_dir=tmp_path)
    listening = listener_kit.Listening.start(thread)
    sqs = listener_kit.client(listening.endpoint)
    attributes = {"VisibilityTimeout": "1", "MaximumMessageSize": "2048", "DelaySeconds": "0"}
    url = sqs.create_queue(QueueName="vt", Attributes=attributes, tags={"team": "a"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="comes back after a second")
    with Client.connect(thread.address) as native:
        assert native.stats("vt")["visibility_timeout_ms"] == 1000
        native.create("made-natively", visibility_timeout=7.0)
    sqs.close()
    listening.stop()
    thread.stop()

    listening = listener_kit.Listening.start(server_factory(data_dir=tmp_path))
    sqs = listener_kit.client(listening.endpoint)
    url = sqs.get_queue_url(QueueName="vt")["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"] == {
        "VisibilityTimeout": "1"
    }
    native_url = sqs.get_queue_url(QueueName="made-natively")["QueueUrl"]
    assert (
        sqs.get_queue_attributes(QueueUrl=native_url, AttributeNames=["All"])["Attributes"]["VisibilityTimeout"] == "7"
    )
    first = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"][0]  # the queue's 1 s
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, AttributeNames=["All"])["Messages"][0]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    # What a worker does at each start: create its queue with its attributes. The store kept them all (the
    # visibility timeout as the queue's own, the others in its annotations): the same ones are the same queue.
    assert sqs.create_queue(QueueName="vt", Attributes=attributes, tags={"team": "a"})["QueueUrl"] == url
    reported = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (reported["VisibilityTimeout"], reported["MaximumMessageSize"]) == ("1", "2048")
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "a"}
    # From then on, other attributes are other attributes, as SQS says.
    error = error_of(sqs.create_queue, QueueName="vt", Attributes={**attributes, "MaximumMessageSize": "4096"})
    assert error["Code"] == "QueueAlreadyExists"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    sqs.close()
    listening.stop()


def test_start_message_move_task_returns_dead_letters_to_their_sources(sqs: Any, listening: Any) -> None:
    """StartMessageMoveTask: each dead letter back to the queue it came from (or to DestinationArn), in order;
    a task of at most a step's worth of messages is COMPLETED by the time it is listed."""
    sqs.create_queue(QueueName="dlq")
    dead_arn = "arn:aws:sqs:us-east-1:000000000000:dlq"
    policy = f'{{"deadLetterTargetArn":"{dead_arn}","maxReceiveCount":1}}'
    sources = {
        name: sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})["QueueUrl"] for name in "ab"
    }
    for name, url in sources.items():
        for number in range(3):
            sqs.send_message(QueueUrl=url, MessageBody=f"{name}{number}")
        for _ in range(3):  # received once, visible again at once: dead-lettered at the next step
            sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
        assert "Messages" not in sqs.receive_message(QueueUrl=url)
    with Client.connect(listening.thread.address) as native:
        native.create("native-dead")
        assert native.stats("dlq")["ready"] == 6

        handle = sqs.start_message_move_task(SourceArn=dead_arn)["TaskHandle"]
        tasks = sqs.list_message_move_tasks(SourceArn=dead_arn)["Results"]
        assert [(t["TaskHandle"], t["Status"], t["ApproximateNumberOfMessagesMoved"]) for t in tasks] == [
            (handle, "COMPLETED", 6)
        ]
        assert tasks[0]["ApproximateNumberOfMessagesToMove"] == 6 and "DestinationArn" not in tasks[0]
        for name, url in sources.items():
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
            assert sorted(message["Body"] for message in got) == [f"{name}{n}" for n in range(3)]
            for message in got:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert native.stats("dlq")["ready"] == 0

        # With DestinationArn, every message goes there.
        url = sources["a"]
        sqs.send_message(QueueUrl=url, MessageBody="again")
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)
        assert "Messages" not in sqs.receive_message(QueueUrl=url)
        other = sqs.create_queue(QueueName="elsewhere")["QueueUrl"]
        sqs.start_message_move_task(SourceArn=dead_arn, DestinationArn="arn:aws:sqs:us-east-1:000000000000:elsewhere")
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=other)["Messages"]] == ["again"]
        tasks = sqs.list_message_move_tasks(SourceArn=dead_arn, MaxResults=10)["Results"]
        assert [t["Status"] for t in tasks] == ["COMPLETED", "COMPLETED"]
        assert tasks[0]["DestinationArn"].endswith(":elsewhere")

        # A message with no source to go back to (sent to the dead-letter queue itself, natively) stops the task.
        native.send("dlq", b"from nowhere")
        handle = sqs.start_message_move_task(SourceArn=dead_arn)["TaskHandle"]
        task = sqs.list_message_move_tasks(SourceArn=dead_arn)["Results"][0]
        assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("FAILED", 0)
        assert "no source queue" in task["FailureReason"]
        error = error_of(sqs.cancel_message_move_task, TaskHandle=handle)
        assert error["class"] == "UnsupportedOperation"  # it is not running: nothing to cancel
        error = error_of(sqs.cancel_message_move_task, TaskHandle="nope")
        assert error["class"] == "ResourceNotFoundException"
        error = error_of(sqs.start_message_move_task, SourceArn="arn:aws:sqs:us-east-1:000000000000:native-dead")
        assert error["class"] == "UnsupportedOperation"  # not a dead-letter queue


def test_a_natively_sent_dead_letter_names_its_source_queue(sqs: Any, listening: Any) -> None:
    """DeadLetterQueueSourceArn from the broker's record of a dead letter's origin: a message without an envelope
    (sent through dbqueue's own protocol) that runs out of deliveries still says where it came from."""
    dead = sqs.create_queue(QueueName="native-dlq")["QueueUrl"]
    policy = '{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:native-dlq","maxReceiveCount":1}'
    url = sqs.create_queue(QueueName="native-src", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    with Client.connect(listening.thread.address) as native:
        native.send("native-src", b"sent natively")
    assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]["Body"] == "sent natively"
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    moved = sqs.receive_message(QueueUrl=dead, AttributeNames=["All"])["Messages"][0]
    assert moved["Body"] == "sent natively"
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == "arn:aws:sqs:us-east-1:000000000000:native-src"


def test_a_long_move_task_is_running_until_it_is_cancelled(sqs: Any, listening: Any) -> None:
    """A task of more than a step's worth (`server.mover.MOVE_STEP`) runs in the background, as in SQS: RUNNING,
    one at a time a queue, and cancelled keeping what it moved; the rest stay in the dead-letter queue."""
    dead_arn = "arn:aws:sqs:us-east-1:000000000000:dlq"
    sqs.create_queue(QueueName="dlq")
    policy = f'{{"deadLetterTargetArn":"{dead_arn}","maxReceiveCount":1}}'
    sqs.create_queue(QueueName="jobs", Attributes={"RedrivePolicy": policy})
    sqs.create_queue(QueueName="elsewhere")
    total = 250 * MOVE_STEP
    with Client.connect(listening.thread.address) as native:
        for start in range(0, total, 5_000):
            native.send_batch("dlq", [b"%d" % n for n in range(start, start + 5_000)])
        handle = sqs.start_message_move_task(
            SourceArn=dead_arn, DestinationArn="arn:aws:sqs:us-east-1:000000000000:elsewhere"
        )["TaskHandle"]
        task = sqs.list_message_move_tasks(SourceArn=dead_arn)["Results"][0]
        assert (task["TaskHandle"], task["Status"], task["ApproximateNumberOfMessagesToMove"]) == (
            handle,
            "RUNNING",
            total,
        )
        assert 0 < task["ApproximateNumberOfMessagesMoved"] < total
        assert error_of(sqs.start_message_move_task, SourceArn=dead_arn)["class"] == "UnsupportedOperation"
        moved = sqs.cancel_message_move_task(TaskHandle=handle)["ApproximateNumberOfMessagesMoved"]
        task = sqs.list_message_move_tasks(SourceArn=dead_arn)["Results"][0]
        assert (task["Status"], task["ApproximateNumberOfMessagesMoved"]) == ("CANCELLED", moved)
        assert error_of(sqs.cancel_message_move_task, TaskHandle=handle)["class"] == "UnsupportedOperation"
        time.sleep(0.2)  # a step after the cancel would show here
        assert (native.stats("elsewhere")["ready"], native.stats("dlq")["ready"]) == (moved, total - moved)
        assert 0 < moved < total
        first = native.read("elsewhere")
        assert first is not None and first.data == b"0"  # from the front, in order

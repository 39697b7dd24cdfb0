"""Messages sent with boto3 through the SQS API, read by dbqueue's own clients: `Message.attributes` and
`Message.message_body` (issue 19: the native protocol and clients read the attributes too).

A real server with its HTTP listener (`listener_kit`); boto3 sends over real
HTTP, signed; the sync `Client` and the `AsyncClient` read the same messages
over dbqueue's own protocol, on their own sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import listener_kit
import pytest

from dbqueue import AsyncClient, Client
from dbqueue.protocol.envelope import MessageAttributeValue, open_envelope
from dbqueue.sqs import MessageAttributeValue as SqsMessageAttributeValue

ATTRIBUTES = {
    "colour": {"DataType": "String", "StringValue": "blue ☂"},
    "count": {"DataType": "Number", "StringValue": "42.5"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    "trace.id": {"DataType": "String.uuid", "StringValue": "9f1c"},
    "size": {"DataType": "Number.int", "StringValue": "7"},
}
EXPECTED = {
    "colour": MessageAttributeValue("String", string_value="blue ☂"),
    "count": MessageAttributeValue("Number", string_value="42.5"),
    "blob": MessageAttributeValue("Binary", binary_value=b"\x00\x01\xff"),
    "trace.id": MessageAttributeValue("String.uuid", string_value="9f1c"),
    "size": MessageAttributeValue("Number.int", string_value="7"),
}


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


def send_three(sqs: Any, name: str) -> None:
    """One message with every kind of attribute, one without (the fast path's plain send), one of a batch."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="with attributes", MessageAttributes=ATTRIBUTES)
    sqs.send_message(QueueUrl=url, MessageBody="plain é")
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "a", "MessageBody": "batched", "MessageAttributes": {"n": ATTRIBUTES["size"]}}],
    )


def check_three(messages: list[Any]) -> None:
    first, second, third = messages
    assert first.message_body == b"with attributes"
    assert dict(first.attributes) == EXPECTED
    assert second.message_body == "plain é".encode()
    assert dict(second.attributes) == {}
    assert third.message_body == b"batched"
    assert dict(third.attributes) == {"n": EXPECTED["size"]}
    # `data` stays the payload as stored: the envelope, which `dbqueue.sqs` reads to the same values.
    envelope = open_envelope(first.data)
    assert envelope is not None and envelope.body == "with attributes"
    assert dict(envelope.message_attributes) == EXPECTED


def test_the_sync_client_reads_attributes_and_body(sqs: Any, listening: listener_kit.Listening) -> None:
    send_three(sqs, "native-sync")
    with Client.connect(listening.thread.address) as native:
        messages = [native.read("native-sync") for _ in range(3)]
        assert None not in messages
        check_three(messages)
        first = messages[0]
        assert first is not None
        with pytest.raises(TypeError):
            first.attributes["colour"] = MessageAttributeValue("String", string_value="red")  # type: ignore[index]
        for message in messages:
            assert message is not None
            native.confirm(message.id)
        assert native.read("native-sync") is None


def test_the_asyncio_client_reads_attributes_and_body(sqs: Any, listening: listener_kit.Listening) -> None:
    send_three(sqs, "native-async")

    async def read() -> list[Any]:
        async with await AsyncClient.connect(listening.thread.address) as native:
            messages = [await native.read("native-async") for _ in range(3)]
            for message in messages:
                assert message is not None
                await native.confirm(message.id)
            return messages

    check_three(asyncio.run(read()))


def test_a_message_sent_natively_has_no_attributes_and_its_data_as_body(listening: listener_kit.Listening) -> None:
    with Client.connect(listening.thread.address) as native:
        native.create("native-only")
        native.send("native-only", b"\xffSQS not an envelope")
        native.send("native-only", b"raw bytes")
        for expected in (b"\xffSQS not an envelope", b"raw bytes"):
            message = native.read("native-only")
            assert message is not None
            assert dict(message.attributes) == {}
            assert message.message_body == expected == message.data


def test_the_value_type_is_the_sqs_one() -> None:
    # Defined once, with the envelope's layout: what the SQS API decodes is what native clients read.
    assert SqsMessageAttributeValue is MessageAttributeValue

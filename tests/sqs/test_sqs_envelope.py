"""The envelope an SQS message is stored in: exact bytes, round trips, and what is not an envelope."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from dbqueue.sqs import ENCODING_ATTRIBUTE, Envelope, MessageAttributeValue, bare_body, open_envelope, seal
from dbqueue.sqs.envelope import MAGIC

TRACE = MessageAttributeValue("String", string_value="Root=1-abc")


def test_layout_byte_by_byte() -> None:
    envelope = Envelope(
        "hé",
        0x0102030405060708,
        "q",
        "AK",
        {
            "n": MessageAttributeValue("Number", string_value="7"),
            "b": MessageAttributeValue("Binary", binary_value=b"\0"),
        },
        {"AWSTraceHeader": TRACE},
    )
    assert seal(envelope) == (
        b"\xffSQS\x01" + bytes(range(1, 9))
        + b"\x00\x01q" + b"\x00\x02AK"
        + b"\x01" + b"\x00\x0eAWSTraceHeader" + b"\x00\x06String" + b"\x01" + b"\x00\x00\x00\x0aRoot=1-abc"
        + b"\x02"
        + b"\x00\x01n" + b"\x00\x06Number" + b"\x01" + b"\x00\x00\x00\x017"
        + b"\x00\x01b" + b"\x00\x06Binary" + b"\x02" + b"\x00\x00\x00\x01\x00"
        + "hé".encode()
    )  # fmt: skip
    assert open_envelope(seal(envelope)) == envelope


attribute_values = st.one_of(
    st.builds(MessageAttributeValue, st.sampled_from(["String", "Number.int"]), string_value=st.text(min_size=1)),
    st.builds(MessageAttributeValue, st.just("Binary"), binary_value=st.binary(min_size=1)),
)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@given(
    body=st.text(st.characters(codec="utf-8")),
    sent_ms=st.integers(0, 2**64 - 1),
    queue=names,
    sender=st.text(st.characters(codec="utf-8"), max_size=30),
    message_attributes=st.dictionaries(names, attribute_values, max_size=10),
    trace=st.booleans(),
)
def test_every_envelope_comes_back_as_it_was_sealed(
    body: str,
    sent_ms: int,
    queue: str,
    sender: str,
    message_attributes: dict[str, MessageAttributeValue],
    trace: bool,
) -> None:
    envelope = Envelope(body, sent_ms, queue, sender, message_attributes, {"AWSTraceHeader": TRACE} if trace else {})
    assert open_envelope(seal(envelope)) == envelope


@given(st.binary())
def test_any_payload_opens_to_an_envelope_or_none(payload: bytes) -> None:
    opened = open_envelope(MAGIC + b"\x01" + payload)
    assert opened is None or isinstance(opened, Envelope)
    assert open_envelope(payload) is None or payload.startswith(MAGIC)


def test_what_is_not_an_envelope() -> None:
    whole = seal(Envelope("body", 1, "q", "AK", {"a": TRACE}))
    assert open_envelope(b"plain text") is None
    assert open_envelope(b"") is None
    shorter = open_envelope(whole[:-2])  # a cut in the body leaves a shorter body
    assert shorter is not None and shorter.body == "bo"
    for cut in range(len(whole) - 4):  # a cut before the body: never an envelope
        assert open_envelope(whole[:cut]) is None, cut
    assert open_envelope(b"\xffSQS\x02" + whole[5:]) is None  # another version
    assert open_envelope(whole[:-4] + b"\xff\xfe\xfd\xfc") is None  # a body that is not UTF-8


def test_bare_payloads() -> None:
    assert bare_body("plain ✓\r\n".encode()) == ("plain ✓\r\n", {})
    for payload in (b"\x00binary", b"\xff\xfe", b"", b"\x1b[31m"):
        body, attributes = bare_body(payload)
        assert base64.b64decode(body) == payload
        assert attributes == {ENCODING_ATTRIBUTE: MessageAttributeValue("String", string_value="base64")}

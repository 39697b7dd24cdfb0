"""The MD5s SQS returns: bit-exact with values recorded from AWS, and with the SDKs' own check.

The recorded values come from LocalStack's snapshot tests that run against
real AWS (tests/aws/services/sqs/test_sqs.snapshot.json, "aws.validated"):
the attributes and body of each case, and the digests AWS returned for them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqs_kit import sdk_md5_of_attributes

from dbqueue.sqs import (
    MessageAttributeValue,
    attributes_size,
    md5_of_attributes,
    md5_of_body,
    select_attributes,
)


def text(value: str, data_type: str = "String") -> MessageAttributeValue:
    return MessageAttributeValue(data_type, string_value=value)


RECORDED_BY_AWS = [
    ({"General": text("Kenobi"), "Hello": text("There"), "Help.Me": text("Me")}, "4c360f3fdafd970e05fae2f149d997f5"),
    ({"General": text("Kenobi"), "Hello": text("There")}, "fca026605781cb4126a1e9044df24232"),
    ({"Hello": text("There")}, "a311262e065454b75da111d535b8dacd"),
    ({"Hello": text("There"), "Help.Me": text("Me")}, "83fee93c1bcd8b9a5a923ffacdc636c7"),
    ({"Foo": text("Bar")}, "ae7155c6026991b6d54b11589678bf9c"),
    (
        {
            "attr1": MessageAttributeValue(
                "Binary", binary_value=b"traceparent\x1e00-774062d6c37081a5a0b9b5b88e30627c-2d2482211f6489da-01"
            )
        },
        "8cbe4db156db8a94db8b801b7addb984",
    ),
]


@pytest.mark.parametrize(("attributes", "digest"), RECORDED_BY_AWS)
def test_attribute_digests_match_what_aws_returned(attributes: dict[str, MessageAttributeValue], digest: str) -> None:
    assert md5_of_attributes(attributes) == digest


@pytest.mark.parametrize(
    ("body", "digest"),
    [
        ("msg", "6e2baaf3b97dbeef01c0043275f9a0e7"),
        ("test", "098f6bcd4621d373cade4e832627b4f6"),
        ("message-body-1", "19c9e282d65f9733bc6b35d50062c7ee"),
        ("a", "0cc175b9c0f1b6a831c399e269772661"),
    ],
)
def test_body_digests_match_what_aws_returned(body: str, digest: str) -> None:
    assert md5_of_body(body) == digest


def as_boto(attributes: dict[str, MessageAttributeValue]) -> dict[str, dict[str, Any]]:
    return {
        name: {"DataType": value.data_type, "BinaryValue": value.binary_value}
        if value.binary_value is not None
        else {"DataType": value.data_type, "StringValue": value.string_value}
        for name, value in attributes.items()
    }


attribute_values = st.one_of(
    st.builds(text, st.text(min_size=1), st.sampled_from(["String", "Number", "String.custom", "Number.int"])),
    st.builds(
        lambda data, kind: MessageAttributeValue(kind, binary_value=data),
        st.binary(min_size=1),
        st.sampled_from(["Binary", "Binary.gif"]),
    ),
)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True), attribute_values, max_size=10))
def test_attribute_digests_agree_with_the_sdks_check(attributes: dict[str, MessageAttributeValue]) -> None:
    assert md5_of_attributes(attributes) == sdk_md5_of_attributes(as_boto(attributes))


@given(st.text())
def test_body_digests_agree_with_the_sdks_check(body: str) -> None:
    encoded = body.encode("utf-8", "surrogatepass")
    if body.encode("utf-8", "replace") != encoded:
        return
    assert md5_of_body(body) == hashlib.md5(encoded).hexdigest()


def test_a_digest_depends_on_names_types_values_and_kinds() -> None:
    base = md5_of_attributes({"a": text("1")})
    assert md5_of_attributes({"b": text("1")}) != base
    assert md5_of_attributes({"a": text("1", "Number")}) != base
    assert md5_of_attributes({"a": text("2")}) != base
    assert md5_of_attributes({"a": MessageAttributeValue("String", binary_value=b"1")}) != base


def test_size_counts_names_types_and_values_in_bytes() -> None:
    attributes = {"é": text("ab", "String"), "b": MessageAttributeValue("Binary", binary_value=b"\x00\x01\x02")}
    assert attributes_size(attributes) == (2 + 6 + 2) + (1 + 6 + 3)


def test_selection_by_name_prefix_and_all() -> None:
    attributes = {"a": text("1"), "bar.x": text("2"), "bar.y": text("3"), "barz": text("4")}
    assert select_attributes(attributes, ["All"]) == attributes
    assert select_attributes(attributes, [".*"]) == attributes
    assert select_attributes(attributes, []) == {}
    assert set(select_attributes(attributes, ["bar.*"])) == {"bar.x", "bar.y"}
    assert set(select_attributes(attributes, ["a", "missing", "barz"])) == {"a", "barz"}

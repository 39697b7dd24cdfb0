"""Receipt handles: they name one delivery, and a forged or altered one is refused."""

from __future__ import annotations

import base64
import hashlib
import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbqueue.sqs import ErrorCode, Receipt, ReceiptHandles, SqsError, message_id_of_text, message_id_text

SECRET = b"0123456789abcdef0123456789abcdef"
ALPHABET = string.ascii_letters + string.digits + "-_"


def refused(handles: ReceiptHandles, handle: str, queue: str | None = None) -> SqsError:
    with pytest.raises(SqsError) as caught:
        handles.open(handle, queue)
    assert caught.value.code is ErrorCode.RECEIPT_HANDLE_IS_INVALID
    assert caught.value.status == 400
    return caught.value


@given(
    queue=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=63),
    message_id=st.integers(0, 2**64 - 1),
    delivery=st.integers(0, 2**32 - 1),
)
def test_a_handle_opens_to_what_it_was_issued_for(queue: str, message_id: int, delivery: int) -> None:
    handles = ReceiptHandles(SECRET)
    handle = handles.issue(queue, message_id, delivery)
    assert set(handle) <= set(ALPHABET)
    assert handles.open(handle) == Receipt(queue, message_id, delivery)
    assert handles.open(handle, queue) == Receipt(queue, message_id, delivery)


def test_each_delivery_gets_its_own_handle() -> None:
    handles = ReceiptHandles(SECRET)
    assert handles.issue("jobs", 7, 1) != handles.issue("jobs", 7, 2)
    assert handles.issue("jobs", 7, 1) == handles.issue("jobs", 7, 1)


def test_every_single_character_change_is_refused() -> None:
    handles = ReceiptHandles(SECRET)
    handle = handles.issue("jobs", 123_456_789, 3)
    for position, character in enumerate(handle):
        for replacement in {ALPHABET[(ALPHABET.index(character) + step) % len(ALPHABET)] for step in (1, 2, 31)}:
            refused(handles, handle[:position] + replacement + handle[position + 1 :])


def test_truncated_extended_and_garbage_handles_are_refused() -> None:
    handles = ReceiptHandles(SECRET)
    handle = handles.issue("jobs", 1, 1)
    for cut in range(len(handle)):
        refused(handles, handle[:cut])
    for garbage in (
        handle + "A",
        handle + "AA",
        handle + "=",
        "=" + handle,
        " " + handle,
        handle.upper(),
        "é" * 40,
        "forged",
        "",
        "A" * 5000,
        handle.replace("-", "+").replace("_", "/") + "x",
    ):
        refused(handles, garbage)


def test_another_secret_or_another_queue_refuses_the_handle() -> None:
    handle = ReceiptHandles(SECRET).issue("jobs", 1, 1)
    refused(ReceiptHandles(b"another secret of 32 bytes......"), handle)
    refused(ReceiptHandles(SECRET), handle, queue="other")
    assert ReceiptHandles(SECRET).open(handle, queue="jobs").message_id == 1


def test_the_error_names_the_handle() -> None:
    error = refused(ReceiptHandles(SECRET), "forged")
    assert error.message == 'The input receipt handle "forged" is not a valid receipt handle.'


def test_bad_arguments_are_the_callers_errors() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ReceiptHandles(b"short")
    handles = ReceiptHandles(SECRET)
    for message_id, delivery in ((-1, 1), (2**64, 1), (1, -1), (1, 2**32)):
        with pytest.raises(ValueError):
            handles.issue("jobs", message_id, delivery)


@given(st.integers(0, 2**64 - 1))
def test_message_ids_are_uuid_shaped_and_read_back(message_id: int) -> None:
    text = message_id_text(message_id)
    assert [len(part) for part in text.split("-")] == [8, 4, 4, 4, 12]
    assert message_id_of_text(text) == message_id


def test_message_ids_that_are_not_ours_read_as_none() -> None:
    assert message_id_text(1) == "00000000-0000-0000-0000-000000000001"
    assert message_id_of_text("219f8380-5770-4cc2-8c3e-5c715e145f5e") is None
    assert message_id_of_text("00000000-0000-0000-0000-00000000000G") is None
    with pytest.raises(ValueError):
        message_id_text(2**64)


def test_version_1_handles_hmac_sha256_are_still_accepted() -> None:
    """Handles of the first layout (HMAC-SHA256) stay good under the same secret: a group upgraded server by server."""
    import base64
    import hashlib
    import hmac
    import struct

    secret = b"s" * 32
    signed = struct.pack(">BQI", 1, 42, 3) + b"jobs"
    tag = hmac.new(secret, signed, hashlib.sha256).digest()[:16]
    handle = base64.urlsafe_b64encode(signed + tag).rstrip(b"=").decode("ascii")
    assert ReceiptHandles(secret).open(handle, "jobs") == Receipt("jobs", 42, 3)
    with pytest.raises(SqsError):
        ReceiptHandles(b"t" * 32).open(handle, "jobs")
    issued = ReceiptHandles(secret).issue("jobs", 42, 3)
    assert base64.urlsafe_b64decode(issued + "=" * (-len(issued) % 4))[0] == 2  # new handles are version 2


def test_a_secret_longer_than_blake2b_keys_works() -> None:
    handles = ReceiptHandles(b"k" * 100)
    assert handles.open(handles.issue("q", 1, 1), "q") == Receipt("q", 1, 1)
    with pytest.raises(SqsError):
        ReceiptHandles(b"k" * 99 + b"j").open(handles.issue("q", 1, 1), "q")


def test_a_handle_is_its_layout_and_a_keyed_blake2b_in_url_safe_base64() -> None:
    # Written out again from the module's docstring: the handles issued do not depend on how the MAC is computed.
    for secret in (b"s" * 16, bytes(range(64)), b"long" * 40):
        key = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()
        handles = ReceiptHandles(secret)
        for queue, message_id, delivery in [("q", 0, 1), ("jobs-\u00e9", 2**64 - 1, 2**32 - 1), ("x" * 255, 12345, 7)]:
            signed = struct.pack(">BQI", 2, message_id, delivery) + queue.encode()
            tag = hashlib.blake2b(signed, key=key, digest_size=16).digest()
            expected = base64.urlsafe_b64encode(signed + tag).rstrip(b"=").decode()
            assert handles.issue(queue, message_id, delivery) == expected
            assert handles.open(expected, queue) == Receipt(queue, message_id, delivery)

"""SigV4 verification against requests signed by botocore's own signers (SigV4Auth, SigV4QueryAuth).

The verifier takes the time as an argument, so stale and future requests are
made by moving the verifier's clock, not by waiting.
"""

from __future__ import annotations

import time

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st
from sqs_kit import split_request

from dbqueue.sqs import ErrorCode, SignatureVerifier, SqsError

ENDPOINT = "http://localhost:9324"
KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessage"}
JSON_BODY = b'{"QueueUrl": "http://localhost:9324/000000000000/jobs", "MessageBody": "hello"}'
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
FORM_BODY = b"Action=SendMessage&Version=2012-11-05&MessageBody=hello+world&QueueUrl=http%3A%2F%2Flocalhost"

Parts = tuple[str, str, str, list[tuple[str, str]], bytes]
MISMATCH = ErrorCode.SIGNATURE_DOES_NOT_MATCH


def signed(
    method: str = "POST",
    url: str = ENDPOINT + "/",
    headers: dict[str, str] | None = None,
    body: bytes = JSON_BODY,
    *,
    key: str = KEY,
    secret: str = SECRET,
    token: str | None = None,
    region: str = "us-east-1",
    service: str = "sqs",
) -> Parts:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(JSON_HEADERS if headers is None else headers))
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(request)
    return split_request(request.prepare())


def presigned(url: str, expires: int = 60, secret: str = SECRET) -> Parts:
    request = AWSRequest(method="GET", url=url, headers={})
    SigV4QueryAuth(Credentials(KEY, secret), "sqs", "us-east-1", expires=expires).add_auth(request)
    return split_request(request.prepare())


def verify(parts: Parts, now: float | None = None, verifier: SignatureVerifier | None = None) -> str:
    method, path, query, headers, body = parts
    checker = verifier or SignatureVerifier({KEY: SECRET})
    return checker.verify(method, path, query, headers, body, time.time() if now is None else now)


def refusal(parts: Parts, now: float | None = None, verifier: SignatureVerifier | None = None) -> SqsError:
    with pytest.raises(SqsError) as caught:
        verify(parts, now, verifier)
    return caught.value


def with_header(parts: Parts, name: str, value: str) -> Parts:
    method, path, query, headers, body = parts
    kept = [(key, item) for key, item in headers if key.lower() != name.lower()]
    return method, path, query, [*kept, (name, value)], body


# --- requests that verify ---------------------------------------------------------------------------------------


def test_a_json_request_verifies_and_names_its_key() -> None:
    assert verify(signed()) == KEY


def test_a_query_form_post_verifies() -> None:
    assert verify(signed(headers=FORM_HEADERS, body=FORM_BODY)) == KEY


def test_a_request_to_a_queue_path_verifies_even_with_encoded_characters() -> None:
    assert verify(signed(url=ENDPOINT + "/000000000000/jobs", headers=FORM_HEADERS, body=FORM_BODY)) == KEY
    assert verify(signed(url=ENDPOINT + "/000000000000/a%20b%2Fc", headers=FORM_HEADERS, body=FORM_BODY)) == KEY
    assert verify(signed(url=ENDPOINT + "/000000000000/./x/../jobs", headers=FORM_HEADERS, body=FORM_BODY)) == KEY


@pytest.mark.parametrize(
    "query",
    [
        "Action=ListQueues&Version=2012-11-05",
        "Action=ListQueues&QueueNamePrefix=a%20b&Version=2012-11-05",
        "Action=ListQueues&QueueNamePrefix=%2F%7E%2A%E2%82%AC&Version=2012-11-05",
        "b=2&a=1&a=0&empty=&flag",
    ],
)
def test_a_query_get_verifies_whatever_its_parameters(query: str) -> None:
    assert verify(signed("GET", f"{ENDPOINT}/?{query}", headers={}, body=b"")) == KEY


def test_any_region_verifies_and_the_derived_key_is_reused() -> None:
    verifier = SignatureVerifier({KEY: SECRET})
    for region in ("us-east-1", "eu-west-3", "ap-south-1", "local"):
        assert verify(signed(region=region), verifier=verifier) == KEY
        assert verify(signed(region=region), verifier=verifier) == KEY


def test_a_session_token_is_signed_like_any_header() -> None:
    parts = signed(token="session-token")
    assert any(name == "X-Amz-Security-Token" for name, _ in parts[3])
    assert verify(parts) == KEY


def test_the_date_header_may_replace_x_amz_date() -> None:
    parts = signed(headers={**JSON_HEADERS, "Date": "placeholder, botocore writes the time"})
    assert not any(name.lower() == "x-amz-date" for name, _ in parts[3])
    assert verify(parts) == KEY


def test_a_declared_body_hash_is_checked_and_used() -> None:
    import hashlib

    digest = hashlib.sha256(JSON_BODY).hexdigest()
    assert verify(signed(headers={**JSON_HEADERS, "X-Amz-Content-SHA256": digest})) == KEY
    parts = signed(headers={**JSON_HEADERS, "X-Amz-Content-SHA256": digest})
    tampered = (*parts[:4], JSON_BODY.replace(b"hello", b"HELLO"))
    assert refusal(tampered).code is MISMATCH


def test_unsigned_payloads_are_refused_unless_allowed() -> None:
    parts = signed(headers={**JSON_HEADERS, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert refusal(parts).code is MISMATCH
    assert verify(parts, verifier=SignatureVerifier({KEY: SECRET}, allow_unsigned_payload=True)) == KEY


def test_headers_may_come_as_a_mapping_in_any_case_and_unsigned_ones_may_be_added() -> None:
    method, path, query, headers, body = signed()
    mapping = {name.upper(): value for name, value in headers}
    assert SignatureVerifier({KEY: SECRET}).verify(method, path, query, mapping, body, time.time()) == KEY
    assert verify(with_header(signed(), "X-Forwarded-For", "10.0.0.1")) == KEY


def test_a_presigned_url_verifies_until_it_expires() -> None:
    parts = presigned(ENDPOINT + "/000000000000/jobs?Action=ReceiveMessage&Version=2012-11-05", expires=60)
    assert "X-Amz-Signature=" in parts[2]
    assert verify(parts) == KEY
    assert verify(parts, time.time() + 50) == KEY
    error = refusal(parts, time.time() + 120)
    assert error.code is ErrorCode.REQUEST_EXPIRED
    tampered = (parts[0], parts[1], parts[2].replace("ReceiveMessage", "DeleteQueue"), parts[3], parts[4])
    assert refusal(tampered).code is MISMATCH
    assert refusal(presigned(ENDPOINT + "/?Action=ListQueues", secret="wrong")).code is MISMATCH


# --- requests that do not -------------------------------------------------------------------------------------------


def test_a_tampered_body_is_refused() -> None:
    parts = signed()
    error = refusal((*parts[:4], JSON_BODY.replace(b"hello", b"hellO")))
    assert (error.code, error.status, error.query_code) == (
        ErrorCode.SIGNATURE_DOES_NOT_MATCH,
        403,
        "SignatureDoesNotMatch",
    )
    parts = signed(headers=FORM_HEADERS, body=FORM_BODY)
    assert refusal((*parts[:4], FORM_BODY + b"&DelaySeconds=5")).code is MISMATCH


def test_a_tampered_signed_header_path_or_query_is_refused() -> None:
    assert refusal(with_header(signed(), "X-Amz-Target", "AmazonSQS.DeleteQueue")).code is MISMATCH
    method, path, query, headers, body = signed(url=ENDPOINT + "/000000000000/jobs")
    assert refusal((method, "/000000000000/other", query, headers, body)).code is MISMATCH
    assert refusal(("PUT", path, query, headers, body)).code is MISMATCH
    method, path, query, headers, body = signed("GET", ENDPOINT + "/?Action=ListQueues", headers={}, body=b"")
    assert refusal((method, path, "Action=DeleteQueue", headers, body)).code is MISMATCH
    assert refusal(with_header(signed(), "Host", "evil.example:9324")).code is MISMATCH


def test_a_signed_header_that_is_missing_is_refused() -> None:
    method, path, query, headers, body = signed()
    kept = [(name, value) for name, value in headers if name.lower() != "x-amz-target"]
    assert refusal((method, path, query, kept, body)).code is MISMATCH


def test_the_wrong_secret_is_refused_and_an_unknown_key_is_named_so() -> None:
    assert refusal(signed(secret="not-the-secret")).code is MISMATCH
    error = refusal(signed(key="AKIDUNKNOWN"))
    assert (error.code, error.status, error.message) == (
        ErrorCode.INVALID_CLIENT_TOKEN_ID,
        403,
        "The security token included in the request is invalid.",
    )


def test_a_secret_changed_in_the_table_takes_effect_at_once() -> None:
    table = {KEY: SECRET}
    verifier = SignatureVerifier(table)
    assert verify(signed(), verifier=verifier) == KEY
    table[KEY] = "rotated"
    assert refusal(signed(), verifier=verifier).code is MISMATCH
    assert verify(signed(secret="rotated"), verifier=verifier) == KEY


def test_the_clock_skew_window_is_fifteen_minutes_either_way() -> None:
    parts = signed()
    now = time.time()
    assert verify(parts, now + 14 * 60) == KEY
    assert verify(parts, now - 14 * 60) == KEY
    stale = refusal(parts, now + 16 * 60)
    assert (stale.code, stale.status) == (ErrorCode.REQUEST_EXPIRED, 400)
    assert stale.message.startswith("Signature expired: ")
    future = refusal(parts, now - 16 * 60)
    assert future.code is ErrorCode.REQUEST_EXPIRED
    assert future.message.startswith("Signature not yet current: ")


def test_the_scope_must_name_sqs_and_its_date_the_request_date() -> None:
    error = refusal(signed(service="sns"))
    assert (error.code, error.message) == (
        ErrorCode.SIGNATURE_DOES_NOT_MATCH,
        "Credential should be scoped to correct service: 'sqs'.",
    )
    method, path, query, headers, body = signed()
    forged = [
        (name, value.replace("/aws4_request", "/aws5_request") if name == "Authorization" else value)
        for name, value in headers
    ]
    assert refusal((method, path, query, forged, body)).code is MISMATCH
    shifted = with_header(signed(), "X-Amz-Date", "20200101T000000Z")
    assert refusal(shifted).code is MISMATCH


def test_no_signature_at_all_is_a_missing_token() -> None:
    error = refusal(("POST", "/", "", [("Host", "localhost:9324")], JSON_BODY))
    assert (error.code, error.status, error.query_code) == (
        ErrorCode.MISSING_AUTHENTICATION_TOKEN,
        403,
        "MissingAuthenticationToken",
    )


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/sqs/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256",
        "AWS4-ECDSA-P256-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00",
        "AWS AKIDEXAMPLE:c2lnbmF0dXJl",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/sqs/aws4_request, SignedHeaders=x-amz-date;host,"
        " Signature=00",
    ],
)
def test_a_malformed_authorization_is_an_incomplete_signature(authorization: str) -> None:
    parts = with_header(signed(), "Authorization", authorization)
    error = refusal(parts)
    assert (error.code, error.status) == (ErrorCode.INCOMPLETE_SIGNATURE, 400)


def test_host_must_be_signed() -> None:
    method, path, query, headers, body = signed()
    fields = dict(headers)
    authorization = fields["Authorization"].replace("SignedHeaders=content-type;host;", "SignedHeaders=content-type;")
    error = refusal(with_header((method, path, query, headers, body), "Authorization", authorization))
    assert error.code is ErrorCode.INCOMPLETE_SIGNATURE


@pytest.mark.parametrize("signature", ["F" * 64, "é" * 64, "0" * 63, ""])
def test_a_signature_that_is_not_lower_hex_is_refused_not_a_crash(signature: str) -> None:
    method, path, query, headers, body = signed()
    authorization = dict(headers)["Authorization"]
    forged = authorization[: authorization.index("Signature=") + len("Signature=")] + signature
    assert refusal(with_header((method, path, query, headers, body), "Authorization", forged)).code in (
        ErrorCode.SIGNATURE_DOES_NOT_MATCH,
        ErrorCode.INCOMPLETE_SIGNATURE,
    )


def test_an_invalid_date_is_refused() -> None:
    for date in ("20241301T000000Z", "2024-01-01T00:00:00Z", "yesterday"):
        parts = with_header(signed(), "X-Amz-Date", date)
        assert refusal(parts).code in (ErrorCode.INCOMPLETE_SIGNATURE, ErrorCode.SIGNATURE_DOES_NOT_MATCH)


@given(st.text(alphabet="/.a%~- é_", max_size=12))
def test_the_plain_path_shortcut_changes_no_canonical_path(tail: str) -> None:
    """`_canonical_path` returns plain paths as they are; every path must come out as the full rule makes it."""
    from urllib.parse import quote

    from dbqueue.sqs.signature import _canonical_path

    path = "/" + tail
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments) + ("/" if path.endswith("/") and segments else "")
    assert _canonical_path(path) == quote(normalized, safe="/~")


def test_undecodable_text_is_refused_not_a_crash() -> None:
    method, path, query, headers, body = signed()
    assert refusal((method, "/000000000000/\udcff", query, headers, body)).code is MISMATCH
    assert refusal((method, path, "a=\udcff", headers, body)).code is MISMATCH
    assert refusal(with_header((method, path, query, headers, body), "X-Amz-Target", "\udcff")).code is MISMATCH


def test_a_remembered_authorization_prefix_gives_the_same_verdicts() -> None:
    """The verifier remembers what an Authorization header says up to its signature: the next requests of the
    same client (same prefix, new signature) are judged exactly as a fresh verifier judges them."""
    import time as time_module

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from dbqueue.sqs import SignatureVerifier

    secret = "remembered/secret"

    def signed(body: bytes) -> list[tuple[str, str]]:
        request = AWSRequest(
            method="POST",
            url="http://127.0.0.1:9324/",
            data=body,
            headers={"Content-Type": "application/x-amz-json-1.0"},
        )
        SigV4Auth(Credentials("AKIDREMEMBER", secret), "sqs", "us-east-1").add_auth(request)
        return [(name, str(value)) for name, value in request.prepare().headers.items()]

    remembering = SignatureVerifier({"AKIDREMEMBER": secret})
    for number in range(3):
        body = b'{"n": %d}' % number
        headers = signed(body)
        variants = [
            headers,
            [(n, v + " " if n == "Authorization" else v) for n, v in headers],  # a blank after the signature
            [(n, v[:-1] + ("0" if v[-1] != "0" else "1") if n == "Authorization" else v) for n, v in headers],
        ]
        for variant in variants:
            verdicts = []
            for verifier in (remembering, SignatureVerifier({"AKIDREMEMBER": secret})):
                try:
                    verdicts.append(verifier.verify("POST", "/", "", variant, body, time_module.time()))
                except SqsError as error:
                    verdicts.append(error.shape)
            assert verdicts[0] == verdicts[1], variant
        with pytest.raises(SqsError) as caught:  # the body changed: the remembered prefix signs nothing by itself
            remembering.verify("POST", "/", "", headers, body + b" ", time_module.time())
        assert caught.value.shape == "SignatureDoesNotMatch"

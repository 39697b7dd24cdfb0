"""Queue URLs, ARNs, names and pages of names."""

from __future__ import annotations

import pytest

from dbqueue.sqs import (
    ACCOUNT_ID,
    ErrorCode,
    SqsError,
    check_queue_name,
    paginate,
    queue_arn,
    queue_of_arn,
    queue_of_path,
    queue_of_url,
    queue_url,
)


def code_of(call: object, *args: object) -> ErrorCode:
    with pytest.raises(SqsError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


def test_the_account_is_twelve_zeros() -> None:
    assert ACCOUNT_ID == "000000000000"


@pytest.mark.parametrize("name", ["jobs", "a", "A-b_9", "x" * 80, "with space", "ünïcode", "a/b", "50%"])
def test_a_queue_url_names_its_queue_on_any_host(name: str) -> None:
    for endpoint in ("http://localhost:9324", "https://sqs.example.com", "http://10.0.0.1:80"):
        url = queue_url(endpoint, name)
        assert url.startswith(f"{endpoint}/000000000000/")
        assert queue_of_url(url) == name
    assert queue_url("http://h", "jobs") == "http://h/000000000000/jobs"


def test_urls_of_other_accounts_name_no_queue_and_other_strings_are_not_urls() -> None:
    assert (
        code_of(queue_of_url, "https://sqs.us-east-1.amazonaws.com/123456789012/jobs") is ErrorCode.QUEUE_DOES_NOT_EXIST
    )
    for url in ("jobs", "http://localhost:9324/jobs", "http://localhost:9324/000000000000/", "", "/"):
        assert code_of(queue_of_url, url) is ErrorCode.INVALID_ADDRESS


def test_a_path_names_a_queue_or_nothing() -> None:
    assert queue_of_path("/000000000000/jobs") == "jobs"
    assert queue_of_path("/000000000000/a%20b") == "a b"
    for path in ("/", "", "/jobs", "/000000000000/", "/000000000000/jobs/x", "/abc/jobs"):
        assert queue_of_path(path) is None
    assert code_of(queue_of_path, "/123456789012/jobs") is ErrorCode.QUEUE_DOES_NOT_EXIST


def test_arns_round_trip_in_any_region_and_partition() -> None:
    assert queue_arn("jobs") == "arn:aws:sqs:us-east-1:000000000000:jobs"
    assert queue_of_arn(queue_arn("jobs", "eu-west-3")) == "jobs"
    assert queue_of_arn("arn:aws-cn:sqs:cn-north-1:000000000000:jobs") == "jobs"
    for arn in (
        "arn:aws:sqs:us-east-1:123456789012:jobs",
        "arn:aws:sns:us-east-1:000000000000:jobs",
        "jobs",
        "arn:aws:sqs:us-east-1:000000000000:",
        "dummy",
    ):
        assert queue_of_arn(arn) is None


def test_new_queue_names_follow_sqs_and_fifo_is_refused_clearly() -> None:
    assert check_queue_name("Jobs-1_a") == "Jobs-1_a"
    assert check_queue_name("x" * 80) == "x" * 80
    for name in ("", "x" * 81, "a b", "a.b", "ü", "a/b"):
        assert code_of(check_queue_name, name) is ErrorCode.INVALID_PARAMETER_VALUE
    with pytest.raises(SqsError, match="FIFO queues are not supported"):
        check_queue_name("jobs.fifo")


def test_pages_cover_every_name_once_in_order() -> None:
    names = [f"q{index:03}" for index in range(25)] + ["other"]
    seen: list[str] = []
    token = None
    while True:
        page, token = paginate(names, "q", 10, token)
        seen += page
        if token is None:
            break
    assert seen == sorted(name for name in names if name.startswith("q"))
    assert paginate(names, "q", 25) == (seen, None)
    assert paginate(names) == (sorted(names), None)


def test_pages_survive_changes_between_them() -> None:
    names = ["a", "b", "c", "d"]
    page, token = paginate(names, "", 2)
    assert page == ["a", "b"]
    names.remove("c")
    names.append("bb")
    assert paginate(names, "", 2, token) == (["bb", "d"], None)


def test_without_max_results_a_page_is_a_thousand_names() -> None:
    names = [f"q{index:05}" for index in range(1500)]
    page, token = paginate(names)
    assert (len(page), token) == (1000, None)


def test_a_token_we_did_not_make_is_refused() -> None:
    assert code_of(paginate, ["a"], "", 1, "!!not base64!!") is ErrorCode.INVALID_PARAMETER_VALUE
    assert code_of(paginate, ["a"], "", 1, "/w==") is ErrorCode.INVALID_PARAMETER_VALUE

"""The AWS SDK for JavaScript v3 (``@aws-sdk/client-sqs``) against ``dbqueue serve --http-port``, as a Node service.

The server is a ``dbqueue serve --http-port PORT`` subprocess with its
credentials in ``DBQUEUE_SQS_ACCESS_KEY_ID`` / ``DBQUEUE_SQS_SECRET_ACCESS_KEY``,
as it would be deployed; its log must show no unhandled exception, and it must
stop cleanly on SIGTERM.

`tests/node/sqs_check.mjs` is the script a Node service would run: an
`SQSClient` with its endpoint pointed at dbqueue and credentials from the
environment, so every request is signed with SigV4 and the SDK checks the MD5
of every body the server returns (the test checks the attributes' MD5 the way
the SDKs compute it, `sqs_kit.sdk_md5_of_attributes`). It creates queues,
sends with message attributes, sends a batch, long-polls, changes visibility,
deletes one and a batch, and reads the queue's attributes, then prints what it
saw as one JSON object. The test checks that output, and the server's state
through dbqueue's own client: the counts, and the message the script left,
read natively and opened as an SQS envelope.

The SDK is installed from ``tests/node/package-lock.json`` (``npm ci``) when
``node_modules`` is missing, as on a fresh clone. Skipped, saying which, when
``node`` or ``npm`` is not on the PATH; a failed install fails the test with
npm's own words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "sqs"))  # the SQS tests' kit: the SDKs' MD5 check

import sqs_kit

from dbqueue import Client
from dbqueue.sqs import MessageAttributeValue, open_envelope
from sqs_serving import Serving, serve_sqs

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "sqs_check.mjs"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not on the PATH (the AWS SDK v3 needs Node.js 18+)"),
    pytest.mark.skipif(NPM is None, reason="npm is not on the PATH (it installs @aws-sdk/client-sqs)"),
]


def node_major() -> int:
    assert NODE is not None
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return int(version.lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def sdk() -> Path:
    """``tests/node`` with ``node_modules`` installed from the committed lock file."""
    if node_major() < 18:
        pytest.skip("the AWS SDK for JavaScript v3 needs Node.js 18 or newer")
    if not (NODE_DIR / "node_modules" / "@aws-sdk" / "client-sqs" / "package.json").exists():
        assert NPM is not None
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR


ACCESS_KEY = "AKIDNODESERVICE"
SECRET_KEY = "node/service+secret"
REGION = "us-east-1"


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    with serve_sqs(tmp_path, ACCESS_KEY, SECRET_KEY) as server:
        yield server


def run_script(sdk: Path, endpoint: str, prefix: str, secret: str = SECRET_KEY) -> tuple[int, Any, str]:
    """Run the Node script; return its exit code, its JSON output and its stderr."""
    assert NODE is not None
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(sdk),  # no ~/.aws of the machine's: the SDK sees only what is set here
        "AWS_CONFIG_FILE": str(sdk / "no-such-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(sdk / "no-such-credentials"),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": REGION,
        "SQS_ENDPOINT": endpoint,
    }
    done = subprocess.run(
        [NODE, str(SCRIPT), prefix], cwd=sdk, env=environment, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else None, done.stderr


@pytest.mark.timeout(400)
def test_a_node_service_on_the_aws_sdk_v3(sdk: Path, serving: Serving) -> None:
    code, out, stderr = run_script(sdk, serving.endpoint, "node")
    assert code == 0, f"the Node script failed:\n{stderr}\n{out}"
    jobs_url = f"{serving.endpoint}/000000000000/node-jobs"
    later_url = f"{serving.endpoint}/000000000000/node-later"
    assert out["queues"] == {
        "url": jobs_url,
        "again": jobs_url,
        "found": jobs_url,
        "later": later_url,
        "listed": [jobs_url, later_url],
    }
    # The SDK checked each MD5 itself (it throws on a mismatch); these are the values it accepted.
    assert out["send"]["md5OfBody"] == hashlib.md5(b"resize image 42").hexdigest()
    assert out["send"]["md5OfAttributes"] == sqs_kit.sdk_md5_of_attributes(
        {
            "colour": {"DataType": "String", "StringValue": "blue"},
            "count": {"DataType": "Number", "StringValue": "42"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        }
    )
    assert out["sendBatch"]["successful"] == [f"m{i}" for i in range(10)]
    assert out["sendBatch"]["failed"] == []
    # The long poll waited for the delayed message, and no longer than it had to.
    assert out["longPoll"]["bodies"] == ["one second late"]
    assert 700 <= out["longPoll"]["ms"] < 5_000, out["longPoll"]
    # All eleven received in the order sent, each once, with the attributes that were sent.
    received = out["receive"]
    assert [message["body"] for message in received] == ["resize image 42", *(f"batch {i}" for i in range(10))]
    assert [message["id"] for message in received] == [
        out["send"]["id"],
        *(out["sendBatch"]["ids"][f"m{i}"] for i in range(10)),
    ]
    assert {message["receiveCount"] for message in received} == {"1"}
    assert {message["senderId"] for message in received} == {ACCESS_KEY}
    assert received[0]["attributes"] == {
        "colour": {"DataType": "String", "StringValue": "blue"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": "AAH/"},
    }
    assert received[3]["attributes"] == {"index": {"DataType": "Number", "StringValue": "2"}}
    # Visibility 0 made it visible at once: received again, counted twice, attributes intact.
    assert out["redelivered"]["body"] == "resize image 42"
    assert out["redelivered"]["receiveCount"] == "2"
    assert out["redelivered"]["attributes"] == received[0]["attributes"]
    assert out["deleteBatch"] == {"successful": [f"d{i}" for i in range(9)], "failed": []}
    attributes = out["attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "1",
        "1",
    )
    assert attributes["VisibilityTimeout"] == "30"
    assert attributes["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:node-jobs"
    assert out["missing"] == {"name": "QueueDoesNotExist", "status": 400}

    # The server's own view: ten confirmed, "batch 9" in flight (600 s), one ready that dbqueue's client reads.
    with Client.connect(serving.address) as native:
        assert [queue["name"] for queue in native.list_queues()] == ["node-jobs"]
        stats = native.stats("node-jobs")
        assert (stats["ready"], stats["in_flight"], stats["confirmed"]) == (1, 1, 10)
        message = native.read("node-jobs", visibility_timeout=5.0)
        assert message is not None
        envelope = open_envelope(message.data)
        assert envelope is not None
        assert envelope.body == "for the native client"
        assert envelope.queue == "node-jobs"
        assert envelope.sender == ACCESS_KEY
        assert dict(envelope.message_attributes) == {"colour": MessageAttributeValue("String", "blue")}
        native.confirm(message.id)


@pytest.mark.timeout(400)
def test_a_wrong_secret_is_refused_with_the_sdks_own_error(sdk: Path, serving: Serving) -> None:
    code, out, _ = run_script(sdk, serving.endpoint, "refused", secret="not-the-secret")
    assert code == 1
    assert out["errorName"] == "SignatureDoesNotMatch"
    with Client.connect(serving.address) as native:
        assert [queue["name"] for queue in native.list_queues()] == []

"""The aws CLI (``pip install awscli``) against a real server's HTTP listener, as subprocesses.

Credentials come from the environment, as a user would give them; the CLI's
own configuration files are pointed at nothing, so the test sees only what it
sets. Skipped when the ``aws`` command is not installed next to this Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import listener_kit
import pytest


def aws_command() -> str | None:
    beside = Path(sys.executable).with_name("aws")
    return str(beside) if beside.exists() else shutil.which("aws")


AWS = aws_command()
pytestmark = pytest.mark.skipif(AWS is None, reason="the aws CLI is not installed (pip install awscli)")


def test_send_receive_delete_with_the_aws_cli(server_factory: Callable[..., Any], tmp_path: Path) -> None:
    listening = listener_kit.Listening.start(
        server_factory(), credentials={listener_kit.ACCESS_KEY: listener_kit.SECRET_KEY}
    )
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": listener_kit.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": listener_kit.SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }

    def aws(*arguments: str) -> Any:
        assert AWS is not None
        done = subprocess.run(
            [AWS, "--endpoint-url", listening.endpoint, "--output", "json", "sqs", *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    try:
        url = aws("create-queue", "--queue-name", "cli")["QueueUrl"]
        assert url == f"{listening.endpoint}/000000000000/cli"
        sent = aws(
            "send-message",
            "--queue-url",
            url,
            "--message-body",
            "from the CLI",
            "--message-attributes",
            '{"kind": {"DataType": "String", "StringValue": "test"}}',
        )
        received = aws(
            "receive-message",
            "--queue-url",
            url,
            "--wait-time-seconds",
            "1",
            "--message-attribute-names",
            "All",
            "--attribute-names",
            "ApproximateReceiveCount",
        )
        (message,) = received["Messages"]
        assert (message["Body"], message["MessageId"]) == ("from the CLI", sent["MessageId"])
        assert message["MessageAttributes"] == {"kind": {"StringValue": "test", "DataType": "String"}}
        assert message["Attributes"] == {"ApproximateReceiveCount": "1"}
        assert aws("delete-message", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"]) is None
        counts = aws("get-queue-attributes", "--queue-url", url, "--attribute-names", "All")["Attributes"]
        assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
        # A wrong secret is refused, and the CLI says why.
        environment["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        assert AWS is not None
        refused = subprocess.run(
            [AWS, "--endpoint-url", listening.endpoint, "sqs", "list-queues"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0 and "SignatureDoesNotMatch" in refused.stderr
    finally:
        listening.stop()

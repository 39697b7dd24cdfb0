"""`dbqueue serve` as a real process (it serves, and SIGTERM shuts it down cleanly), its options made from
`Limits`, and the version written once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import dbqueue
from dbqueue import Client, ConnectionLost, Limits, _version
from dbqueue.cli import main, option_name, serve
from dbqueue.server.limits import limit_fields


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect_when_up(address: str, process: subprocess.Popen[bytes], within: float = 10.0) -> Client:
    deadline = time.monotonic() + within
    while True:
        try:
            return Client.connect(address, timeout=1)
        except ConnectionLost:
            if process.poll() is not None:
                pytest.fail(f"the server exited early with {process.returncode}: {process.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not come up on {address}")
            time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_serve_then_sigterm_exits_zero_promptly() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = connect_when_up(f"127.0.0.1:{port}", process)
        client.create("q")
        id_ = client.send("q", b"hello")
        assert client.read("q", visibility_timeout=60.0).id == id_  # held while the server stops
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=5)
        elapsed = time.monotonic() - started
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]
    assert returncode == 0, stderr
    assert elapsed < 2.0
    assert f"listening on 127.0.0.1:{port}" in stderr
    assert "stopped" in stderr
    assert "Traceback" not in stderr


def test_serve_on_a_taken_port_fails_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dbqueue.cli", "serve", "--port", str(port)],
            capture_output=True,
            timeout=10,
        )
    assert result.returncode != 0
    assert b"cannot listen" in result.stderr
    assert b"Traceback" not in result.stderr


# --- options made from Limits ------------------------------------------------------------------------


def serve_limits(*arguments: str) -> Limits:
    """The `Limits` that ``dbqueue serve <arguments>`` would run with (parsed, not run)."""
    context = serve.make_context("serve", list(arguments))
    return Limits(**{described.name: context.params[described.name] for described in limit_fields()})


def test_serve_has_one_option_per_limit_with_its_unit_default_and_help() -> None:
    options = {option.name: option for option in serve.params if isinstance(option, click.Option)}
    for described in limit_fields():
        option = options[described.name]
        assert option.opts == [option_name(described.name)]
        assert option.metavar == described.spec.unit.upper()
        assert option.default == described.default
        assert option.help is not None and option.help.startswith(described.spec.help)
    assert serve_limits() == Limits()
    help_text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    assert "--max-in-flight MESSAGES" in help_text and "[default: (100,000); x>=1]" in help_text, help_text
    assert "--idle-timeout SECONDS" in help_text and "[default: (off); x>=0.01]" in help_text, help_text


def test_serve_options_take_every_limit_within_its_bounds_and_refuse_the_rest() -> None:
    for described in limit_fields():
        spec = described.spec
        flag = option_name(described.name)
        assert getattr(serve_limits(flag, str(spec.low)), described.name) == spec.low
        below = spec.low - (1 if described.kind is int else spec.low / 2)
        with pytest.raises(click.BadParameter):
            serve_limits(flag, str(below))
        with pytest.raises(ValueError):
            Limits(**{described.name: below})
        if spec.high is not None:
            assert getattr(serve_limits(flag, str(spec.high)), described.name) == spec.high
            above = spec.high + 1
            with pytest.raises(click.BadParameter):
                serve_limits(flag, str(above))
            with pytest.raises(ValueError):
                Limits(**{described.name: above})


def test_limits_refuse_unknown_fields_and_values_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        Limits(max_inflight=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Limits(max_in_flight="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Limits(max_in_flight=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Limits(max_in_flight=True)
    assert Limits(idle_timeout=2).idle_timeout == 2  # an int where seconds are asked for is fine


def test_the_version_is_written_once() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dbqueue._version.__version__"}
    assert dbqueue.__version__ == _version.__version__
    assert CliRunner().invoke(main, ["--version"]).output == f"dbqueue, version {_version.__version__}\n"

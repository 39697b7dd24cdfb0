"""The ports `dbqueue serve` is given: refused when they cannot work, and named right when one is taken.

A group's worker I listens on PORT+I and is advertised there, so ``--port 0`` (any free port) cannot
give a group its ports: refused at the command line, as are two options naming one port and a group's
ports past 65535. When a listener cannot bind, the error names the address that failed and the option
that gave its port (the HTTP or metrics port, not the native one). `dbqueue serve` as a child process.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from child_server import free_port, serve_refusal


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on for the test's length."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


def test_port_0_with_workers_is_refused_with_one_line_that_says_to_give_a_port() -> None:
    code, output = serve_refusal("--port", "0", "--workers", "2")
    assert code == 2, output
    line = one_error_line(output)
    assert "--port" in line and "--workers" in line and "give a port" in line, line


def test_a_group_whose_ports_pass_65535_is_refused() -> None:
    code, output = serve_refusal("--port", "65535", "--workers", "2")
    assert code == 2, output
    assert "65535 .. 65536" in one_error_line(output), output
    code, output = serve_refusal("--port", str(free_port()), "--workers", "2", "--http-port", "65535")
    assert code == 2, output
    assert "--http-port" in one_error_line(output), output


@pytest.mark.parametrize("option", ["--http-port", "--metrics-port"])
def test_a_taken_listener_port_is_named_with_its_option(taken: int, option: str) -> None:
    port = free_port()
    code, output = serve_refusal("--port", str(port), option, str(taken))
    assert code == 1, output
    line = one_error_line(output)
    assert line == f"Error: cannot listen on 127.0.0.1:{taken} ({option}): address already in use", line
    assert str(port) not in line, line


def test_a_taken_native_port_is_named_with_its_option(taken: int) -> None:
    code, output = serve_refusal("--port", str(taken), "--http-port", str(free_port()))
    assert code == 1, output
    assert one_error_line(output) == f"Error: cannot listen on 127.0.0.1:{taken} (--port): address already in use"


@pytest.mark.parametrize("option", ["--http-port", "--metrics-port"])
def test_two_options_naming_one_port_are_refused_before_binding(option: str) -> None:
    port = free_port()
    code, output = serve_refusal("--port", str(port), option, str(port))
    assert code == 2, output
    assert f"--port and {option} both name port {port}" in one_error_line(output), output
    # In a group, worker 0's HTTP port must not be worker 1's native one.
    code, output = serve_refusal("--port", str(port), "--workers", "2", option, str(port + 1))
    assert code == 2, output
    assert f"--port and {option} both name port {port + 1}" in one_error_line(output), output

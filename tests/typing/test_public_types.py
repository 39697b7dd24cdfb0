"""The public client API is typed for its users: ``mypy --strict`` passes on typed_program.py, which
calls every public call of every client kind with ``assert_type`` on each result, and it rejects every
marked line of mistyped_program.py. The typed program also runs against real servers, so the types it
asserts are the ones the calls give. The examples, which users copy, pass ``mypy --strict`` too.

mypy runs as a user's would: on the two programs only, with ``--strict`` and no project configuration,
reading the same dbqueue that these tests import (as an installed package: its own errors are not the
user's and are not reported).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typed_program

import dbqueue
from conftest import ServerThread

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted((HERE.parent.parent / "examples").glob("*.py"))
PROGRAMS = [HERE / "typed_program.py", HERE / "mistyped_program.py", *EXAMPLES]
MARK = re.compile(r"#\s*error:\s*\[(?P<code>[a-z-]+)\]")
ERROR = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")

Errors = set[tuple[int, str]]


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[Path, Errors], str]:
    """Run mypy once on both programs; return each program's (line, code) errors, and mypy's output."""
    work = tmp_path_factory.mktemp("mypy")
    config = work / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    package_root = Path(dbqueue.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(config), "--cache-dir", str(work / "cache"),
         *map(str, PROGRAMS)],
        cwd=work, env=env, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert run.returncode in (0, 1), f"mypy itself failed:\n{run.stdout}{run.stderr}"
    errors: dict[Path, Errors] = {program: set() for program in PROGRAMS}
    for line in run.stdout.splitlines():
        found = ERROR.match(line)
        if found:
            errors.setdefault((work / found["file"]).resolve(), set()).add((int(found["line"]), found["code"]))
    return errors, run.stdout


def test_mypy_strict_accepts_every_public_call_with_its_type(mypy_errors: tuple[dict[Path, Errors], str]) -> None:
    errors, output = mypy_errors
    assert errors[HERE / "typed_program.py"] == set(), output


def test_mypy_strict_accepts_the_examples(mypy_errors: tuple[dict[Path, Errors], str]) -> None:
    errors, output = mypy_errors
    assert EXAMPLES and {example.name: errors[example] for example in EXAMPLES} == {
        example.name: set() for example in EXAMPLES
    }, output


def test_mypy_strict_rejects_every_misuse(mypy_errors: tuple[dict[Path, Errors], str]) -> None:
    marked = {
        (number, found["code"])
        for number, line in enumerate((HERE / "mistyped_program.py").read_text().splitlines(), start=1)
        if (found := MARK.search(line))
    }
    assert len(marked) >= 15  # the marks themselves were found
    errors, output = mypy_errors
    assert errors[HERE / "mistyped_program.py"] == marked, output


def test_the_typed_program_runs_against_real_servers(
    server: ServerThread, server_factory: Callable[..., ServerThread]
) -> None:
    members = [server_factory(member_index=index) for index in range(2)]
    addresses = [member.address for member in members]
    for member in members:  # ports were picked at start: tell every member the group now
        member.call(lambda member=member: setattr(member.server, "members", list(addresses)))
    typed_program.main(server.address, addresses)

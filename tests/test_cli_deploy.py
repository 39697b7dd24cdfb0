"""What ships for running dbqueue as a service: the systemd unit and the Dockerfile under deploy/ (their
command lines parsed by `dbqueue serve` itself), the LICENSE, and the package's metadata.

No Docker engine runs where these tests run: the image is not built here, only read.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from dbqueue.cli import main, serve
from dbqueue.server.workers import STOP_GRACE

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "dbqueue.service"


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}}: comments dropped, continued lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    logical = text.replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def local_paths(arguments: list[str], tmp_path: Path) -> list[str]:
    """The unit's files under /etc/dbqueue, made in ``tmp_path`` (serve checks that they exist)."""
    made = []
    for argument in arguments:
        if argument.startswith("/etc/dbqueue/"):
            local = tmp_path / Path(argument).name
            local.write_text("a-token-for-the-test\n")
            argument = str(local)
        made.append(argument)
    return made


def test_the_unit_runs_dbqueue_serve_as_its_own_user_with_a_file_limit_above_its_connections(tmp_path: Path) -> None:
    unit = unit_sections(UNIT.read_text())
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "dbqueue" and argv[1] == "serve"
    context = serve.make_context("serve", local_paths(argv[2:], tmp_path))
    options = context.params
    assert options["data_dir"] == "/var/lib/dbqueue" and service["StateDirectory"] == ["dbqueue"]
    assert options["host"] == "0.0.0.0" and options["auth_token_file"]  # public, so with a token
    assert options["workers"] > 1 and options["port"] + options["workers"] - 1 <= 65535
    (limit,) = service["LimitNOFILE"]
    assert options["max_connections"] + 64 <= int(limit) <= 2 * options["max_connections"], limit
    assert service["User"] == ["dbqueue"] and service["Group"] == ["dbqueue"]
    assert service["Restart"] == ["on-failure"] and service["KillMode"] == ["mixed"]
    (timeout,) = service["TimeoutStopSec"]
    assert float(timeout.removesuffix("s")) > STOP_GRACE  # the supervisor's own grace fits in systemd's
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    sysusers = (DEPLOY / "dbqueue.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "dbqueue"] for line in sysusers.splitlines())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """systemd's own check, with ExecStart pointing at this environment's dbqueue (the unit's path is
    where an install would put it)."""
    program = Path(sys.executable).parent / "dbqueue"
    if not program.exists():
        pytest.skip(f"no dbqueue command beside {sys.executable}")
    text = UNIT.read_text().replace("/opt/dbqueue/bin/dbqueue", str(program))
    copy = tmp_path / "dbqueue.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(copy) in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continued lines joined, comments and the parser directive dropped."""
    instructions = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_the_dockerfile_runs_serve_unprivileged_with_its_store_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    by_keyword: dict[str, list[str]] = {}
    for keyword, arguments in final:
        by_keyword.setdefault(keyword, []).append(arguments)
    assert by_keyword["USER"] == ["dbqueue"]
    assert json.loads(by_keyword["ENTRYPOINT"][0]) == ["dbqueue"] and json.loads(by_keyword["CMD"][0]) == ["serve"]
    environment = dict(part.split("=", 1) for part in shlex.split(" ".join(by_keyword["ENV"])))
    assert by_keyword["VOLUME"] == [environment["DBQUEUE_DATA_DIR"]] == ["/var/lib/dbqueue"]
    assert by_keyword["EXPOSE"] == [environment["DBQUEUE_PORT"]]
    # What `dbqueue serve` makes of the image's environment.
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    options = serve.make_context("serve", []).params
    assert (options["host"], options["port"], options["data_dir"]) == ("0.0.0.0", 3003, "/var/lib/dbqueue")
    # The health check is a command the CLI knows.
    check = json.loads(by_keyword["HEALTHCHECK"][0].split("CMD", 1)[1])
    command = shlex.split(check[-1].replace("${DBQUEUE_PORT}", environment["DBQUEUE_PORT"]))
    assert command[0] == "dbqueue"
    listed = main.commands[command[1]]
    assert isinstance(listed, click.Command)
    listed.make_context(command[1], [arg for arg in command[2:] if arg not in (">", "/dev/null")])
    # Every COPY of the build stage names something in the repository, and the ignore file lets it in.
    for keyword, arguments in steps:
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in shlex.split(arguments)[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(ignored)


def test_the_license_and_the_package_metadata() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 dbqueue developers\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert project["license"] == {"text": "MIT"}
    minimum = project["requires-python"].removeprefix(">=")
    versions = [
        c.rsplit(":: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions and min(versions, key=lambda v: tuple(map(int, v.split(".")))) == minimum
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(project["urls"])
    assert project["keywords"]

"""`dbqueue store check DIR [--salvage INTO]`: the report of `dbqueue.store.check`, its verdict as the exit
status, and a store that cannot be read as one line. The stores are made by a real `dbqueue serve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_process import ServerProcess
from test_cli_commands import ok, one_line_error, run_cli

PAYLOAD = b"<a payload that can be found in the file %03d>"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by `dbqueue serve`: two queues, ten messages each, the server stopped cleanly."""
    data = tmp_path_factory.mktemp("served") / "data"
    server = ServerProcess(data).start()
    try:
        with server.client() as client:
            for name in ("jobs", "other"):
                client.create(name)
                for i in range(10):
                    client.send(name, PAYLOAD % i + name.encode())
        server.terminate()
    finally:
        server.close()
    return data


def copy_of(store: Path, into: Path) -> Path:
    into.mkdir()
    for path in store.iterdir():
        (into / path.name).write_bytes(path.read_bytes())
    return into


def damage(store: Path, needle: bytes) -> None:
    """Flip one byte inside the payload ``needle``, wherever the store keeps it."""
    for path in sorted(store.iterdir()):
        raw = bytearray(path.read_bytes())
        offset = raw.find(needle)
        if offset >= 0:
            raw[offset + 3] ^= 0x20
            path.write_bytes(bytes(raw))
            return
    pytest.fail(f"{needle!r} is in no file of {store}")


def test_check_of_a_healthy_store(served: Path, tmp_path: Path) -> None:
    store = copy_of(served, tmp_path / "copy")
    lines = ok(run_cli("store", "check", str(store))).splitlines()
    assert lines[0].endswith(": ok") and "2 queues, 20 intact messages" in lines, lines
    report = json.loads(ok(run_cli("store", "check", str(store), "--json")))
    assert report["ok"] is True and (report["queues"], report["messages"], report["damaged"]) == (2, 20, [])


def test_check_of_a_damaged_store_exits_1_and_salvage_copies_the_rest(served: Path, tmp_path: Path) -> None:
    store = copy_of(served, tmp_path / "copy")
    damage(store, PAYLOAD % 4 + b"jobs")
    before = {path.name: path.read_bytes() for path in store.iterdir()}
    checked = run_cli("store", "check", str(store))
    assert checked.returncode == 1 and b"Traceback" not in checked.stderr
    assert checked.stdout.decode().splitlines()[0].endswith(": DAMAGED")
    assert "damaged messages" in checked.stdout.decode()
    report = json.loads(run_cli("store", "check", str(store), "--json").stdout)
    assert report["ok"] is False and report["damaged"]

    into = tmp_path / "salvaged"
    salvaged = run_cli("store", "check", str(store), "--salvage", str(into))
    assert salvaged.returncode == 1  # the report is of the damaged original
    assert f"into {into}" in salvaged.stdout.decode()
    assert {path.name: path.read_bytes() for path in store.iterdir()} == before  # left as it was
    again = json.loads(ok(run_cli("store", "check", str(into), "--json")))
    assert again["ok"] is True and again["messages"] == 20 - len(report["damaged"])


def test_what_cannot_be_checked_is_one_line(tmp_path: Path) -> None:
    missing = one_line_error(run_cli("store", "check", str(tmp_path / "nowhere")))
    assert "nowhere" in missing and "not a directory" in missing, missing
    empty = one_line_error(run_cli("store", "check", str(tmp_path)))
    assert "no dbqueue store here" in empty, empty


def test_a_store_in_use_is_not_checked(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        line = one_line_error(run_cli("store", "check", str(tmp_path / "data")))
        assert "in use" in line, line
    finally:
        server.terminate()
        server.close()

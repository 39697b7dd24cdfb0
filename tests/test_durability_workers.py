"""Crash test for a durable group: `dbqueue serve --workers 2 --data-dir DIR`, workers killed with -9 under load.

From what the clients were told: no message answered ObjectQueued is lost, and no message answered
Confirmed is delivered again. The supervisor restarts each killed worker on its own store
(DIR/worker-i); the group client fails over and reconnects by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbqueue import ConnectionLost, DbQueueError, GroupClient

KILLS = 4
SECONDS_BETWEEN_KILLS = 0.8


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise RuntimeError("no two consecutive free ports")


def wait_for_ports(*ports: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"port {port} never answered") from None
                time.sleep(0.05)


def workers_of(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_kill_9_of_workers_loses_no_queued_message_and_repeats_no_confirmed_one(tmp_path: Path) -> None:
    port = free_port_pair()
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbqueue.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "warning",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    acknowledged: set[bytes] = set()
    confirmed: set[bytes] = set()
    delivered_after_confirm: list[bytes] = []
    try:
        wait_for_ports(port, port + 1)
        group = GroupClient.connect([f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"], timeout=2.0)
        group.create("jobs")
        sequence = 0
        kills = 0
        next_kill = time.monotonic() + SECONDS_BETWEEN_KILLS
        deadline = time.monotonic() + 30.0
        while kills < KILLS and time.monotonic() < deadline:
            for _ in range(20):
                payload = b"m%d" % sequence
                sequence += 1
                try:
                    group.send("jobs", payload)
                except (ConnectionLost, DbQueueError):
                    continue  # not acknowledged: the test promises nothing about it
                acknowledged.add(payload)
            for _ in range(20):
                try:
                    message = group.read("jobs", visibility_timeout=60.0)
                    if message is None:
                        break
                    if message.data in confirmed:
                        delivered_after_confirm.append(message.data)
                    group.confirm(message.id)
                except (ConnectionLost, DbQueueError):
                    continue
                confirmed.add(message.data)
            if time.monotonic() >= next_kill:
                victims = workers_of(supervisor.pid)
                if victims:
                    os.kill(victims[kills % len(victims)], signal.SIGKILL)
                    kills += 1
                next_kill = time.monotonic() + SECONDS_BETWEEN_KILLS
        assert kills == KILLS, f"only {kills} kills happened"
        group.close()
        time.sleep(1.0)  # the supervisor restarts the last victim
        wait_for_ports(port, port + 1)
        drained: list[bytes] = []
        with GroupClient.connect([f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"], timeout=5.0) as reader:
            while True:
                batch = reader.read_batch("jobs", 500, visibility_timeout=60.0)
                if not batch:
                    break
                drained += [message.data for message in batch]
                reader.confirm_batch([message.id for message in batch])
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(15)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
    lost = acknowledged - confirmed - set(drained)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
    again = [payload for payload in drained if payload in confirmed] + delivered_after_confirm
    assert not again, f"{len(again)} confirmed messages delivered again, e.g. {again[:5]}"
    assert len(acknowledged) > 100 and len(confirmed) > 50, (len(acknowledged), len(confirmed))
